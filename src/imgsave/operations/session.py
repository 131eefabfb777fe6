"""What every run that may pay for an image opens, in the order that spends nothing before it
is safe to: the database and its identity, the ledger (made if missing: if it cannot be, nothing
is bought), the store proved writable (a probe put), the run's log, and its purchases, whose
ledger leases are extended while the run lives."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.identity import ensure_identity
from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.adapters.runlog.writer import RunLog
from imgsave.adapters.storage.object_store import Store
from imgsave.core.settings import Settings
from imgsave.operations.intake import Intake, opened_intake
from imgsave.operations.purchases import Purchases


@dataclass
class Session:
    settings: Settings
    db: Database
    ledger: LedgerRows
    intake: Intake
    log: RunLog
    purchases: Purchases

    @property
    def store(self) -> Store | None:
        return self.intake.store

    @property
    def run(self) -> str:
        return self.log.run_id


@contextlib.asynccontextmanager
async def opened(
    settings: Settings, *, max_size: int = 4, probe: bool = True, run_id: str | None = None
) -> AsyncIterator[Session]:
    """`probe`: prove the store takes writes now (before the first request); a run that may
    not buy anything at all (a dry run) leaves it out."""
    store = Store.from_settings(settings)
    log_dir = settings.resolved_log_dir()
    async with (
        await Database.from_settings(settings, max_size=max_size) as db,
        opened_intake(settings, store, log_dir) as intake,
    ):
        await db.check_readable()
        db_id = await ensure_identity(db.connector)
        ledger = LedgerRows(db.connector, db_id)
        await ledger.ensure_table()
        if store is not None and probe:
            await store.probe()  # before anything is spent
        with RunLog(log_dir, run_id, db_id=db_id) as log:
            purchases = Purchases(
                ledger=ledger, intake=intake, log=log, kind=settings.provider.kind,
                lease=settings.claims.expiry, log_dir=log_dir,
            )  # fmt: skip
            async with purchases.held(every=settings.claims.expiry / 4):
                yield Session(settings, db, ledger, intake, log, purchases)
