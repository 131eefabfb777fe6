"""What differs between image APIs that answer a request with its images: where the request
goes, how the key is sent, the body, how the answer holds its images, and how the API says it
refused a prompt. The transport, deadlines, pace and retry accounting around them are the
same for every API (client.py).

- `openai`: `POST {base}/images/generations`, `Authorization: Bearer`; images in
  `data[].b64_json` or `data[].url`; a refusal is a 400 whose `error.code` says why
  (`moderation_blocked`).
- `azure`: `POST {base}/openai/deployments/{deployment}/images/generations?api-version=V`,
  header `api-key`; answers as OpenAI.
- `gemini`: `POST {base}/models/{model}:generateContent`, header `x-goog-api-key`, body
  `{"contents": [{"parts": [{"text": PROMPT}]}], "generationConfig": {...params}}`; images in
  `candidates[].content.parts[].inlineData {mimeType, data}`; a refusal is a 200 with
  `promptFeedback.blockReason`, or a candidate whose `finishReason` is not `STOP`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from imgsave.core.image_bytes import decode_base64
from imgsave.core.settings import ProviderSettings
from imgsave.core.url_rule import shorten, url_problem

# Each answer's images, by position, decoded: (bytes, True), or (the text as sent, False)
# where no decoding reads it (paid for, so kept).
Decoded = dict[int, tuple[bytes, bool]]


@dataclass(frozen=True)
class Received:
    """One image of an answer: its bytes (b64_json), or the provider's URL (url), or both."""

    data: bytes | None = None
    url: str | None = None
    # `data` is the answer's base64 text as sent, which no decoding could read: paid for,
    # so it is kept (spooled raw), never dropped and never asked for again.
    undecodable: bool = False


@dataclass
class Answer:
    images: list[Received]
    # The provider's token counts for this request, summed by name.
    usage: dict[str, int] = field(default_factory=dict)
    possibly_billed_retries: int = 0
    # Entries of the answer that held no usable image, each said in one line.
    problems: list[str] = field(default_factory=list)
    # The provider refused the prompt in a 200 (Gemini's block reasons): why, in its words.
    refusal: str | None = None
    # URLs the answer held that imgsave will not save (url_rule): the provider's answer, not a
    # fault, so asking again would only pay again.
    refused_urls: int = 0
    # The provider's job these images came from (jobs.py), logged with each of them.
    job: str | None = None


class Wire(Protocol):
    kind: str
    url: str

    def headers(self, api_key: str | None) -> dict[str, str]: ...

    def body(self, prompt: str) -> dict[str, Any]: ...

    def parse(self, content: bytes) -> tuple[Any, Decoded]:
        """The answer's JSON and its images decoded (ValueError: not JSON). Run in a worker
        thread for a large answer: megabytes of base64."""
        ...

    def read(self, payload: Any, decoded: Decoded, *, allow_http: bool) -> Answer: ...

    def refusal(self, status: int, payload: Any) -> str | None:
        """Why a 4xx answer refused this prompt, in the provider's words (its error code)."""
        ...


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
        error = payload.get("error") if isinstance(payload, dict) else None
        code = error.get("code") if isinstance(error, dict) else None
        return code if isinstance(code, str) and code else None


class AzureWire(OpenAIWire):
    """Azure OpenAI: the deployment (IMGSAVE_MODEL) is in the path, not the body."""

    kind = "azure"

    def __init__(self, base_url: str, model: str | None, settings: ProviderSettings):
        super().__init__(base_url, None, settings)
        deployment = quote(model or "", safe="")
        self.url = (
            f"{base_url.rstrip('/')}/openai/deployments/{deployment}/images/generations"
            f"?api-version={quote(settings.api_version, safe='')}"
        )

    def headers(self, api_key: str | None) -> dict[str, str]:
        return {"api-key": api_key} if api_key else {}


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
            usage=_gemini_usage(usage),
        )
        if answer.images:
            return answer  # an image in hand is kept, whatever else the answer says
        feedback = payload.get("promptFeedback") if isinstance(payload, dict) else None
        blocked = feedback.get("blockReason") if isinstance(feedback, dict) else None
        candidates = payload.get("candidates") if isinstance(payload, dict) else None
        finishes = [
            c.get("finishReason")
            for c in (candidates if isinstance(candidates, list) else [])
            if isinstance(c, dict)
        ]
        stopped = [f for f in finishes if isinstance(f, str) and f not in ("STOP", "")]
        if isinstance(blocked, str) and blocked:
            answer.refusal = blocked
        elif stopped:
            answer.refusal = stopped[0]
        if answer.refusal:
            answer.problems.append(f"the image API refused the prompt: {answer.refusal}")
        else:
            answer.problems.append("the answer holds no candidates[].content.parts[].inlineData")
        return answer

    def refusal(self, status: int, payload: Any) -> str | None:
        error = payload.get("error") if isinstance(payload, dict) else None
        reason = error.get("status") if isinstance(error, dict) else None
        return reason if isinstance(reason, str) and reason else None


