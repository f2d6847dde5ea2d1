"""The operators' dashboard beside the demo's worker (``demo --keep-running``): the same
``image-worker dashboard``, served from the demo's process on the demo stack, with a token made
for this run so its replay and cancel buttons work."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator

from pydantic import SecretStr

from worker.ops.dashboard.command import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DashboardError,
    RunningDashboard,
    serve_dashboard,
)
from worker.settings import Settings


@contextlib.asynccontextmanager
async def demo_dashboard(settings: Settings) -> AsyncIterator[list[str]]:
    """The dashboard on 127.0.0.1:8090 (or any free port when that one is taken) for the body
    of the ``with``; yields the lines that tell the user where it is."""
    token = secrets.token_urlsafe(24)
    settings = settings.model_copy(update={"dashboard_token": SecretStr(token)})
    async with contextlib.AsyncExitStack() as exits:
        running: RunningDashboard | None = None
        problem: DashboardError | None = None
        for port in (DEFAULT_PORT, 0):
            try:
                running = await exits.enter_async_context(
                    serve_dashboard(settings, DEFAULT_HOST, port)
                )
                break
            except DashboardError as exc:
                problem = exc
        if running is None:
            yield [f"dashboard: not started ({problem})"]
        else:
            yield [
                f"dashboard: {running.url}",
                f"  its token for the replay and cancel buttons: {token}",
            ]
