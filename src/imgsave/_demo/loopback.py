"""A small image API on loopback, for the demo, the tests and the benchmarks, in the wire format
of any kind imgsave speaks (the kinds' registry, adapters/imageapi/kinds/, says which):

    python -m imgsave._demo.loopback [--kind gemini] [--answer b64|url] [--latency S]

It is a real HTTP server (threads, sockets), so the client code under test is exactly the code
that talks to a real provider. Behaviour per request comes from `faults`, a function of the
request number, so tests can script 429s, 500s, hangs and garbage.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
import json
import math
import os
import random
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from imgsave._demo.batch_api import BatchEmulation, Cut
from imgsave._demo.gemini_batch import GeminiBatchEmulation
from imgsave._demo.job_api import EMULATED as JOB_EMULATIONS
from imgsave._demo.job_api import JobEmulation, prompt_of
from imgsave._demo.sample_images import sample_png
from imgsave.adapters.imageapi.kinds import KINDS

# What a request gets: "ok", "500", "429" (Retry-After 1), "429:<seconds>", "hang", "garbage",
# "401", "400", "refuse" (the API's own refusal: OpenAI's 400 moderation_blocked, Gemini's
# blockReason), "refuse-image" (Gemini: finishReason IMAGE_SAFETY), "badurl" (a javascript:
# URL), "repeat" (the same URL as the last "repeat"),
# "svg" (an SVG where an image should be, in the answer's own form), "two" (two images at once),
# "placeholder" (the same image bytes every time, as a provider's content filter sends), and in
# b64 mode "mime" (b64_json broken into CRLF lines of 76, as MIME encoders write it), "nopad"
# (no trailing "=") and "notb64" (text no decoder reads); "hostile" (a 400 whose message carries
# terminal escape sequences: clear the screen, a fake summary, a window title).
Fault = str
# What a hostile provider writes to a terminal it reaches: clear the screen and home the
# cursor, a fake summary, the window's title, and a carriage return over the line.
HOSTILE_TEXT = "\x1b[2J\x1b[Hall 40 images saved\x1b]0;PWNED\x07\r\x9b31m"


def mixed_faults(seed: int, **rates: float) -> Callable[[int], Fault]:
    """Faults drawn at random: mixed_faults(1, **{"500": 0.2, "429": 0.1}) and so on."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def pick(_: int) -> Fault:
        with lock:
            r = rng.random()
        for fault, rate in rates.items():
            if r < rate:
                return fault
            r -= rate
        return "ok"

    return pick


# kind -> (the base URL's path, the header the key goes in), from the kinds' registry.
WIRES: dict[str, tuple[str, str]] = {
    name: (kind.base_path, kind.key_header) for name, kind in KINDS.items()
}
# The kinds that answer with a job to poll: each has its emulation in job_api.py.
JOB_KINDS = frozenset(name for name, kind in KINDS.items() if kind.facts.has_jobs)
if not JOB_KINDS <= JOB_EMULATIONS:  # pragma: no cover - a new job kind without its emulation
    raise RuntimeError(f"no job emulation for {sorted(JOB_KINDS - JOB_EMULATIONS)}")
JSON = "application/json"
# How each API answers a key it does not know (status, body), as their documentation shows.
_WRONG_KEY: dict[str, tuple[int, object]] = {
    "openai": (401, {"error": {"message": "Incorrect API key provided.", "param": None,
                               "type": "invalid_request_error", "code": "invalid_api_key"}}),
    "azure": (401, {"error": {"code": "401", "message": "Access denied due to invalid "
                              "subscription key or wrong API endpoint."}}),
    "gemini": (400, {"error": {
        "code": 400, "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT",
        "details": [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com",
             "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US",
             "message": "API key not valid. Please pass a valid API key."},
        ]}}),
    "replicate": (401, {"title": "Unauthenticated", "status": 401,
                        "detail": "You did not pass a valid authentication token"}),
    "fal": (401, {"detail": "Invalid Key Authorization header format"}),
    "bfl": (403, {"detail": "Not authenticated - Invalid Authentication"}),
}  # fmt: skip


