"""An OpenAI-compatible image API client: `POST {base}/images/generations`, URLs in `data[].url`.

Transient trouble (429, 5xx, timeouts, dropped connections, answers that are not the JSON we
expect) is retried with backoff and jitter, honouring `Retry-After` up to a cap. A refusal that
no retry will change stops the run (401, 403, 404); one that concerns a single prompt (another
4xx, such as a content-policy 400) fails that image and lets the others go on.
"""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Self

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from .config import ProviderSettings, Settings
from .errors import CannotWork, ProviderRefused, ProviderUnreachable, UsageError
from .logs import logger
from .redaction import redact
from .urls import shorten, url_problem

FATAL_STATUSES = frozenset({401, 403, 404})


class ImageFailed(Exception):
    """This one image could not be had; the run goes on."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, *, unreachable: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        # No connection could be made at all: the API is down or misnamed, not this prompt.
        self.unreachable = unreachable


class Provider:
    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        model: str | None,
        settings: ProviderSettings,
        *,
        allow_http: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ):
        """`transport`, `sleep` and `rng` are for tests: an `httpx.MockTransport` instead of
        the network, a recorder instead of real waits, a seeded jitter."""
        if not base_url:
            raise UsageError("no image API: set IMGSAVE_BASE_URL (or base_url in imgsave.toml)")
        problem = url_problem(base_url, allow_http=True)
        if problem:
            raise UsageError(f"IMGSAVE_BASE_URL is not usable: {problem}")
        self._endpoint = base_url.rstrip("/") + "/images/generations"
        self._model = model
        self._settings = settings
        self._allow_http = allow_http
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # Providers echo a wrong key back ("Incorrect API key provided: sk-..."): every message
        # this client produces is masked before it reaches the run, its log or the terminal.
        self._secrets = (api_key,) if api_key else ()
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(settings.timeout, connect=min(settings.timeout, 10.0)),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            follow_redirects=False,
            transport=transport,
        )
        self._sleep = sleep
        self._random = rng or random.Random()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(
            settings.base_url,
            settings.api_key,
            settings.model,
            settings.provider,
            allow_http=settings.allow_http,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def generate(self, prompt: str) -> str:
        """One image URL for `prompt`; raises ImageFailed or ProviderRefused."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retryable),
            stop=stop_after_attempt(self._settings.max_attempts),
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            return await retrying(self._once, prompt)
        except (ImageFailed, CannotWork) as exc:
            raise type(exc)(redact(str(exc), self._secrets)) from None
        except _Retryable as exc:
            reason = redact(str(exc), self._secrets)
            if exc.unreachable:
                raise ProviderUnreachable(
                    f"cannot reach the image API at {self._endpoint} after "
                    f"{self._settings.max_attempts} attempts: {reason}"
                ) from None
            raise ImageFailed(
                f"gave up after {self._settings.max_attempts} attempts: {reason}"
            ) from None

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        retry_after = exc.retry_after if isinstance(exc, _Retryable) else None
        pause = backoff(
            state.attempt_number, self._settings, retry_after=retry_after, rng=self._random
        )
        logger.debug(
            "image API: attempt %d failed (%s); retrying in %.2fs",
            state.attempt_number,
            redact(str(exc), self._secrets),
            pause,
        )
        return pause

    async def _once(self, prompt: str) -> str:
        body: dict[str, object] = {"prompt": prompt, "n": 1, "size": self._settings.size}
        if self._model:
            body["model"] = self._model
        try:
            # httpx's timeout is per read: a server trickling a byte at a time never trips it.
            # The whole request, body included, gets one deadline.
            async with asyncio.timeout(self._settings.timeout):
                response = await self._client.post(self._endpoint, json=body)
        except TimeoutError:
            raise _Retryable(f"no complete answer within {self._settings.timeout:g}s") from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.UnsupportedProtocol) as exc:
            raise _Retryable(
                f"connection failed: {type(exc).__name__}: {exc}", unreachable=True
            ) from None
        except httpx.TimeoutException:
            raise _Retryable(f"no answer within {self._settings.timeout:g}s") from None
        except httpx.TransportError as exc:
            raise _Retryable(f"connection failed: {type(exc).__name__}: {exc}") from None
        status = response.status_code
        if status == 429:
            raise _Retryable("rate limited (429)", _retry_after(response))
        if status >= 500:
            raise _Retryable(f"server error {status}", _retry_after(response))
        if status in FATAL_STATUSES:
            raise ProviderRefused(
                f"image API refused the request with {status} {response.reason_phrase}"
                f"{_detail(response)} (check IMGSAVE_API_KEY, IMGSAVE_BASE_URL and IMGSAVE_MODEL)"
            )
        if status >= 400:
            raise ImageFailed(f"image API rejected the prompt: {status}{_detail(response)}")
        if status != 200:
            raise _Retryable(f"unexpected status {status}")
        try:
            url = response.json()["data"][0]["url"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable("answer is not the expected JSON with data[0].url") from None
        problem = url_problem(url, allow_http=self._allow_http)
        if problem:
            shown = shorten(url) if isinstance(url, str) else repr(url)
            raise ImageFailed(
                f"image API answered with a URL imgsave will not save ({problem}): {shown!r}"
            )
        return str(url)


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


def _retry_after(response: httpx.Response) -> float | None:
    return retry_after_seconds(response.headers.get("retry-after"))


def _detail(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return ""
    return f": {' '.join(str(message).split())[:200]}"
