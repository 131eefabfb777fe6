"""The Gemini API: `POST {base}/models/{model}:generateContent`, header `x-goog-api-key`, body
`{"contents": [{"parts": [{"text": PROMPT}]}], "generationConfig": {...params}}`; images in
`candidates[].content.parts[].inlineData {mimeType, data}`; a refusal is a 200 with
`promptFeedback.blockReason`, or a candidate whose `finishReason` is not `STOP`.

Google's errors are `{"error": {code, message, status, details}}`: a wrong or expired key is a
400 INVALID_ARGUMENT whose `details` hold an ErrorInfo with reason `API_KEY_INVALID` (or
another `API_KEY_*`), not a 401, and it stops the run like any refused key.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from imgsave.adapters.imageapi.kind import Kind
from imgsave.adapters.imageapi.wires import Answer, Decoded, Received, error_of
from imgsave.core.image_bytes import decode_base64
from imgsave.core.kind_facts import KindFacts
from imgsave.core.settings import ProviderSettings

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


class GeminiWire:
    kind = "gemini"

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        name = (model or "").removeprefix("models/")
        self.url = f"{base_url.rstrip('/')}/models/{quote(name, safe='.-_')}:generateContent"
        self._settings = settings

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-goog-api-key": api_key} if api_key else {}

    def body(self, prompt: str) -> dict[str, Any]:
        body: dict[str, Any] = {"contents": [{"parts": [{"text": prompt}]}]}
        if self._settings.params:
            body["generationConfig"] = dict(self._settings.params)
        return body

    def parse(self, content: bytes) -> tuple[Any, Decoded]:
        payload = json.loads(content)
        decoded: Decoded = {}
        for n, inline in enumerate(_inline_images(payload)):
            text = inline.get("data")
            if isinstance(text, str) and text:
                data = decode_base64(text)
                decoded[n] = (data, True) if data is not None else (text.encode("utf-8"), False)
                inline["data"] = None  # megabytes: dropped as soon as it is decoded
        return payload, decoded

    def read(self, payload: Any, decoded: Decoded, *, allow_http: bool) -> Answer:
        usage = payload.get("usageMetadata") if isinstance(payload, dict) else None
        answer = Answer(
            [Received(data=data, undecodable=not ok) for _, (data, ok) in sorted(decoded.items())],
            usage=_usage(usage),
        )
        if answer.images:
            return answer  # an image in hand is kept, whatever else the answer says
        answer.refusal = _block_reason(payload)
        if answer.refusal:
            answer.problems.append(f"the image API refused the prompt: {answer.refusal}")
        else:
            answer.problems.append("the answer holds no candidates[].content.parts[].inlineData")
        return answer

    def refusal(self, status: int, payload: Any) -> str | None:
        reason = error_of(payload).get("status")
        return reason if isinstance(reason, str) and reason else None

    def key_refused(self, status: int, payload: Any) -> bool:
        if status in (401, 403):
            return True
        details = error_of(payload).get("details")
        return any(
            isinstance(item, dict)
            and item.get("@type", ERROR_INFO) == ERROR_INFO
            and str(item.get("reason", "")).startswith("API_KEY_")
            for item in (details if isinstance(details, list) else ())
        )


def _block_reason(payload: Any) -> str | None:
    """Why a 200 holds no image: the prompt's block reason, or a candidate's finish reason."""
    feedback = payload.get("promptFeedback") if isinstance(payload, dict) else None
    blocked = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if isinstance(blocked, str) and blocked:
        return blocked
    candidates = payload.get("candidates") if isinstance(payload, dict) else None
    for candidate in candidates if isinstance(candidates, list) else ():
        finish = candidate.get("finishReason") if isinstance(candidate, dict) else None
        if isinstance(finish, str) and finish not in ("STOP", ""):
            return finish
    return None


def _inline_images(payload: Any) -> list[dict[str, Any]]:
    """Every inlineData part of every candidate holding an image, in order."""
    found: list[dict[str, Any]] = []
    candidates = payload.get("candidates") if isinstance(payload, dict) else None
    for candidate in candidates if isinstance(candidates, list) else ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if isinstance(part, dict) and (inline := _image_part(part)):
                found.append(inline)
    return found


def _image_part(part: dict[str, Any]) -> dict[str, Any] | None:
    # The REST API writes camelCase; some SDK dumps write snake_case.
    inline = part.get("inlineData") or part.get("inline_data")
    if not isinstance(inline, dict):
        return None
    mime = inline.get("mimeType") or inline.get("mime_type")
    return inline if isinstance(mime, str) and mime.startswith("image/") else None


def _usage(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    names = {
        "promptTokenCount": "input_tokens",
        "candidatesTokenCount": "output_tokens",
        "totalTokenCount": "total_tokens",
    }
    return {
        ours: int(value[theirs])
        for theirs, ours in names.items()
        if isinstance(value.get(theirs), int) and not isinstance(value.get(theirs), bool)
    }


KIND = Kind(
    KindFacts(
        name="gemini",
        default_base_url="https://generativelanguage.googleapis.com/v1beta",
        key_variable="GEMINI_API_KEY",
        needs_model=True,
        has_jobs=False,
        # The Gemini API sells a batch (batchGenerateContent): imageapi/batch_gemini.py.
        has_batch=True,
        # gemini-3.1-flash-image was deprecated on 2026-10-06 (checked 2026-12-07).
        model_hint="a model such as gemini-nano-banana-2.1",
    ),
    wire=GeminiWire,
    example_model="gemini-nano-banana-2.1",
    key_header="x-goog-api-key",
)
