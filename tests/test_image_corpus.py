"""What imgsave stores as an image (core/image_bytes.py, core/image_formats.py): real images in
every stored format and in the forms encoders write them (Pillow's: progressive, interlaced,
animated, lossless, with EXIF and thumbnails, a Multi-Picture JPEG) are stored byte for byte;
bytes that only start like an image are refused, each with the reason: a bare signature, a
file cut anywhere, anything after the end marker, a header declaring a decompression bomb, a
broken checksum. A GIF's comments (where a GIF that is also a script keeps its code) are
removed and the picture kept."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from imgsave._demo.sample_images import sample_png
from imgsave.core.image_bytes import MAX_IMAGE_PIXELS, NotAnImage, checked, decode_data_uri

from .images import encoded

CAP = 10**8


def accepted(data: bytes) -> bytes:
    return checked(data, max_bytes=CAP).data


def refused(data: bytes, why: str) -> None:
    with pytest.raises(NotAnImage, match=why):
        checked(data, max_bytes=CAP)


def frames(ext: str, count: int = 3, **options: object) -> bytes:
    pictures = [
        Image.frombytes("RGB", (16, 12), bytes([n * 40]) * 16 * 12 * 3) for n in range(count)
    ]
    out = io.BytesIO()
    pictures[0].save(out, {"png": "PNG", "gif": "GIF", "webp": "WEBP"}[ext], save_all=True,
                     append_images=pictures[1:], **options)  # fmt: skip
    return out.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares `width`x`height`, every checksum right, one tiny IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4))
        + chunk(b"IEND", b"")
    )


REAL = {
    "png": encoded("png"),
    "png, interlaced": encoded("png", 33, 17, interlace=1),
    "png, palette": encoded("png", 9, 9, mode="P", optimize=True),
    "png, grey with alpha": encoded("png", 9, 9, mode="LA"),
    "png, 16-bit grey": encoded("png", 9, 9, mode="I;16"),
    "png, RGBA": encoded("png", 9, 9, mode="RGBA"),
    "jpeg, grey": encoded("jpg", 9, 9, mode="L"),
    "jpeg, CMYK": encoded("jpg", 9, 9, mode="CMYK"),
    "webp, with alpha": encoded("webp", 9, 9, mode="RGBA"),
    "png, animated (APNG)": frames("png"),
    "jpeg": encoded("jpg", 40, 30, quality=90),
    "jpeg, progressive": encoded("jpg", 40, 30, progressive=True),
    "jpeg, with EXIF": encoded("jpg", 40, 30, exif=b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x00\x00"),
    "jpeg, optimised, restart markers": encoded(
        "jpg", 64, 64, optimize=True, restart_marker_rows=1
    ),
    "gif": encoded("gif", 20, 10),
    "gif, animated": frames("gif"),
    "webp, lossy": encoded("webp", 30, 20),
    "webp, lossless": encoded("webp", 30, 20, lossless=True),
    "webp, animated": frames("webp"),
    "the loopback provider's": sample_png(b"loopback", 4096),
}


@pytest.mark.parametrize("name", REAL)
def test_real_images_of_every_stored_kind_are_stored_byte_for_byte(name: str):
    assert accepted(REAL[name]) == REAL[name]


def test_a_multi_picture_jpeg_keeps_its_second_picture():
    """Ultra HDR and MPO files put a second whole JPEG (a gain map) after the first one's end."""
    both = encoded("jpg", seed=1) + encoded("jpg", seed=2)
    assert accepted(both) == both


