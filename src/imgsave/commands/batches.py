"""`imgsave batches`: this database's batches at the provider (from any host), and cancelling
one. A finished batch no run has collected holds images paid for and not saved: exit 1."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from imgsave.adapters.postgres.database import Database
from imgsave.core.result_json import FieldsResult
from imgsave.core.settings import Settings
from imgsave.errors import EXIT_FINDINGS, EXIT_OK, UsageError
from imgsave.operations.batches import opened_api, overview
from imgsave.operations.upkeep import existing_ledger
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console


@dataclass
class BatchesResult:
    batches: list[dict[str, object]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        waiting = any(b["finished"] and not b["collected"] for b in self.batches)
        return EXIT_FINDINGS if waiting else EXIT_OK

    def stderr_lines(self) -> list[str]:
        return []

    def to_json(self) -> dict[str, object]:
        keys = ("id", "status", "created_at", "total", "completed", "failed", "collected",
                "output_expires_at")  # fmt: skip
        return {"batches": [{k: b[k] for k in keys} for b in self.batches]}

    def render(self, console: Console) -> None:
        if not self.batches:
            console.print("batches: none for this database")
            return
        for b in self.batches:
            created = datetime.fromtimestamp(int(str(b["created_at"])), UTC)
            state = "collected" if b["collected"] else "NOT COLLECTED" if b["finished"] else ""
            console.print(
                shown(
                    f"{b['id']}  {b['status']:<10} {b['completed']}/{b['total']} done, "
                    f"{b['failed']} failed, created {created:%Y-%m-%d %H:%M}Z  {state}"
                )
            )


async def run_batches(settings: Settings) -> BatchesResult:
    result = BatchesResult()
    async with (
        await Database.from_settings(settings) as db,
        opened_api(settings, required=True) as api,
    ):
        assert api is not None
        ledger = await existing_ledger(db)
        for item in await overview(db, ledger, api) if ledger else []:
            batch = item.batch
            expires = None
            if batch.finished and not item.collected:
                expires = await api.output_expires_at(batch)
            result.batches.append(
                {
                    "id": batch.id,
                    "status": batch.status,
                    "created_at": batch.created_at,
                    "total": batch.total,
                    "completed": batch.completed,
                    "failed": batch.failed,
                    "collected": item.collected,
                    "finished": batch.finished,
                    "output_expires_at": expires,
                }
            )
    return result


@dataclass
class CancelResult(FieldsResult):
    id: str
    status: str

    def render(self, console: Console) -> None:
        console.print(shown(f"batches: {self.id} is {self.status}"))


async def run_cancel(settings: Settings, batch_id: str) -> CancelResult:
    """Cancel one of this database's batches (what finished is still collected)."""
    async with (
        await Database.from_settings(settings) as db,
        opened_api(settings, required=True) as api,
    ):
        assert api is not None
        ledger = await existing_ledger(db)
        if ledger is None or batch_id not in await ledger.batch_ids():
            raise UsageError(f"batch {batch_id} is not a batch of this database")
        batch = await api.cancel(batch_id)
    return CancelResult(batch.id, batch.status)
