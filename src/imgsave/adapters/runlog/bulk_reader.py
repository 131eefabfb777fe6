"""Reading logs at the speed of the disk: what `reader.read_sightings` finds, found faster.

A month of an app's logs is a million lines; read line by line as text they took half a minute.
Here each file (or each range of a large plain file) is a task, parsed by worker processes (one
per core) as bytes in blocks of a megabyte: the block is checked for UTF-8 once, split once, and
only lines holding the pattern's literal text (its longest run of plain characters, "Saved image
to database: ") are matched, with RE2 called on the bytes directly. Whatever is unusual (a block
that is not UTF-8 or holds a NUL, imgsave's own JSON lines, a line cut short) takes the reference
path line by line (`reader.line_verdict`). Sightings are spilled to partition files by project,
as `core.log_history.spilled` does, so memory does not grow with the logs.

Every count, example and sighting is the reference's; `tests/test_bulk_reader.py` holds it to
that. Sightings keep file and line order within each partition (the order the log history
reads them in).
"""

from __future__ import annotations

import asyncio
import gzip
import marshal
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol, cast

from imgsave.adapters.runlog.reader import (
    MAX_LINE_BYTES,
    OWN_PREFIX,
    UNREADABLE,
    LogQuery,
    Matcher,
    ReadStats,
    accepted,
    compile_pattern,
    line_verdict,
    parse_timestamp,
)
from imgsave.core.log_history import Sighting
from imgsave.core.url_rule import everyday_bytes, url_problem

BLOCK = MAX_LINE_BYTES  # a whole line longer than this starts in the block before (see _blocks)
# A plain file larger than this is cut into ranges of about this size, so that one big file
# keeps every core busy.
RANGE_BYTES = 16 << 20
_OWN = OWN_PREFIX.encode()
# Sightings a task holds per partition before writing them (a worker holds partitions times this).
SPILL_CHUNK = 512
fromisoformat = datetime.fromisoformat


@dataclass(frozen=True)
class Task:
    """Lines of one file whose first byte lies in [start, end) (end None: to the end)."""

    file: int
    path: str
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class Setup:
    """What every task needs, sent once to each worker."""

    pattern: str | None
    project: str | None
    since: float | None
    allow_http: bool
    only_projects: frozenset[str]
    partitions: int
    folder: str
    own_db: str | None = None


@dataclass
class TaskResult:
    # Counts; its example lists name lines by their number within the task ("12: reason").
    stats: ReadStats
    numbered: int = 0  # lines numbered in this task (the next task of its file counts on)
    error: str | None = None  # why the read stopped early (a gzip cut short…)
    spilled: list[bool] = field(default_factory=list)  # per partition: a file was written
    projects: set[str] = field(default_factory=set)


def plan(files: Sequence[Path], range_bytes: int = RANGE_BYTES) -> list[Task]:
    """The tasks, in file and line order."""
    tasks: list[Task] = []
    for number, path in enumerate(files):
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if path.suffix == ".gz" or size <= range_bytes:
            tasks.append(Task(number, str(path)))
            continue
        cuts = list(range(0, size, range_bytes))
        tasks += [
            Task(number, str(path), start, start + range_bytes if start != cuts[-1] else None)
            for start in cuts
        ]
    return tasks


def bucket(project: str, partitions: int) -> int:
    """The partition of a project's lines. Case is folded so that the spellings of one uuid
    key share a partition (keys are normalised after the split); `Reading.projects` lets the
    caller see another spelling (braces, leading zeros) that falls elsewhere."""
    return zlib.crc32(project.lower().encode("utf-8", "surrogatepass")) % partitions


def spill_name(folder: str, task: int, partition: int) -> Path:
    return Path(folder) / f"t{task:05d}-p{partition:03d}.bin"