# The Images API's answer to a fault that needs nothing of the request: (status, body).
_OPENAI_FAULTS: dict[Fault, tuple[int, bytes]] = {
    "500": (500, b'{"error":{"message":"internal"}}'),
    "refuse": (400, json.dumps({"error": {
        "code": "moderation_blocked", "type": "image_generation_user_error",
        "message": "Your request was rejected by the safety system.",
    }}).encode()),
    "garbage": (200, b"<html>upstream proxy error</html>"),
    "400": (400, b'{"error":{"message":"prompt rejected by safety system"}}'),
    "hostile": (400, json.dumps({"error": {"message": HOSTILE_TEXT}}).encode()),
    "badurl": (200, json.dumps({"created": 0, "data": [{"url": "javascript:alert(1)"}]}).encode()),
}  # fmt: skip


def _missing() -> tuple[int, bytes, str]:
    return 404, b'{"detail":"Not found."}', JSON


def _routed(kind: str, path: str) -> bool:
    """Whether `path` is this kind's image-generation route."""
    route, _, query = path.partition("?")
    if kind == "azure":
        parts = route.split("/")
        return (
            len(parts) == 6
            and route.startswith("/openai/deployments/")
            and route.endswith("/images/generations")
            and bool(parts[3])
            and "api-version=" in query
        )
    if kind == "gemini":
        return route.startswith("/v1beta/models/") and route.endswith(":generateContent")
    return True  # openai: as lenient as before, whatever path the tests give


