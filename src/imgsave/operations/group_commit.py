"""Group commit: the URLs ready for one project are saved together, in one locked transaction.

A hot row serialises its writers, so one transaction per image caps throughput at about
1 / (lock hold time). Here completions queue up while a transaction is in flight and the next
transaction takes all of them: throughput grows with the arrival rate instead of collapsing.
When a run shares its concurrency among many projects, each project's answers arrive a few
milliseconds apart and each would take a transaction of its own; there a transaction waits up
to `linger` seconds for company, as long as `expecting()` says more of the project's requests
are under way. Every URL is already in the log by then; the wait is nothing beside a
provider's seconds, and none at all once the project's last request has answered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from imgsave.adapters.postgres.database import Database
from imgsave.core.documents import Outcome, SceneRef, Shape, append_urls, decode, encode
from imgsave.core.json_splice import splice_append

# How often a lingering transaction looks again whether more answers are still to come.
LINGER_STEP = 0.005


@dataclass
class _Pending:
    ref: SceneRef
    url: str
    done: asyncio.Future[Outcome]


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
        max_batch: int = 1000,
        linger: float = 0.0,
        expecting: Callable[[], int] = lambda: 0,
    ):
        self._db = db
        self._linger = linger
        self._expecting = expecting
        self._project = project
        self._shape = shape
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Pending | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
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

    async def save(self, ref: SceneRef, url: str) -> Outcome:
        if self._task is None:
            raise RuntimeError("saver is not running")
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(ref, url, done))
        return await asyncio.shield(done)

    async def save_many(self, items: list[tuple[SceneRef, str]]) -> list[Outcome]:
        """Queue several URLs at once, so they share one transaction, and wait for all."""
        return list(await asyncio.gather(*(self.save(ref, url) for ref, url in items)))

    async def _run(self) -> None:
        closing = False
        while not closing:
            item = await self._queue.get()
            if item is None:
                break
            batch = [item]
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
                    closing = True
                    break
                batch.append(more)
            await self._commit(batch)
        # Anything queued after the close marker still gets its transaction.
        leftovers = []
        while not self._queue.empty():
            more = self._queue.get_nowait()
            if more is not None:
                leftovers.append(more)
        if leftovers:
            await self._commit(leftovers)

    async def _commit(self, batch: list[_Pending]) -> None:
        additions = [(p.ref, p.url) for p in batch]

        def change(raw: str | None) -> tuple[str | None, tuple[Outcome, ...]]:
            document = decode(raw, project=self._project)
            edit = append_urls(document, self._shape, additions, project=self._project)
            if not edit.changed:
                return None, edit.outcomes
            if self._db.keeps_text and raw is not None:
                # A json or text column: only the appended-to arrays' bytes change.
                shape = self._shape
                return splice_append(
                    raw,
                    scenes_key=shape.scenes_key,
                    urls_key=shape.urls_key,
                    identity_keys=(shape.id_key, shape.index_key),
                    appended=edit.appended,
                    double_encoded=document.double_encoded,
                    project=self._project,
                ), edit.outcomes
            return encode(edit.document), edit.outcomes

        try:
            outcomes = await self._db.locked_update(self._project, change)
        except Exception as exc:
            for pending in batch:
                if not pending.done.done():
                    pending.done.set_exception(exc)
            return
        self.transactions += 1
        for pending, outcome in zip(batch, outcomes, strict=True):
            if not pending.done.done():
                pending.done.set_result(outcome)
