"""Benchmarks of image-worker on the devstack. Prints a table and writes a JSON file.

    uv run python scripts/bench.py                 # everything (about 20 minutes)
    uv run python scripts/bench.py burndown        # one part: pickup, burndown, efficiency,
                                                   # soak, procrastinate, claim_fair, fairness,
                                                   # cancel_latency

Parts:
  pickup      latency from insert commit to claim, p50/p95/p99 over 1,000 jobs inserted one by
              one: realtime mode (fast and real-server-like delivery) and polling mode
  burndown    5,000 pending jobs, an instant step, concurrency 32, one process: jobs/s
  pipeline    5,000 pending jobs through the real pipeline with an instant generator (generate,
              Cloudinary upload, complete), concurrency 32: jobs/s
  efficiency  a simulated 1 s generation at concurrency 128: jobs/s ÷ 128
  soak        RSS of a worker over 10 minutes at concurrency 128 with 1 MB images
  procrastinate  the same pickup and burn-down for procrastinate on the same PostgreSQL
  claim_fair  one fair claim of 32 with 100,000 pending jobs of 1,000 users: p50/p95 in the
              database (EXPLAIN ANALYZE) and on the wire, the plans of its statements; also
              with max_running, and with 10,000 users
  fairness    a small user's one job behind a big user's 300: pickup with the fair claim and
              with the oldest-first claim it replaced
  cancel_latency  cancel_job on a running job → `cancelled`, realtime and polling mode
  broadcast_latency  a job's progress write → the example app's Broadcast callback in headless
              Chromium, p50/p95 over 200 updates (scripts/bench_broadcast.py)
  broadcast_hot_path  the broadcast triggers' cost on insert, claim and complete: with and
              without them (scripts/bench_broadcast.py)
  rolling_restart  every worker SIGTERMed in turn (short grace) while 200 jobs of 20 s
              generations run, per generator kind: generation requests at the provider
              against jobs completed (sizes: ROLLING_JOBS, ROLLING_SECONDS, ROLLING_WORKERS,
              ROLLING_GRACE, ROLLING_KINDS)

The worker always runs in its own process (``scripts/bench_worker.py``), as in production; the
devstack runs in this one. Timings come from the database (created_at, started_at,
completed_at), so they are the same clock for every party.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import time
import uuid
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


# -- many users, one queue (contract v2): fair claims, fairness, cancelling ---------------------

# The claim before fair claims (supabase/migrations/20261127000000_image_worker_static_sql.sql):
# oldest first across all users. The fairness benchmark installs it to show what it replaced.
FIFO_CLAIM = """
create or replace function public.image_worker_claim(
  p_worker_id text, p_limit integer, p_lease_seconds double precision, p_trigger text default null
) returns setof jsonb
language plpgsql
set search_path = pg_catalog, public
as $$
begin
  if p_limit is null or p_limit < 1 then
    return;
  end if;
  return query
    with picked as (
      select p.id from public.jobs as p
      where p.status = 'pending' and p.run_after <= now()
      order by p.created_at, p.id
      limit p_limit
      for update skip locked
    )
    update public.jobs as j
    set status = 'running', progress = 10, attempts = j.attempts + 1, started_at = now(),
        completed_at = null, worker_id = p_worker_id, lease_token = gen_random_uuid(),
        lease_expires_at = now() + make_interval(secs => p_lease_seconds), claim_trigger = p_trigger
    from picked
    where j.id = picked.id
    returning to_jsonb(j.*);
end
$$;
"""


def _plan_summary(plan: dict[str, Any]) -> dict[str, Any]:
    top = plan["Plan"]
    return {
        "execution_ms": round(plan["Execution Time"], 3),
        "node": top["Node Type"],
        "rows": top.get("Actual Rows"),
        "shared_hit_blocks": top.get("Shared Hit Blocks"),
        "shared_read_blocks": top.get("Shared Read Blocks"),
    }


async def _explain(conn, sql: str, *args: Any) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of one statement, in a transaction rolled back afterwards."""
    tr = conn.transaction()
    await tr.start()
    try:
        raw = await conn.fetchval(f"explain (analyze, buffers, format json) {sql}", *args)
    finally:
        await tr.rollback()
    return (json.loads(raw) if isinstance(raw, str) else raw)[0]