def _prompt(kind: str, body: bytes) -> str | None:
    try:
        payload = json.loads(body)
        if kind in JOB_KINDS:
            return prompt_of(kind, payload)
        if kind == "gemini":
            return str(payload["contents"][0]["parts"][0]["text"])
        return str(payload["prompt"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def _error_body(kind: str, status: int, message: str) -> bytes:
    """An error as the kind's API writes it (Google's carries a status name)."""
    error: dict[str, object] = {"message": message}
    if kind == "gemini":
        names = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 429: "RESOURCE_EXHAUSTED",
                 500: "INTERNAL"}  # fmt: skip
        error = {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}
    return json.dumps({"error": error}).encode()


class _Server(ThreadingHTTPServer):
    # The default listen backlog of 5 resets connections when 64 clients arrive at once.
    request_queue_size = 1024
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients that give up (timeouts, a killed process) reset their sockets: not news.
        pass


class LoopbackProvider:
    def __init__(
        self,
        *,
        latency: float = 0.0,
        jitter: float = 0.0,
        faults: Callable[[int], Fault] | None = None,
        image_base: str = "https://images.imgsave.test/",
        hang_seconds: float = 30.0,
        answer: str = "url",
        image_bytes: int = 256,
        expire_after: float | None = None,
        rate_limit: float | None = None,
        rate_headers: bool = False,
        batch_api: bool = True,
        batch_seconds: float = 0.0,
        batch_faults: Callable[[str], str | None] | None = None,
        batch_expire: bool = False,
        batch_create_delay: float = 0.0,
        kind: str = "openai",
        job_polls: int = 0,
        job_seconds: float = 0.0,
        api_key: str | None = None,
    ):
        """`answer` is "url" (data[].url, as Replicate or fal answer) or "b64" (data[].b64_json,
        as every current OpenAI GPT image model does). Images are distinct PNGs of
        `image_bytes`; their URLs (under `image_base`; this server serves them when it is
        `origin + "/"`) stop resolving `expire_after` seconds after they were answered.

        `rate_limit` (requests per minute) is enforced as a provider does: a token bucket that
        holds one second's worth, refilled evenly; a request that finds it empty gets 429 with
        Retry-After (and retry-after-ms). `rate_headers` adds the x-ratelimit-* headers.

        The Files and Batches endpoints (batch_api.py) answer unless `batch_api` is False (then
        404, as a provider without a Batch API does); a batch completes `batch_seconds` after it
        was created, `batch_faults(custom_id)` fails lines, `batch_expire` expires them half
        done.

        `kind` is the wire format served (adapters/imageapi/wires.py): "openai" at /v1,
        "azure" (`/openai/deployments/{deployment}/images/generations?api-version=`, key in
        `api-key`), or "gemini" (`/v1beta/models/{model}:generateContent`, key in
        `x-goog-api-key`, images as `inlineData` parts, refusals as block reasons in a 200).
        The job APIs "replicate", "fal" and "bfl" (job_api.py) answer each request with a job,
        done after `job_polls` polls, its images served here. The path and key header of each
        request are kept in `calls`; every request that carried a key, in `keyed`. Kind
        "gemini" serves the Gemini API's Batch API too (`gemini_batches`, gemini_batch.py), on
        the same batch_* arguments.

        `api_key`: the one key this API takes; any other is refused as the kind's API refuses
        a wrong key (Gemini: a 400 INVALID_ARGUMENT, API_KEY_INVALID). None: any key will do."""
        if answer not in ("url", "b64"):
            raise ValueError(f"answer must be 'url' or 'b64', not {answer!r}")
        if kind not in WIRES:
            raise ValueError(f"kind must be one of {', '.join(WIRES)}, not {kind!r}")
        self.kind = kind
        self.api_key = api_key
        # (path, the key as sent) of each image request, in arrival order.
        self.calls: list[tuple[str, str | None]] = []
        # Every request that carried a key: (method, Host header, path, the key as sent, Via
        # header: a gateway forwarded it).
        self.keyed: list[tuple[str, str, str, str, str | None]] = []
        self.answer = answer
        self.image_bytes = image_bytes
        self.expire_after = expire_after
        self._salt = os.urandom(8)
        self._answered_at: dict[str, float] = {}
        # sha256 of every image answered, in answer order (b64 and url alike).
        self.sent: list[str] = []
        self.latency = latency
        self.jitter = jitter
        self.faults = faults or (lambda _: "ok")
        self.image_base = image_base
        self.hang_seconds = hang_seconds
        self.dead_paths: set[str] = set()
        # While set, every image GET answers 503: an image host having a bad minute.
        self.images_unavailable = False
        self.forbidden_paths: set[str] = set()
        self.served: list[str] = []
        self.statuses: list[int] = []  # of image-generation requests, in answer order
        # (monotonic time, status) of each image-generation request, in answer order.
        self.timeline: list[tuple[float, int]] = []
        self.rate_limit = rate_limit
        self.rate_headers = rate_headers
        self._capacity = max(1.0, (rate_limit or 0) / 60)
        self._tokens = self._capacity
        self._refilled = time.monotonic()
        self._counter = itertools.count(1)
        self._started = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.jobs = (
            JobEmulation(
                kind,
                lambda: self.origin,
                self._job_image_url,
                polls=job_polls,
                seconds=job_seconds,
            )
            if kind in JOB_KINDS
            else None
        )
        self.batches = BatchEmulation(
            self._batch_image,
            enabled=batch_api,
            seconds=batch_seconds,
            faults=batch_faults,
            expire=batch_expire,
            create_delay=batch_create_delay,
        )
        self.gemini_batches = None
        if kind == "gemini":
            self.gemini_batches = GeminiBatchEmulation(
                self._new_image, self.png, enabled=batch_api, seconds=batch_seconds,
                faults=batch_faults, expire=batch_expire, create_delay=batch_create_delay,
            )  # fmt: skip
        self._server = _Server(("127.0.0.1", 0), self._handler())
        # shutdown() waits for the serving loop's next poll: 20 ms, not the default half second
        # that every test using the provider would pay at its end.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        """What IMGSAVE_BASE_URL is set to for this kind."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}{WIRES[self.kind][0]}"

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def requests_started(self) -> int:
        """Image-generation requests received so far, answered or not."""
        with self._lock:
            return self._started

    @property
    def requests(self) -> int:
        """Image-generation requests answered so far."""
        with self._lock:
            return len(self.statuses)

    def start(self) -> LoopbackProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> LoopbackProvider:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _admit(self) -> tuple[bool, dict[str, str]]:
        """Take a token from the bucket; (admitted, rate-limit headers)."""
        if self.rate_limit is None:
            return True, {}
        per_second = self.rate_limit / 60
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._refilled) * per_second)
            self._refilled = now
            admitted = self._tokens >= 1
            if admitted:
                self._tokens -= 1
            wait = 0.0 if admitted else (1 - self._tokens) / per_second
            full = (self._capacity - self._tokens) / per_second
            remaining = int(self._tokens)
        headers = {}
        if not admitted:
            headers = {
                "Retry-After": str(max(1, math.ceil(wait))),
                "retry-after-ms": str(max(1, math.ceil(wait * 1000))),
            }
        if self.rate_headers:
            headers["x-ratelimit-limit-requests"] = f"{self.rate_limit:g}"
            headers["x-ratelimit-remaining-requests"] = str(remaining)
            headers["x-ratelimit-reset-requests"] = f"{full:.3f}s"
        return admitted, headers

    def png(self, n: int) -> bytes:
        """Image n: a valid PNG of `image_bytes` that no other image of any server shares."""
        return sample_png(self._salt + n.to_bytes(8, "big", signed=True), self.image_bytes)

    def _image_item(self, n: int) -> dict[str, str]:
        data = self.png(n)
        with self._lock:
            self.sent.append(hashlib.sha256(data).hexdigest())
        if self.answer == "b64":
            return {"b64_json": base64.b64encode(data).decode()}
        url = f"{self.image_base}img/{n:06d}.png"
        with self._lock:
            self.served.append(url)
            self._answered_at[f"/img/{n:06d}.png"] = time.monotonic()
        return {"url": url}

    def _job_image_url(self, n: int) -> str:
        """Image n of a job: served here, counted as sent."""
        with self._lock:
            self.sent.append(hashlib.sha256(self.png(n)).hexdigest())
            path = f"/img/{n:06d}.png"
            self._answered_at[path] = time.monotonic()
        url = self.origin + path
        with self._lock:
            self.served.append(url)
        return url

    def _new_image(self) -> int:
        """A new image's number, counted as sent."""
        n = next(self._counter)
        digest = hashlib.sha256(self.png(n)).hexdigest()
        with self._lock:
            self.sent.append(digest)
        return n

    def _batch_image(self) -> dict[str, object]:
        """One batch line's answer: the body a synchronous request would get."""
        n = next(self._counter)
        usage = {"input_tokens": 12, "output_tokens": 1056, "total_tokens": 1068}
        return {"created": int(time.time()), "data": [self._image_item(n)], "usage": usage}

    def _expired(self, path: str) -> bool:
        if self.expire_after is None:
            return False
        with self._lock:
            answered = self._answered_at.get(path)
        return answered is not None and time.monotonic() - answered > self.expire_after

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The handler class the server makes one of per request: this provider's own."""

        class Handler(_Handler):
            provider = self

        return Handler