def merge(results: Sequence[TaskResult], tasks: Sequence[Task], stats: ReadStats) -> list[int]:
    """Add the tasks' counts and examples to `stats`, naming lines by file and number; return
    the tasks whose sightings count: a read that failed ends its file there, as it does line
    by line, so the later ranges of that file are left out."""
    offsets: dict[int, int] = {}
    failed: set[int] = set()
    counted: list[int] = []
    for index, (task, result) in enumerate(zip(tasks, results, strict=True)):
        if task.file in failed:
            continue
        counted.append(index)
        offset = offsets.get(task.file, 0)
        offsets[task.file] = offset + result.numbered
        part = result.stats
        place = _placer(task.path, offset)
        part.truncated_files = [place(e) for e in part.truncated_files]
        part.refused_examples = [place(e) for e in part.refused_examples]
        part.invalid_examples = [place(e) for e in part.invalid_examples]
        if result.error is not None:
            part.truncated_files.append(f"{task.path} ({result.error})")
            failed.add(task.file)
        stats.add(part)
    return counted


def _placer(path: str, offset: int) -> Any:
    def place(entry: str) -> str:
        number, colon, rest = entry.partition(":")
        return f"{path}:{int(number) + offset}{colon}{rest}"

    return place


def required_literal(pattern: str) -> bytes | None:
    """The longest run of plain characters every match of `pattern` contains, or None.

    Conservative on purpose: only characters outside every group and class, not followed by a
    quantifier, in a pattern without a top-level `|` or inline flags (`(?i)` would make "Saved"
    match "SAVED"). A line without it cannot match, so it is counted as unmatched unread.
    """
    runs: list[str] = []
    run: list[str] = []
    depth, i = 0, 0
    while i < len(pattern):
        try:
            char, i, depth = _token(pattern, i, depth)
        except _NoLiteral:
            return None
        if char is not None and pattern[i : i + 1] not in ("*", "+", "?", "{"):
            run.append(char)
        elif run:  # not plain, or quantified: not required as written
            runs.append("".join(run))
            run.clear()
    if run:
        runs.append("".join(run))
    best = max(runs, key=len, default="")
    return best.encode() if best else None


class _NoLiteral(Exception):
    """The pattern may match without any run of its plain text (a `|`, inline flags)."""


def _token(pattern: str, i: int, depth: int) -> tuple[str | None, int, int]:
    """The token at `pattern[i]`: the plain character it stands for (None: it is not one, at
    the top level), where the next begins, and the group depth after it."""
    ch = pattern[i]
    if ch == "\\":
        nxt = pattern[i + 1 : i + 2]
        plain = depth == 0 and nxt and not nxt.isalnum() and nxt.isascii()
        return (nxt if plain else None), i + 2, depth  # \d, \S, \x41, \Q…: not plain
    if ch == "[":
        return None, _class_end(pattern, i), depth
    if ch == "(":
        if pattern.startswith("(?", i) and not pattern.startswith(("(?P<", "(?:"), i):
            raise _NoLiteral  # inline flags (or syntax RE2 refuses anyway)
        return None, i + 1, depth + 1
    if ch == ")":
        if depth == 0:
            raise _NoLiteral
        return None, i + 1, depth - 1
    if ch == "|" and depth == 0:
        raise _NoLiteral
    if depth or ch in ".^$*+?{}|]":
        # A repetition's count is not text to find ("{2}"); a "{" that is not one is
        # text, but left out all the same.
        end = pattern.find("}", i) if ch == "{" else -1
        return None, end + 1 if end > 0 else i + 1, depth
    return ch, i + 1, depth


def _class_end(pattern: str, i: int) -> int:
    """The index after the character class that starts at pattern[i] (`[`)."""
    j = i + 1
    if pattern[j : j + 1] == "^":
        j += 1
    if pattern[j : j + 1] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


class _Regexp(Protocol):
    def Match(
        self, anchor: object, text: bytes, pos: int, endpos: int
    ) -> list[tuple[int, int]]: ...

    def NamedCapturingGroups(self) -> list[tuple[bytes, int]]: ...


def _bytes_regex(pattern: str) -> tuple[_Regexp, object]:
    """The pattern compiled by RE2 for matching bytes, and the anchor of a search.

    The same engine and options as `reader.compile_pattern` (UTF-8, which the bytes are, as
    checked), called without the wrapper that turns every match into str offsets: that
    wrapper cost twice the match itself.
    """
    import re2  # type: ignore[import-untyped]
    from re2 import _re2

    options = re2.Options()
    options.log_errors = False
    return cast(_Regexp, _re2.RE2(pattern.encode(), options)), _re2.RE2.Anchor.UNANCHORED


