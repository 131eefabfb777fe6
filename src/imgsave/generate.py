"""`imgsave generate`: fill a project's scenes with images, with none lost.

The plan (which scenes need how many images) is pure; the engine carries it out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Settings, StoreSettings
from .consoles import shown
from .db import Database
from .document import Scene, Shape, decode, scenes
from .engine import Execution, Job, Plan, Reporter, Tally, finish_log
from .errors import EXIT_FINDINGS, UsageError
from .genlog import RunLog, new_run_id
from .interrupt import StopSignal, sigint_stops
from .jsondata import NOT_IN_JSON, fields_json, json_name
from .keeper import Keeper, opened_keeper
from .provider import Provider
from .store import Store

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class GenerateResult:
    project: str
    run: str
    tally: Tally = field(default_factory=Tally, metadata=NOT_IN_JSON)
    skipped_scenes: list[int] = field(default_factory=list)
    unprompted_scenes: list[int] = field(default_factory=list)
    log_path: str | None = field(default=None, metadata=json_name("log"))

    # The engine's counts, under the names the JSON contract gives them.
    @property
    def requested(self) -> int:
        return self.tally.requested

    @property
    def saved(self) -> int:
        return self.tally.saved

    @property
    def failed(self) -> int:
        return self.tally.failed

    @property
    def exit_code(self) -> int:
        code = self.tally.exit_code
        return max(code, EXIT_FINDINGS) if self.unprompted_scenes and code == 0 else code

    def stderr_lines(self) -> list[str]:
        fatal = [self.tally.fatal] if self.tally.fatal else []
        return fatal + self.tally.unlogged_lines()

    def to_json(self) -> dict[str, object]:
        return {**fields_json(self), **self.tally.to_json()}

    def render(self, console: Console) -> None:
        t = self.tally
        head = f"project {self.project}: {t.saved} of {t.requested} images saved"
        if t.requested:
            head += f" in {t.transactions} transaction{'s' if t.transactions != 1 else ''}"
        parts = [head]
        if t.received != t.requested and t.received:
            parts.append(f"{t.received} received")
        if t.usage.get("total_tokens"):
            parts.append(f"{t.usage['total_tokens']:,} tokens")
        if t.spooled:
            parts.append(f"{t.spooled} kept in the spool for `imgsave repair`")
        if t.provisional:
            parts.append(f"{t.provisional} saved as the provider's URL (run `imgsave rehost`)")
        if t.possibly_billed_retries:
            parts.append(f"{t.possibly_billed_retries} retries the provider may have billed")
        if t.failed:
            parts.append(f"{t.failed} failed (in the log for `imgsave repair`)")
        if t.duplicates:
            parts.append(f"{t.duplicates} answered with a URL the scene already held (not saved)")
        if self.skipped_scenes:
            parts.append(f"{len(self.skipped_scenes)} scenes already complete")
        if self.unprompted_scenes:
            parts.append(f"{len(self.unprompted_scenes)} scenes without a prompt")
        if t.interrupted:
            parts.append("interrupted")
        parts += [f"stopped: {why}" for why in (t.fatal, t.log_error) if why]
        console.print(shown(", ".join(parts) + f" (run {self.run})"))


@dataclass(frozen=True)
class SceneSelection:
    """`--scenes 1,3,5-8` as ranges: `1-20000000` costs two integers, not a set of millions."""

    ranges: tuple[tuple[int, int], ...]

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and any(lo <= index <= hi for lo, hi in self.ranges)

    def first_missing(self, present: set[int]) -> int | None:
        """The lowest selected index not in `present`, in time bounded by len(present)."""
        missing = []
        for lo, hi in self.ranges:
            index = lo
            while index <= hi and index in present:
                index += 1
            if index <= hi:
                missing.append(index)
        return min(missing) if missing else None


def parse_scene_selection(spec: str) -> SceneSelection:
    """`1,3,5-8` -> ranges (1,1), (3,3), (5,8)."""
    ranges: list[tuple[int, int]] = []
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
        ranges.append((first, last))
    return SceneSelection(tuple(ranges))


def plan(
    all_scenes: Sequence[Scene],
    images_per_scene: int,
    *,
    selection: SceneSelection | None = None,
    force: bool = False,
    project: str = "?",
) -> Plan:
    """Which scenes need how many images. Pure: reruns after a crash only do what is missing."""
    if selection is not None:
        missing = selection.first_missing({s.ref.index for s in all_scenes})
        if missing is not None:
            raise UsageError(f"project {project} has no scene {missing} (--scenes)")
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
    selection: SceneSelection | None = None,
    force: bool = False,
    reporter: Reporter | None = None,
) -> GenerateResult:
    """The whole command: open the database and provider, generate, close everything."""
    stop = StopSignal()
    store = Store.from_settings(settings)
    log_dir = settings.resolved_log_dir()
    async with (
        Provider.from_settings(settings) as provider,
        await Database.from_settings(settings) as db,
        opened_keeper(settings, store, log_dir) as keeper,
    ):
        if store is not None:
            await store.probe()  # before anything is spent
        with sigint_stops(stop):
            return await generate(
                db=db,
                provider=provider,
                log_dir=log_dir,
                project=project,
                shape=settings.shape,
                images_per_scene=images_per_scene,
                concurrency=concurrency,
                selection=selection,
                force=force,
                stop=stop,
                reporter=reporter,
                keeper=keeper,
            )


async def generate(
    *,
    db: Database,
    provider: Provider,
    log_dir: Path,
    project: str,
    shape: Shape,
    images_per_scene: int,
    concurrency: int,
    selection: SceneSelection | None = None,
    force: bool = False,
    stop: StopSignal | None = None,
    reporter: Reporter | None = None,
    keeper: Keeper | None = None,
) -> GenerateResult:
    """Plan and carry out one project's images. Without a `keeper`, URL answers are saved as the
    provider's URLs and a bytes answer stops the run (there is no store to put it in)."""
    keeper = keeper or Keeper(
        store=None, fetcher=None, log_dir=log_dir, max_image_bytes=StoreSettings().max_image_bytes
    )
    document = decode(await db.read(project), project=project)
    the_plan = plan(
        scenes(document, shape, project=project),
        images_per_scene,
        selection=selection,
        force=force,
        project=project,
    )
    result = GenerateResult(
        project=project,
        run=new_run_id(),
        skipped_scenes=list(the_plan.skipped_scenes),
        unprompted_scenes=list(the_plan.unprompted_scenes),
    )
    for index in the_plan.unprompted_scenes:
        result.tally.errors.append(f"project {project}: scene {index} has no prompt; skipped")
        if reporter:
            reporter.warn(result.tally.errors[-1])
    if not the_plan.jobs:  # nothing to spend, nothing to record
        return result
    with RunLog(log_dir, result.run) as log:
        log.write(
            "run.started",
            command="generate",
            mode="append",
            project=project,
            requested=the_plan.requested,
            skipped_scenes=list(the_plan.skipped_scenes),
            plan=the_plan.to_log(),
        )
        result.log_path = str(log.path)
        errors = result.tally.errors
        execution = Execution(
            db=db,
            provider=provider,
            keeper=keeper,
            log=log,
            project=project,
            shape=shape,
            concurrency=concurrency,
            stop=stop,
            reporter=reporter,
        )
        result.tally = await execution.run(the_plan)
        result.tally.errors[:0] = errors
        finish_log(log, result.tally, project=project)
    return result
