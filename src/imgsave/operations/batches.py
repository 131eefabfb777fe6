"""Generating through the provider's Batch API (half price): submit what is missing, collect
what finished, from any host, paying for nothing twice and losing nothing.

**Submit**: each project planned and claimed (planning.py, less what is on its way) → its
images ordered in the ledger (`requested`, mode batch) → one input line per image, its
custom_id naming its ledger row → upload → the rows given their input file (and the log's
`batch.submitting`, fsynced) → create, its label naming this database and run → the rows given
their batch (`batch.submitted`). From then on the rows hold their scenes, whatever time passes,
whichever host dies, until the batch is collected, cancelled, failed or expired. A create whose
answer was lost is found by its input file when the ledger's rows are next settled; one that
was never made (no batch holds the file) frees its scenes.

**Collect** (settle.py calls it): every finished batch the ledger names for this database, its
unresolved rows leased by one run at a time; its output streamed line by line, each line
matched to its row by custom_id (a custom_id the batch did not ask for, or one answered twice,
is refused and reported), its images through the one paid-image sequence (purchases.py); error
lines failed with the provider's code; rows the output does not answer failed (their scenes are
planned again). A collection cut short is resumed by any later run: the rows it finished are
resolved, so nothing is saved twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from imgsave.adapters.imageapi.batches import (
    BATCH_KINDS,
    BatchApi,
    BatchInfo,
    BatchRefused,
    NoBatchApi,
    batch_api_for,
)
from imgsave.adapters.imageapi.client import add_usage
from imgsave.adapters.imageapi.kinds import kind_named
from imgsave.adapters.postgres.batch_rows import BatchRow, BatchRows
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.ledger_rows import LedgerRows
from imgsave.core import events
from imgsave.core.batch_lines import Oversized
from imgsave.core.documents import Scene, Shape
from imgsave.core.ledger import Handle, Mode, NewPurchase, Purchase, State
from imgsave.core.scene_plan import Plan
from imgsave.core.settings import Settings
from imgsave.errors import CannotWork, ImgsaveError, ProviderRefused, UsageError
from imgsave.operations.execution import Reporter
from imgsave.operations.group_commit import ProjectSaver
from imgsave.operations.purchases import Purchases
from imgsave.operations.settled import Settled

MAX_REQUESTS = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
# Lines of one batch's output being decoded, stored and saved at once.
IN_FLIGHT = 64
# How long a save may wait for the other lines in flight (operations/group_commit.py).
LINGER = 0.05
# How long rows whose batch cannot be found are given before they are taken as never created:
# a create that was sent and whose answer was lost shows in the provider's list at once.
FIND_GRACE = 600.0
CUSTOM_ID_PREFIX = "ims2."


@dataclass
class Submitted:
    submitted: list[str] = field(default_factory=list)
    in_batches: int = 0
    requested: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _Collection:
    """One batch's collection, line by line."""

    batch: BatchInfo
    rows: dict[str, Purchase]  # custom_id -> the unresolved row this run leased
    asked: set[str]  # every custom_id the batch's ledger rows name
    seen: set[str] = field(default_factory=set)
    received: int = 0
    saved: int = 0
    failed: int = 0
    lost: int = 0
    # Lines an earlier collection, cut short, had already taken: skipped now.
    resumed: int = 0
    # Lines that could not be read: the rows they answered are among those left unanswered.
    unreadable: int = 0