async def bench_claim_fair(
    server_url: str, pending: int = 100_000, users: int = 1000, claims: int = 300, size: int = 32
) -> None:
    """One claim of ``size`` with ``pending`` jobs of ``users`` users waiting, timed in the
    database (EXPLAIN ANALYZE of the function call, one session, as PostgREST keeps its
    sessions) and on the wire (asyncpg round trip). After each claim the jobs go back to pending,
    so every claim sees the whole backlog. Variants: no limits; every user limited to
    max_running 2 (each user's running jobs counted under an advisory lock); the same backlog
    with 10,000 users."""
    import asyncpg

    from devstack.postgres import bootstrap, create_database, drop_database

    results: dict[str, Any] = {}
    for variant, n_users, max_running in (
        ("1k_users", users, None),
        ("1k_users_max_running_2", users, 2),
        ("10k_users", users * 10, None),
    ):
        dsn = await create_database(server_url)
        try:
            await bootstrap(dsn)
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute(
                    "insert into public.jobs (prompt, user_id, created_at) "
                    "select 'bench #' || g, ('00000000-0000-4000-8000-' || "
                    "lpad((g % $2)::text, 12, '0'))::uuid, "
                    "now() - interval '1 hour' + g * interval '1 ms' "
                    "from generate_series(1, $1) g",
                    pending,
                    n_users,
                )
                if max_running is not None:
                    await conn.execute(
                        "insert into public.image_worker_limits (user_id, max_running) "
                        "values ('00000000-0000-0000-0000-000000000000', $1)",
                        max_running,
                    )
                    # Half the users already run one job each.
                    await conn.execute(
                        "update public.jobs set status = 'running', worker_id = 'other', "
                        "lease_token = gen_random_uuid(), started_at = now(), "
                        "lease_expires_at = now() + interval '1 hour' where id in ("
                        "select distinct on (user_id) id from public.jobs "
                        "where right(user_id::text, 1) in ('0','2','4','6','8') "
                        "order by user_id, created_at)"
                    )
                await conn.execute("vacuum analyze")
                db_ms, wire_ms = [], []
                for i in range(claims + 10):
                    call = "select * from public.image_worker_claim('bench', $1, 60, 'poll')"
                    if i % 2:
                        started = time.perf_counter()
                        rows = await conn.fetch(call, size)
                        wire = time.perf_counter() - started
                        ids = [json.loads(r[0])["id"] for r in rows]
                    else:
                        raw = await conn.fetchval(
                            f"explain (analyze, buffers, format json) {call}", size
                        )
                        plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]
                        ids = await conn.fetchval(
                            "select coalesce(array_agg(id), '{}') from public.jobs "
                            "where worker_id = 'bench' and status = 'running'"
                        )
                        rows, wire = ids, None
                    if i >= 10:  # the first calls of a session plan each statement
                        if wire is None:
                            db_ms.append(plan["Execution Time"] / 1000)
                        else:
                            wire_ms.append(wire)
                    assert len(rows) == size, f"claim {i} returned {len(rows)}"
                    await conn.execute(
                        "update public.jobs set status = 'pending', worker_id = null, "
                        "lease_token = null, lease_expires_at = null, started_at = null, "
                        "progress = 0, attempts = 0 where id = any($1::uuid[])",
                        ids,
                    )
                # Where the time goes: the statements inside the claim, each on its own.
                user = await conn.fetchval(
                    "select user_key from public.image_worker_queues where active "
                    "order by priority desc, served_at, user_key limit 1"
                )
                parts = {
                    "function": _plan_summary(
                        await _explain(
                            conn,
                            "select * from public.image_worker_claim('bench', $1, 60, 'poll')",
                            size,
                        )
                    ),
                    "queue_walk": _plan_summary(
                        await _explain(
                            conn,
                            "select u.priority, u.user_key from public.image_worker_queues u "
                            "where u.active order by u.priority desc, u.served_at, u.user_key "
                            "limit $1",
                            size,
                        )
                    ),
                    "oldest_job_of_a_user": _plan_summary(
                        await _explain(
                            conn,
                            "select j.id from public.jobs j where j.status = 'pending' "
                            "and j.priority = 0 and coalesce(j.user_id, "
                            "'00000000-0000-0000-0000-000000000000'::uuid) = $1 "
                            "and j.run_after <= now() order by j.created_at, j.id limit 1 "
                            "for update skip locked",
                            user,
                        )
                    ),
                }
                waiting = await conn.fetchval(
                    "select count(*) from public.jobs where status = 'pending'"
                )
            finally:
                await conn.close()
        finally:
            await drop_database(server_url, dsn.rsplit("/", 1)[1])
        result = {
            "pending": waiting,
            "users": n_users,
            "claim_size": size,
            "max_running": max_running,
            "database": summary_ms(db_ms),
            "round_trip": summary_ms(wire_ms),
            "explain_analyze": parts,
        }
        results[variant] = result
        print(f"claim_fair {variant}: {json.dumps(result)}", flush=True)
    RESULTS["claim_fair"] = results


