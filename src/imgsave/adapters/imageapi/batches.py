"""The Batch API of the configured image API (`batch_api_for`): OpenAI's and Azure OpenAI's
(batch_openai.py) or the Gemini API's (batch_gemini.py), behind one interface (batch_api.py,
whose docstring says the rules: statuses, identity, results, money, errors)."""

from __future__ import annotations

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
    "BatchInfo",
    "BatchRefused",
    "BatchUnavailable",
    "LineResult",
    "NoBatchApi",
    "Oversized",
    "batch_api_for",
]


def batch_api_for(settings: Settings) -> BatchApi:
    """The configured kind's Batch API; UsageError (exit 2) for a kind without one, or with no
    image API configured."""
    kind = settings.provider.kind
    if kind not in BATCH_APIS:
        raise UsageError(no_batch_api(kind))
    return BATCH_APIS[kind](settings)


def no_batch_api(kind: str) -> str:
    return f"the {kind} API has no Batch API imgsave can use: generate without --batch"
