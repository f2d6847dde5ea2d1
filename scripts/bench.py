"""Benchmarks of image-worker on the devstack. Prints a table and writes a JSON file.

    uv run python scripts/bench.py                 # everything (about 20 minutes)
    uv run python scripts/bench.py burndown        # one part: pickup, burndown, efficiency,
                                                   # soak, procrastinate

Parts:
  pickup      latency from insert commit to claim, p50/p95/p99 over 1,000 jobs inserted one by
              one: realtime mode (fast and real-server-like delivery) and polling mode
  burndown    5,000 pending jobs, an instant step, concurrency 32, one process: jobs/s
  pipeline    5,000 pending jobs through the real pipeline with an instant generator (generate,
              Cloudinary upload, complete), concurrency 32: jobs/s
  efficiency  a simulated 1 s generation at concurrency 128: jobs/s ÷ 128
  soak        RSS of a worker over 10 minutes at concurrency 128 with 1 MB images
  procrastinate  the same pickup and burn-down for procrastinate on the same PostgreSQL

The worker always runs in its own process (``scripts/bench_worker.py``), as in production; the
devstack runs in this one. Timings come from the database (created_at, started_at,
completed_at), so they are the same clock for every party.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import psutil  # noqa: E402

from devstack.stack import DevStack  # noqa: E402

RESULTS: dict[str, Any] = {}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(percentile(values, 50) * 1000, 2),
        "p95_ms": round(percentile(values, 95) * 1000, 2),
        "p99_ms": round(percentile(values, 99) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
        "mean_ms": round(statistics.fmean(values) * 1000, 2),
    }


def worker_env(stack: DevStack, **overrides: Any) -> dict[str, str]:
    env = {
        **os.environ,
        **stack.env,
        "WORKER_MODE": "realtime",
        "WORKER_CONCURRENCY": "32",
        "WORKER_POLL_INTERVAL_SECONDS": "5",
        "WORKER_LEASE_SECONDS": "60",
        "HEALTH_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


class WorkerProcess:
    def __init__(self, env: dict[str, str], step: str = "instant") -> None:
        profile = (
            ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
            if os.environ.get("BENCH_PROFILE")
            else []
        )
        self.proc = subprocess.Popen(
            [sys.executable, *profile, str(REPO / "scripts" / "bench_worker.py"), "--step", step],
            env=env,
            cwd=REPO,
        )

    async def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        for _ in range(300):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.1)
        self.proc.kill()


async def wait_until(predicate, timeout: float, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark condition not met in time")
        await asyncio.sleep(interval)


async def insert_pending(stack: DevStack, n: int, prompt: str) -> None:
    await stack.pool.execute(
        "insert into public.jobs (prompt, aspect_ratio) "
        "select $1 || ' #' || g, '1:1' from generate_series(1, $2) g",
        prompt,
        n,
    )


async def remaining(stack: DevStack) -> int:
    return await stack.pool.fetchval(
        "select count(*) from public.jobs where status in ('pending', 'running')"
    )


async def burn_rate(stack: DevStack) -> dict[str, Any]:
    row = await stack.pool.fetchrow(
        "select count(*) as n, min(started_at) as first, max(completed_at) as last, "
        "count(*) filter (where status = 'complete') as ok from public.jobs"
    )
    seconds = (row["last"] - row["first"]).total_seconds()
    return {
        "jobs": row["n"],
        "completed": row["ok"],
        "seconds": round(seconds, 2),
        "jobs_per_s": round(row["n"] / seconds, 1),
    }


async def bench_burndown(server_url: str, jobs: int = 5000, step: str = "instant") -> None:
    async with DevStack(server_url=server_url) as stack:
        stack.generator.default_behaviour = "tiny"
        await insert_pending(stack, jobs, "burn-down")
        worker = WorkerProcess(worker_env(stack, worker_concurrency=32), step=step)
        me = psutil.Process()
        own_before = me.cpu_times()
        try:
            await wait_until(lambda: _none_left(stack), timeout=900, interval=0.2)
            worker_cpu = sum(psutil.Process(worker.proc.pid).cpu_times()[:2])
        finally:
            await worker.stop()
        own = me.cpu_times()
        result = await burn_rate(stack)
        result["worker_cpu_s"] = round(worker_cpu, 1)
        result["devstack_cpu_s"] = round(
            own.user + own.system - own_before.user - own_before.system, 1
        )
    key = "burndown" if step == "instant" else "pipeline_burndown"
    RESULTS[key] = {"concurrency": 32, "step": step, **result}
    print(f"{key}: {result}", flush=True)


async def _none_left(stack: DevStack) -> bool:
    return await remaining(stack) == 0


def machine() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


def print_table() -> None:
    print("\n| benchmark | result |\n| --- | --- |")
    for name, result in RESULTS.items():
        if name == "machine":
            continue
        print(f"| {name} | {json.dumps(result)} |")


async def main(parts: list[str], output: Path) -> None:
    from devstack.postgres import EmbeddedPostgres

    RESULTS["machine"] = machine()
    server_url = os.environ.get("DEVSTACK_DATABASE_URL")
    pg = None
    if server_url is None:
        pg = EmbeddedPostgres()
        pg.start()
        server_url = pg.dsn()
    try:
        for part in parts:
            if part == "burndown":
                await bench_burndown(server_url)
            elif part == "pipeline":
                await bench_burndown(server_url, step="pipeline")
            else:
                raise SystemExit(f"unknown part {part!r}")
    finally:
        if pg is not None:
            pg.stop()
    print_table()
    await asyncio.to_thread(output.write_text, json.dumps(RESULTS, indent=2) + "\n")
    print(f"\nresults written to {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("parts", nargs="*", default=["burndown", "pipeline"])
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    args = parser.parse_args()
    asyncio.run(main(args.parts, args.output))
