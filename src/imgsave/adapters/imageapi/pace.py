"""The provider's pace: how fast requests may start, across every project of a run.

`--rate N/min` spaces request starts evenly (a request every 60/N seconds, never a burst), so a
provider that enforces N per minute never has to refuse one. The pace also learns: a 429 pauses
every request until its `Retry-After` and halves the rate, which then climbs back over
`RECOVERY` seconds to just under the rate that was refused, and only creeps above it after
that; a limit the provider publishes (`x-ratelimit-limit-requests`) caps the rate, and an
exhausted one (`x-ratelimit-remaining-requests: 0`) pauses until its reset. Without `--rate`
(and no published limit) nothing is spaced: a 429 pauses every request until its Retry-After,
and no rate is guessed, because a run held back by its concurrency starts few requests and a
rate measured from them would be far below what the provider allows.

Every attempt passes here, retries included: each is a request the provider counts.
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from imgsave.errors import UsageError

# Seconds the rate takes to climb from half back to just under the refused rate.
RECOVERY = 20.0
# Above the refused rate, the rate grows this fraction per minute without a 429.
PROBE_PER_MINUTE = 0.05
# Never slower than this many requests per minute, whatever the 429s say ...
MIN_RATE = 1.0
# ... nor than this share of the rate asked: past that, Retry-After does the slowing.
MIN_SHARE = 0.05
# One refusal cuts the rate once: the requests already in flight at the old rate are refused
# too, and each cutting again would halve the rate for what is one event.
CUT_QUIET = 2.0

_UNITS = {"s": 60.0, "sec": 60.0, "second": 60.0, "min": 1.0, "m": 1.0, "minute": 1.0}
_UNITS |= {"h": 1 / 60, "hour": 1 / 60}


def parse_rate(text: str) -> float:
    """`600/min`, `10/s`, `3000/h` or a bare `600` (per minute) as requests per minute."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(?:/\s*([a-z]+))?\s*", text.lower())
    unit = (match.group(2) or "min") if match else None
    if match is None or unit not in _UNITS:
        raise UsageError(f"--rate: {text!r} is not a rate like 600/min, 10/s or 3000/h")
    per_minute = float(match.group(1)) * _UNITS[unit]
    if not per_minute >= MIN_RATE:
        raise UsageError(f"--rate: {text!r} is below the least rate, {MIN_RATE:g}/min")
    return per_minute


def parse_reset(text: str | None) -> float | None:
    """An `x-ratelimit-reset-*` value (`1s`, `6m0s`, `120ms`, `0.5`) in seconds, else None."""
    if not text:
        return None
    text = text.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    parts = re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(n) * scale[u] for n, u in parts)


class PaceClosed(Exception):
    """The run stopped while this request waited for its start: it is not sent."""


@dataclass(frozen=True)
class PaceReport:
    """What the run's summary says of the pace."""

    asked: float | None
    achieved: float | None
    throttled: int
    requests: int


class Pace:
    def __init__(
        self,
        per_minute: float | None = None,
        *,
        max_pause: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.asked = per_minute
        self._max_pause = max_pause
        self._clock = clock
        self._sleep = sleep
        self._next = -math.inf  # the earliest moment the next request may start
        self._paused_until = -math.inf
        # After a 429: the rate it left (base), the one it learnt not to exceed (ceiling).
        self._cut_at = -math.inf
        self._base = 0.0
        self._ceiling: float | None = None
        # What the provider says its limit is (per minute).
        self._declared: float | None = None
        # Bumped whenever reserved starts no longer hold (a cut, a longer pause): waiters
        # that reserved one before it reserve again.
        self._cuts = 0
        self._closed = False
        self.throttled = 0
        self.requests = 0
        self._first: float | None = None
        self._last: float | None = None

    def rate(self, now: float) -> float | None:
        """Requests per minute allowed at `now`; None: no limit."""
        limit = _least(self.asked, self._declared)
        if self._ceiling is None or limit is None:
            return limit
        since = now - self._cut_at
        if since < RECOVERY:
            rate = self._base + (self._ceiling - self._base) * since / RECOVERY
        else:
            rate = self._ceiling * (1 + PROBE_PER_MINUTE * (since - RECOVERY) / 60)
        return max(MIN_RATE, limit * MIN_SHARE, min(rate, limit))

    async def wait(self) -> None:
        """Return when the next request may start."""
        while True:
            if self._closed:
                raise PaceClosed
            now = self._clock()
            rate = self.rate(now)
            start = max(now, self._paused_until, self._next if rate else now)
            if rate:
                self._next = start + 60.0 / rate
            cuts = self._cuts
            if start > now:
                await self._sleep(start - now)
            if cuts == self._cuts and not self._closed:  # the reserved start still holds
                break
        now = self._clock()
        self.requests += 1
        self._first = now if self._first is None else self._first
        self._last = now

    def close(self) -> None:
        """No request waiting for its start (or coming to wait) may start any more."""
        self._closed = True

    def throttle(self, retry_after: float | None) -> None:
        """The provider answered 429."""
        now = self._clock()
        self.throttled += 1
        pause = min(retry_after if retry_after is not None else 1.0, self._max_pause)
        self._pause_until(now + pause)
        refused = self.rate(now)
        if refused is None or now - self._cut_at < CUT_QUIET:
            return
        self._ceiling = max(MIN_RATE, refused * 0.9)
        self._base = max(MIN_RATE, refused * 0.5)
        self._cut_at = now
        self._respace(self._base)

    def _respace(self, rate: float) -> None:
        """Waiters re-reserve their starts: from the last start, at `rate`."""
        self._cuts += 1
        last = self._last if self._last is not None else self._clock()
        self._next = max(self._paused_until, last + 60.0 / rate)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Any answer: the provider's published limits, where it gives them."""
        limit = _number(headers.get("x-ratelimit-limit-requests"))
        if limit is not None and limit > 0 and limit != self._declared:
            before = self.rate(self._clock())
            self._declared = max(MIN_RATE, limit)
            after = self.rate(self._clock())
            if after is not None and (before is None or after < before):
                # Starts already reserved at the old pace are made again at the new one.
                self._respace(after)
        remaining = _number(headers.get("x-ratelimit-remaining-requests"))
        reset = parse_reset(headers.get("x-ratelimit-reset-requests"))
        if remaining is not None and remaining <= 0 and reset is not None:
            self._pause_until(self._clock() + min(reset, self._max_pause))

    def _pause_until(self, until: float) -> None:
        if until > self._paused_until:
            self._paused_until = until
            self._cuts += 1  # waiters already asleep wake up to the longer pause

    def report(self) -> PaceReport:
        achieved = None
        if self._first is not None and self._last is not None and self._last > self._first:
            achieved = round(60.0 * (self.requests - 1) / (self._last - self._first), 1)
        return PaceReport(self.asked, achieved, self.throttled, self.requests)


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None
