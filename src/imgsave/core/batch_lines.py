"""The lines of a Batch API's files, as the provider documents them. Pure.

Input (one request per line): `{"custom_id", "method": "POST", "url":
"/v1/images/generations", "body": {...}}`. Output and error files: `{"id", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}`, where a request the API refused
has a 4xx `status_code` and `body.error`, and one that never ran has `error: {code, message}`
instead of a response. Lines are matched to requests by `custom_id`, never by position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ENDPOINT = "/v1/images/generations"


def request_line(custom_id: str, body: dict[str, Any]) -> bytes:
    """One input line, newline included."""
    line = {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": body}
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


@dataclass(frozen=True)
class BatchResult:
    """One output or error line: the answer's body when the request succeeded, else the
    provider's code (`moderation_blocked`, ...) and message."""

    custom_id: str
    body: dict[str, Any] | None
    code: str | None = None
    message: str | None = None

    @property
    def ok(self) -> bool:
        return self.body is not None


class UnreadableLine(ValueError):
    """A line that is not one of the documented shapes."""


def parse_result(raw: bytes | str) -> BatchResult:
    """One line of an output or error file; UnreadableLine when it is neither."""
    try:
        line = json.loads(raw)
    except ValueError:
        raise UnreadableLine("not JSON") from None
    if not isinstance(line, dict) or not isinstance(line.get("custom_id"), str):
        raise UnreadableLine("no custom_id")
    custom_id = line["custom_id"]
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict):
        status = response.get("status_code")
        body = response.get("body")
        if status == 200 and isinstance(body, dict):
            return BatchResult(custom_id, body)
        detail = body.get("error") if isinstance(body, dict) else None
        if isinstance(detail, dict):
            return BatchResult(custom_id, None, _text(detail.get("code")) or f"http_{status}",
                               _text(detail.get("message")))  # fmt: skip
        return BatchResult(custom_id, None, f"http_{status}", None)
    if isinstance(error, dict):
        return BatchResult(custom_id, None, _text(error.get("code")) or "error",
                           _text(error.get("message")))  # fmt: skip
    raise UnreadableLine(f"{custom_id}: neither a response nor an error")


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
