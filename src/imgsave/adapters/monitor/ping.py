"""healthchecks.io's ping convention: `URL/start` when a run begins, `URL/<exit code>` when it
ends, with the run's JSON summary as the body (https://healthchecks.io/docs/http_api/).

A ping is best effort and bounded: it is retried briefly, every attempt and every wait within
one budget for the whole run (10 s), and a failure is reported, never raised: a monitoring
service that is down must not change what cron sees. The URL is a secret (whoever holds it can
report runs that never happened): no message names it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

# healthchecks.io keeps the first 100 kB of a ping's body; a longer one is cut short there,
# into JSON no one can read.
MAX_BODY_BYTES = 100_000
# The whole run's pinging, every attempt and wait included: under the 10 s promised, with
# room for the last attempt's own overhead.
TOTAL_BUDGET = 9.0
# Of it, what the start ping may use: the end ping (with the exit code) matters more.
START_BUDGET = 3.0
ATTEMPT_TIMEOUT = 4.0
FIRST_WAIT = 0.25


def ping_body(summary: Mapping[str, object]) -> bytes:
    """The JSON summary, within MAX_BODY_BYTES and always valid JSON: when it is too long, its
    scalar entries (the counts) are kept with `"truncated": true`, the long lists dropped."""
    text = json.dumps(summary, ensure_ascii=False).encode("utf-8", "backslashreplace")
    if len(text) <= MAX_BODY_BYTES:
        return text
    scalars = {
        k: v for k, v in summary.items() if isinstance(v, str | int | float | bool) or v is None
    }
    scalars["truncated"] = True
    text = json.dumps(scalars, ensure_ascii=False).encode("utf-8", "backslashreplace")
    if len(text) <= MAX_BODY_BYTES:
        return text
    return json.dumps({"truncated": True}).encode()


@dataclass
class Pinger:
    """Pings one check's URL; `clock` and `sleep` are injectable so the budget can be proved
    on a virtual clock. `warn` hears of a ping that could not be delivered."""

    url: str
    warn: Callable[[str], None]
    clock: Callable[[], float] | None = None
    sleep: Callable[[float], None] | None = None
    transport: httpx.BaseTransport | None = None
    budget: float = TOTAL_BUDGET
    _spent_from: float | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        # Looked up when the pinger is made, so a test can put the module's `time` on a
        # virtual clock.
        self._clock: Callable[[], float] = self.clock or time.monotonic
        self._sleep: Callable[[float], None] = self.sleep or time.sleep

    def start(self) -> bool:
        """`URL/start`: the run began (healthchecks.io then also measures its duration)."""
        return self._send("start", b"", min(START_BUDGET, self.budget))

    def finish(self, exit_code: int, summary: Mapping[str, object]) -> bool:
        """`URL/<exit code>` with the JSON summary: 0 is success, anything else a failure."""
        return self._send(str(exit_code), ping_body(summary), self.budget)

    def _send(self, suffix: str, body: bytes, cap: float) -> bool:
        now = self._clock()
        if self._spent_from is None:
            self._spent_from = now
        # Whatever this ping may use: its own cap, and what the run's budget has left.
        deadline = min(now + cap, self._spent_from + self.budget)
        target = self.url.rstrip("/") + "/" + suffix
        wait = FIRST_WAIT
        reason = "no time left"
        with httpx.Client(transport=self.transport, follow_redirects=True) as client:
            while (left := deadline - self._clock()) > 0:
                try:
                    answer = client.post(
                        target,
                        content=body,
                        headers={"content-type": "application/json"},
                        timeout=min(ATTEMPT_TIMEOUT, left),
                    )
                except (httpx.HTTPError, httpx.InvalidURL) as exc:
                    reason = _why(exc)
                else:
                    if answer.status_code < 500 and answer.status_code != 429:
                        if answer.status_code >= 400:
                            self.warn(f"the ping ({suffix}) was refused: HTTP {answer.status_code}")
                            return False
                        return True
                    reason = f"HTTP {answer.status_code}"
                left = deadline - self._clock()
                if left <= wait:
                    break
                self._sleep(wait)
                wait *= 2
        self.warn(f"the ping ({suffix}) could not be delivered: {reason}")
        return False


def _why(exc: httpx.HTTPError | httpx.InvalidURL) -> str:
    """The kind of failure, never the URL (httpx's messages may repeat it)."""
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    if isinstance(exc, httpx.ConnectError):
        return "could not connect"
    return type(exc).__name__
