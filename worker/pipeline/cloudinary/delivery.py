"""Cloudinary delivery URLs: reading one (a generator's ``cloudinary_link``) and building the
thumbnail URL of an asset.

URLs are built by the SDK (``CloudinaryImage.build_url``) with the options passed explicitly,
never from its global config (see ``account``). The thumbnail is a transformation URL of the same
asset: fill crop, ``THUMBNAIL_SIZE`` square, with the asset's version and format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from cloudinary import CloudinaryImage

from worker.errors import JobFailed
from worker.pipeline.cloudinary.account import CloudinaryAccount

# Extensions a delivered asset's path may end with: any format Cloudinary serves, which is more
# than the worker uploads (the asset may have been put there by the generator).
_IMAGE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "tiff", "avif", "heic", "svg", "ico", "jxl"}
)
_VERSION_SEGMENT = re.compile(r"^v\d+$")
_TRANSFORMATION_SEGMENT = re.compile(r"^(?:[a-z]{1,3}_[^,]+|\$\w+_[^,]+)(?:,[a-z$][^,]*_[^,]+)*$")
_SHARED_CDN_HOST = re.compile(r"^res(?:-\d+)?\.cloudinary\.com$")
_PRIVATE_CDN_HOST = re.compile(r"^([a-z0-9_-]+)-res(?:-\d+)?\.cloudinary\.com$")


@dataclass(frozen=True)
class DeliveredImage:
    """What a delivery URL names: the asset, and the options that address its host."""

    public_id: str
    version: int | None
    format: str | None
    delivery: dict[str, Any]  # ``CloudinaryAccount.delivery_options()`` for that host


def build_thumbnail_url(
    public_id: str, version: int | None, fmt: str | None, delivery: dict[str, Any], size: int
) -> str:
    return CloudinaryImage(public_id, version=version, format=fmt).build_url(
        width=size, height=size, crop="fill", **delivery
    )


def parse_delivery_url(image_url: str, account: CloudinaryAccount) -> DeliveredImage:
    """``<host>[/<cloud>]/image/upload/[<transformations>/][v<version>/]<public_id>[.ext]``.

    The host is Cloudinary's shared CDN, a private CDN subdomain, or one of ``account``'s own
    delivery hosts; anything else fails the job (reason ``cloudinary_link``).
    """

    def not_cloudinary(why: str) -> JobFailed:
        return JobFailed(
            f"The generator's cloudinary_link {image_url[:200]!r} {why}", "cloudinary_link"
        )

    parts = urlsplit(image_url.strip())
    host = parts.netloc.lower()
    segments = [unquote(s) for s in parts.path.split("/")[1:]]
    if parts.scheme not in ("http", "https") or not host:
        raise not_cloudinary("is not an http(s) URL")
    if _SHARED_CDN_HOST.match(host):
        cloud = segments.pop(0) if segments else ""
        delivery = account.delivery_options(
            cloud_name=cloud, secure=True, private_cdn=False, cname=None,
            secure_distribution=None, sign_url=False,
        )  # fmt: skip
    elif match := _PRIVATE_CDN_HOST.match(host):
        delivery = account.delivery_options(
            cloud_name=match.group(1), secure=True, private_cdn=True, cname=None,
            secure_distribution=f"{match.group(1)}-res.cloudinary.com", sign_url=False,
        )  # fmt: skip
    elif host in account.delivery_hosts():
        delivery = account.delivery_options()
        if not delivery["private_cdn"]:
            delivery["cloud_name"] = segments.pop(0) if segments else ""
    else:
        raise not_cloudinary("is not a Cloudinary delivery URL")
    if not delivery["cloud_name"] or segments[:2] != ["image", "upload"] or len(segments) < 3:
        raise not_cloudinary("is not a Cloudinary URL of an uploaded image")

    rest = segments[2:]
    versions = [i for i, s in enumerate(rest[:-1]) if _VERSION_SEGMENT.match(s)]
    if versions:
        version: int | None = int(rest[versions[0]][1:])
        rest = rest[versions[0] + 1 :]
    else:
        # Without a version, leading segments that read as transformations are dropped.
        version = None
        while len(rest) > 1 and _TRANSFORMATION_SEGMENT.match(rest[0]):
            rest = rest[1:]
    path = "/".join(rest)
    stem, dot, extension = path.rpartition(".")
    if dot and stem and extension.lower() in _IMAGE_EXTENSIONS:
        return DeliveredImage(stem, version, extension.lower(), delivery)
    return DeliveredImage(path, version, None, delivery)
