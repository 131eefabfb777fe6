"""OpenAI's Batch API, and Azure OpenAI's (the same API at `{endpoint}/openai/v1`, key in
`api-key`), as openai-python's types document it: upload a JSONL of requests (`POST /files`,
purpose `batch`), create a batch (`POST /batches` with `metadata` naming this database and run),
follow it (`GET /batches/{id}`), list every batch (`GET /batches?after=&limit=`, newest first),
stream its output and error files (`GET /files/{id}/content`), cancel (`POST
/batches/{id}/cancel`). The interface and its rules are batch_api.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Self

import httpx

from imgsave.adapters.imageapi.batch_api import (
    BatchInfo,
    BatchUnavailable,
    LineResult,
    line_result,
)
from imgsave.adapters.imageapi.batch_http import BatchHttp, paged
from imgsave.adapters.imageapi.kinds import kind_named
from imgsave.adapters.imageapi.wires import Answer, decoded_images, images_of, request_body
from imgsave.core.batch_lines import (
    ENDPOINT,
    Oversized,
    batch_metadata,
    identity_in_metadata,
    line_cap,
    parse_result,
    request_line,
)
from imgsave.core.settings import Settings
from imgsave.errors import UsageError


class OpenAIBatchApi:
    kind = "openai"

    def __init__(
        self,
        settings: Settings,
        *,
        page_size: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        """The Batch API of the configured OpenAI or Azure OpenAI API (UsageError without a
        base URL); `transport` and `sleep` are for tests."""
        base = settings.api_base
        if not base:
            raise UsageError(kind_named(settings.provider.kind).facts.no_image_api())
        key = settings.api_key
        if settings.provider.kind == "azure":
            self.kind = "azure"
            base = base.rstrip("/") + "/openai/v1"
            headers = {"api-key": key} if key else {}
        else:
            headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._base = base.rstrip("/")
        self._settings = settings
        self._page_size = page_size
        images = settings.provider.params.get("n", 1)
        self.line_cap = line_cap(
            settings.store.max_image_bytes, images if isinstance(images, int) else 1
        )
        self._http = BatchHttp(
            headers, (key or "",), cap=self.line_cap, provider=settings.provider,
            transport=transport, sleep=sleep,
        )  # fmt: skip

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._http.aclose()

    def request_line(self, custom_id: str, prompt: str) -> bytes:
        body = request_body(prompt, self._settings.model, self._settings.provider)
        return request_line(custom_id, body)

    async def upload(self, content: bytes, *, display_name: str) -> str:
        files = {"file": (display_name, content, "application/jsonl")}
        payload, _ = await self._http.send(
            "upload the batch's input", "POST", self._base + "/files", no_api_on_404=True,
            data={"purpose": "batch"}, files=files,
        )  # fmt: skip
        file_id = payload.get("id") if isinstance(payload, dict) else None
        if not isinstance(file_id, str):
            raise BatchUnavailable("the upload's answer names no file id")
        return file_id

    async def create(self, input_file: str, *, db_id: str, run: str) -> BatchInfo:
        return await self.create_with_metadata(input_file, batch_metadata(db_id, run))

    async def create_with_metadata(self, input_file: str, metadata: dict[str, str]) -> BatchInfo:
        """create, with the metadata given (the operations written before the ledger name their
        claims there too)."""
        body = {
            "input_file_id": input_file,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": metadata,
        }
        payload, _ = await self._http.send(
            "create the batch", "POST", self._base + "/batches", retry=False,
            no_api_on_404=True, json=body,
        )  # fmt: skip
        return self._info(payload)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        payload, _ = await self._http.send(
            f"read batch {batch_id}", "GET", f"{self._base}/batches/{batch_id}"
        )
        return self._info(payload)

    async def listed(self) -> AsyncIterator[BatchInfo]:
        async def page(after: str | None) -> tuple[list[BatchInfo], str | None]:
            params: dict[str, str | int] = {"limit": self._page_size}
            if after:
                params["after"] = after
            payload, _ = await self._http.send(
                "list the batches", "GET", self._base + "/batches", no_api_on_404=True,
                params=params,
            )  # fmt: skip
            data = payload.get("data") if isinstance(payload, dict) else None
            if not isinstance(data, list):
                raise BatchUnavailable("cannot list the batches: the answer holds no data[]")
            found = [self._info(item) for item in data]
            if not payload.get("has_more"):
                return found, None
            last = payload.get("last_id") or (found[-1].id if found else None)
            if not isinstance(last, str) or not last:
                raise BatchUnavailable(
                    "cannot list the batches: the API says there is more and names no cursor"
                )
            return found, last

        async for batch in paged(page, "list the batches"):
            yield batch

    async def result_lines(self, batch: BatchInfo) -> AsyncIterator[bytes | Oversized]:
        for file_id in (batch.output_file, batch.error_file):
            if file_id:
                async for line in self.file_lines(file_id):
                    yield line

    def file_lines(self, file_id: str) -> AsyncIterator[bytes | Oversized]:
        """Any file's lines (an input file too), streamed within the cap."""
        return self._http.lines(f"{self._base}/files/{file_id}/content", f"read file {file_id}")

    def parse_line(self, raw: bytes | Oversized) -> LineResult:
        return line_result(
            raw, id_field="custom_id", line_cap=self.line_cap, parse=parse_result,
            answer=self._answer,
        )  # fmt: skip

    def _answer(self, body: dict[str, Any]) -> Answer:
        return images_of(body, decoded_images(body), allow_http=self._settings.allow_http)

    async def output_expires_at(self, batch: BatchInfo) -> int | None:
        return await self.file_expires_at(batch.output_file) if batch.output_file else None

    async def file_expires_at(self, file_id: str) -> int | None:
        """When the provider deletes the file (its output, with every image in it)."""
        payload, _ = await self._http.send(
            f"read file {file_id}", "GET", f"{self._base}/files/{file_id}"
        )
        value = payload.get("expires_at") if isinstance(payload, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    async def cancel(self, batch_id: str) -> BatchInfo:
        payload, _ = await self._http.send(
            f"cancel batch {batch_id}", "POST", f"{self._base}/batches/{batch_id}/cancel"
        )
        return self._info(payload)

    def _info(self, payload: Any) -> BatchInfo:
        """A batch (openai-python's `Batch`) in the shared vocabulary (the same as its own)."""
        if not isinstance(payload, dict) or not isinstance(payload.get("id"), str):
            raise BatchUnavailable("the Batch API answered something that is not a batch")
        counts = payload.get("request_counts")
        counts = counts if isinstance(counts, dict) else {}
        metadata = payload.get("metadata")
        metadata = (
            {str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) else {}
        )
        db_id, run = identity_in_metadata(metadata)
        return BatchInfo(
            id=payload["id"],
            kind=self.kind,
            status=str(payload.get("status")),
            created_at=_int(payload.get("created_at")) or 0,
            input_file=_text(payload.get("input_file_id")),
            total=_int(counts.get("total")) or 0,
            completed=_int(counts.get("completed")) or 0,
            failed=_int(counts.get("failed")) or 0,
            expires_at=_int(payload.get("expires_at")),
            db_id=db_id,
            run=run,
            output_file=_text(payload.get("output_file_id")),
            error_file=_text(payload.get("error_file_id")),
            metadata=metadata,
        )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
