"""S3 for the tests: moto's server in-process on a free port, a bucket whose objects anyone can
read (as a public bucket behind a CDN would serve them), and the settings that point at it."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from moto.server import ThreadedMotoServer

from imgsave.core.settings import StoreSettings

REGION = "us-east-1"


class _MotoServer(ThreadedMotoServer):
    """moto's threaded server, whose stop takes 20 ms instead of half a second: werkzeug's loop
    looks for the shutdown request every poll interval (0.5 s by default), and twenty storage
    tests paid it each. (moto is pinned; this overrides its server thread's entry point.)"""

    def _server_entry(self) -> None:
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=0.02)


@dataclass
class S3:
    endpoint: str
    bucket: str
    server: ThreadedMotoServer

    def stop(self) -> None:
        """The store goes away: connections to it are refused."""
        self.server.stop()

    def start_again(self) -> None:
        """Back at the same address, holding what it held (moto keeps it in this process)."""
        host, port = self.server.get_host_and_port()
        self.server = _MotoServer(ip_address=host, port=port, verbose=False)
        self.server.start()

    @property
    def public_url(self) -> str:
        return f"{self.endpoint}/{self.bucket}"

    def settings(self, prefix: str = "scenes", **extra: object) -> StoreSettings:
        return StoreSettings(
            url=f"s3://{self.bucket}/{prefix}",
            public_url=self.public_url,
            endpoint=self.endpoint,
            region=REGION,
            path_style=True,
            access_key_id="testing",
            secret_access_key="testing-secret-key",
            allow_http=True,
            **extra,  # type: ignore[arg-type]
        )

    def configure(self, config: Path = Path("imgsave.toml")) -> None:
        """Add this server's [store] connection settings to the test's imgsave.toml (the URL
        and public URL come from the environment, as a user's cron line would give them)."""
        config.write_text(
            config.read_text()
            + f'\n[store]\nendpoint = "{self.endpoint}"\nregion = "{REGION}"\npath_style = true\n'
            'access_key_id = "testing"\nsecret_access_key = "testing-secret-key"\n'
            "allow_http = true\n"
        )

    def env(self) -> dict[str, str]:
        return {"IMGSAVE_STORE": self.settings().url or "", "IMGSAVE_PUBLIC_URL": self.public_url}

    def keys(self) -> list[str]:
        answer = httpx.get(f"{self.public_url}?list-type=2&max-keys=1000")
        answer.raise_for_status()
        import re

        return re.findall(r"<Key>([^<]+)</Key>", answer.text)


@contextmanager
def moto_s3() -> Iterator[S3]:
    server = _MotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    s3 = S3(f"http://{host}:{port}", f"images-{secrets.token_hex(4)}", server)
    try:
        httpx.put(f"{s3.endpoint}/{s3.bucket}").raise_for_status()
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": "*",
                    "Action": "s3:GetObject",
                    "Resource": f"arn:aws:s3:::{s3.bucket}/*",
                }
            ],
        }
        httpx.put(f"{s3.endpoint}/{s3.bucket}?policy", content=json.dumps(policy))
        yield s3
    finally:
        s3.stop()
