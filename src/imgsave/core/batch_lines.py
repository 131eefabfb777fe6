"""The lines of a Batch API's files, as the provider documents them. Pure.

Input (one request per line): `{"custom_id", "method": "POST", "url":
"/v1/images/generations", "body": {...}}`. Output and error files: `{"id", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}`, where a request the API refused
has a 4xx `status_code` and `body.error`, and one that never ran has `error: {code, message}`
instead of a response. Lines are matched to requests by `custom_id`, never by position.
"""

from __future__ import annotations

import base64
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


# A request's custom_id names its project, scene and slot, readable by any host that collects
# the batch: nothing about a batch may live only in one host's log.
CUSTOM_ID_PREFIX = "ims1."
# Longer ids are refused rather than risked against a provider's limit.
MAX_CUSTOM_ID = 512


@dataclass(frozen=True)
class Slot:
    """One image a batch asks for: the `slot`-th new image of a scene."""

    project: str
    scene: int
    scene_id: str | None
    slot: int


def custom_id(slot: Slot) -> str | None:
    """The request's custom_id, or None when the project key or scene id is too long for one."""
    text = json.dumps(
        [slot.project, slot.scene, slot.scene_id, slot.slot],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    encoded = CUSTOM_ID_PREFIX + base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")
    return encoded if len(encoded) <= MAX_CUSTOM_ID else None


def slot_of(custom_id: str) -> Slot | None:
    """custom_id undone; None for an id imgsave did not write."""
    if not custom_id.startswith(CUSTOM_ID_PREFIX):
        return None
    body = custom_id[len(CUSTOM_ID_PREFIX) :]
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        project, scene, scene_id, slot = json.loads(text)
    except (ValueError, TypeError):
        return None
    if (
        not isinstance(project, str)
        or not isinstance(scene, int)
        or not isinstance(scene_id, str | None)
        or not isinstance(slot, int)
    ):
        return None
    return Slot(project, scene, scene_id, slot)
