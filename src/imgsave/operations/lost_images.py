"""Diff what the logs say was generated against what the documents hold: what audit reports and
repair acts on.

For each (project, scene) the log history says which logged URLs the scene should still hold
(see `core.log_history.history`). Absent ones are lost; absent superseded ones are stale (the
scene was deliberately regenerated); URLs of projects or scenes that no longer exist are orphaned.
A source that yields nothing usable is an error, never a clean bill of health.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from itertools import chain, count
from pathlib import Path

from imgsave.adapters.postgres.database import Database
from imgsave.adapters.postgres.journal_rows import JournalRows
from imgsave.adapters.postgres.ledger_rows import LedgerRows, Sighted
from imgsave.adapters.runlog.bulk_reader import PROCESS_BYTES, bucket, read_all, work_bytes
from imgsave.adapters.runlog.reader import (
    LogQuery,
    ReadStats,
    expand_paths,
    read_sightings,
)
from imgsave.adapters.runlog.workers import Worker, cores, renamed, workers
from imgsave.adapters.storage.object_store import PROBE_DIR, Store
from imgsave.core.documents import Scene, SceneRef, Shape, decode, scenes
from imgsave.core.image_bytes import key_segment, scene_segment, segment_text
from imgsave.core.journal_verdicts import JournalLedger, Verdicts, overlay
from imgsave.core.log_diff import Diff, diff_project
from imgsave.core.log_history import (
    SceneHistory,
    Sighting,
    build,
    load,
    partition_count,
    partition_of,
    spilled,
)
from imgsave.core.result_json import NOT_IN_JSON, fields_json, json_name
from imgsave.errors import (
    EXIT_CANNOT_WORK,
    EXIT_FINDINGS,
    EXIT_OK,
    CannotWork,
    ImgsaveError,
    UsageError,
)
from imgsave.operations import ledger_sightings
from imgsave.operations.ledger_sightings import ROW_BYTES

BATCH = 500
# False: read the logs line by line in this process (the reference the tests hold the bulk
# path to), not by `bulk_reader` in worker processes.
BULK = True
# The bulk path's partitions per line-by-line one (about 24 MB of log each): each worker holds
# one partition's history at a time, and more of them keep every worker busy to the end.
BULK_PARTITIONS = 8


@dataclass(frozen=True, slots=True)
class Finding:
    project: str
    scene: int
    scene_id: str | None
    url: str


@dataclass
class AuditReport:
    stats: ReadStats = field(metadata=json_name("skipped"))
    lost: list[Finding] = field(default_factory=list)
    stale: list[Finding] = field(default_factory=list)
    orphaned: list[Finding] = field(default_factory=list)
    expired: list[Finding] = field(default_factory=list)
    # audit --store: objects under the prefix that are not provably images imgsave stored, or
    # older than every record read; reported, never written.
    unreferenced: list[Finding] = field(default_factory=list)
    present: int = field(default=0, metadata=NOT_IN_JSON)
    # Paid images whose bytes wait in the spool for a store (`imgsave repair` uploads them).
    spooled: int = field(default=0, metadata=NOT_IN_JSON)
    unchecked: int = field(default=0, metadata=NOT_IN_JSON)
    # audit --journal: how many journal rows were read (None: the journal was not asked for).
    journal_rows: int | None = field(default=None, metadata=NOT_IN_JSON)
    # Projects that could not be audited (not found when named, unreadable document): each is
    # that project's error; every other project is still audited.
    errors: list[str] = field(default_factory=list)
    # Images of finished batches no run collected (generate --batch): paid for, not saved.
    uncollected: int = field(default=0, metadata=NOT_IN_JSON)
    # Purchases not in their scene with no URL to name (the ledger): jobs `pending` (the next
    # run polls them) and purchases `lost` (paid for, their result gone).
    jobs: list[dict[str, object]] = field(default_factory=list)
    # Images waiting in batches still running (not lost: on their way).
    in_batches: int = field(default=0, metadata=NOT_IN_JSON)
    # Requests whose run ended before any answer came: maybe billed (not known to be).
    unanswered: int = field(default=0, metadata=NOT_IN_JSON)
    # The provider's job or Batch API could not be read: nothing seen is not nothing found.
    unreadable: list[str] = field(default_factory=list)
    # Logged URLs absent from their scene whose partner (log_history.SceneHistory) is there.
    represented: set[str] = field(default_factory=set, metadata=NOT_IN_JSON)
    # The time of the oldest log record or journal row read (epoch seconds), if any.
    oldest_evidence: float | None = field(default=None, metadata=NOT_IN_JSON)
    # Scenes that hold no image and were never logged: candidates for --regenerate.
    empty_scenes: list[tuple[str, SceneRef]] = field(default_factory=list, metadata=NOT_IN_JSON)
    # What the operator should know about the sources: run logs audit did not read.
    notes: list[str] = field(default_factory=list)
    # The ledger's rows read as sightings (None: this database has no ledger yet).
    ledger_rows: int | None = field(default=None, metadata=NOT_IN_JSON)

    @property
    def exit_code(self) -> int:
        if self.errors or self.unreadable:
            return EXIT_CANNOT_WORK
        missing = self.lost or self.expired or self.spooled or self.uncollected or self.jobs_lost
        return EXIT_FINDINGS if missing else EXIT_OK

    @property
    def jobs_lost(self) -> int:
        return sum(job["state"] == "lost" for job in self.jobs)

    def stderr_lines(self) -> list[str]:
        return []

    def summary(self) -> dict[str, int]:
        return {
            "lost": len(self.lost),
            "stale": len(self.stale),
            "orphaned": len(self.orphaned),
            "present": self.present,
            "expired": len(self.expired),
            "unreferenced": len(self.unreferenced),
            "spooled": self.spooled,
            "uncollected": self.uncollected,
            "jobs_pending": len(self.jobs) - self.jobs_lost,
            "jobs_lost": self.jobs_lost,
            "in_batches": self.in_batches,
            "unanswered": self.unanswered,
            "lines_skipped": self.stats.lines_skipped,
        } | ({} if self.journal_rows is None else {"journal_rows": self.journal_rows})

    def to_json(self) -> dict[str, object]:
        return {"summary": self.summary(), **fields_json(self)}


async def audit(
    db: Database,
    query: LogQuery,
    *,
    ledger: LedgerRows | None = None,
    own_logs: Sequence[Path] = (),
    shape: Shape,
    check_urls: bool = False,
    store: Store | None = None,
    allow_private_network: bool = False,
) -> AuditReport:
    stats = ReadStats()
    report = AuditReport(stats)
    files = expand_paths(query.paths, also=own_logs)
    named = {db.normalise_key(p) or p: p for p in query.only_projects}
    query = replace(query, only_projects=frozenset(named))
    journal = await _journal(db, query, report) if query.journal else {}
    marks = _marks(report)
    seen, found = await _logs_against_documents(
        db, files, ledger, query, shape, report=report, journal=journal
    )
    if ledger is not None:
        # Never diffed: a scene that holds the index now is another scene.
        since = query.since.timestamp() if query.since else None
        orphans = await ledger.orphaned(sorted(query.only_projects) or None, since)
        report.orphaned += (Finding(*row) for row in orphans)
    _in_project_order(report, marks)
    # Projects only the journal names.
    seen.update(journal)
    found += await _classify_all(db, journal, shape, report)
    _check_sources(query, stats, logged_projects=len(seen), found=found)
    # Projects named on the command line that no log mentions are still looked at: they may
    # not exist, or hold empty scenes for --regenerate.
    unseen: dict[str, dict[SceneRef, SceneHistory]] = {p: {} for p in set(named) - seen}
    await _classify_all(db, unseen, shape, report)
    if store is not None:
        report.oldest_evidence = min(
            (t for t in (stats.oldest, report.oldest_evidence) if t is not None), default=None
        )
        await _store_objects(db, store, shape, report, named=set(named), known_projects=seen)
    if check_urls and report.lost:
        from imgsave.adapters.imageapi.url_check import check_urls as check

        alive = await check(
            (f.url for f in report.lost), allow_private_network=allow_private_network
        )
        still_lost = []
        for finding in report.lost:
            verdict = alive.get(finding.url)
            if verdict is False:
                report.expired.append(finding)
            else:
                report.unchecked += verdict is None
                still_lost.append(finding)
        report.lost = still_lost
    return report


async def _store_objects(
    db: Database,
    store: Store,
    shape: Shape,
    report: AuditReport,
    *,
    named: set[str],
    known_projects: set[str],
) -> None:
    """Objects in the store that no document holds and no finding names: images that were paid
    for and put, then never logged or saved (a crash between the put and the log). Each is lost
    (repair appends it), or orphaned when its scene is gone, but only when it is provably an
    image imgsave stored (its name is SHA256.EXT, its bytes hash to that name and carry that
    type's signature) and is newer than the oldest evidence read: an older one may have been
    removed on purpose by a write that no pruned log or journal remembers any more. Anything
    else under the prefix is `unreferenced`: reported, never written."""
    known = {f.url for f in (*report.lost, *report.stale, *report.orphaned, *report.expired)}
    known |= report.represented
    by_project = await _objects_by_project(store, report, named, known_projects)
    if not by_project:
        return
    documents, failures = await db.read_many(list(by_project))
    report.errors += failures.values()
    oldest = report.oldest_evidence
    for project, objects in by_project.items():
        if project in failures:
            continue
        all_scenes: list[Scene] = []
        if project in documents:
            try:
                all_scenes = scenes(decode(documents[project], project=project), shape)
            except ImgsaveError as exc:
                report.errors.append(str(exc))
                continue
        held = {url for scene in all_scenes for url in scene.urls}
        folders = {scene_segment(sc.ref): sc for sc in all_scenes}
        for segment, key, modified, size in objects:
            url = store.public_url(key)
            if url in held or url in known:
                continue
            scene = folders.get(segment)
            ref = (scene.ref.index, scene.ref.id) if scene else (0, None)
            finding = Finding(project, *ref, url)
            if not (
                oldest is not None
                and modified.timestamp() > oldest
                and await store.holds_image(key, size)
            ):
                report.unreferenced.append(finding)
            elif scene is None:
                report.orphaned.append(finding)
            else:
                report.lost.append(finding)


# An object under a project's folder: its scene's folder, its key, when it was put, its size.
_StoreObject = tuple[str, str, datetime, int]


async def _objects_by_project(
    store: Store, report: AuditReport, named: set[str], known_projects: set[str]
) -> dict[str, list[_StoreObject]]:
    """The store's objects under the prefix, project by project (only the `named` ones, when
    some are); what is not at a project's scene's place is `unreferenced` (when no project is
    named: else it may well be another project's)."""
    by_segment = {key_segment(p): p for p in known_projects | named}
    by_project: dict[str, list[_StoreObject]] = {}
    prefix = "/".join(p for p in store.prefix.split("/") if p)
    async for key, modified, size in store.objects(f"{prefix}/" if prefix else ""):
        parts = key[len(prefix) + 1 if prefix else 0 :].split("/")
        if parts[0] == PROBE_DIR:
            continue
        project = by_segment.get(parts[0]) or segment_text(parts[0]) if parts else None
        if len(parts) != 3 or project is None:
            if not named:  # else it may well be another project's
                report.unreferenced.append(Finding(project or "?", 0, None, store.public_url(key)))
            continue
        if named and project not in named:
            continue
        by_project.setdefault(project, []).append((parts[1], key, modified, size))
    return by_project


async def _journal(db: Database, query: LogQuery, report: AuditReport) -> Verdicts:
    journal = JournalRows(db.connector)
    if not await journal.installed():
        raise CannotWork(
            "--journal: this database has no imgsave journal (install it with "
            "`imgsave sql --journal --apply`; it records writes from then on)"
        )
    ledger = JournalLedger(query.run_gap.total_seconds(), allow_http=query.allow_http)
    async for rows in journal.rows(query.since):
        ledger.add(rows)
    report.journal_rows = ledger.rows
    report.oldest_evidence = ledger.oldest
    report.stats.refused += ledger.refused
    return ledger.verdicts(query.only_projects)


async def _logs_against_documents(
    db: Database,
    files: list[Path],
    ledger: LedgerRows | None,
    query: LogQuery,
    shape: Shape,
    *,
    report: AuditReport,
    journal: Verdicts,
) -> tuple[set[str], int]:
    """Classify every URL the logs and the ledger name; return the projects they name and how
    many of those exist.

    The logs are read by `bulk_reader` (bytes, a literal before the pattern) in worker
    processes, one per core, into partitions of projects, and the ledger's rows are spilled
    into the same partitions; each partition's history is built and diffed against its
    documents in a worker too, while this process reads the next documents from the database.
    Should the logs spell one project's key in two ways that fall in two partitions (a uuid in
    braces and without), they are read again line by line, where keys are normalised before
    the split.
    """
    projects = sorted(query.only_projects) or None
    since = query.since.timestamp() if query.since else None
    sighted = await ledger.sighted(projects, since) if ledger else Sighted(0, None)
    report.ledger_rows = sighted.rows if ledger else None
    partitions = partition_count(files, also=sighted.rows * ROW_BYTES)
    gap = query.run_gap.total_seconds()
    seen: set[str] = set()
    found = 0
    big = work_bytes(files) + sighted.rows * ROW_BYTES >= PROCESS_BYTES
    with tempfile.TemporaryDirectory(prefix="imgsave-audit-") as folder:
        if BULK and ledger and not files and not journal:
            # The ledger alone (audit from cron): its rows come a project after another, in
            # partitions that are diffed while the next are read.
            async with workers(cores() if big else 1) as pool:
                rows = max(1, sighted.rows // (partitions * BULK_PARTITIONS))
                ordered = ledger_sightings.by_project(ledger, projects, since, Path(folder), rows)
                _older(report.stats, sighted)
                return await _diff_partitions(db, ordered, {}, gap, shape, report=report, pool=pool)
        if BULK:
            async with workers(cores() if big else 1) as pool:
                stats = ReadStats()
                partitions *= BULK_PARTITIONS
                reading = await read_all(
                    files, query, stats, partitions=partitions, folder=folder, workers=pool
                )
                keys = {p: k for p in reading.projects if (k := db.normalise_key(p)) and k != p}
                if all(bucket(k, partitions) == bucket(p, partitions) for p, k in keys.items()):
                    own = await _ledger_parts(
                        ledger, projects, since, partitions=partitions, folder=folder, place=bucket
                    )
                    parts = _joined(reading.parts, own, sighted, stats)
                    report.stats.add(stats)
                    if not journal:
                        return await _diff_partitions(
                            db, parts, keys, gap, shape, report=report, pool=pool
                        )
                    for part_files in parts:
                        logged = build(renamed(part_files, keys), gap)
                        overlay(logged, journal)
                        seen.update(logged)
                        found += await _classify_all(db, logged, shape, report)
                    return seen, found
        stats = ReadStats()
        sightings = (_normalised(s, db) for s in read_sightings(files, query, stats))
        own = await _ledger_parts(
            ledger, projects, since, partitions=partitions, folder=Path(folder), place=partition_of
        )
        with spilled(sightings, partitions) as logs:
            parts = _joined([[p] for p in logs], own, sighted, stats)
            report.stats.add(stats)
            for part_files in parts:
                logged = build(chain.from_iterable(map(load, part_files)), gap)
                overlay(logged, journal)
                seen.update(logged)
                found += await _classify_all(db, logged, shape, report)
    return seen, found


async def _ledger_parts(
    ledger: LedgerRows | None,
    projects: Sequence[str] | None,
    since: float | None,
    *,
    partitions: int,
    folder: str | Path,
    place: Callable[[str, int], int],
) -> list[Path | None]:
    if ledger is None:
        return [None] * partitions
    return await ledger_sightings.spill(
        ledger, projects, since, partitions=partitions, folder=Path(folder), place=place
    )


def _joined(
    logs: list[list[Path]], own: list[Path | None], sighted: Sighted, stats: ReadStats
) -> list[list[Path]]:
    """Each partition's log files and then its ledger file."""
    _older(stats, sighted)
    parts = zip(logs, own, strict=True)
    return [[*files, *([mine] if mine else [])] for files, mine in parts]


def _older(stats: ReadStats, sighted: Sighted) -> None:
    """The ledger's oldest row is evidence as old as a log line (audit --store)."""
    if sighted.oldest is not None and (stats.oldest is None or sighted.oldest < stats.oldest):
        stats.oldest = sighted.oldest


def _marks(report: AuditReport) -> tuple[int, ...]:
    return len(report.lost), len(report.stale), len(report.orphaned), len(report.errors)


def _in_project_order(report: AuditReport, marks: tuple[int, ...]) -> None:
    """What the logs' phase added since `marks`, by project (each project's findings in the
    order found): the same whichever way, and in however many partitions, the logs were read."""
    lost, stale, orphaned, errors = marks
    report.lost[lost:] = sorted(report.lost[lost:], key=_project)
    report.stale[stale:] = sorted(report.stale[stale:], key=_project)
    report.orphaned[orphaned:] = sorted(report.orphaned[orphaned:], key=_project)
    report.errors[errors:] = sorted(report.errors[errors:])
    report.empty_scenes.sort(key=lambda found: found[0])


def _project(finding: Finding) -> str:
    return finding.project


# What a worker answers for one batch of a partition's projects: how many exist, the errors of
# those that could not be read, and the diff of the others.
_Batch = tuple[int, list[str], Diff]


async def _diff_partitions(
    db: Database,
    parts: Iterable[list[Path]] | AsyncIterator[list[Path]],
    keys: dict[str, str],
    gap: float,
    shape: Shape,
    *,
    report: AuditReport,
    pool: list[Worker],
) -> tuple[set[str], int]:
    """Each partition built and diffed by the next free worker, as soon as it is there (the
    ledger's are written while the first are diffed); the findings added to the report in
    partition order, as if one process had done them one after another."""
    answers: dict[int, tuple[list[str], list[_Batch]]] = {}
    source = aiter(parts) if isinstance(parts, AsyncIterator) else _async(parts)
    taking = asyncio.Lock()
    counter = count()

    async def serve(worker: Worker) -> None:
        while True:
            async with taking:
                files = await anext(source, None)
                number = next(counter)
            if files is None:
                return
            projects = await worker.ask(("build", files, keys, gap))
            answers[number] = (projects, await _diff_batches(db, worker, projects, shape))

    async with asyncio.TaskGroup() as group:
        for worker in pool:
            group.create_task(serve(worker))
    seen: set[str] = set()
    found = 0
    for number in sorted(answers):
        projects, batches = answers[number]
        seen.update(projects)
        for existing, errors, diff in batches:
            found += existing
            report.errors += errors
            _take(diff, report)
    return seen, found


async def _async(parts: Iterable[list[Path]]) -> AsyncIterator[list[Path]]:
    for files in parts:
        yield files


async def _diff_batches(
    db: Database, worker: Worker, projects: list[str], shape: Shape
) -> list[_Batch]:
    """The partition's projects diffed batch by batch, the next batch's documents read from
    the database while the worker diffs this one."""
    batches = [projects[start : start + BATCH] for start in range(0, len(projects), BATCH)]
    answers: list[_Batch] = []
    reads = [asyncio.ensure_future(db.read_many(batches[0]))] if batches else []
    try:
        for number, batch in enumerate(batches):
            documents, failures = await reads[-1]
            if number + 1 < len(batches):
                reads.append(asyncio.ensure_future(db.read_many(batches[number + 1])))
            todo = [p for p in batch if p not in failures]
            diff = await worker.ask(("diff", todo, documents, shape))
            errors = [f"{message} (not audited)" for message in failures.values()]
            answers.append((len(documents), errors, diff))
    finally:
        if reads and not reads[-1].done():
            reads[-1].cancel()
    return answers


def _normalised(sighting: Sighting, db: Database) -> Sighting:
    """The project key spelled as the key column spells it (a uuid's case, an int's zeros)."""
    key = db.normalise_key(sighting.project)
    return sighting if key is None or key == sighting.project else sighting._replace(project=key)


def _check_sources(query: LogQuery, stats: ReadStats, *, logged_projects: int, found: int) -> None:
    """Refuse answers that say nothing: they would read as "nothing lost"."""
    if query.pattern and stats.pattern_lines and not stats.matched:
        raise UsageError(
            f"--pattern matched none of the {stats.pattern_lines} lines read from "
            f"{stats.files} file(s): check the pattern against a line of the log (see --help)"
        )
    if query.since is not None and stats.untimed:
        raise UsageError(
            f"--since cannot be applied: {stats.untimed} matching lines carry no time imgsave "
            "can read (give --pattern a (?P<ts>...) group with an ISO 8601 or epoch time)"
        )
    if logged_projects and not found:
        raise CannotWork(
            f"none of the {logged_projects} projects the logs name exists in this database "
            "(wrong database, table or key column?)"
        )


async def _classify_all(
    db: Database,
    logged: dict[str, dict[SceneRef, SceneHistory]],
    shape: Shape,
    report: AuditReport,
) -> int:
    """Classify every logged URL of these projects; returns how many of them exist."""
    projects = sorted(logged)
    found = 0
    for start in range(0, len(projects), BATCH):
        batch = projects[start : start + BATCH]
        documents, failures = await db.read_many(batch)
        found += len(documents)
        for message in failures.values():
            report.errors.append(f"{message} (not audited)")
        for project in batch:
            if project not in failures:
                _classify(project, documents, logged[project], shape, report)
    return found


def _classify(
    project: str,
    documents: dict[str, str | None],
    logged: dict[SceneRef, SceneHistory],
    shape: Shape,
    report: AuditReport,
) -> None:
    diff = Diff()
    diff_project(project, documents, logged, shape, diff)
    _take(diff, report)


def _take(diff: Diff, report: AuditReport) -> None:
    """Add one diff's findings to the report."""
    report.lost += (Finding(*row) for row in diff.lost)
    report.stale += (Finding(*row) for row in diff.stale)
    report.orphaned += (Finding(*row) for row in diff.orphaned)
    report.present += diff.present
    report.represented |= diff.represented
    report.empty_scenes += diff.empty_scenes
    report.errors += diff.errors
