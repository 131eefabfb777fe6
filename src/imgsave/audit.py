"""`imgsave audit`: which paid-for images are not in their scene (see `findings` for the rules)."""

from __future__ import annotations

from .config import Settings
from .db import Database
from .findings import AuditReport, audit
from .logread import LogQuery
from .store import Store


async def run_audit(settings: Settings, query: LogQuery, *, check_urls: bool) -> AuditReport:
    """With a store configured, its objects are audited too: one that no log mentions and no
    document holds is an image paid for and never saved."""
    store = Store.from_settings(settings)
    async with await Database.from_settings(settings) as db:
        return await audit(
            db,
            query,
            log_dir=settings.resolved_log_dir(),
            shape=settings.shape,
            check_urls=check_urls,
            store=store,
            allow_private_network=settings.allow_private_network,
        )
