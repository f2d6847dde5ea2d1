"""STUB — being replaced by the PostgREST stand-in."""

from aiohttp import web


class RestApi:
    def __init__(self, pool, keys) -> None:
        self.pool, self.keys = pool, keys

    def routes(self) -> list[web.RouteDef]:
        return []

    def admin_routes(self) -> list[web.RouteDef]:
        return []

    async def close(self) -> None:
        pass
