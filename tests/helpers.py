"""Helpers shared by the worker tests: settings for a stack, a worker in the background, waiting."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from devstack.stack import DevStack
from worker.engine.app import Worker
from worker.jobs import Job, JobResult, Step
from worker.settings import Settings

REPO = Path(__file__).resolve().parent.parent


def worker_env(stack: DevStack, **overrides: Any) -> dict[str, str]:
    """Environment for a worker on this stack: polling every 0.2 s, 3 s leases, no health port."""
    env = {
        **stack.env,
        "WORKER_MODE": "polling",
        "WORKER_POLL_INTERVAL_SECONDS": "0.2",
        "WORKER_LEASE_SECONDS": "3",
        "WORKER_SHUTDOWN_GRACE_SECONDS": "2",
        "WORKER_CONCURRENCY": "4",
        "GENERATOR_RETRY_DELAYS": "0.1,0.1,0.1",
        "GENERATOR_TIMEOUT_SECONDS": "10",
        "HEALTH_PORT": "0",
        "LOG_LEVEL": "INFO",
    }
    env.update({k.upper(): str(v) for k, v in overrides.items()})
    return env


def worker_settings(stack: DevStack, **overrides: Any) -> Settings:
    env = worker_env(stack, **overrides)
    fields = {k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields}
    return Settings(_env_file=None, **fields)


@contextlib.asynccontextmanager
async def running_worker(
    settings: Settings, step: Step | None = None, **kwargs: Any
) -> AsyncIterator[Worker]:
    """A Worker running in this event loop; stopped gracefully on exit."""
    worker = Worker(settings, step, **kwargs)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            await worker.ready.wait()
        yield worker
    finally:
        worker.stop()
        async with asyncio.timeout(60):
            await task


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], timeout: float = 30, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def insert_jobs(
    stack: DevStack, count: int, prompt: str = "a red fox", **cols: Any
) -> list[str]:
    rows = await stack.pool.fetch(
        "insert into public.jobs (prompt, model, aspect_ratio, user_id) "
        "select $1 || ' #' || g, $2, $3, $4::uuid from generate_series(1, $5) g returning id",
        prompt,
        cols.get("model", "test-model"),
        cols.get("aspect_ratio", "1:1"),
        cols.get("user_id"),
        count,
    )
    return [str(r["id"]) for r in rows]


async def statuses(stack: DevStack) -> dict[str, int]:
    rows = await stack.pool.fetch("select status, count(*) from public.jobs group by status")
    return {r["status"]: r["count"] for r in rows}


async def all_terminal(stack: DevStack) -> bool:
    return not await stack.pool.fetchval(
        "select count(*) from public.jobs where status in ('pending', 'running')"
    )


async def instant_step(job: Job, progress) -> JobResult:
    return JobResult(f"https://img.test/{job.id}.png", f"https://img.test/{job.id}_thumb.png")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_worker(env: dict[str, str], worker_id: str | None = None) -> subprocess.Popen:
    """``python -m worker run`` as a real process, its output in a log file next to the tests."""
    worker_id = worker_id or f"proc-{uuid.uuid4().hex[:6]}"
    full_env = {**os.environ, **env, "WORKER_ID": worker_id, "PYTHONUNBUFFERED": "1"}
    log_dir = Path(os.environ.get("WORKER_TEST_LOGS", "/tmp/image-worker-test-logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{worker_id}.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker", "run"],
        env=full_env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    proc.worker_id = worker_id  # type: ignore[attr-defined]
    proc.log_path = log_dir / f"{worker_id}.log"  # type: ignore[attr-defined]
    return proc


class Recorder:
    """A test's ``JobContext``: records every handle write; the lease, the answer to "is the
    handle still in use" and the stop reason are the test's to set."""

    def __init__(
        self, *, held: bool = True, in_use: bool | None = True, stop_reason: str | None = None
    ) -> None:
        self.writes: list[dict[str, Any] | None] = []
        self.stored: dict[str, Any] | None = None
        self.held = held
        self.in_use = in_use
        self.stop_reason = stop_reason
        self.asked: list[str] = []

    async def __call__(self, value: int) -> None:
        return None

    async def save_generation_ref(self, ref: dict[str, Any] | None) -> bool | None:
        self.writes.append(ref)
        if self.held:
            self.stored = ref
        return self.held

    async def generation_ref_in_use(self, ref_id: str) -> bool | None:
        self.asked.append(ref_id)
        return self.in_use
