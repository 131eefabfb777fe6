"""`imgsave repair`: put back exactly what audit found lost (operations/repairing.py), after
settling what this database paid for and never saved (operations/settle.py). Stale and orphaned
URLs are never written. Only one executing repair runs on a host at a time."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.markup import escape

from imgsave.adapters.runlog.reader import LogQuery, ReadStats
from imgsave.core.cost import SYNC, Limits, Pricing
from imgsave.core.result_json import NOT_IN_JSON, fields_json, plain
from imgsave.core.settings import Settings
from imgsave.errors import EXIT_CANNOT_WORK, EXIT_FINDINGS, EXIT_OK
from imgsave.operations import repairing
from imgsave.operations.lost_images import AuditReport
from imgsave.operations.repairing import Repaired
from imgsave.terminal import audit_view
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console

    from imgsave.operations.execution import Reporter


@dataclass
class RepairResult(Repaired):
    report: AuditReport = field(
        default_factory=lambda: AuditReport(ReadStats()), metadata=NOT_IN_JSON
    )
    executed: bool = False
    # With --regenerate, what one image costs: the JSON's `cost` for the images it asked for.
    pricing: Pricing | None = field(default=None, metadata=NOT_IN_JSON)

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
            "notes": report.notes,
            **({"cost": self.pricing.cost_json(self.sent, SYNC)} if self.pricing else {}),
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
    limits: Limits = Limits(),
    reporter: Reporter | None = None,
) -> RepairResult:
    """Audit, then (with `execute`) settle, restore every lost URL and, with `regenerate`,
    generate new images for scenes left short: at most `--max-images`, and no more than
    `--max-cost` buys at the configured price."""
    pricing = Pricing.of(settings.provider)
    cap = limits.cap(pricing, SYNC)
    result = RepairResult(executed=execute, pricing=pricing if regenerate else None)
    regeneration = repairing.Regeneration(concurrency, cap.images) if regenerate else None
    result.report = await repairing.run(
        settings, query, result if execute else None, regenerate=regeneration,
        check_urls=check_urls, reporter=reporter,
    )  # fmt: skip
    return result
