"""What the command line's values mean: durations (`30m`, `7d`), times (`--since`), scene
lists (`--scenes 1,3,5-8`). Each refuses what it cannot read with a UsageError naming the flag
(exit 2)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from imgsave.adapters.runlog.reader import parse_timestamp
from imgsave.core.scene_plan import SceneSelection
from imgsave.errors import UsageError

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str, flag: str) -> timedelta:
    """`90s`, `30m`, `2h`, `7d`, `1w`."""
    match = re.fullmatch(r"(\d+)\s*([smhdw])", text.strip())
    if not match:
        raise UsageError(f"{flag} {text!r}: expected a duration like 30m, 2h or 7d")
    return timedelta(**{_UNITS[match[2]]: int(match[1])})


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """ISO 8601 (a missing zone means UTC), or a relative `90m`, `2h`, `7d` ago."""
    text = text.strip()
    if re.fullmatch(r"\d+\s*[smhdw]", text):
        return (now or datetime.now(UTC)) - parse_duration(text, "--since")
    when = parse_timestamp(text)
    if when is None:
        raise UsageError(f"--since {text!r}: expected ISO 8601 like 2026-11-25T10:00Z, or 2h, 7d")
    return datetime.fromtimestamp(when, UTC)


def parse_scene_selection(spec: str) -> SceneSelection:
    """`1,3,5-8` -> ranges (1,1), (3,3), (5,8)."""
    ranges: list[tuple[int, int]] = []
    for part in spec.split(","):
        part = part.strip()
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise UsageError(f"--scenes: {part!r} is not a number or range like 5-8") from None
        if first < 1 or last < first:
            raise UsageError(f"--scenes: {part!r} is not a range of scene numbers from 1")
        ranges.append((first, last))
    return SceneSelection(tuple(ranges))
