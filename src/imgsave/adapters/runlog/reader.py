"""Reading generation logs: imgsave's own JSON lines, or other systems' logs through a regex.

Reading streams line by line (plain or gzip); memory does not grow with a file's size. Nothing
in a log stops a read: garbage, a truncated last line, invalid UTF-8 and URLs that break the URL
rule are counted and reported, never fatal.
"""

from __future__ import annotations

import enum
import glob
import gzip
import json
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, cast

import orjson

from imgsave.adapters.runlog.writer import SUFFIX
from imgsave.core import events
from imgsave.core.log_history import Sighting
from imgsave.core.result_json import NOT_IN_JSON
from imgsave.core.url_rule import url_problem
from imgsave.errors import UsageError

# Events that say "this URL was generated for this scene". image.repaired is left out on
# purpose: it repeats a URL already logged, under the repair run's id, and counting it would make
# the repair run look like the scene's newest generation.
# image.rehosted names the store's copy and `replaces` the provider's link it stands in for.
SIGHTING_EVENTS = frozenset({events.IMAGE_GENERATED, events.IMAGE_SAVED, events.IMAGE_REHOSTED})
# A line carrying one of these is imgsave's own record, read as such (or passed over), never
# counted as garbage; keys beyond the contract's (a `ledger` row id) are ignored, not refused.
OWN_EVENTS = events.ALL | {"image.spooled"}  # image.spooled: written before the ledger


OWN_PREFIX = '{"v"'


@dataclass
class ReadStats:
    files: int = 0
    lines: int = 0
    sightings: int = field(default=0, metadata=NOT_IN_JSON)
    unmatched: int = 0
    garbage: int = 0
    undecodable: int = 0
    refused: int = 0
    # Values no database key or document can hold: NUL, lone surrogates, absurd nesting.
    invalid: int = 0
    too_long: int = 0
    # Lines tried against --pattern (imgsave's own records in the same files are not), and
    # how many of those it matched.
    pattern_lines: int = field(default=0, metadata=NOT_IN_JSON)
    matched: int = field(default=0, metadata=NOT_IN_JSON)
    untimed: int = field(default=0, metadata=NOT_IN_JSON)
    before_since: int = 0
    # The time of the oldest record read (epoch seconds): how far back the logs' memory goes.
    oldest: float | None = field(default=None, metadata=NOT_IN_JSON)
    truncated_files: list[str] = field(default_factory=list)
    refused_examples: list[str] = field(default_factory=list)
    invalid_examples: list[str] = field(default_factory=list)

    def add(self, other: ReadStats) -> None:
        """Count what `other` read after what this one did (examples: the first five)."""
        for name in _COUNTS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        if other.oldest is not None and (self.oldest is None or other.oldest < self.oldest):
            self.oldest = other.oldest
        self.truncated_files += other.truncated_files
        self.refused_examples = (self.refused_examples + other.refused_examples)[:5]
        self.invalid_examples = (self.invalid_examples + other.invalid_examples)[:5]

    @property
    def lines_skipped(self) -> int:
        return (
            self.unmatched
            + self.garbage
            + self.undecodable
            + self.refused
            + self.invalid
            + self.too_long
        )


_COUNTS = (
    "files",
    "lines",
    "sightings",
    "unmatched",
    "garbage",
    "undecodable",
    "refused",
    "invalid",
    "too_long",
    "pattern_lines",
    "matched",
    "untimed",
    "before_since",
)


@dataclass(frozen=True)
class LogQuery:
    paths: tuple[str, ...] = ()
    pattern: str | None = None
    project: str | None = None
    since: datetime | None = None
    run_gap: timedelta = timedelta(minutes=30)
    allow_http: bool = False
    only_projects: frozenset[str] = frozenset()
    # Also read the database's journal (imgsave sql --journal); its verdicts beat the logs'.
    journal: bool = False
    # This database's identity: imgsave's own records naming another database are not read
    # as evidence (a staging and a prod database on one host never mix).
    own_db: str | None = None


PATTERN_GROUPS = ("url", "scene", "project", "ts", "run", "scene_id")


