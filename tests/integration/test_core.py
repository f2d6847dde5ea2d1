"""The worker's core on the devstack: claims, leases, outcomes, rescue, shutdown, polling."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from devstack.stack import DevStack
from tests.helpers import (
    all_terminal,
    insert_jobs,
    instant_step,
    running_worker,
    statuses,
    wait_for,
    worker_settings,
)
from worker.engine import executor as executor_module
from worker.errors import JobFailed
from worker.jobs import Job, JobResult


async def test_polling_picks_up_backlog_and_new_jobs(stack: DevStack) -> None:
    backlog = await insert_jobs(stack, 10, prompt="backlog")
    async with running_worker(worker_settings(stack), instant_step):
        await wait_for(lambda: _count(stack, "complete", 10))
        later = await insert_jobs(stack, 5, prompt="later")
        await wait_for(lambda: _count(stack, "complete", 15))
    rows = await stack.pool.fetch("select * from public.jobs")
    assert {str(r["id"]) for r in rows} == set(backlog + later)
    for row in rows:
        assert row["status"] == "complete"
        assert row["progress"] == 100
        assert row["attempts"] == 1
        assert row["image_url"] == f"https://img.test/{row['id']}.png"
        assert row["started_at"] is not None and row["completed_at"] is not None


async def test_status_running_with_progress_while_working(stack: DevStack) -> None:
    gate = asyncio.Event()

    async def step(job: Job, progress) -> JobResult:
        await progress(55)
        await gate.wait()
        return await instant_step(job, progress)

    [job_id] = await insert_jobs(stack, 1)
    async with running_worker(worker_settings(stack), step):
        await wait_for(lambda: _field(stack, job_id, "progress", 55))
        row = await stack.pool.fetchrow(
            "select * from public.jobs where id = $1", uuid.UUID(job_id)
        )
        assert row["status"] == "running" and row["started_at"] is not None
        assert row["worker_id"] and row["lease_expires_at"] is not None
        gate.set()
        await wait_for(lambda: _field(stack, job_id, "status", "complete"))


async def test_permanent_failure_fails_once_with_message(stack: DevStack) -> None:
    async def step(job: Job, progress) -> JobResult:
        raise JobFailed("prompt is empty", "bad_input")

    [job_id] = await insert_jobs(stack, 1)
    async with running_worker(worker_settings(stack), step):
        await wait_for(lambda: _field(stack, job_id, "status", "failed"))
    row = await stack.pool.fetchrow("select * from public.jobs where id = $1", uuid.UUID(job_id))
    assert row["error_message"] == "prompt is empty"
    assert row["attempts"] == 1


async def test_crashing_step_is_retried_then_failed_after_max_attempts(
    stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(executor_module, "RETRY_BACKOFF_BASE", 0.1)
    calls: list[int] = []

    async def step(job: Job, progress) -> JobResult:
        calls.append(job.attempts)
        raise RuntimeError("boom")

    [job_id] = await insert_jobs(stack, 1)
    async with running_worker(worker_settings(stack, job_max_attempts=3), step):
        await wait_for(lambda: _field(stack, job_id, "status", "failed"))
    row = await stack.pool.fetchrow("select * from public.jobs where id = $1", uuid.UUID(job_id))
    assert calls == [1, 2, 3]
    assert row["attempts"] == 3
    assert row["error_message"].startswith("gave up after 3 attempts")
    assert "RuntimeError: boom" in row["error_message"]


async def test_lost_lease_cannot_overwrite_the_job(stack: DevStack) -> None:
    """The lease moves to another worker while ours is still working: we write nothing."""
    gate = asyncio.Event()
    started = asyncio.Event()

    async def step(job: Job, progress) -> JobResult:
        started.set()
        await gate.wait()
        return await instant_step(job, progress)

    [job_id] = await insert_jobs(stack, 1)
    # A long lease, so our renewal does not notice the takeover before the step finishes.
    async with running_worker(worker_settings(stack, worker_lease_seconds=60), step) as worker:
        await asyncio.wait_for(started.wait(), 10)
        await stack.pool.execute(
            "update public.jobs set worker_id = 'someone-else', lease_token = gen_random_uuid(), "
            "attempts = attempts + 1 where id = $1",
            uuid.UUID(job_id),
        )
        gate.set()
        await wait_for(lambda: _idle(worker))
    row = await stack.pool.fetchrow("select * from public.jobs where id = $1", uuid.UUID(job_id))
    assert row["status"] == "running" and row["worker_id"] == "someone-else"
    assert row["image_url"] is None and row["completed_at"] is None


async def test_renewal_notices_takeover_and_cancels_the_work(stack: DevStack) -> None:
    cancelled = asyncio.Event()

    async def step(job: Job, progress) -> JobResult:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    [job_id] = await insert_jobs(stack, 1)
    async with running_worker(worker_settings(stack, worker_lease_seconds=3), step):
        await wait_for(lambda: _field(stack, job_id, "status", "running"))
        await stack.pool.execute(
            "update public.jobs set worker_id = 'someone-else', lease_token = gen_random_uuid() "
            "where id = $1",
            uuid.UUID(job_id),
        )
        await asyncio.wait_for(cancelled.wait(), 5)  # renewal runs every lease/3 = 1 s
    row = await stack.pool.fetchrow("select * from public.jobs where id = $1", uuid.UUID(job_id))
    assert row["worker_id"] == "someone-else" and row["status"] == "running"


async def test_leases_are_renewed_while_a_job_runs(stack: DevStack) -> None:
    gate = asyncio.Event()

    async def step(job: Job, progress) -> JobResult:
        await gate.wait()
        return await instant_step(job, progress)

    [job_id] = await insert_jobs(stack, 1)
    async with running_worker(worker_settings(stack, worker_lease_seconds=3), step):
        await wait_for(lambda: _field(stack, job_id, "status", "running"))
        await asyncio.sleep(7)  # more than two leases: without renewal it would be rescued
        row = await stack.pool.fetchrow(
            "select status, attempts, lease_expires_at > now() as live from public.jobs "
            "where id = $1",
            uuid.UUID(job_id),
        )
        assert row["status"] == "running" and row["attempts"] == 1 and row["live"]
        gate.set()
        await wait_for(lambda: _field(stack, job_id, "status", "complete"))


async def test_a_progress_write_in_flight_is_let_finish(stack: DevStack) -> None:
    """Cancelling a request mid-flight closes the pooled connection it rides on: each job
    would then cost a new connection (a TLS handshake, in production) to the database API."""

    async def step(job: Job, progress) -> JobResult:
        await progress(60)
        await asyncio.sleep(0.01)  # done while the (slow) progress write is still on the wire
        return await instant_step(job, progress)

    stack.rest.slow_for(60, 0.05)
    await insert_jobs(stack, 40)
    settings = worker_settings(stack, worker_concurrency=4)
    async with running_worker(settings, step):
        await wait_for(lambda: all_terminal(stack))
    assert await statuses(stack) == {"complete": 40}
    # The store keeps concurrency + 2 connections; cutting each job's write would open ~40.
    assert stack.rest.status()["connections_seen"] <= settings.worker_concurrency + 2


async def test_rescue_returns_expired_leases_and_fails_exhausted_jobs(stack: DevStack) -> None:
    ids = await insert_jobs(stack, 2)
    # Two jobs left "running" by a worker that died: one with attempts left, one without.
    await stack.pool.execute(
        "update public.jobs set status = 'running', worker_id = 'dead', lease_token = "
        "gen_random_uuid(), lease_expires_at = now() - interval '1 second', attempts = "
        "case when id = $1 then 1 else 3 end where true",
        uuid.UUID(ids[0]),
    )
    async with running_worker(worker_settings(stack, job_max_attempts=3), instant_step):
        await wait_for(lambda: all_terminal(stack), timeout=20)
    first = await stack.pool.fetchrow("select * from public.jobs where id = $1", uuid.UUID(ids[0]))
    second = await stack.pool.fetchrow("select * from public.jobs where id = $1", uuid.UUID(ids[1]))
    assert first["status"] == "complete" and first["attempts"] == 2
    assert second["status"] == "failed" and second["attempts"] == 3
    assert "stopped responding" in second["error_message"]


async def test_shutdown_releases_jobs_longer_than_the_grace(stack: DevStack) -> None:
    async def slow(job: Job, progress) -> JobResult:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    ids = await insert_jobs(stack, 3)
    settings = worker_settings(stack, worker_shutdown_grace_seconds=0.5)
    async with running_worker(settings, slow):
        await wait_for(lambda: _count(stack, "running", 3))
    assert await statuses(stack) == {"pending": 3}
    rows = await stack.pool.fetch("select * from public.jobs")
    assert all(r["attempts"] == 0 and r["lease_token"] is None for r in rows)
    # And another worker completes them.
    async with running_worker(worker_settings(stack), instant_step):
        await wait_for(lambda: _count(stack, "complete", len(ids)))


async def test_shutdown_lets_short_jobs_finish(stack: DevStack) -> None:
    async def short(job: Job, progress) -> JobResult:
        await asyncio.sleep(1)
        return await instant_step(job, progress)

    await insert_jobs(stack, 3)
    settings = worker_settings(stack, worker_shutdown_grace_seconds=5)
    async with running_worker(settings, short):
        await wait_for(lambda: _count(stack, "running", 3))
    assert await statuses(stack) == {"complete": 3}


async def test_rest_failures_during_claim_renew_and_finish(stack: DevStack) -> None:
    """503s and hangs of the REST API: the worker survives and every job ends terminal."""
    gate_delay = 1.5

    async def step(job: Job, progress) -> JobResult:
        await asyncio.sleep(gate_delay)
        return await instant_step(job, progress)

    settings = worker_settings(stack, worker_lease_seconds=3, worker_concurrency=4)
    await insert_jobs(stack, 12)
    async with running_worker(settings, step):
        stack.rest.fail_for(2, status=503)  # claims, renewals and completions fail
        await asyncio.sleep(2.5)
        stack.rest.hang_for(2)  # nothing answers
        await asyncio.sleep(2.5)
        stack.rest.fail_next(5, status=500)
        await wait_for(lambda: all_terminal(stack), timeout=60)
    counts = await statuses(stack)
    assert counts.get("complete", 0) + counts.get("failed", 0) == 12
    assert counts.get("complete", 0) >= 10


async def _count(stack: DevStack, status: str, expected: int) -> bool:
    n = await stack.pool.fetchval("select count(*) from public.jobs where status = $1", status)
    return n == expected


async def _field(stack: DevStack, job_id: str, column: str, expected: object) -> bool:
    value = await stack.pool.fetchval(
        f"select {column} from public.jobs where id = $1", uuid.UUID(job_id)
    )
    return value == expected


async def _idle(worker) -> bool:
    return worker.dispatcher is not None and worker.dispatcher.in_flight == 0
