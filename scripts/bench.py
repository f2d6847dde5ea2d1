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
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
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
        "count(*) filter (where status = 'complete') as ok, "
        "avg(extract(epoch from completed_at - started_at)) as job_s from public.jobs"
    )
    seconds = (row["last"] - row["first"]).total_seconds()
    return {
        "jobs": row["n"],
        "completed": row["ok"],
        "seconds": round(seconds, 2),
        "jobs_per_s": round(row["n"] / seconds, 1),
        "mean_job_s": round(float(row["job_s"]), 3),
    }


async def bench_burndown(server_url: str, jobs: int = 5000, step: str = "instant") -> None:
    async with DevStack(server_url=server_url) as stack:
        stack.generator.default_behaviour = "tiny"
        await insert_pending(stack, jobs, "burn-down")
        result = await drain(stack, worker_env(stack, worker_concurrency=32), step)
    key = "burndown" if step == "instant" else "pipeline_burndown"
    RESULTS[key] = {"concurrency": 32, "step": step, **result}
    print(f"{key}: {result}", flush=True)


async def _none_left(stack: DevStack) -> bool:
    return await remaining(stack) == 0


async def drain(stack: DevStack, env: dict[str, str], step: str) -> dict[str, Any]:
    """Run a worker until no job is left; the rate, and the CPU each side used."""
    worker = WorkerProcess(env, step=step)
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
    result["devstack_cpu_s"] = round(own.user + own.system - own_before.user - own_before.system, 1)
    return result


async def measure_pickups(stack: DevStack, n: int, wait_each: bool, gap: float) -> list[float]:
    """Insert ``n`` jobs one by one; latency = started_at - created_at, both the database's
    clock. ``wait_each``: the next insert waits for the previous claim (an idle worker each
    time, graphile-worker's method); otherwise one insert every ``gap`` seconds."""
    ids = []
    for i in range(n):
        job_id = await stack.pool.fetchval(
            "insert into public.jobs (prompt) values ($1) returning id", f"pickup {i}"
        )
        ids.append(job_id)
        if wait_each:
            await wait_until(lambda j=job_id: _claimed(stack, j), timeout=30, interval=0.0005)
        else:
            await asyncio.sleep(gap)
    await wait_until(lambda: _none_left(stack), timeout=120, interval=0.1)
    rows = await stack.pool.fetch(
        "select extract(epoch from started_at - created_at) as latency from public.jobs "
        "where id = any($1::uuid[])",
        ids,
    )
    return [float(r["latency"]) for r in rows]


async def _claimed(stack: DevStack, job_id) -> bool:
    return await stack.pool.fetchval(
        "select started_at is not null from public.jobs where id = $1", job_id
    )


async def bench_pickup(server_url: str, n: int = 1000, only: str | None = None) -> None:
    cases = [
        ("realtime_fast", "fast", {"worker_mode": "realtime"}, True),
        ("realtime_realistic", "realistic", {"worker_mode": "realtime"}, False),
        ("polling_5s", "fast", {"worker_mode": "polling"}, False),
    ]
    for name, delivery, overrides, wait_each in cases:
        if only and name != only:
            continue
        async with DevStack(server_url=server_url, delivery=delivery) as stack:
            worker = WorkerProcess(worker_env(stack, **overrides))
            try:
                if overrides["worker_mode"] == "realtime":
                    await _wait_realtime_ready(stack)
                latencies = await measure_pickups(stack, n, wait_each=wait_each, gap=0.05)
            finally:
                await worker.stop()
            triggers = dict(
                await stack.pool.fetch(
                    "select claim_trigger, count(*) from public.jobs group by 1 order by 2 desc"
                )
            )
        result = {**summary_ms(latencies), "claims_by_trigger": triggers}
        RESULTS.setdefault("pickup", {})[name] = result
        print(f"pickup {name}: {result}", flush=True)


async def _wait_realtime_ready(stack: DevStack) -> None:
    """Wait until the worker's channel is subscribed, then let its catch-up claims pass."""
    await wait_until(lambda: _subscribed(stack), timeout=30, interval=0.05)
    await asyncio.sleep(4)