def compile_pattern(pattern: str, project: str | None) -> Matcher:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        hint = ""
        if re.search(r"\(\?<[A-Za-z_]", pattern):
            hint = " (Python spells a named group (?P<name>...), not (?<name>...))"
        raise UsageError(f"--pattern is not a valid regular expression: {exc}{hint}") from None
    unknown = sorted(set(regex.groupindex) - set(PATTERN_GROUPS))
    if unknown:
        raise UsageError(
            f"--pattern has the group {unknown[0]!r}; the groups imgsave reads are "
            + ", ".join(PATTERN_GROUPS)
        )
    missing = {"url", "scene"} - set(regex.groupindex)
    if missing:
        raise UsageError(f"--pattern needs the named group(s) {', '.join(sorted(missing))}")
    if "project" not in regex.groupindex and not project:
        raise UsageError("--pattern has no (?P<project>...) group: say which with --project")
    return _linear_time(pattern)


class Matcher(Protocol):
    def search(self, text: str) -> _Match | None: ...


class _Match(Protocol):
    def groupdict(self) -> dict[str, str | None]: ...


def _linear_time(pattern: str) -> Matcher:
    """The pattern compiled for RE2, whose matching time is linear in the line's length.

    The pattern is the user's but the lines are not: with Python's backtracking engine a
    37-byte line can hold `(a+)+$` for minutes. RE2 has no lookaround or backreferences, which
    log patterns do not need; a pattern using them is refused rather than run unbounded.
    """
    import re2  # type: ignore[import-untyped]

    options = re2.Options()
    options.log_errors = False  # its C++ logger would print to stderr; we say it in one line
    try:
        return cast(Matcher, re2.compile(pattern, options))
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args else str(exc)
        raise UsageError(
            f"--pattern uses something RE2 cannot match in linear time ({reason}): "
            "lookaround and backreferences are not supported"
        ) from None


def run_logs(log_dir: Path) -> list[Path]:
    """Every run's log in imgsave's log folder (files only: a pipe would never end)."""
    found = sorted(log_dir.glob(f"*{SUFFIX}")) if log_dir.is_dir() else []
    return [path for path in found if path.is_file()]


def logs_before_the_ledger(log_dir: Path) -> int:
    """How many run logs in imgsave's folder are from before the ledger: their first record
    names no database. Only `imgsave ledger import` takes what they hold into the ledger."""
    count = 0
    for path in run_logs(log_dir):
        try:
            with path.open("rb") as log:
                record = orjson.loads(log.readline())
        except (OSError, orjson.JSONDecodeError):
            continue
        count += isinstance(record, dict) and "db" not in record
    return count


def expand_paths(paths: Iterable[str], *, also: Iterable[Path] = ()) -> list[Path]:
    """Files named by paths, directories (all files below) and globs, and the files `also`
    names (imgsave's own logs that are not in the ledger yet), each once."""
    found: list[Path] = list(also)
    for spec in paths:
        path = Path(spec).expanduser()
        if any(ch in spec for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
            files = [p for p in matches if p.is_file() and not _ignored(p)]
            if not files:
                raise UsageError(f"--log {spec}: matches no file")
            found.extend(files)
            continue
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and not _ignored(p)))
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"--log {spec}: no such file or directory")
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values())


_SPOOLED = re.compile(
    r"\.?[0-9a-f]{64}(-[0-9a-f]{12})?\.(png|jpg|webp|gif|b64)(\.json)?(\.partial)?"
)


def _ignored(path: Path) -> bool:
    """imgsave's own non-log files in a log directory: the host lock, and spooled images."""
    return path.suffix == ".lock" or (
        path.parent.name == "spool" and _SPOOLED.fullmatch(path.name) is not None
    )