class _Parser:
    """Parses the tasks of one worker; holds the compiled pattern and the output files."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.query = LogQuery(
            pattern=setup.pattern,
            project=setup.project,
            allow_http=setup.allow_http,
            only_projects=setup.only_projects,
            own_db=setup.own_db,
        )
        self.matcher: Matcher | None = None
        self.regex: _Regexp | None = None
        self.literal: bytes | None = None
        self.groups: dict[str, int] = {}
        if setup.pattern is not None:
            self.matcher = compile_pattern(setup.pattern, setup.project)
            self.regex, self.anchor = _bytes_regex(setup.pattern)
            self.groups = {name.decode(): n for name, n in self.regex.NamedCapturingGroups()}
            self.literal = required_literal(setup.pattern)
        # A --project no document key can hold (NUL, a lone surrogate) makes every line that
        # uses it invalid: the reference path says so line by line.
        self.fast = self.regex is not None and _storable(setup.project or "")

    def run(self, index: int, tasks: Sequence[Task]) -> list[TaskResult]:
        """A group of tasks (`index` is its first's), each with its own counts, their
        sightings in one spill (the first result names its files)."""
        results = [TaskResult(ReadStats()) for _ in tasks]
        results[0].spilled = [False] * self.setup.partitions
        out = _Spill(self.setup, index, results[0])
        try:
            for task, result in zip(tasks, results, strict=True):
                for block, complete in _blocks(task, result):
                    text = _clean(block) if complete and self.fast else None
                    if text is not None:
                        self._fast_block(block, text, result, out)
                    else:
                        self._each_line(block, complete, result, out)
        finally:
            out.close()
        return results

    def _each_line(self, block: bytes, complete: bool, result: TaskResult, out: _Spill) -> None:
        """The reference path, line by line."""
        stats, query, since = result.stats, self.query, self.setup.since
        raws = block.split(b"\n")
        if complete:
            raws.pop()
        for raw in raws:
            stats.lines += 1
            result.numbered += 1
            try:
                line = raw.rstrip(b"\r\n").decode("utf-8")
            except UnicodeDecodeError:
                stats.undecodable += 1
                continue
            where = str(result.numbered)
            parsed = line_verdict(
                line, complete, where, regex=self.matcher, query=query, stats=stats
            )
            if parsed is not None and accepted(parsed, where, query, since, stats):
                out.add(parsed)

    # Over the ceilings on purpose: the audit's hot loop (scripts/bench.py audit), one pass
    # over a block's lines with every name local; split up, it would pay calls on every line.
    def _fast_block(  # noqa: C901, PLR0912, PLR0915
        self, block: bytes, text: str, result: TaskResult, out: _Spill
    ) -> None:
        """A block of whole lines, valid UTF-8 (`text`) without a NUL, read against the
        pattern. The hot loop of a big audit: every name is local, and in an ASCII block
        (most logs) RE2's byte offsets are the text's, so values are sliced from `text`."""
        regex, anchor, literal = cast(_Regexp, self.regex), self.anchor, self.literal
        match = regex.Match
        groups = self.groups
        g_scene, g_url = groups["scene"], groups["url"]
        g_project, g_ts = groups.get("project"), groups.get("ts")
        g_id, g_run = groups.get("scene_id"), groups.get("run")
        setup, stats = self.setup, result.stats
        default_project, only, allow_http = setup.project, setup.only_projects, setup.allow_http
        plain_url = everyday_bytes(allow_http)
        since, oldest = setup.since, stats.oldest
        own_here = block.startswith(_OWN) or b"\n" + _OWN in block
        lines = block.split(b"\n")
        lines.pop()
        texts = text.split("\n") if block.isascii() else None
        first = result.numbered
        stats.lines += len(lines)
        result.numbered += len(lines)
        unmatched = matched = garbage = untimed = before = taken = own = 0
        crlf = b"\r" in block
        buckets, buffers, partitions, flush = out.buckets, out.buffers, out.partitions, out.flush
        for n, line in enumerate(lines):
            if own_here and line.startswith(_OWN):
                self._own_line(line, first + n + 1, result, out)
                own += 1
                continue
            if literal is not None and literal not in line:
                unmatched += 1
                continue
            if crlf and line.endswith(b"\r"):
                line = line.rstrip(b"\r")
            spans = match(anchor, line, 0, len(line))
            if spans[0][0] < 0:
                unmatched += 1
                continue
            matched += 1
            # The groups' values, None where a group took no part in the match. In ASCII
            # the byte offsets RE2 gives are the text's.
            if texts is not None or line.isascii():
                src = texts[n] if texts is not None else line.decode()
                a, b = spans[g_scene]
                scene_text = src[a:b] if a >= 0 else None
                project = None
                if g_project is not None:
                    a, b = spans[g_project]
                    project = src[a:b] if a >= 0 else None
                ts_text = None
                if g_ts is not None:
                    a, b = spans[g_ts]
                    ts_text = src[a:b] if a >= 0 else None
                a, b = spans[g_url]
                url = src[a:b] if a >= 0 else None
                values = None
            else:
                values = [line[a:b].decode() if a >= 0 else None for a, b in spans]
                scene_text, url = values[g_scene], values[g_url]
                project = values[g_project] if g_project is not None else None
                ts_text = values[g_ts] if g_ts is not None else None
            try:
                scene = int(scene_text or "")
            except ValueError:
                garbage += 1
                continue
            if scene < 1:
                garbage += 1
                continue
            project = project or default_project
            if not project:
                garbage += 1
                continue
            ts = None
            if ts_text:
                # parse_timestamp, inline for ISO times (a "-" at [4] is never an epoch's).
                iso = ts_text.strip()
                if iso[4:5] == "-":
                    try:
                        when = fromisoformat(iso)
                        ts = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
                    except (ValueError, OverflowError):
                        ts = None
                else:
                    ts = parse_timestamp(ts_text)
            url = url or ""
            # reader.accepted, inline: the same rules in the same order.
            if only and project not in only:
                continue
            a, b = spans[g_url]
            if not (a >= 0 and plain_url(line[a:b])):
                problem = url_problem(url, allow_http=allow_http)
                if problem:
                    stats.refused += 1
                    if len(stats.refused_examples) < 5:
                        stats.refused_examples.append(f"{first + n + 1}: {problem}")
                    continue
            if ts is None:
                untimed += 1
            elif since is not None and ts < since:
                before += 1
                continue
            elif oldest is None or ts < oldest:
                oldest = ts
            taken += 1
            scene_id = run = None
            if g_id is not None or g_run is not None:
                scene_id, run = self._id_and_run(line, spans, values)
            known = buckets.get(project)
            if known is None:
                known = buckets[project] = (bucket(project, partitions), project)
            part, project = known  # one str per project, shared by its records
            buffer = buffers[part]
            buffer.append((project, scene, scene_id, url, run, ts, True, (), False))
            if len(buffer) >= SPILL_CHUNK:
                flush(part)
        stats.pattern_lines += len(lines) - own
        stats.unmatched += unmatched
        stats.matched += matched
        stats.garbage += garbage
        stats.untimed += untimed
        stats.before_since += before
        stats.sightings += taken
        if oldest is not None and (stats.oldest is None or oldest < stats.oldest):
            stats.oldest = oldest

    def _id_and_run(
        self, line: bytes, spans: list[tuple[int, int]], values: list[str | None] | None
    ) -> tuple[str | None, str | None]:
        found: list[str | None] = []
        for name in ("scene_id", "run"):
            group = self.groups.get(name)
            if group is None:
                found.append(None)
            elif values is not None:
                found.append(values[group])
            else:
                a, b = spans[group]
                found.append(line[a:b].decode() if a >= 0 else None)
        return found[0], found[1]

    def _own_line(self, line: bytes, number: int, result: TaskResult, out: _Spill) -> None:
        stats = result.stats
        where = str(number)
        parsed = line_verdict(
            line.rstrip(b"\r").decode(), True, where, regex=self.matcher, query=self.query,
            stats=stats,
        )  # fmt: skip
        if parsed is not None and accepted(parsed, where, self.query, self.setup.since, stats):
            out.add(parsed)


def _storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _clean(block: bytes) -> str | None:
    """The block's text when it is valid UTF-8 without a NUL (no line of it is undecodable,
    and no value taken from it can hold a character no database key or document can)."""
    if b"\x00" in block:
        return None
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return None


class _Spill:
    """A task's sightings, by partition, in marshal chunks (see log_history.spilled)."""

    def __init__(self, setup: Setup, task: int, result: TaskResult) -> None:
        self.setup, self.task, self.result = setup, task, result
        self.partitions = setup.partitions
        self.buffers: list[list[tuple[Any, ...]]] = [[] for _ in range(self.partitions)]
        self.handles: dict[int, BinaryIO] = {}
        # project -> its partition, and the one str its records share
        self.buckets: dict[str, tuple[int, str]] = {}

    def add(self, sighting: Sighting) -> None:
        project = sighting.project
        known = self.buckets.get(project)
        if known is None:
            known = self.buckets[project] = (bucket(project, self.partitions), project)
        part, project = known
        buffer = self.buffers[part]
        buffer.append((project, *sighting[1:]))
        if len(buffer) >= SPILL_CHUNK:
            self.flush(part)

    def flush(self, part: int) -> None:
        buffer = self.buffers[part]
        if not buffer:
            return
        handle = self.handles.get(part)
        if handle is None:
            handle = self.handles[part] = spill_name(self.setup.folder, self.task, part).open("wb")
            self.result.spilled[part] = True
        data = marshal.dumps(buffer)
        handle.write(len(data).to_bytes(8, "little") + data)
        buffer.clear()

    def close(self) -> None:
        try:
            for part in range(self.partitions):
                self.flush(part)
        finally:
            for handle in self.handles.values():
                handle.close()
        self.result.projects = set(self.buckets)


