"""The Files and Batches endpoints of an OpenAI-compatible API, for the loopback provider: the
shapes openai-python's types give (`Batch`, `FileObject`, a batch output line's `{id,
custom_id, response: {status_code, request_id, body}, error}`), so the client under test parses
what a real provider sends.

A batch moves validating → in_progress → finalizing → completed over `seconds` (zero: at once)
and makes its images when it completes: each line through the same image maker as a
synchronous request. `faults(custom_id)` names the lines that fail (an error code such as
`moderation_blocked`, written to the error file; `unreadable`, an output line that is not
JSON; `oversized:N`, an output line whose image's base64 is N bytes). `expire` ends batches as
`expired` with half their lines done; a cancelled batch keeps what was done too.

Scripted faults: `cut_output_after` lines, an output file's download stops short of its
declared length (a connection lost half-way); `lose_create_answers`, the next creates make
the batch and drop the connection before the answer; `failing_lists`, the next lists answer
503; `stuck_cursor`, every page of the list is the first, `has_more` and all.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

Reply = tuple[int, bytes, str]


class Cut(bytes):
    """A body sent only in part: the server declares `declared` bytes and closes after these."""

    declared: int


JSON = "application/json"


class BatchEmulation:
    def __init__(
        self,
        image: Callable[[], dict[str, Any]],
        *,
        enabled: bool = True,
        seconds: float = 0.0,
        faults: Callable[[str], str | None] | None = None,
        expire: bool = False,
        create_delay: float = 0.0,
        max_file_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """`image()` answers one image request's body (`{"data": [...], "usage": ...}`)."""
        self._image = image
        self.enabled = enabled
        self.seconds = seconds
        self.faults = faults or (lambda _: None)
        self.expire = expire
        # Seconds a create waits before it answers, the batch already made: the window in
        # which a client that dies has paid for a batch it never heard of.
        self.create_delay = create_delay
        self.max_file_bytes = max_file_bytes
        self.cut_output_after: int | None = None
        self.lose_create_answers = 0
        self.failing_lists = 0
        self.stuck_cursor = False
        self._clock = clock
        self._lock = threading.Lock()
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        # How many batches were created: what a test counts as submissions (money).
        self.created = 0

    # -- requests ------------------------------------------------------------------------

    def post(self, path: str, content_type: str, body: bytes) -> Reply:
        route = urlsplit(path).path.removeprefix("/v1")
        if not self.enabled:
            return _error(404, "Invalid URL (POST /v1" + route + ")", "invalid_request_error")
        if route == "/files":
            return self._upload(content_type, body)
        if route == "/batches":
            return self._create(body)
        parts = route.strip("/").split("/")
        if len(parts) == 3 and parts[0] == "batches" and parts[2] == "cancel":
            return self._cancel(parts[1])
        return _error(404, f"no route POST {route}", "invalid_request_error")

    def get(self, path: str) -> Reply:
        split = urlsplit(path)
        route = split.path.removeprefix("/v1")
        if not self.enabled:
            return _error(404, "Invalid URL (GET /v1" + route + ")", "invalid_request_error")
        parts = route.strip("/").split("/")
        if parts == ["batches"]:
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            return self._list(query.get("after"), int(query.get("limit") or 20))
        if len(parts) == 2 and parts[0] == "batches":
            with self._lock:
                batch = self.batches.get(parts[1])
                if batch is None:
                    return _error(404, f"No batch found with id '{parts[1]}'.", "invalid_request")
                return 200, _dump(self._advance(batch)), JSON
        if len(parts) == 2 and parts[0] == "files":
            file = self.files.get(parts[1])
            if file is None:
                return _error(404, f"No such File object: {parts[1]}", "invalid_request_error")
            return 200, json.dumps(file).encode(), JSON
        if len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
            content = self.contents.get(parts[1])
            if content is None:
                return _error(404, f"No such File object: {parts[1]}", "invalid_request_error")
            filename = self.files.get(parts[1], {}).get("filename")
            if self.cut_output_after is not None and filename == "batch_output.jsonl":
                cut = Cut(b"".join(content.splitlines(True)[: self.cut_output_after]))
                cut.declared = len(content)
                return 200, cut, "application/octet-stream"
            return 200, content, "application/octet-stream"
        return _error(404, f"no route GET {route}", "invalid_request_error")

    # -- files ---------------------------------------------------------------------------

    def _upload(self, content_type: str, body: bytes) -> Reply:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        fields: dict[str, tuple[str | None, bytes]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = (part.get_filename(), payload)
        purpose = fields.get("purpose", (None, b""))[1].decode()
        if purpose != "batch" or "file" not in fields:
            return _error(400, "a file and purpose=batch are required", "invalid_request_error")
        filename, content = fields["file"]
        if self.max_file_bytes is not None and len(content) > self.max_file_bytes:
            return _error(400, "File is too large.", "invalid_request_error")
        return 200, _dump(self._store(content, filename or "input.jsonl", "batch")), JSON

    def _store(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        now = int(self._clock())
        file_id = f"file-{secrets.token_hex(12)}"
        file: dict[str, Any] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": now,
            "expires_at": now + 30 * 86400,
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        with self._lock:
            self.files[file_id] = file
            self.contents[file_id] = content
        return file

    # -- batches -------------------------------------------------------------------------

    def _create(self, body: bytes) -> Reply:
        try:
            asked = json.loads(body)
        except ValueError:
            return _error(400, "the body is not JSON", "invalid_request_error")
        content = self.contents.get(str(asked.get("input_file_id")))
        if content is None:
            return _error(400, "input_file_id names no file", "invalid_request_error")
        if asked.get("endpoint") != "/v1/images/generations":
            return _error(400, "unsupported endpoint", "invalid_request_error")
        lines = []
        for number, raw in enumerate(content.splitlines(), start=1):
            try:
                line = json.loads(raw)
                if line["url"] != asked["endpoint"] or line["method"] != "POST":
                    raise ValueError
                lines.append((str(line["custom_id"]), line["body"]))
            except (ValueError, KeyError, TypeError):
                return _error(400, f"line {number} is not a valid request", "invalid_request")
        if len({custom_id for custom_id, _ in lines}) != len(lines):
            return _error(400, "custom_id values are not unique", "invalid_request_error")
        now = int(self._clock())
        batch: dict[str, Any] = {
            "id": f"batch_{secrets.token_hex(12)}",
            "object": "batch",
            "endpoint": asked["endpoint"],
            "errors": None,
            "input_file_id": asked["input_file_id"],
            "completion_window": asked.get("completion_window", "24h"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": None,
            "expires_at": now + 86400,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": asked.get("metadata"),
            "_lines": lines,
            "_started": self._clock(),
        }
        with self._lock:
            self.batches[batch["id"]] = batch
            self._order.append(batch["id"])
            self.created += 1
            answer = _dump(self._advance(batch))
            lose = self.lose_create_answers > 0
            self.lose_create_answers -= lose
        if self.create_delay:
            time.sleep(self.create_delay)
        if lose:  # made, and billed, and the connection drops before the answer
            cut = Cut(b"")
            cut.declared = len(answer)
            return 200, cut, JSON
        return 200, answer, JSON

    def _cancel(self, batch_id: str) -> Reply:
        with self._lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                return _error(404, f"No batch found with id '{batch_id}'.", "invalid_request")
            if batch["status"] in ("validating", "in_progress", "finalizing"):
                batch["status"] = "cancelling"
                batch["cancelling_at"] = int(self._clock())
            return 200, _dump(batch), JSON

    def _list(self, after: str | None, limit: int) -> Reply:
        with self._lock:
            if self.failing_lists > 0:
                self.failing_lists -= 1
                return _error(503, "The server is overloaded.", "server_error")
            newest_first = list(reversed(self._order))
            start = newest_first.index(after) + 1 if after in newest_first else 0
            if self.stuck_cursor:
                start = 0
            page = [self._advance(self.batches[i]) for i in newest_first[start : start + limit]]
            payload = {
                "object": "list",
                "data": [_public(b) for b in page],
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": start + limit < len(newest_first),
            }
        return 200, json.dumps(payload).encode(), JSON

    def _advance(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's state now (called under the lock); its files are made once, when it
        ends."""
        status = batch["status"]
        if status in ("completed", "expired", "cancelled", "failed"):
            return _public(batch)
        now = int(self._clock())
        if status == "cancelling":
            self._finish(batch, "cancelled", done=len(batch["_lines"]) // 2)
            return _public(batch)
        elapsed = self._clock() - batch["_started"]
        if elapsed >= self.seconds:
            if self.expire:
                self._finish(batch, "expired", done=len(batch["_lines"]) // 2)
            else:
                batch["finalizing_at"] = batch["finalizing_at"] or now
                self._finish(batch, "completed", done=len(batch["_lines"]))
        elif elapsed >= self.seconds * 0.9:
            batch.update(status="finalizing", finalizing_at=batch["finalizing_at"] or now)
        elif elapsed >= self.seconds * 0.1:
            batch.update(status="in_progress", in_progress_at=batch["in_progress_at"] or now)
        return _public(batch)

    def _finish(self, batch: dict[str, Any], status: str, *, done: int) -> None:
        outputs: list[dict[str, Any] | None] = []
        errors: list[dict[str, Any]] = []
        for custom_id, _body in batch["_lines"][:done]:
            request_id = f"req_{secrets.token_hex(8)}"
            code = self.faults(custom_id)
            if code is None:
                response = {"status_code": 200, "request_id": request_id, "body": self._image()}
                outputs.append(_line(custom_id, response))
            elif code == "unreadable":
                outputs.append(None)
            elif code.startswith("oversized:"):
                body = {"created": 0, "data": [{"b64_json": "A" * int(code.partition(":")[2])}]}
                outputs.append(_line(custom_id, {"status_code": 200, "request_id": request_id,
                                                 "body": body}))  # fmt: skip
            else:
                error = {"message": f"refused: {code}", "type": "image_generation_user_error",
                         "param": None, "code": code}  # fmt: skip
                response = {"status_code": 400, "request_id": request_id, "body": {"error": error}}
                errors.append(_line(custom_id, response))
        now = int(self._clock())
        if outputs:
            content = b"".join(
                b"<html>upstream proxy error</html>\n"
                if o is None
                else json.dumps(o).encode() + b"\n"
                for o in outputs
            )
            batch["output_file_id"] = self._store_locked(content, "batch_output.jsonl")
        if errors:
            content = b"".join(json.dumps(e).encode() + b"\n" for e in errors)
            batch["error_file_id"] = self._store_locked(content, "batch_errors.jsonl")
        batch["request_counts"] = {
            "total": len(batch["_lines"]),
            "completed": len(outputs),
            "failed": len(errors),
        }
        batch["status"] = status
        batch[f"{status}_at"] = now
        batch["in_progress_at"] = batch["in_progress_at"] or now

    def _store_locked(self, content: bytes, filename: str) -> str:
        now = int(self._clock())
        file_id = f"file-{secrets.token_hex(12)}"
        self.files[file_id] = {
            "id": file_id, "object": "file", "bytes": len(content), "created_at": now,
            "expires_at": now + 30 * 86400, "filename": filename, "purpose": "batch_output",
            "status": "processed",
        }  # fmt: skip
        self.contents[file_id] = content
        return file_id


def _line(custom_id: str, response: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"batch_req_{secrets.token_hex(8)}", "custom_id": custom_id,
            "response": response, "error": None}  # fmt: skip


def _public(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _dump(payload: dict[str, Any]) -> bytes:
    return json.dumps(_public(payload)).encode()


def _error(status: int, message: str, kind: str) -> Reply:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return status, json.dumps(body).encode(), JSON
