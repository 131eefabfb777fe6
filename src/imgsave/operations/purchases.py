"""The paid-image sequence, written once. Every path that receives an image imgsave paid for — a
synchronous answer, a job's result, a batch's output line, a spooled image uploaded at last, a
link rehosted — goes through `Purchases.take`:

    keep (intake.py: bytes → checked → stored, or spooled)
    → record (`image.generated` fsynced, and the ledger row `stored`, side by side)
    → locked save (group_commit.py; the row `saved` in the same transaction)
    → `image.saved`

and before anything is bought, `order` writes its rows `requested` (committed): if the database
cannot take them, nothing is bought. The rows stay leased to this run while it lives (`held`
extends the lease); whatever is unresolved when it ends is released for any host to settle.

The local log is the write-ahead record for the moment the database cannot be reached after a
purchase: a marker (adapters/runlog/unsettled.py) names this run until every record reached the
ledger, so a later run on this host settles what only the log knows.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgsave.adapters.imageapi.jobs import RemoteJob
from imgsave.adapters.imageapi.wires import Received
from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.adapters.runlog import unsettled
from imgsave.adapters.runlog.processes import this_process
from imgsave.adapters.runlog.writer import RunLog
from imgsave.adapters.storage import spool
from imgsave.core import events
from imgsave.core.documents import Outcome
from imgsave.core.ledger import Edit, Handle, Kept, Mode, Move, NewPurchase, Purchase, State
from imgsave.errors import ImgsaveError, LogUnwritable
from imgsave.logs import logger
from imgsave.operations import intake as intake_
from imgsave.operations.group_commit import ProjectSaver, Saving
from imgsave.operations.intake import Intake, NotKept


@dataclass
class Taken:
    """What became of one paid image: saved (`outcome`), or why not."""

    purchase: Purchase
    outcome: Outcome | None = None
    kept: intake_.Kept | None = None
    not_kept: NotKept | None = None
    # `image.generated` is on disk (False: the log refused it; the image is printed instead).
    logged: bool = True
    save_error: str | None = None
    # Where the row ended when it did not reach its scene: lost, failed, or still received.
    ended: State | None = None

    @property
    def url(self) -> str | None:
        return self.kept.url if self.kept else None

    @property
    def added(self) -> bool:
        return self.outcome is Outcome.ADDED


class Purchases:
    """One run's purchases in one database."""

    def __init__(
        self, *, ledger: LedgerRows, intake: Intake, log: RunLog, kind: str, lease: float,
        log_dir: Path,
    ):  # fmt: skip
        """`lease`: seconds a row stays this run's without being extended (the claims'
        expiry); `kind`: the image API the run buys from."""
        self.ledger = ledger
        self.intake = intake
        self.log = log
        self.kind = kind
        self.lease = lease
        self.log_dir = log_dir
        self.host = socket.gethostname()
        self.process = this_process()
        # Why the log stopped taking records, once it did: no new request may start.
        self.log_error: str | None = None
        # Ledger writes that did not get through: the marker stays, the log knows the rest.
        self.unrecorded = 0
        self._marker: unsettled.Marker | None = None
        self._moves: _Coalesced | None = None

    @property
    def run(self) -> str:
        return self.log.run_id

    @property
    def db_id(self) -> str:
        return self.ledger.db_id

    # -- before spending ----------------------------------------------------------------------

    async def order(self, new: Sequence[NewPurchase]) -> list[Purchase]:
        """The rows of images about to be bought, `requested` and committed: only then may
        their requests leave. CannotWork when the database cannot take them (nothing bought)."""
        if not new:
            return []
        self._ensure_marker()
        return await self.ledger.add(
            new, run=self.run, host=self.host, process=self.process, kind=self.kind,
            lease=self.lease,
        )  # fmt: skip

    async def extra(self, parent: Purchase, slot: int) -> Purchase:
        """A row for an image an answer held beyond the one asked for: paid for too."""
        (made,) = await self.order(
            [NewPurchase(parent.project, parent.ref, slot, parent.mode, handle=parent.handle)]
        )
        return made

    async def job_started(self, p: Purchase, job: RemoteJob) -> None:
        """A job the provider accepted: its handle in the ledger and in the log, both before
        its first poll, so no run pays for it again while the provider holds it."""
        # The ledger first (every host reads it), then this host's log (the write-ahead record
        # for when the database did not take it): a kill between them loses neither.
        handle = Handle(job.id, job.poll, job.result, job.cancel)
        await self._recorded(self.ledger.set_handle([p.id], handle))
        await self._logged(events.IMAGE_REQUESTED, p, durable=True, **job.to_log())

    # -- receiving -----------------------------------------------------------------------------

    async def take(
        self,
        saver: ProjectSaver,
        p: Purchase,
        received: Received,
        *,
        spooled: Path | None = None,
        on_fatal: Callable[[str], None] | None = None,
        **fields: Any,
    ) -> Taken:
        """Keep, record and save one paid image. CannotWork when not even the spool could
        take its bytes (the caller stops the run); every other failure is in the result.
        `spooled`: its bytes come from the spool there (removed once the image is saved).
        `on_fatal(reason)`: called at once when no later image can be kept either (bytes and
        no store), before anything is recorded, so the run stops spending without delay."""
        taken = Taken(p)
        # What the image's records name besides it: its job (or batch line), as the caller
        # knows it, which the purchase in hand may not (its handle was written after it).
        named = {**_job(p), **{k: v for k, v in fields.items() if v is not None}}
        try:
            kept = await self.intake.keep(p.project, p.ref, received, p.replaces, spooled=spooled)
        except NotKept as exc:
            if exc.fatal and on_fatal is not None:
                on_fatal(str(exc))
            taken.not_kept = exc
            taken.ended = await self._not_kept(p, exc, received, spooled, named)
            return taken
        taken.kept = kept
        if kept.provisional and p.edit is Edit.REPLACE:
            # Not in the store: a link cannot take its own place. Left as it is, for later.
            taken.save_error = f"{kept.provisional}; left as it is"
            await self.end(p, State.FAILED, taken.save_error)
            return taken
        record = {**kept.fields, **named}
        stored = Move(p.id, State.STORED, _ledger_kept(kept))
        taken.logged, _ = await asyncio.gather(
            self._logged(_kept_event(p), p, durable=True, url=kept.url, **_replacing(p), **record),
            self._recorded(self._coalesced().move(stored)),
        )
        replacing = p.replaces[0] if p.edit is Edit.REPLACE and p.replaces else None
        try:
            taken.outcome = await saver.save(Saving(p.ref, kept.url, p.id, replacing))
        except Exception as exc:  # whatever the save hit, the paid URL stays recorded
            taken.save_error = _one_line(exc)
            await self._logged(events.IMAGE_FAILED, p, url=kept.url, error=taken.save_error)
            return taken
        if spooled is not None:
            spool.remove(spooled)
        if taken.outcome is Outcome.NO_SCENE:
            await self._logged(
                events.IMAGE_FAILED, p, url=kept.url, error="its scene no longer exists"
            )
        elif taken.outcome is Outcome.ABSENT:
            await self._logged(
                events.IMAGE_FAILED, p, url=kept.url, error="the URL it replaces left its scene"
            )
        elif p.edit is Edit.APPEND:
            # `in_scene`: it was there already (a duplicate answer, or an earlier save).
            extra = {} if taken.added else {"in_scene": True}
            await self._logged(events.IMAGE_SAVED, p, url=kept.url, **extra)
        return taken

    async def save_recorded(self, saver: ProjectSaver, p: Purchase, url: str) -> Outcome:
        """Save an image whose URL the ledger (or this host's log) already holds: what an
        earlier run paid for and did not save. Logged as `image.repaired`."""
        replacing = p.replaces[0] if p.edit is Edit.REPLACE and p.replaces else None
        outcome = await saver.save(Saving(p.ref, url, p.id, replacing))
        if outcome is Outcome.ADDED:
            await self._logged(events.IMAGE_REPAIRED, p, url=url, recovered=True)
        return outcome

    async def end(self, p: Purchase, state: State, error: str, **fields: Any) -> None:
        """A purchase that will not reach its scene: failed, refused, or paid and lost."""
        await asyncio.gather(
            self._recorded(self._coalesced().move(Move(p.id, state, error=error))),
            self._logged(events.IMAGE_FAILED, p, error=error, **fields),
        )

    async def _not_kept(
        self,
        p: Purchase,
        exc: NotKept,
        received: Received,
        spooled: Path | None,
        named: dict[str, Any],
    ) -> State:
        reason = str(exc)
        if exc.spooled is not None and exc.spooled == spooled:
            return State.STORED  # the store still refuses: the bytes stay where they are
        if exc.spooled is not None:
            # Paid, and its bytes on this host's disk: `stored` there, for a run on this host
            # (repair, or the next generate) to upload once the store takes writes.
            move = Move(p.id, State.STORED, Kept(spool=str(exc.spooled)), error=reason)
            await asyncio.gather(
                self._recorded(self._coalesced().move(move)),
                self._logged(
                    events.IMAGE_GENERATED,
                    p,
                    durable=True,
                    spool=str(exc.spooled),
                    error=reason,
                    **named,
                ),
            )
            return State.STORED
        if exc.refused and received.url:
            # The provider holds the image and imgsave would not fetch it from there: still
            # paid for, fetched again by a later run (the job is named), never bought again.
            move = Move(p.id, State.RECEIVED, Kept(source_url=received.url), error=reason)
            await asyncio.gather(
                self._recorded(self._coalesced().move(move)),
                self._logged(events.IMAGE_FAILED, p, error=reason, source_url=received.url,
                             **named),
            )  # fmt: skip
            return State.RECEIVED
        if exc.expired and p.mode is not Mode.COPY:
            await self.end(p, State.LOST, reason, lost=True, **named)
            return State.LOST
        await self.end(p, State.FAILED, reason, **named)
        return State.FAILED

    def _ensure_marker(self) -> None:
        """The marker that names this run until all its records reached the ledger: on disk
        before the first purchase, or the first record a later run may need."""
        if self._marker is not None:
            return
        try:
            self._marker = unsettled.mark(self.log_dir, self.db_id, self.run)
        except OSError as exc:
            raise LogUnwritable(
                f"cannot write the generation log in {self.log_dir}: {exc.strerror}; "
                "nothing was bought"
            ) from None

    # -- the run's end -------------------------------------------------------------------------

    async def close(self) -> None:
        """Release what is unresolved (anyone may settle it now) and, when every record reached
        the ledger, the marker."""
        if self._moves is not None:
            await self._moves.drain()
        if self._marker is None:
            return
        try:
            await self.ledger.release(self.run)
        except ImgsaveError as exc:  # the leases lapse by themselves
            logger.debug("ledger leases left to lapse: %s", exc)
        if not self.unrecorded and self.log.broken is None:
            self._marker.clear()

    @contextlib.asynccontextmanager
    async def held(self, every: float) -> AsyncIterator[Purchases]:
        """While the run lives, its rows' leases are extended every `every` seconds; at the
        end, `close`."""

        async def extend() -> None:
            while True:
                await asyncio.sleep(every)
                if self._marker is None:
                    continue
                try:
                    await self.ledger.extend(self.run, self.lease)
                except ImgsaveError as exc:
                    logger.debug("ledger leases not extended: %s", exc)

        task = asyncio.create_task(extend(), name="ledger-leases")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.shield(self.close())

    # -- plumbing ------------------------------------------------------------------------------

    def _coalesced(self) -> _Coalesced:
        if self._moves is None:
            self._moves = _Coalesced(self.ledger)
        return self._moves

    async def _recorded(self, write: Any) -> bool:
        try:
            await write
        except ImgsaveError as exc:
            # The log holds it (fsynced first or beside it); the marker stays for this host.
            self.unrecorded += 1
            logger.debug("ledger write failed, left to this host's log: %s", exc)
            return False
        return True

    async def _logged(
        self, event: str, p: Purchase, *, durable: bool = False, **fields: Any
    ) -> bool:
        record = {"project": p.project, "scene": p.ref.index, "scene_id": p.ref.id,
                  "ledger": p.id, **{k: v for k, v in fields.items() if v is not None}}  # fmt: skip
        try:
            if durable:
                self._ensure_marker()
                await self.log.record(event, **record)
            else:
                self.log.write(event, **record)
        except LogUnwritable as exc:
            self.log_error = self.log_error or str(exc)
            return False
        return True


