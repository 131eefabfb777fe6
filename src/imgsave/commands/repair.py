"""`imgsave repair`: put back exactly what audit found lost (operations/repairing.py), after
settling what this database paid for and never saved (operations/settle.py). Stale and orphaned
URLs are never written. Only one executing repair runs on a host at a time."""

from __future__ import annotations

import contextlib
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.markup import escape

from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.host_lock import exclusive
from imgsave.adapters.runlog.reader import LogQuery
from imgsave.core import events
from imgsave.core.result_json import NOT_IN_JSON, fields_json, json_name, plain
from imgsave.core.settings import Settings
from imgsave.errors import EXIT_CANNOT_WORK, EXIT_FINDINGS, EXIT_OK, LogUnwritable
from imgsave.operations import generating, repairing
from imgsave.operations.auditing import audited
from imgsave.operations.batches import Batches, opened_api
from imgsave.operations.claims import claimed
from imgsave.operations.lost_images import AuditReport
from imgsave.operations.session import Session, opened
from imgsave.operations.settled import Settled
from imgsave.operations.stop import StopSignal, sigint_stops
from imgsave.terminal import audit_view
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console

    from imgsave.operations.execution import Reporter


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
    # Settling found these paid and lost, and could not read these APIs (exit 3).
    lost_now: int = 0
    unreadable: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)

    @property
    def lost_before(self) -> int:
        return len(self.report.lost) + len(self.report.expired)

    @property
    def exit_code(self) -> int:
        if not self.executed:
            return self.report.exit_code
        if self.fatal or self.report.errors or self.unreadable:
            return EXIT_CANNOT_WORK
        # The same finding gives the same exit code as audit's: paid and lost is a finding.
        lost = self.report.jobs_lost or self.lost_now
        return EXIT_FINDINGS if self.remaining or self.errors or lost else EXIT_OK

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
            "errors": report.errors + report.unreadable + self.errors + self.unreadable,
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


async def run_repair(
    settings: Settings,
    query: LogQuery,
    *,
    execute: bool,
    regenerate: bool = False,
    check_urls: bool = False,
    concurrency: int = 8,
    max_images: int | None = None,
    reporter: Reporter | None = None,
) -> RepairResult:
    """Audit, then (with `execute`) settle, restore every lost URL and, with `regenerate`,
    generate new images for scenes left short."""
    log_dir = settings.resolved_log_dir()
    lock = exclusive(log_dir / "repair.lock", "imgsave repair") if execute else nullcontext()
    with lock:
        async with await Database.from_settings(settings) as db:
            report = await audited(settings, db, query, check_urls=check_urls)
        result = RepairResult(report, executed=execute)
        if not execute:
            return result
        async with opened(settings, probe=False) as s, opened_api(settings) as api:
            provider = _provider(settings, report, regenerate)
            async with provider if provider is not None else nullcontext() as provider:
                if s.store is not None and (provider is not None or report.spooled):
                    await s.store.probe()
                batches = Batches(api=api, db=s.db, purchases=s.purchases,
                                  shape=settings.shape) if api else None  # fmt: skip
                await _repair(s, provider, batches, result, concurrency, max_images, reporter,
                              regenerate=regenerate)  # fmt: skip
    return result


def _provider(settings: Settings, report: AuditReport, regenerate: bool) -> Provider | None:
    """The image API, only when it may be called (and its settings only checked then): to
    regenerate, or to poll the jobs of the configured kind that are still pending."""
    kind = settings.provider.kind
    pending = any(j["state"] == "pending" and j["kind"] == kind for j in report.jobs)
    wanted = (regenerate and (report.expired or report.empty_scenes)) or pending
    return Provider.from_settings(settings) if wanted else None


async def _repair(
    s: Session,
    provider: Provider | None,
    batches: Batches | None,
    result: RepairResult,
    concurrency: int,
    max_images: int | None,
    reporter: Reporter | None,
    *,
    regenerate: bool,
) -> None:
    report = result.report
    result.run = s.run
    everything = generating.Targets((), all_projects=True)
    settled = await generating.settle(s, everything, provider, batches)
    _absorb(result, settled)
    known = settled.recovered - settled.uploaded - settled.batch_images - settled.job_images
    result.repaired = known
    wanted = regenerate and (report.expired or report.empty_scenes)
    if not (report.lost or wanted or report.spooled or report.uncollected):
        # Cron runs this every few minutes: nothing to do leaves no log behind.
        result.remaining = max(0, report.spooled - result.uploaded) + max(
            0, report.uncollected - result.collected
        )
        return
    try:
        s.log.write(events.RUN_STARTED, command="repair", mode="append", lost=len(report.lost),
                    expired=len(report.expired))  # fmt: skip
    except LogUnwritable as exc:
        result.errors.append(f"{exc}; nothing repaired")
        result.remaining = repairing.remaining(report, {}, {}, empty_scenes=regenerate)
        return
    # What settling just put back is not restored a second time.
    restored = await repairing.restore(
        s, [f for f in report.lost if f.url not in settled.saved_urls]
    )
    result.errors += restored.errors
    regenerated: repairing.SceneCounts = {}
    if provider is not None and regenerate:
        stop = StopSignal()
        with sigint_stops(stop):
            async with claimed(s.db.connector, s.run, s.settings.claims) as claims:
                regenerated, tally = await repairing.regenerate(
                    s, provider, report, claims=claims, concurrency=concurrency,
                    max_images=max_images, stop=stop, reporter=reporter,
                )  # fmt: skip
        result.errors += [e for e in tally.errors if e != tally.fatal]
        result.possibly_billed_retries = tally.possibly_billed_retries
        result.usage = tally.usage
        result.fatal = tally.fatal
    result.repaired += sum(restored.by_scene.values())
    result.regenerated = sum(regenerated.values())
    result.remaining = (
        repairing.remaining(
            report,
            _with(restored.by_scene, report, settled.saved_urls),
            regenerated,
            empty_scenes=regenerate,
        )
        + max(0, report.spooled - result.uploaded)
        + max(0, report.uncollected - result.collected)
    )
    with contextlib.suppress(LogUnwritable):  # already reported by the write that failed first
        s.log.write(
            events.RUN_FINISHED, command="repair", repaired=result.repaired,
            regenerated=result.regenerated, remaining=result.remaining, stopped=result.fatal,
        )  # fmt: skip


def _absorb(result: RepairResult, settled: Settled) -> None:
    result.uploaded = settled.uploaded
    result.collected = settled.batch_images
    result.jobs_resumed = settled.jobs_resumed
    result.resumed = settled.job_images
    result.lost_now = settled.lost
    result.unreadable = settled.unreadable
    result.errors += settled.errors


def _with(
    restored: repairing.SceneCounts, report: AuditReport, saved: set[str]
) -> repairing.SceneCounts:
    """What came back, scene by scene: restored now, or saved by settling just before."""
    counts = dict(restored)
    for finding in report.lost:
        if finding.url in saved:
            key = (finding.project, finding.scene)
            counts[key] = counts.get(key, 0) + 1
    return counts
