"""Distinct, valid images of any size for the loopback provider, the demo and the benchmarks:
each a 1x1 PNG whose private ancillary chunk carries what makes it unique and pads it to the
size asked, so it passes imgsave's structure check (core/image_formats.py) as any real PNG
does, and costs nothing to make."""

from __future__ import annotations

import hashlib
import struct
import zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A 1x1 8-bit RGB image: its header and its one (filtered, compressed) scanline.
_IHDR = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
_IDAT = zlib.compress(b"\x00\x00\x00\x00")
# Ancillary, private, safe to copy: viewers skip it.
_FILLER = b"imSv"
# Signature, IHDR, IDAT, IEND and the filler chunk's own 12 bytes.
OVERHEAD = 8 + (12 + len(_IHDR)) + (12 + len(_IDAT)) + 12 + 12


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def sample_png(tag: bytes, size: int = 256) -> bytes:
    """A valid PNG of `size` bytes (or the least a PNG carrying `tag` takes) that no other tag
    shares."""
    room = max(size - OVERHEAD, len(tag))
    filler = tag + hashlib.sha256(tag).digest() * (room // 32 + 1)
    return b"".join((
        SIGNATURE,
        _chunk(b"IHDR", _IHDR),
        _chunk(_FILLER, filler[:room]),
        _chunk(b"IDAT", _IDAT),
        _chunk(b"IEND", b""),
    ))  # fmt: skip
