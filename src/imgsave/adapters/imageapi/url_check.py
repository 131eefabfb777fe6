"""Does the image host still serve this URL? Provider URLs often expire within the hour.

Only http(s) URLs that passed the URL rule are contacted, with no credentials, no cookies and no
redirects followed. An answer we cannot read (5xx, timeout) is "unknown", never "expired": a URL
is only given up on when its host says it is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import httpx

from imgsave.adapters.imageapi.netguard import download_transport
from imgsave.adapters.imageapi.tls import shared_context

DEAD = frozenset({401, 403, 404, 410})


async def check_urls(
    urls: Iterable[str],
    *,
    concurrency: int = 16,
    request_timeout: float = 10.0,
    allow_private_network: bool = False,
) -> dict[str, bool | None]:
    """url -> True (served), False (gone), None (could not tell: also a host on a private
    address, which is never contacted unless allowed; netguard.py)."""
    semaphore = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(
        timeout=request_timeout,
        follow_redirects=False,
        headers={"User-Agent": "imgsave-check/1"},
        transport=download_transport(allow_private_network),
        verify=shared_context(),
    ) as client:

        async def one(url: str) -> tuple[str, bool | None]:
            async with semaphore:
                # A total deadline: httpx's timeout is per read, and a host trickling its
                # headers a byte at a time would otherwise hold the check for minutes.
                try:
                    async with asyncio.timeout(request_timeout):
                        return url, await _alive(client, url)
                except TimeoutError:
                    return url, None

        return dict(await asyncio.gather(*(one(u) for u in dict.fromkeys(urls))))


async def _alive(client: httpx.AsyncClient, url: str) -> bool | None:
    try:
        status = (await client.head(url)).status_code
        if status < 400:
            return True
        # Some hosts refuse HEAD (405, 501) or answer it differently: ask for one byte instead.
        async with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as response:
            status = response.status_code
    except httpx.HTTPError:
        return None
    if status < 400:
        return True
    return False if status in DEAD else None
