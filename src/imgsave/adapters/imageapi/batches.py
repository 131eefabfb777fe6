"""The image API's Batch API (OpenAI's, and Azure OpenAI's, which is the same): upload a JSONL
of requests (`POST /files`, purpose `batch`), create a batch (`POST /batches`), follow it
(`GET /batches/{id}`), list every batch (`GET /batches?after=&limit=`, paged), stream a file's
lines (`GET /files/{id}/content`), cancel (`POST /batches/{id}/cancel`).

Every error becomes imgsave's, in one line: a 404 on `/batches` or `/files` is `NoBatchApi`
(the provider has none); 401 and 403 are `ProviderRefused`; another 4xx is `BatchRefused` with
the provider's message (a file too large, a bad line). Reads, and the upload (an orphan file
costs nothing), are retried on 5xx, 429 and dropped connections. Creating a batch is not: an
answer lost after the request was sent may have created (and will bill) a batch, so the caller
finds it by listing, not by creating another.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Self

import httpx

from imgsave.adapters.imageapi.tls import shared_context
from imgsave.core.batch_lines import ENDPOINT
from imgsave.core.redaction import redact
from imgsave.core.settings import Settings, no_image_api
from imgsave.errors import CannotWork, ProviderRefused, UsageError

FINISHED = frozenset({"completed", "expired", "cancelled", "failed"})
# The kinds of image API that serve this Batch API.
BATCH_KINDS = frozenset({"openai", "azure"})
RETRIED = frozenset({429, 500, 502, 503, 504})


class NoBatchApi(CannotWork):
    """The image API answers 404 on its Batch API's endpoints."""


class BatchRefused(CannotWork):
    """The image API refused an upload or a batch (too large, a bad line, ...)."""


class BatchUnavailable(CannotWork):
    """The Batch API could not be reached, or kept failing, after retries."""


@dataclass(frozen=True)
class BatchInfo:
    """A batch as the API describes it (openai-python's `Batch`)."""

    id: str
    status: str
    created_at: int
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int
    expires_at: int | None
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_json(cls, payload: Any) -> BatchInfo:
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
            raise BatchUnavailable("the Batch API answered something that is not a batch")
        counts = payload.get("request_counts") or {}
        metadata = payload.get("metadata") or {}
        return cls(
            id=payload["id"],
            status=str(payload.get("status")),
            created_at=int(payload.get("created_at") or 0),
            input_file_id=str(payload.get("input_file_id")),
            output_file_id=payload.get("output_file_id"),
            error_file_id=payload.get("error_file_id"),
            total=int(counts.get("total") or 0),
            completed=int(counts.get("completed") or 0),
            failed=int(counts.get("failed") or 0),
            expires_at=payload.get("expires_at"),
            metadata={str(k): str(v) for k, v in metadata.items()},
        )


