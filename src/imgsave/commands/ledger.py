"""`imgsave ledger import`: the history of runs from before the ledger, taken in once
(operations/ledger_import.py)."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgsave.adapters.postgres.database import Database
from imgsave.core.result_json import FieldsResult
from imgsave.core.settings import Settings
from imgsave.operations.ledger_import import Imported, import_history
from imgsave.operations.upkeep import made_ledger, note_import

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class ImportResult(FieldsResult, Imported):
    def render(self, console: Console) -> None:
        console.print(
            f"ledger import: {self.files} log files, {self.records} records of this database "
            f"before the ledger: {self.saved} images saved, {self.unsaved} never saved (the "
            f"next run saves them), {self.jobs_pending} jobs pending, {self.in_batches} images "
            f"in batches not collected, {self.spooled} spooled; {self.skipped} already in the "
            "ledger or another database's",
            markup=False,
        )


async def run_import(settings: Settings, paths: Sequence[str]) -> ImportResult:
    async with await Database.from_settings(settings, max_size=2) as db:
        await db.check_readable()
        ledger = await made_ledger(db)
        found = await import_history(
            ledger, settings.resolved_log_dir(), paths, host=socket.gethostname(),
            kind=settings.provider.kind,
        )  # fmt: skip
        await note_import(db, socket.gethostname())
    return ImportResult(**found.__dict__)
