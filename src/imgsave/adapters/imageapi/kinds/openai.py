"""OpenAI's Images API: `POST {base}/images/generations`, `Authorization: Bearer`; images in
`data[].b64_json` (every current GPT image model) or `data[].url` (a data: URI is the image
itself); a refusal is a 400 whose `error.code` says why (`moderation_blocked`). The Batch API
(`/files`, `/batches`) is imageapi/batches.py's."""

from __future__ import annotations

import json
from typing import Any

from imgsave.adapters.imageapi.kind import Kind
from imgsave.adapters.imageapi.wires import (
    Answer,
    Decoded,
    decoded_images,
    error_of,
    images_of,
    request_body,
)
from imgsave.core.kind_facts import KindFacts
from imgsave.core.settings import ProviderSettings


class OpenAIWire:
    kind = "openai"

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        self.url = base_url.rstrip("/") + "/images/generations"
        self._model = model
        self._settings = settings

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def body(self, prompt: str) -> dict[str, Any]:
        return request_body(prompt, self._model, self._settings)

    def parse(self, content: bytes) -> tuple[Any, Decoded]:
        payload = json.loads(content)
        return payload, decoded_images(payload)

    def read(self, payload: Any, decoded: Decoded, *, allow_http: bool) -> Answer:
        items = payload.get("data") if isinstance(payload, dict) else None
        if not isinstance(items, list) or not items:
            return Answer([], problems=["the answer holds no data[] with an image"])
        return images_of(payload, decoded, allow_http=allow_http)

    def refusal(self, status: int, payload: Any) -> str | None:
        code = error_of(payload).get("code")
        return code if isinstance(code, str) and code else None

    def key_refused(self, status: int, payload: Any) -> bool:
        return status in (401, 403)


KIND = Kind(
    KindFacts(
        name="openai",
        default_base_url="https://api.openai.com/v1",
        key_variable="OPENAI_API_KEY",
        needs_model=False,
        has_jobs=False,
        has_batch=True,
    ),
    wire=OpenAIWire,
)
