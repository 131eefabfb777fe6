"""`imgsave generate`: fill projects' scenes with images, with none lost and none paid twice.

One project, several, or `--all` (every project with a scene short of K): the plan is pure
(core/scene_plan.py), operations/execution.py carries it out, and operations/scheduler.py runs
the projects side by side under one concurrency bound, one pace and, across hosts, claims in
the database. The results below render themselves.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imgsave.adapters.imageapi.batches import BatchClient
from imgsave.adapters.imageapi.client import Provider, add_usage
from imgsave.adapters.imageapi.pace import PaceReport
from imgsave.adapters.imageapi.wires import request_body
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.writer import RunLog, new_run_id
from imgsave.adapters.storage.object_store import Store
from imgsave.core.documents import Shape
from imgsave.core.result_json import NOT_IN_JSON, fields_json, json_name
from imgsave.core.scene_plan import SceneSelection, plan
from imgsave.core.settings import Settings, StoreSettings
from imgsave.errors import (
    EXIT_CANNOT_WORK,
    EXIT_FINDINGS,
    EXIT_INTERRUPTED,
    ImgsaveError,
    UsageError,
)
from imgsave.operations.batches import Batches, BatchTally
from imgsave.operations.claims import Claims
from imgsave.operations.execution import Reporter, Tally
from imgsave.operations.intake import Intake, opened_intake
from imgsave.operations.scheduler import LINGER, MIN_IN_FLIGHT, Ask, Scheduler, listed
from imgsave.operations.slots import Slots
from imgsave.operations.stop import StopSignal, sigint_stops
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console

    from imgsave.terminal.progress import ProgressReporter

__all__ = ["GenerateResult", "ManyResult", "SceneSelection", "plan"]


# What `generate` reports: one project's result, and a run over several (totals plus each
# project's own object). Each renders itself and gives its JSON and exit code.


@dataclass
class GenerateResult:
    project: str
    run: str
    tally: Tally = field(default_factory=Tally, metadata=NOT_IN_JSON)
    skipped_scenes: list[int] = field(default_factory=list)
    unprompted_scenes: list[int] = field(default_factory=list)
    # Scenes another run (this host or another) held: skipped, that run reports them.
    held_scenes: list[int] = field(default_factory=list)
    # Of those, the ones whose holder stopped extending its claims (a run that died on another
    # host): nobody is working on them until their claims expire, so they are a finding.
    stalled_scenes: list[int] = field(default_factory=list)
    # Paid images an earlier run received and never saved, saved now instead of paid again.
    recovered: int = 0
    # Jobs an earlier run paid for and never saw end, polled again (job APIs).
    jobs_resumed: int = 0
    log_path: str | None = field(default=None, metadata=json_name("log"))
    # The run's pace; only a run of one project carries it (several: the run's result does).
    pace: PaceReport | None = field(default=None, metadata=NOT_IN_JSON)
    # Set when the project could not be worked on at all (not found, malformed, ...).
    refused_with: int | None = field(default=None, metadata=NOT_IN_JSON)
    # --strict: a scene without a prompt is a finding (exit 1). Without it such scenes are
    # reported and the exit code ignores them: nothing imgsave does can give them a prompt,
    # and a cron run every 15 minutes must not alert on them forever.
    strict: bool = field(default=False, metadata=NOT_IN_JSON)

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

    def failure(self, exc: ImgsaveError) -> None:
        """The project could not be worked on; the run goes on with the others."""
        self.tally.fatal = str(exc)
        self.refused_with = exc.exit_code

    @property
    def exit_code(self) -> int:
        if self.refused_with is not None:
            return self.refused_with
        code = self.tally.exit_code
        unprompted = self.strict and self.unprompted_scenes
        finding = unprompted or self.stalled_scenes or self.tally.jobs_lost
        return max(code, EXIT_FINDINGS) if finding and code == 0 else code

    def stderr_lines(self) -> list[str]:
        fatal = [self.tally.fatal] if self.tally.fatal else []
        return fatal + self.tally.unlogged_lines()

    def to_json(self) -> dict[str, object]:
        pace = {"pace": pace_json(self.pace)} if self.pace else {}
        return {**fields_json(self), **self.tally.to_json(), **pace}

    def render(self, console: Console) -> None:
        console.print(shown(self.summary()))

    def summary(self) -> str:
        t = self.tally
        if self.refused_with is not None:
            return f"project {self.project}: not worked on: {t.fatal}"
        head = f"project {self.project}: {t.saved} of {t.requested} images saved"
        if t.requested:
            head += f" in {t.transactions} transaction{'s' if t.transactions != 1 else ''}"
        parts = [head]
        if t.received != t.requested and t.received:
            parts.append(f"{t.received} received")
        if t.usage.get("total_tokens"):
            parts.append(f"{t.usage['total_tokens']:,} tokens")
        if t.refusals:
            parts.append(
                "refused: " + ", ".join(f"{n} {why}" for why, n in t.refusals.most_common())
            )
        if self.jobs_resumed:
            parts.append(f"{self.jobs_resumed} jobs of an earlier run polled again")
        if t.jobs_lost:
            parts.append(f"{t.jobs_lost} jobs paid for and lost (their results were gone)")
        if t.spooled:
            parts.append(f"{t.spooled} kept in the spool for `imgsave repair`")
        if t.provisional:
            parts.append(f"{t.provisional} saved as the provider's URL (run `imgsave rehost`)")
        if t.possibly_billed_retries:
            parts.append(f"{t.possibly_billed_retries} retries the provider may have billed")
        if t.failed:
            logged = (
                f" ({t.failed_in_log} in the log for `imgsave repair`)" if t.failed_in_log else ""
            )
            parts.append(f"{t.failed} failed{logged}")
        if t.duplicates:
            parts.append(f"{t.duplicates} answered with a URL the scene already held (not saved)")
        if self.recovered:
            parts.append(f"{self.recovered} received by an earlier run and saved now")
        if self.skipped_scenes:
            parts.append(f"{len(self.skipped_scenes)} scenes already complete")
        if self.unprompted_scenes:
            parts.append(f"{len(self.unprompted_scenes)} scenes without a prompt")
        if self.held_scenes:
            parts.append(f"{len(self.held_scenes)} scenes held by another run (skipped)")
        if self.stalled_scenes:
            parts.append(f"{len(self.stalled_scenes)} of them by a run that stopped")
        if t.not_requested:
            parts.append(f"{t.not_requested} not requested")
        if t.abandoned:
            parts.append(f"{t.abandoned} abandoned at the second Ctrl-C (may have been billed)")
        if t.interrupted:
            parts.append("interrupted")
        parts += [f"stopped: {why}" for why in (t.fatal, t.log_error) if why]
        if self.pace and (self.pace.asked or self.pace.throttled):
            parts.append(pace_text(self.pace))
        return ", ".join(parts) + f" (run {self.run})"


def pace_json(pace: PaceReport) -> dict[str, object]:
    return {
        "asked_per_minute": pace.asked,
        "achieved_per_minute": pace.achieved,
        "requests": pace.requests,
        "throttled": pace.throttled,
    }


def pace_text(pace: PaceReport) -> str:
    asked = f" (asked {pace.asked:g}/min)" if pace.asked else ""
    achieved = f"{pace.achieved:g} requests/min{asked}, " if pace.achieved else ""
    return f"{achieved}{pace.throttled} throttled (429)"


@dataclass
class ManyResult:
    """A run over several projects: totals, and each project's own result object."""

    run: str
    project: None = None  # the single-project key, kept so one parser reads both shapes
    requested: int = 0
    saved: int = 0
    failed: int = 0
    not_requested: int = 0
    abandoned: int = 0
    # Scenes skipped, counted over every project (each project's object lists its own).
    skipped_scenes: int = 0
    unprompted_scenes: int = 0
    held_scenes: int = 0
    stalled_scenes: int = 0
    recovered: int = 0
    transactions: int = 0
    possibly_billed_retries: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    jobs_resumed: int = 0
    jobs_lost: int = 0
    # Projects named or found that the run never started: it stopped, or --max-images ran out.
    projects_not_started: int = 0
    stopped: str | None = None
    interrupted: bool = False
    pace: PaceReport | None = field(default=None, metadata=NOT_IN_JSON)
    projects: list[dict[str, object]] = field(default_factory=list)
    _worst: int = field(default=0, metadata=NOT_IN_JSON)
    _lines: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)
    _stderr: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)

    def add(self, result: GenerateResult) -> None:
        """Fold one finished project in; only its JSON object and summary line are kept."""
        t = result.tally
        if result.refused_with is None and (t.fatal or t.log_error) and not self.stopped:
            # The image API refused, or the log stopped taking writes: that stopped the run.
            self.stopped = t.fatal or t.log_error
        self.projects.append(result.to_json())
        self.requested += t.requested
        self.saved += t.saved
        self.failed += t.failed
        self.not_requested += t.not_requested
        self.abandoned += t.abandoned
        self.skipped_scenes += len(result.skipped_scenes)
        self.unprompted_scenes += len(result.unprompted_scenes)
        self.held_scenes += len(result.held_scenes)
        self.stalled_scenes += len(result.stalled_scenes)
        self.recovered += result.recovered
        self.transactions += t.transactions
        self.possibly_billed_retries += t.possibly_billed_retries
        add_usage(self.usage, t.usage)
        self.refusals.update(t.refusals)
        self.jobs_resumed += result.jobs_resumed
        self.jobs_lost += t.jobs_lost
        code = result.exit_code
        self._worst = max(self._worst, code)
        if code or result.held_scenes:
            self._lines.append(result.summary())
        self._stderr += result.tally.unlogged_lines()

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return EXIT_CANNOT_WORK
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self._worst == 0 and (self.projects_not_started or self.not_requested):
            return EXIT_FINDINGS
        return self._worst

    def stderr_lines(self) -> list[str]:
        return ([self.stopped] if self.stopped else []) + self._stderr

    def to_json(self) -> dict[str, object]:
        pace = {"pace": pace_json(self.pace)} if self.pace else {}
        return {**fields_json(self), **pace}

    def render(self, console: Console) -> None:
        for line in self._lines:
            console.print(shown(line))
        n, tx = len(self.projects), self.transactions
        parts = [
            f"generate: {n} project{'' if n == 1 else 's'}, {self.saved} of {self.requested} "
            f"images saved in {tx} transaction{'' if tx == 1 else 's'}"
        ]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.not_requested:
            parts.append(f"{self.not_requested} not requested")
        if self.abandoned:
            parts.append(f"{self.abandoned} abandoned at the second Ctrl-C (may have been billed)")
        if self.projects_not_started:
            parts.append(f"{self.projects_not_started} projects not started")
        if self.held_scenes:
            parts.append(f"{self.held_scenes} scenes held by other runs")
        if self.stalled_scenes:
            parts.append(f"{self.stalled_scenes} of them by runs that stopped")
        if self.unprompted_scenes:
            parts.append(f"{self.unprompted_scenes} scenes without a prompt")
        if self.recovered:
            parts.append(f"{self.recovered} received by an earlier run and saved now")
        if self.usage.get("total_tokens"):
            parts.append(f"{self.usage['total_tokens']:,} tokens")
        if self.possibly_billed_retries:
            parts.append(f"{self.possibly_billed_retries} retries the provider may have billed")
        if self.interrupted:
            parts.append("interrupted")
        if self.stopped:
            parts.append(f"stopped: {self.stopped}")
        if self.pace and (self.pace.asked or self.pace.throttled):
            parts.append(pace_text(self.pace))
        console.print(shown(", ".join(parts) + f" (run {self.run})"))


