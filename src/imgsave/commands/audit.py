"""`imgsave audit`: which paid-for images are not in their scene (operations/lost_images.py has
the rules; terminal/audit_view.py how they are shown)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgsave.adapters.runlog.reader import LogQuery
from imgsave.core.settings import Settings
from imgsave.operations.auditing import audited, opened_sources
from imgsave.operations.lost_images import AuditReport
from imgsave.terminal import audit_view

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class AuditResult:
    """The report, as the command gives it: its JSON, its exit code, its table."""

    report: AuditReport

    @property
    def exit_code(self) -> int:
        return self.report.exit_code

    def stderr_lines(self) -> list[str]:
        return []

    def to_json(self) -> dict[str, object]:
        return self.report.to_json()

    def render(self, console: Console) -> None:
        audit_view.render(self.report, console)


async def run_audit(settings: Settings, query: LogQuery, *, check_urls: bool) -> AuditResult:
    """With a store configured, its objects are audited too: one that no log mentions and no
    document holds is an image paid for and never saved."""
    async with opened_sources(settings) as sources:
        return AuditResult(await audited(settings, sources, query, check_urls=check_urls))
