"""`imgsave generate`: fill a project's scenes with images, with none lost.

Provider calls run under a semaphore; each URL is logged durably, then handed to the project's
saver, which commits whatever is ready together. No row lock is held during a network call.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .config import Settings
from .connect import open_database
from .db import Database
from .document import Outcome, Scene, Shape, decode, scenes
from .errors import (
    EXIT_CANNOT_WORK,
    EXIT_FINDINGS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ProviderRefused,
    UsageError,
)
from .genlog import RunLog
from .interrupt import StopSignal, sigint_stops
from .provider import ImageFailed, Provider
from .saver import ProjectSaver


class Reporter(Protocol):
    def start(self, total: int, description: str) -> None: ...
    def advance(self, *, ok: bool) -> None: ...
    def warn(self, message: str) -> None: ...
    def finish(self) -> None: ...


@dataclass(frozen=True)
class Job:
    scene: Scene
    count: int


@dataclass(frozen=True)
class Plan:
    jobs: tuple[Job, ...]
    skipped_scenes: tuple[int, ...]
    unprompted_scenes: tuple[int, ...]

    @property
    def requested(self) -> int:
        return sum(job.count for job in self.jobs)


@dataclass
class GenerateResult:
    project: str
    run: str
    requested: int = 0
    saved: int = 0
    failed: int = 0
    skipped_scenes: list[int] = field(default_factory=list)
    unprompted_scenes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    fatal: str | None = None
    interrupted: bool = False
    transactions: int = 0
    log_path: str = ""
    saved_by_scene: Counter[int] = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.fatal:
            return EXIT_CANNOT_WORK
        if self.failed or self.unprompted_scenes or self.saved < self.requested:
            return EXIT_FINDINGS
        return EXIT_OK

    def to_json(self) -> dict:
        return {
            "project": self.project,
            "run": self.run,
            "requested": self.requested,
            "saved": self.saved,
            "failed": self.failed,
            "skipped_scenes": self.skipped_scenes,
            "unprompted_scenes": self.unprompted_scenes,
            "transactions": self.transactions,
            "interrupted": self.interrupted,
            "errors": self.errors,
            "log": self.log_path,
        }


def parse_scene_selection(spec: str) -> frozenset[int]:
    """`1,3,5-8` -> {1, 3, 5, 6, 7, 8}."""
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise UsageError(f"--scenes: {part!r} is not a number or range like 5-8") from None
        if first < 1 or last < first:
            raise UsageError(f"--scenes: {part!r} is not a range of scene numbers from 1")
        chosen.update(range(first, last + 1))
    return frozenset(chosen)


def plan(
    all_scenes: Sequence[Scene],
    images_per_scene: int,
    *,
    selection: frozenset[int] | None = None,
    force: bool = False,
    project: str = "?",
) -> Plan:
    """Which scenes need how many images. Pure: reruns after a crash only do what is missing."""
    if selection is not None:
        missing = sorted(selection - {s.ref.index for s in all_scenes})
        if missing:
            raise UsageError(f"project {project} has no scene {missing[0]} (--scenes)")
    jobs, skipped, unprompted = [], [], []
    for scene in all_scenes:
        if selection is not None and scene.ref.index not in selection:
            continue
        need = images_per_scene if force else images_per_scene - len(scene.urls)
        if need <= 0:
            skipped.append(scene.ref.index)
        elif scene.prompt is None:
            unprompted.append(scene.ref.index)
        else:
            jobs.append(Job(scene, need))
    return Plan(tuple(jobs), tuple(skipped), tuple(unprompted))


async def run(
    settings: Settings,
    project: str,
    *,
    images_per_scene: int,
    concurrency: int,
    selection: frozenset[int] | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> GenerateResult:
    """The whole command: open the database and provider, generate, close everything."""
    provider = Provider(
        settings.base_url,
        settings.api_key,
        settings.model,
        settings.provider,
        allow_http=settings.allow_http,
    )
    stop = StopSignal()
    try:
        async with await open_database(settings) as db:
            with sigint_stops(stop):
                return await generate(
                    db=db,
                    provider=provider,
                    log_dir=settings.resolved_log_dir(),
                    project=project,
                    shape=settings.shape,
                    images_per_scene=images_per_scene,
                    concurrency=concurrency,
                    selection=selection,
                    force=force,
                    stop=stop,
                    reporter=reporter,
                )
    finally:
        await provider.aclose()


async def generate(
    *,
    db: Database,
    provider: Provider,
    log_dir: Path,
    project: str,
    shape: Shape,
    images_per_scene: int,
    concurrency: int,
    selection: frozenset[int] | None = None,
    force: bool = False,
    stop: StopSignal | None = None,
    reporter: Reporter | None = None,
) -> GenerateResult:
    document = decode(await db.read(project), project=project)
    the_plan = plan(
        scenes(document, shape, project=project),
        images_per_scene,
        selection=selection,
        force=force,
        project=project,
    )
    with RunLog(log_dir) as log:
        log.write(
            "run.started",
            command="generate",
            project=project,
            requested=the_plan.requested,
            skipped_scenes=list(the_plan.skipped_scenes),
        )
        result = await execute_plan(
            db, provider, log, project, shape, the_plan, concurrency, stop, reporter
        )
        log.write(
            "run.finished",
            project=project,
            requested=result.requested,
            saved=result.saved,
            failed=result.failed,
            interrupted=result.interrupted,
        )
        return result


async def execute_plan(
    db: Database,
    provider: Provider,
    log: RunLog,
    project: str,
    shape: Shape,
    the_plan: Plan,
    concurrency: int,
    stop: StopSignal | None,
    reporter: Reporter | None,
) -> GenerateResult:
    stop = stop or StopSignal()
    result = GenerateResult(
        project=project,
        run=log.run_id,
        requested=the_plan.requested,
        skipped_scenes=list(the_plan.skipped_scenes),
        unprompted_scenes=list(the_plan.unprompted_scenes),
        log_path=str(log.path),
    )
    for index in the_plan.unprompted_scenes:
        result.errors.append(f"project {project}: scene {index} has no prompt; skipped")
        if reporter:
            reporter.warn(result.errors[-1])
    semaphore = asyncio.Semaphore(concurrency)
    calls: set[asyncio.Task[str]] = set()

    announced: set[str] = set()

    def failed(scene: Scene, message: str, url: str | None = None) -> None:
        result.failed += 1
        text = f"project {project}: scene {scene.ref.index}: {message}"
        result.errors.append(text)
        log.write(
            "image.failed",
            project=project,
            scene=scene.ref.index,
            scene_id=scene.ref.id,
            url=url,
            error=message,
        )
        if reporter:
            # One failing transaction fails every URL in it: say each distinct reason once.
            if message not in announced:
                announced.add(message)
                reporter.warn(text)
            reporter.advance(ok=False)

    async def one(saver: ProjectSaver, scene: Scene) -> None:
        assert scene.prompt is not None
        async with semaphore:
            if stop.requested:
                return
            call = asyncio.ensure_future(provider.generate(scene.prompt))
            calls.add(call)
            try:
                url = await call
            except asyncio.CancelledError:
                if call.cancelled() and stop.hard.is_set():
                    return
                raise
            except ImageFailed as exc:
                failed(scene, str(exc))
                return
            except ProviderRefused as exc:
                if result.fatal is None:
                    result.fatal = str(exc)
                stop.request()
                return
            finally:
                calls.discard(call)
        await log.record(
            "image.generated",
            project=project,
            scene=scene.ref.index,
            scene_id=scene.ref.id,
            url=url,
        )
        try:
            outcome = await saver.save(scene.ref, url)
        except Exception as exc:
            failed(scene, f"not saved, kept in the log for `imgsave repair`: {exc}", url)
            return
        if outcome is Outcome.NO_SCENE:
            failed(scene, "the scene no longer exists; URL not saved", url)
            return
        result.saved += 1
        result.saved_by_scene[scene.ref.index] += 1
        log.write(
            "image.saved", project=project, scene=scene.ref.index, scene_id=scene.ref.id, url=url
        )
        if reporter:
            reporter.advance(ok=True)

    async def abandon_calls_on_hard_stop() -> None:
        await stop.hard.wait()
        for call in list(calls):
            call.cancel()

    if reporter:
        reporter.start(result.requested, f"project {project}")
    watcher = asyncio.create_task(abandon_calls_on_hard_stop())
    try:
        async with ProjectSaver(db, project, shape) as saver:
            await asyncio.gather(
                *(one(saver, job.scene) for job in the_plan.jobs for _ in range(job.count))
            )
        result.transactions = saver.transactions
    finally:
        watcher.cancel()
        if reporter:
            reporter.finish()
    result.interrupted = stop.requested and result.fatal is None
    return result
