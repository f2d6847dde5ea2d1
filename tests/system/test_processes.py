"""Real worker processes (``python -m worker run``) on the devstack: races, kills, signals."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

from devstack.stack import DevStack
from tests.helpers import all_terminal, insert_jobs, spawn_worker, statuses, wait_for, worker_env


def _stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


async def _wait_exit(proc, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"worker did not exit within {timeout} s")
        await asyncio.sleep(0.05)
    return proc.returncode


async def test_three_processes_race_over_500_jobs(stack: DevStack) -> None:
    ids = await insert_jobs(stack, 500, prompt="race", aspect_ratio="1:1")
    # Tiny images keep the test about the race, not about PNG encoding; production-like leases
    # because this machine's two cores are shared by three workers and the whole devstack.
    await stack.pool.execute("update public.jobs set prompt = prompt || ' [gen:tiny]'")
    env = worker_env(
        stack, worker_concurrency=8, worker_poll_interval_seconds=0.1, worker_lease_seconds=30
    )
    procs = [spawn_worker(env, f"racer-{i}") for i in range(3)]
    try:
        await wait_for(lambda: all_terminal(stack), timeout=240, interval=0.5)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert await _wait_exit(proc, 15) == 0
        _stop(procs)
    rows = await stack.pool.fetch("select id, status, attempts, worker_id from public.jobs")
    assert len(rows) == 500
    assert {r["status"] for r in rows} == {"complete"}
    assert {r["attempts"] for r in rows} == {1}, "every job claimed exactly once"
    per_worker = {f"racer-{i}": 0 for i in range(3)}
    for r in rows:
        per_worker[r["worker_id"]] += 1
    assert all(n > 0 for n in per_worker.values()), per_worker
    # Exactly one generation and one upload per job: nothing ran twice.
    assert all(len(stack.generator.calls[i]) == 1 for i in ids)
    uploads = stack.cloudinary.uploads
    assert len(uploads) == 500 and all(len(v) == 1 for v in uploads.values())


async def test_killed_worker_job_is_completed_by_another(stack: DevStack) -> None:
    [job_id] = await insert_jobs(stack, 1, prompt="slow one [gen:slow:2]")
    env = worker_env(stack, worker_lease_seconds=3)
    victim = spawn_worker(env, "victim")
    try:
        await wait_for(lambda: _running_on(stack, job_id, "victim"), timeout=20)
        victim.kill()  # SIGKILL: no shutdown, no release
        victim.wait(10)
        survivor = spawn_worker(env, "survivor")
        try:
            await wait_for(lambda: _status(stack, job_id, "complete"), timeout=30)
        finally:
            survivor.send_signal(signal.SIGTERM)
            await _wait_exit(survivor, 10)
    finally:
        _stop([victim])
    row = await stack.pool.fetchrow("select * from public.jobs where id = $1", uuid.UUID(job_id))
    assert row["worker_id"] == "survivor" and row["attempts"] == 2
    assert row["image_url"] and row["thumbnail_url"] and row["progress"] == 100


async def test_job_that_kills_every_worker_fails_after_max_attempts(stack: DevStack) -> None:
    [job_id] = await insert_jobs(stack, 1, prompt="poison [gen:hang]")
    env = worker_env(stack, worker_lease_seconds=3, job_max_attempts=3)
    procs = []
    try:
        for n in range(1, 4):
            proc = spawn_worker(env, f"doomed-{n}")
            procs.append(proc)
            await wait_for(lambda p=proc: _running_on(stack, job_id, p.worker_id), timeout=30)
            proc.kill()
            proc.wait(10)
        # One more worker; its rescuer finds the expired lease of the third and last attempt.
        last = spawn_worker(env, "bystander")
        procs.append(last)
        await wait_for(lambda: _status(stack, job_id, "failed"), timeout=30)
        last.send_signal(signal.SIGTERM)
        assert await _wait_exit(last, 10) == 0
    finally:
        _stop(procs)
    row = await stack.pool.fetchrow("select * from public.jobs where id = $1", uuid.UUID(job_id))
    assert row["attempts"] == 3
    assert row["error_message"].startswith("failed after 3 attempts")
    assert "doomed-3" in row["error_message"]


async def test_sigterm_finishes_short_jobs_and_releases_long_ones(stack: DevStack) -> None:
    short = await insert_jobs(stack, 2, prompt="short [gen:slow:1]")
    long = await insert_jobs(stack, 2, prompt="long [gen:slow:60]")
    env = worker_env(stack, worker_shutdown_grace_seconds=3, worker_concurrency=4)
    first = spawn_worker(env, "first")
    try:
        await wait_for(lambda: _count_running(stack, 4), timeout=20)
        sent = time.monotonic()
        first.send_signal(signal.SIGTERM)
        assert await _wait_exit(first, 3 + 5) == 0
        assert time.monotonic() - sent < 3 + 5
    finally:
        _stop([first])
    for job_id in short:
        assert await _status(stack, job_id, "complete")
    for job_id in long:
        row = await stack.pool.fetchrow(
            "select * from public.jobs where id = $1", uuid.UUID(job_id)
        )
        assert row["status"] == "pending" and row["attempts"] == 0 and row["lease_token"] is None
    # Another worker completes the released jobs (made quick, so the test stays short).
    await stack.pool.execute(
        "update public.jobs set prompt = 'long, now quick' where status = 'pending'"
    )
    second = spawn_worker(env, "second")
    try:
        await wait_for(lambda: all_terminal(stack), timeout=30)
    finally:
        second.send_signal(signal.SIGTERM)
        await _wait_exit(second, 10)
        _stop([second])
    assert await statuses(stack) == {"complete": 4}


async def test_second_signal_exits_immediately(stack: DevStack) -> None:
    await insert_jobs(stack, 1, prompt="long [gen:slow:60]")
    env = worker_env(stack, worker_shutdown_grace_seconds=30)
    proc = spawn_worker(env, "impatient")
    try:
        await wait_for(lambda: _count_running(stack, 1), timeout=20)
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.5)
        assert proc.poll() is None  # still draining
        proc.send_signal(signal.SIGINT)
        assert await _wait_exit(proc, 3) != 0
    finally:
        _stop([proc])


async def _running_on(stack: DevStack, job_id: str, worker_id: str) -> bool:
    row = await stack.pool.fetchrow(
        "select status, worker_id from public.jobs where id = $1", uuid.UUID(job_id)
    )
    return row["status"] == "running" and row["worker_id"] == worker_id


async def _status(stack: DevStack, job_id: str, status: str) -> bool:
    value = await stack.pool.fetchval(
        "select status from public.jobs where id = $1", uuid.UUID(job_id)
    )
    return value == status


async def _count_running(stack: DevStack, n: int) -> bool:
    return (
        await stack.pool.fetchval("select count(*) from public.jobs where status = 'running'") == n
    )
