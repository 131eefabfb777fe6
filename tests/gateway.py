"""A reverse proxy on loopback, as an API gateway is: requests under `/gw` go to the upstream
origin with the path less that prefix, headers and body as sent, a `Via` header added; the
answers come back as the upstream wrote them (URLs in them still name the upstream's origin,
which is what makes a gateway hard for a client that follows them). `add_headers` are put on
every request it forwards (a gateway that opts its clients into something)."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

import httpx

from .served import Served

PREFIX = "/gw"
VIA = "1.1 test-gateway"
_HOP = {"host", "connection", "keep-alive", "transfer-encoding", "content-length"}


class Gateway(Served):
    def __init__(self, upstream: str, add_headers: dict[str, str] | None = None):
        self.upstream = upstream.rstrip("/")
        self.add_headers = add_headers or {}
        # (method, path as received, headers as received, lower-cased) of every request.
        self.forwarded: list[tuple[str, str, dict[str, str]]] = []
        self._client = httpx.Client(timeout=30)
        super().__init__(self._handler())

    @property
    def base(self) -> str:
        """What IMGSAVE_BASE_URL starts with behind this gateway."""
        return self.origin + PREFIX

    def __exit__(self, *exc_info: object) -> None:
        super().__exit__(*exc_info)
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
