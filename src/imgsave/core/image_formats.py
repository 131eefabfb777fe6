"""Each stored format's structure, walked to its end: PNG's chunks, JPEG's segments and scans,
GIF's blocks, WebP's RIFF chunks. Bytes that start like an image but are not one (a signature
and nothing, a file cut short, HTML appended after the end marker, a header claiming a
100000x100000 canvas that every thumbnailer downstream would try to allocate) are refused
before they reach a bucket. Pure; the pixels are never decoded, so the walk costs next to
nothing beside the bytes' hash.

GIF comments are removed, not refused: a comment extension holds free text no viewer shows,
and it is where a GIF that is also a script (`GIF89a/*...*/=alert(1)`, a "GIFAR"-style
polyglot) keeps its code; without it the same picture remains, and a paid image is kept.
PNG and JPEG cannot be such polyglots (their first bytes are not text), and their text
metadata carries provenance (XMP, C2PA) that is kept as it is.
"""

from __future__ import annotations

import re
import struct
import zlib

# The most pixels a stored image may declare: what Pillow, the thumbnailer most Python apps
# use, takes as a decompression bomb's threshold (its MAX_IMAGE_PIXELS).
MAX_IMAGE_PIXELS = 89_478_485


class NotAnImage(ValueError):
    """Bytes imgsave will not store; the message says why."""


def walked(data: bytes, ext: str, *, max_pixels: int = MAX_IMAGE_PIXELS) -> bytes:
    """The bytes to store for `data`, whose signature says `ext`: the same bytes (a GIF: less
    its comments), or NotAnImage saying where the structure breaks."""
    view = memoryview(data)
    if ext == "png":
        _png(view, max_pixels)
    elif ext == "jpg":
        _jpeg(view, 0, max_pixels, outer=True)
    elif ext == "gif":
        return _gif(data, max_pixels)
    elif ext == "webp":
        _webp(view, max_pixels)
    else:
        raise NotAnImage(f"no structure known for {ext}")
    return data


def _dimensions(fmt: str, width: int, height: int, max_pixels: int) -> None:
    if width == 0 or height == 0:
        raise NotAnImage(f"a {fmt} of {width}×{height} pixels holds no picture")
    if width * height > max_pixels:
        raise NotAnImage(
            f"a {fmt} of {width}×{height} pixels, more than the {max_pixels:,} allowed "
            "(a decompression bomb for whatever decodes it)"
        )


# -- PNG: signature, IHDR, ..., IDAT..., IEND; each chunk length, type, data, CRC -----------

_PNG_COLOURS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def _png(data: memoryview, max_pixels: int) -> None:
    pos, end, chunks, images = 8, len(data), 0, 0
    while True:
        kind, after = _png_chunk(data, pos, first=chunks == 0)
        if chunks == 0:
            _png_header(data, pos + 8, max_pixels)
        images += kind == b"IDAT"
        chunks += 1
        pos = after
        if kind == b"IEND":
            break
    if images == 0:
        raise NotAnImage("a png with no image data (IDAT)")
    if pos != end:
        raise NotAnImage(f"a png with {end - pos:,} bytes after its end (IEND)")


def _png_chunk(data: memoryview, pos: int, *, first: bool) -> tuple[bytes, int]:
    """The type of the chunk at `pos`, and where it ends."""
    end = len(data)
    if pos + 12 > end:
        missing = "anything after its signature" if first else "its end (IEND)"
        raise NotAnImage(f"a png cut short: it has no {missing}")
    length, kind = struct.unpack_from(">I4s", data, pos)
    body, after = pos + 8, pos + 12 + length
    if not kind.isalpha():
        raise NotAnImage(f"a png with a chunk that is not one at byte {pos}")
    if after > end:
        raise NotAnImage(f"a png cut short in its {kind.decode()} chunk")
    if first and (kind != b"IHDR" or length != 13):
        raise NotAnImage("a png that does not begin with its header (IHDR)")
    # Like libpng: a critical chunk's checksum must hold, an ancillary one's is advisory.
    stated = int.from_bytes(data[body + length : after], "big")
    if kind[0] < ord("a") and zlib.crc32(data[pos + 4 : body + length]) != stated:
        raise NotAnImage(f"a png whose {kind.decode()} chunk fails its checksum")
    return kind, after