@settings(max_examples=40, deadline=None)
@given(
    ext=st.sampled_from(["png", "jpg", "gif", "webp"]),
    width=st.integers(1, 64),
    height=st.integers(1, 64),
    seed=st.integers(0, 2**16),
)
def test_any_image_an_encoder_writes_is_stored_and_any_cut_of_it_is_refused(
    ext: str, width: int, height: int, seed: int
):
    data = encoded(ext, width, height, seed=seed)
    assert accepted(data) == data
    for cut in {1, len(data) // 3, len(data) // 2, len(data) - 1}:
        with pytest.raises(NotAnImage):
            checked(data[:-cut], max_bytes=CAP)


@pytest.mark.parametrize("ext", ["png", "jpg", "gif", "webp"])
@pytest.mark.parametrize(
    "tail", [b"<html><script>alert(1)</script></html>", b"\0", b"PK\x03\x04 a zip after it"]
)
def test_anything_after_an_images_end_is_refused(ext: str, tail: bytes):
    refused(encoded(ext) + tail, "after its end")


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x89PNG\r\n\x1a\n", "a png cut short: it has no anything after its signature"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not one|does not begin with its header"),
        (png_declaring(100_000, 100_000), "100000×100000 pixels, more than the"),
        (png_declaring(0, 10), "holds no picture"),
        (b"\xff\xd8\xff", "jpeg"),
        (b"\xff\xd8\xff\xd9", "jpeg"),
        (b"GIF89a", "a gif cut short in its header"),
        (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b";", "pixels, more than"),
        (b"RIFF\x04\x00\x00\x00WEBP", "a webp with no image in it"),
        (b"RIFF\xff\x00\x00\x00WEBPVP8 ", "a webp cut short"),
    ],
    ids=lambda v: v[:24] if isinstance(v, str) else None,
)
def test_bytes_that_only_start_like_an_image_are_refused_with_why(data: bytes, why: str):
    refused(data, why)


def test_a_jpeg_or_webp_declaring_a_bomb_of_a_canvas_is_refused():
    jpeg = bytearray(encoded("jpg", 8, 8))
    frame = jpeg.index(b"\xff\xc0")
    jpeg[frame + 5 : frame + 9] = struct.pack(">HH", 60_000, 60_000)
    refused(bytes(jpeg), "60000×60000 pixels")
    webp = bytearray(frames("webp"))
    canvas = webp.index(b"VP8X") + 12
    webp[canvas : canvas + 6] = (16383).to_bytes(3, "little") * 2
    refused(bytes(webp), "16384×16384 pixels")
    assert MAX_IMAGE_PIXELS < 16384 * 16384


def test_a_broken_checksum_in_a_png_chunk_that_draws_is_refused():
    data = bytearray(encoded("png"))
    idat = data.index(b"IDAT")
    data[idat + 5] ^= 0xFF
    refused(bytes(data), "IDAT chunk fails its checksum")


def test_a_gif_whose_comment_holds_a_script_is_stored_without_it_and_shows_the_same_picture():
    """`GIF89a/*` is also the start of a script; the comment is where its code sits. The
    comment goes, the picture stays: a paid image is not thrown away for its metadata."""
    picture = Image.frombytes("RGB", (4, 4), bytes(range(48)))
    out = io.BytesIO()
    picture.save(out, "GIF", comment=b"*/=alert(document.domain)//<script>alert(1)</script>")
    data = out.getvalue()
    stored = accepted(data)
    assert b"alert" in data and b"alert" not in stored
    assert len(stored) < len(data)
    assert accepted(stored) == stored, "what is stored passes the check again"
    with Image.open(io.BytesIO(data)) as before, Image.open(io.BytesIO(stored)) as after:
        assert before.convert("RGB").tobytes() == after.convert("RGB").tobytes()


def test_a_data_uri_is_the_image_it_holds():
    import base64

    png = encoded("png")
    text = base64.b64encode(png).decode()
    assert decode_data_uri(f"data:image/png;base64,{text}") == png
    assert decode_data_uri(f"DATA:image/png;BASE64,{text}") == png
    assert decode_data_uri("data:text/plain,a%20b") == b"a b"
    assert decode_data_uri("https://example.com/x.png") is None
    assert decode_data_uri("data:image/png;base64") is None


def test_a_data_uri_in_an_answers_url_is_taken_as_the_paid_image_it_is():
    import base64

    from imgsave.adapters.imageapi.wires import decoded_images, images_of

    png = encoded("png")
    payload = {
        "data": [
            {"url": "data:image/png;base64," + base64.b64encode(png).decode()},
            {"url": "data:image/png;base64,***not base64***"},
            {"url": "javascript:alert(1)"},
        ]
    }
    answer = images_of(payload, decoded_images(payload), allow_http=False)
    assert [(i.data, i.url, i.undecodable) for i in answer.images] == [
        (png, None, False),
        (b"data:image/png;base64,***not base64***", None, True),  # kept as sent: paid for
    ]
    assert answer.refused_urls == 1
