"""The Batch API of the configured image API (`batch_api_for`): OpenAI's and Azure OpenAI's
(batch_openai.py) or the Gemini API's (batch_gemini.py), behind one interface (batch_api.py,
whose docstring says the rules: statuses, identity, results, money, errors).

`BatchClient` is the interface the batch operations were written against before the ledger
(OpenAI's files by id, metadata passed as given, lines read as bytes); it stands on the OpenAI
implementation and serves only the kinds it served, until the operations use `BatchApi`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Self

from imgsave.adapters.imageapi.batch_api import (
    FINISHED,
    BatchApi,
    BatchInfo,
    BatchRefused,
    BatchUnavailable,
    LineResult,
    NoBatchApi,
)
from imgsave.adapters.imageapi.batch_gemini import GeminiBatchApi
from imgsave.adapters.imageapi.batch_openai import OpenAIBatchApi
from imgsave.core.batch_lines import Oversized
from imgsave.core.settings import Settings
from imgsave.errors import UsageError

# The kinds of image API that sell a batch, and the implementation of each.
BATCH_APIS: dict[str, type[OpenAIBatchApi] | type[GeminiBatchApi]] = {
    "openai": OpenAIBatchApi,
    "azure": OpenAIBatchApi,
    "gemini": GeminiBatchApi,
}
BATCH_KINDS = frozenset(BATCH_APIS)

__all__ = [
    "BATCH_KINDS",
    "FINISHED",
    "BatchApi",
    "BatchClient",
    "BatchInfo",
    "BatchRefused",
    "BatchUnavailable",
    "LineResult",
    "NoBatchApi",
    "Oversized",
    "batch_api_for",
]


def batch_api_for(settings: Settings, *, max_attempts: int = 5) -> BatchApi:
    """The configured kind's Batch API; UsageError (exit 2) for a kind without one, or with no
    image API configured."""
    kind = settings.provider.kind
    if kind not in BATCH_APIS:
        raise UsageError(no_batch_api(kind))
    return BATCH_APIS[kind](settings, max_attempts=max_attempts)


def no_batch_api(kind: str) -> str:
    return f"the {kind} API has no Batch API imgsave can use: generate without --batch"


class BatchClient:
    """The operations' client before the ledger, on OpenAI's Batch API (openai and azure)."""

    def __init__(self, api: OpenAIBatchApi):
        self._api = api

    @classmethod
    def from_settings(cls, settings: Settings, *, max_attempts: int = 5) -> Self:
        kind = settings.provider.kind
        if kind not in ("openai", "azure"):
            raise UsageError(no_batch_api(kind))
        return cls(OpenAIBatchApi(settings, max_attempts=max_attempts))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._api.__aexit__(*exc_info)

    async def upload(self, content: bytes, filename: str = "imgsave-batch.jsonl") -> str:
        return await self._api.upload(content, display_name=filename)

    async def create(self, input_file_id: str, metadata: dict[str, str]) -> BatchInfo:
        return await self._api.create_with_metadata(input_file_id, metadata)

    async def retrieve(self, batch_id: str) -> BatchInfo:
        return await self._api.retrieve(batch_id)

    async def file_expires_at(self, file_id: str) -> int | None:
        return await self._api.file_expires_at(file_id)

    async def cancel(self, batch_id: str) -> BatchInfo:
        return await self._api.cancel(batch_id)

    def listed(self) -> AsyncIterator[BatchInfo]:
        return self._api.listed()

    async def lines(self, file_id: str) -> AsyncIterator[bytes]:
        """The file's lines; a line over the cap as its head only, which no parse reads (so it
        counts as unreadable, never as an image)."""
        async for line in self._api.file_lines(file_id):
            yield line.head if isinstance(line, Oversized) else line
