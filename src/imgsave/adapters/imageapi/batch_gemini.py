"""The Gemini API's Batch API, as Google documents it (the Batch API guide and reference, and what
python-genai's `batches.py`, `files.py` and `_api_client.py` send and parse). The interface and
its rules are batch_api.py's; header `x-goog-api-key` on every request.

- **Upload**: the Files API's resumable upload. `POST {upload}/files` with
  `X-Goog-Upload-Protocol: resumable`, `X-Goog-Upload-Command: start`, the size and type in
  `X-Goog-Upload-Header-Content-*` and `{"file": {"display_name"}}`; the answer's
  `x-goog-upload-url` then takes the bytes with `X-Goog-Upload-Command: upload, finalize` and
  answers `{"file": {"name": "files/..."}}`. `{upload}` is the base URL with `upload/` before
  its last segment, the API version (`https://generativelanguage.googleapis.com/upload/v1beta`);
  `{download}` likewise. An upload URL on another origin than the base's is taken on the base's
  origin (as python-genai does behind a custom base URL): the key goes nowhere else. A failed
  upload is begun again from the start (an orphan file costs nothing).
- **Create**: `POST {base}/models/{model}:batchGenerateContent` with `{"batch": {"display_name":
  "imgsave:{db_id}:{run}", "input_config": {"file_name"}}}`; never retried. Always from a file:
  inline results of many images grow too large to download, after they were billed.
- **A batch** is a long-running operation: `{name: "batches/...", metadata: {displayName, state,
  createTime, batchStats: {requestCount, successfulRequestCount, failedRequestCount}, output:
  {responsesFile}}, done, response, error}`; `state` is BATCH_STATE_* (or JOB_STATE_* as the
  SDK names them). The id imgsave keeps is the name, `batches/...`.
- **List**: `GET {base}/batches?pageSize=&pageToken=` → `{operations, nextPageToken}`.
- **Results**: one JSONL file, `GET {download}/files/...:download?alt=media`, streamed; its lines
  are `{"key", "response"}` (images as `inlineData` parts; a block is the response's
  `promptFeedback.blockReason` or a candidate's `finishReason`, read as a synchronous answer is)
  or `{"key", "error": google.rpc.Status}`. An expired batch has none.
- **Cancel**: `POST {base}/batches/{id}:cancel` (an empty answer), then the batch as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from imgsave.adapters.imageapi.batch_api import (
    BatchInfo,
    BatchUnavailable,
    LineResult,
    line_result,
)
from imgsave.adapters.imageapi.batch_http import BatchHttp, paged
from imgsave.adapters.imageapi.kinds import kind_named
from imgsave.adapters.imageapi.kinds.gemini import GeminiWire
from imgsave.adapters.imageapi.wires import Answer
from imgsave.core.batch_lines import (
    Oversized,
    display_name,
    gemini_request_line,
    identity_of,
    line_cap,
    parse_gemini_result,
)
from imgsave.core.image_bytes import decode_base64
from imgsave.core.settings import Settings
from imgsave.errors import UsageError

# Google's states (BATCH_STATE_* in the REST API, JOB_STATE_* in the SDK) in the shared words.
STATES = {
    "UNSPECIFIED": "validating",
    "PENDING": "validating",
    "QUEUED": "validating",
    "RUNNING": "in_progress",
    "SUCCEEDED": "completed",
    "PARTIALLY_SUCCEEDED": "completed",
    "FAILED": "failed",
    "CANCELLING": "cancelling",
    "CANCELLED": "cancelled",
    "EXPIRED": "expired",
}
JSONL = "application/jsonl"


class GeminiBatchApi:
    kind = "gemini"

    def __init__(
        self,
        settings: Settings,
        *,
        page_size: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        """The Batch API of the configured Gemini API (UsageError without a base URL);
        `transport` and `sleep` are for tests."""
        base = settings.api_base
        if not base:
            raise UsageError(kind_named("gemini").facts.no_image_api())
        self._base = base.rstrip("/")
        self._upload = _beside(self._base, "upload")
        self._download = _beside(self._base, "download")
        self._settings = settings
        self._model = (settings.model or "").removeprefix("models/")
        self._wire = GeminiWire(self._base, settings.model, settings.provider)
        self._page_size = page_size
        self.line_cap = line_cap(settings.store.max_image_bytes)
        key = settings.api_key
        self._http = BatchHttp(
            {"x-goog-api-key": key} if key else {}, (key or "",), cap=self.line_cap,
            provider=settings.provider, transport=transport,
            sleep=sleep,
        )  # fmt: skip

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    def request_line(self, custom_id: str, prompt: str) -> bytes:
        # The body a synchronous request sends ([provider.params] as its generationConfig).
        return gemini_request_line(custom_id, self._wire.body(prompt))

    async def upload(self, content: bytes, *, display_name: str) -> str:
        async def attempt() -> str:
            _, headers = await self._http.send(
                "start the batch input's upload", "POST", self._upload + "/files",
                retry=False, no_api_on_404=True,
                headers={
                    "X-Goog-Upload-Protocol": "resumable",
                    "X-Goog-Upload-Command": "start",
                    "X-Goog-Upload-Header-Content-Length": str(len(content)),
                    "X-Goog-Upload-Header-Content-Type": JSONL,
                },
                json={"file": {"display_name": display_name}},
            )  # fmt: skip
            target = headers.get("x-goog-upload-url")
            if not target:
                raise BatchUnavailable("the upload's start answered no x-goog-upload-url")
            payload, headers = await self._http.send(
                "upload the batch's input", "POST", _on_origin(target, self._base), retry=False,
                headers={"X-Goog-Upload-Command": "upload, finalize", "X-Goog-Upload-Offset": "0"},
                content=content,
            )  # fmt: skip
            file = payload.get("file") if isinstance(payload, dict) else None
            name = file.get("name") if isinstance(file, dict) else None
            status = headers.get("x-goog-upload-status")
            if not isinstance(name, str) or not name or status not in (None, "final"):
                raise BatchUnavailable("the upload's answer names no finished file")
            return name

        return await self._http.again("upload the batch's input", attempt)

    async def create(self, input_file: str, *, db_id: str, run: str) -> BatchInfo:
        if not self._model:
            raise UsageError("a Gemini batch names its model: set IMGSAVE_MODEL")
        body = {
            "batch": {
                "display_name": display_name(db_id, run),
                "input_config": {"file_name": input_file},
            }
        }
        url = f"{self._base}/models/{quote(self._model, safe='.-_')}:batchGenerateContent"
        payload, _ = await self._http.send(
            "create the batch", "POST", url, retry=False, no_api_on_404=True, json=body
        )
        return _info(payload)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        payload, _ = await self._http.send(
            f"read batch {batch_id}", "GET", f"{self._base}/{_batch(batch_id)}"
        )
        return _info(payload)

    async def listed(self) -> AsyncIterator[BatchInfo]:
        async def page(token: str | None) -> tuple[list[BatchInfo], str | None]:
            params: dict[str, str | int] = {"pageSize": self._page_size}
            if token:
                params["pageToken"] = token
            payload, _ = await self._http.send(
                "list the batches", "GET", self._base + "/batches", no_api_on_404=True,
                params=params,
            )  # fmt: skip
            if not isinstance(payload, dict | None):
                raise BatchUnavailable("cannot list the batches: the answer is not a list")
            payload = payload or {}
            # Google leaves an empty list out of its JSON.
            operations = payload.get("operations", [])
            if not isinstance(operations, list):
                raise BatchUnavailable("cannot list the batches: operations is not a list")
            following = payload.get("nextPageToken")
            return [_info(o) for o in operations], following if isinstance(following, str) else None

        async for batch in paged(page, "list the batches"):
            yield batch

    async def result_lines(self, batch: BatchInfo) -> AsyncIterator[bytes | Oversized]:
        if batch.output_file:
            url = f"{self._download}/{_file(batch.output_file)}:download?alt=media"
            async for line in self._http.lines(url, f"read the results of {batch.id}"):
                yield line

    def parse_line(self, raw: bytes | Oversized) -> LineResult:
        return line_result(
            raw, id_field="key", line_cap=self.line_cap, parse=parse_gemini_result,
            answer=self._answer,
        )  # fmt: skip

    def _answer(self, response: dict[str, Any]) -> Answer:
        return self._wire.read(response, _decoded(response), allow_http=self._settings.allow_http)

    async def output_expires_at(self, batch: BatchInfo) -> int | None:
        if not batch.output_file:
            return None
        payload, _ = await self._http.send(
            f"read file {batch.output_file}", "GET", f"{self._base}/{_file(batch.output_file)}"
        )
        value = payload.get("expirationTime") if isinstance(payload, dict) else None
        return _epoch(value)

    async def cancel(self, batch_id: str) -> BatchInfo:
        await self._http.send(
            f"cancel batch {batch_id}", "POST", f"{self._base}/{_batch(batch_id)}:cancel"
        )
        return await self.retrieve(batch_id)


def _info(payload: Any) -> BatchInfo:
    """A batch's operation in the shared vocabulary."""
    name = payload.get("name") if isinstance(payload, dict) else None
    if not isinstance(name, str) or not name.startswith("batches/"):
        raise BatchUnavailable("the Batch API answered something that is not a batch")
    metadata = payload.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    state = str(metadata.get("state") or "")
    status = STATES.get(state.removeprefix("BATCH_STATE_").removeprefix("JOB_STATE_"))
    if payload.get("done") and isinstance(payload.get("error"), dict):
        status = "failed"
    stats = metadata.get("batchStats")
    stats = stats if isinstance(stats, dict) else {}
    output = metadata.get("output")
    if not isinstance(output, dict):
        output = payload.get("response")
    inputs = metadata.get("inputConfig")
    inputs = inputs if isinstance(inputs, dict) else {}
    shown = metadata.get("displayName")
    identity = identity_of(shown) if isinstance(shown, str) else None
    return BatchInfo(
        id=name,
        kind="gemini",
        # A state this code does not know is one that has not ended: the batch is waited for.
        status=status or "in_progress",
        created_at=_epoch(metadata.get("createTime")) or 0,
        input_file=_text(inputs.get("fileName") or inputs.get("file_name")),
        total=_count(stats.get("requestCount")),
        completed=_count(stats.get("successfulRequestCount")),
        failed=_count(stats.get("failedRequestCount")),
        expires_at=None,
        db_id=identity[0] if identity else None,
        run=identity[1] if identity else None,
        output_file=_text(output.get("responsesFile")) if isinstance(output, dict) else None,
    )