def _blocks(task: Task, result: TaskResult) -> Iterator[tuple[bytes, bool]]:
    """Blocks of whole lines of the task's range, each line ending with a newline (True), and
    a last line without one (False), exactly as `reader._lines` reads them: a line longer
    than MAX_LINE_BYTES is counted (lines, too_long) and dropped; a read that fails ends the
    task with `result.error` (what was read counts, a line it cut is dropped)."""
    stats = result.stats
    end = task.end
    skipping = task.start > 0  # the line that began before the range is the previous task's
    base = task.start - 1 if skipping else 0  # the offset of carry[0] in the file
    carry = b""
    try:
        for data in _chunks(task, base):
            if skipping:
                nl = data.find(b"\n")
                if nl < 0:
                    base += len(data)
                    continue
                skipping = False
                base += nl + 1
                data = data[nl + 1 :]
                if end is not None and base >= end:
                    return
            buf = carry + data if carry else data
            last = buf.rfind(b"\n")
            if last < 0:
                carry = buf
                if len(carry) > MAX_LINE_BYTES:
                    stats.lines += 1
                    stats.too_long += 1
                    base, carry, skipping = base + len(carry), b"", True
                continue
            block, carry = buf[: last + 1], buf[last + 1 :]
            block, dropped = _without_long_first_line(block, stats)
            base += dropped
            if dropped and end is not None and base >= end:
                return
            piece, ends = _clipped(block, base, end)
            if piece:
                yield piece, True
            if ends:
                return
            base += len(block)
        if carry and not skipping:
            yield carry, False
    except UNREADABLE as exc:
        result.error = str(exc)