async def run(
    settings: Settings,
    projects: str | Sequence[str] = (),
    *,
    all_projects: bool = False,
    images_per_scene: int,
    concurrency: int,
    selection: SceneSelection | None = None,
    force: bool = False,
    max_images: int | None = None,
    strict: bool = False,
    reporter: ProgressReporter | None = None,
) -> GenerateResult | ManyResult:
    """The whole command: open the database, provider and store, claim and generate, close.
    One project named as a string gives that project's result; several, or `--all`, the run's.
    """
    single = isinstance(projects, str)
    names = [projects] if isinstance(projects, str) else list(dict.fromkeys(projects))
    if bool(names) == all_projects:
        raise UsageError("name the projects to generate for, or give --all (not both)")
    stop = StopSignal()
    store = Store.from_settings(settings)
    log_dir = settings.resolved_log_dir()
    run_id = new_run_id()
    async with (
        Provider.from_settings(settings) as provider,
        await Database.from_settings(settings, max_size=4 if single else 6) as db,
        opened_intake(settings, store, log_dir) as intake,
    ):
        if store is not None:
            await store.probe()  # before anything is spent
        # One spelling per row, once, before claims, object keys, logs and output: a uuid typed
        # in upper case on one host and listed in lower case by another is one project.
        names = list(dict.fromkeys(db.normalise_key(name) or name for name in names))
        async with _claims(db, run_id, settings) as claims:
            with sigint_stops(stop), RunLog(log_dir, run_id) as log:
                scheduler = Scheduler(
                    db=db,
                    provider=provider,
                    intake=intake,
                    log=log,
                    shape=settings.shape,
                    ask=Ask(images_per_scene, selection, force),
                    slots=Slots(
                        concurrency,
                        budget=max_images,
                        quantum=1 if single else max(1, concurrency // MIN_IN_FLIGHT),
                    ),
                    stop=stop,
                    claims=claims,
                    reporter=(lambda _: reporter)
                    if single or reporter is None
                    else reporter.project,
                    result=lambda name: GenerateResult(project=name, run=run_id, strict=strict),
                    linger=0.0 if single else LINGER,
                    allow_http=settings.allow_http,
                )
                pace = provider.pace.report if provider.pace else lambda: None
                if single:
                    return await _one(scheduler, names[0], pace)
                many = ManyResult(run=run_id)
                try:
                    many.projects_not_started = await scheduler.run(
                        _sources(db, names, all_projects, images_per_scene, force), many.add
                    )
                finally:
                    if reporter is not None:
                        reporter.finish()
                many.stopped = scheduler.fatal or many.stopped
                many.interrupted = stop.signalled
                many.pace = pace()
                return many


@contextlib.asynccontextmanager
async def _claims(db: Database, run_id: str, settings: Settings) -> AsyncIterator[Claims | None]:
    if not settings.claims.enabled:
        yield None
        return
    async with Claims(db, run_id, settings.claims.expiry) as claims:
        yield claims


def _sources(
    db: Database, names: list[str], all_projects: bool, images_per_scene: int, force: bool
) -> AsyncIterator[list[str]]:
    if not all_projects:
        return listed(names)
    # --force asks K more of every scene: every project has work.
    return db.project_keys() if force else db.projects_short_of(images_per_scene)


async def _one(
    scheduler: Scheduler[GenerateResult], project: str, pace: Callable[[], PaceReport | None]
) -> GenerateResult:
    landed: list[GenerateResult] = []
    await scheduler.run(listed([project]), landed.append, strict=True)
    result = landed[0]
    result.pace = pace()
    return result


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
    intake: Intake | None = None,
) -> GenerateResult:
    """One project's images on an open database and provider, without claims (the demo and
    the benchmarks). Without a `intake`, URL answers are saved as the provider's URLs and a
    bytes answer stops the run (there is no store to put it in)."""
    intake = intake or Intake(
        store=None, fetcher=None, log_dir=log_dir, max_image_bytes=StoreSettings().max_image_bytes
    )
    with RunLog(log_dir) as log:
        scheduler = Scheduler(
            db=db,
            provider=provider,
            intake=intake,
            log=log,
            shape=shape,
            ask=Ask(images_per_scene, selection, force),
            slots=Slots(concurrency),
            stop=stop or StopSignal(),
            claims=None,
            reporter=lambda _: reporter,
            result=lambda name: GenerateResult(project=name, run=log.run_id),
        )
        return await _one(scheduler, project, lambda: None)


