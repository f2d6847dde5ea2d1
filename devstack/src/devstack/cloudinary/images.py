"""Pillow's part: what an uploaded file is, and an asset re-encoded for a delivery URL.

Kept apart because it is the slow part: callers run it off the event loop.
"""

from __future__ import annotations

import io

from PIL import Image, ImageOps

FORMATS = {  # URL extension -> (Pillow format, content type)
    "png": ("PNG", "image/png"),
    "jpg": ("JPEG", "image/jpeg"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
    "gif": ("GIF", "image/gif"),
    "bmp": ("BMP", "image/bmp"),
    "tiff": ("TIFF", "image/tiff"),
}
TRANSFORMATION_KEYS = frozenset({"c", "w", "h", "g", "q", "f"})
_CROPS = frozenset({"fill", "scale", "fit", "limit"})


def inspect_image(data: bytes) -> tuple[str, int, int]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # a truncated file fails here, not at delivery
        fmt = (img.format or "").lower()
        if fmt == "jpeg":
            fmt = "jpg"
        if fmt not in FORMATS:
            raise ValueError(f"unsupported format {fmt}")
        return fmt, img.width, img.height


def transform(data: bytes, transformation: str, extension: str) -> bytes:
    options = (
        dict(p.partition("_")[::2] for p in transformation.split(",")) if transformation else {}
    )
    unknown = sorted(set(options) - TRANSFORMATION_KEYS)
    if unknown:
        raise ValueError(f"Invalid transformation - {', '.join(unknown)} not supported here")
    crop = options.get("c", "scale")
    if crop not in _CROPS:
        raise ValueError(f"Invalid transformation - crop mode {crop} is not supported here")
    try:
        width = int(options["w"]) if "w" in options else None
        height = int(options["h"]) if "h" in options else None
    except ValueError:
        raise ValueError("Invalid transformation - w and h must be whole pixels here") from None
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        out: Image.Image = img
        if width or height:
            w = width or round(img.width * height / img.height)  # type: ignore[operator]
            h = height or round(img.height * w / img.width)
            if crop == "fill":
                out = ImageOps.fit(img, (w, h), Image.Resampling.LANCZOS)
            elif crop == "scale":
                out = img.resize((w, h), Image.Resampling.LANCZOS)
            elif crop == "fit" or (crop == "limit" and (img.width > w or img.height > h)):
                out = ImageOps.contain(img, (w, h), Image.Resampling.LANCZOS)
        pillow_format = FORMATS[extension][0]
        if pillow_format == "JPEG" and out.mode not in ("RGB", "L"):
            out = out.convert("RGB")
        buffer = io.BytesIO()
        out.save(buffer, format=pillow_format)
        return buffer.getvalue()
