"""`imgsave audit`: which paid-for images are not in their scene (operations/lost_images.py has
the rules; terminal/audit_view.py how they are shown)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.reader import LogQuery
from imgsave.adapters.storage.object_store import Store
from imgsave.core.settings import Settings
from imgsave.operations.batches import finished_and_uncollected
from imgsave.operations.lost_images import AuditReport, audit
from imgsave.operations.recovery import job_ledger
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
    store = Store.from_settings(settings)
    async with await Database.from_settings(settings) as db:
        report = await audit(
            db,
            query,
            log_dir=settings.resolved_log_dir(),
            shape=settings.shape,
            check_urls=check_urls,
            store=store,
            allow_private_network=settings.allow_private_network,
        )
        report.uncollected = await finished_and_uncollected(settings, db)
        report.jobs = await jobs_not_in_scenes(settings, db, query)
    return AuditResult(report)


async def jobs_not_in_scenes(
    settings: Settings, db: Database, query: LogQuery
) -> list[dict[str, object]]:
    """The jobs this host's log says were paid for and are not in their scene."""
    ledger = await asyncio.to_thread(
        job_ledger, settings.resolved_log_dir(), normalise=db.normalise_key
    )
    named = {db.normalise_key(p) or p for p in query.only_projects}
    found: list[dict[str, object]] = [
        {"project": project, "scene": scene, "scene_id": scene_id, "job": job.id,
         "kind": job.kind, "state": "pending"}
        for project, jobs in ledger.pending.items()
        for (scene, scene_id), job in jobs
    ]  # fmt: skip
    found += [
        {"project": project, "scene": scene, "scene_id": scene_id, "job": job, "state": "lost"}
        for project, (scene, scene_id), job in ledger.lost
    ]
    return [j for j in found if not named or j["project"] in named]
