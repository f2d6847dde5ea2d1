"""The job engine (dispatcher, executor, completer, app) on the in-memory store: each guarantee
in milliseconds, with no database, no network and no stand-ins."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from worker.engine.app import Worker
from worker.engine.dispatcher import WakeSignal
from worker.errors import JobFailed
from worker.jobs import Job, JobResult
from worker.settings import Settings
from worker.store.memory import InMemoryStore

pytestmark = pytest.mark.timeout(30)


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        supabase_url="http://127.0.0.1:9", supabase_service_role_key="service-role-key",
        worker_mode="polling", worker_poll_interval_seconds=3600, worker_concurrency=4,
        worker_lease_seconds=3, worker_shutdown_grace_seconds=5, health_port=0,
        worker_id="unit-worker",
    )  # fmt: skip
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


def store_for(s: Settings) -> InMemoryStore:
    return InMemoryStore(
        worker_id=s.worker_id, lease_seconds=s.worker_lease_seconds, max_attempts=s.job_max_attempts
    )


async def instant(job: Job, progress) -> JobResult:
    return JobResult(f"https://img.example/{job.id}.png", f"https://img.example/{job.id}_t.png")


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 - the store changes state without an event
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def running(store: InMemoryStore, s: Settings, step=instant) -> AsyncIterator[Worker]:
    worker = Worker(s, step, store=store)
    task = asyncio.create_task(worker.run())
    await until(lambda: worker.ready.is_set())
    try:
        yield worker
    finally:
        worker.stop()
        worker.exit_code = await task


def test_wake_ups_coalesce_and_keep_the_most_specific_trigger() -> None:
    signal = WakeSignal()
    signal.set("poll")
    signal.set("realtime")
    signal.set("sweep")
    assert signal.is_set()
    assert signal.take() == "realtime"
    assert not signal.is_set()


async def test_a_wake_up_that_arrives_during_a_claim_is_not_lost() -> None:
    s = settings()
    store = store_for(s)
    store.delay("claim", 0.3)  # the start-up claim is in flight, empty, while the job arrives
    async with running(store, s) as worker:
        await until(lambda: store.calls["claim"] == 1)
        job_id = store.insert()
        worker.dispatcher.wake("realtime")  # the only hint: no poll for an hour
        await until(lambda: store.jobs[job_id].status == "complete", timeout=2)
    assert store.jobs[job_id].claim_trigger == "realtime"


async def test_claims_never_ask_for_more_than_the_free_slots() -> None:
    s = settings(worker_concurrency=3)
    store = store_for(s)
    for _ in range(10):
        store.insert()
    gate = asyncio.Event()

    async def blocked(job: Job, progress) -> JobResult:
        await gate.wait()
        return await instant(job, progress)

    async with running(store, s, blocked) as worker:
        await until(lambda: store.by_status()["running"] == 3)
        for trigger in ("realtime", "poll", "catchup"):
            worker.dispatcher.wake(trigger)
        await asyncio.sleep(0.1)
        assert store.by_status()["running"] == 3
        assert worker.status().in_flight == 3
        gate.set()
        await until(lambda: store.by_status()["complete"] == 10)
    assert max(store.claim_limits) <= 3
    assert all(limit >= 1 for limit in store.claim_limits)


async def test_one_wake_up_drains_a_backlog_larger_than_the_slots() -> None:
    s = settings(worker_concurrency=2)
    store = store_for(s)
    for _ in range(25):
        store.insert()
    async with running(store, s):  # only the start-up wake-up; the poll is an hour away
        await until(lambda: store.by_status()["complete"] == 25, timeout=3)


async def test_a_lost_lease_cancels_the_work_and_writes_nothing() -> None:
    s = settings()
    store = store_for(s)
    job_id = store.insert()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever(job: Job, progress) -> JobResult:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unreachable")

    async with running(store, s, forever) as worker:
        await started.wait()
        store.take_over(job_id)
        await asyncio.wait_for(cancelled.wait(), timeout=3)  # renewal every lease/3 = 1 s
        await until(lambda: worker.status().in_flight == 0)
    job = store.jobs[job_id]
    assert job.status == "running" and job.worker_id == "another-worker"
    assert store.calls["complete"] == store.calls["fail"] == store.calls["retry"] == 0
    assert store.calls["release"] == 0


async def test_jobs_finishing_together_are_completed_in_few_round_trips() -> None:
    s = settings(worker_concurrency=20)
    store = store_for(s)
    store.delay("complete", 0.05)
    for _ in range(20):
        store.insert()
    gate = asyncio.Event()

    async def together(job: Job, progress) -> JobResult:
        await gate.wait()
        return await instant(job, progress)

    async with running(store, s, together):
        await until(lambda: store.by_status()["running"] == 20)
        gate.set()
        await until(lambda: store.by_status()["complete"] == 20)
    assert store.calls["complete"] <= 3, store.calls


async def test_a_failed_completion_write_is_retried_under_the_lease() -> None:
    s = settings()
    store = store_for(s)
    store.fail_next("complete", times=2)
    job_id = store.insert()
    async with running(store, s):
        await until(lambda: store.jobs[job_id].status == "complete")
    assert store.calls["complete"] == 3


async def test_shutdown_lets_short_jobs_finish_and_releases_the_rest() -> None:
    s = settings(worker_shutdown_grace_seconds=0.3)
    store = store_for(s)
    short, long = store.insert("short"), store.insert("long")

    async def step(job: Job, progress) -> JobResult:
        await asyncio.sleep(0.1 if job.prompt == "short" else 3600)
        return await instant(job, progress)

    async with running(store, s, step) as worker:
        await until(lambda: worker.status().in_flight == 2)
    assert worker.exit_code == 0
    assert store.jobs[short].status == "complete"
    released = store.jobs[long]
    assert released.status == "pending" and released.attempts == 0
    assert released.lease_token is None and store.calls["release"] == 1


async def test_a_job_failure_is_final_and_a_crash_is_retried() -> None:
    s = settings()
    store = store_for(s)
    refused, broken = store.insert("refused"), store.insert("broken")

    async def step(job: Job, progress) -> JobResult:
        if job.prompt == "refused":
            raise JobFailed("the generator refused the prompt", "generator_refused")
        raise RuntimeError("boom")

    async with running(store, s, step):
        await until(lambda: store.jobs[refused].status == "failed")
        await until(lambda: store.jobs[broken].status == "pending")
    assert store.jobs[refused].error_message == "the generator refused the prompt"
    retried = store.jobs[broken]
    assert "broke unexpectedly (RuntimeError: boom)" in (retried.error_message or "")
    assert retried.run_after > store.clock()  # backed off, not hot-looped


async def test_a_claim_that_fails_is_tried_again() -> None:
    s = settings()
    store = store_for(s)
    store.fail_next("claim", times=1)
    job_id = store.insert()
    async with running(store, s) as worker:
        await until(lambda: store.calls["claim"] == 1)
        assert worker.status().last_claim_error is not None
        await until(lambda: store.jobs[job_id].status == "complete", timeout=3)
        assert worker.status().last_claim_error is None


async def test_a_completer_crash_is_surfaced_not_left_hanging() -> None:
    s = settings(worker_shutdown_grace_seconds=1)
    store = store_for(s)
    store.fail_next("complete", error=RuntimeError("a bug in the completer"))
    job_id = store.insert()
    worker = Worker(s, instant, store=store)
    exit_code = await asyncio.wait_for(worker.run(), timeout=10)
    assert exit_code == 1
    assert worker.status().failed
    # Nothing was written: the lease expires and another worker picks the job up.
    assert store.jobs[job_id].status == "running"