def _without_long_first_line(block: bytes, stats: ReadStats) -> tuple[bytes, int]:
    """`block` less its first line where that is longer than MAX_LINE_BYTES (counted: lines,
    too_long), and how many bytes went. Only a block's first line can be that long (BLOCK)."""
    first_nl = block.find(b"\n")
    if first_nl <= MAX_LINE_BYTES:
        return block, 0
    stats.lines += 1
    stats.too_long += 1
    return block[first_nl + 1 :], first_nl + 1


def _clipped(block: bytes, base: int, end: int | None) -> tuple[bytes, bool]:
    """`block` (whole lines, from offset `base`) up to the line the task's range ends in, and
    whether it ends there (the range's last line is the task's, read to its newline)."""
    if end is not None and base + len(block) > end:
        return block[: block.find(b"\n", end - 1 - base) + 1], True
    return block, end is not None and base + len(block) >= end


def _chunks(task: Task, offset: int) -> Iterator[bytes]:
    if Path(task.path).suffix == ".gz":
        with gzip.open(task.path, "rb") as handle:
            # read1: what one read of the compressed file gives, so that a stream cut short
            # loses nothing that was decompressed before the cut (as readline does not).
            while data := handle.read1(BLOCK):
                yield data
        return
    with open(task.path, "rb") as handle:
        handle.seek(offset)
        while data := handle.read(BLOCK):
            yield data


