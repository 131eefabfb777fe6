"""An audit's set-up, written once for `audit` and `repair`: the ledger, the runs of this host
not settled into it yet, the logs named and the journal, diffed against the documents
(lost_images.py), then what the ledger holds that has no URL to name (ledger_audit.py), each
read as this database (its identity), never another's."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

from imgsave.adapters.imageapi.batch_api import BatchApi
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.identity import read_identity
from imgsave.adapters.runlog import unsettled
from imgsave.adapters.runlog.reader import LogQuery
from imgsave.adapters.storage.object_store import Store
from imgsave.core.settings import Settings
from imgsave.operations.batches import opened_api
from imgsave.operations.ledger_audit import purchases_not_in_scenes
from imgsave.operations.lost_images import AuditReport, audit
from imgsave.operations.upkeep import existing_ledger, unimported


@dataclass(frozen=True)
class Sources:
    """What an audit reads besides the logs: the documents (and the ledger beside them), the
    store's objects, and the Batch API's batches (None: no store, or a kind without one)."""

    db: Database
    store: Store | None
    api: BatchApi | None


@contextlib.asynccontextmanager
async def opened_sources(settings: Settings) -> AsyncIterator[Sources]:
    """The sources an audit reads, opened for it alone (an executing repair passes its run's)."""
    async with await Database.from_settings(settings) as db, opened_api(settings) as api:
        yield Sources(db, Store.from_settings(settings), api)


async def audited(
    settings: Settings, sources: Sources, query: LogQuery, *, check_urls: bool
) -> AuditReport:
    db = sources.db
    db_id = await read_identity(db.connector)
    ledger = await existing_ledger(db)
    log_dir = settings.resolved_log_dir()
    # imgsave's own history is the ledger; of this host's folder, only the logs of runs that
    # may not have put all of theirs into it yet (their markers: adapters/runlog/unsettled.py).
    own_logs = [marker.log for marker in unsettled.marked(log_dir, db_id)] if db_id else []
    report = await audit(
        db,
        replace(query, own_db=db_id),
        ledger=ledger,
        own_logs=own_logs,
        shape=settings.shape,
        check_urls=check_urls,
        store=sources.store,
        allow_private_network=settings.allow_private_network,
    )
    report.notes += await unimported(db, log_dir, socket.gethostname())
    if ledger is None:
        return report  # no command has bought anything for this database yet
    named = sorted({db.normalise_key(p) or p for p in query.only_projects}) or None
    await purchases_not_in_scenes(ledger, report, named, sources.api)
    return report
