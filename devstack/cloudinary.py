"""STUB — being replaced by the Cloudinary stand-in."""

from aiohttp import web


class CloudinaryStandIn:
    cloudinary_url = "cloudinary://key:secret@demo?upload_prefix=http://127.0.0.1:9"

    async def start(self, host: str, port: int = 0) -> None:
        pass

    async def stop(self) -> None:
        pass

    def admin_routes(self) -> list[web.RouteDef]:
        return []
