"""From a provider's answer to a URL worth saving: bytes (decoded, or downloaded while the
provider's link still works) → checked by signature → put in the user's store → permanent URL.

When the store keeps refusing, the bytes go to the spool (never discarded). Without a store, a
URL answer is kept as the provider's URL (it expires; the run warns once), and a bytes answer
cannot be saved anywhere: it is spooled and the run must stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgsave.adapters.imageapi.downloads import DownloadFailed, Fetcher
from imgsave.adapters.imageapi.wires import Received
from imgsave.adapters.storage import spool
from imgsave.adapters.storage.object_store import Store, StoreUnavailable
from imgsave.core.documents import SceneRef
from imgsave.core.image_bytes import Image, NotAnImage, checked, object_key
from imgsave.core.settings import Settings

# Checking and hashing this many bytes runs in a worker thread, off the event loop.
HASH_OFF_LOOP = 256 * 1024
# One provider image, downloaded: generous, but not the minutes a generation may take.
DOWNLOAD_DEADLINE = 120.0

NO_STORE = (
    "the image API answers with image bytes (b64_json) and no store is configured, so there is "
    "nowhere to keep them: set IMGSAVE_STORE (s3://BUCKET/PREFIX or file:///DIR) and "
    'IMGSAVE_PUBLIC_URL (docs/usage.md: "Keeping the images"); the image is kept in {path}'
)


@dataclass(frozen=True)
class Kept:
    url: str
    # What image.generated records beside the URL: key, sha256, bytes, source_url.
    fields: dict[str, Any] = field(default_factory=dict)
    # Why this is the provider's own (expiring) URL although a store is configured.
    provisional: str | None = None


class NotKept(Exception):
    """This image has no URL to save; `spooled` says where its bytes are, `fatal` that no later
    image can do better (no store for a bytes answer), `expired` that the provider's link died."""

    def __init__(
        self,
        reason: str,
        *,
        spooled: Path | None = None,
        fatal: bool = False,
        expired: bool = False,
        refused: bool = False,
    ):
        super().__init__(reason)
        self.spooled = spooled
        self.fatal = fatal
        self.expired = expired
        self.refused = refused


class Intake:
    def __init__(
        self,
        *,
        store: Store | None,
        fetcher: Fetcher | None,
        log_dir: Path,
        max_image_bytes: int,
    ):
        self.store = store
        self._fetcher = fetcher
        self._log_dir = log_dir
        self._max_bytes = max_image_bytes

    async def keep(
        self,
        project: str,
        ref: SceneRef,
        received: Received,
        replaces: tuple[str, ...] = (),
        *,
        spooled: Path | None = None,
    ) -> Kept:
        """`received` kept: stored (its permanent URL), or NotKept. `spooled`: the bytes are
        already in the spool there; a store that still refuses leaves them where they are."""
        if received.undecodable:
            raw = received.data or b""
            as_sent = Image(raw, "b64", "text/plain", hashlib.sha256(raw).hexdigest())
            path = spool.put(
                self._log_dir, project, ref, as_sent, replaces=replaces, source_url=received.url
            )
            raise NotKept(
                f"the answer's b64_json is not base64 in any form imgsave knows; it is kept as "
                f"sent in {path}",
                spooled=path,
            )
        if self.store is None:
            if received.data is None and received.url is not None:
                return Kept(received.url)  # it expires: the engine warns once per run
            image = await self._checked(received.data or b"")
            path = spool.put(
                self._log_dir, project, ref, image, replaces=replaces, source_url=received.url
            )
            raise NotKept(NO_STORE.format(path=path), spooled=path, fatal=True)
        data = received.data
        if data is None:
            url = received.url or ""
            try:
                data = await self._download(url)
            except NotKept as exc:
                if exc.expired or exc.refused:
                    raise
                # The link may still work for a while: the image stays reachable in its scene,
                # and `imgsave rehost` copies it into the store, rather than it being dropped.
                return Kept(url, {"source_url": url}, provisional=str(exc))
        image = await self._checked(data)
        key = object_key(self.store.prefix, project, ref, image)
        try:
            await self.store.put(key, image)
        except StoreUnavailable as exc:
            path = spooled or spool.put(
                self._log_dir, project, ref, image, replaces=replaces, source_url=received.url
            )
            raise NotKept(f"{exc}; the image is kept in {path}", spooled=path) from None
        fields: dict[str, Any] = {
            "key": key, "sha256": image.sha256, "bytes": image.size,
            "content_type": image.content_type,
        }  # fmt: skip
        if received.url:
            fields["source_url"] = received.url
        return Kept(self.store.public_url(key), fields)

    async def _download(self, url: str) -> bytes:
        if self._fetcher is None:  # pragma: no cover - a Intake with a store has a fetcher
            raise NotKept("no downloader for the provider's URL")
        try:
            return await self._fetcher.download(url)
        except DownloadFailed as exc:
            raise NotKept(f"{exc} ({url})", expired=exc.expired, refused=exc.refused) from None

    async def _checked(self, data: bytes) -> Image:
        try:
            if len(data) > HASH_OFF_LOOP:
                return await asyncio.to_thread(checked, data, max_bytes=self._max_bytes)
            return checked(data, max_bytes=self._max_bytes)
        except NotAnImage as exc:
            raise NotKept(f"the answer is not an image imgsave stores: {exc}") from None


@contextlib.asynccontextmanager
async def opened_intake(
    settings: Settings, store: Store | None, log_dir: Path
) -> AsyncIterator[Intake]:
    """A Intake with its downloader open for as long as the run lasts."""
    max_bytes = settings.store.max_image_bytes
    if store is None:
        yield Intake(store=None, fetcher=None, log_dir=log_dir, max_image_bytes=max_bytes)
        return
    async with Fetcher(
        max_bytes=max_bytes,
        timeout=min(settings.provider.timeout, DOWNLOAD_DEADLINE),
        allow_http=settings.allow_http,
        allow_private_network=settings.allow_private_network,
    ) as fetcher:
        yield Intake(store=store, fetcher=fetcher, log_dir=log_dir, max_image_bytes=max_bytes)
