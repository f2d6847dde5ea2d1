"""What the worker knows about images before and after generation: sizes, input checks, formats.

Aspect ratio → pixel size sent to the generator (``width``/``height``). These are the SDXL/Flux
training "buckets": about one megapixel, both sides multiples of 64, the same table Replicate's
Flux models use. The ratio is the nearest such bucket, not always exact (16:9 is 1344×768 = 7:4);
the requested ``aspect_ratio`` string is sent along too, so a generator may do its own mapping.

| aspect ratio | width × height |
| --- | --- |
| 1:1 | 1024 × 1024 |
| 16:9 | 1344 × 768 |
| 9:16 | 768 × 1344 |
| 4:3 | 1152 × 896 |
| 3:4 | 896 × 1152 |
| 3:2 | 1216 × 832 |
| 2:3 | 832 × 1216 |
| 21:9 | 1536 × 640 |
| 9:21 | 640 × 1536 |

Formats accepted from a generator, recognised by their first bytes (never by the declared
content type, which generators and CDNs get wrong): PNG, JPEG, WebP, GIF, the contract's four.
``IMAGE_FORMATS`` is the worker's one table of them: every check (generator answers, downloads,
the bytes handed to the Cloudinary upload) goes through ``sniff_image``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.errors import JobFailed
from worker.jobs import Job
from worker.settings import ASPECT_RATIOS, Settings

DIMENSIONS: dict[str, tuple[int, int]] = {
    "1:1": (1024, 1024),
    "16:9": (1344, 768),
    "9:16": (768, 1344),
    "4:3": (1152, 896),
    "3:4": (896, 1152),
    "3:2": (1216, 832),
    "2:3": (832, 1216),
    "21:9": (1536, 640),
    "9:21": (640, 1536),
}

assert set(DIMENSIONS) == set(ASPECT_RATIOS), "the table must cover exactly the contract's ratios"


@dataclass(frozen=True)
class ImageFormat:
    extension: str  # for file names; JPEG's is "jpg", as Cloudinary names it
    media_type: str
    magic: re.Pattern[bytes]  # matched at the start of the data


IMAGE_FORMATS: dict[str, ImageFormat] = {
    "png": ImageFormat("png", "image/png", re.compile(rb"\x89PNG\r\n\x1a\n")),
    "jpeg": ImageFormat("jpg", "image/jpeg", re.compile(rb"\xff\xd8\xff")),
    # A RIFF container (any length) whose form type is WEBP; RIFF alone may be WAVE or AVI.
    "webp": ImageFormat("webp", "image/webp", re.compile(rb"RIFF.{4}WEBP", re.DOTALL)),
    "gif": ImageFormat("gif", "image/gif", re.compile(rb"GIF8[79]a")),
}


def validate_job(job: Job, settings: Settings) -> tuple[int, int]:
    """Check a job's input before anything is spent on it; return the (width, height) to request.

    Raises ``JobFailed`` (reason ``bad_input``) with a sentence meant for the job's owner.
    """
    if not job.prompt.strip():
        raise JobFailed("prompt is empty", "bad_input")
    if len(job.prompt) > settings.max_prompt_chars:
        raise JobFailed(
            f"prompt is {len(job.prompt)} characters, over the {settings.max_prompt_chars} limit",
            "bad_input",
        )
    if job.aspect_ratio not in DIMENSIONS:
        # The value comes from the user: keep it short in the message.
        shown = job.aspect_ratio if len(job.aspect_ratio) <= 20 else job.aspect_ratio[:20] + "…"
        raise JobFailed(
            f"aspect ratio {shown!r} is not one of {', '.join(ASPECT_RATIOS)}", "bad_input"
        )
    return DIMENSIONS[job.aspect_ratio]


def sniff_image(data: bytes) -> str | None:
    """The image format by magic bytes: "png", "jpeg", "webp", "gif", or None if not an image."""
    return next((name for name, fmt in IMAGE_FORMATS.items() if fmt.magic.match(data)), None)


def human_size(n: int) -> str:
    """Byte counts for people: "31 MB", "1.5 KB", "900 bytes" (binary units, as limits are)."""
    for unit, scale in (("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f}".removesuffix(".0") + f" {unit}"
    return f"{n} bytes"


def too_large(size: int | None, limit: int) -> JobFailed:
    """The failure for an image over ``MAX_IMAGE_BYTES``; ``size`` is None when only known to be
    over the limit (a stream cut short)."""
    if size is None:
        return JobFailed(f"image is over the {human_size(limit)} limit", "image_too_large")
    shown, limit_shown = human_size(size), human_size(limit)
    if shown == limit_shown:  # "20 MB, over the 20 MB limit" would read as a contradiction
        shown, limit_shown = f"{size} bytes", f"{limit} bytes"
    return JobFailed(f"image is {shown}, over the {limit_shown} limit", "image_too_large")
