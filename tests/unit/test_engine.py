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


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("created_at", "infinity", "created_at 'infinity'"),
        ("created_at", "-infinity", "created_at '-infinity'"),
        ("created_at", "10000-01-01T00:00:00+00:00", "created_at '10000-01-01T00:00:00+00:00'"),
        ("created_at", 12, "created_at 12"),
        ("attempts", "many", "attempts 'many'"),
        ("prompt", ["a", "list"], "prompt ['a', 'list']"),
    ],
)
async def test_an_unreadable_row_fails_that_job_and_the_batch_runs(
    column: str, value: Any, shown: str
) -> None:
    """Finding 1: a row a backend wrote with a value the worker cannot read fails that one job,
    through the lease-guarded fail, with a clear message; the other claims of the batch run."""
    s = settings()
    store = store_for(s)
    good = [store.insert("good one"), store.insert("good two")]
    bad = store.insert("bad", extra={column: value})
    good.append(store.insert("good three"))
    async with running(store, s) as worker:
        await until(lambda: store.by_status()["complete"] == 3 and store.by_status()["failed"] == 1)
    assert worker.exit_code == 0
    assert all(store.jobs[job_id].status == "complete" for job_id in good)
    failed = store.jobs[bad]
    assert failed.status == "failed"
    assert failed.error_message is not None
    assert failed.error_message.startswith(f"the job row cannot be read: {shown} ")
    assert store.calls["fail"] == 1 and store.calls["retry"] == 0


# --- Cancellation (contract v2, "Cancelling") and fair claims, on the in-memory store


