"""Object storage, the third outside system: where image bytes are kept, as `s3://BUCKET[/PREFIX]`
(any S3 API: AWS, R2, Supabase Storage's S3 endpoint, MinIO) or `file:///DIR`, through obstore.

Every obstore error becomes a StoreUnavailable naming the store and what failed, with secrets
masked. Keys are content-addressed, so a put repeated after an unknown outcome is harmless and no
conditional put is needed (Supabase's S3 endpoint ignores them).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote, urlsplit

from imgsave.core.image_bytes import Image, key_segment, kind_of
from imgsave.core.redaction import credentials_problem, redact
from imgsave.core.settings import Settings, StoreSettings
from imgsave.core.url_rule import url_problem
from imgsave.errors import CannotWork, UsageError
from imgsave.logs import logger

if TYPE_CHECKING:
    from obstore.store import ObjectStore

PUT_ATTEMPTS = 3
# The only object names that can be an image imgsave stored: SHA256.EXT of a stored type.
_IMAGE_NAME = re.compile(r"([0-9a-f]{64})\.(png|jpg|webp|gif)")
PROBE_DIR = ".imgsave-probe"
# A key is PREFIX/PROJECT/SCENE/SHA256.EXT with segments of at most 201 bytes and a 69-byte
# name (core/image_bytes.py): this leaves every key under the 1,024 bytes S3 and R2 allow.
MAX_PREFIX_BYTES = 500


class StoreUnavailable(CannotWork):
    """The store refused or could not be reached; the message says which and why."""


class Store:
    def __init__(
        self,
        store: ObjectStore,
        *,
        prefix: str,
        public_url: str,
        where: str,
        settings: StoreSettings,
        secrets: tuple[str, ...],
        attributes: bool = True,
        local_root: Path | None = None,
    ):
        # A local directory keeps no Content-Type or Cache-Control (obstore refuses them there);
        # the web server in front of it sets them from the extension.
        self._attributes = attributes
        self._store = store
        self.prefix = prefix
        self._public = public_url.rstrip("/")
        self.where = where
        self._settings = settings
        self._secrets = secrets
        # A file:// store's directory: the probe's folder is removed there once empty.
        self._local_root = local_root

    @classmethod
    def from_settings(cls, settings: Settings) -> Store | None:
        """The configured store, or None; UsageError when its settings cannot work."""
        conf = settings.store
        if not conf.url:
            return None
        parts = urlsplit(conf.url)
        if parts.scheme == "file":
            return cls._local(conf, Path(unquote(parts.path)), settings)
        if parts.scheme == "s3":
            return cls._s3(conf, parts.netloc, parts.path.strip("/"), settings)
        raise UsageError(f"store {conf.url!r}: use s3://BUCKET[/PREFIX] or file:///DIR")

    @classmethod
    def _local(cls, conf: StoreSettings, root: Path, settings: Settings) -> Store:
        from obstore.store import LocalStore

        if not root.is_absolute():
            raise UsageError(f"store {conf.url!r}: file:// needs an absolute path, file:///DIR")
        if not conf.public_url:
            raise UsageError(
                f"store {conf.url}: set IMGSAVE_PUBLIC_URL (or [store] public_url) to the URL "
                "your web server serves that directory under"
            )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(
                f"store {conf.url}: cannot create {root}: {exc.strerror}"
            ) from None
        return cls(
            LocalStore(root),
            attributes=False,
            local_root=root,
            prefix="",
            public_url=_checked_public_url(conf.public_url, settings),
            where=conf.url or "",
            settings=conf,
            secrets=settings.secrets,
        )

    @classmethod
    def _s3(cls, conf: StoreSettings, bucket: str, prefix: str, settings: Settings) -> Store:
        from obstore.store import S3Store

        if not bucket:
            raise UsageError(f"store {conf.url!r}: no bucket, use s3://BUCKET[/PREFIX]")
        if len(prefix.encode()) > MAX_PREFIX_BYTES:
            raise UsageError(
                f"store prefix is {len(prefix.encode())} bytes: at most {MAX_PREFIX_BYTES}, so "
                "that every key fits the 1,024 bytes S3 and R2 allow"
            )
        # The usual AWS_* variables count as much as [store]: obstore reads them too.
        endpoint = (
            conf.endpoint or os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT")
        )
        allow_http = conf.allow_http or os.environ.get("AWS_ALLOW_HTTP", "").lower() == "true"
        # AWS_ENDPOINT_URL is not one of imgsave's settings: its credentials are refused here,
        # as [store] endpoint's are when the settings are read, and it is never repeated.
        problem = credentials_problem(
            endpoint,
            "the store endpoint ([store] endpoint, AWS_ENDPOINT_URL)",
            "[store] access_key_id and secret_access_key, or AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY",
        )
        if problem:
            raise UsageError(problem)
        if endpoint and urlsplit(endpoint).scheme == "http" and not allow_http:
            # obstore says only "builder error" here.
            raise UsageError(
                f"store endpoint {endpoint} is plain http: set [store] allow_http = true "
                "(only for a store on a network you trust)"
            )
        public = conf.public_url
        if not public:
            if endpoint:
                raise UsageError(
                    f"store {conf.url} at {endpoint}: set IMGSAVE_PUBLIC_URL (or [store] "
                    "public_url) to the address its objects are served from"
                )
            region = conf.region or "us-east-1"
            public = f"https://{bucket}.s3.{region}.amazonaws.com"
        config: dict[str, Any] = {}
        for key, value in (
            ("endpoint", endpoint),
            ("region", conf.region),
            ("access_key_id", conf.access_key_id),
            ("secret_access_key", conf.secret_access_key),
        ):
            if value:
                config[key] = value
        if conf.path_style:
            config["virtual_hosted_style_request"] = False
        try:
            store = S3Store(
                bucket,
                config=config,  # type: ignore[arg-type]
                client_options={
                    "allow_http": allow_http,
                    "timeout": "60s",
                    "connect_timeout": "10s",
                },
                # obstore's own default retries for three minutes: imgsave retries a put itself
                # and spools the bytes, so the run is not held that long.
                retry_config={
                    "max_retries": 2,
                    "retry_timeout": timedelta(seconds=30),
                    "backoff": {
                        "init_backoff": timedelta(milliseconds=100),
                        "max_backoff": timedelta(seconds=2),
                        "base": 2,
                    },
                },
            )
        except Exception as exc:
            raise UsageError(f"store {conf.url}: {_one_line(exc, settings.secrets)}") from None
        return cls(
            store,
            prefix=prefix,
            public_url=_checked_public_url(public, settings),
            where=conf.url or "",
            settings=conf,
            secrets=settings.secrets,
        )

    def public_url(self, key: str) -> str:
        return f"{self._public}/{quote(key, safe='/')}"

    def owns(self, url: str) -> bool:
        """Whether `url` is one of this store's permanent URLs."""
        return url.startswith(self._public + "/")

    async def put(self, key: str, image: Image) -> None:
        """Write the object; StoreUnavailable after PUT_ATTEMPTS failures."""
        import obstore

        attributes = (
            {"Content-Type": image.content_type, "Cache-Control": self._settings.cache_control}
            if self._attributes
            else None
        )
        for attempt in range(1, PUT_ATTEMPTS + 1):
            try:
                await obstore.put_async(self._store, key, image.data, attributes=attributes)
                return
            except Exception as exc:  # obstore raises its own and Python's (OSError) errors
                reason = _one_line(exc, self._secrets)
                if attempt == PUT_ATTEMPTS:
                    raise StoreUnavailable(
                        f"store {self.where}: cannot write {key}: {reason}"
                    ) from None
                logger.debug("store: put attempt %d failed (%s); retrying", attempt, reason)
                await asyncio.sleep(0.2 * 2**attempt)

    async def probe(self) -> None:
        """Prove the store takes writes before anything is spent: a wrong bucket, key or
        endpoint is found here, for free."""
        import obstore

        key = "/".join(p for p in (self.prefix, PROBE_DIR, secrets.token_hex(8)) if p)
        try:
            await obstore.put_async(self._store, key, b"imgsave probe")
        except Exception as exc:
            raise StoreUnavailable(
                f"store {self.where} does not take writes: {_one_line(exc, self._secrets)} "
                "(nothing was generated; check the bucket, endpoint and keys)"
            ) from None
        try:
            await obstore.delete_async(self._store, key)
        except Exception as exc:  # writes work, which is what counts; a stray probe is harmless
            logger.debug("store: probe %s left in place: %s", key, _one_line(exc, self._secrets))
            return
        if self._local_root is not None:
            # A directory holds no object of its own: an empty folder would be left behind in
            # the user's directory. Another run's probe still in it keeps it, harmlessly.
            with contextlib.suppress(OSError):
                (self._local_root / PROBE_DIR).rmdir()

    async def objects(self, prefix: str) -> AsyncIterator[tuple[str, datetime, int]]:
        """(key, last modified, size) of every object under `prefix`."""
        import obstore

        try:
            async for batch in obstore.list(self._store, prefix or None):
                for meta in batch:
                    yield str(meta["path"]), meta["last_modified"], int(meta["size"])
        except Exception as exc:
            raise StoreUnavailable(
                f"store {self.where}: cannot list {prefix or '/'}: {_one_line(exc, self._secrets)}"
            ) from None

    def scene_folder(self, project: str, scene_segment: str) -> str:
        """PREFIX/PROJECT/SCENE: where a scene's images are kept (images.object_key)."""
        parts = [p for p in self.prefix.strip("/").split("/") if p]
        return "/".join([*parts, key_segment(project), scene_segment])

    async def holds_image(self, key: str, size: int) -> bool:
        """Whether the object is provably an image imgsave put: named SHA256.EXT of a stored
        type, no larger than allowed, its bytes hashing to that name and carrying that type's
        signature. Anyone who can write to the bucket can drop `evil.html` or an SVG under a
        scene's folder; only this is ever written into a document."""
        match = _IMAGE_NAME.fullmatch(key.rsplit("/", 1)[-1])
        if match is None or size > self._settings.max_image_bytes:
            return False
        data = await self.get(key)
        kind = kind_of(data)
        return kind is not None and kind[0] == match[2] and sha256(data).hexdigest() == match[1]

    async def get(self, key: str) -> bytes:
        """The object's bytes (the caller has checked its listed size)."""
        import obstore

        try:
            result = await obstore.get_async(self._store, key)
            return bytes(await result.bytes_async())
        except Exception as exc:
            raise StoreUnavailable(
                f"store {self.where}: cannot read {key}: {_one_line(exc, self._secrets)}"
            ) from None


def _checked_public_url(url: str, settings: Settings) -> str:
    problem = url_problem(url.rstrip("/") + "/x.png", allow_http=settings.allow_http)
    if problem:
        raise UsageError(f"public URL {url!r} cannot prefix saved URLs: {problem}")
    return url


def _one_line(exc: BaseException, secrets: tuple[str, ...]) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # obstore's messages run to several nested causes; the first sentence says what failed.
    return redact(text[:400], secrets)
