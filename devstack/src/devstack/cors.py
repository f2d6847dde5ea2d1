"""CORS as a Supabase project answers it, so a page on another origin can call the stack.

Supabase's API gateway (Kong's ``cors`` plugin) answers every preflight ``OPTIONS`` itself and
adds ``Access-Control-Allow-Origin: *`` to every answer; PostgREST exposes the headers its
clients read (``Content-Range`` for counts, ``Location`` …). The WebSocket upgrade needs none:
browsers do not apply CORS to WebSockets.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

ALLOW_METHODS = "GET,HEAD,PUT,PATCH,POST,DELETE,OPTIONS,TRACE,CONNECT"
EXPOSE_HEADERS = (
    "Content-Encoding, Content-Location, Content-Range, Content-Type, Date, Location, Server, "
    "Transfer-Encoding, Range-Unit"
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    origin = request.headers.get("Origin")
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        headers = {
            "Access-Control-Allow-Origin": "*",
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Max-Age": "3600",
            "Vary": "Origin",
        }
        if requested := request.headers.get("Access-Control-Request-Headers"):
            headers["Access-Control-Allow-Headers"] = requested
        return web.Response(status=200, headers=headers)
    response = await handler(request)
    if origin is not None and not response.prepared:
        response.headers.setdefault("Access-Control-Allow-Origin", "*")
        response.headers.setdefault("Access-Control-Expose-Headers", EXPOSE_HEADERS)
    return response
