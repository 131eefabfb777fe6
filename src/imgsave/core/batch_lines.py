"""The lines of the Batch APIs' files, as each provider documents them, and the identity a
batch carries. Pure.

OpenAI (and Azure OpenAI): input lines `{"custom_id", "method": "POST", "url":
"/v1/images/generations", "body": {...}}`; output and error files `{"id", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}`, where a request the API refused
has a 4xx `status_code` and `body.error`, and one that never ran has `error: {code, message}`
instead of a response.

Gemini: input lines `{"key", "request": GenerateContentRequest}`; one results file whose lines
are `{"key", "response": GenerateContentResponse}` or `{"key", "error": google.rpc.Status}`
(`{code, message, details}`, `code` the gRPC number).

Lines are matched to requests by custom_id (Gemini's `key`), never by position. A line is read
within a cap (`line_cap`): `LineSplitter` cuts a stream into lines and hands a line over the
cap on as `Oversized` (its first bytes and its length), never holding more of it than the cap.
"""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

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


# -- Gemini's lines -----------------------------------------------------------------------------


def gemini_request_line(key: str, request: dict[str, Any]) -> bytes:
    """One input line of a Gemini batch file, newline included."""
    line = {"key": key, "request": request}
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# google.rpc.Code: a Status in a results line carries the number, not the name.
RPC_CODES = {
    1: "CANCELLED", 2: "UNKNOWN", 3: "INVALID_ARGUMENT", 4: "DEADLINE_EXCEEDED", 5: "NOT_FOUND",
    6: "ALREADY_EXISTS", 7: "PERMISSION_DENIED", 8: "RESOURCE_EXHAUSTED",
    9: "FAILED_PRECONDITION", 10: "ABORTED", 11: "OUT_OF_RANGE", 12: "UNIMPLEMENTED",
    13: "INTERNAL", 14: "UNAVAILABLE", 15: "DATA_LOSS", 16: "UNAUTHENTICATED",
}  # fmt: skip


def parse_gemini_result(raw: bytes | str) -> BatchResult:
    """One line of a Gemini results file (its `key` as the custom_id): the
    GenerateContentResponse, or the Status's code (its name: `INVALID_ARGUMENT`, ...) and
    message; UnreadableLine when it is neither shape."""
    try:
        line = json.loads(raw)
    except ValueError:
        raise UnreadableLine("not JSON") from None
    if not isinstance(line, dict) or not isinstance(line.get("key"), str):
        raise UnreadableLine("no key")
    key = line["key"]
    response = line.get("response")
    error = line.get("error")
    if isinstance(response, dict):
        return BatchResult(key, response)
    if isinstance(error, dict):
        code = error.get("code")
        name = _text(error.get("status")) or (
            RPC_CODES.get(code) if isinstance(code, int) and not isinstance(code, bool) else None
        )
        return BatchResult(key, None, name or "error", _text(error.get("message")))
    raise UnreadableLine(f"{key}: neither a response nor an error")


# -- a line within a cap ----------------------------------------------------------------------

# What a line may hold around its image's base64: JSON, usage, a revised prompt, text parts.
LINE_SLACK = 1 << 20
# The bytes of a line over the cap that are kept: enough to find its custom_id.
HEAD_BYTES = 4096


def line_cap(max_image_bytes: int, images: int = 1) -> int:
    """The longest line worth reading: the base64 (4/3) of the images it asked for and one more,
    as a synchronous answer is capped, plus its JSON. A longer line holds an image imgsave would
    refuse anyway (max_image_bytes)."""
    return max_image_bytes * 4 // 3 * (max(1, images) + 1) + LINE_SLACK


@dataclass(frozen=True)
class Oversized:
    """A line over the cap, not read: its first bytes (HEAD_BYTES) and its length (newline
    not counted)."""

    head: bytes
    size: int


class LineSplitter:
    """A stream's bytes in, its lines out (blank lines skipped), none held past `cap`: the
    pieces of a line not yet ended are joined once, when it ends (adding each chunk to the
    line so far would copy it over and over); a line that grows past the cap is dropped as it
    comes and handed on as Oversized."""

    def __init__(self, cap: int, *, head: int = HEAD_BYTES):
        self._cap = cap
        self._head = head
        self._pieces: list[bytes] = []
        self._size = 0
        # The head of the line being skipped, once it went over the cap.
        self._over: bytearray | None = None

    def feed(self, chunk: bytes) -> list[bytes | Oversized]:
        *ended, rest = chunk.split(b"\n")
        lines: list[bytes | Oversized] = []
        for end in ended:
            self._add(end)
            if (line := self._end()) is not None:
                lines.append(line)
        self._add(rest)
        return lines

    def close(self) -> list[bytes | Oversized]:
        """What the stream's last line held, if it did not end with a newline."""
        line = self._end()
        return [] if line is None else [line]

    def _add(self, piece: bytes) -> None:
        if not piece:
            return
        self._size += len(piece)
        if self._over is not None:
            if len(self._over) < self._head:
                self._over += piece[: self._head - len(self._over)]
            return
        if self._size <= self._cap:
            self._pieces.append(piece)
            return
        self._over = bytearray()
        for held in [*self._pieces, piece]:
            self._over += held[: self._head - len(self._over)]
        self._pieces = []

    def _end(self) -> bytes | Oversized | None:
        size, over, pieces = self._size, self._over, self._pieces
        self._size, self._over, self._pieces = 0, None, []
        if over is not None:
            return Oversized(bytes(over), size)
        line = b"".join(pieces)
        return line if line.strip() else None


def head_id(head: bytes, name: str) -> str | None:
    """The first `"name": "..."` in a line's head (custom_id or key): the line over the cap is
    not parsed, so this is a best guess that the caller checks against what the batch asked."""
    found = re.search(rb'"' + re.escape(name.encode()) + rb'"\s*:\s*("(?:[^"\\]|\\.)*")', head)
    if found is None:
        return None
    try:
        value = json.loads(found.group(1))
    except ValueError:
        return None
    return value if isinstance(value, str) else None


# -- who a batch belongs to ---------------------------------------------------------------------

DISPLAY_PREFIX = "imgsave:"


def display_name(db_id: str, run: str) -> str:
    """Gemini's batch `display_name` naming this database and run: `imgsave:{db_id}:{run}`,
    each part percent-encoded so that any text reads back whole."""
    if not db_id or not run:
        raise ValueError("a batch is named by a database identity and a run, neither empty")
    return f"{DISPLAY_PREFIX}{quote(db_id, safe='-._~')}:{quote(run, safe='-._~')}"


def identity_of(name: str) -> tuple[str, str] | None:
    """display_name undone: (db_id, run), or None for a batch imgsave did not name."""
    if not name.startswith(DISPLAY_PREFIX):
        return None
    parts = name[len(DISPLAY_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        return None
    try:
        return unquote(parts[0], errors="strict"), unquote(parts[1], errors="strict")
    except UnicodeDecodeError:
        return None


def batch_metadata(db_id: str, run: str) -> dict[str, str]:
    """An OpenAI batch's `metadata` naming this database and run (never a secret)."""
    return {"imgsave": "1", "imgsave_db": db_id, "imgsave_run": run}


def identity_in_metadata(metadata: dict[str, str]) -> tuple[str | None, str | None]:
    """(db_id, run) an OpenAI batch's metadata names; None where it names none."""
    if metadata.get("imgsave") != "1":
        return None, None
    return metadata.get("imgsave_db") or None, metadata.get("imgsave_run") or None
