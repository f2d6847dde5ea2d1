"""procrastinate, the reference peer for scripts/bench.py: a no-op task and its worker process.

python scripts/bench_procrastinate.py worker DSN CONCURRENCY   # run a worker until SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

import procrastinate


async def noop() -> None:
    return None


async def run_worker(dsn: str, concurrency: int) -> None:
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    app.task(name="noop")(noop)
    async with app.open_async():
        worker = asyncio.create_task(
            app.run_worker_async(concurrency=concurrency, wait=True, install_signal_handlers=False)
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "worker":
        raise SystemExit(__doc__)
    asyncio.run(run_worker(sys.argv[2], int(sys.argv[3])))