class Batches:
    """This database's batches at one Batch API."""

    def __init__(
        self,
        *,
        api: BatchApi,
        db: Database,
        purchases: Purchases,
        shape: Shape,
        clock: Callable[[], float] = time.time,
    ):
        self.kind = api.kind
        self._api = api
        self._db = db
        self._p = purchases
        self._ledger = purchases.ledger
        self._shape = shape
        self._rows = BatchRows(db.connector, purchases.ledger.db_id)
        self._clock = clock
        # Batches still running when last looked at.
        self.pending: list[str] = []

    # -- collect (settle.py) -------------------------------------------------------------------

    async def settle(
        self,
        collect: list[Purchase],
        find: list[Purchase],
        done: Settled,
        *,
        saved: Sequence[Purchase] = (),
    ) -> None:
        """Collect the finished batches these leased rows wait in; look for the batches of
        rows whose create answer was lost. `saved`: rows of batches settling has just saved
        by their known URLs (a collection cut short): a batch none of whose rows is left is
        collected too."""
        if not (collect or find or saved):
            return
        await self._rows.ensure_table()
        found = await self._find(find, done)
        by_batch: dict[str, list[Purchase]] = defaultdict(list)
        for p in [*collect, *found]:
            by_batch[p.handle.batch_id or ""].append(p)
        for batch_id in {p.handle.batch_id for p in saved if p.handle.batch_id} - set(by_batch):
            if not any(p.unresolved for p in await self._ledger.of_batch(batch_id)):
                await self._rows.collected(batch_id, saved=0, failed=0, lost=0)
                done.collected.append(batch_id)
        for batch_id, rows in by_batch.items():
            try:
                batch = await self._api.retrieve(batch_id)
            except ImgsaveError as exc:
                done.pending += len(rows)
                done.unreadable.append(f"batch {batch_id} could not be read: {exc}")
                continue
            if not batch.finished:
                done.pending += len(rows)
                self.pending.append(batch.id)
                continue
            await self._collect(batch, rows, done)

    async def _find(self, rows: list[Purchase], done: Settled) -> list[Purchase]:
        """Rows uploaded whose batch the ledger does not know: the create's answer was lost
        (or the run died before it was recorded). The provider's list says."""
        never = [p for p in rows if not p.handle.input_file]
        for p in never:  # their input never reached the provider: nothing was billed
            await self._p.end(p, State.FAILED, "its batch was never submitted")
        waiting = [p for p in rows if p.handle.input_file]
        if not waiting:
            return []
        by_file: dict[str, BatchInfo] = {}
        batch: BatchInfo | None
        try:
            async for batch in self._api.listed():
                if batch.input_file:
                    by_file.setdefault(batch.input_file, batch)
        except ImgsaveError as exc:
            done.pending += len(waiting)
            done.unreadable.append(f"the batches could not be listed: {exc}")
            return []
        found: list[Purchase] = []
        for input_file, group in _grouped(waiting, lambda p: p.handle.input_file or "").items():
            batch = by_file.get(input_file)
            if batch is not None:
                ids = [p.id for p in group]
                await self._ledger.set_handle(ids, Handle(batch_id=batch.id))
                await self._rows.submitted(batch.id, self.kind, self._p.run, input_file, len(ids))
                found += [_with_batch(p, batch.id) for p in group]
            elif self._clock() - min(p.requested_at for p in group) > FIND_GRACE:
                for p in group:
                    await self._p.end(
                        p, State.FAILED, "its batch was never created (no batch holds its input)"
                    )
            else:
                done.pending += len(group)
        return found

    async def _collect(self, batch: BatchInfo, rows: list[Purchase], done: Settled) -> None:
        asked = {p.handle.custom_id for p in await self._ledger.of_batch(batch.id)}
        job = _Collection(
            batch, {p.handle.custom_id or "": p for p in rows}, {a for a in asked if a}
        )
        in_flight: set[asyncio.Task[None]] = set()
        savers: dict[str, ProjectSaver] = {}
        gone: str | None = None
        try:
            async for raw in self._api.result_lines(batch):
                in_flight.add(asyncio.ensure_future(self._line(job, raw, savers, in_flight, done)))
                if len(in_flight) >= IN_FLIGHT:
                    _, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
        except BatchRefused as exc:
            gone = str(exc)
        except ImgsaveError as exc:
            # Whatever was taken before the cut is saved; the rest waits for the next run.
            await self._finish(in_flight, savers)
            done.errors.append(f"batch {batch.id}: {exc}; collected on the next run")
            done.uncollected.append(batch.id)
            done.recovered += job.saved
            done.batch_images += job.saved
            return
        await self._finish(in_flight, savers)
        if gone is not None:
            # The output file is gone (the provider keeps it for weeks): paid, and lost.
            reason = f"batch {batch.id}: its output can no longer be read ({gone})"
            for p in job.rows.values():
                if p.handle.custom_id not in job.seen:
                    job.lost += 1
                    await self._p.end(p, State.LOST, reason, lost=True)
            done.errors.append(f"{reason}; {job.lost} images were paid for and are lost")
        else:
            unanswered = f"the batch {batch.status} without an answer for it"
            missing = [p for p in job.rows.values() if p.handle.custom_id not in job.seen]
            for p in missing:
                job.failed += 1
                await self._p.end(p, State.FAILED, unanswered)
                if job.unreadable:
                    # Its answer may be the line that could not be read, and billed: the
                    # next run buys the scene, not this one.
                    done.held_back.add((p.project, p.scene))
            if missing:
                # One line for the batch, not one per image: an expired batch may be thousands.
                done.errors.append(
                    f"batch {batch.id} {batch.status} without an answer for {len(missing)} "
                    f"image{'' if len(missing) == 1 else 's'}; their scenes are planned again"
                )
        await self._rows.collected(batch.id, saved=job.saved, failed=job.failed, lost=job.lost)
        self._p.log.write(
            events.BATCH_COLLECTED, batch=batch.id, status=batch.status, saved=job.saved,
            failed=job.failed, lost=job.lost, total=batch.total,
        )  # fmt: skip
        done.collected.append(batch.id)
        done.recovered += job.saved
        done.batch_images += job.saved
        done.failed += job.failed
        done.lost += job.lost
        done.per_batch.append(
            {"id": batch.id, "status": batch.status, "total": batch.total,
             "received": job.received, "saved": job.saved, "failed": job.failed,
             "lost": job.lost, "resumed": job.resumed}
        )  # fmt: skip

    @staticmethod
    async def _finish(in_flight: set[asyncio.Task[None]], savers: dict[str, ProjectSaver]) -> None:
        await asyncio.gather(*in_flight)
        for saver in savers.values():
            await saver.close()

    async def _line(
        self,
        job: _Collection,
        raw: bytes | Oversized,
        savers: dict[str, ProjectSaver],
        in_flight: set[asyncio.Task[None]],
        done: Settled,
    ) -> None:
        # Parsing and decoding a line (megabytes of base64) in a worker thread: the event loop
        # goes on storing and saving the lines before it meanwhile.
        result = await asyncio.to_thread(self._api.parse_line, raw)
        cid = result.custom_id
        where = f"batch {job.batch.id}"
        if result.unreadable or cid is None:
            # Not a failure of its own: its row, which no line answered, is counted failed.
            job.unreadable += 1
            done.errors.append(f"{where}: a line that cannot be read ({result.message or '?'})")
            return
        if cid not in job.asked:
            done.errors.append(f"{where}: a line for {cid!r}, which it did not ask for; refused")
            return
        if cid in job.seen:
            done.errors.append(f"{where}: a second answer for {cid!r}; refused")
            return
        job.seen.add(cid)
        p = job.rows.get(cid)
        if p is None:  # resolved by an earlier collection: nothing to do twice
            job.resumed += 1
            return
        add_usage(done.usage, result.usage)
        if result.code is not None:
            job.failed += 1
            done.refusals[result.code] += 1
            message = f"the batch's request failed: {result.code}" + (
                f" ({result.message})" if result.message else ""
            )
            await self._p.end(p, State.REFUSED if _refusal(result.code) else State.FAILED, message)
            done.errors.append(f"project {p.project}: {p.ref}: {message}")
            # An answer (a 200 without an image may have been billed): reported by this run,
            # bought again by the next, never in the same breath.
            done.held_back.add((p.project, p.scene))
            return
        if not result.images:
            job.failed += 1
            await self._p.end(p, State.FAILED, "its line holds no image")
            done.held_back.add((p.project, p.scene))  # as above
            done.errors.append(f"project {p.project}: {p.ref}: {where}: its line holds no image")
            return
        job.received += len(result.images)
        saver = savers.get(p.project)
        if saver is None:
            # A save waits a moment for the lines still in flight: one transaction then takes
            # many images, where each would rewrite the whole document alone.
            saver = ProjectSaver(
                self._db, p.project, self._shape, ledger=self._ledger, linger=LINGER,
                expecting=lambda: len(in_flight),
            )  # fmt: skip
            savers[p.project] = await saver.__aenter__()
        for n, received in enumerate(result.images):
            target = p if n == 0 else await self._p.extra(p, p.slot + 1000 * n)
            taken = await self._p.take(saver, target, received, batch=job.batch.id, custom_id=cid)
            job.saved += taken.added
            if taken.not_kept is not None or taken.save_error:
                done.errors.append(
                    f"project {p.project}: {p.ref}: {taken.not_kept or taken.save_error}"
                )

    # -- submit --------------------------------------------------------------------------------

    async def submit(self, plans: Sequence[tuple[str, Plan]], *, batch_size: int) -> Submitted:
        """Order, upload and create batches for these projects' plans, `batch_size` images a
        batch at most."""
        out = Submitted()
        entries: list[tuple[Purchase, Scene]] = []
        for project, plan in plans:
            wanted = [(job.scene, slot) for job in plan.jobs for slot in range(job.count)]
            ordered = await self._p.order(
                [NewPurchase(project, scene.ref, slot, Mode.BATCH) for scene, slot in wanted]
            )
            entries += [(p, scene) for p, (scene, _) in zip(ordered, wanted, strict=True)]
        if not entries:
            return out
        await self._rows.ensure_table()
        prefix = f"{CUSTOM_ID_PREFIX}{self._ledger.db_id[:8]}."
        lines = [
            (p, self._api.request_line(f"{prefix}{p.id}", scene.prompt or ""))
            for p, scene in entries
        ]
        chunks = _chunks(lines, min(batch_size, MAX_REQUESTS))
        for n, chunk in enumerate(chunks):
            try:
                await self._submit_one(chunk, prefix, out)
            except ImgsaveError:
                # Nothing of the chunks after this one left: their rows were never sent.
                for rest in chunks[n + 1 :]:
                    for p, _ in rest:
                        await self._p.end(p, State.FAILED, "not submitted: the run stopped first")
                raise
        return out

    async def _submit_one(
        self, chunk: list[tuple[Purchase, bytes]], prefix: str, out: Submitted
    ) -> None:
        ids = [p.id for p, _ in chunk]
        label = f"imgsave:{self._ledger.db_id}:{self._p.run}"
        try:
            input_file = await self._api.upload(
                b"".join(line for _, line in chunk), display_name=label
            )
        except ImgsaveError as exc:
            for p, _ in chunk:
                await self._p.end(p, State.FAILED, f"its batch's input was not taken: {exc}")
            raise
        # Before the create: a run that dies now leaves rows a later run can match to the
        # batch (by its input file), or free once no batch holds it.
        await self._ledger.for_batch(ids, prefix=prefix, input_file=input_file)
        await self._p.log.record(
            events.BATCH_SUBMITTING, input_file=input_file, ledger=ids, images=len(ids)
        )
        try:
            batch = await self._api.create(input_file, db_id=self._ledger.db_id, run=self._p.run)
        except CannotWork as exc:
            if isinstance(exc, BatchRefused | ProviderRefused | NoBatchApi):
                for p, _ in chunk:
                    await self._p.end(p, State.FAILED, f"the batch was refused: {exc}")
                raise
            # The answer was lost, not necessarily the request: the batch may exist (and
            # bill). The rows keep their input file: the next settling finds it, or frees them.
            out.errors.append(
                f"the batch for {len(ids)} images may have been created ({exc}); the next run "
                "finds it by its input file"
            )
            out.in_batches += len(ids)
            out.requested += len(ids)
            return
        await self._ledger.set_handle(ids, Handle(batch_id=batch.id))
        await self._rows.submitted(batch.id, self.kind, self._p.run, input_file, len(ids))
        await self._p.log.record(events.BATCH_SUBMITTED, batch=batch.id, input_file=input_file)
        out.submitted.append(batch.id)
        out.in_batches += len(ids)
        out.requested += len(ids)

    # -- wait ----------------------------------------------------------------------------------

    async def wait(
        self,
        waiting: set[str],
        settle: Callable[[], Awaitable[Settled]],
        *,
        poll: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        reporter: Reporter | None = None,
        total: int = 0,
    ) -> list[Settled]:
        """Until every batch in `waiting` is collected (settle() collects what finished, and
        says so); what each settling did, in order."""
        seen: list[Settled] = []
        if reporter:
            reporter.start(total, "waiting for the batches")
        try:
            while waiting:
                await sleep(poll)
                self.pending = []
                done = await settle()
                seen.append(done)
                if reporter:
                    for _ in range(done.recovered + done.failed):
                        reporter.advance(ok=True)
                waiting -= set(done.collected)
                if done.unreadable:
                    break
        finally:
            if reporter:
                reporter.finish()
        return seen