def _png_header(data: memoryview, body: int, max_pixels: int) -> None:
    width, height, depth, colour = struct.unpack_from(">IIBB", data, body)
    if depth not in _PNG_COLOURS.get(colour, ()):
        raise NotAnImage(f"a png with colour type {colour} at {depth} bits, which none has")
    _dimensions("png", width, height, max_pixels)


# -- JPEG: SOI, segments (marker, length), a frame (SOFn), scans (SOS + entropy data), EOI ----

# SOF0-3, 5-7, 9-11, 13-15 (0xC4 is DHT, 0xC8 reserved, 0xCC DAC).
_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
# The marker that ends a scan's entropy-coded data: 0xFF then anything but a stuffed zero, a
# restart marker or more fill.
# (One 0xFF, not a run: the search is ten times faster, and fill before a marker is skipped
# by the segment walk.)
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg(data: memoryview, pos: int, max_pixels: int, *, outer: bool) -> int:
    """Walks one JPEG from its SOI at `pos`; where it ends. The outer one may be followed by
    further whole JPEGs (a Multi-Picture or Ultra HDR file's gain map) and by nothing else."""
    pos, framed, scanned = pos + 2, False, False
    while True:
        marker, pos = _jpeg_marker(data, pos)
        if marker == 0xD9:
            break
        if marker in _STANDALONE:
            continue
        length = _jpeg_segment(data, pos, marker)
        if marker in _FRAMES:
            _jpeg_frame(data, pos, length, max_pixels)
            framed = True
        pos += length
        if marker == 0xDA:
            pos, scanned = _jpeg_scan(data, pos, framed=framed), True
    if not scanned:
        raise NotAnImage("a jpeg with no image data (no scan)")
    return _jpeg_rest(data, pos, max_pixels) if outer else pos


def _jpeg_marker(data: memoryview, pos: int) -> tuple[int, int]:
    """The marker at `pos` (after any fill bytes), and where its segment begins."""
    end = len(data)
    if pos >= end or data[pos] != 0xFF:
        raise NotAnImage(f"a jpeg with no marker where one must be, at byte {pos}")
    while pos < end and data[pos] == 0xFF:
        pos += 1
    if pos >= end:
        raise NotAnImage("a jpeg cut short: it has no end (EOI)")
    return data[pos], pos + 1


def _jpeg_segment(data: memoryview, pos: int, marker: int) -> int:
    """The length of the segment at `pos` (its two length bytes included)."""
    if marker in (0x00, 0xD8) or pos + 2 > len(data):
        raise NotAnImage(f"a jpeg broken at byte {pos - 1}")
    length = data[pos] << 8 | data[pos + 1]
    if length < 2 or pos + length > len(data):
        raise NotAnImage(f"a jpeg cut short in a segment at byte {pos - 2}")
    return length


def _jpeg_frame(data: memoryview, pos: int, length: int, max_pixels: int) -> None:
    if length < 8:
        raise NotAnImage("a jpeg whose frame header is too short")
    height, width = struct.unpack_from(">HH", data, pos + 3)
    _dimensions("jpeg", width, height, max_pixels)


def _jpeg_scan(data: memoryview, pos: int, *, framed: bool) -> int:
    """Past a scan's entropy-coded data: where the next marker is."""
    if not framed:
        raise NotAnImage("a jpeg scan before its frame header")
    found = _SCAN_END.search(data, pos)
    if found is None:
        raise NotAnImage("a jpeg cut short: it has no end (EOI)")
    return found.start()


def _jpeg_rest(data: memoryview, pos: int, max_pixels: int) -> int:
    end = len(data)
    while pos < end and data[pos : pos + 3].tobytes() == b"\xff\xd8\xff":
        pos = _jpeg(data, pos, max_pixels, outer=False)
    if pos != end:
        raise NotAnImage(f"a jpeg with {end - pos:,} bytes after its end (EOI)")
    return pos


# -- GIF: header, screen, colour table, blocks (extensions, images) up to the trailer --------


