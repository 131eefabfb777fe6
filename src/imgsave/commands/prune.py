"""`imgsave prune`: a retention rule for what imgsave keeps, for cron: the ledger's resolved
rows and imgsave's own run logs older than a window.

A row still on its way to its scene (requested, received, stored) is never pruned, however
old: a pending batch or job is money spent. Nor is a run log whose records a marker says the
ledger may not have yet (adapters/runlog/unsettled.py): it is the only record of what it holds
until a run on this host settles it. Audit reads the ledger and no longer rereads the logs, so
the window is how far back imgsave's own history should reach (docs/usage.md: choosing it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.identity import read_identity
from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.adapters.runlog import unsettled
from imgsave.adapters.runlog.writer import SUFFIX
from imgsave.core.result_json import FieldsResult, fields_json
from imgsave.core.settings import Settings
from imgsave.errors import CannotWork
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
    result = PruneResult(executed=execute, older_than=label)
    cutoff = time.time() - older_than.total_seconds()
    async with await Database.from_settings(settings, max_size=1) as db:
        db_id = await read_identity(db.connector)
        ledger = LedgerRows(db.connector, db_id) if db_id else None
        if ledger is not None and await ledger.exists():
            result.ledger_rows = await ledger.prune(cutoff, execute=execute)
    prune_logs(settings.resolved_log_dir(), cutoff, result)
    return result


def prune_logs(log_dir: Path, cutoff: float, result: PruneResult) -> None:
    """imgsave's run logs in `log_dir` last written before `cutoff`, but those a marker holds
    (of any database: its records may not be in their ledger yet)."""
    if not log_dir.is_dir():
        return
    held = {marker.log for marker in unsettled.every_marker(log_dir)}
    for path in sorted(log_dir.glob(f"*{SUFFIX}")):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        if info.st_mtime >= cutoff or path in held:
            result.kept += 1
            continue
        if result.executed:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise CannotWork(f"cannot remove {path}: {exc.strerror}") from None
        result.files.append(str(path))
        result.bytes += info.st_size
