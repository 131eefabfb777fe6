"""The HTTP under every Batch API: one client holding the key, requests retried where that cannot
bill twice, every answer read within a cap, every error made imgsave's in one line, files
streamed as lines, and lists read page by page within a bound.

The key goes only to the base URL's origin: the implementations build every URL from it.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import httpx

from imgsave.adapters.imageapi.batch_api import BatchRefused, BatchUnavailable, NoBatchApi
from imgsave.adapters.imageapi.retries import backoff, retry_after_seconds
from imgsave.adapters.imageapi.tls import shared_context
from imgsave.core.batch_lines import LineSplitter, Oversized
from imgsave.core.redaction import redact
from imgsave.core.settings import ProviderSettings
from imgsave.errors import ProviderRefused

RETRIED = frozenset({429, 500, 502, 503, 504})
# A list longer than this many pages is not read as complete: 1,000 pages of 100 batches.
MAX_PAGES = 1000
_T = TypeVar("_T")


class BatchHttp:
    def __init__(
        self,
        headers: dict[str, str],
        secrets: Sequence[str],
        *,
        cap: int,
        provider: ProviderSettings,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ):
        """`cap`: the most bytes of an answer, or of one line of a file, that are read.
        `provider`: its timeout, attempts and backoff ([provider] settings), as the image
        requests have them. `transport`, `sleep` and `rng` are for tests (an
        httpx.MockTransport, no real waits, a seeded jitter)."""
        self.cap = cap
        self._secrets = tuple(s for s in secrets if s)
        self._provider = provider
        self._max_attempts = max(1, provider.max_attempts)
        self._sleep = sleep
        self._rng = rng or random.Random()
        timeout = provider.timeout
        self._client = httpx.AsyncClient(
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            transport=transport,
            verify=shared_context(),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self,
        what: str,
        method: str,
        url: str,
        *,
        retry: bool = True,
        no_api_on_404: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, httpx.Headers]:
        """One request's JSON answer (None for an empty body) and headers. `what` says what it
        was for, in the error; `no_api_on_404`: this is one of the Batch API's own endpoints,
        so a 404 means the provider has no Batch API."""
        attempts = self._max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                async with self._client.stream(method, url, **kwargs) as answer:
                    body = await self._body(answer, what)
            except httpx.TransportError as exc:
                if attempt == attempts:
                    raise BatchUnavailable(f"cannot {what}: {self._said(exc)}") from None
            else:
                if answer.status_code not in RETRIED or attempt == attempts:
                    self._check(answer.status_code, body, what, no_api_on_404=no_api_on_404)
                    return _json(body, what), answer.headers
                retry_after = retry_after_seconds(answer.headers.get("retry-after"))
            await self._wait(attempt, retry_after)
        raise AssertionError("unreachable")  # pragma: no cover

    async def again(self, what: str, attempt: Callable[[], Awaitable[_T]]) -> _T:
        """`attempt` (requests sent unretried) made again from its start while it fails in a way
        that may pass: for a sequence that is safe to begin again as a whole."""
        for number in range(1, self._max_attempts + 1):
            try:
                return await attempt()
            except BatchUnavailable:
                if number == self._max_attempts:
                    raise
            await self._wait(number)
        raise AssertionError("unreachable")  # pragma: no cover

    async def lines(self, url: str, what: str) -> AsyncIterator[bytes | Oversized]:
        """The file's lines, streamed, each within the cap (see LineSplitter). Retried (from the
        start) only until its first bytes arrived; a stream cut later raises."""
        for attempt in range(1, self._max_attempts + 1):
            started = False
            try:
                async with self._client.stream("GET", url) as answer:
                    if answer.status_code != 200:
                        body = await self._body(answer, what)
                        self._check(answer.status_code, body, what)
                        raise _Transient(f"status {answer.status_code}")
                    # Bytes, split here: a line is megabytes of base64, and decoding it to text
                    # only to encode it again would cost more than reading it.
                    splitter = LineSplitter(self.cap)
                    async for chunk in answer.aiter_bytes():
                        started = True
                        for line in splitter.feed(chunk):
                            yield line
                    for line in splitter.close():
                        yield line
                    return
            except (httpx.TransportError, _Transient) as exc:
                if started or attempt == self._max_attempts:
                    raise BatchUnavailable(f"cannot {what}: {self._said(exc)}") from None
                await self._wait(attempt)

    async def _wait(self, attempt: int, retry_after: float | None = None) -> None:
        await self._sleep(backoff(attempt, self._provider, retry_after=retry_after, rng=self._rng))

    async def _body(self, answer: httpx.Response, what: str) -> bytes:
        """The answer's body, read no further than the cap."""
        chunks: list[bytes] = []
        size = 0
        async for chunk in answer.aiter_bytes():
            size += len(chunk)
            if size > self.cap:
                raise BatchUnavailable(
                    f"cannot {what}: the answer is over {self.cap:,} bytes; not read further"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _check(self, status: int, body: bytes, what: str, *, no_api_on_404: bool = False) -> None:
        if status < 400:
            return
        detail = self._detail(body)
        if status == 404 and no_api_on_404:
            raise NoBatchApi(
                f"the image API has no Batch API (404 when asked to {what}{detail}); "
                "generate without --batch"
            )
        if status in (401, 403) or _bad_key(body):
            raise ProviderRefused(f"cannot {what}: the image API refused with {status}{detail}")
        if status in RETRIED:
            raise BatchUnavailable(f"cannot {what}: the image API answered {status}{detail}")
        raise BatchRefused(f"cannot {what}: the image API refused with {status}{detail}")

    def _detail(self, body: bytes) -> str:
        try:
            message = json.loads(body)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return ""
        return ": " + redact(" ".join(str(message).split())[:300], self._secrets)

    def _said(self, exc: BaseException) -> str:
        return redact(f"{type(exc).__name__}: {exc}", self._secrets)


async def paged(
    page: Callable[[str | None], Awaitable[tuple[list[_T], str | None]]],
    what: str,
    *,
    max_pages: int = MAX_PAGES,
) -> AsyncIterator[_T]:
    """Every item of a paged list: `page(cursor)` answers a page's items and the next cursor
    (None: the last page). A cursor seen before would read the same pages forever, so it stops
    with an error; so does a list past `max_pages` (never read as complete: what it did not
    show may be a batch that is paid for)."""
    seen: set[str] = set()
    cursor: str | None = None
    for number in range(1, max_pages + 1):
        items, following = await page(cursor)
        for item in items:
            yield item
        if not following:
            return
        if following in seen or following == cursor:
            raise BatchUnavailable(
                f"cannot {what}: the list's cursor did not advance (page {number}); stopped"
            )
        seen.add(following)
        cursor = following
    raise BatchUnavailable(f"cannot {what}: the list goes on past {max_pages:,} pages; stopped")


class _Transient(Exception):
    pass


def _json(body: bytes, what: str) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise BatchUnavailable(f"cannot {what}: the answer is not JSON") from None


def _bad_key(body: bytes) -> bool:
    """Google's answer to a wrong key: 400 INVALID_ARGUMENT, reason API_KEY_INVALID."""
    if b"API_KEY_INVALID" not in body:
        return False
    try:
        details = json.loads(body)["error"]["details"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(details, list) and any(
        isinstance(d, dict) and d.get("reason") == "API_KEY_INVALID" for d in details
    )