def _decoded(response: dict[str, Any]) -> dict[int, tuple[bytes, bool]]:
    """Each image part's inlineData decoded, in order: (bytes, True), or (the text as sent,
    False) where no decoding reads it (paid for, so kept). The base64 is dropped from the
    response as soon as it is decoded."""
    decoded: dict[int, tuple[bytes, bool]] = {}
    candidates = response.get("candidates")
    for candidate in candidates if isinstance(candidates, list) else ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            inline = part.get("inlineData") if isinstance(part, dict) else None
            if not isinstance(inline, dict):
                continue
            mime, text = inline.get("mimeType"), inline.get("data")
            if isinstance(mime, str) and mime.startswith("image/") and isinstance(text, str):
                data = decode_base64(text)
                decoded[len(decoded)] = (data, True) if data is not None else (text.encode(), False)
                inline["data"] = None  # megabytes: dropped as soon as it is decoded
    return decoded


def _beside(base: str, kind: str) -> str:
    """The base URL with `upload` or `download` before its last path segment (the version)."""
    parts = urlsplit(base)
    head, _, version = parts.path.rstrip("/").rpartition("/")
    path = f"{head}/{kind}/{version}" if version else f"/{kind}"
    return urlunsplit(parts._replace(path=path, query="", fragment=""))


def _on_origin(url: str, base: str) -> str:
    """`url` on the base URL's origin (scheme, host and port), its path and query kept."""
    target, origin = urlsplit(url), urlsplit(base)
    if target.path.startswith("/") or not target.scheme:
        return urlunsplit(target._replace(scheme=origin.scheme, netloc=origin.netloc))
    raise BatchUnavailable("the upload's start answered an upload URL that is not one")


def _batch(batch_id: str) -> str:
    """`batches/{id}` for an id given with or without its prefix, the id as one path segment."""
    return "batches/" + quote(batch_id.removeprefix("batches/"), safe="-_.~")


def _file(name: str) -> str:
    return "files/" + quote(name.removeprefix("files/"), safe="-_.~")


def _count(value: object) -> int:
    """An int64 as Google's JSON writes it (a string), or absent (zero)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _epoch(value: object) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except ValueError:
        return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
