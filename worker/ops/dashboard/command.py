"""Running the dashboard: ``image-worker dashboard`` (until Ctrl-C or SIGTERM), and the demo's
``--keep-running`` (inside its own event loop, beside its worker)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from loguru import logger

from worker.errors import ExitCode
from worker.ops.dashboard.server import Dashboard, describe_error
from worker.ops.render import consoles
from worker.settings import Settings, is_local_host
from worker.store import StoreError
from worker.store.operations import OperatorQueries

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090


class DashboardError(Exception):
    """The dashboard cannot start: one line for the operator."""


@dataclass(frozen=True, slots=True)
class RunningDashboard:
    url: str
    actions: bool


def dashboard_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


@contextlib.asynccontextmanager
async def serve_dashboard(
    settings: Settings, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT
) -> AsyncIterator[RunningDashboard]:
    """The dashboard served on ``host:port`` (0: any free port) for the body of the ``with``.
    Raises ``DashboardError`` when the database lacks its function or the port is taken."""
    queries = OperatorQueries(settings)
    await queries.open()
    runner: web.AppRunner | None = None
    try:
        try:  # One small read first: a missing migration is one clear line, not a blank page.
            await queries.dashboard(1, 60, 1)
        except StoreError as exc:
            raise DashboardError(describe_error(settings, exc)) from None
        dashboard = Dashboard(settings, queries, host=host)
        runner = web.AppRunner(dashboard.app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            raise DashboardError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound_port = runner.addresses[0][1] if runner.addresses else port
        yield RunningDashboard(dashboard_url(host, bound_port), dashboard.actions_enabled)
    finally:
        if runner is not None:
            await runner.cleanup()
        await queries.close()


def dashboard_command(settings: Settings, host: str, port: int) -> int:
    """``image-worker dashboard``: returns the exit code."""
    out, err = consoles()

    async def main() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            async with serve_dashboard(settings, host, port) as running:
                out.print(f"dashboard: {running.url}", markup=False)
                if running.actions:
                    out.print(
                        "replay and cancel: enabled for requests that carry DASHBOARD_TOKEN "
                        "(the page asks for it once per tab)",
                        markup=False,
                    )
                else:
                    out.print("read-only: set DASHBOARD_TOKEN to enable replay and cancel")
                if not is_local_host(host):
                    out.print(
                        f"warning: listening on {host}, reachable from other machines: put it "
                        "behind TLS and your own authentication",
                        markup=False,
                    )
                out.print("Ctrl-C to stop.")
                sys.stdout.flush()
                await stop.wait()
        except DashboardError as exc:
            err.print(f"error: {exc}", markup=False)
            return ExitCode.FAILURE
        logger.info("dashboard stopped")
        return ExitCode.OK

    return asyncio.run(main())
