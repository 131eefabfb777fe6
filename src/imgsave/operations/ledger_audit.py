"""What audit reads of the ledger beyond URLs: the purchases that are not in their scenes and
have no URL to name — jobs still running, purchases paid and lost, bytes waiting in some host's
spool, images in finished batches no run collected. When the Batch API those batches are at
cannot be read, audit says so (exit 3): nothing seen is not nothing found."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.core.ledger import Mode, Purchase, State
from imgsave.errors import ImgsaveError
from imgsave.operations.lost_images import AuditReport


class _Retrieving(Protocol):
    kind: str

    async def retrieve(self, batch_id: str) -> object: ...


async def purchases_not_in_scenes(
    ledger: LedgerRows,
    report: AuditReport,
    projects: Sequence[str] | None,
    batches: _Retrieving | None,
) -> None:
    """Fill the report's jobs, spooled, uncollected and in_batches from the ledger."""
    open_rows = await ledger.unresolved(projects)
    for p in open_rows:
        if p.state is State.STORED and p.kept.spool and not p.kept.url:
            report.spooled += 1
        elif p.mode is Mode.JOB:
            report.jobs.append(_job(p, "pending"))
    for p in await ledger.in_state(State.LOST, projects):
        if p.unanswered:
            report.unanswered += 1
        else:
            report.jobs.append(_job(p, "lost"))
    waiting: dict[str, list[Purchase]] = defaultdict(list)
    for p in open_rows:
        if p.mode is Mode.BATCH and p.state is State.REQUESTED:
            waiting[p.handle.batch_id or ""].append(p)
    for batch_id, rows in waiting.items():
        kinds = {p.kind for p in rows}
        if not batch_id or batches is None or batches.kind not in kinds:
            report.in_batches += len(rows)
            continue
        try:
            batch = await batches.retrieve(batch_id)
        except ImgsaveError as exc:
            report.unreadable.append(f"batch {batch_id} could not be read: {exc}")
            continue
        if getattr(batch, "finished", False):
            report.uncollected += len(rows)
        else:
            report.in_batches += len(rows)


def _job(p: Purchase, state: str) -> dict[str, object]:
    return {
        "project": p.project,
        "scene": p.ref.index,
        "scene_id": p.ref.id,
        "job": p.handle.job_id,
        "kind": p.kind,
        "state": state,
        **({"error": p.error} if p.error and state == "lost" else {}),
    }
