"""Turning what a generator answered into image bytes: base64, JSON, image URLs, links.

Shared by the kinds: the generic protocol's answer shapes (raw bytes, ``image_base64`` /
``b64_json``, ``image_url`` / ``url``, ``cloudinary_link``), OpenAI's ``b64_json`` / ``url``,
Replicate's and fal's output URLs. Every image goes through ``sniff_image`` (pipeline/images.py)
and the size cap; every URL through the ``ImageDownloader`` (https, public addresses, size cap).
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import httpx

from worker.errors import JobFailed
from worker.http import load_json
from worker.pipeline.download import ImageDownloader
from worker.pipeline.generators.base import GeneratedImage
from worker.pipeline.images import sniff_image, too_large

NOT_AN_IMAGE = "not a PNG, JPEG, WebP or GIF image"
STATUS_DOCUMENT_BYTES = 1 << 20  # a provider's JSON about a generation (not the image itself)


def json_limit(max_image_bytes: int) -> int:
    """The size cap of a JSON answer that may carry a base64 image (4/3 of the image)."""
    return max_image_bytes * 4 // 3 + 65536


def is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")


def parse_json(body: bytes, who: str = "generator") -> Any:
    try:
        return load_json(body)  # depth-bounded: never a RecursionError
    except ValueError:
        raise JobFailed(f"{who} returned invalid JSON", "generator_bad_output") from None


def text_field(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) and value.strip() else None


def decode_base64(value: str, max_bytes: int, who: str = "generator") -> GeneratedImage:
    """Base64 image data (plain, or a ``data:`` URI), checked: size before decoding, then the
    magic bytes."""
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or not header.endswith(";base64"):
            raise JobFailed(f"{who} returned a data URI that is not base64", "generator_bad_output")
    compact = "".join(value.split())  # some encoders wrap lines; validate=True refuses those
    estimated = len(compact) * 3 // 4
    if estimated > max_bytes:  # refuse before allocating the decoded copy
        raise too_large(estimated, max_bytes)
    try:
        data = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise JobFailed(
            f"{who} returned invalid base64 image data", "generator_bad_output"
        ) from None
    image_format = sniff_image(data)
    if image_format is None:
        raise JobFailed(
            f"{who} returned base64 data that is {NOT_AN_IMAGE}", "generator_bad_output"
        )
    return GeneratedImage(data, image_format, None, "base64")


async def download(downloader: ImageDownloader, url: str) -> GeneratedImage:
    """An image URL a generator answered with, fetched under the download rules."""
    data = await downloader.fetch(url)
    return GeneratedImage(data, sniff_image(data), None, "url")


def checked_link(value: str, who: str = "generator") -> str:
    """A ``cloudinary_link``: an http(s) URL with a host, short, without spaces."""
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = None
    if (
        url is None
        or url.scheme not in ("http", "https")
        or not url.host
        or len(value) > 2048
        or any(c.isspace() for c in value)
    ):
        raise JobFailed(f"{who} returned an invalid cloudinary_link", "generator_bad_output")
    return value


def first_url(output: Any) -> str | None:
    """The first http(s) URL of a provider's output: a string, or a list of them (Replicate)."""
    candidates = output if isinstance(output, list) else [output]
    for item in candidates:
        if isinstance(item, str) and item.startswith(("https://", "http://")):
            return item
    return None
