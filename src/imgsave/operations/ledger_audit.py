"""What audit reads of the ledger beyond URLs: the purchases that are not in their scenes and
have no URL to name — jobs still running, purchases paid and lost, bytes waiting in some host's
spool, images in finished batches no run collected. A batch whose create answer was lost (its
rows name their input file, not the batch) is looked for in the provider's list, as settling
finds it. When the Batch API those batches are at cannot be read or listed, audit says so
(exit 3): nothing seen is not nothing found."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.core.ledger import Mode, Purchase, State
from imgsave.errors import ImgsaveError
from imgsave.operations.lost_images import AuditReport


class _Batch(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def input_file(self) -> str | None: ...


class _Retrieving(Protocol):
    kind: str

    async def retrieve(self, batch_id: str) -> object: ...

    def listed(self) -> AsyncIterator[_Batch]: ...


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
    unnamed = waiting.pop("", [])
    if unnamed and batches is not None:
        unnamed = await _found_by_listing(unnamed, batches, waiting, report)
    report.in_batches += len(unnamed)
    await _finished_or_not(waiting, batches, report)


async def _finished_or_not(
    waiting: dict[str, list[Purchase]], batches: _Retrieving | None, report: AuditReport
) -> None:
    """Each batch's rows counted `uncollected` when the batch has finished, `in_batches` when
    it runs still or is not the configured kind's (it cannot be asked); a batch that cannot be
    read is said, its rows not counted."""
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


async def _found_by_listing(
    rows: list[Purchase],
    batches: _Retrieving,
    waiting: dict[str, list[Purchase]],
    report: AuditReport,
) -> list[Purchase]:
    """Rows of this kind whose input file a listed batch holds go to `waiting` under that
    batch; the rest are returned. A list that cannot be read is said, its rows not counted."""
    mine = [p for p in rows if p.kind == batches.kind and p.handle.input_file]
    rest = [p for p in rows if not (p.kind == batches.kind and p.handle.input_file)]
    if not mine:
        return rest
    by_file: dict[str, str] = {}
    try:
        async for batch in batches.listed():
            if batch.input_file:
                by_file.setdefault(batch.input_file, batch.id)
    except ImgsaveError as exc:
        report.unreadable.append(f"the batches could not be listed: {exc}")
        return rest
    for p in mine:
        batch_id = by_file.get(p.handle.input_file or "")
        if batch_id is None:
            rest.append(p)
        else:
            waiting[batch_id].append(p)
    return rest


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
