"""The fast path of `audit --log` (bulk_reader, workers, the quick log history and scene table)
finds exactly what the line-by-line reference finds: the same counts, examples and sightings
in the same order, and the same report, on logs made to hold everything a real month of logs
holds — rotated, gzipped, truncated, corrupt, non-UTF-8, CRLF, NUL bytes, imgsave's own records
among the app's, a line longer than any imgsave reads — for patterns with and without the
project and time groups, with --since and with named projects."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import json
import os
import random
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import re2  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from imgsave._demo.incident import APP_LOG_PATTERN
from imgsave.adapters.runlog import bulk_reader
from imgsave.adapters.runlog.bulk_reader import bucket, read_all, required_literal
from imgsave.adapters.runlog.reader import (
    MAX_LINE_BYTES,
    LogQuery,
    ReadStats,
    expand_paths,
    read_sightings,
)
from imgsave.adapters.runlog.workers import workers
from imgsave.core import log_history, url_rule
from imgsave.core.documents import MalformedDocument, SceneRef, Shape, decode, find, scenes
from imgsave.core.log_diff import scene_table
from imgsave.core.log_history import Sighting, history
from imgsave.errors import CannotWork
from imgsave.operations import lost_images

NO_PROJECT_PATTERN = r"\[Scene (?P<scene>\d+)\] Saved image to database: (?P<url>\S+)"
ID_RUN_PATTERN = (
    r"^(?P<ts>\S+) \[(?P<project>[^\]]+)\] \[Scene (?P<scene>\d+)\](?: id=(?P<scene_id>\S*))?"
    r"(?: run=(?P<run>\S*))? Saved image to database: (?P<url>\S+)"
)
START = datetime(2026, 11, 1, tzinfo=UTC)
PROJECTS = [f"p{n:03d}" for n in range(60)]


def _app_lines(count: int, seed: int, untimed: bool = True) -> Iterator[bytes]:
    """The app's console over a few days: mostly other lines; saves of two images per scene,
    some scenes regenerated a day later; and everything a log that nobody checks holds."""
    rng = random.Random(seed)
    when = START
    saved = "Saved image to database: "
    for n in range(count):
        when += timedelta(seconds=rng.choice((1, 2, 5, 60, 4000)))
        stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        project, scene = rng.choice(PROJECTS), rng.randint(1, 8)
        url = f"https://img.test/{project}/{scene}/{n}.png"
        roll = rng.random()
        # Bytes that are not UTF-8, NUL and non-ASCII text only in app.log.2: elsewhere whole
        # blocks are clean and take the fast loop, here they take the line-by-line path.
        if 0.84 <= roll < 0.88 and not count * 3 // 6 <= n < count * 4 // 6:
            roll = 0.5
        if roll < 0.35:
            yield f"{stamp} INFO GET /api/projects/{project} 200 {rng.randint(1, 900)}ms".encode()
        elif roll < 0.75:
            line = f"{stamp} [{project}] [Scene {scene}] Saved image to database: {url}"
            yield line.encode()
            if rng.random() < 0.8:  # the scene's second image, a moment later
                yield line.replace(f"/{n}.png", f"/{n}b.png").encode()
        elif roll < 0.78:
            # Another run's spelling of the time: none, epoch milliseconds, no zone, nonsense.
            times = [str(int(when.timestamp() * 1000)), stamp.rstrip("Z")]
            ts = rng.choice(times + (["", "yesterday"] if untimed else []))
            yield f"{ts} [{project}] [Scene {scene}] Saved image to database: {url}".encode()
        elif roll < 0.80:
            ident = rng.choice(["", f"scene-{scene}"])
            run = rng.choice(["", "r1", "r2"])
            yield (
                f"{stamp} [{project}] [Scene {scene}] id={ident} run={run} "
                f"Saved image to database: {url}"
            ).encode()
        elif roll < 0.82:
            bad = rng.choice(
                ["javascript:alert(1)", "http://img.test/plain.png", "https://x.test/a b", ""]
            )
            yield f"{stamp} [{project}] [Scene {scene}] Saved image to database: {bad}".encode()
        elif roll < 0.84:
            number = rng.choice(["0", "-1", "\u0663"])
            yield f"{stamp} [{project}] [Scene {number}] {saved}{url}".encode()
        elif roll < 0.86:
            yield (
                b"\xff\xfe "
                + f"[{project}] [Scene {scene}] Saved image to database: {url}".encode()
            )
        elif roll < 0.87:
            yield f"{stamp} [{project}] [Scene {scene}] {saved}{url}\x00x".encode()
        elif roll < 0.88:
            yield f"{stamp} [proj\u00e9 {project}] [Scene {scene}] {saved}{url}".encode()
        elif roll < 0.90:
            yield f"{stamp} [{project}] [Scene {scene}] Saved image to database: {url}\r".encode()
        elif roll < 0.95:
            yield json.dumps(_own_record(rng, stamp, project, scene, url)).encode()
        elif roll < 0.96:
            yield b'{"v":1,"event":"image.generated","project":'  # imgsave's, cut by a crash
        else:
            yield b""


def _own_record(rng: random.Random, stamp: str, project: str, scene: int, url: str) -> dict:
    event = rng.choice(
        [
            "image.generated",
            "image.saved",
            "image.requested",
            "batch.submitting",
            "batch.submitted",
            "batch.collected",
            "run.started",
        ]
    )
    record: dict[str, Any] = {"v": 1, "ts": stamp, "run": f"run-{scene % 3}", "event": event}
    record |= {"project": project, "scene": scene, "scene_id": f"scene-{scene}", "url": url}
    record |= {"ledger": rng.randint(1, 10**6)}
    if rng.random() < 0.5:  # this database's records, or another's (staging and prod)
        record["db"] = rng.choice(["5c0ffee0", "0ther"])
    if rng.random() < 0.1:
        record["replaces"] = [url.replace(".png", "-old.png")]
    return record


def write_logs(
    folder: Path, lines: int = 20_000, seed: int = 29, untimed: bool = True
) -> list[Path]:
    """app.log … app.log.5.gz: rotated, the older ones gzipped; the newest ends in a line cut
    short, one holds CRLF lines and a line longer than MAX_LINE_BYTES, one gzip is cut short
    and one is corrupt."""
    every = list(_app_lines(lines, seed, untimed))
    per = len(every) // 6
    chunks = [every[n * per : (n + 1) * per] for n in range(6)]
    chunks[-1] = every[5 * per :]
    paths = []
    for age, chunk in enumerate(reversed(chunks)):
        name = "app.log" if age == 0 else f"app.log.{age}"
        data = b"\n".join(chunk) + b"\n"
        if age == 0:  # the app was writing its last line
            data += b"2026-11-30T00:00:00Z [p001] [Scene 1] Saved image to database: https://i"
        if age == 1:
            middle = data.index(b"\n", len(data) // 2) + 1
            data = data[:middle] + b"x" * (MAX_LINE_BYTES + 10) + b"\r\n" + data[middle:]
            data = data.replace(b"\n", b"\r\n", 500)
        path = folder / name
        if age >= 3:
            path = folder / f"{name}.gz"
            packed = gzip.compress(data)
            if age == 4:
                packed = packed[: len(packed) * 3 // 5]  # cut short
            if age == 5:
                packed = packed[:200] + bytes(b ^ 0x55 for b in packed[200:260]) + packed[260:]
            path.write_bytes(packed)
        else:
            path.write_bytes(data)
        paths.append(path)
    return paths


QUERIES = {
    "app": LogQuery(pattern=APP_LOG_PATTERN),
    "no project, no time": LogQuery(pattern=NO_PROJECT_PATTERN, project="p007"),
    "ids and runs": LogQuery(pattern=ID_RUN_PATTERN),
    "since": LogQuery(pattern=APP_LOG_PATTERN, since=START + timedelta(days=3)),
    "named projects": LogQuery(
        pattern=APP_LOG_PATTERN, only_projects=frozenset({"p001", "p002", "p050"})
    ),
    "http allowed": LogQuery(pattern=APP_LOG_PATTERN, allow_http=True),
    "own records only": LogQuery(),
    "this database's": LogQuery(pattern=APP_LOG_PATTERN, own_db="5c0ffee0"),
}


def _plain(files: list[Path], query: LogQuery, partitions: int) -> tuple[ReadStats, dict]:
    stats = ReadStats()
    parts: dict[int, list[Sighting]] = {}
    for sighting in read_sightings(files, query, stats):
        parts.setdefault(bucket(sighting.project, partitions), []).append(sighting)
    return stats, parts


def _bulk(
    files: list[Path], query: LogQuery, partitions: int, folder: Path, processes: int, **kw: Any
) -> tuple[ReadStats, dict]:
    async def read() -> bulk_reader.Reading:
        async with workers(processes) as pool:
            return await read_all(
                files, query, stats, partitions=partitions, folder=str(folder), workers=pool, **kw
            )

    stats = ReadStats()
    reading = asyncio.run(read())
    parts = {
        n: [s for path in paths for s in log_history.load(path)]
        for n, paths in enumerate(reading.parts)
        if paths
    }
    return stats, parts


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("logs")
    write_logs(folder)
    return expand_paths([str(folder)])


@pytest.mark.parametrize("name", QUERIES)
def test_the_bulk_reader_reads_what_the_reference_reads(logs, name, tmp_path):
    query = QUERIES[name]
    plain_stats, plain_parts = _plain(logs, query, 3)
    assert plain_stats.lines > 20_000 and plain_stats.sightings > 50
    if query.pattern:
        # Every kind of line is there to be read.
        assert plain_stats.undecodable and plain_stats.invalid and plain_stats.too_long
        assert plain_stats.unmatched and plain_stats.garbage and plain_stats.refused
        assert len(plain_stats.truncated_files) >= 3
    # In this process, one task per file; and in two worker processes, plain files cut into
    # ranges of 64 kB (lines are numbered across ranges, examples name the right line).
    for folder, processes, kw in (
        (tmp_path / "local", 1, {}),
        (tmp_path / "workers", 2, {"range_bytes": 64 << 10}),
    ):
        folder.mkdir()
        stats, parts = _bulk(logs, query, 3, folder, processes, **kw)
        assert dataclasses.asdict(stats) == dataclasses.asdict(plain_stats)
        assert parts == plain_parts


def test_a_file_that_fails_midway_is_read_up_to_the_failure_in_every_range(tmp_path):
    """A read error ends the file there, line by line; the bulk reader's later ranges of the
    same file must not add what the reference never read."""
    path = tmp_path / "app.log"
    path.write_bytes(b"".join(f"{n}\n".encode() for n in range(50_000)))
    tasks = bulk_reader.plan([path], range_bytes=100_000)
    assert len(tasks) == 3
    results = [bulk_reader.TaskResult(ReadStats(lines=10, unmatched=10), 10) for _ in tasks]
    results[1].error = "Input/output error"
    stats = ReadStats()
    assert bulk_reader.merge(results, tasks, stats) == [0, 1]
    assert stats.lines == 20 and stats.truncated_files == [f"{path} (Input/output error)"]


_piece = st.tuples(
    st.sampled_from(["a", "b", " ", ":", "[", "]", "\\[", "x", "(a)", "[ab]", "."]),
    st.sampled_from(["", "", "", "*", "+", "?", "{2}"]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_piece, max_size=8), st.text(alphabet="ab :[]xy", max_size=30))
def test_a_line_without_the_patterns_literal_never_matches(pieces, line):
    pattern = "".join(char + quantifier for char, quantifier in pieces)
    options = re2.Options()
    options.log_errors = False
    try:
        regex = re2.compile(pattern, options)
    except re2.error:
        return
    literal = required_literal(pattern)
    if literal is not None and regex.search(line):
        assert literal.decode() in line, (pattern, line, literal)


def test_the_literal_is_the_longest_plain_run():
    assert required_literal(APP_LOG_PATTERN) == b"] Saved image to database: "
    assert required_literal(r"(?i)Saved image") is None
    assert required_literal(r"Saved|Stored") is None
    assert required_literal(r"abc?d") == b"ab"
    assert required_literal(r"\d+ items") == b" items"
    assert required_literal(r"[Saved] x") == b" x"


_times = st.one_of(st.none(), st.floats(0, 10_000, allow_nan=False))
_sighting = st.builds(
    lambda url, run, ts, replacing, replaces, scene_id, copy: (
        "p",
        1,
        scene_id,
        url,
        run,
        ts,
        replacing,
        tuple(replaces),
        copy,
    ),
    st.sampled_from(["u1", "u2", "u3", "u4"]),
    st.one_of(st.none(), st.sampled_from(["", "r1", "r2"])),
    _times,
    st.booleans(),
    st.lists(st.sampled_from(["u1", "u2", "u5"]), max_size=2),
    st.one_of(st.none(), st.sampled_from(["", "s1", "s2"])),
    st.booleans(),
)


# Most scenes of a real log: another system's lines (replacing, no run id) or imgsave's own,
# close together or far apart; the quick path's edges (one run or two) are what is tested.
_everyday = st.builds(
    lambda url, ts, own, scene_id: (
        "p",
        1,
        scene_id,
        url,
        "r" if own else None,
        ts,
        not own,
        (),
        False,
    ),
    st.sampled_from(["u1", "u2", "u3"]),
    st.one_of(st.just(None), st.sampled_from([0.0, 1799.0, 1800.0, 1801.0, 3000.0])),
    st.booleans(),
    st.sampled_from([None, None, "s1"]),
)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.lists(_sighting, min_size=1, max_size=6), st.lists(_everyday, min_size=1, max_size=5)
    ),
    st.sampled_from([0.0, 100.0, 1800.0]),
)
def test_the_quick_history_is_the_history(items, gap):
    built = log_history.build(items, gap)
    ((ref, got),) = built["p"].items()
    want = history([Sighting._make(i) for i in items], gap)
    assert (got.urls, got.partners, got.copied) == (want.urls, want.partners, want.copied)
    assert list(got.urls) == list(want.urls)
    ids = [
        (i[5] if i[5] is not None else float("-inf"), n, i[2]) for n, i in enumerate(items) if i[2]
    ]
    assert ref == SceneRef(1, max(ids)[2] if ids else None)


_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 4),
    st.just(2**70),
    st.just(1.0),
    st.sampled_from(["s1", "s2", "", "https://a.test/1", "https://a.test/2"]),
)
_scene = st.one_of(
    st.dictionaries(
        st.sampled_from(["id", "index", "imageUrls", "imagePrompt", "prompt"]),
        st.one_of(_value, st.lists(_value, max_size=3)),
        max_size=5,
    ),
    _value,
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.lists(_scene, max_size=5), _value), st.booleans(), st.booleans())
def test_the_scene_table_reads_documents_as_documents_does(raw_scenes, double, nan):
    document: Any = {"title": "t", "scenes": raw_scenes}
    text = json.dumps(document)
    if nan:
        text = text.replace('"title": "t"', '"title": NaN')
    if double:
        text = json.dumps(text)
    shape = Shape()
    try:
        want = scenes(decode(text, project="p"), shape, project="p")
    except MalformedDocument as exc:
        with pytest.raises(MalformedDocument, match=re.escape(str(exc))):
            scene_table(text, shape, project="p")
        return
    table = scene_table(text, shape, project="p")
    assert len(table.indexes) == len(want)
    for scene in want:
        for ref in (SceneRef(scene.ref.index), SceneRef(0, scene.ref.id)):
            expected = find(want, ref)
            position = table.find(ref)
            assert (position is None) == (expected is None)
            if expected is not None and position is not None:
                assert table.ref(position) == expected.ref
                assert table.urls(position) == set(expected.urls)
                assert table.prompt(position) == expected.prompt


# The report, end to end: the documents in PostgreSQL, the CLI, the bulk path in worker
# processes against the reference.


def _held_everything_logged(rows, logs: list[Path]) -> None:
    """Put most logged URLs in their scenes, so that present, lost and stale all occur."""
    rng = random.Random(5)
    logged: dict[tuple[str, int], list[str]] = {}
    stats = ReadStats()
    for s in read_sightings(logs, LogQuery(pattern=APP_LOG_PATTERN), stats):
        logged.setdefault((s.project, s.scene), []).append(s.url)
    for project in PROJECTS[:-3]:
        doc_scenes = [
            {
                "id": f"scene-{scene}",
                "index": scene,
                "imagePrompt": "p",
                "imageUrls": [u for u in logged.get((project, scene), []) if rng.random() < 0.9],
            }
            for scene in range(1, 8)
        ]
        doc_scenes.append({"id": "scene-9", "index": 9, "imagePrompt": "empty", "imageUrls": []})
        rows.put(project, {"scenes": doc_scenes})


@pytest.mark.parametrize(
    "args",
    [
        ["--pattern", APP_LOG_PATTERN],
        ["--pattern", NO_PROJECT_PATTERN, "--project", "p007"],
        ["--pattern", APP_LOG_PATTERN, "--since", "2026-11-04T00:00:00Z"],
        ["--pattern", APP_LOG_PATTERN, "p001", "p002", "p058", "p100"],
    ],
    ids=["project and time", "no project or time", "since", "named projects"],
)
def test_audit_reports_the_same_through_the_fast_path(cli, rows, tmp_path, monkeypatch, args):
    folder = tmp_path / "logs"
    folder.mkdir()
    logs = write_logs(folder, untimed="--since" not in args)
    _held_everything_logged(rows, logs)
    command = ["audit", "--log", str(folder), *args, "--json"]
    monkeypatch.setattr(lost_images, "BULK", False)
    plain = cli(*command)
    monkeypatch.setattr(lost_images, "BULK", True)
    monkeypatch.setattr(lost_images, "PROCESS_BYTES", 0)  # worker processes, however small
    monkeypatch.setattr(lost_images, "cores", lambda: 2)
    bulk = cli(*command)
    assert plain.code in (1, 3) and (bulk.code, bulk.stdout) == (plain.code, plain.stdout)
    report = plain.json()
    if "--since" not in args and "p001" not in args:
        summary = report["summary"]
        assert summary["lost"] and summary["present"] and summary["orphaned"]
        assert summary["lines_skipped"]


def test_imgsave_batch_and_job_records_are_its_own_not_garbage(cli, rows, log_dir):
    """Issue 27 item 6: batch.submitting, batch.submitted, batch.collected and image.requested
    are imgsave's records, read as such; and records carrying keys beyond the contract's (the
    database identity `db`, a `ledger` row id) are still read."""
    rows.put("p1", {"scenes": [{"id": "scene-1", "index": 1, "imageUrls": []}]})
    stamp = "2026-11-20T10:00:00.000Z"
    records = [
        {"event": "run.started", "plan": []},
        {"event": "batch.submitting", "input_file_id": "file-1", "images": {}},
        {"event": "batch.submitted", "batch": "batch_1", "input_file_id": "file-1", "db": "x"},
        {"event": "image.requested", "job": "j1", "kind": "replicate", "project": "p1", "scene": 1},
        {
            "event": "image.generated",
            "project": "p1",
            "scene": 1,
            "scene_id": "scene-1",
            "url": "https://img.test/a.png",
            "ledger": 12,
        },
        {"event": "batch.collected", "batch": "batch_1", "status": "completed", "saved": 0},
    ]
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "run-1.jsonl").write_text(
        "".join(json.dumps({"v": 1, "ts": stamp, "run": "r1", **r}) + "\n" for r in records)
    )
    report = cli("audit", "--log", str(log_dir), "--json").json()
    assert report["summary"]["lines_skipped"] == 0
    assert report["skipped"]["garbage"] == 0
    assert [f["url"] for f in report["lost"]] == ["https://img.test/a.png"]


_URL_PIECES = st.sampled_from(
    [*"ab.-:/?#[]@!$&'()*+,;=%~_\"<> \\\u00e9\u202e", "2F", "x.test", "//", "http", "https://"]
)


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from(["https://", "http://", "ftp://", "https:/", ""]),
    st.lists(_URL_PIECES, max_size=12),
    st.booleans(),
)
def test_what_the_byte_test_of_everyday_urls_accepts_the_url_rule_accepts(scheme, parts, http):
    url = scheme + "".join(parts)
    if url_rule.everyday_bytes(http)(url.encode()):
        assert url_rule.url_problem(url, allow_http=http) is None, url
    # And the everyday shapes are taken by it.
    assert url_rule.everyday_bytes(http)(b"https://cdn.app.test/p/scene-1/0-ab12.png")


def test_a_worker_that_fails_is_a_clear_error_and_no_process_is_left():
    """A worker's failure is CannotWork (exit 3, one line), not a traceback; every worker is
    stopped however the audit ends."""

    async def run() -> list[int]:
        async with workers(2) as pool:
            pids = [w._proc.pid for w in pool]  # type: ignore[attr-defined]
            with pytest.raises(CannotWork, match="an audit worker process failed: ValueError"):
                await pool[0].ask(("no such message",))
            assert await pool[1].ask(("build", [], {}, 60.0)) == []
        return pids

    for pid in asyncio.run(run()):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