# -- --batch: the provider's Batch API ------------------------------------------------------


@dataclass
class BatchRunResult:
    """A `generate --batch` run: what it collected, what it submitted, what is still running.
    `skipped_scenes` and `held_scenes` are counts here, as in a run over several projects."""

    run: str
    project: str | None
    tally: BatchTally = field(default_factory=BatchTally, metadata=NOT_IN_JSON)

    @property
    def exit_code(self) -> int:
        t = self.tally
        return EXIT_FINDINGS if t.failed or t.lost or t.uncollected or t.spooled else 0

    def stderr_lines(self) -> list[str]:
        return []

    def to_json(self) -> dict[str, object]:
        t = self.tally
        return {
            "project": self.project,
            "run": self.run,
            "batch": True,
            "requested": t.requested,
            "saved": t.saved,
            "failed": t.failed,
            "skipped_scenes": t.skipped_scenes,
            "held_scenes": t.held_scenes,
            "received": t.received,
            "recovered": t.recovered,
            "spooled": t.spooled,
            "lost": t.lost,
            "in_batches": t.in_batches,
            "batches": {"submitted": t.submitted, "collected": t.collected, "pending": t.pending},
            "per_batch": t.per_batch,
            "refusals": dict(t.refusals),
            "usage": t.usage,
            "possibly_billed_retries": 0,
            "errors": t.errors,
        }

    def render(self, console: Console) -> None:
        t = self.tally
        parts = [
            f"generate --batch: {len(t.submitted)} batches submitted ({t.in_batches} images), "
            f"{len(t.collected)} collected ({t.saved} images saved)"
        ]
        if t.pending:
            parts.append(f"{len(t.pending)} still running")
        if t.failed:
            parts.append(f"{t.failed} failed")
        if t.refusals:
            parts.append(", ".join(f"{n} {why}" for why, n in t.refusals.items()))
        if t.lost:
            parts.append(f"{t.lost} paid for and lost (output expired)")
        if t.recovered:
            parts.append(f"{t.recovered} received by an earlier run and saved now")
        if t.held_scenes:
            parts.append(f"{t.held_scenes} scenes held by other runs")
        if t.usage.get("total_tokens"):
            parts.append(f"{t.usage['total_tokens']:,} tokens")
        for line in t.errors:
            console.print(shown(line), style="yellow")
        console.print(shown(", ".join(parts) + f" (run {self.run})"))