def _gif(data: bytes, max_pixels: int) -> bytes:
    if len(data) < 13:
        raise NotAnImage("a gif cut short in its header")
    width, height, packed = struct.unpack_from("<HHB", data, 6)
    _dimensions("gif", width, height, max_pixels)
    pos = 13 + _colour_table(packed)
    comments: list[tuple[int, int]] = []
    images = 0
    while (block := _gif_block(data, pos)) != 0x3B:
        start, pos = pos, _gif_past(data, pos, block, max_pixels)
        images += block == 0x2C
        if block == 0x21 and data[start + 1] == 0xFE:
            comments.append((start, pos))
    if images == 0:
        raise NotAnImage("a gif with no image in it")
    if pos + 1 != len(data):
        raise NotAnImage(f"a gif with {len(data) - pos - 1:,} bytes after its end (trailer)")
    return _without(data, comments)


def _colour_table(flags: int) -> int:
    return 3 << ((flags & 7) + 1) if flags & 0x80 else 0


def _gif_block(data: bytes, pos: int) -> int:
    if pos >= len(data):
        raise NotAnImage("a gif cut short: it has no trailer")
    return data[pos]


def _gif_past(data: bytes, pos: int, block: int, max_pixels: int) -> int:
    """Where the block (an extension, or an image) at `pos` ends."""
    if block == 0x21 and pos + 2 <= len(data):
        return _sub_blocks(data, pos + 2)
    if block == 0x2C and pos + 11 <= len(data):
        width, height, flags = struct.unpack_from("<HHB", data, pos + 5)
        _dimensions("gif frame", width, height, max_pixels)
        return _sub_blocks(data, pos + 10 + _colour_table(flags) + 1)  # past the LZW code size
    raise NotAnImage(f"a gif broken at byte {pos}")


def _without(data: bytes, spans: list[tuple[int, int]]) -> bytes:
    if not spans:
        return data
    kept, last = [], 0
    for start, stop in spans:
        kept.append(data[last:start])
        last = stop
    kept.append(data[last:])
    return b"".join(kept)


def _sub_blocks(data: bytes, pos: int) -> int:
    """Past a chain of data sub-blocks (a length byte, that many bytes; 0 ends it)."""
    end = len(data)
    while pos < end:
        size = data[pos]
        pos += size + 1
        if size == 0:
            return pos
    raise NotAnImage("a gif cut short in a block")


# -- WebP: RIFF size WEBP, then chunks (fourcc, size, data, padded to even) ---------------------


def _webp(data: memoryview, max_pixels: int) -> None:
    end = len(data)
    (declared,) = struct.unpack_from("<I", data, 4)
    if declared + 8 > end:
        raise NotAnImage("a webp cut short")
    if declared + 8 < end:
        raise NotAnImage(f"a webp with {end - declared - 8:,} bytes after its end (RIFF)")
    pos, pictures = 12, 0
    while pos < end:
        if pos + 8 > end:
            raise NotAnImage(f"a webp broken at byte {pos}")
        fourcc, size = struct.unpack_from("<4sI", data, pos)
        body, after = pos + 8, pos + 8 + size + (size & 1)
        if body + size > end:
            raise NotAnImage(f"a webp cut short in its {fourcc.decode('latin-1')!r} chunk")
        dimensions = _webp_chunk(data, fourcc, body, size)
        if dimensions is not None:
            _dimensions("webp", *dimensions, max_pixels)
            pictures += fourcc != b"VP8X"
        pos = after
    if pictures == 0:
        raise NotAnImage("a webp with no image in it")


def _webp_chunk(data: memoryview, fourcc: bytes, body: int, size: int) -> tuple[int, int] | None:
    """(width, height) a chunk declares (the canvas, a frame or a bitstream), or None."""
    if (fourcc == b"VP8X" and size >= 10) or (fourcc == b"ANMF" and size >= 16):
        at = body + 4 if fourcc == b"VP8X" else body + 6
        width = int.from_bytes(data[at : at + 3], "little") + 1
        return width, int.from_bytes(data[at + 3 : at + 6], "little") + 1
    if fourcc == b"VP8 ":
        if size < 10 or data[body + 3 : body + 6].tobytes() != b"\x9d\x01\x2a":
            raise NotAnImage("a webp whose VP8 bitstream has no frame header")
        width, height = struct.unpack_from("<HH", data, body + 6)
        return width & 0x3FFF, height & 0x3FFF
    if fourcc == b"VP8L":
        if size < 5 or data[body] != 0x2F:
            raise NotAnImage("a webp whose lossless bitstream has no header")
        (bits,) = struct.unpack_from("<I", data, body + 1)
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    return None