def read_sightings(files: Iterable[Path], query: LogQuery, stats: ReadStats) -> Iterator[Sighting]:
    """Every usable claim in `files`, in file order; what is not usable is counted in `stats`.

    Line by line, the reference: `bulk_reader` finds the same, faster, and is held to this.
    """
    regex = compile_pattern(query.pattern, query.project) if query.pattern else None
    since = query.since.timestamp() if query.since else None
    for path in files:
        stats.files += 1
        for number, (raw, complete) in enumerate(_lines(path, stats), start=1):
            stats.lines += 1
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                stats.undecodable += 1
                continue
            where = f"{path}:{number}"
            parsed = line_verdict(line, complete, where, regex=regex, query=query, stats=stats)
            if parsed is not None and accepted(parsed, where, query, since, stats):
                yield parsed


def line_verdict(
    line: str,
    complete: bool,
    where: str,
    *,
    regex: Matcher | None,
    query: LogQuery,
    stats: ReadStats,
) -> Sighting | None:
    """One decoded line's sighting, or None with the reason counted in `stats`."""
    # imgsave's own records describe themselves, so its log directory can be read
    # alongside another system's log in one audit.
    own = regex is None or line.startswith(OWN_PREFIX)
    parsed = _parse_own(line, query.own_db) if own else None
    if regex is not None and (parsed is None or parsed is Verdict.GARBAGE):
        stats.pattern_lines += 1
        parsed = _parse_pattern(line, regex, query, stats)
    if parsed is None and complete:
        stats.unmatched += 1
        return None
    if parsed is None or parsed is Verdict.GARBAGE:
        if not complete:
            stats.truncated_files.append(where)
        stats.garbage += 1
        return None
    if parsed is Verdict.OTHER:
        return None
    if isinstance(parsed, Invalid):
        stats.invalid += 1
        if len(stats.invalid_examples) < 5:
            stats.invalid_examples.append(f"{where}: {parsed.reason}")
        return None
    if not complete:
        # A last line cut short is never taken for a record, even when what is left of
        # it happens to parse.
        stats.truncated_files.append(where)
        stats.garbage += 1
        return None
    return parsed


def accepted(
    sighting: Sighting, where: str, query: LogQuery, since: float | None, stats: ReadStats
) -> bool:
    """Whether a parsed sighting is used: of a project asked for, a URL the rule allows, not
    older than --since; what is not is counted."""
    if query.only_projects and sighting.project not in query.only_projects:
        return False
    problem = url_problem(sighting.url, allow_http=query.allow_http)
    if problem:
        stats.refused += 1
        if len(stats.refused_examples) < 5:
            stats.refused_examples.append(f"{where}: {problem}")
        return False
    ts = sighting.ts
    if ts is None:
        stats.untimed += 1
    elif since is not None and ts < since:
        stats.before_since += 1
        return False
    elif stats.oldest is None or ts < stats.oldest:
        stats.oldest = ts
    stats.sightings += 1
    return True


# What reading a file may raise that ends that file's read, not the audit: a file that vanished
# or cannot be read, a gzip stream cut short (EOFError) or corrupt (zlib.error, BadGzipFile).
UNREADABLE = (OSError, EOFError, zlib.error)

# No log line imgsave reads is anywhere near this long; a longer one is skipped and counted,
# so memory never depends on the longest line in a file someone else wrote.
MAX_LINE_BYTES = 1 << 20
_SKIP_CHUNK = 1 << 16