async def run_batch(
    settings: Settings,
    projects: str | Sequence[str] = (),
    *,
    all_projects: bool = False,
    images_per_scene: int,
    selection: SceneSelection | None = None,
    force: bool = False,
    batch_size: int = 500,
    wait: bool = False,
    reporter: Reporter | None = None,
) -> BatchRunResult:
    """Collect every finished batch of this database, then submit what is still missing and
    not already in a batch; with `wait`, stay until what was submitted is collected."""
    names = [projects] if isinstance(projects, str) else list(dict.fromkeys(projects))
    if bool(names) == all_projects:
        raise UsageError("name the projects to generate for, or give --all (not both)")
    store = Store.from_settings(settings)
    log_dir = settings.resolved_log_dir()
    client = BatchClient.from_settings(settings)
    async with (
        client,
        await Database.from_settings(settings) as db,
        opened_intake(settings, store, log_dir) as intake,
    ):
        if store is not None:
            await store.probe()  # before anything is spent
        names = list(dict.fromkeys(db.normalise_key(name) or name for name in names))
        with RunLog(log_dir) as log:
            result = BatchRunResult(log.run_id, names[0] if len(names) == 1 else None)
            batches = Batches(
                db=db,
                client=client,
                intake=intake,
                log=log,
                shape=settings.shape,
                request=lambda prompt: request_body(prompt, settings.model, settings.provider),
                allow_http=settings.allow_http,
            )
            tally = result.tally
            await batches.collect(tally)
            if all_projects:
                source = db.project_keys() if force else db.projects_short_of(images_per_scene)
                names = [name async for chunk in source for name in chunk]
            await batches.submit(
                names,
                tally,
                images_per_scene=images_per_scene,
                selection=selection,
                force=force,
                batch_size=batch_size,
            )
            if wait:
                await batches.wait(tally, poll=settings.provider.batch_poll, reporter=reporter)
            else:
                tally.pending += [b for b in tally.submitted if b not in tally.pending]
    return result
