"""What an image is to imgsave: bytes whose own signature says png, jpeg, webp or gif, and the
content-addressed key it is stored under. Pure: no I/O.

Only those four formats are stored: an SVG or HTML answer on a public bucket is stored XSS, and
anything without a known signature is not an image a browser will show.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .document import SceneRef

# (extension, Content-Type) by leading bytes; webp is RIFF....WEBP.
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
)


class NotAnImage(ValueError):
    """Bytes imgsave will not store; the message says why."""


@dataclass(frozen=True)
class Image:
    """Image bytes checked by signature, with their sha256."""

    data: bytes
    ext: str
    content_type: str
    sha256: str

    @property
    def size(self) -> int:
        return len(self.data)


def kind_of(data: bytes) -> tuple[str, str] | None:
    """(extension, Content-Type) from the bytes' own signature, or None."""
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp", "image/webp"
    for signature, ext, content_type in _SIGNATURES:
        if data.startswith(signature):
            return ext, content_type
    return None


def checked(data: bytes, *, max_bytes: int) -> Image:
    """The bytes as an Image, or NotAnImage naming what they are instead."""
    if len(data) > max_bytes:
        raise NotAnImage(f"{len(data):,} bytes, more than the {max_bytes:,} allowed")
    kind = kind_of(data)
    if kind is None:
        raise NotAnImage(f"not a png, jpeg, webp or gif ({_describe(data)})")
    return Image(data, kind[0], kind[1], hashlib.sha256(data).hexdigest())


def _describe(data: bytes) -> str:
    head = data[:256].lstrip().lower()
    if not data:
        return "empty"
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    if head.startswith((b"<!doctype html", b"<html")):
        return "HTML"
    return f"starts {data[:8].hex()}"


def key_segment(text: str) -> str:
    """A project key or scene id as one path segment that is safe in a URL and an object key,
    and that no two different texts share: everything but [A-Za-z0-9.-] is written _xx."""
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char in ".-"):
            out.append(char)
        else:
            out.extend(f"_{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
    segment = "".join(out)
    # "." and ".." mean something in a path; an empty segment would vanish.
    return segment if segment.strip(".") else "".join(f"_{ord(c):02x}" for c in text) or "_"


def segment_text(segment: str) -> str | None:
    """key_segment undone; None when `segment` is not one it could have written."""
    out = bytearray()
    i = 0
    while i < len(segment):
        char = segment[i]
        if char == "_":
            try:
                out.append(int(segment[i + 1 : i + 3], 16))
            except ValueError:
                return None
            i += 3
        else:
            out += char.encode()
            i += 1
    try:
        return out.decode("utf-8", "surrogatepass") or None
    except UnicodeDecodeError:
        return None


def object_key(prefix: str, project: str, ref: SceneRef, image: Image) -> str:
    """PREFIX/PROJECT/SCENE/SHA256.EXT: SCENE is the scene's id, else its index. The same bytes
    for the same scene are the same key, so writing one twice is harmless."""
    scene = key_segment(ref.id) if ref.id is not None else str(ref.index)
    parts = [p for p in prefix.strip("/").split("/") if p]
    return "/".join([*parts, key_segment(project), scene, f"{image.sha256}.{image.ext}"])
