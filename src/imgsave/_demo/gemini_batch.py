"""The Gemini API's Batch API for the loopback provider (kind `gemini`), in the shapes Google
documents (the Batch API guide and reference; python-genai's `batches.py`, `files.py` and
`_api_client.py` show what a client sends and parses), so the client under test parses what
Google sends:

- the Files API's resumable upload: `POST /upload/v1beta/files` (`X-Goog-Upload-Protocol:
  resumable`, `X-Goog-Upload-Command: start`, `{"file": {"display_name"}}`) answers an
  `X-Goog-Upload-URL`, which takes the bytes (`upload`, then `upload, finalize`, at
  `X-Goog-Upload-Offset`) and answers `{"file": File}`; `GET /v1beta/files/{id}` is the File;
- `POST /v1beta/models/{model}:batchGenerateContent` `{"batch": {"display_name", "input_config":
  {"file_name"}}}` (camelCase taken too, as Google's JSON parser does) answers the batch's
  long-running operation `{name: "batches/...", metadata: {..., state, batchStats}, done,
  response: {responsesFile}}`; `GET /v1beta/batches/{id}`; `GET /v1beta/batches?pageSize=
  &pageToken=` → `{operations, nextPageToken}`, newest first; `POST /v1beta/batches/{id}:cancel`
  → `{}`;
- the results file, `GET /download/v1beta/files/{id}:download?alt=media` (or without
  `/download`, as python-genai asks), streamed as it is written (chunked): one line per request
  that ran, `{"key", "response": GenerateContentResponse}` with the image as an `inlineData` part,
  or `{"key", "error": google.rpc.Status}`. Counts left at zero are left out, as proto3's JSON
  does.

A batch is PENDING, RUNNING after a tenth of `seconds`, then SUCCEEDED (EXPIRED with `expire`:
no results, as documented; FAILED with `fail`); one that would run longer than `window` (48
hours, as Google's batches) expires when the window closes, by `clock`; a cancelled batch keeps
the first half of its lines. `faults(key)` says how a line ends: None an image; a block reason
(`SAFETY`, `PROHIBITED_CONTENT`, `BLOCKLIST`, `OTHER`) in `promptFeedback.blockReason`; a finish
reason (`IMAGE_SAFETY`, `IMAGE_PROHIBITED_CONTENT`, `IMAGE_OTHER`, `NO_IMAGE`, `RECITATION`) on
the candidate; `unreadable` a line that is not JSON; `oversized:N` an image whose base64 is N
bytes; any other name (`INVALID_ARGUMENT`, `INTERNAL`, ...) an error line with that Status.

Scripted faults: `create_delay` (seconds a create waits before it answers, the batch already
made: the window in which a client that dies has paid for a batch it never heard of),
`lose_create_answers` (the next creates make the batch, then drop the connection unanswered),
`failing_lists` and `failing_reads` (the next lists, or reads of a batch, answer 503),
`garbled_lists` and `garbled_reads` (the next answer 200 with a proxy's HTML page),
`stuck_cursor` (every page names the same next page), `cut_output_after` (a download stops
after that many lines), `upload_origin` (the upload URL is on another origin). A wrong key
(`key`) is Google's 400 API_KEY_INVALID; no key, 403. Every request's (method, path, key) is
kept in `requests`.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

BLOCK_REASONS = frozenset({"SAFETY", "PROHIBITED_CONTENT", "BLOCKLIST", "OTHER"})
FINISH_REASONS = frozenset(
    {"IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_OTHER", "NO_IMAGE", "RECITATION"}
)
RPC_CODES = {"CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
             "NOT_FOUND": 5, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
             "FAILED_PRECONDITION": 9, "INTERNAL": 13, "UNAVAILABLE": 14}  # fmt: skip
HTTP_STATUS = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
               500: "INTERNAL", 503: "UNAVAILABLE"}  # fmt: skip
USAGE = b'"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":1290,"totalTokenCount":1299}'
OVERSIZED_PIECE = 1 << 20


class GeminiBatchEmulation:
    def __init__(
        self,
        image: Callable[[], int],
        png: Callable[[int], bytes],
        *,
        enabled: bool = True,
        seconds: float = 0.0,
        faults: Callable[[str], str | None] | None = None,
        expire: bool = False,
        fail: bool = False,
        create_delay: float = 0.0,
        key: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        """`image()` makes one image (counted as sent) and answers its number; `png(n)` is its
        bytes. `key`: the one API key taken (None: any)."""
        self._image = image
        self._png = png
        self.enabled = enabled
        self.seconds = seconds
        self.faults = faults or (lambda _: None)
        self.expire = expire
        self.fail = fail
        self.key = key
        self.clock = clock
        # How long a batch may be pending or running before it expires (Google: 48 hours).
        self.window = 48 * 3600.0
        self.create_delay = create_delay
        self.lose_create_answers = 0
        self.failing_lists = 0
        self.failing_reads = 0
        self.garbled_reads = 0
        self.garbled_lists = 0
        self.stuck_cursor = False
        self.cut_output_after: int | None = None
        self.upload_origin: str | None = None
        self.requests: list[tuple[str, str, str | None]] = []
        self._lock = threading.Lock()
        self._sessions: dict[str, dict[str, Any]] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        # A results file: its batch's id (its lines are written as they are read).
        self._results: dict[str, str] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._order: list[str] = []
        # How many batches were created: what a test counts as submissions (money).
        self.created = 0

    @staticmethod
    def handles(path: str) -> bool:
        route = urlsplit(path).path
        return route.startswith(
            ("/upload/v1beta/files", "/download/v1beta/files", "/v1beta/files", "/v1beta/batches")
        ) or (route.startswith("/v1beta/models/") and route.endswith(":batchGenerateContent"))

    def serve(self, http: BaseHTTPRequestHandler, method: str, body: bytes) -> None:
        """Answer one request on `http`'s connection."""
        split = urlsplit(http.path)
        route, query = unquote(split.path), {k: v[0] for k, v in parse_qs(split.query).items()}
        key = http.headers.get("x-goog-api-key")
        with self._lock:
            self.requests.append((method, http.path, key))
        if not self.enabled:
            return _error(http, 404, f"Method not found: {method} {route}")
        if not key:
            return _error(http, 403, "Method doesn't allow unregistered callers (callers without "
                          "established identity). Please use API Key or other form of API "
                          "consumer identity to call this API.")  # fmt: skip
        if self.key is not None and key != self.key:
            return _bad_key(http)
        if method == "POST" and route == "/upload/v1beta/files":
            if "upload_id" in query:
                return self._upload(http, query["upload_id"], body)
            return self._start(http, body)
        if method == "POST" and route.endswith(":batchGenerateContent"):
            model = route.removeprefix("/v1beta/").removesuffix(":batchGenerateContent")
            return self._create(http, model, body)
        if method == "POST" and route.startswith("/v1beta/batches/") and route.endswith(":cancel"):
            return self._cancel(http, route.removeprefix("/v1beta/").removesuffix(":cancel"))
        if method == "GET" and route == "/v1beta/batches":
            return self._list(http, int(query.get("pageSize") or 50), query.get("pageToken"))
        if method == "GET" and route.startswith("/v1beta/batches/"):
            with self._lock:
                failing = self.failing_reads > 0
                self.failing_reads -= failing
                garbled = not failing and self.garbled_reads > 0
                self.garbled_reads -= garbled
            if failing:
                return _error(http, 503, "The service is currently unavailable.")
            if garbled:
                return _send(http, 200, b"<html>upstream proxy error</html>")
            with self._lock:
                batch = self.batches.get(route.removeprefix("/v1beta/"))
                answer = None if batch is None else self._operation(batch)
            if answer is None:
                return _error(http, 404, f"Batch {route.removeprefix('/v1beta/')} not found.")
            return _json(http, answer)
        if method == "GET" and route.endswith(":download"):
            name = route.removeprefix("/download").removeprefix("/v1beta/")
            return self._download(http, name.removesuffix(":download"))
        if method == "GET" and route.startswith("/v1beta/files/"):
            file = self.files.get(route.removeprefix("/v1beta/"))
            if file is None:
                return _error(http, 404, f"File {route.removeprefix('/v1beta/')} not found.")
            return _json(http, file)
        return _error(http, 404, f"Method not found: {method} {route}")

    # -- the Files API ---------------------------------------------------------------------

    def _start(self, http: BaseHTTPRequestHandler, body: bytes) -> None:
        headers = http.headers
        if (headers.get("X-Goog-Upload-Protocol") != "resumable"
                or headers.get("X-Goog-Upload-Command") != "start"):  # fmt: skip
            return _error(http, 400, "an upload starts with X-Goog-Upload-Command: start")
        try:
            file = json.loads(body or b"{}").get("file") or {}
            size = int(headers.get("X-Goog-Upload-Header-Content-Length") or "")
        except (ValueError, AttributeError):
            return _error(http, 400, "Invalid upload request.")
        upload_id = secrets.token_urlsafe(16)
        with self._lock:
            self._sessions[upload_id] = {
                "display_name": file.get("display_name") or file.get("displayName"),
                "mime": headers.get("X-Goog-Upload-Header-Content-Type") or "text/plain",
                "size": size,
                "data": bytearray(),
            }
        origin = self.upload_origin or f"http://{headers.get('Host')}"
        url = f"{origin}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        _send(http, 200, b"", {"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active",
                                "X-Goog-Upload-Chunk-Granularity": "8388608"})  # fmt: skip

    def _upload(self, http: BaseHTTPRequestHandler, upload_id: str, body: bytes) -> None:
        command = {c.strip() for c in (http.headers.get("X-Goog-Upload-Command") or "").split(",")}
        with self._lock:
            session = self._sessions.get(upload_id)
            if session is None or "upload" not in command:
                return _error(http, 400, "no such upload")
            if int(http.headers.get("X-Goog-Upload-Offset") or -1) != len(session["data"]):
                return _error(http, 400, "the offset is not where the upload stands")
            session["data"] += body
            if "finalize" not in command:
                return _send(http, 200, b"", {"X-Goog-Upload-Status": "active"})
            del self._sessions[upload_id]
            if len(session["data"]) != session["size"]:
                return _error(http, 400, "the upload's size is not the size declared")
            file = self._file(bytes(session["data"]), session["display_name"], session["mime"],
                              source="UPLOADED")  # fmt: skip
        _send(http, 200, json.dumps({"file": file}).encode(), {"X-Goog-Upload-Status": "final"})

    def _file(
        self, content: bytes, display_name: str | None, mime: str, *, source: str
    ) -> dict[str, Any]:
        """A File (under the lock)."""
        now = self.clock()
        name = f"files/{secrets.token_hex(6)}"
        file = {
            "name": name, "displayName": display_name or name, "mimeType": mime,
            "sizeBytes": str(len(content)), "createTime": _time(now), "updateTime": _time(now),
            "expirationTime": _time(now + 48 * 3600), "uri": f"/v1beta/{name}",
            "state": "ACTIVE", "source": source,
        }  # fmt: skip
        self.files[name] = file
        self.contents[name] = content
        return file

    def _download(self, http: BaseHTTPRequestHandler, name: str) -> None:
        with self._lock:
            batch_id = self._results.get(name)
            batch = self.batches.get(batch_id or "")
            if batch is None:
                known = name in self.files
            lines = list(batch["_outcomes"]) if batch is not None else []
        if batch is None:
            if known:  # uploaded files are not served back, as python-genai says
                return _error(http, 400, "Only generated files can be downloaded.")
            return _error(http, 404, f"File {name} not found.")
        http.send_response(200)
        http.send_header("Content-Type", "application/octet-stream")
        http.send_header("Transfer-Encoding", "chunked")
        http.end_headers()
        try:
            for number, (key, outcome) in enumerate(lines):
                if self.cut_output_after is not None and number >= self.cut_output_after:
                    http.close_connection = True  # no last chunk: the file is cut short
                    return
                pieces = list(self._line(key, outcome))
                http.wfile.write(f"{sum(len(p) for p in pieces):x}\r\n".encode())
                for piece in pieces:
                    http.wfile.write(piece)
                http.wfile.write(b"\r\n")
            http.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            http.close_connection = True

    def _line(self, key: str, outcome: str | int) -> Iterator[bytes]:
        """One results line, in pieces (an image's base64 is written as it is made)."""
        start = b'{"key":' + json.dumps(key).encode() + b","
        if isinstance(outcome, int):
            data = base64.b64encode(self._png(outcome))
            yield start + _IMAGE_HEAD
            yield data
            yield _IMAGE_TAIL
        elif outcome.startswith("oversized:"):
            size = int(outcome.partition(":")[2])
            yield start + _IMAGE_HEAD
            for offset in range(0, size, OVERSIZED_PIECE):
                yield b"A" * min(OVERSIZED_PIECE, size - offset)
            yield _IMAGE_TAIL
        elif outcome == "unreadable":
            yield b"<html>upstream proxy error</html>\n"
        elif outcome in BLOCK_REASONS:
            feedback = {"blockReason": outcome}
            yield start + b'"response":' + json.dumps({"promptFeedback": feedback}).encode()
            yield b"}\n"
        elif outcome in FINISH_REASONS:
            candidate = {"finishReason": outcome, "index": 0}
            yield start + b'"response":' + json.dumps({"candidates": [candidate]}).encode()
            yield b"}\n"
        else:
            status = {"code": RPC_CODES.get(outcome, 2), "message": f"refused: {outcome}",
                      "details": []}  # fmt: skip
            yield start + b'"error":' + json.dumps(status).encode() + b"}\n"

    # -- batches ---------------------------------------------------------------------------

    def _create(self, http: BaseHTTPRequestHandler, model: str, body: bytes) -> None:
        try:
            asked = json.loads(body)["batch"]
            config = asked.get("input_config") or asked.get("inputConfig") or {}
            file_name = config.get("file_name") or config.get("fileName")
            shown = asked.get("display_name") or asked.get("displayName")
        except (ValueError, KeyError, TypeError, AttributeError):
            return _error(http, 400, "Invalid JSON payload received.")
        if not isinstance(shown, str) or not shown:
            return _error(http, 400, "batch.display_name is required.")
        content = self.contents.get(str(file_name))
        if content is None:
            return _error(http, 400, f"File {file_name} not found.")
        keys = []
        for number, raw in enumerate(content.splitlines(), start=1):
            try:
                line = json.loads(raw)
                if not isinstance(line["key"], str) or not line["request"]["contents"]:
                    raise ValueError
                keys.append(line["key"])
            except (ValueError, KeyError, TypeError):
                return _error(http, 400, f"Invalid request at line {number} of {file_name}.")
        now = self.clock()
        name = f"batches/{secrets.token_hex(8)}"
        batch: dict[str, Any] = {
            "name": name, "model": model, "displayName": shown, "inputConfig": {
                "fileName": file_name}, "createTime": _time(now), "updateTime": _time(now),
            "state": "BATCH_STATE_PENDING", "_keys": keys, "_started": now, "_outcomes": [],
        }  # fmt: skip
        with self._lock:
            self.batches[name] = batch
            self._order.append(name)
            self.created += 1
            answer = self._operation(batch)
            lose = self.lose_create_answers > 0
            self.lose_create_answers -= lose
        if self.create_delay:
            time.sleep(self.create_delay)
        if lose:  # made, and billed, and never answered
            http.close_connection = True
            return None
        return _json(http, answer)

    def _cancel(self, http: BaseHTTPRequestHandler, name: str) -> None:
        with self._lock:
            batch = self.batches.get(name)
            if batch is not None:
                self._advance(batch)
                if batch["state"] in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                    self._finish(batch, "BATCH_STATE_CANCELLED", len(batch["_keys"]) // 2)
        if batch is None:
            return _error(http, 404, f"Batch {name} not found.")
        return _json(http, {})

    def _list(self, http: BaseHTTPRequestHandler, size: int, token: str | None) -> None:
        with self._lock:
            failing = self.failing_lists > 0
            self.failing_lists -= failing
            garbled = not failing and self.garbled_lists > 0
            self.garbled_lists -= garbled
            newest_first = list(reversed(self._order))
            start = 0 if self.stuck_cursor or not token else int(token)
            page = [self._operation(self.batches[n]) for n in newest_first[start : start + size]]
        if failing:
            return _error(http, 503, "The service is currently unavailable.")
        if garbled:
            return _send(http, 200, b"<html>upstream proxy error</html>")
        answer: dict[str, Any] = {"operations": page} if page else {}
        if start + size < len(newest_first):
            answer["nextPageToken"] = str(size if self.stuck_cursor else start + size)
        return _json(http, answer)

    def _operation(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's operation now (under the lock)."""
        self._advance(batch)
        metadata = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            **{k: v for k, v in batch.items() if not k.startswith("_")},
        }
        total = len(batch["_keys"])
        ran = batch["_outcomes"]
        failed = sum(1 for _, o in ran if _is_error(o))
        counts = {
            "requestCount": total,
            "successfulRequestCount": len(ran) - failed,
            "failedRequestCount": failed,
            "pendingRequestCount": total - len(ran) if "endTime" not in batch else 0,
        }
        metadata["batchStats"] = {k: str(v) for k, v in counts.items() if v}
        operation: dict[str, Any] = {"name": batch["name"], "metadata": metadata}
        if "endTime" in batch:
            operation["done"] = True
            if batch["state"] == "BATCH_STATE_FAILED":
                operation["error"] = {"code": 13, "message": "The batch failed.", "details": []}
            elif "output" in batch:
                operation["response"] = {
                    "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta"
                    ".GenerateContentBatchOutput",
                    "responsesFile": batch["output"]["responsesFile"],
                }
        return operation

    def _advance(self, batch: dict[str, Any]) -> None:
        if "endTime" in batch:
            return
        elapsed = self.clock() - batch["_started"]
        if elapsed >= self.window and self.seconds > self.window:
            self._finish(batch, "BATCH_STATE_EXPIRED", 0)
        elif elapsed >= self.seconds:
            if self.expire:
                self._finish(batch, "BATCH_STATE_EXPIRED", 0)
            elif self.fail:
                self._finish(batch, "BATCH_STATE_FAILED", 0)
            else:
                self._finish(batch, "BATCH_STATE_SUCCEEDED", len(batch["_keys"]))
        elif elapsed >= self.seconds * 0.1:
            batch["state"] = "BATCH_STATE_RUNNING"

    def _finish(self, batch: dict[str, Any], state: str, done: int) -> None:
        """The batch ends; the lines that ran are decided (and their images made) now."""
        outcomes: list[tuple[str, str | int]] = []
        for key in batch["_keys"][:done]:
            fault = self.faults(key)
            outcomes.append((key, self._image() if fault is None else fault))
        now = _time(self.clock())
        batch.update(state=state, updateTime=now, endTime=now, _outcomes=outcomes)
        if outcomes:
            file = self._file(b"", f"{batch['name']}-results", "application/jsonl",
                              source="GENERATED")  # fmt: skip
            self._results[file["name"]] = batch["name"]
            batch["output"] = {"responsesFile": file["name"]}


_IMAGE_HEAD = (
    b'"response":{"candidates":[{"content":{"role":"model","parts":[{"text":"Here is your '
    b'image."},{"inlineData":{"mimeType":"image/png","data":"'
)
_IMAGE_TAIL = b'"}}]},"finishReason":"STOP","index":0}],' + USAGE + b"}}\n"


def _is_error(outcome: str | int) -> bool:
    return (
        isinstance(outcome, str)
        and not outcome.startswith("oversized:")
        and (outcome not in BLOCK_REASONS | FINISH_REASONS | {"unreadable"})
    )


def _time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(http: BaseHTTPRequestHandler, payload: object) -> None:
    _send(http, 200, json.dumps(payload).encode())


def _error(http: BaseHTTPRequestHandler, status: int, message: str) -> None:
    error = {"code": status, "message": message, "status": HTTP_STATUS.get(status, "UNKNOWN")}
    _send(http, status, json.dumps({"error": error}).encode())


def _bad_key(http: BaseHTTPRequestHandler) -> None:
    """What Google answers a key it does not know: 400, not 401."""
    error = {
        "code": 400, "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                     "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                     "metadata": {"service": "generativelanguage.googleapis.com"}}],
    }  # fmt: skip
    _send(http, 400, json.dumps({"error": error}).encode())


def _send(
    http: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None
) -> None:
    http.send_response(status)
    http.send_header("Content-Type", "application/json; charset=UTF-8")
    http.send_header("Content-Length", str(len(body)))
    for name, value in (headers or {}).items():
        http.send_header(name, value)
    http.end_headers()
    try:
        http.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        http.close_connection = True