def _lines(path: Path, stats: ReadStats) -> Iterator[tuple[bytes, bool]]:
    """Raw lines and whether each ended with a newline (a last line without one may be cut).

    Lines over MAX_LINE_BYTES are not yielded: they are counted in `stats.too_long`, and their
    rest is read and dropped in bounded chunks.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            while raw := handle.readline(MAX_LINE_BYTES + 1):
                if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                    stats.lines += 1
                    stats.too_long += 1
                    while (rest := handle.readline(_SKIP_CHUNK)) and not rest.endswith(b"\n"):
                        pass
                    continue
                yield raw.rstrip(b"\r\n"), raw.endswith(b"\n")
    except UNREADABLE as exc:
        # A gzip cut short or corrupt, or a file that vanished: what was read counts; the rest
        # is reported.
        stats.truncated_files.append(f"{path} ({exc})")


class Verdict(enum.Enum):
    GARBAGE = "garbage"  # not a record of any kind imgsave reads
    OTHER = "other"  # a record, but not one that names a generated image


@dataclass(frozen=True)
class Invalid:
    """A line that parses but names something no database or document can hold."""

    reason: str


def _text_problem(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    if "\x00" in value:
        return f"{name} contains a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{name} contains a lone surrogate (not valid Unicode)"
    return None


def _checked(sighting: Sighting) -> Sighting | Invalid:
    for name in ("project", "scene_id", "url", "run"):
        problem = _text_problem(name, getattr(sighting, name))
        if problem:
            return Invalid(problem)
    for url in sighting.replaces:
        problem = _text_problem("replaces", url)
        if problem:
            return Invalid(problem)
    return sighting


def _loads(line: str) -> object:
    """json.loads(line), four times faster: orjson reads the lines it reads as json does, and
    json decides the rest. orjson refuses what json lets through (NaN, Infinity, lone
    surrogates), reads integers beyond 64 bits as floats (a scene number is then json's to
    read) and nests 1,024 deep where json may stop sooner (deep lines are json's)."""
    if line.count("[") + line.count("{") < 256:
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            pass
        else:
            if not (isinstance(record, dict) and isinstance(record.get("scene"), float)):
                return record
    return json.loads(line)


def _parse_own(line: str, own_db: str | None = None) -> Sighting | Verdict | Invalid:
    if not line.strip():
        return Verdict.OTHER
    try:
        record = _loads(line)
    except ValueError:
        return Verdict.GARBAGE
    except RecursionError:
        return Invalid("JSON nested too deeply")
    if not isinstance(record, dict) or record.get("event") not in OWN_EVENTS:
        return Verdict.GARBAGE
    if record["event"] not in SIGHTING_EVENTS or record.get("db", own_db) != own_db:
        return Verdict.OTHER
    project, scene, url = record.get("project"), record.get("scene"), record.get("url")
    if url is None and isinstance(record.get("spool"), str):
        return Verdict.OTHER  # kept in a spool, not yet at a URL: the ledger counts it
    scene_id, run = record.get("scene_id"), record.get("run")
    replaces = record.get("replaces") or []
    if (
        not isinstance(project, str)
        or isinstance(scene, bool)
        or not isinstance(scene, int)
        or scene < 1
        or not isinstance(scene_id, str | None)
        or not isinstance(run, str | None)
        or not isinstance(url, str)
        or not isinstance(replaces, list)
        or not all(isinstance(u, str) for u in replaces)
    ):
        return Verdict.GARBAGE
    ts = parse_timestamp(record["ts"]) if isinstance(record.get("ts"), str) else None
    copy = record["event"] == "image.rehosted"
    return _checked(Sighting(project, scene, scene_id, url, run, ts, False, tuple(replaces), copy))


def _parse_pattern(
    line: str, regex: Matcher, query: LogQuery, stats: ReadStats
) -> Sighting | Verdict | Invalid | None:
    match = regex.search(line)
    if match is None:
        return None
    stats.matched += 1
    groups = match.groupdict()
    try:
        scene = int(groups["scene"] or "")
    except (TypeError, ValueError):
        return Verdict.GARBAGE
    if scene < 1:
        return Verdict.GARBAGE
    project = groups.get("project") or query.project
    if not project:
        return Verdict.GARBAGE
    ts_text = groups.get("ts")
    ts = parse_timestamp(ts_text) if ts_text else None
    return _checked(
        Sighting(
            project, scene, groups.get("scene_id"), groups["url"] or "", groups.get("run"), ts, True
        )
    )


_EPOCH = re.compile(r"\d{9,13}(\.\d+)?")


def parse_timestamp(text: str) -> float | None:
    """Epoch seconds of an ISO 8601 time (UTC when it names no zone) or an epoch in seconds or
    milliseconds; None when it is neither."""
    text = text.strip()
    # text[4] is "-" in every ISO date, never in an epoch: the regex is then skipped (a
    # million log lines each pay for it otherwise).
    if text[4:5] != "-" and _EPOCH.fullmatch(text):
        value = float(text)
        return value / 1000 if value > 1e11 else value
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (ValueError, OverflowError):
        return None
