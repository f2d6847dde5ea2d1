"""The worker's HTTP endpoints, served by a real in-process Worker against the devstack."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from devstack.stack import DevStack
from tests.helpers import free_port, instant_step, running_worker, wait_for, worker_settings
from worker.engine.app import Worker
from worker.jobs import JobResult


async def step(job, progress) -> JobResult:
    await progress(50)
    return await instant_step(job, progress)


@contextlib.asynccontextmanager
async def serving_worker(stack: DevStack, job_step=step) -> AsyncIterator[tuple[Worker, str]]:
    """A polling worker with its health server on a free port; yields it and the base URL."""
    port = free_port()
    settings = worker_settings(stack, health_port=port, worker_id="health-test-worker")
    async with running_worker(settings, job_step) as worker:
        base = f"http://127.0.0.1:{port}"
        await wait_for_status(base + "/healthz", 200)
        yield worker, base


async def get(url: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(url) as response,
    ):
        return response.status, await response.text()


async def get_json(url: str) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
        session.get(url) as response,
    ):
        return response.status, await response.json()


async def wait_for_status(
    url: str, status: int, timeout: float = 10, until: Callable[[dict], bool] = lambda body: True
) -> dict:
    """Poll ``url`` until it answers ``status`` with a body that satisfies ``until``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            got, body = await get_json(url)
            last = (got, body)
            if got == status and until(body):
                return body
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered {status} as expected; last: {last}")


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(values: dict[tuple[str, tuple], float], name: str) -> float:
    return sum(v for (n, _), v in values.items() if n == name)


async def test_endpoints_report_health_readiness_and_metrics(stack: DevStack) -> None:
    async with serving_worker(stack) as (_, base):
        status, body = await get_json(base + "/healthz")
        assert status == 200 and body["status"] == "ok"
        assert body["worker_id"] == "health-test-worker"

        ready = await wait_for_status(base + "/readyz", 200)
        assert ready["mode"] == "polling" and ready["realtime"] is None
        assert ready["database"]["ok"] is True and ready["database"]["error"] is None
        assert ready["reasons"] == [] and ready["last_claim_error"] is None
        assert ready["worker_id"] == "health-test-worker"

        status, text = await get(base + "/metrics")
        assert status == 200
        before = samples(text)

        ids = [
            await stack.pool.fetchval("insert into jobs (prompt) values ($1) returning id", f"p{i}")
            for i in range(5)
        ]

        async def all_complete() -> bool:
            return await stack.pool.fetchval(
                "select count(*) = 5 from jobs where status = 'complete' and id = any($1)", ids
            )

        await wait_for(all_complete, timeout=15)

        status, text = await get(base + "/metrics")
        after = samples(text)
        completed = "image_worker_jobs_completed_total"
        assert total(after, completed) - total(before, completed) == 5
        claimed = "image_worker_jobs_claimed_total"
        assert total(after, claimed) - total(before, claimed) == 5
        # Polling mode: every claim was made by the poll timer (or the start-up backlog claim).
        assert set(
            dict(labels)["trigger"]
            for (name, labels), value in after.items()
            if name == claimed and value > before.get((name, labels), 0)
        ) <= {"poll"}
        assert after[("image_worker_ready", ())] == 1
        assert ("image_worker_jobs_in_flight", ()) in after
        assert any(name == "image_worker_pickup_latency_seconds_count" for name, _ in after)


async def test_readiness_follows_the_database_and_liveness_does_not(stack: DevStack) -> None:
    async with serving_worker(stack) as (_, base):
        await wait_for_status(base + "/readyz", 200)

        stack.rest.fail_for(2.5, status=503)
        body = await wait_for_status(
            base + "/readyz", 503, timeout=5, until=lambda b: not b["database"]["ok"]
        )
        assert body["database"]["error"]
        assert "database unreachable" in body["reasons"]
        # A database outage is not something a restart fixes.
        status, live = await get_json(base + "/healthz")
        assert status == 200, live
        assert stack.keys.service_role_key not in str(body)

        await wait_for_status(base + "/readyz", 200, timeout=15)

        stack.rest.hang_for(3)
        body = await wait_for_status(
            base + "/readyz", 503, timeout=6, until=lambda b: not b["database"]["ok"]
        )
        assert "no answer" in body["database"]["error"]
        stack.rest.clear_faults()
        await wait_for_status(base + "/readyz", 200, timeout=15)


async def test_while_stopping_readyz_is_503_and_healthz_stays_200(stack: DevStack) -> None:
    release = asyncio.Event()

    async def slow_step(job, progress) -> JobResult:
        await release.wait()
        return await step(job, progress)

    async with serving_worker(stack, job_step=slow_step) as (worker, base):
        await stack.pool.execute("insert into jobs (prompt) values ('slow')")

        async def job_in_flight() -> bool:
            return worker.dispatcher is not None and worker.dispatcher.in_flight == 1

        await wait_for(job_in_flight, timeout=10)
        worker.stop()  # the in-flight job holds the shutdown open (grace period)

        body = await wait_for_status(base + "/readyz", 503)
        assert "stopping" in body["reasons"] and body["stopping"] is True
        # Restarting a worker that is finishing its jobs would only cut them short.
        status, live = await get_json(base + "/healthz")
        assert status == 200 and live["status"] == "stopping"
        release.set()
    assert await stack.pool.fetchval("select status from jobs") == "complete"