async def bench_fairness(server_url: str, trials: int = 5, backlog: int = 300) -> None:
    """A big user with ``backlog`` pending jobs keeps a worker busy (concurrency 4, 0.2 s a
    job); a second user inserts one job a second later. Its pickup (created_at → started_at)
    and how many of the big user's jobs started in between, with the fair claim and with the
    oldest-first claim it replaced."""
    results: dict[str, Any] = {}
    for mode in ("fair", "fifo"):
        pickups: list[float] = []
        overtaken: list[int] = []
        async with DevStack(server_url=server_url) as stack:
            if mode == "fifo":
                await stack.pool.execute(FIFO_CLAIM)
            env = worker_env(stack, worker_concurrency=4, bench_step_seconds=0.2)
            worker = WorkerProcess(env, step="sleep")
            try:
                await _wait_realtime_ready(stack)
                for _ in range(trials):
                    big, small = uuid.uuid4(), uuid.uuid4()
                    await stack.pool.execute(
                        "insert into public.jobs (prompt, user_id) "
                        "select 'big #' || g, $1 from generate_series(1, $2) g",
                        big,
                        backlog,
                    )
                    await asyncio.sleep(1.0)
                    job = await stack.pool.fetchval(
                        "insert into public.jobs (prompt, user_id) values ('small', $1) "
                        "returning id",
                        small,
                    )
                    await wait_until(lambda j=job: _claimed(stack, j), timeout=300, interval=0.01)
                    row = await stack.pool.fetchrow(
                        "select extract(epoch from s.started_at - s.created_at) as pickup, "
                        "(select count(*) from public.jobs b where b.user_id = $2 "
                        " and b.started_at > s.created_at and b.started_at < s.started_at) "
                        "as overtaken from public.jobs s where s.id = $1",
                        job,
                        big,
                    )
                    pickups.append(float(row["pickup"]))
                    overtaken.append(int(row["overtaken"]))
                    # Drop the rest of the backlog and let the running jobs finish.
                    await stack.pool.execute("delete from public.jobs where status = 'pending'")
                    await wait_until(lambda: _none_left(stack), timeout=60, interval=0.1)
                    await stack.pool.execute("delete from public.jobs")
            finally:
                await worker.stop()
        results[mode] = {
            **summary_ms(pickups),
            "big_user_jobs_started_first": overtaken,
        }
        print(f"fairness {mode}: {results[mode]}", flush=True)
    RESULTS["fairness"] = {
        "backlog": backlog, "concurrency": 4, "job_seconds": 0.2, **results
    }  # fmt: skip


async def bench_cancel_latency(server_url: str, rounds: int = 3, batch: int = 8) -> None:
    """A running job's cancel (cancel_job) to the job ending `cancelled` (cancel_requested_at →
    completed_at, the database's clock): realtime mode (the UPDATE event) and polling mode
    (WORKER_POLL_INTERVAL_SECONDS=5: the cancel watcher's poll), with leases of 60 s so that
    no renewal answers in the window. ``batch`` jobs run at once, each cancelled at a random
    moment."""
    results: dict[str, Any] = {}
    for mode in ("realtime", "polling"):
        latencies: list[float] = []
        async with DevStack(server_url=server_url) as stack:
            env = worker_env(
                stack,
                worker_mode=mode,
                worker_concurrency=batch,
                worker_poll_interval_seconds=5,
                bench_step_seconds=120,
            )
            worker = WorkerProcess(env, step="sleep")
            try:
                if mode == "realtime":
                    await _wait_realtime_ready(stack)
                for _ in range(rounds):
                    ids = [
                        r["id"]
                        for r in await stack.pool.fetch(
                            "insert into public.jobs (prompt) select 'cancel me #' || g "
                            "from generate_series(1, $1) g returning id",
                            batch,
                        )
                    ]
                    await wait_until(
                        lambda ids=ids: _all_running(stack, ids), timeout=60, interval=0.05
                    )

                    async def cancel_later(job_id) -> None:
                        await asyncio.sleep(random.uniform(0, 5))
                        await stack.pool.execute("select public.cancel_job($1)", job_id)

                    await asyncio.gather(*(cancel_later(i) for i in ids))
                    await wait_until(lambda: _none_left(stack), timeout=60, interval=0.05)
                    rows = await stack.pool.fetch(
                        "select status, extract(epoch from completed_at - cancel_requested_at) "
                        "as latency from public.jobs where id = any($1::uuid[])",
                        ids,
                    )
                    assert {r["status"] for r in rows} == {"cancelled"}
                    latencies += [float(r["latency"]) for r in rows]
                    await stack.pool.execute("delete from public.jobs")
            finally:
                await worker.stop()
        results[mode] = summary_ms(latencies)
        print(f"cancel_latency {mode}: {results[mode]}", flush=True)
    RESULTS["cancel_latency"] = {"poll_interval_s": 5, "lease_s": 60, **results}


