"""What an image is to imgsave: bytes whose own signature says png, jpeg, webp or gif and whose
structure holds to its end (image_formats.py), and the content-addressed key it is stored
under. Pure: no I/O.

Only those four formats are stored: an SVG or HTML answer on a public bucket is stored XSS, and
anything without a known signature is not an image a browser will show.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

from imgsave.core.documents import SceneRef
from imgsave.core.image_formats import MAX_IMAGE_PIXELS, walked
from imgsave.core.image_formats import NotAnImage as NotAnImage  # raised by checked()

# (extension, Content-Type) by leading bytes; webp is RIFF....WEBP.
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"GIF87a", "gif", "image/gif"),
    (b"GIF89a", "gif", "image/gif"),
)


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


def checked(data: bytes, *, max_bytes: int, max_pixels: int = MAX_IMAGE_PIXELS) -> Image:
    """The bytes as an Image (a GIF without its comments: image_formats.py), or NotAnImage
    naming what they are instead."""
    if len(data) > max_bytes:
        raise NotAnImage(f"{len(data):,} bytes, more than the {max_bytes:,} allowed")
    kind = kind_of(data)
    if kind is None:
        raise NotAnImage(f"not a png, jpeg, webp or gif ({_describe(data)})")
    data = walked(data, kind[0], max_pixels=max_pixels)
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


_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/]")
_DATA_URI = re.compile(r"data:[^,;]*(;[^,;]*)*;base64,", re.IGNORECASE)


def decode_base64(text: str) -> bytes | None:
    """Every form of base64 a provider may send, decoded; None when it is not base64 at all.

    The strict C decoder takes the common case (one line, padded) at full speed. Otherwise:
    MIME line breaks (CRLF or LF), spaces, a missing padding, the URL-safe alphabet and a
    `data:...;base64,` prefix are all legitimate ways to send the same bytes.
    """
    try:
        return binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        pass
    prefix = _DATA_URI.match(text)
    if prefix:
        text = text[prefix.end() :]
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        return None
    raw = b"".join(raw.split()).translate(bytes.maketrans(b"-_", b"+/")).rstrip(b"=")
    if _NOT_BASE64.search(raw) or len(raw) % 4 == 1:
        return None
    try:
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        return None


def decode_data_uri(uri: str) -> bytes | None:
    """The bytes a `data:` URI holds (base64 in any form, or percent-encoded), or None when it
    is not one."""
    head, comma, payload = uri.partition(",")
    if not comma or head[:5].lower() != "data:":
        return None
    if head.lower().endswith(";base64"):
        return decode_base64(payload)
    try:
        return unquote_to_bytes(payload)
    except ValueError:
        return None


# A path segment longer than this is stored under its hash: S3 and R2 refuse keys over 1,024
# bytes and most file systems names over 255, and a key holds a prefix, two segments and a
# 69-byte file name. The log's `key` beside `project` and `scene_id` records the mapping.
MAX_SEGMENT_BYTES = 200
HASHED = "~"


def key_segment(text: str) -> str:
    """A project key or scene id as one path segment that is safe in a URL and an object key,
    fits every store, and that no two different texts share: everything but [A-Za-z0-9.-] is
    written _xx, and a segment that would be too long is `~` and the text's sha256."""
    out = []
    for char in text:
        if char.isascii() and (char.isalnum() or char in ".-"):
            out.append(char)
        else:
            out.extend(f"_{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))
    segment = "".join(out)
    # "." and ".." mean something in a path; an empty segment would vanish.
    if not segment.strip("."):
        segment = "".join(f"_{ord(c):02x}" for c in text) or "_"
    if len(segment) > MAX_SEGMENT_BYTES:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
        return HASHED + digest
    return segment


def scene_segment(ref: SceneRef) -> str:
    """The scene's folder: its index as digits, or its id as a segment that is never only
    digits (an id "2" is `_32`), so a scene with id "2" and an id-less scene at index 2 never
    share a folder."""
    if ref.id is None:
        return str(ref.index)
    segment = key_segment(ref.id)
    if segment.isdigit():
        segment = f"_{ord(segment[0]):02x}{segment[1:]}"
    return segment


def segment_text(segment: str) -> str | None:
    """key_segment undone; None when `segment` is not one it could have written, or is a hash
    (the text is then found by hashing the candidates: `key_segment(text) == segment`)."""
    if segment.startswith(HASHED):
        return None
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
    """PREFIX/PROJECT/SCENE/SHA256.EXT: SCENE is the scene's id, else its index (see
    scene_segment). The same bytes for the same scene are the same key, so writing one twice is
    harmless."""
    parts = [p for p in prefix.strip("/").split("/") if p]
    return "/".join(
        [*parts, key_segment(project), scene_segment(ref), f"{image.sha256}.{image.ext}"]
    )
