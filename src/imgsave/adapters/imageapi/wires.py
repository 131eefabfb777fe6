"""What image APIs that answer a request with its images have in common: the answer and its
images, the wire each such API implements (kinds/openai.py, kinds/azure.py, kinds/gemini.py),
and the OpenAI answer's shape, which the Batch API's output lines share. The transport,
deadlines, pace and retry accounting around a wire are the same for every API (client.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from imgsave.core.image_bytes import decode_base64, decode_data_uri
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

    def key_refused(self, status: int, payload: Any) -> bool:
        """Whether an error answer says the API key itself is refused (the run stops)."""
        ...


def error_of(payload: Any) -> dict[str, Any]:
    """An error answer's `error` object (OpenAI's and Google's shape), or {}."""
    error = payload.get("error") if isinstance(payload, dict) else None
    return error if isinstance(error, dict) else {}


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
        if isinstance(url, str) and url[:5].lower() == "data:" and n not in decoded:
            # The image itself, in the URL: paid for, so decoded, never refused as a URL.
            data = decode_data_uri(url)
            answer.images.append(
                Received(data=data)
                if data is not None
                else Received(data=url.encode(), undecodable=True)
            )
            continue
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
