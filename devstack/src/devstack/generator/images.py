"""The images the generator stand-in answers with: small, plausible, cheap to make.

Tests and benchmarks ask for thousands of images, so they are seeded (the same prompt gives the
same bytes), cached, and rendered off the event loop that the whole devstack shares.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import random

from PIL import Image

FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}


@functools.lru_cache(maxsize=64)
def render_image(seed: str, width: int, height: int, fmt: str = "png") -> bytes:
    """A small image that looks like something: smooth colour fields seeded by ``seed``.

    Posterised to 64 colours at a quarter of the size then scaled up, so a 1 MP PNG is ~15 KB
    and takes ~0.1 s (cached: benchmarks ask for the same few images over and over).
    """
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    grid = Image.new("RGB", (6, 6))
    grid.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(36)])
    quarter = grid.resize((max(1, width // 4), max(1, height // 4)), Image.Resampling.BICUBIC)
    image = quarter.quantize(64, dither=Image.Dither.NONE).resize(
        (width, height), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    if fmt in ("png", "gif"):
        image.save(buffer, fmt.upper())
    else:
        image.convert("RGB").save(buffer, fmt.upper(), quality=80)
    return buffer.getvalue()


async def render(seed: str, width: int, height: int, fmt: str = "png") -> bytes:
    # ~0.1 s per megapixel: off the event loop, which the whole devstack (and often the worker
    # under test) shares.
    return await asyncio.to_thread(render_image, seed, width, height, fmt)


@functools.lru_cache(maxsize=8)
def noise_png(size: int) -> bytes:
    """A real PNG of about ``size`` bytes: noise does not compress, so 3 bytes per pixel."""
    side = max(8, int((size / 3) ** 0.5))
    image = Image.frombytes("RGB", (side, side), random.Random(size).randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def oversize_bytes(size: int) -> bytes:
    """PNG magic followed by filler: looks like an image until its size is noticed."""
    header = render_image("oversize", 8, 8)
    return (header + b"\0" * max(0, size - len(header)))[:size]