WIRES: dict[str, type[OpenAIWire] | type[GeminiWire]] = {
    "openai": OpenAIWire,
    "azure": AzureWire,
    "gemini": GeminiWire,
}


def wire_for(kind: str, base_url: str, model: str | None, settings: ProviderSettings) -> Wire:
    return WIRES[kind](base_url, model, settings)


def _inline_images(payload: Any) -> list[dict[str, Any]]:
    """Every inlineData part of every candidate holding an image, in order."""
    found: list[dict[str, Any]] = []
    candidates = payload.get("candidates") if isinstance(payload, dict) else None
    for candidate in candidates if isinstance(candidates, list) else ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            # The REST API writes camelCase; some SDK dumps write snake_case.
            inline = (
                (part.get("inlineData") or part.get("inline_data"))
                if isinstance(part, dict)
                else None
            )
            mime = (
                inline.get("mimeType") or inline.get("mime_type")
                if isinstance(inline, dict)
                else None
            )
            if isinstance(inline, dict) and isinstance(mime, str) and mime.startswith("image/"):
                found.append(inline)
    return found


def _gemini_usage(value: Any) -> dict[str, int]:
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


def request_body(prompt: str, model: str | None, settings: ProviderSettings) -> dict[str, Any]:
    """One image request's body, for `POST /images/generations` and a batch's lines alike."""
    body: dict[str, Any] = {"prompt": prompt, "n": 1, "size": settings.size, **settings.params}
    if model:
        body["model"] = model
    return body


def images_of(payload: Any, decoded: Decoded, *, allow_http: bool) -> Answer:
    """The images an OpenAI answer's JSON carries (`decoded`: its data[n].b64_json, decoded),
    with a line for each entry that held none. A synchronous answer and a batch's output line
    are read alike."""
    items = payload.get("data") if isinstance(payload, dict) else None
    answer = Answer([], usage=_usage(payload.get("usage") if isinstance(payload, dict) else None))
    for n, item in enumerate(items if isinstance(items, list) else ()):
        entry: dict[str, Any] = item if isinstance(item, dict) else {}
        url = entry.get("url")
        if not isinstance(url, str):
            url = None
        elif problem := url_problem(url, allow_http=allow_http):
            answer.problems.append(
                f"image API answered with a URL imgsave will not save ({problem}): {shorten(url)!r}"
            )
            answer.refused_urls += 1
            url = None
        if n in decoded:
            data, ok = decoded[n]
            answer.images.append(Received(data=data, url=url, undecodable=not ok))
        elif url is not None:
            answer.images.append(Received(url=url))
        elif not isinstance(entry.get("url"), str):
            answer.problems.append(f"data[{n}] holds neither b64_json nor url")
    return answer


def decoded_images(payload: Any) -> Decoded:
    """Each data[n].b64_json decoded: (bytes, True), or (the text as sent, False) where no
    decoding reads it. The base64 text is dropped from the payload as soon as it is decoded:
    megabytes each."""
    decoded: Decoded = {}
    items = payload.get("data") if isinstance(payload, dict) else None
    for n, item in enumerate(items if isinstance(items, list) else ()):
        text = item.get("b64_json") if isinstance(item, dict) else None
        if isinstance(text, str) and text:
            data = decode_base64(text)
            decoded[n] = (data, True) if data is not None else (text.encode("utf-8"), False)
            item["b64_json"] = None
    return decoded


def _usage(value: Any) -> dict[str, int]:
    """The answer's top-level token counts (input_tokens, output_tokens, total_tokens, ...)."""
    if not isinstance(value, dict):
        return {}
    return {
        str(k): int(v) for k, v in value.items() if isinstance(v, int) and not isinstance(v, bool)
    }