# Below this much log text (gzip counted as what it holds) the tasks run in this process:
# starting the workers (some 0.1 s each) would cost more than it saves.
PROCESS_BYTES = 32 << 20
GZIP_RATIO = 8


@dataclass
class Reading:
    """What the tasks read: per partition, its spill files in file and line order; and the
    project names the sightings carry, as written in the logs."""

    parts: list[list[Path]]
    projects: set[str]


class Asker(Protocol):
    """A worker (workers.py): answers ("parse", Setup, index, [Task]) with a TaskResult each."""

    async def ask(self, message: tuple[Any, ...]) -> Any: ...


async def read_all(
    files: Sequence[Path],
    query: LogQuery,
    stats: ReadStats,
    *,
    partitions: int,
    folder: str,
    workers: Sequence[Asker],
    range_bytes: int = RANGE_BYTES,
) -> Reading:
    """Read `files` as `reader.read_sightings` would, into partition files under `folder`,
    by `workers` (each takes the next task, the largest first, when it finishes one)."""
    if query.pattern:
        compile_pattern(query.pattern, query.project)  # a bad pattern: one usage error, here
    setup = Setup(
        pattern=query.pattern,
        project=query.project,
        since=query.since.timestamp() if query.since else None,
        allow_http=query.allow_http,
        only_projects=query.only_projects,
        partitions=partitions,
        folder=folder,
        own_db=query.own_db,
    )
    tasks = plan(files, range_bytes)
    groups = _grouped(tasks, range_bytes)
    results: list[TaskResult | None] = [None] * len(tasks)
    queue = sorted(groups, key=lambda group: -sum(task_bytes(tasks[n]) for n in group))

    async def take(worker: Asker) -> None:
        while queue:
            group = queue.pop(0)
            answers = await worker.ask(("parse", setup, group[0], [tasks[n] for n in group]))
            for n, answer in zip(group, answers, strict=True):
                results[n] = answer

    await asyncio.gather(*(take(worker) for worker in workers))
    stats.files += len(files)
    done = [cast(TaskResult, r) for r in results]
    counted = merge(done, tasks, stats)
    projects: set[str] = set()
    parts: list[list[Path]] = [[] for _ in range(partitions)]
    for n in counted:
        projects |= done[n].projects
        for part, written in enumerate(done[n].spilled):
            if written:
                parts[part].append(spill_name(folder, n, part))
    return Reading(parts, projects)


def _grouped(tasks: Sequence[Task], range_bytes: int) -> list[list[int]]:
    """The tasks in groups a worker reads in one go: consecutive whole files up to about
    `range_bytes` together (a month of cron runs is thousands of small logs: one spill file
    per partition per log would cost more than reading them), a range of a file alone."""
    groups: list[list[int]] = []
    size = range_bytes
    for n, task in enumerate(tasks):
        if not (_whole(task) and groups and size < range_bytes and _whole(tasks[groups[-1][-1]])):
            groups.append([])
            size = 0
        groups[-1].append(n)
        size += task_bytes(task)
    return groups


def _whole(task: Task) -> bool:
    return task.start == 0 and task.end is None


def work_bytes(files: Sequence[Path]) -> int:
    """About how much log text `files` hold."""
    return sum(task_bytes(Task(0, str(path))) for path in files)


def task_bytes(task: Task) -> int:
    try:
        size = Path(task.path).stat().st_size
    except OSError:
        return 0
    if Path(task.path).suffix == ".gz":
        return size * GZIP_RATIO
    end = size if task.end is None else min(task.end, size)
    return end - task.start


_PARSERS: dict[Setup, _Parser] = {}


def run_tasks(setup: Setup, index: int, tasks: Sequence[Task]) -> list[TaskResult]:
    parser = _PARSERS.get(setup)
    if parser is None:
        _PARSERS.clear()
        parser = _PARSERS[setup] = _Parser(setup)
    return parser.run(index, tasks)
