"""STUB — being replaced by the generator stand-in."""

from aiohttp import web


class GeneratorStandIn:
    url = "http://127.0.0.1:9/generate"
    token = "gen-token"

    async def start(self, host: str, port: int = 0) -> None:
        pass

    async def stop(self) -> None:
        pass

    def admin_routes(self) -> list[web.RouteDef]:
        return []
