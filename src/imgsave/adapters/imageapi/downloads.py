"""Downloading a provider's image URL before it expires: https only (http with --allow-http),
public addresses only on every hop (netguard.py), a few redirects at most, a size cap enforced
while streaming, one total deadline, and no credentials (a fresh client: the provider's
Authorization header never reaches an image host).
"""

from __future__ import annotations

import asyncio
from typing import Self
from urllib.parse import urljoin

import httpx

from imgsave.adapters.imageapi.netguard import PrivateAddress, download_transport
from imgsave.adapters.imageapi.tls import shared_context
from imgsave.core.url_rule import shorten, url_problem

MAX_REDIRECTS = 3
# The provider's link is gone: regenerating is the only way to get this image again.
EXPIRED_STATUSES = frozenset({403, 404, 410})


class DownloadFailed(Exception):
    """`expired`: the link is gone; `refused`: imgsave will never fetch it (a private address,
    a scheme the URL rule refuses), so it must not be saved as a link either."""

    def __init__(self, reason: str, *, expired: bool = False, refused: bool = False):
        super().__init__(reason)
        self.expired = expired
        self.refused = refused


class Fetcher:
    def __init__(
        self,
        *,
        max_bytes: int,
        timeout: float,
        allow_http: bool = False,
        allow_private_network: bool = False,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self._max_bytes = max_bytes
        self._timeout = timeout
        self._allow_http = allow_http
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            follow_redirects=False,
            transport=download_transport(allow_private_network, transport),
            verify=shared_context(),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.aclose()

    async def download(self, url: str) -> bytes:
        """The bytes at `url`, or DownloadFailed saying why (expired for 403/404/410)."""
        try:
            async with asyncio.timeout(self._timeout):
                return await self._follow(url)
        except TimeoutError:
            raise DownloadFailed(f"no complete image within {self._timeout:g}s") from None
        except PrivateAddress as exc:
            raise DownloadFailed(str(exc), refused=True) from None
        except httpx.HTTPError as exc:
            raise DownloadFailed(f"download failed: {type(exc).__name__}: {exc}") from None

    async def _follow(self, url: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            problem = url_problem(url, allow_http=self._allow_http)
            if problem:
                raise DownloadFailed(f"will not download {shorten(url)!r}: {problem}", refused=True)
            async with self._client.stream("GET", url) as response:
                if response.is_redirect and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise DownloadFailed(
                        f"the image URL answered {response.status_code}",
                        expired=response.status_code in EXPIRED_STATUSES,
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > self._max_bytes:
                    raise DownloadFailed(f"the image is {int(declared):,} bytes, over the cap")
                chunks = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self._max_bytes:
                        raise DownloadFailed(f"the image is over {self._max_bytes:,} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise DownloadFailed(f"more than {MAX_REDIRECTS} redirects")