async def _subscribed(stack: DevStack) -> bool:
    return len(stack.realtime.subscribed_channels) > 0


async def bench_efficiency(
    server_url: str, concurrency: int = 128, rounds: int = 16, jitter: float = 0.2
) -> None:
    """A simulated 1 s generation: ideal throughput is concurrency jobs per second.

    ``jitter`` spreads generation times uniformly (1 s ± jitter), as real models do; with none,
    all 128 jobs hit the single-process devstack in the same instant, every round.
    """
    jobs = concurrency * rounds
    async with DevStack(server_url=server_url) as stack:
        stack.generator.default_behaviour = "tiny"
        stack.generator.latency = 1.0
        stack.generator.latency_jitter = jitter
        await insert_pending(stack, jobs, "efficiency")
        env = worker_env(stack, worker_concurrency=concurrency)
        result = await drain(stack, env, "pipeline")
    result["concurrency"] = concurrency
    result["generation_s"] = f"1.0 ± {jitter:g}"
    result["efficiency"] = round(result["jobs_per_s"] / concurrency, 3)
    key = "efficiency" if jitter else "efficiency_lockstep"
    RESULTS[key] = result
    print(f"{key}: {result}", flush=True)


async def bench_soak(
    server_url: str, minutes: float = 10, concurrency: int = 128, jitter: float = 0.2
) -> None:
    """RSS of the worker process while it runs 1 MB images through the pipeline.

    ``jitter`` as in the efficiency benchmark; 0 makes every wave of 128 images arrive at once.
    """
    async with DevStack(server_url=server_url) as stack:
        stack.generator.default_behaviour = "noise:1048576"
        stack.generator.latency = 1.0
        stack.generator.latency_jitter = jitter
        stack.cloudinary.keep_data = False
        env = worker_env(stack, worker_concurrency=concurrency, worker_mode="realtime")
        worker = WorkerProcess(env, step="pipeline")
        proc = psutil.Process(worker.proc.pid)
        samples: list[tuple[float, float]] = []
        started = time.monotonic()
        deadline = started + minutes * 60
        try:
            while time.monotonic() < deadline:
                # Keep a steady backlog so every slot stays busy.
                if (
                    await stack.pool.fetchval(
                        "select count(*) from public.jobs where status = 'pending'"
                    )
                    < concurrency * 2
                ):
                    await insert_pending(stack, concurrency * 2, "soak")
                samples.append((time.monotonic() - started, proc.memory_info().rss / 2**20))
                await asyncio.sleep(5)
        finally:
            await worker.stop()
            done = await stack.pool.fetchval(
                "select count(*) from public.jobs where status = 'complete'"
            )
            failed = await stack.pool.fetchval(
                "select count(*) from public.jobs where status = 'failed'"
            )
    warm = [rss for t, rss in samples if 60 <= t < 120] or [samples[0][1]]
    last = [rss for t, rss in samples if t >= minutes * 60 - 60] or [samples[-1][1]]
    result = {
        "minutes": minutes,
        "concurrency": concurrency,
        "generation_s": f"1.0 ± {jitter:g}",
        "image_bytes": 1048849,
        "jobs_completed": done,
        "jobs_failed": failed,
        "rss_peak_mb": round(max(rss for _, rss in samples), 1),
        "rss_after_warmup_mb": round(statistics.fmean(warm), 1),
        "rss_last_minute_mb": round(statistics.fmean(last), 1),
        "growth_pct": round((statistics.fmean(last) / statistics.fmean(warm) - 1) * 100, 1),
    }
    RESULTS["soak"] = result
    print(f"soak: {result}", flush=True)


