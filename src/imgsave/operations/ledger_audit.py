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

from imgsave.adapters.postgres.ledger_rows import LedgerRows, Waiting
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
    for p in await ledger.unresolved(projects, waiting_in_batches=False):
        if p.state is State.STORED and p.kept.spool and not p.kept.url:
            report.spooled += 1
        elif p.mode is Mode.JOB:
            report.jobs.append(_job(p, "pending"))
    for p in await ledger.in_state(State.LOST, projects):
        if p.unanswered:
            report.unanswered += 1
        else:
            report.jobs.append(_job(p, "lost"))
    waiting: dict[str, list[Waiting]] = defaultdict(list)
    for counted in await ledger.waiting(projects):
        waiting[counted.batch_id or ""].append(counted)
    unnamed = waiting.pop("", [])
    if unnamed and batches is not None:
        unnamed = await _found_by_listing(unnamed, batches, waiting, report)
    report.in_batches += sum(w.rows for w in unnamed)
    await _finished_or_not(waiting, batches, report)


async def _finished_or_not(
    waiting: dict[str, list[Waiting]], batches: _Retrieving | None, report: AuditReport
) -> None:
    """Each batch's rows counted `uncollected` when the batch has finished, `in_batches` when
    it runs still or is not the configured kind's (it cannot be asked); a batch that cannot be
    read is said, its rows not counted."""
    for batch_id, counted in waiting.items():
        rows = sum(w.rows for w in counted)
        if not batch_id or batches is None or batches.kind not in {w.kind for w in counted}:
            report.in_batches += rows
            continue
        try:
            batch = await batches.retrieve(batch_id)
        except ImgsaveError as exc:
            report.unreadable.append(f"batch {batch_id} could not be read: {exc}")
            continue
        if getattr(batch, "finished", False):
            report.uncollected += rows
        else:
            report.in_batches += rows


async def _found_by_listing(
    unnamed: list[Waiting],
    batches: _Retrieving,
    waiting: dict[str, list[Waiting]],
    report: AuditReport,
) -> list[Waiting]:
    """Rows of this kind whose input file a listed batch holds go to `waiting` under that
    batch; the rest are returned. A list that cannot be read is said, its rows not counted."""
    mine = [w for w in unnamed if w.kind == batches.kind and w.input_file]
    rest = [w for w in unnamed if not (w.kind == batches.kind and w.input_file)]
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
    for w in mine:
        batch_id = by_file.get(w.input_file or "")
        if batch_id is None:
            rest.append(w)
        else:
            waiting[batch_id].append(w)
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
