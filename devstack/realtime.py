"""STUB — being replaced by the Realtime stand-in."""

from aiohttp import web


class RealtimeServer:
    def __init__(self, dsn, keys, delivery="fast") -> None:
        self.dsn, self.keys, self.delivery = dsn, keys, delivery

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def routes(self) -> list[web.RouteDef]:
        return []

    def admin_routes(self) -> list[web.RouteDef]:
        return []
