"""Never paying twice, with real worker processes: per generator kind, a job whose worker is
SIGKILLed, released at a SIGTERM with a short grace, loses its lease (frozen with SIGSTOP past it
while another worker takes the job over), or sees a transient error while waiting, is resumed
from its stored handle and completed with exactly ONE generation request at the provider.

Generation requests are counted by the stand-ins themselves: POSTs to the generic generator
(per job id), creations at the Replicate and fal stand-ins (per prompt). OpenAI's Images API
has no handle: its test shows what that costs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from devstack.stack import DevStack
from tests.helpers import spawn_worker, wait_for, worker_env

KINDS = ["http", "replicate", "fal"]


@dataclass
class Job:
    id: str
    prompt: str


def slow_prompt(kind: str, seconds: float, extra: str = "") -> str:
    """A prompt whose generation takes about ``seconds`` and hands back a handle at once."""
    text = f"a harbour at dawn {uuid.uuid4().hex[:8]} "
    if kind == "http":
        legs = max(2, round(seconds / 0.5))  # Modal-style: 303 to a result URL, legs of 0.5 s
        return text + f"[gen:redirect303:{legs}:0.5]" + extra
    return text + f"[gen:run:{seconds:g}]" + extra


async def insert(stack: DevStack, prompt: str) -> Job:
    job_id = await stack.pool.fetchval(
        "insert into public.jobs (prompt) values ($1) returning id", prompt
    )
    return Job(str(job_id), prompt)


def generation_requests(stack: DevStack, kind: str, job: Job) -> int:
    if kind == "http":
        return len(stack.generator.calls_for(job.id, "POST"))
    provider = {"replicate": stack.replicate, "fal": stack.fal, "openai": stack.openai}[kind]
    return (
        provider.attempts_for(job.prompt)
        if kind == "openai"
        else provider.creations_for(job.prompt)
    )


def provider_cancels(stack: DevStack, kind: str, job: Job) -> int:
    if kind == "http":
        return 0  # Modal web endpoints have no cancel call
    provider = {"replicate": stack.replicate, "fal": stack.fal}[kind]
    return len(provider.cancels_for(job.prompt))


async def row(stack: DevStack, job: Job) -> dict:
    record = await stack.pool.fetchrow(
        "select status, worker_id, attempts, generation_ref, error_message, image_url"
        " from public.jobs where id = $1",
        uuid.UUID(job.id),
    )
    result = dict(record)
    if isinstance(result["generation_ref"], str):
        result["generation_ref"] = json.loads(result["generation_ref"])
    return result


def has_handle(stack: DevStack, job: Job, worker: str | None = None) -> Callable:
    async def check() -> bool:
        current = await row(stack, job)
        return current["generation_ref"] is not None and (
            worker is None or current["worker_id"] == worker
        )

    return check


def status_is(stack: DevStack, job: Job, status: str) -> Callable:
    async def check() -> bool:
        return (await row(stack, job))["status"] == status

    return check


def env_for(stack: DevStack, kind: str, **overrides: object) -> dict[str, str]:
    return worker_env(stack, **stack.provider_env(kind), worker_lease_seconds=3, **overrides)


async def stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        for _ in range(200):
            if proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        else:
            proc.kill()
            proc.wait(5)


async def exited(proc: subprocess.Popen, timeout: float) -> int:
    for _ in range(int(timeout / 0.05)):
        if (code := proc.poll()) is not None:
            return code
        await asyncio.sleep(0.05)
    raise AssertionError(f"{proc.worker_id} did not exit within {timeout} s")  # type: ignore[attr-defined]


async def assert_paid_once(stack: DevStack, kind: str, job: Job, survivor: str) -> None:
    final = await row(stack, job)
    assert final["status"] == "complete", final
    assert final["worker_id"] == survivor and final["image_url"]
    assert final["generation_ref"] is None  # completion cleared the handle
    assert generation_requests(stack, kind, job) == 1
    assert provider_cancels(stack, kind, job) == 0


@pytest.mark.parametrize("kind", KINDS)
async def test_resumed_after_sigkill(stack: DevStack, kind: str) -> None:
    job = await insert(stack, slow_prompt(kind, 6))
    env = env_for(stack, kind)
    victim = spawn_worker(env, f"victim-{kind}")
    survivor = None
    try:
        await wait_for(has_handle(stack, job, victim.worker_id), timeout=20)  # type: ignore[attr-defined]
        victim.kill()  # SIGKILL: nothing released, nothing cancelled
        victim.wait(10)
        survivor = spawn_worker(env, f"survivor-{kind}")
        await wait_for(status_is(stack, job, "complete"), timeout=40)
    finally:
        await stop(*(p for p in (victim, survivor) if p is not None))
    await assert_paid_once(stack, kind, job, f"survivor-{kind}")


@pytest.mark.parametrize("kind", KINDS)
async def test_resumed_after_a_sigterm_release(stack: DevStack, kind: str) -> None:
    job = await insert(stack, slow_prompt(kind, 5))
    env = env_for(stack, kind, worker_shutdown_grace_seconds=0.5)
    first = spawn_worker(env, f"first-{kind}")
    second = None
    try:
        await wait_for(has_handle(stack, job, first.worker_id), timeout=20)  # type: ignore[attr-defined]
        first.send_signal(signal.SIGTERM)
        assert await exited(first, 10) == 0
        released = await row(stack, job)
        assert released["status"] == "pending" and released["generation_ref"] is not None
        second = spawn_worker(env, f"second-{kind}")
        await wait_for(status_is(stack, job, "complete"), timeout=40)
    finally:
        await stop(*(p for p in (first, second) if p is not None))
    await assert_paid_once(stack, kind, job, f"second-{kind}")
    log = first.log_path.read_text()  # type: ignore[attr-defined]
    if kind != "http":
        assert "released with its handle" in log


@pytest.mark.parametrize("kind", KINDS)
async def test_resumed_after_a_lost_lease(stack: DevStack, kind: str) -> None:
    job = await insert(stack, slow_prompt(kind, 9))
    env = env_for(stack, kind)
    frozen = spawn_worker(env, f"frozen-{kind}")
    taker = None
    try:
        await wait_for(has_handle(stack, job, frozen.worker_id), timeout=20)  # type: ignore[attr-defined]
        os.kill(frozen.pid, signal.SIGSTOP)  # no renewals: the lease runs out
        taker = spawn_worker(env, f"taker-{kind}")
        await wait_for(has_handle(stack, job, f"taker-{kind}"), timeout=30)
        os.kill(frozen.pid, signal.SIGCONT)  # its next renewal finds the lease taken
        await wait_for(status_is(stack, job, "complete"), timeout=40)
        await asyncio.sleep(1)  # the frozen worker has noticed by now
    finally:
        await stop(*(p for p in (frozen, taker) if p is not None))
    await assert_paid_once(stack, kind, job, f"taker-{kind}")
    log = frozen.log_path.read_text()  # type: ignore[attr-defined]
    assert "lease lost" in log
    if kind != "http":  # asked the job, which still refers to the generation: not cancelled
        assert "the job still refers to generation" in log and "left to resume" in log


@pytest.mark.parametrize("kind", KINDS)
async def test_resumed_after_a_transient_error_while_waiting(stack: DevStack, kind: str) -> None:
    if kind == "http":
        # Each leg of the result URL takes 1.5 s and an attempt only 2 s: every attempt ends in
        # a timeout while waiting on the result URL, and the next one GETs it again.
        prompt = f"a harbour at dusk {uuid.uuid4().hex[:8]} [gen:redirect303:3:1.5]"
        overrides = {"generator_timeout_seconds": 2}
    else:
        prompt = slow_prompt(kind, 1.5, "[gen:poll_error:503:2]")
        overrides = {}
    job = await insert(stack, prompt)
    worker = spawn_worker(env_for(stack, kind, **overrides), f"steady-{kind}")
    try:
        await wait_for(status_is(stack, job, "complete"), timeout=40)
    finally:
        await stop(worker)
    await assert_paid_once(stack, kind, job, f"steady-{kind}")
    log = worker.log_path.read_text()  # type: ignore[attr-defined]
    assert "generator attempt 1/4 failed" in log


async def test_openai_has_no_handle_so_a_killed_request_is_sent_again(stack: DevStack) -> None:
    """What "paid once" cannot cover: OpenAI's Images API answers with the image or nothing."""
    job = await insert(stack, f"a harbour at noon {uuid.uuid4().hex[:8]} [gen:run:4]")
    env = env_for(stack, "openai")
    victim = spawn_worker(env, "victim-openai")
    survivor = None
    try:
        await wait_for(lambda: _sent(stack, job), timeout=20)
        victim.kill()
        victim.wait(10)
        survivor = spawn_worker(env, "survivor-openai")
        await wait_for(status_is(stack, job, "complete"), timeout=40)
    finally:
        await stop(*(p for p in (victim, survivor) if p is not None))
    assert (await row(stack, job))["generation_ref"] is None
    assert generation_requests(stack, "openai", job) == 2  # sent twice: no handle to resume


async def _sent(stack: DevStack, job: Job) -> bool:
    return stack.openai.attempts_for(job.prompt) >= 1
