"""Never paying twice, without servers: Retry-After parsing, the replica's throttle gate, the
handle a step stores through the engine (``JobContext`` on the in-memory store), and the driver's
resume/cancel rules on a scripted provider."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import pytest

from worker.engine.app import Worker
from worker.errors import JobFailed
from worker.jobs import Job, JobContext, JobResult
from worker.pipeline.generators.base import (
    Finished,
    GeneratedImage,
    GenerationRequest,
    GeneratorContext,
    Handle,
    HandleGone,
    Pending,
    Throttled,
)
from worker.pipeline.generators.driver import Generator
from worker.pipeline.generators.throttle import ThrottleGate, retry_after
from worker.settings import Settings
from worker.store.memory import InMemoryStore

pytestmark = pytest.mark.timeout(30)


# ------------------------------------------------------------------ Retry-After


@pytest.mark.parametrize(
    ("headers", "body", "expected"),
    [
        ({"retry-after": "7"}, None, 7.0),
        ({"retry-after": " 2.5 "}, None, 2.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, None, 1.5),
        ({}, b'{"detail": "Request was throttled.", "retry_after": 12}', 12.0),
        ({}, b'{"detail": "Request was throttled. Your rate limit resets in ~30s."}', 30.0),
        ({}, b'{"error": {"message": "... Please try again in 1.5s. Visit ..."}}', 1.5),
        ({}, b'{"error": {"message": "Please try again in 20ms."}}', 0.02),
        ({}, b'{"detail": "Too many requests. Try again in 4 seconds."}', 4.0),
        ({"retry-after": "-3"}, None, 0.0),
        ({"retry-after": "soon"}, b"", None),
        ({}, b"Too Many Requests", None),
        ({}, None, None),
    ],
)
def test_retry_after_forms(
    headers: dict[str, str], body: bytes | None, expected: float | None
) -> None:
    assert retry_after(headers, body) == expected


def test_retry_after_as_an_http_date() -> None:
    now = time.time()
    assert retry_after(
        {"retry-after": formatdate(now + 30, usegmt=True)}, now=now
    ) == pytest.approx(30, abs=1)
    assert retry_after({"retry-after": formatdate(now - 30, usegmt=True)}, now=now) == 0.0


async def test_the_gate_holds_every_caller_until_it_opens() -> None:
    gate = ThrottleGate()
    gate.close(0.3)
    gate.close(0.1)  # a shorter wait never shortens the gate
    started = time.monotonic()
    await asyncio.gather(gate.wait(5), gate.wait(5))
    assert 0.3 <= time.monotonic() - started < 1.0
    gate.close(10)
    assert await gate.wait(0.2) == pytest.approx(0.2, abs=0.05)  # capped by the caller


# ------------------------------------------------------------------ the engine's JobContext


def settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        supabase_url="http://127.0.0.1:9", supabase_service_role_key="service-role-key",
        worker_mode="polling", worker_poll_interval_seconds=3600, worker_concurrency=4,
        worker_lease_seconds=3, worker_shutdown_grace_seconds=0.2, health_port=0,
        worker_id="unit-worker",
    )  # fmt: skip
    return Settings(_env_file=None, **{**values, **overrides})  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def running(store: InMemoryStore, s: Settings, step) -> AsyncIterator[Worker]:
    worker = Worker(s, step, store=store)
    task = asyncio.create_task(worker.run())
    async with asyncio.timeout(5):
        await worker.ready.wait()
    try:
        yield worker
    finally:
        worker.stop()
        await task


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)


async def test_a_step_stores_its_handle_and_a_released_job_keeps_it() -> None:
    s = settings()
    store = InMemoryStore(worker_id=s.worker_id, lease_seconds=3)
    seen: list[tuple[dict[str, Any] | None, str | None]] = []

    async def step(job: Job, progress) -> JobResult:
        assert isinstance(progress, JobContext)
        seen.append((job.generation_ref, progress.stop_reason))
        assert await progress.save_generation_ref({"id": "h-1"}) is True
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append(({"reason": progress.stop_reason}, None))  # type: ignore[dict-item]
            raise
        raise AssertionError("unreachable")

    job_id = store.insert()
    async with running(store, s, step) as worker:
        await until(lambda: store.jobs[job_id].generation_ref is not None)
        worker.dispatcher.stop_claiming()
    assert store.jobs[job_id].status == "pending"  # released at shutdown...
    assert store.jobs[job_id].generation_ref == {"id": "h-1"}  # ...with its handle
    assert seen == [(None, None), ({"reason": "shutdown"}, None)]
    assert await store.generation_ref_in_use(job_id, "h-1") is True

    async def finish(job: Job, progress) -> JobResult:
        seen.append((job.generation_ref, None))
        return JobResult("https://i/x.png", "https://i/t.png")

    async with running(store, s, finish):
        await until(lambda: store.jobs[job_id].status == "complete")
    assert seen[-1] == ({"id": "h-1"}, None)  # the next claim carried the handle
    assert store.jobs[job_id].generation_ref is None  # completion clears it


async def test_a_handle_write_that_finds_the_lease_gone_stops_the_job() -> None:
    s = settings()
    store = InMemoryStore(worker_id=s.worker_id, lease_seconds=3)
    reasons: list[str | None] = []

    async def step(job: Job, progress) -> JobResult:
        store.take_over(job.id)
        assert await progress.save_generation_ref({"id": "h-2"}) is False
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            reasons.append(progress.stop_reason)
            raise
        raise AssertionError("unreachable")

    job_id = store.insert()
    async with running(store, s, step):
        await until(lambda: reasons != [])
    assert reasons == ["lease_lost"]
    assert store.jobs[job_id].generation_ref is None


# ------------------------------------------------------------------ the driver's rules


class Scripted:
    """A provider whose answers a test scripts: ``polls`` is a list of what each poll does."""

    kind = "scripted"
    can_cancel = True

    def __init__(self, polls: list[Any], start: Any = None) -> None:
        self.polls = polls
        self.start_answer = start
        self.started = 0
        self.cancelled: list[str] = []
        self.polled: list[str] = []

    def check(self, request: GenerationRequest) -> None: ...

    def accepts(self, handle: Handle) -> bool:
        return True

    def poll_interval(self, polls: int) -> float:
        return 0.0

    async def start(self, request: GenerationRequest) -> Handle | Finished:
        self.started += 1
        if isinstance(self.start_answer, BaseException):
            raise self.start_answer
        return Handle(self.kind, f"h{self.started}", f"https://p/h{self.started}")

    async def poll(self, handle: Handle, request: GenerationRequest) -> Pending | Finished:
        self.polled.append(handle.id)
        step = self.polls.pop(0) if self.polls else Finished("done")
        if isinstance(step, BaseException):
            raise step
        if step == "hang":
            await asyncio.sleep(30)
        return step

    async def cancel(self, handle: Handle) -> None:
        self.cancelled.append(handle.id)

    async def result(self, finished: Finished, request: GenerationRequest) -> GeneratedImage:
        return GeneratedImage(b"png", "png", None, "bytes")

    async def aclose(self) -> None: ...


def driver(provider: Scripted, **overrides: Any) -> Generator:
    s = settings(
        **{"generator_retry_delays": "0.01,0.01", "generator_timeout_seconds": 2, **overrides}
    )
    return Generator(s, provider)  # type: ignore[arg-type]


def job(ref: dict[str, Any] | None = None) -> Job:
    return Job("j1", "a fox", None, "1:1", None, 1, generation_ref=ref)


STORED = Handle("scripted", "h0", "https://p/h0").to_ref()


async def test_a_stored_handle_is_resumed_not_restarted() -> None:
    provider = Scripted([Pending(), Pending(), Finished("x")])
    await driver(provider).generate(job(STORED), 8, 8, GeneratorContext.detached())
    assert provider.started == 0 and provider.polled == ["h0", "h0", "h0"]


async def test_a_transient_poll_error_keeps_the_handle_for_the_next_attempt() -> None:
    provider = Scripted([Throttled("HTTP 429", 0.05, creation=False), Finished("x")])
    await driver(provider).generate(job(), 8, 8, GeneratorContext.detached())
    assert provider.started == 1 and provider.polled == ["h1", "h1"]


async def test_a_resumed_handle_that_is_gone_is_replaced_at_once() -> None:
    provider = Scripted([HandleGone("HTTP 404"), Finished("x")])
    await driver(provider).generate(job(STORED), 8, 8, GeneratorContext.detached())
    assert provider.started == 1 and provider.polled == ["h0", "h1"]


async def test_a_throttled_creation_closes_the_gate_for_every_job() -> None:
    provider = Scripted([], start=Throttled("HTTP 429", 0.4, creation=True))
    generator = driver(provider, generator_retry_delays="0.01")
    with pytest.raises(JobFailed):
        await generator.generate(job(), 8, 8, GeneratorContext.detached())
    assert provider.started == 2 and generator.gate.remaining > 0
    provider.start_answer = None
    started = time.monotonic()
    await generator.generate(job(), 8, 8, GeneratorContext.detached())  # another job: it waits
    assert time.monotonic() - started >= 0.2


async def test_unknown_handles_are_ignored() -> None:
    provider = Scripted([Finished("x")])
    other = {**STORED, "kind": "replicate"}
    await driver(provider).generate(job(other), 8, 8, GeneratorContext.detached())
    assert provider.started == 1
    provider = Scripted([Finished("x")])
    await driver(provider).generate(job({"id": "x"}), 8, 8, GeneratorContext.detached())
    assert provider.started == 1
