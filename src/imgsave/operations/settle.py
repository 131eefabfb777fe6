"""Settling: what this database paid for and did not save, put into its scenes before anything
is bought again. generate (every mode), repair and a batch run all call `settle` first.

The ledger says what is unresolved, for every host (an indexed query: its cost grows with what
is pending, never with history). Each row this run can lease (its lease lapsed, or its holder is
a dead process on this host) is acted on by what it holds (core.ledger.action): a known URL is
saved; a spooled image on this host is uploaded, then saved; a provider's URL is fetched; a job
is polled; a batch is collected (operations/batches.py); a synchronous request whose run died
before its answer was recorded is looked for in the store (an object under its scene's folder
put after it was requested, provably an image imgsave stored, that no row names), else it is
paid and lost. A row already `saved` is never placed again, so an image the app removed on
purpose stays removed; a row whose scene is gone is `orphaned`, never put into another scene.

Before the ledger, this host's own write-ahead records are settled into it: the runs whose
markers (adapters/runlog/unsettled.py) say the database did not take all their records.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from imgsave.adapters.imageapi.client import ImageFailed, Provider
from imgsave.adapters.imageapi.jobs import RemoteJob
from imgsave.adapters.imageapi.wires import Received
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog import unsettled
from imgsave.adapters.runlog.processes import process_is_gone
from imgsave.adapters.storage import spool
from imgsave.adapters.storage.object_store import Store
from imgsave.core import events
from imgsave.core.documents import Outcome, Shape
from imgsave.core.image_bytes import scene_segment
from imgsave.core.ledger import Action, Handle, Kept, Move, Purchase, State, action, unanswered
from imgsave.errors import ImgsaveError, ProviderStopped
from imgsave.operations.batches import Batches
from imgsave.operations.group_commit import ProjectSaver
from imgsave.operations.purchases import Purchases
from imgsave.operations.settled import Settled

# Jobs polled at once while settling.
POLLS_AT_ONCE = 16


class Settler:
    """Settles one database's purchases for one run. `provider` polls jobs of the configured
    kind; `batches` (operations/batches.Batches) collects that kind's batches; without them,
    such rows are left pending and said so."""

    def __init__(
        self,
        *,
        db: Database,
        purchases: Purchases,
        shape: Shape,
        provider: Provider | None = None,
        batches: Batches | None = None,
    ):
        self._db = db
        self._p = purchases
        self._ledger = purchases.ledger
        self._shape = shape
        self._provider = provider
        self._batches = batches
        self._store: Store | None = purchases.intake.store

    async def settle(self, projects: Sequence[str] | None = None) -> Settled:
        """Settle what is unresolved (of these projects, or all)."""
        done = Settled()
        await self._local(done)
        rows = await self._ledger.unresolved(projects)
        leased = await self._lease(rows)
        done.pending += len(rows) - len(leased)
        by_action: dict[Action, list[Purchase]] = defaultdict(list)
        kind = self._provider.job_kind if self._provider else None
        batch_kind = self._batches.kind if self._batches is not None else None
        for p in leased:
            what = action(
                p, host=self._p.host, kind=kind or batch_kind or "", has_store=bool(self._store)
            )
            by_action[what].append(p)
        await self._save_known(by_action[Action.SAVE], done)
        await self._fetch(by_action[Action.UPLOAD] + by_action[Action.FETCH], done)
        await self._poll(by_action[Action.POLL], done)
        if self._batches is not None:
            await self._batches.settle(
                by_action[Action.COLLECT],
                by_action[Action.FIND_BATCH],
                done,
                saved=by_action[Action.SAVE],
            )
        else:
            done.pending += len(by_action[Action.COLLECT]) + len(by_action[Action.FIND_BATCH])
        await self._adopt(by_action[Action.ADOPT], done)
        for p in by_action[Action.DROP]:
            await self._p.end(p, State.FAILED, "its rehost ended before the copy was kept")
        done.pending += len(by_action[Action.WAIT])
        await self._ledger.release(self._p.run, [p.id for p in leased])
        if self._p.log.written:
            done.log = str(self._p.log.path)
        return done

    async def _lease(self, rows: list[Purchase]) -> list[Purchase]:
        """The rows this run may act on: lapsed leases, or holders gone from this host."""
        run = self._p.run
        dead = sorted(
            {p.lease_process for p in rows if p.lease_process and process_is_gone(p.lease_process)}
        )
        free = [
            p.id for p in rows if p.lease_left <= 0 or p.lease_run == run or p.lease_process in dead
        ]
        return await self._ledger.lease(
            free, run=run, process=self._p.process, seconds=self._p.lease, dead=dead
        )

    # -- this host's write-ahead records -------------------------------------------------------

    async def _local(self, done: Settled) -> None:
        """The records of runs on this host that died (or lost the database) before the ledger
        had them all: moved into the ledger, then their markers go."""
        log_dir = self._p.log_dir
        for marker in unsettled.marked(log_dir, self._p.db_id):
            if marker.run == self._p.run or not marker.gone():
                continue
            moves, handles = _from_log(marker.log, self._p.db_id)
            await self._ledger.move(moves)
            for ident, handle in handles.items():
                await self._ledger.set_handle([ident], handle)
            marker.clear()

    # -- acting on rows -----------------------------------------------------------------------

    async def _save_known(self, rows: list[Purchase], done: Settled) -> None:
        """Rows whose URL is known (stored, or a provider's URL kept without a store)."""
        for project, items in _by_project(rows).items():
            try:
                async with self._saver(project) as saver:
                    outcomes = await asyncio.gather(
                        *(self._p.save_recorded(saver, p, p.kept.url or p.kept.source_url or "")
                          for p in items)
                    )  # fmt: skip
            except ImgsaveError as exc:
                done.errors.append(f"{exc} ({len(items)} paid images not saved yet)")
                continue
            done.recovered += sum(o is Outcome.ADDED for o in outcomes)
            done.saved_urls.update(p.kept.url or p.kept.source_url or "" for p in items)

    async def _fetch(self, rows: list[Purchase], done: Settled) -> None:
        """Spooled bytes on this host, or the provider's URL of an image: kept and saved
        through the one sequence (the spool files go once the image is saved)."""
        for project, items in _by_project(rows).items():
            async with self._saver(project) as saver:
                for p in items:
                    received = _received(p)
                    if received is None:
                        done.errors.append(f"project {project}: {p.ref}: spooled image gone")
                        continue
                    spooled = Path(p.kept.spool) if p.kept.spool else None
                    taken = await self._p.take(saver, p, received, spooled=spooled)
                    done.recovered += taken.added
                    done.lost += taken.ended is State.LOST
                    done.uploaded += taken.added and bool(p.kept.spool)
                    if taken.not_kept is not None or taken.save_error:
                        done.errors.append(
                            f"project {project}: {p.ref}: {taken.not_kept or taken.save_error}"
                        )

    async def _poll(self, rows: list[Purchase], done: Settled) -> None:
        """Jobs an earlier run paid for: polled, never submitted again."""
        if not rows or self._provider is None:
            done.pending += len(rows)
            return
        provider = self._provider
        gate = asyncio.Semaphore(POLLS_AT_ONCE)
        savers: dict[str, ProjectSaver] = {}

        async def one(p: Purchase) -> None:
            job = RemoteJob(
                p.kind, p.handle.job_id or "", p.handle.poll_url or "", p.handle.result_url,
                p.handle.cancel_url,
            )  # fmt: skip
            async with gate:
                try:
                    answer = await provider.resume(job)
                except ImageFailed as exc:
                    if exc.job is None:  # still running, or not readable now: left for later
                        done.pending += 1
                        done.errors.append(f"project {p.project}: {p.ref}: {exc}")
                        return
                    state = (
                        State.REFUSED if exc.refusal else State.LOST if exc.lost else State.FAILED
                    )
                    done.lost += exc.lost
                    if exc.lost:
                        done.held_back.add((p.project, p.scene))
                    done.failed += state is State.FAILED
                    if exc.refusal:
                        done.refusals[exc.refusal] += 1
                    await self._p.end(
                        p, state, str(exc), job=job.id, **({"lost": True} if exc.lost else {})
                    )
                    done.errors.append(f"project {p.project}: {p.ref}: {exc}")
                    return
                except ProviderStopped as exc:
                    done.pending += 1
                    done.unreadable.append(f"job {job.id} could not be polled: {exc}")
                    return
            for n, received in enumerate(answer.images):
                target = p if n == 0 else await self._p.extra(p, p.slot + 1000 + n)
                taken = await self._p.take(savers[p.project], target, received)
                done.recovered += taken.added
                done.job_images += taken.added
                done.lost += taken.ended is State.LOST
                done.failed += taken.ended is State.FAILED
                if taken.ended is State.LOST:
                    done.held_back.add((p.project, p.scene))
                if taken.not_kept is not None or taken.save_error:
                    done.errors.append(f"project {p.project}: {p.ref}: job {job.id}: "
                                       f"{taken.not_kept or taken.save_error}")  # fmt: skip

        done.jobs_resumed += len(rows)
        groups = _by_project(rows)
        for project, items in groups.items():
            async with self._saver(project) as saver:
                savers[project] = saver
                await asyncio.gather(*(one(p) for p in items))

    async def _adopt(self, rows: list[Purchase], done: Settled) -> None:
        """Synchronous requests whose run died before their answer was recorded. The store
        may hold their images (put before the record that did not come); otherwise they were
        paid for (maybe) and are lost."""
        found: dict[int, Kept] = {}
        if self._store is not None and rows:
            found = await self._objects_for(rows)
        for project, items in _by_project(rows).items():
            adopted = [p for p in items if p.id in found]
            if adopted:
                await self._ledger.move([Move(p.id, State.STORED, found[p.id]) for p in adopted])
                try:
                    async with self._saver(project) as saver:
                        for p in adopted:
                            outcome = await self._p.save_recorded(saver, p, found[p.id].url or "")
                            done.recovered += outcome is Outcome.ADDED
                except ImgsaveError as exc:
                    done.errors.append(f"{exc} ({len(adopted)} paid images not saved yet)")
            for p in items:
                if p.id in found:
                    continue
                done.unanswered += 1
                await self._p.end(
                    p,
                    State.LOST,
                    unanswered("the run that asked for it ended before any answer was recorded"),
                )

    async def _objects_for(self, rows: list[Purchase]) -> dict[int, Kept]:
        """Row id -> a stored object each can be given: under its scene's folder, put after it
        was requested, provably an image imgsave stored, and named by no ledger row."""
        store = self._store
        assert store is not None
        given: dict[int, Kept] = {}
        by_scene: dict[tuple[str, str], list[Purchase]] = defaultdict(list)
        for p in rows:
            by_scene[(p.project, p.scene)].append(p)
        for (project, scene), items in by_scene.items():
            known = await self._ledger.object_keys(project, scene)
            since = min(p.requested_at for p in items) - 1.0
            folder = store.scene_folder(project, scene_segment(items[0].ref))
            candidates = []
            async for key, modified, size in store.objects(folder + "/"):
                if key not in known and modified.timestamp() >= since:
                    candidates.append((modified, key, size))
            waiting = sorted(items, key=lambda r: r.id)
            for _, key, size in sorted(candidates):
                if not waiting:
                    break
                if await store.holds_image(key, size):
                    sha = key.rsplit("/", 1)[-1].split(".", 1)[0]
                    given[waiting.pop(0).id] = Kept(store.public_url(key), key, sha)
        return given

    def _saver(self, project: str) -> ProjectSaver:
        return ProjectSaver(self._db, project, self._shape, ledger=self._ledger)


def _by_project(rows: Sequence[Purchase]) -> dict[str, list[Purchase]]:
    groups: dict[str, list[Purchase]] = defaultdict(list)
    for p in rows:
        groups[p.project].append(p)
    return groups


def _received(p: Purchase) -> Received | None:
    if p.kept.spool:
        try:
            return Received(data=spool.read(Path(p.kept.spool)), url=p.kept.source_url)
        except OSError:
            return None
    return Received(url=p.kept.source_url)


def _from_log(log: Path, db_id: str) -> tuple[list[Move], dict[int, Handle]]:
    """What one run's log says of its ledger rows: the images it kept (URL or spool), and the
    jobs and batches it was given, for the rows the database may not have heard of."""
    moves: list[Move] = []
    handles: dict[int, Handle] = {}
    for record in unsettled.records(log):
        ident = record.get("ledger")
        if record.get("db") != db_id or not isinstance(ident, int):
            continue
        event = record.get("event")
        if event in (events.IMAGE_GENERATED, events.IMAGE_REHOSTED):
            url, spooled = record.get("url"), record.get("spool")
            kept = Kept(
                url=url if isinstance(url, str) else None,
                object_key=_text(record.get("key")),
                sha256=_text(record.get("sha256")),
                source_url=_text(record.get("source_url")),
                spool=spooled if isinstance(spooled, str) else None,
            )
            if kept.url or kept.spool:
                moves.append(Move(ident, State.STORED, kept))
        elif event == events.IMAGE_REQUESTED and isinstance(record.get("job"), str):
            handles[ident] = Handle(
                job_id=record["job"], poll_url=_text(record.get("poll")),
                result_url=_text(record.get("result")), cancel_url=_text(record.get("cancel")),
            )  # fmt: skip
    return moves, handles


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
