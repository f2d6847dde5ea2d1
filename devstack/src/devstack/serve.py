"""Run an aiohttp application on a host and port (0: any free port), as every stand-in does."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web


async def serve(app: web.Application, host: str, port: int = 0) -> tuple[web.AppRunner, str]:
    """Start ``app``; return its runner (``await runner.cleanup()`` stops it) and base URL."""
    runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://{host}:{bound}"


async def wait_while_connected(
    request: web.Request, seconds: float, stopping: asyncio.Event
) -> bool:
    """Sleep ``seconds`` as a slow server would; False early if the client left or the stand-in
    is stopping (a stand-in must not hold its shutdown for a generation nobody awaits)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        transport = request.transport
        if stopping.is_set() or transport is None or transport.is_closing():
            return False
        await asyncio.sleep(min(0.05, left))
    return True