class _Coalesced:
    """Ledger moves made while another is in flight share its next statement: the row's
    `stored` costs the per-image path one round trip shared by all images ready together."""

    def __init__(self, ledger: LedgerRows):
        self._ledger = ledger
        self._pending: list[tuple[Move, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def move(self, move: Move) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((move, done))
        if self._task is None:
            self._task = asyncio.create_task(self._flush())
        await asyncio.shield(done)

    async def drain(self) -> None:
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._ledger.move([m for m, _ in batch])
                except ImgsaveError as exc:
                    for _, done in batch:
                        done.set_exception(exc)
                    continue
                for _, done in batch:
                    done.set_result(None)
        finally:
            self._task = None


def _job(p: Purchase) -> dict[str, Any]:
    return {"job": p.handle.job_id} if p.handle.job_id else {}


def _kept_event(p: Purchase) -> str:
    return events.IMAGE_REHOSTED if p.edit is Edit.REPLACE else events.IMAGE_GENERATED


def _replacing(p: Purchase) -> dict[str, Any]:
    return {"replaces": list(p.replaces)} if p.replaces else {}


def _ledger_kept(kept: intake_.Kept) -> Kept:
    f = kept.fields
    return Kept(
        url=kept.url,
        object_key=f.get("key"),
        sha256=f.get("sha256"),
        bytes=f.get("bytes"),
        content_type=f.get("content_type"),
        source_url=f.get("source_url"),
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
