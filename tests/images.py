"""Real images, made by Pillow, for tests that need bytes imgsave's image check accepts
(core/image_formats.py walks each format to its end)."""

from __future__ import annotations

import functools
import io
import random

from PIL import Image

# Pillow's format name for each extension imgsave stores.
FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "webp": "WEBP"}


def encoded(
    ext: str,
    width: int = 8,
    height: int = 6,
    *,
    seed: int = 0,
    mode: str = "RGB",
    **options: object,
) -> bytes:
    """An image of `width`x`height` noise (distinct per `seed`) in the format of `ext`, its
    pixels in `mode` (RGB, RGBA, L, P, I;16, ...)."""
    rng = random.Random(seed)
    picture = Image.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    if mode != "RGB":
        picture = picture.convert(mode)
    out = io.BytesIO()
    picture.save(out, FORMATS[ext], **options)
    return out.getvalue()


@functools.cache
def tiny(ext: str) -> bytes:
    return encoded(ext)
