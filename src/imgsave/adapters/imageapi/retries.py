"""The one retry policy of the image API client, for submissions and polls alike: up to
`max_attempts` attempts, backoff with jitter between them (or the server's `Retry-After`, up to
a cap), and retries after an attempt the provider may have billed counted in the call and
bounded on their own (`max_billed_retries`). A poll is never billed, so only submissions ever
meet that bound."""

from __future__ import annotations

import email.utils
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from typing import TypeVar

import httpx

from imgsave.adapters.imageapi.failures import ImageFailed, Retryable
from imgsave.core.redaction import redact
from imgsave.core.settings import ProviderSettings
from imgsave.logs import logger

_T = TypeVar("_T")


@dataclass
class Call:
    """One image's attempts (its submission, and its job's polls): how many retries followed a
    possibly billed failure."""

    billed_retries: int = 0


class RetryPolicy:
    """Written out rather than through tenacity: the billing bound is part of the decision to
    retry, not a side effect of computing the wait, and a poll (several per image, hundreds a
    second in a large run) should not pay tenacity's 50 µs of bookkeeping for its one
    attempt."""

    def __init__(
        self,
        settings: ProviderSettings,
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random,
        secrets: tuple[str, ...],
    ):
        self._settings = settings
        self._sleep = sleep
        self._random = rng
        self._secrets = secrets

    async def run(self, attempt: Callable[[], Awaitable[_T]], call: Call) -> _T:
        """`attempt()`'s result, attempted again while it raises Retryable, up to the bounds;
        the last Retryable is raised when they are reached, ImageFailed when the next retry
        would be one more than `max_billed_retries` after a possibly billed attempt."""
        for number in itertools.count(1):
            try:
                return await attempt()
            except Retryable as exc:
                self._within_billed_bound(exc, call)
                if number >= self._settings.max_attempts:
                    raise
                call.billed_retries += exc.billed
                pause = backoff(
                    number, self._settings, retry_after=exc.retry_after, rng=self._random
                )
                logger.debug(
                    "image API: attempt %d failed (%s); retrying in %.2fs",
                    number,
                    redact(str(exc), self._secrets),
                    pause,
                )
            await self._sleep(pause)
        raise AssertionError("unreachable")  # pragma: no cover - count() never ends

    def _within_billed_bound(self, exc: Retryable, call: Call) -> None:
        if exc.billed and call.billed_retries >= self._settings.max_billed_retries:
            retries = f"retr{'y' if call.billed_retries == 1 else 'ies'}"
            raise ImageFailed(
                f"{exc}; not retried: the provider may have billed this attempt, and "
                f"{call.billed_retries} such {retries} is the limit (max_billed_retries)"
            ) from None


def backoff(
    attempt: int,
    settings: ProviderSettings,
    *,
    retry_after: float | None = None,
    rng: random.Random,
) -> float:
    """Seconds to wait after failed attempt `attempt` (1-based): the server's Retry-After up to
    a cap, else exponential backoff with jitter, bounded by `backoff_max`."""
    if retry_after is not None:
        return min(retry_after, settings.max_retry_after) + rng.uniform(0, 0.05)
    ceiling = min(settings.backoff_max, settings.backoff_initial * 2 ** (attempt - 1))
    # "Equal jitter": never less than half the ceiling, so retries spread out without
    # collapsing to zero wait.
    return rng.uniform(ceiling / 2, ceiling)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header, in either form (seconds, or an HTTP date), as seconds from now."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is read the same way
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def retry_after(response: httpx.Response) -> float | None:
    # retry-after-ms (OpenAI, Azure) is finer than Retry-After's whole seconds.
    millis = response.headers.get("retry-after-ms")
    if millis:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    return retry_after_seconds(response.headers.get("retry-after"))
