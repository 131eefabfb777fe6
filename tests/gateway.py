"""A reverse proxy on loopback, as an API gateway is: requests under `/gw` go to the upstream
origin with the path less that prefix, headers and body as sent, a `Via` header added; the
answers come back as the upstream wrote them (URLs in them still name the upstream's origin,
which is what makes a gateway hard for a client that follows them). `add_headers` are put on
every request it forwards (a gateway that opts its clients into something)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

PREFIX = "/gw"
VIA = "1.1 test-gateway"
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


class Gateway:
    def __init__(self, upstream: str, add_headers: dict[str, str] | None = None):
        self.upstream = upstream.rstrip("/")
        self.add_headers = add_headers or {}
        # (method, path as received, headers as received, lower-cased) of every request.
        self.forwarded: list[tuple[str, str, dict[str, str]]] = []
        self._client = httpx.Client(timeout=30)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def origin(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def base(self) -> str:
        """What IMGSAVE_BASE_URL starts with behind this gateway."""
        return self.origin + PREFIX

    def __enter__(self) -> Gateway:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._client.close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                received = {k.lower(): v for k, v in self.headers.items()}
                gateway.forwarded.append((self.command, self.path, received))
                if not self.path.startswith(PREFIX + "/"):
                    self._answer(404, {}, b"not behind this gateway")
                    return
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                headers |= {"Via": VIA, **gateway.add_headers}
                answer = gateway._client.request(
                    self.command,
                    gateway.upstream + self.path.removeprefix(PREFIX),
                    headers=headers,
                    content=body,
                )
                kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
                kept.pop("content-encoding", None)
                self._answer(answer.status_code, kept, answer.content)

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _forward

        return Handler