async def bench_procrastinate(server_url: str, n_pickup: int = 1000, n_burn: int = 5000) -> None:
    """procrastinate on the same PostgreSQL: a no-op task, LISTEN/NOTIFY on, concurrency 32."""
    import asyncpg
    import procrastinate

    from devstack.postgres import create_database, drop_database

    dsn = await create_database(server_url)
    name = dsn.rsplit("/", 1)[1]
    script = str(REPO / "scripts" / "bench_procrastinate.py")
    try:
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
        async with app.open_async():
            await app.schema_manager.apply_schema_async()
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        events = (
            "select extract(epoch from s.at - d.at) as latency from procrastinate_events d "
            "join procrastinate_events s on s.job_id = d.job_id and s.type = 'started' "
            "where d.type = 'deferred'"
        )

        # (a) pickup: one by one, each on an idle worker.
        worker = _spawn([sys.executable, script, "worker", dsn, "32"])
        try:
            await asyncio.sleep(3)
            for _ in range(n_pickup):
                job_id = await _defer_and_id(pool)
                await wait_until(lambda j=job_id: _procrastinate_done(pool, j), 30, 0.0005)
            latencies = [float(r["latency"]) for r in await pool.fetch(events)]
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        RESULTS.setdefault("procrastinate", {})["pickup"] = summary_ms(latencies)
        print(f"procrastinate pickup: {RESULTS['procrastinate']['pickup']}", flush=True)

        # (b) burn-down of pending jobs at concurrency 32.
        await pool.execute("truncate procrastinate_jobs cascade")
        await pool.execute(
            "select procrastinate_defer_jobs_v1(array_agg(row('default', 'noop', 0, null, "
            "null, '{}'::jsonb, null)::procrastinate_job_to_defer_v1)) "
            "from generate_series(1, $1)",
            n_burn,
        )
        worker = _spawn([sys.executable, script, "worker", dsn, "32"])
        try:
            await wait_until(lambda: _procrastinate_idle(pool), 900, 0.2)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        row = await pool.fetchrow(
            "select count(*) filter (where type = 'succeeded') as n, "
            "min(at) filter (where type = 'started') as first, "
            "max(at) filter (where type = 'succeeded') as last from procrastinate_events"
        )
        seconds = (row["last"] - row["first"]).total_seconds()
        burn = {"jobs": row["n"], "seconds": round(seconds, 2)}
        burn["jobs_per_s"] = round(row["n"] / seconds, 1)
        RESULTS["procrastinate"]["burndown"] = {"concurrency": 32, **burn}
        print(f"procrastinate burndown: {RESULTS['procrastinate']['burndown']}", flush=True)
        await pool.close()
    finally:
        await drop_database(server_url, name)


def _spawn(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=REPO)


async def _defer_and_id(pool) -> int:
    ids = await pool.fetchval(
        "select procrastinate_defer_jobs_v1(array[row('default', 'noop', 0, null, null, "
        "'{}'::jsonb, null)::procrastinate_job_to_defer_v1])"
    )
    return ids[0]


async def _procrastinate_done(pool, job_id: int) -> bool:
    return await pool.fetchval(
        "select status <> 'todo' from procrastinate_jobs where id = $1", job_id
    )


async def _procrastinate_idle(pool) -> bool:
    return not await pool.fetchval(
        "select count(*) from procrastinate_jobs where status in ('todo', 'doing')"
    )


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
            if part == "pickup":
                await bench_pickup(server_url)
            elif part.startswith("pickup:"):
                await bench_pickup(server_url, only=part.split(":", 1)[1])
            elif part == "burndown":
                await bench_burndown(server_url)
            elif part == "pipeline":
                await bench_burndown(server_url, step="pipeline")
            elif part == "efficiency":
                await bench_efficiency(server_url)
                await bench_efficiency(server_url, jitter=0.0)
            elif part == "soak":
                await bench_soak(
                    server_url,
                    minutes=float(os.environ.get("SOAK_MINUTES", 10)),
                    jitter=float(os.environ.get("SOAK_JITTER", 0.2)),
                )
            elif part == "procrastinate":
                await bench_procrastinate(server_url)
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
    parser.add_argument(
        "parts",
        nargs="*",
        default=["pickup", "burndown", "pipeline", "efficiency", "procrastinate", "soak"],
    )
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    args = parser.parse_args()
    asyncio.run(main(args.parts, args.output))