class _Generating:
    """A step that 'generates' until released, then 'uploads': records what it started, and
    what it saw when it was stopped (its context's stop_reason: the provider-cancel hook)."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.uploads: list[str] = []
        self.stop_reasons: list[str | None] = []
        self.raise_on_cancel: Exception | None = None

    async def __call__(self, job: Job, progress) -> JobResult:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.stop_reasons.append(getattr(progress, "stop_reason", None))
            if self.raise_on_cancel is not None:
                raise self.raise_on_cancel from None
            raise
        self.uploads.append(job.id)
        return await instant(job, progress)


async def test_a_cancel_seen_by_the_lease_renewal_stops_the_step_and_ends_the_job_cancelled() -> (
    None
):
    s = settings()  # renewal every lease/3 = 1 s; the watcher's poll is an hour away
    store = store_for(s)
    job_id = store.insert()
    step = _Generating()
    async with running(store, s, step) as worker:
        await step.started.wait()
        lease_token = store.jobs[job_id].lease_token
        assert store.request_cancel(job_id) == "running"
        await until(lambda: store.jobs[job_id].status == "cancelled", timeout=3)
        step.release.set()  # too late: the step was cancelled, nothing is uploaded
        await until(lambda: worker.status().in_flight == 0)
    job = store.jobs[job_id]
    assert job.lease_token == lease_token  # written by the lease holder, under its lease
    assert step.uploads == [] and step.stop_reasons == ["cancelled"]
    assert store.calls["mark_cancelled"] == 1
    assert store.calls["complete"] == store.calls["fail"] == store.calls["retry"] == 0


async def test_a_cancel_pushed_by_realtime_is_noticed_at_once() -> None:
    s = settings(worker_lease_seconds=30)  # no renewal for 10 s, no poll for an hour
    store = store_for(s)
    job_id = store.insert()
    step = _Generating()
    async with running(store, s, step) as worker:
        await step.started.wait()
        store.request_cancel(job_id)
        assert worker.executor is not None
        assert worker.executor.request_cancel(job_id, "realtime")  # what the UPDATE event does
        assert not worker.executor.request_cancel("not-mine", "realtime")
        await until(lambda: store.jobs[job_id].status == "cancelled", timeout=1)
    assert step.uploads == [] and store.calls["heartbeat"] == 0


async def test_the_cancel_watcher_notices_within_the_poll_interval() -> None:
    s = settings(worker_lease_seconds=30, worker_poll_interval_seconds=0.1)
    store = store_for(s)
    job_id = store.insert()
    step = _Generating()
    async with running(store, s, step):
        await step.started.wait()
        store.request_cancel(job_id)
        await until(lambda: store.jobs[job_id].status == "cancelled", timeout=1)
    assert step.uploads == [] and store.calls["cancel_requested"] >= 1


async def test_a_step_that_fails_on_its_way_out_of_a_cancel_still_ends_cancelled() -> None:
    """A provider layer may answer the cancellation with its own error (the generation was
    cancelled at the provider): the job is cancelled, not failed or retried."""
    s = settings(worker_lease_seconds=30, worker_poll_interval_seconds=0.1)
    store = store_for(s)
    refused, broken = store.insert("one"), store.insert("two")
    steps = {refused: _Generating(), broken: _Generating()}
    steps[refused].raise_on_cancel = JobFailed("the provider cancelled the generation", "x")
    steps[broken].raise_on_cancel = RuntimeError("connection reset")

    async def step(job: Job, progress) -> JobResult:
        return await steps[job.id](job, progress)

    async with running(store, s, step):
        await asyncio.gather(*(st.started.wait() for st in steps.values()))
        for job_id in steps:
            store.request_cancel(job_id)
        await until(lambda: store.by_status()["cancelled"] == 2, timeout=2)
    assert store.calls["fail"] == store.calls["retry"] == 0


async def test_a_pending_job_cancelled_is_never_claimed() -> None:
    s = settings()
    store = store_for(s)
    cancelled, kept = store.insert("cancel me"), store.insert("keep me")
    assert store.request_cancel(cancelled) == "cancelled"
    async with running(store, s):
        await until(lambda: store.jobs[kept].status == "complete")
    assert store.jobs[cancelled].status == "cancelled" and store.jobs[cancelled].attempts == 0


async def test_a_cancel_not_yet_seen_at_shutdown_ends_cancelled_not_pending() -> None:
    s = settings(worker_lease_seconds=30, worker_shutdown_grace_seconds=0.2)
    store = store_for(s)
    job_id = store.insert()
    step = _Generating()
    async with running(store, s, step):
        await step.started.wait()
        store.request_cancel(job_id)  # nobody tells the worker before it stops
    assert store.calls["release"] == 1
    assert store.jobs[job_id].status == "cancelled" and step.uploads == []


async def test_retry_and_rescue_of_a_job_whose_cancel_was_requested_end_cancelled() -> None:
    now = [0.0]
    store = InMemoryStore(lease_seconds=10, clock=lambda: now[0])
    first, second = store.insert(), store.insert()
    claims = {c.job.id: c for c in await store.claim(2)}
    store.request_cancel(first)
    store.request_cancel(second)
    assert await store.heartbeat(claims[first]) is None  # held, cancel requested
    assert await store.retry(claims[first], "boom", 1.0) == "cancelled"
    now[0] = 11.0
    assert [(r.id, r.status) for r in await store.rescue()] == [(second, "cancelled")]
    assert store.by_status() == {"cancelled": 2}


async def test_claims_are_fair_by_priority_turns_age_and_max_running() -> None:
    store = InMemoryStore()
    big = [store.insert(f"big {i}", user_id="big") for i in range(6)]
    small = store.insert("small", user_id="small")  # inserted after the whole backlog
    urgent = store.insert("urgent", user_id="vip", priority=5)
    anonymous = store.insert("no user")
    first = [c.job.id for c in await store.claim(3)]
    # Highest priority first; then users take turns, oldest first within a user.
    assert first[0] == urgent and set(first[1:]) <= {big[0], small, anonymous}
    rest = [c.job.id for c in await store.claim(10)]
    assert set(first + rest) == {*big, small, urgent, anonymous}
    assert [j for j in first + rest if j in big] == big  # oldest first within a user

    capped = InMemoryStore()
    capped.limits["capped"] = 2
    jobs = [capped.insert(f"c {i}", user_id="capped") for i in range(5)]
    assert [c.job.id for c in await capped.claim(10)] == jobs[:2]  # passed over at max_running
    assert await capped.claim(10) == []


async def test_a_user_at_max_running_drains_without_new_wake_ups() -> None:
    """After a claim that found work, the dispatcher claims again when a job finishes, so a
    user held back by max_running gets their next job at once, with no poll or event."""
    s = settings(worker_concurrency=4)
    store = store_for(s)
    store.limits["00000000-0000-0000-0000-000000000000"] = 1  # the default row: one at a time
    jobs = [store.insert(f"job {i}") for i in range(3)]

    async def quick(job: Job, progress) -> JobResult:
        await asyncio.sleep(0.05)
        return await instant(job, progress)

    async with running(store, s, quick):  # only the start-up wake-up; polls are an hour away
        await until(lambda: all(store.jobs[j].status == "complete" for j in jobs), timeout=3)
    assert max(store.claim_limits) == 4


async def test_a_secret_echoed_in_another_encoding_never_reaches_the_row() -> None:
    """Finding 6, end to end: the executor's redaction of ``error_message`` knows every
    encoding of a registered secret."""
    from urllib.parse import quote

    from worker.observability.redact import MASK, redact

    secret = "gen+tok/en=with-symbols-0123456789"
    redact.add([secret])
    s = settings()
    store = store_for(s)
    job_id = store.insert()

    async def echoing(job: Job, progress) -> JobResult:
        raise JobFailed(
            f"generator rejected the request: HTTP 401: you sent Bearer%20{quote(secret, safe='')}",
            "generator_rejected",
        )

    async with running(store, s, echoing):
        await until(lambda: store.jobs[job_id].status == "failed")
    message = store.jobs[job_id].error_message or ""
    assert quote(secret, safe="") not in message and secret not in message
    assert MASK in message


ESCAPES = "\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b31m\u202ereversed\r\nforged line\x00"


@pytest.mark.parametrize(
    "error",
    [
        JobFailed(f"upload rejected: {ESCAPES}", "upload"),  # a service's words, quoted
        RuntimeError(f"library error quoting a body: {ESCAPES}"),  # broke unexpectedly
    ],
)
async def test_error_messages_reach_the_row_as_one_line_without_control_characters(
    error: Exception,
) -> None:
    """Finding 8: ESC sequences and other control characters in a remote body never reach a
    job row (nor, from there, an app's page or `status`)."""
    import re

    s = settings(job_max_attempts=1)
    store = store_for(s)
    job_id = store.insert()

    async def failing(job: Job, progress) -> JobResult:
        raise error

    async with running(store, s, failing):
        await until(lambda: store.jobs[job_id].status == "failed")
    message = store.jobs[job_id].error_message or ""
    assert "red" in message and "forged line" in message
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]", message), repr(message)