class BatchClient:
    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 600.0,
        max_attempts: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        key_header: str = "Authorization",
    ):
        """`transport` and `sleep` are for tests (an httpx.MockTransport, no real waits)."""
        self._base = base_url.rstrip("/")
        self._secrets = (api_key,) if api_key else ()
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._client = httpx.AsyncClient(
            headers=(
                {key_header: f"Bearer {api_key}" if key_header == "Authorization" else api_key}
                if api_key
                else {}
            ),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            transport=transport,
            verify=shared_context(),
        )

    @classmethod
    def from_settings(cls, settings: Settings, *, max_attempts: int = 5) -> Self:
        """The Batch API of the configured image API: OpenAI's at its base URL, Azure
        OpenAI's at `{endpoint}/openai/v1` with its `api-key` header; UsageError for a kind
        without one, or without a base URL."""
        kind = settings.provider.kind
        if kind not in BATCH_KINDS:
            raise UsageError(
                f"the {kind} API has no Batch API imgsave can use: generate without --batch"
            )
        base = settings.api_base
        if not base:
            raise UsageError(no_image_api(kind))
        if kind == "azure":
            return cls(
                base.rstrip("/") + "/openai/v1", settings.api_key, key_header="api-key",
                timeout=settings.provider.timeout, max_attempts=max_attempts,
            )  # fmt: skip
        return cls(
            base, settings.api_key, timeout=settings.provider.timeout, max_attempts=max_attempts
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.aclose()

    async def upload(self, content: bytes, filename: str = "imgsave-batch.jsonl") -> str:
        """The input file's id."""
        files = {"file": (filename, content, "application/jsonl")}
        answer = await self._send("upload the batch's input", "POST", "/files",
                                  retry=True, data={"purpose": "batch"}, files=files)  # fmt: skip
        file_id = answer.json().get("id") if _is_json(answer) else None
        if not isinstance(file_id, str):
            raise BatchUnavailable("the upload's answer names no file id")
        return file_id

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> BatchInfo:
        body = {
            "input_file_id": input_file_id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": metadata,
        }
        answer = await self._send("create the batch", "POST", "/batches", retry=False, json=body)
        return BatchInfo.from_json(answer.json())

    async def retrieve(self, batch_id: str) -> BatchInfo:
        answer = await self._send(f"read batch {batch_id}", "GET", f"/batches/{batch_id}")
        return BatchInfo.from_json(answer.json())

    async def file_expires_at(self, file_id: str) -> int | None:
        """When the provider deletes the file (its output, with every image in it)."""
        answer = await self._send(f"read file {file_id}", "GET", f"/files/{file_id}")
        payload = answer.json()
        value = payload.get("expires_at") if isinstance(payload, dict) else None
        return value if isinstance(value, int) else None

    async def cancel(self, batch_id: str) -> BatchInfo:
        answer = await self._send(
            f"cancel batch {batch_id}", "POST", f"/batches/{batch_id}/cancel", retry=True
        )
        return BatchInfo.from_json(answer.json())

    async def listed(self, page: int = 100) -> AsyncIterator[BatchInfo]:
        """Every batch the API holds for this key, newest first, a page at a time."""
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": page}
            if after:
                params["after"] = after
            answer = await self._send("list the batches", "GET", "/batches", params=params)
            payload = answer.json()
            data = payload.get("data") if isinstance(payload, dict) else None
            if not isinstance(data, list):
                raise BatchUnavailable("the batch list's answer holds no data[]")
            for item in data:
                yield BatchInfo.from_json(item)
            if not payload.get("has_more") or not data:
                return
            after = payload.get("last_id") or data[-1].get("id")

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines, streamed: memory does not grow with the file. Retried (from the
        start) only until its first line arrived; a stream cut later raises, and the caller
        resumes, skipping what it already has."""
        for attempt in range(1, self._max_attempts + 1):
            started = False
            try:
                async with self._client.stream("GET", self._url(f"/files/{file_id}/content")) as r:
                    if r.status_code != 200:
                        await r.aread()
                        self._check(r, f"read file {file_id}")
                        raise _Transient(f"status {r.status_code}")
                    # Bytes, split here: a line is megabytes of base64, and decoding it to text
                    # only to encode it again would cost more than reading it.
                    # The pieces of a line not yet ended are joined once, when it ends: adding
                    # each chunk to the line so far would copy it over and over.
                    pieces: list[bytes] = []
                    async for chunk in r.aiter_bytes():
                        started = True
                        *ended, rest = chunk.split(b"\n")
                        for end in ended:
                            line = b"".join([*pieces, end])
                            pieces = []
                            if line.strip():
                                yield line
                        if rest:
                            pieces.append(rest)
                    line = b"".join(pieces)
                    if line.strip():
                        yield line
                    return
            except (httpx.TransportError, _Transient) as exc:
                if started or attempt == self._max_attempts:
                    raise BatchUnavailable(
                        f"cannot read file {file_id} of the Batch API: {self._said(exc)}"
                    ) from None
                await self._sleep(min(2.0, 0.2 * 2**attempt))

    # -- one request -----------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self._base + path

    async def _send(
        self, what: str, method: str, path: str, *, retry: bool = True, **kwargs: Any
    ) -> httpx.Response:
        attempts = self._max_attempts if retry else 1
        for attempt in range(1, attempts + 1):
            try:
                answer = await self._client.request(method, self._url(path), **kwargs)
            except httpx.TransportError as exc:
                if attempt == attempts:
                    raise BatchUnavailable(f"cannot {what}: {self._said(exc)}") from None
            else:
                if answer.status_code not in RETRIED or attempt == attempts:
                    self._check(answer, what)
                    return answer
            await self._sleep(min(2.0, 0.2 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _check(self, answer: httpx.Response, what: str) -> None:
        status = answer.status_code
        if status < 400:
            if not _is_json(answer) and answer.request.method != "GET":
                raise BatchUnavailable(f"cannot {what}: the answer is not JSON")
            return
        detail = self._detail(answer)
        if status == 404 and answer.request.url.path.rstrip("/").endswith(("/batches", "/files")):
            raise NoBatchApi(
                f"the image API has no Batch API ({status} on {answer.request.url.path}); "
                "generate without --batch"
            )
        if status in (401, 403):
            raise ProviderRefused(f"cannot {what}: the image API refused with {status}{detail}")
        if status in RETRIED:
            raise BatchUnavailable(f"cannot {what}: the image API answered {status}{detail}")
        raise BatchRefused(f"cannot {what}: the image API refused with {status}{detail}")

    def _detail(self, answer: httpx.Response) -> str:
        try:
            message = answer.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            return ""
        return ": " + redact(" ".join(str(message).split())[:300], self._secrets)

    def _said(self, exc: BaseException) -> str:
        return redact(f"{type(exc).__name__}: {exc}", self._secrets)


class _Transient(Exception):
    pass


def _is_json(answer: httpx.Response) -> bool:
    try:
        json.loads(answer.content)
    except ValueError:
        return False
    return True
