"""Image delivery: ``/<cloud>/image/upload/[transformation/][v<version>/]<public_id>.<ext>``.

Serves the stored assets the way delivery URLs built by the SDK expect, with the small subset
of transformations listed in the package docstring; anything else is refused as Cloudinary does.
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import web

from devstack.cloudinary.assets import StoredAsset
from devstack.cloudinary.images import FORMATS, TRANSFORMATION_KEYS, transform

_VERSION = re.compile(r"^v\d+$")


class Delivery:
    """The delivery side of :class:`~devstack.cloudinary.CloudinaryStandIn`."""

    base_url: str
    cloud_name: str
    assets: dict[str, StoredAsset]

    def delivery_url(self, asset: StoredAsset) -> str:
        return (
            f"{self.base_url}/{self.cloud_name}/image/upload/"
            f"v{asset.version}/{asset.public_id}.{asset.format}"
        )

    async def _deliver(self, request: web.Request) -> web.Response:
        if request.match_info["cloud"] != self.cloud_name:
            return _not_found(request.match_info["path"])
        segments = request.match_info["path"].split("/")
        try:
            transformation, rest = split_delivery_path(segments)
        except ValueError as e:
            return web.Response(status=400, headers={"X-Cld-Error": str(e)})
        public_id, _, extension = rest.rpartition(".")
        if not public_id or extension.lower() not in FORMATS:
            public_id, extension = rest, ""
        asset = self.assets.get(public_id)
        if asset is None:
            return _not_found(public_id)
        extension = extension.lower() or asset.format
        key = (transformation, extension)
        if not transformation and FORMATS[extension][0] == FORMATS[asset.format][0]:
            asset.derived[key] = asset.data  # the original, byte for byte
        if key not in asset.derived:
            try:
                asset.derived[key] = await asyncio.to_thread(
                    transform, asset.data, transformation, extension
                )
            except ValueError as e:
                return web.Response(status=400, headers={"X-Cld-Error": str(e)})
        return web.Response(
            body=asset.derived[key],
            content_type=FORMATS[extension][1],
            headers={"ETag": f'"{asset.etag}"', "Cache-Control": "public, max-age=2592000"},
        )


def split_delivery_path(segments: list[str]) -> tuple[str, str]:
    """``[transformation/][v<version>/]public_id.ext`` -> (transformation, "public_id.ext").

    With a version segment everything before it is a transformation (so unsupported ones get a
    400); without one, only leading segments made of known parameters are.
    """
    versions = [i for i, s in enumerate(segments[:-1]) if _VERSION.match(s)]
    if versions:
        transformations, rest = segments[: versions[0]], segments[versions[0] + 1 :]
    else:
        transformations, rest = [], list(segments)
        while len(rest) > 1 and _is_transformation(rest[0]):
            transformations.append(rest.pop(0))
    if len(transformations) > 1:
        raise ValueError("Chained transformations are not supported by the stand-in")
    return (transformations[0] if transformations else ""), "/".join(rest)


def _is_transformation(segment: str) -> bool:
    parts = [p.partition("_") for p in segment.split(",")]
    return all(sep and key in TRANSFORMATION_KEYS for key, sep, _ in parts)


def _not_found(public_id: str) -> web.Response:
    return web.Response(status=404, headers={"X-Cld-Error": f"Resource not found - {public_id}"})