def _with_batch(p: Purchase, batch_id: str) -> Purchase:
    from dataclasses import replace

    return replace(p, handle=replace(p.handle, batch_id=batch_id))


def _grouped(rows: Sequence[Purchase], key: Callable[[Purchase], str]) -> dict[str, list[Purchase]]:
    groups: dict[str, list[Purchase]] = defaultdict(list)
    for p in rows:
        groups[key(p)].append(p)
    return groups


def _chunks(
    lines: list[tuple[Purchase, bytes]], size: int, max_bytes: int = MAX_INPUT_BYTES
) -> list[list[tuple[Purchase, bytes]]]:
    """Batches of at most `size` requests and `max_bytes` of input each, in order."""
    chunks: list[list[tuple[Purchase, bytes]]] = []
    current: list[tuple[Purchase, bytes]] = []
    weight = 0
    for entry in lines:
        if current and (len(current) >= size or weight + len(entry[1]) > max_bytes):
            chunks.append(current)
            current, weight = [], 0
        current.append(entry)
        weight += len(entry[1])
    if current:
        chunks.append(current)
    return chunks


def _refusal(code: str) -> bool:
    """The provider refused the prompt (not a fault of the request's making)."""
    lowered = code.lower()
    return any(word in lowered for word in ("moderation", "safety", "blocked", "policy"))


