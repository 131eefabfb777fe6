"""OpenAI's Batch API (adapters/imageapi/batches.BatchClient) behind the interface the batch
operations use (batches.BatchApi). Temporary: the Batch API adapters are being rebuilt behind
that interface (OpenAI, Azure and Gemini), and this goes when they land."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from imgsave.adapters.imageapi.batches import BATCH_KINDS, BatchClient, BatchInfo
from imgsave.adapters.imageapi.wires import Received, decoded_images, images_of, request_body
from imgsave.core.batch_lines import UnreadableLine, parse_result, request_line
from imgsave.core.settings import Settings, no_image_api
from imgsave.errors import UsageError


@dataclass(frozen=True)
class Batch:
    id: str
    status: str
    created_at: int
    total: int
    completed: int
    failed: int
    input_file: str | None
    output_file: str | None
    error_file: str | None
    expires_at: int | None
    db_id: str | None

    @property
    def finished(self) -> bool:
        return self.status in ("completed", "expired", "cancelled", "failed")

    @classmethod
    def of(cls, info: BatchInfo) -> Batch:
        return cls(
            info.id, info.status, info.created_at, info.total, info.completed, info.failed,
            info.input_file_id, info.output_file_id, info.error_file_id, info.expires_at,
            info.metadata.get("imgsave_db"),
        )  # fmt: skip


@dataclass
class Line:
    custom_id: str | None
    images: list[Received] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)
    code: str | None = None
    message: str | None = None
    unreadable: bool = False


class OpenAIBatches:
    def __init__(self, client: BatchClient, settings: Settings):
        self.kind = settings.provider.kind
        self._client = client
        self._settings = settings

    @classmethod
    def supported(cls, settings: Settings) -> bool:
        return settings.provider.kind in BATCH_KINDS

    def request_line(self, custom_id: str, prompt: str) -> bytes:
        body = request_body(prompt, self._settings.model, self._settings.provider)
        return request_line(custom_id, body)

    async def upload(self, content: bytes, *, display_name: str) -> str:
        return await self._client.upload(content)

    async def create(self, input_file: str, *, db_id: str, run: str) -> Batch:
        metadata = {"imgsave": "1", "imgsave_db": db_id, "imgsave_run": run}
        return Batch.of(await self._client.create(input_file, metadata))

    async def retrieve(self, batch_id: str) -> Batch:
        return Batch.of(await self._client.retrieve(batch_id))

    async def listed(self) -> AsyncIterator[Batch]:
        async for info in self._client.listed():
            yield Batch.of(info)

    async def result_lines(self, batch: Any) -> AsyncIterator[Any]:
        for file_id in (batch.output_file, batch.error_file):
            if file_id:
                async for line in self._client.lines(file_id):
                    yield line

    def parse_line(self, raw: Any) -> Line:
        try:
            result = parse_result(raw)
        except UnreadableLine as exc:
            return Line(None, unreadable=True, message=str(exc))
        if not result.ok:
            return Line(result.custom_id, code=result.code or "error", message=result.message)
        body = result.body or {}
        answer = images_of(body, decoded_images(body), allow_http=self._settings.allow_http)
        return Line(result.custom_id, answer.images, answer.usage)

    async def cancel(self, batch_id: str) -> Batch:
        return Batch.of(await self._client.cancel(batch_id))

    async def file_expires_at(self, file_id: str) -> int | None:
        return await self._client.file_expires_at(file_id)


@contextlib.asynccontextmanager
async def opened_batch_api(
    settings: Settings, *, required: bool = False
) -> AsyncIterator[OpenAIBatches | None]:
    """The configured kind's Batch API, or None where the kind has none or no image API was
    configured (a default base with no key is no one's); with `required`, UsageError then."""
    if not OpenAIBatches.supported(settings) or not (settings.base_url or settings.api_key):
        if required:
            if not OpenAIBatches.supported(settings):
                raise UsageError(
                    f"the {settings.provider.kind} API has no Batch API imgsave can use: "
                    "generate without --batch"
                )
            raise UsageError(no_image_api(settings.provider.kind))
        yield None
        return
    async with BatchClient.from_settings(settings) as client:
        yield OpenAIBatches(client, settings)