class _Handler(BaseHTTPRequestHandler):
    """The loopback provider's answers; each provider serves its own subclass, which names it
    (`provider`)."""

    provider: ClassVar[LoopbackProvider]
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm the second waits
    # for the client's delayed ACK (about 40 ms), which would pose as provider latency.
    disable_nagle_algorithm = True

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        provider = self.provider
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length)
        gemini = provider.gemini_batches
        if gemini is not None and gemini.handles(self.path):
            gemini.serve(self, "POST", body)
        elif self.path.startswith(("/v1/files", "/v1/batches")):
            content_type = self.headers.get("content-type", "")
            self._reply(*provider.batches.post(self.path, content_type, body))
        elif not self._answered_early():
            self._generate(body)

    def _answered_early(self) -> bool:
        """Records the call; answers what no image is made for (a key this API does not take,
        a job's cancel, a route it does not serve, a missing key): True when it answered."""
        provider = self.provider
        key_header = WIRES[provider.kind][1]
        key = self.headers.get(key_header)
        with provider._lock:
            provider.calls.append((self.path, key))
        if self._wrong_key():
            return True
        if provider.jobs is not None and self.path.endswith("/cancel"):
            self._reply(*(provider.jobs.cancel(self.path) or _missing()))
        elif not _routed(provider.kind, self.path):
            self._send(404, b'{"error":{"message":"no such route"}}')
        elif provider.kind != "openai" and not key:
            self._send(401, _error_body(provider.kind, 401, "no API key given"))
        else:
            return False
        return True

    def _generate(self, body: bytes) -> None:
        """A generation request, admitted (or not) by the rate limit, answered in the kind's
        wire format after the latency, as the request's fault says."""
        provider = self.provider
        n = next(provider._counter)
        with provider._lock:
            provider._started += 1
        admitted, limits = provider._admit()
        if not admitted:
            self._send(429, _error_body(provider.kind, 429, "rate limit reached"), limits)
            return
        self._limits = limits
        fault = provider.faults(n)
        if provider.latency or provider.jitter:
            time.sleep(provider.latency + random.random() * provider.jitter)
        if fault == "hang":
            provider._stopping.wait(provider.hang_seconds)
            self._send(504, b'{"error":{"message":"too late"}}')
        elif _prompt(provider.kind, body) is None:
            self._send(400, _error_body(provider.kind, 400, "no prompt"))
        elif provider.kind == "gemini":
            self._gemini(n, fault)
        elif provider.jobs is not None:
            self._job(n, fault, body)
        else:
            self._openai(n, fault)

    def _openai(self, n: int, fault: Fault) -> None:
        """The Images API's answer (OpenAI's, Azure's): the fault's, or the images."""
        provider = self.provider
        if fault in _OPENAI_FAULTS:
            self._send(*_OPENAI_FAULTS[fault])
        elif fault.startswith("429"):
            after = fault.partition(":")[2] or "1"
            self._send(429, b'{"error":{"message":"slow down"}}', {"Retry-After": after})
        elif fault == "401":
            # As real providers do, echo the key that was refused.
            given = self.headers.get("Authorization", "")
            message = f"Incorrect API key provided: {given}"
            self._send(401, json.dumps({"error": {"message": message}}).encode())
        elif fault == "repeat":  # the same URL every time: a provider's cache
            self._json({"created": 0, "data": [{"url": f"{provider.image_base}img/same.png"}]})
        elif fault == "svg" and provider.answer == "b64":
            svg = base64.b64encode(b'<svg xmlns="http://www.w3.org/2000/svg"/>')
            self._json({"created": 0, "data": [{"b64_json": svg.decode()}]})
        elif fault == "notb64" and provider.answer == "b64":
            self._json({"created": 0, "data": [{"b64_json": "not*base64*at#all"}]})
        else:
            self._images(n, fault)

    def _images(self, n: int, fault: Fault) -> None:
        """The Images API's answer with its images (two for "two"), as the fault spells them."""
        count = 2 if fault == "two" else 1
        seed = 0 if fault == "placeholder" else n * 10
        items = [self.provider._image_item(seed + k) for k in range(count)]
        for item in items:
            text = item.get("b64_json", "")
            if fault == "mime":
                lines = [text[i : i + 76] for i in range(0, len(text), 76)]
                item["b64_json"] = "\r\n".join(lines) + "\r\n"
            elif fault == "nopad":
                item["b64_json"] = text.rstrip("=")
        usage = {"input_tokens": 12, "output_tokens": 1056 * count}
        usage["total_tokens"] = 12 + 1056 * count
        self._json({"created": int(time.time()), "data": items, "usage": usage})

    def _gemini(self, n: int, fault: Fault) -> None:
        """generateContent's answer: images as inlineData parts beside a text part;
        a refusal is a 200 saying why."""
        provider = self.provider
        if fault == "500":
            self._send(500, _error_body("gemini", 500, "internal"))
        elif fault.startswith("429"):
            after = fault.partition(":")[2] or "1"
            body = _error_body("gemini", 429, "Resource has been exhausted")
            self._send(429, body, {"Retry-After": after})
        elif fault == "refuse":
            usage = {"promptTokenCount": 9, "totalTokenCount": 9}
            feedback = {"blockReason": "PROHIBITED_CONTENT"}
            self._json({"promptFeedback": feedback, "usageMetadata": usage})
        elif fault == "refuse-image":
            self._json({"candidates": [{"finishReason": "IMAGE_SAFETY", "index": 0}]})
        else:
            count = 2 if fault == "two" else 1
            parts: list[dict[str, object]] = [{"text": "Here is your image."}]
            for k in range(count):
                data = provider.png(n * 10 + k)
                with provider._lock:
                    provider.sent.append(hashlib.sha256(data).hexdigest())
                inline = {"mimeType": "image/png", "data": base64.b64encode(data).decode()}
                parts.append({"inlineData": inline})
            self._json({
                "candidates": [{"content": {"role": "model", "parts": parts},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": {"promptTokenCount": 9,
                                  "candidatesTokenCount": 1290 * count,
                                  "totalTokenCount": 9 + 1290 * count},
                "modelVersion": "gemini-nano-banana-2.1",
            })  # fmt: skip

    def do_HEAD(self) -> None:
        self._image(head=True)

    def do_GET(self) -> None:
        provider = self.provider
        gemini = provider.gemini_batches
        if gemini is not None and gemini.handles(self.path):
            gemini.serve(self, "GET", b"")
            return
        if self.path.startswith(("/v1/files", "/v1/batches")):
            self._reply(*provider.batches.get(self.path))
            return
        if provider.jobs is not None and not self.path.startswith("/img/"):
            if self._wrong_key():
                return
            if not self.headers.get(WIRES[provider.kind][1]):
                self._reply(401, _error_body(provider.kind, 401, "no API key given"), JSON)
                return
            self._reply(*(provider.jobs.get(self.path) or _missing()))
            return
        self._image(head=False)

    def do_PUT(self) -> None:  # fal's cancel
        provider = self.provider
        if self._wrong_key():
            return
        cancelled = provider.jobs.cancel(self.path) if provider.jobs else None
        self._reply(*(cancelled or _missing()))

    def _wrong_key(self) -> bool:
        """Records a request that carries a key; answers a key this API does not take
        as the kind's API does (True: answered)."""
        provider = self.provider
        key = self.headers.get(WIRES[provider.kind][1])
        if key:
            with provider._lock:
                provider.keyed.append((
                    self.command, self.headers.get("Host", ""), self.path, key,
                    self.headers.get("Via"),
                ))  # fmt: skip
        if provider.api_key is None or not key or key.split()[-1] == provider.api_key:
            return False
        status, body = _WRONG_KEY[provider.kind]
        self._send(status, json.dumps(body).encode())
        return True

    def _job(self, n: int, fault: Fault, body: bytes) -> None:
        """A job API's submission: a new job (how it ends is the fault's), or its
        error."""
        provider = self.provider
        assert provider.jobs is not None
        if fault == "500":
            self._send(500, _error_body(provider.kind, 500, "internal"))
        elif fault.startswith("429"):
            after = fault.partition(":")[2] or "1"
            body_429 = _error_body(provider.kind, 429, "too many requests")
            self._send(429, body_429, {"Retry-After": after})
        else:
            wait = "wait" in (self.headers.get("Prefer") or "")
            status, answer, _ = provider.jobs.submit(self.path, json.loads(body), n, fault, wait)
            self._send(status, answer)

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        if isinstance(body, Cut):
            self.close_connection = True
        self.send_header("Content-Length", str(getattr(body, "declared", len(body))))
        self.send_header("Content-Type", content_type)
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def _image(self, *, head: bool) -> None:
        provider = self.provider
        if provider.images_unavailable:
            self._send(503, b"try again later", head=head)
        elif self.path in provider.forbidden_paths or provider._expired(self.path):
            # What an expired signed URL (S3, Azure SAS) answers.
            self._send(403, b"Signature expired", head=head)
        elif self.path in provider.dead_paths or not self.path.startswith("/img/"):
            self._send(404, b"not found", head=head)
        else:
            stem = self.path.removeprefix("/img/").removesuffix(".png")
            body = provider.png(int(stem) if stem.isdigit() else -1)
            self._send(200, body, {"Content-Type": "image/png"}, head=head)

    def _json(self, payload: object) -> None:
        self._send(200, json.dumps(payload).encode())

    def _send(
        self,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
        *,
        head: bool = False,
    ) -> None:
        provider = self.provider
        if self.command == "POST":
            with provider._lock:
                provider.statuses.append(status)
                provider.timeline.append((time.monotonic(), status))
            if status != 429:
                headers = {**getattr(self, "_limits", {}), **(headers or {})}
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/json")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)


def main(argv: list[str] | None = None) -> None:
    """`python -m imgsave._demo.loopback`: serve the test provider until Ctrl-C."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m imgsave._demo.loopback",
        description="An image API on 127.0.0.1 for trying imgsave, in the wire format of any "
        "kind imgsave speaks: it answers every prompt with a new image, as base64 bytes (as GPT "
        "image models and Gemini do), as a URL it serves itself, or as a job to poll (Replicate, "
        "fal, BFL). Set the variables it prints, and run imgsave with --allow-http.",
    )
    parser.add_argument("--kind", choices=sorted(KINDS), default="openai", help="the API's kind")
    parser.add_argument("--latency", type=float, default=0.05, help="seconds per answer")
    parser.add_argument(
        "--answer",
        choices=("b64", "url"),
        default="b64",
        help="openai, azure: b64 is data[].b64_json (needs a store); url is data[].url on "
        "this server",
    )
    args = parser.parse_args(argv)
    with LoopbackProvider(latency=args.latency, answer=args.answer, kind=args.kind) as provider:
        # Its image URLs point at itself, so a store can download them (IMGSAVE_ALLOW_PRIVATE_
        # NETWORK=1 lets downloads reach 127.0.0.1).
        provider.image_base = provider.origin + "/"
        for line in settings_lines(provider, answer=args.answer):
            print(line, flush=True)
        print("serving; Ctrl-C stops (run imgsave with --allow-http: it is plain http)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


def settings_lines(provider: LoopbackProvider, *, answer: str) -> list[str]:
    """The environment that points imgsave at `provider`, one VARIABLE=value a line."""
    kind = KINDS[provider.kind]
    lines = [f"IMGSAVE_BASE_URL={provider.base_url}", f"IMGSAVE_PROVIDER={kind.name}"]
    if kind.name != "openai":
        lines.append("IMGSAVE_API_KEY=loopback  # any key: this API only wants one")
    if kind.facts.needs_model:
        lines.append(f"IMGSAVE_MODEL={kind.example_model}")
    if kind.facts.has_jobs or answer == "url":
        lines.append("IMGSAVE_ALLOW_PRIVATE_NETWORK=1  # its image URLs are on 127.0.0.1")
    return lines


if __name__ == "__main__":
    main()
