"""Run an aiohttp application on a host and port (0: any free port), as every stand-in does."""

from __future__ import annotations

from aiohttp import web


async def serve(app: web.Application, host: str, port: int = 0) -> tuple[web.AppRunner, str]:
    """Start ``app``; return its runner (``await runner.cleanup()`` stops it) and base URL."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://{host}:{bound}"
