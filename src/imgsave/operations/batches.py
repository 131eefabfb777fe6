"""Generating through the provider's Batch API (half price): submit what is missing, collect
what finished, from any host, losing nothing and paying for nothing twice.

**Submit**: plan each project → claim the planned scenes for the batch's window and a margin
(with no process named, so no run takes them over before they expire: the batch is paying for
them) → read and plan again → one JSONL line per image, its custom_id naming project, scene
and slot (batch_lines.custom_id) → upload → `batch.submitting` fsynced → create, its metadata
naming imgsave, this database (Database.fingerprint) and the claims → `batch.submitted`
fsynced. A create whose answer was lost is looked for by its input file before anything else.

**Collect**: every finished batch of this database that no run collected yet (the batches
table says which, for every host): its output streamed line by line, each line matched by
custom_id, its images through the same intake as a synchronous answer (bytes → signature →
store → `image.generated` fsynced → locked save); its error file's lines reported with the
provider's code; its scenes' claims released; the batch marked collected. A collection cut
short is resumed by the next run: on this host the lines the log says were saved (by
custom_id) are skipped; on another host they are taken again, and every save appends only what
is absent, so nothing is saved twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from imgsave.adapters.imageapi.batches import (
    BATCH_KINDS,
    BatchClient,
    BatchInfo,
    BatchRefused,
    BatchUnavailable,
)
from imgsave.adapters.imageapi.client import add_usage
from imgsave.adapters.imageapi.wires import decoded_images, images_of
from imgsave.adapters.postgres.batch_rows import BatchRows
from imgsave.adapters.postgres.claim_rows import ClaimRows
from imgsave.adapters.postgres.database import Database
from imgsave.adapters.runlog.writer import RunLog
from imgsave.core.batch_lines import (
    BatchResult,
    Slot,
    UnreadableLine,
    custom_id,
    parse_result,
    request_line,
    slot_of,
)
from imgsave.core.documents import Outcome, SceneRef, Shape, decode, scenes
from imgsave.core.result_json import NOT_IN_JSON
from imgsave.core.scene_plan import SceneSelection, plan
from imgsave.core.settings import Settings
from imgsave.errors import ImgsaveError
from imgsave.operations.claims import process_is_gone, scene_key
from imgsave.operations.execution import Reporter, record_generated
from imgsave.operations.group_commit import ProjectSaver
from imgsave.operations.intake import Intake, NotKept
from imgsave.operations.recovery import Unsaved, save_recovered, saved_lines, unsaved_in_log

# The batch's 24 h window and an hour's margin: no other run pays for its scenes meanwhile.
CLAIM_SECONDS = 25 * 3600
MAX_REQUESTS = 50_000
MAX_INPUT_BYTES = 200 * 1024 * 1024
# Lines of one batch's output being decoded, stored and saved at once.
IN_FLIGHT = 64
# How long a save may wait for the other lines in flight (operations/group_commit.py).
LINGER = 0.05


@dataclass
class BatchTally:
    """What one `generate --batch` run (or a collection within audit's repair) did."""

    requested: int = 0
    saved: int = 0
    failed: int = 0
    received: int = 0
    # Images earlier runs received and never saved, saved before anything was submitted.
    recovered: int = 0
    spooled: int = 0
    # Images paid for whose output was gone before anyone collected it.
    lost: int = 0
    in_batches: int = 0
    submitted: list[str] = field(default_factory=list)
    collected: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    refusals: Counter[str] = field(default_factory=Counter)
    skipped_scenes: int = 0
    held_scenes: int = 0
    errors: list[str] = field(default_factory=list)
    # Per batch collected: {id, status, total, received, saved, failed, lost, resumed (lines
    # an earlier, cut-short collection on this host had done)}.
    per_batch: list[dict[str, object]] = field(default_factory=list)
    # A collection that could not finish (the output unreadable for now): exit 1.
    uncollected: list[str] = field(default_factory=list, metadata=NOT_IN_JSON)


@dataclass(frozen=True)
class _Entry:
    slot: Slot
    custom_id: str
    line: bytes


class Batches:
    def __init__(
        self,
        *,
        db: Database,
        client: BatchClient,
        intake: Intake,
        log: RunLog,
        shape: Shape,
        request: Callable[[str], dict[str, Any]],
        allow_http: bool = False,
    ):
        """`request(prompt)` is the body of one image request (model, size, params)."""
        self._db = db
        self._client = client
        self._intake = intake
        self._log = log
        self._shape = shape
        self._request = request
        self._allow_http = allow_http
        self._claims = ClaimRows(db)
        self._rows = BatchRows(db)
        self._claim_run = f"batch-{log.run_id}"
        self._unsaved: Unsaved | None = None

    # -- collect -----------------------------------------------------------------------------

    async def mine(self) -> list[BatchInfo]:
        return await this_databases(self._db, self._client)

    async def collect(self, tally: BatchTally, *, only: set[str] | None = None) -> None:
        """Collect every finished, uncollected batch of this database (of `only`, if given);
        those still running are `pending`."""
        await self._rows.ensure_table()
        batches = [b for b in await self.mine() if only is None or b.id in only]
        done = await self._rows.collected([b.id for b in batches])
        tally.pending = []
        for batch in batches:
            if batch.id in done:
                continue
            if not batch.finished:
                tally.pending.append(batch.id)
                continue
            await self._collect_one(batch, tally)

    async def _collect_one(self, batch: BatchInfo, tally: BatchTally) -> None:
        asked = await self._slots_of(batch.input_file_id)
        # A collection cut short on this host is resumed: its lines whose every image is
        # logged saved are not stored and saved again. (On another host every line is taken
        # again; each save appends only what the scene lacks, so nothing is saved twice.)
        done = await asyncio.to_thread(saved_lines, self._log.path.parent, batch.id)
        saved = failed = lost = resumed = 0
        received_before = tally.received
        in_flight: set[asyncio.Task[int]] = set()
        async with contextlib.AsyncExitStack() as stack:
            savers: dict[str, ProjectSaver] = {}

            async def saver(project: str) -> ProjectSaver:
                # A save waits a moment for the lines still in flight: one transaction then
                # takes many images, where each would rewrite the whole document alone.
                if project not in savers:
                    savers[project] = await stack.enter_async_context(
                        ProjectSaver(
                            self._db, project, self._shape, linger=LINGER,
                            expecting=lambda: len(in_flight),
                        )
                    )  # fmt: skip
                return savers[project]

            async def take(raw: bytes) -> int:
                nonlocal resumed
                # Parsing and decoding a line (megabytes of base64) in a worker thread: the
                # event loop goes on storing and saving the lines before it meanwhile.
                result, slot, decoded = await asyncio.to_thread(_decoded, raw)
                if result is None or slot is None or not result.ok:
                    return 0
                body = result.body or {}
                answer = images_of(body, decoded, allow_http=self._allow_http)
                if answer.images and done[result.custom_id] >= len(answer.images):
                    resumed += 1
                    return 0
                tally.received += len(answer.images)
                add_usage(tally.usage, answer.usage)
                ref = SceneRef(slot.scene, slot.scene_id)
                added = 0
                for received in answer.images:
                    try:
                        kept = await self._intake.keep(slot.project, ref, received)
                    except NotKept as exc:
                        tally.spooled += exc.spooled is not None
                        tally.errors.append(f"project {slot.project}: {ref}: {exc}")
                        continue
                    fields = {**kept.fields, "batch": batch.id, "custom_id": result.custom_id}
                    await record_generated(self._log, slot.project, ref, kept.url, fields)
                    outcome = await (await saver(slot.project)).save(ref, kept.url)
                    if outcome is Outcome.NO_SCENE:
                        continue
                    added += outcome is Outcome.ADDED
                    # Logged either way, with its custom_id: what a resumption skips. Already
                    # held (a collection before this one saved it) is `in_scene`, as a
                    # synchronous duplicate is: nothing for recovery to bring back.
                    extra = {} if outcome is Outcome.ADDED else {"in_scene": True}
                    self._log.write(
                        "image.saved", project=slot.project, scene=ref.index, scene_id=ref.id,
                        url=kept.url, batch=batch.id, custom_id=result.custom_id, **extra,
                    )  # fmt: skip
                return added

            if batch.output_file_id:
                try:
                    async for raw in self._client.lines(batch.output_file_id):
                        in_flight.add(asyncio.ensure_future(take(raw)))
                        if len(in_flight) >= IN_FLIGHT:
                            finished, in_flight = await asyncio.wait(
                                in_flight, return_when=asyncio.FIRST_COMPLETED
                            )
                            saved += sum(t.result() for t in finished)
                except BatchRefused as exc:
                    # The output file is gone (the provider keeps it for weeks): paid, lost.
                    lost = max(0, batch.completed - saved)
                    tally.errors.append(
                        f"batch {batch.id}: its output can no longer be read ({exc}); "
                        f"{lost} images were paid for and are lost"
                    )
                except BatchUnavailable as exc:
                    # What was taken before the cut is saved and counted; the rest waits.
                    saved += sum(await asyncio.gather(*in_flight))
                    tally.saved += saved
                    tally.errors.append(f"batch {batch.id}: {exc}; collected on the next run")
                    tally.uncollected.append(batch.id)
                    return
                saved += sum(await asyncio.gather(*in_flight))
        if batch.error_file_id:
            async for raw in self._client.lines(batch.error_file_id):
                result, slot = _read(raw)
                if result is None or slot is None:
                    continue
                failed += 1
                tally.refusals[result.code or "error"] += 1
                tally.errors.append(
                    f"project {slot.project}: scene {slot.scene}: the batch's request failed: "
                    f"{result.code}" + (f" ({result.message})" if result.message else "")
                )
        # Whatever did not come back is free to be planned again; so is what did.
        claim_run = batch.metadata.get("imgsave_claim", "")
        for project, keys in asked.items():
            await self._claims.release_scenes(claim_run, project, sorted(keys))
        await self._rows.mark(batch.id, saved=saved, failed=failed, lost=lost)
        with contextlib.suppress(ImgsaveError):
            self._log.write(
                "batch.collected", batch=batch.id, status=batch.status, saved=saved,
                failed=failed, lost=lost, total=batch.total,
            )  # fmt: skip
        tally.collected.append(batch.id)
        tally.per_batch.append(
            {"id": batch.id, "status": batch.status, "total": batch.total,
             "received": tally.received - received_before, "saved": saved, "failed": failed,
             "lost": lost, "resumed": resumed}
        )  # fmt: skip
        tally.saved += saved
        tally.failed += failed
        tally.lost += lost

    async def _slots_of(self, input_file_id: str) -> dict[str, set[str]]:
        """project -> the claims' scene keys a batch asked for, from its input file."""
        asked: dict[str, set[str]] = defaultdict(set)
        try:
            async for raw in self._client.lines(input_file_id):
                slot = _slot_in_request(raw)
                if slot is not None:
                    asked[slot.project].add(scene_key(SceneRef(slot.scene, slot.scene_id)))
        except (BatchRefused, BatchUnavailable):
            pass  # the claims then expire by themselves
        return asked

    # -- submit ------------------------------------------------------------------------------

    async def submit(
        self,
        projects: Sequence[str],
        tally: BatchTally,
        *,
        images_per_scene: int,
        selection: SceneSelection | None,
        force: bool,
        batch_size: int,
    ) -> None:
        """Plan, claim and submit what `projects` still miss, in batches of `batch_size`."""
        await self._claims.ensure_table()
        entries: list[_Entry] = []
        for project in projects:
            try:
                entries += await self._planned(project, tally, images_per_scene, selection, force)
            except ImgsaveError as exc:
                tally.errors.append(str(exc))
        chunks = _chunks(entries, min(batch_size, MAX_REQUESTS))
        for n, chunk in enumerate(chunks):
            try:
                await self._submit_one(chunk, tally)
            except ImgsaveError:
                # Nothing of this chunk or the ones after it is in a batch: free their scenes.
                for rest in chunks[n:]:
                    await self._release(rest)
                raise

    async def _planned(
        self,
        project: str,
        tally: BatchTally,
        images_per_scene: int,
        selection: SceneSelection | None,
        force: bool,
    ) -> list[_Entry]:
        async def planned() -> Any:
            document = decode(await self._db.read(project), project=project)
            return plan(
                scenes(document, self._shape, project=project),
                images_per_scene,
                selection=selection,
                force=force,
                project=project,
                every_selected=False,
            )

        first = await planned()
        if not first.jobs:
            tally.skipped_scenes += len(first.skipped_scenes)
            return []
        keys = {scene_key(job.scene.ref): job.scene.ref for job in first.jobs}

        async def take(wanted: list[str], dead: Sequence[str] = ()) -> dict[str, float | None]:
            return dict(
                await self._claims.take(
                    project, wanted, run=self._claim_run, host=socket.gethostname(),
                    process="", expiry=CLAIM_SECONDS, dead=dead,
                )
            )  # fmt: skip

        taken = await take(list(keys))
        if len(taken) < len(keys):
            # A run on this host that died holding scenes gives them up now, as it does to a
            # synchronous run; what it received for them is recovered below.
            holders = await self._claims.holders(project, [k for k in keys if k not in taken])
            dead = sorted({process for _, _, process, _, _ in holders if process_is_gone(process)})
            if dead:
                taken |= await take([h[0] for h in holders], dead)
        tally.held_scenes += len(keys) - len(taken)
        # What an earlier run received for these scenes and never saved is saved first: a
        # batch must not pay for it again (recovery.py).
        if self._unsaved is None:
            self._unsaved = await asyncio.to_thread(
                unsaved_in_log, self._log.path.parent, allow_http=self._allow_http,
                normalise=self._db.normalise_key,
            )  # fmt: skip
        tally.recovered += await save_recovered(
            self._db, self._shape, self._log, project,
            [job for job in first.jobs if scene_key(job.scene.ref) in taken],
            logged=self._unsaved.for_project(project), store=self._intake.store,
            inherited={keys[k]: since for k, since in taken.items() if since is not None},
        )  # fmt: skip
        second = await planned()
        tally.skipped_scenes += len(second.skipped_scenes)
        entries = []
        for job in second.jobs:
            ref = job.scene.ref
            if scene_key(ref) not in taken or job.scene.prompt is None:
                continue
            for number in range(job.count):
                slot = Slot(project, ref.index, ref.id, number)
                identifier = custom_id(slot)
                if identifier is None:
                    tally.errors.append(
                        f"project {project}: {ref}: the project key and scene id are too long "
                        "for a batch request's custom_id; generate it without --batch"
                    )
                    break
                line = request_line(identifier, self._request(job.scene.prompt))
                entries.append(_Entry(slot, identifier, line))
        unused = set(taken) - {scene_key(SceneRef(e.slot.scene, e.slot.scene_id))
                               for e in entries if e.slot.project == project}  # fmt: skip
        if unused:
            await self._claims.release_scenes(self._claim_run, project, sorted(unused))
        return entries

    async def _submit_one(self, chunk: list[_Entry], tally: BatchTally) -> None:
        content = b"".join(entry.line for entry in chunk)
        file_id = await self._client.upload(content)
        images = {
            e.custom_id: {"project": e.slot.project, "scene": e.slot.scene,
                          "scene_id": e.slot.scene_id, "slot": e.slot.slot}
            for e in chunk
        }  # fmt: skip
        await self._log.record(
            "batch.submitting", input_file_id=file_id, claim=self._claim_run, images=images
        )
        metadata = {"imgsave": "1", "imgsave_db": self._db.fingerprint,
                    "imgsave_claim": self._claim_run}  # fmt: skip
        try:
            batch = await self._client.create(file_id, metadata)
        except BatchUnavailable:
            # The answer was lost, not the request: the batch may exist (and bill). Look.
            found = [b for b in await self.mine() if b.input_file_id == file_id]
            if not found:
                raise
            batch = found[0]
        await self._log.record("batch.submitted", batch=batch.id, input_file_id=file_id)
        tally.submitted.append(batch.id)
        tally.in_batches += len(chunk)
        tally.requested += len(chunk)

    async def _release(self, chunk: list[_Entry]) -> None:
        by_project: dict[str, set[str]] = defaultdict(set)
        for entry in chunk:
            by_project[entry.slot.project].add(
                scene_key(SceneRef(entry.slot.scene, entry.slot.scene_id))
            )
        for project, keys in by_project.items():
            with contextlib.suppress(ImgsaveError):
                await self._claims.release_scenes(self._claim_run, project, sorted(keys))

    # -- wait --------------------------------------------------------------------------------

    async def wait(
        self,
        tally: BatchTally,
        *,
        poll: float,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        reporter: Reporter | None = None,
    ) -> None:
        """Until every batch this run submitted is collected; the bar counts its images."""
        waiting = set(tally.submitted) - set(tally.collected)
        if reporter:
            reporter.start(tally.in_batches, "waiting for the batches")
        try:
            while waiting:
                await sleep(poll)
                before = tally.saved + tally.failed
                await self.collect(tally, only=waiting)
                if reporter:
                    for _ in range(tally.saved + tally.failed - before):
                        reporter.advance(ok=True)
                waiting -= set(tally.collected)
                waiting -= set(tally.uncollected)
        finally:
            if reporter:
                reporter.finish()


async def this_databases(db: Database, client: BatchClient) -> list[BatchInfo]:
    """Every batch the provider holds for this database (its metadata says so), newest first:
    found from any host, with any log folder."""
    return [b async for b in client.listed() if b.metadata.get("imgsave_db") == db.fingerprint]


async def overview(db: Database, client: BatchClient) -> list[tuple[BatchInfo, bool]]:
    """This database's batches, each with whether some run collected it."""
    rows = BatchRows(db)
    await rows.ensure_table()
    batches = await this_databases(db, client)
    done = await rows.collected([b.id for b in batches])
    return [(b, b.id in done) for b in batches]


def uncollected_images(overview: list[tuple[BatchInfo, bool]]) -> int:
    """Images finished batches hold that no run took in: paid for, not in their scenes."""
    return sum(b.completed for b, collected in overview if b.finished and not collected)


def _decoded(raw: bytes) -> tuple[BatchResult | None, Slot | None, dict[int, tuple[bytes, bool]]]:
    """An output line read, its images decoded (the base64 dropped as soon as it is)."""
    result, slot = _read(raw)
    return result, slot, decoded_images(result.body) if result and result.body else {}


def _read(raw: bytes) -> tuple[BatchResult | None, Slot | None]:
    try:
        result = parse_result(raw)
    except UnreadableLine:
        return None, None
    return result, slot_of(result.custom_id)


def _slot_in_request(raw: bytes) -> Slot | None:
    import json

    try:
        line = json.loads(raw)
    except ValueError:
        return None
    identifier = line.get("custom_id") if isinstance(line, dict) else None
    return slot_of(identifier) if isinstance(identifier, str) else None


def _chunks(
    entries: list[_Entry], size: int, max_bytes: int = MAX_INPUT_BYTES
) -> list[list[_Entry]]:
    """Batches of at most `size` requests and `max_bytes` of input each, in order."""
    chunks: list[list[_Entry]] = []
    current: list[_Entry] = []
    weight = 0
    for entry in entries:
        if current and (len(current) >= size or weight + len(entry.line) > max_bytes):
            chunks.append(current)
            current, weight = [], 0
        current.append(entry)
        weight += len(entry.line)
    if current:
        chunks.append(current)
    return chunks


async def finished_and_uncollected(settings: Settings, db: Database) -> int:
    """Images finished batches of this database hold that no run collected; 0 when no image
    API is configured or it has no Batch API (audit reads what it can, and says the rest)."""
    # Only an image API this run was told of: a default base with no key is no one's.
    if not (settings.base_url or settings.api_key) or settings.provider.kind not in BATCH_KINDS:
        return 0
    try:
        async with BatchClient.from_settings(settings, max_attempts=2) as client:
            return uncollected_images(await overview(db, client))
    except ImgsaveError:
        return 0