async def _all_running(stack: DevStack, ids: list) -> bool:
    return await stack.pool.fetchval(
        "select count(*) = $2 from public.jobs where id = any($1::uuid[]) and status = 'running'",
        ids,
        len(ids),
    )


def machine() -> dict[str, Any]:
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
    }


# -- paid once (contract v2): a rolling restart under load -------------------------------------


def _rolling_prompt(kind: str, seconds: float) -> str:
    """A prompt whose generation takes ``seconds`` at the kind's stand-in, with a handle."""
    if kind == "http":
        legs = max(2, round(seconds / 2.5))  # Modal-style result URL, legs of 2.5 s
        return f"[gen:redirect303:{legs}:2.5]"
    return f"[gen:run:{seconds:g}]"


def _generation_requests(stack: DevStack, kind: str) -> int:
    if kind == "http":
        return sum(
            1 for calls in stack.generator.calls.values() for c in calls if c.method == "POST"
        )
    provider = {"replicate": stack.replicate, "fal": stack.fal, "openai": stack.openai}[kind]
    if kind == "openai":
        # Requests sent: its stand-in counts a generation only if the client waited for it.
        return len([c for c in provider.calls if c.kind == "create"])
    return provider.creations


async def _ready(port: int) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(trust_env=False, timeout=1) as client:
            return (await client.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
    except httpx.HTTPError:
        return False


def _log_dir(path: str) -> Path:
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def _spawn_rolling(
    stack: DevStack, kind: str, concurrency: int, grace: float, log_dir: Path, name: str
) -> tuple[subprocess.Popen, int, Path]:
    """A pipeline worker of ``kind`` with a health port (its readiness), logging to a file."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = worker_env(
        stack,
        **stack.provider_env(kind),  # type: ignore[arg-type]
        worker_concurrency=concurrency,
        worker_shutdown_grace_seconds=grace,
        worker_lease_seconds=30,
        worker_id=name,
        health_port=port,
        log_level="INFO",
        generator_retry_delays="1,2,3",
    )
    path = log_dir / f"{kind}-{name}.log"
    with open(path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "bench_worker.py"), "--step", "pipeline"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return proc, port, path


async def bench_rolling_restart(server_url: str) -> None:
    """Every worker SIGTERMed in turn (a rolling deploy: the new replica up and ready first,
    then the old one stopped with a short grace) while ``ROLLING_JOBS`` jobs of
    ``ROLLING_SECONDS`` generations run; per generator kind, the generation requests the
    provider received against the jobs completed. Sizes from the environment:
    ``ROLLING_JOBS`` (200), ``ROLLING_SECONDS`` (20), ``ROLLING_WORKERS`` (4),
    ``ROLLING_GRACE`` (5 s, shorter than a generation, so that jobs are released mid-generation),
    ``ROLLING_KINDS`` (http,replicate,fal; openai has no handle: add it to see the difference)."""
    jobs = int(os.environ.get("ROLLING_JOBS", 200))
    seconds = float(os.environ.get("ROLLING_SECONDS", 20))
    workers = int(os.environ.get("ROLLING_WORKERS", 4))
    grace = float(os.environ.get("ROLLING_GRACE", 5))
    kinds = os.environ.get("ROLLING_KINDS", "http,replicate,fal").split(",")
    concurrency = max(8, -(-jobs // max(workers - 1, 1)))  # room for all with one worker down
    log_dir = _log_dir(os.environ.get("ROLLING_LOGS", "/tmp/image-worker-rolling"))
    results: dict[str, Any] = {
        "jobs": jobs,
        "generation_s": seconds,
        "workers": workers,
        "concurrency": concurrency,
        "grace_s": grace,
    }
    for kind in kinds:
        async with DevStack(server_url=server_url) as stack:
            stack.cloudinary.keep_data = False

            started = time.monotonic()
            # One prompt for all: the stand-ins render (and cache) one image, as the devstack
            # shares the machine's two cores with the workers.
            await stack.pool.execute(
                "insert into public.jobs (prompt) select $1 from generate_series(1, $2) g",
                f"rolling restart {kind} {_rolling_prompt(kind, seconds)}",
                jobs,
            )
            spawn = functools.partial(
                _spawn_rolling, stack, kind, concurrency, grace, log_dir
            )  # fmt: skip
            fleet = [spawn(f"w{i}") for i in range(workers)]
            logs = [path for _, _, path in fleet]
            # Every job generating (with its handle stored, for the kinds that have one).
            generating = "status = 'running'" if kind == "openai" else "generation_ref is not null"
            await wait_until(
                lambda c=f"{generating} or status = 'complete'": _count(stack, c, jobs),
                timeout=120,
                interval=0.2,
            )
            restart_started = time.monotonic() - started
            for i in range(workers):  # maxSurge 1, maxUnavailable 0, as a Deployment rolls
                new = spawn(f"w{i}-new")
                logs.append(new[2])
                await wait_until(lambda port=new[1]: _ready(port), timeout=60, interval=0.2)
                old = fleet[i][0]
                old.send_signal(signal.SIGTERM)
                for _ in range(int((grace + 30) / 0.1)):
                    if old.poll() is not None:
                        break
                    await asyncio.sleep(0.1)
                fleet[i] = new
            restart_seconds = time.monotonic() - started - restart_started
            await wait_until(lambda: _none_left(stack), timeout=900, interval=0.5)
            total = time.monotonic() - started
            for proc, _, _ in fleet:
                proc.send_signal(signal.SIGTERM)
            for proc, _, _ in fleet:
                proc.wait(60)
            counts = dict(
                await stack.pool.fetch("select status, count(*) from public.jobs group by status")
            )
            text = "".join(path.read_text(errors="replace") for path in logs)
            requests = _generation_requests(stack, kind)
            completed = counts.get("complete", 0)
            results[kind] = {
                "jobs_completed": completed,
                "jobs_failed": counts.get("failed", 0),
                "generation_requests": requests,
                "requests_per_completed_job": round(requests / max(completed, 1), 3),
                "jobs_released_at_sigterm": text.count("job released back to pending"),
                "generations_resumed": text.count("resuming generation"),
                "restart_window_s": round(restart_seconds, 1),
                "total_s": round(total, 1),
            }
            print(f"rolling_restart {kind}: {results[kind]}", flush=True)
    RESULTS["rolling_restart"] = results


async def _count(stack: DevStack, condition: str, expected: int) -> bool:
    return await stack.pool.fetchval(f"select count(*) from public.jobs where {condition}") >= (
        expected
    )


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
            elif part == "claim_fair":
                await bench_claim_fair(server_url)
            elif part == "fairness":
                await bench_fairness(server_url)
            elif part == "cancel_latency":
                await bench_cancel_latency(server_url)
            elif part == "rolling_restart":
                await bench_rolling_restart(server_url)
            elif part == "broadcast_latency":
                from bench_broadcast import bench_broadcast_latency

                RESULTS["broadcast_latency"] = await bench_broadcast_latency(server_url)
            elif part == "broadcast_hot_path":
                from bench_broadcast import bench_broadcast_hot_path

                RESULTS["broadcast_hot_path"] = await bench_broadcast_hot_path(server_url)
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
        default=[
            "pickup",
            "burndown",
            "pipeline",
            "efficiency",
            "procrastinate",
            "claim_fair",
            "fairness",
            "cancel_latency",
            "rolling_restart",
            "broadcast_latency",
            "broadcast_hot_path",
            "soak",
        ],
    )
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    args = parser.parse_args()
    asyncio.run(main(args.parts, args.output))
