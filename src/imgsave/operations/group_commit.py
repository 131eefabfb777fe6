"""Group commit: the URLs ready for one project are saved together, in one locked transaction,
and their ledger rows move to `saved` in that same transaction.

A hot row serialises its writers, so one transaction per image caps throughput at about
1 / (lock hold time). Here completions queue up while a transaction is in flight and the next
transaction takes all of them: throughput grows with the arrival rate instead of collapsing.
When a run shares its concurrency among many projects, each project's answers arrive a few
milliseconds apart and each would take a transaction of its own; there a transaction waits up
to `linger` seconds for company, as long as `expecting()` says more of the project's requests
are under way. Every URL is already recorded by then; the wait is nothing beside a provider's
seconds, and none at all once the project's last request has answered.

Two edits exist: append-if-absent (every image), and replace-if-present (rehost: the copy takes
its link's place). One transaction carries one kind; a change of kind starts the next.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from imgsave.adapters.postgres.connector import Conn
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.core.documents import (
    Outcome,
    SceneRef,
    Shape,
    append_urls,
    decode,
    encode,
    replace_urls,
)
from imgsave.core.json_splice import splice_append, splice_replace
from imgsave.core.ledger import Kept, Move, State

# How often a lingering transaction looks again whether more answers are still to come.
LINGER_STEP = 0.005


@dataclass(frozen=True)
class Saving:
    """One URL to put in its scene: appended, or in place of `replacing` (rehost). `purchase`
    is its ledger row, moved to `saved` (or `orphaned`) with the write."""

    ref: SceneRef
    url: str
    purchase: int | None = None
    replacing: str | None = None


@dataclass
class _Pending:
    saving: Saving
    done: asyncio.Future[Outcome]


def ledger_moves(items: Sequence[Saving], outcomes: Sequence[Outcome]) -> list[Move]:
    """What each save means for its ledger row: in its scene (added now, or there already),
    or never to be placed (its scene, or the link it was to replace, is gone)."""
    moves = []
    for item, outcome in zip(items, outcomes, strict=True):
        if item.purchase is None:
            continue
        if outcome in (Outcome.ADDED, Outcome.PRESENT):
            moves.append(Move(item.purchase, State.SAVED, Kept(url=item.url)))
        elif outcome is Outcome.NO_SCENE:
            moves.append(Move(item.purchase, State.ORPHANED, error="its scene no longer exists"))
        else:
            moves.append(
                Move(item.purchase, State.ORPHANED, error="the URL it replaces left its scene")
            )
    return moves


class ProjectSaver:
    """Owns the writes to one project's document for the duration of a run.

    `save` returns once the URL's transaction has committed (an image is "saved" only then) and
    raises what the transaction raised after its retries. `close` waits for every queued save.
    """

    def __init__(
        self,
        db: Database,
        project: str,
        shape: Shape,
        *,
        ledger: LedgerRows | None = None,
        max_batch: int = 1000,
        linger: float = 0.0,
        expecting: Callable[[], int] = lambda: 0,
    ):
        self._db = db
        self._ledger = ledger
        self._linger = linger
        self._expecting = expecting
        self._project = project
        self._shape = shape
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        # The first item of the next transaction, when it is of another kind than the last.
        self._carry: _Pending | None = None
        self.transactions = 0

    async def __aenter__(self) -> ProjectSaver:
        self._task = asyncio.create_task(self._run(), name=f"saver:{self._project}")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._task is not None:
            self._queue.put_nowait(None)
            # Shielded: an interrupt must not abandon URLs that are already queued for saving.
            await asyncio.shield(self._task)
            self._task = None

    async def save(self, saving: Saving) -> Outcome:
        if self._task is None:
            raise RuntimeError("saver is not running")
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(saving, done))
        return await asyncio.shield(done)

    async def save_many(self, items: Sequence[Saving]) -> list[Outcome]:
        """Queue several URLs at once, so they share one transaction, and wait for all."""
        return list(await asyncio.gather(*(self.save(item) for item in items)))

    async def _run(self) -> None:
        closing = False
        while not closing:
            item = self._carry or await self._queue.get()
            self._carry = None
            if item is None:
                break
            batch, closing = await self._gather(item)
            await self._commit(batch)
        # Anything queued after the close marker still gets its transaction(s).
        leftovers = [self._carry] if self._carry else []
        self._carry = None
        while not self._queue.empty():
            more = self._queue.get_nowait()
            if more is not None:
                leftovers.append(more)
        for replacing in (False, True):
            kind = [p for p in leftovers if (p.saving.replacing is not None) == replacing]
            if kind:
                await self._commit(kind)

    async def _gather(self, item: _Pending) -> tuple[list[_Pending], bool]:
        """One transaction's worth: `item` and what follows it of its kind (appends, or
        replacements) within the linger, up to the batch size (the first of the other kind
        waits in `_carry`); and whether the close marker came meanwhile."""
        batch = [item]
        replacing = item.saving.replacing is not None
        deadline = asyncio.get_running_loop().time() + self._linger
        while len(batch) < self._max_batch:
            if self._queue.empty():
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0 or not self._expecting():
                    break
                try:
                    # Short waits: the project's last request may end meanwhile.
                    async with asyncio.timeout(min(left, LINGER_STEP)):
                        more = await self._queue.get()
                except TimeoutError:
                    continue
            else:
                more = self._queue.get_nowait()
            if more is None:
                return batch, True
            if (more.saving.replacing is not None) != replacing:
                self._carry = more
                break
            batch.append(more)
        return batch, False

    async def _commit(self, batch: list[_Pending]) -> None:
        items = [p.saving for p in batch]
        edit = _replace if items[0].replacing is not None else _append

        def change(raw: str | None) -> tuple[str | None, tuple[Outcome, ...]]:
            return edit(raw, items, self._db.keeps_text, self._shape, self._project)

        async def also(conn: Conn, outcomes: tuple[Outcome, ...]) -> None:
            if self._ledger is not None:
                await self._ledger.move_in(conn, ledger_moves(items, outcomes))

        try:
            outcomes = await self._db.locked_update(self._project, change, also)
        except Exception as exc:
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            return
        self.transactions += 1
        for pending, outcome in zip(batch, outcomes, strict=True):
            if not pending.done.done():
                pending.done.set_result(outcome)


def _append(
    raw: str | None, items: Sequence[Saving], keeps_text: bool, shape: Shape, project: str
) -> tuple[str | None, tuple[Outcome, ...]]:
    document = decode(raw, project=project)
    edit = append_urls(document, shape, [(i.ref, i.url) for i in items], project=project)
    if not edit.changed:
        return None, edit.outcomes
    if keeps_text and raw is not None:
        # A json or text column: only the appended-to arrays' bytes change.
        return splice_append(
            raw,
            scenes_key=shape.scenes_key,
            urls_key=shape.urls_key,
            identity_keys=(shape.id_key, shape.index_key),
            appended=edit.appended,
            double_encoded=document.double_encoded,
            project=project,
        ), edit.outcomes
    return encode(edit.document), edit.outcomes


def _replace(
    raw: str | None, items: Sequence[Saving], keeps_text: bool, shape: Shape, project: str
) -> tuple[str | None, tuple[Outcome, ...]]:
    document = decode(raw, project=project)
    replacements = [(i.ref, i.replacing or "", i.url) for i in items]
    edit = replace_urls(document, shape, replacements, project=project)
    if not edit.changed:
        return None, edit.outcomes
    if keeps_text and raw is not None:
        return splice_replace(
            raw,
            scenes_key=shape.scenes_key,
            urls_key=shape.urls_key,
            identity_keys=(shape.id_key, shape.index_key),
            replaced=edit.replaced,
            double_encoded=document.double_encoded,
            project=project,
        ), edit.outcomes
    return encode(edit.document), edit.outcomes
