"""`imgsave repair`: put back exactly what audit found lost, through the same locked,
append-if-absent save as generate. Stale and orphaned URLs are never written."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Collection
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.markup import escape

from imgsave.adapters.imageapi.batches import BatchClient
from imgsave.adapters.imageapi.client import Provider, add_usage
from imgsave.adapters.imageapi.wires import Received, request_body
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.host_lock import exclusive
from imgsave.adapters.runlog.reader import LogQuery
from imgsave.adapters.runlog.writer import RunLog
from imgsave.adapters.storage import spool
from imgsave.adapters.storage.object_store import Store
from imgsave.core.documents import Outcome, SceneRef, Shape, decode, find, scenes
from imgsave.core.result_json import NOT_IN_JSON, fields_json, json_name, plain
from imgsave.core.scene_plan import Job, Plan
from imgsave.core.settings import Settings
from imgsave.errors import EXIT_CANNOT_WORK, EXIT_FINDINGS, EXIT_OK, ImgsaveError, LogUnwritable
from imgsave.operations.batches import Batches, BatchTally, finished_and_uncollected
from imgsave.operations.claims import Claims
from imgsave.operations.execution import Execution, Reporter, record_generated
from imgsave.operations.intake import Intake, Kept, NotKept, opened_intake
from imgsave.operations.job_resume import jobs_not_in_scenes, resume_jobs
from imgsave.operations.lost_images import AuditReport, Finding, audit
from imgsave.operations.recovery import job_ledger
from imgsave.operations.stop import StopSignal, sigint_stops
from imgsave.terminal import audit_view
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class RepairResult:
    report: AuditReport = field(metadata=NOT_IN_JSON)
    executed: bool
    repaired: int = 0
    # Spooled images put in the store and saved.
    uploaded: int = 0
    # Images of finished batches no run had collected, saved now.
    collected: int = 0
    # Jobs an earlier run paid for and never saw end, polled now; their images saved.
    jobs_resumed: int = 0
    resumed: int = 0
    regenerated: int = 0
    remaining: int = 0
    errors: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)
    run: str | None = None
    # Why regeneration stopped (the image API refused or could not be reached).
    fatal: str | None = field(default=None, metadata=json_name("stopped"))
    # What --regenerate spent: retries the provider may have billed, and its token counts.
    possibly_billed_retries: int = 0
    usage: dict[str, int] = field(default_factory=dict)

    @property
    def lost_before(self) -> int:
        return len(self.report.lost) + len(self.report.expired)

    @property
    def exit_code(self) -> int:
        if not self.executed:
            return self.report.exit_code
        if self.fatal or self.report.errors:
            return EXIT_CANNOT_WORK
        return EXIT_FINDINGS if self.remaining or self.errors else EXIT_OK

    def stderr_lines(self) -> list[str]:
        return [self.fatal] if self.fatal else []

    def to_json(self) -> dict[str, object]:
        report = self.report
        return {
            **fields_json(self),
            "lost_before": self.lost_before,
            "summary": report.summary(),
            "plan": plain(report.lost),
            **{
                status: plain(getattr(report, status))
                for status in ("expired", "stale", "orphaned")
            },
            "errors": report.errors + self.errors,
        }

    def render(self, console: Console) -> None:
        audit_view.report_problems(self.report, self.errors)
        if not self.executed:
            title = "Repair plan (dry run: nothing written)"
            audit_view.render_findings(self.report, console, title)
            console.print(escape(audit_view.summary_line(self.report, prefix="repair plan")))
            if self.report.lost:
                console.print("Run again with --execute to restore the lost images.")
            return
        run = f" (run {self.run})" if self.run else ""
        console.print(
            shown(
                f"repair: restored {self.repaired} of {self.lost_before} missing images, "
                + (
                    f"saved {self.uploaded} of {self.report.spooled} spooled images, "
                    if self.report.spooled
                    else ""
                )
                + f"regenerated {self.regenerated}, {self.remaining} still missing{run}"
            )
        )


async def restore(
    db: Database, report: AuditReport, log: RunLog, shape: Shape, *, projects_at_once: int = 4
) -> tuple[dict[tuple[str, int], int], list[str]]:
    """Append every lost URL, one locked transaction per project; log image.repaired for each.

    Returns how many URLs each (project, scene) got back, and errors by project.
    """
    from imgsave.operations.group_commit import ProjectSaver

    by_project: dict[str, list[Finding]] = defaultdict(list)
    for finding in report.lost:
        by_project[finding.project].append(finding)
    restored: dict[tuple[str, int], int] = defaultdict(int)
    errors: list[str] = []
    semaphore = asyncio.Semaphore(projects_at_once)

    async def one(project: str, findings: list[Finding]) -> None:
        async with semaphore:
            try:
                async with ProjectSaver(db, project, shape) as saver:
                    outcomes = await saver.save_many(
                        [(SceneRef(f.scene, f.scene_id), f.url) for f in findings]
                    )
            except Exception as exc:  # one project's failure must not stop the others
                errors.append(f"{_one_line(exc)} ({len(findings)} URLs not restored)")
                return
        for finding, outcome in zip(findings, outcomes, strict=True):
            if outcome is Outcome.NO_SCENE:
                errors.append(f"project {project}: scene {finding.scene} no longer exists")
                continue
            restored[(project, finding.scene)] += 1
            if outcome is Outcome.ADDED:
                try:
                    await log.record(
                        "image.repaired",
                        project=project,
                        scene=finding.scene,
                        scene_id=finding.scene_id,
                        url=finding.url,
                    )
                except LogUnwritable as exc:
                    # Saved all the same; the image was logged when it was generated.
                    if str(exc) not in errors:
                        errors.append(str(exc))

    await asyncio.gather(*(one(p, f) for p, f in by_project.items()))
    return restored, errors


def remaining(
    report: AuditReport,
    restored: dict[tuple[str, int], int],
    regenerated: dict[tuple[str, int], int],
    *,
    empty_scenes: bool = False,
) -> int:
    """Images still missing, scene by scene: what was lost, less what came back or was replaced
    (with `empty_scenes`, each never-logged empty scene --regenerate was asked to fill counts)."""
    missing: dict[tuple[str, int], int] = defaultdict(int)
    for finding in (*report.lost, *report.expired):
        missing[(finding.project, finding.scene)] += 1
    if empty_scenes:
        for project, ref in report.empty_scenes:
            missing[(project, ref.index)] += 1
    return sum(
        max(0, count - restored.get(key, 0) - regenerated.get(key, 0))
        for key, count in missing.items()
    )


async def run_repair(
    settings: Settings,
    query: LogQuery,
    *,
    execute: bool,
    regenerate: bool = False,
    check_urls: bool = False,
    concurrency: int = 8,
    reporter: Reporter | None = None,
) -> RepairResult:
    """Audit, then (with `execute`) restore every lost URL and, with `regenerate`, generate new
    images for scenes left short. Only one executing repair runs on a host at a time."""
    log_dir = settings.resolved_log_dir()
    lock = exclusive(log_dir / "repair.lock", "imgsave repair") if execute else nullcontext()
    # The image API is only opened (and its settings only checked) when it may be called.
    store = Store.from_settings(settings)
    with lock:
        async with (
            await Database.from_settings(settings) as db,
            opened_intake(settings, store, log_dir) as intake,
        ):
            report = await audit(
                db,
                query,
                log_dir=log_dir,
                shape=settings.shape,
                check_urls=check_urls,
                store=store,
                allow_private_network=settings.allow_private_network,
            )
            report.uncollected = await finished_and_uncollected(settings, db)
            report.jobs = await jobs_not_in_scenes(log_dir, db.normalise_key, query.only_projects)
            result = RepairResult(report, executed=execute)
            # The jobs of the configured API still pending: polled (polls cost nothing).
            resumable = any(
                j["state"] == "pending" and j["kind"] == settings.provider.kind for j in report.jobs
            )
            # The image API is only opened (and its settings only checked) when it may be
            # called.
            api: contextlib.AbstractAsyncContextManager[Provider | None] = (
                Provider.from_settings(settings)
                if execute and (regenerate or resumable)
                else nullcontext()
            )
            async with api as provider:
                wanted = provider is not None and (
                    resumable or (regenerate and (report.expired or report.empty_scenes))
                )
                work = report.uncollected or report.lost or (report.spooled and store) or wanted
                if execute and work:
                    if store is not None and (provider or report.spooled):
                        await store.probe()
                    # Only a repair with something to do leaves a log file behind: cron runs
                    # every few minutes, and audit rereads every file.
                    with RunLog(log_dir) as log:
                        await _repair(
                            db, provider, intake, log, settings, result, concurrency, reporter,
                            regenerate=regenerate, only=query.only_projects,
                        )  # fmt: skip
                elif execute:
                    result.remaining = (
                        remaining(report, {}, {}) + report.spooled + report.uncollected
                    )
            return result


async def _repair(
    db: Database,
    provider: Provider | None,
    intake: Intake,
    log: RunLog,
    settings: Settings,
    result: RepairResult,
    concurrency: int,
    reporter: Reporter | None,
    *,
    regenerate: bool,
    only: Collection[str],
) -> None:
    report = result.report
    result.run = log.run_id
    try:
        log.write(
            "run.started",
            command="repair",
            mode="append",
            lost=len(report.lost),
            expired=len(report.expired),
        )
    except LogUnwritable as exc:
        result.errors.append(f"{exc}; nothing repaired")
        result.remaining = remaining(report, {}, {}, empty_scenes=regenerate)
        return
    restored, result.errors = await restore(db, report, log, settings.shape)
    result.uploaded, spool_done = await _upload_spooled(db, intake, log, settings, result)
    if report.uncollected:
        await _collect_batches(db, intake, log, settings, result)
    if provider is not None and provider.job_kind:
        await _resume_jobs(db, provider, intake, log, settings, result, only)
    regenerated: dict[tuple[str, int], int] = {}
    if provider is not None and regenerate:
        stop = StopSignal()
        claims = (
            Claims(db, log.run_id, settings.claims.expiry)
            if settings.claims.enabled
            else nullcontext()
        )
        with sigint_stops(stop):
            async with claims as held:
                regenerated = await _regenerate(
                    db, provider, intake, log, settings.shape, report, concurrency, stop,
                    reporter, result, held,
                )  # fmt: skip
    result.repaired = sum(restored.values())
    result.regenerated = sum(regenerated.values())
    result.remaining = (
        remaining(report, restored, regenerated, empty_scenes=regenerate)
        + (report.spooled - spool_done)
        + max(0, report.uncollected - result.collected)
    )
    with contextlib.suppress(LogUnwritable):  # already reported by the write that failed first
        log.write(
            "run.finished",
            command="repair",
            repaired=result.repaired,
            regenerated=result.regenerated,
            remaining=result.remaining,
            stopped=result.fatal,
        )


async def _resume_jobs(
    db: Database,
    provider: Provider,
    intake: Intake,
    log: RunLog,
    settings: Settings,
    result: RepairResult,
    only: Collection[str],
) -> None:
    """Poll the jobs earlier runs on this host paid for and never saw end, and save their
    images, as the next generate would (job_resume.py)."""
    kind = provider.job_kind or ""
    ledger = await asyncio.to_thread(
        job_ledger, settings.resolved_log_dir(), normalise=db.normalise_key
    )
    named = {db.normalise_key(p) or p for p in only}
    for project, jobs in ledger.of_kind(kind).items():
        if named and project not in named:
            continue
        resumed = await resume_jobs(
            db=db, shape=settings.shape, provider=provider, intake=intake, log=log,
            project=project, pending=[(SceneRef(i, s), job) for (i, s), job in jobs],
        )  # fmt: skip
        result.jobs_resumed += resumed.jobs
        result.resumed += resumed.saved
        result.errors += resumed.errors


async def _collect_batches(
    db: Database, intake: Intake, log: RunLog, settings: Settings, result: RepairResult
) -> None:
    """What finished batches hold and no run took in: collected as generate --batch would."""
    tally = BatchTally()
    async with BatchClient.from_settings(settings) as client:
        batches = Batches(
            db=db, client=client, intake=intake, log=log, shape=settings.shape,
            request=lambda prompt: request_body(prompt, settings.model, settings.provider),
            allow_http=settings.allow_http,
        )  # fmt: skip
        await batches.collect(tally)
    result.collected = tally.saved
    result.errors += tally.errors


async def _upload_spooled(
    db: Database, intake: Intake, log: RunLog, settings: Settings, result: RepairResult
) -> tuple[int, int]:
    """Put each spooled image in the store and save it in its scene; its spool files go only
    once it is saved (or its scene already holds it). Returns how many were added, and how
    many left the spool: one that a killed repair stored and this run's restore already put
    back is done, counted once (as repaired), not missing."""
    waiting = spool.pending(settings.resolved_log_dir())
    if not waiting:
        return 0, 0
    if intake.store is None:
        result.errors.append(
            f"{len(waiting)} paid images wait in the spool for a store: set IMGSAVE_STORE and "
            "IMGSAVE_PUBLIC_URL, then run repair again"
        )
        return 0, 0
    from imgsave.operations.group_commit import ProjectSaver

    by_project: dict[str, list[spool.Spooled]] = defaultdict(list)
    for item in waiting:
        by_project[item.project].append(item)
    uploaded = done = 0
    for project, items in by_project.items():
        kept: list[tuple[spool.Spooled, Kept]] = []
        for item in items:
            try:
                received = Received(item.path.read_bytes(), item.source_url)
                image = await intake.keep(project, item.ref, received)
                fields = {**image.fields, "spool": str(item.path)}
                await record_generated(log, project, item.ref, image.url, fields, item.replaces)
            except (OSError, NotKept, ImgsaveError) as exc:
                result.errors.append(
                    f"project {project}: {item.ref}: spooled image not restored: "
                    f"{_one_line(exc)} ({item.path})"
                )
                continue
            kept.append((item, image))
        if not kept:
            continue
        try:  # the project's spooled images in one locked transaction
            async with ProjectSaver(db, project, settings.shape) as saver:
                outcomes = await saver.save_many([(item.ref, image.url) for item, image in kept])
        except ImgsaveError as exc:
            result.errors.append(
                f"{_one_line(exc)} ({len(kept)} spooled images stored, not saved; they stay "
                "in the spool)"
            )
            continue
        for (item, image), outcome in zip(kept, outcomes, strict=True):
            if outcome is Outcome.NO_SCENE:
                result.errors.append(
                    f"project {project}: {item.ref} no longer exists; spooled image kept in "
                    f"{item.path}"
                )
                continue
            log.write(
                "image.saved", project=project, scene=item.ref.index, scene_id=item.ref.id,
                url=image.url,
            )  # fmt: skip
            item.remove()
            uploaded += outcome is Outcome.ADDED
            done += 1
    return uploaded, done


async def _regenerate(
    db: Database,
    provider: Provider,
    intake: Intake,
    log: RunLog,
    shape: Shape,
    report: AuditReport,
    concurrency: int,
    stop: StopSignal,
    reporter: Reporter | None,
    result: RepairResult,
    claims: Claims | None,
) -> dict[tuple[str, int], int]:
    """New images for scenes left short: expired URLs that cannot come back (each new image
    logged as replacing one of them), and scenes that hold nothing and were never logged.
    Only scenes this run can claim: one waiting in a batch, or being generated now, is being
    paid for already."""
    wanted: dict[str, dict[SceneRef, list[str | None]]] = defaultdict(lambda: defaultdict(list))
    for finding in report.expired:
        wanted[finding.project][SceneRef(finding.scene, finding.scene_id)].append(finding.url)
    for project, ref in report.empty_scenes:
        wanted[project][ref].append(None)
    regenerated: dict[tuple[str, int], int] = {}
    for project, by_scene in wanted.items():
        if stop.requested:
            break
        try:
            all_scenes = scenes(
                decode(await db.read(project), project=project), shape, project=project
            )
        except ImgsaveError as exc:
            result.errors.append(f"{exc} (not regenerated)")
            continue
        jobs = tuple(
            Job(scene, len(olds), tuple(u for u in olds if u is not None))
            for ref, olds in by_scene.items()
            if (scene := find(all_scenes, ref)) is not None and scene.prompt
        )
        if claims is not None and jobs:
            mine, held = await claims.claim(project, [job.scene.ref for job in jobs])
            jobs = tuple(job for job in jobs if job.scene.ref in set(mine))
            if held:
                result.errors.append(
                    f"project {project}: {len(held)} scenes not regenerated: held by another "
                    "run (a batch waiting, or a generate in progress)"
                )
        execution = Execution(
            db=db,
            provider=provider,
            intake=intake,
            log=log,
            project=project,
            shape=shape,
            slots=concurrency,
            stop=stop,
            reporter=reporter,
            claims=claims,
        )
        tally = await execution.run(Plan(jobs))
        if claims is not None:
            await claims.release(project)
        result.errors.extend(e for e in tally.errors if e != tally.fatal)
        result.possibly_billed_retries += tally.possibly_billed_retries
        add_usage(result.usage, tally.usage)
        for index, saved in tally.saved_by_scene.items():
            regenerated[(project, index)] = saved
        if tally.fatal:
            result.fatal = tally.fatal
            break
        if tally.log_error:
            break
    return regenerated


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