@dataclass(frozen=True)
class Overview:
    batch: BatchInfo
    collected: bool
    images: int


async def overview(db: Database, ledger: LedgerRows, api: BatchApi) -> list[Overview]:
    """This database's batches at `api`'s provider (the ledger says which: never another
    database's, whatever the provider's metadata says), newest first, each with whether a run
    collected it. ImgsaveError when the provider cannot be read."""
    rows = BatchRows(db.connector, ledger.db_id)
    await rows.ensure_table()
    known = {r.batch_id: r for r in await rows.listed() if r.kind == api.kind}
    for batch_id in await ledger.batch_ids():
        if batch_id not in known:
            open_rows = [p for p in await ledger.of_batch(batch_id) if p.unresolved]
            if open_rows and open_rows[0].kind == api.kind:
                known[batch_id] = BatchRow(batch_id, api.kind, open_rows[0].run, len(open_rows),
                                           False)  # fmt: skip
    found = []
    for batch_id, row in known.items():
        batch = await api.retrieve(batch_id)
        unresolved = any(p.unresolved for p in await ledger.of_batch(batch_id))
        found.append(Overview(batch, row.collected or not unresolved, row.images))
    return sorted(found, key=lambda o: o.batch.created_at, reverse=True)


@contextlib.asynccontextmanager
async def opened_api(
    settings: Settings, *, required: bool = False
) -> AsyncIterator[BatchApi | None]:
    """The configured kind's Batch API, or None where the kind has none or no image API was
    configured (a default base with no key is no one's); with `required`, UsageError then."""
    configured = settings.base_url or settings.api_key
    if settings.provider.kind not in BATCH_KINDS or not configured:
        if required:
            batch_api_for(settings)  # says why, as a usage error
            raise UsageError(kind_named(settings.provider.kind).facts.no_image_api())
        yield None
        return
    async with batch_api_for(settings) as api:
        yield api
