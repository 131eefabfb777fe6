"""The Prometheus node exporter's textfile collector: at the end of every run, one file of
gauges (https://github.com/prometheus/node_exporter#textfile-collector), written with
prometheus_client and replaced atomically (a temporary file beside it, then a rename), so the
collector never reads half a file.

Several commands (a cron line each) may share one file: each run replaces its own command's
series and keeps the others', under a lock so that two runs ending at once lose neither.
`imgsave_last_success_timestamp_seconds` is kept from the file when this run failed: it is
what an alert on "no success for a day" reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from imgsave.errors import CannotWork

PREFIX = "imgsave_"
LAST_RUN = "imgsave_last_run_timestamp_seconds"
LAST_SUCCESS = "imgsave_last_success_timestamp_seconds"
EXIT_CODE = "imgsave_exit_code"
DURATION = "imgsave_run_duration_seconds"
IMAGES = "imgsave_images"

_HELP = {
    LAST_RUN: "When the command's last run ended (Unix time).",
    LAST_SUCCESS: "When the command last ended with exit code 0 (Unix time).",
    EXIT_CODE: "The exit code of the command's last run.",
    DURATION: "How long the command's last run took, in seconds.",
    IMAGES: "The last run's images by state (saved, failed, lost, recovered, ...).",
}


@dataclass(frozen=True)
class RunOutcome:
    """What one run puts in the file."""

    command: str
    exit_code: int
    ended_at: float
    duration: float
    # state -> count, from the run's JSON summary; empty when the run stopped without one.
    images: Mapping[str, int]


# Every metric the file holds.
WRITTEN = frozenset(_HELP)

# Counts in a summary that are not of images: scenes, projects, log lines, transactions,
# retries, files.
_NOT_IMAGES = ("scenes", "projects", "lines", "transactions", "retries", "exit_code", "removed")


def image_counts(summary: Mapping[str, object]) -> dict[str, int]:
    """The images a run's JSON summary counts, by state: every whole number at its top level
    (generate's `saved`, `failed`, `recovered`; repair's `repaired`, `remaining`) and in its
    `summary` (audit's `lost`, `stale`, `present`), except counts of other things."""
    found: dict[str, int] = {}
    nested = summary.get("summary")
    for source in (summary, nested if isinstance(nested, Mapping) else {}):
        for key, value in source.items():
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            if any(word in key for word in _NOT_IMAGES):
                continue
            found.setdefault(str(key), value)
    return found


def write_metrics(path: Path, outcome: RunOutcome) -> None:
    """Replace `outcome.command`'s series in the textfile at `path`, keep every other
    command's. Raises CannotWork when the file cannot be written."""
    try:
        with _locked(path):
            kept = _read(path)
            _write(path, _merge(kept, outcome))
    except OSError as exc:
        raise CannotWork(f"metrics file {path} cannot be written: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class _Sample:
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float


def _merge(kept: list[_Sample], outcome: RunOutcome) -> list[_Sample]:
    mine = (("command", outcome.command),)
    previous_success = next(
        (s.value for s in kept if s.name == LAST_SUCCESS and dict(s.labels) == dict(mine)), None
    )
    others = [s for s in kept if dict(s.labels).get("command") != outcome.command]
    fresh = [
        _Sample(LAST_RUN, mine, outcome.ended_at),
        _Sample(EXIT_CODE, mine, float(outcome.exit_code)),
        _Sample(DURATION, mine, outcome.duration),
    ]
    success = outcome.ended_at if outcome.exit_code == 0 else previous_success
    if success is not None:
        fresh.append(_Sample(LAST_SUCCESS, mine, success))
    fresh += [
        _Sample(IMAGES, (("command", outcome.command), ("state", state)), float(count))
        for state, count in sorted(outcome.images.items())
    ]
    return others + fresh


def _read(path: Path) -> list[_Sample]:
    """imgsave's samples in the file as it is; a file that is missing or unreadable as the
    text format is started afresh (it is ours, rewritten on every run)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except UnicodeDecodeError:
        return []
    try:
        return [
            _Sample(sample.name, tuple(sorted(sample.labels.items())), sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name in _HELP and "command" in sample.labels
        ]
    except ValueError:
        return []


def _write(path: Path, samples: list[_Sample]) -> None:
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()
    gauges = {
        LAST_RUN: Gauge(LAST_RUN, _HELP[LAST_RUN], ["command"], registry=registry),
        LAST_SUCCESS: Gauge(LAST_SUCCESS, _HELP[LAST_SUCCESS], ["command"], registry=registry),
        EXIT_CODE: Gauge(EXIT_CODE, _HELP[EXIT_CODE], ["command"], registry=registry),
        DURATION: Gauge(DURATION, _HELP[DURATION], ["command"], registry=registry),
        IMAGES: Gauge(IMAGES, _HELP[IMAGES], ["command", "state"], registry=registry),
    }
    for sample in samples:
        gauges[sample.name].labels(**dict(sample.labels)).set(sample.value)
    write_to_textfile(str(path), registry)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the file for the read and the rename, so that two commands
    ending at once do not drop each other's series."""
    lock = path.with_name(path.name + ".lock")
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
