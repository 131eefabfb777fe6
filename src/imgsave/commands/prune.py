"""`imgsave prune`: a retention rule for what imgsave keeps, for cron: the ledger's resolved
rows and imgsave's own run logs older than a window (operations/upkeep.py says what is never
pruned). Audit reads the ledger, not the logs, so the window is how far back imgsave's own
history should reach (docs/usage.md: choosing it)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

from imgsave.adapters.postgres.database import Database
from imgsave.core.result_json import FieldsResult, fields_json
from imgsave.core.settings import Settings
from imgsave.operations import upkeep
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class PruneResult(FieldsResult):
    executed: bool
    older_than: str
    files: list[str] = field(default_factory=list)
    kept: int = 0
    bytes: int = 0
    # Ledger rows that reached their end (saved, failed, refused, lost, orphaned) before the
    # window: removed, or to be removed.
    ledger_rows: int = 0

    def to_json(self) -> dict[str, object]:
        # A dry run removed nothing: it says what it would remove, under that name.
        return {
            **fields_json(self),
            "removed" if self.executed else "would_remove": len(self.files),
        }

    def render(self, console: Console) -> None:
        verb = "removed" if self.executed else "would remove (run with --execute)"
        console.print(
            f"prune: {verb} {len(self.files)} run logs older than {shown(self.older_than)} "
            f"({self.bytes / 1e6:.1f} MB) and {self.ledger_rows} ledger rows; {self.kept} kept"
        )


async def run_prune(
    settings: Settings, older_than: timedelta, *, label: str, execute: bool
) -> PruneResult:
    """Remove (with `execute`) what is older than the window: resolved ledger rows, and run
    logs no marker holds."""
    cutoff = time.time() - older_than.total_seconds()
    async with await Database.from_settings(settings, max_size=1) as db:
        done = await upkeep.prune(db, settings.resolved_log_dir(), cutoff, execute=execute)
    return PruneResult(executed=execute, older_than=label, **done.__dict__)
