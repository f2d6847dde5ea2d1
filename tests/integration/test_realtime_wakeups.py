"""Realtime wake-ups that never lose a job, on the devstack's faithful Realtime stand-in.

Each test inserts jobs before, during and after a fault, then asserts that none was lost and
that, once recovered, pickups are triggered by ``realtime`` again (not by the poll).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from devstack.stack import DevStack
from tests.helpers import instant_step, running_worker, wait_for, worker_settings
from worker.engine.app import Worker
from worker.wakeups.realtime import RealtimeWakeups

POLL = 1.0  # the fallback poll while Realtime is down


@contextlib.asynccontextmanager
async def realtime_worker(stack: DevStack, **overrides) -> AsyncIterator[Worker]:
    options = {"worker_mode": "realtime", "worker_poll_interval_seconds": POLL, **overrides}
    settings = worker_settings(stack, **options)
    async with running_worker(settings, instant_step) as worker:
        yield worker


async def insert_one(stack: DevStack, label: str) -> str:
    return str(
        await stack.pool.fetchval(
            "insert into public.jobs (prompt) values ($1) returning id", f"{label} {time.time()}"
        )
    )


@contextlib.asynccontextmanager
async def trickle(stack: DevStack, every: float = 0.25) -> AsyncIterator[list[str]]:
    """Insert a job every ``every`` seconds while the block runs."""
    ids: list[str] = []

    async def insert_forever() -> None:
        while True:
            ids.append(await insert_one(stack, "trickle"))
            await asyncio.sleep(every)

    task = asyncio.create_task(insert_forever())
    try:
        yield ids
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def healthy(worker: Worker) -> None:
    realtime = worker.realtime
    assert isinstance(realtime, RealtimeWakeups)
    await wait_for(lambda: _is_healthy(realtime), timeout=90, interval=0.1)


async def _is_healthy(realtime: RealtimeWakeups) -> bool:
    return realtime.healthy


async def none_lost(stack: DevStack, ids: list[str]) -> None:
    async def done() -> bool:
        n = await stack.pool.fetchval(
            "select count(*) from public.jobs where id = any($1::uuid[]) and status = 'complete'",
            ids,
        )
        return n == len(ids)

    await wait_for(done, timeout=60, interval=0.1)


async def realtime_pickups_again(stack: DevStack, worker: Worker, n: int = 3) -> None:
    """After recovery, single inserts on an idle worker are claimed by a Realtime event."""
    await healthy(worker)
    # Let the catch-ups that follow a return to health go by, so they cannot take the credit.
    await asyncio.sleep(RealtimeWakeups.SECOND_CATCHUP_AFTER + 0.5)
    for _ in range(n):
        job_id = await insert_one(stack, "after")
        await none_lost(stack, [job_id])
        trigger = await stack.pool.fetchval(
            "select claim_trigger from public.jobs where id = $1", uuid.UUID(job_id)
        )
        assert trigger == "realtime", f"picked up by {trigger!r}, not by a Realtime event"


async def test_events_wake_the_worker_at_once(stack: DevStack) -> None:
    before = [await insert_one(stack, "before start")]
    async with realtime_worker(stack) as worker:
        await none_lost(stack, before)
        await realtime_pickups_again(stack, worker, n=5)
        assert worker.dispatcher.claimed_by_trigger["realtime"] >= 5


async def test_abrupt_drops_and_1001_closes_for_a_minute(stack: DevStack) -> None:
    async with realtime_worker(stack) as worker:
        await healthy(worker)
        before = [await insert_one(stack, "before")]
        async with trickle(stack) as during:
            deadline = time.monotonic() + 60
            n = 0
            while time.monotonic() < deadline:
                if n % 2:
                    stack.realtime.close_all(code=1001)
                else:
                    stack.realtime.drop_all()
                n += 1
                await asyncio.sleep(3 + n % 3)
        await none_lost(stack, before + during)
        await realtime_pickups_again(stack, worker)
    assert len(during) > 150


async def test_upgrades_refused_past_the_library_retry_window(stack: DevStack) -> None:
    async with realtime_worker(stack) as worker:
        await healthy(worker)
        rebuilds = worker.realtime.rebuilds
        before = [await insert_one(stack, "before")]
        async with trickle(stack, every=0.5) as during:
            stack.realtime.refuse_upgrades(40)
            stack.realtime.drop_all()
            await asyncio.sleep(40)
        await none_lost(stack, before + during)
        await realtime_pickups_again(stack, worker)
        # The library gave up silently after ~15 s; only the watchdog brought it back.
        assert worker.realtime.rebuilds > rebuilds


async def test_half_open_socket_detected_within_30_seconds(stack: DevStack) -> None:
    async with realtime_worker(stack) as worker:
        await healthy(worker)
        rebuilds = worker.realtime.rebuilds
        frozen_at = time.monotonic()
        stack.realtime.freeze(60)
        during = [await insert_one(stack, "during freeze")]
        await wait_for(lambda: _rebuilt(worker, rebuilds), timeout=30, interval=0.1)
        assert time.monotonic() - frozen_at < 30
        await none_lost(stack, during)
        await realtime_pickups_again(stack, worker)


async def test_system_error_and_phx_close(stack: DevStack) -> None:
    async with realtime_worker(stack) as worker:
        await healthy(worker)
        rebuilds = worker.realtime.rebuilds
        async with trickle(stack) as during:
            stack.realtime.system_error_close("Token has expired 0 seconds ago")
            await wait_for(lambda: _rebuilt(worker, rebuilds), timeout=15, interval=0.1)
            await asyncio.sleep(1)
        await none_lost(stack, during)
        await realtime_pickups_again(stack, worker)


async def test_phx_error(stack: DevStack) -> None:
    async with realtime_worker(stack) as worker:
        await healthy(worker)
        async with trickle(stack) as during:
            stack.realtime.phx_error()
            await asyncio.sleep(3)
        await none_lost(stack, during)
        await realtime_pickups_again(stack, worker)


async def test_join_error_reply(stack: DevStack) -> None:
    stack.realtime.join_error("RealtimeRestarting: Realtime is restarting", count=2)
    before = [await insert_one(stack, "before")]
    async with realtime_worker(stack) as worker:
        async with trickle(stack) as during:
            await asyncio.sleep(4)
        await none_lost(stack, before + during)
        await realtime_pickups_again(stack, worker)


async def test_subscribed_message_delayed_at_start(stack: DevStack) -> None:
    stack.realtime.delay_subscribed(3, joins=1)
    async with realtime_worker(stack, worker_poll_interval_seconds=30) as worker:
        realtime = worker.realtime
        await wait_for(lambda: _joined(realtime), timeout=10, interval=0.02)
        # Committed after SUBSCRIBED but before "Subscribed to PostgreSQL": never delivered.
        gap = [await insert_one(stack, "in the gap")]
        await none_lost(stack, gap)
        trigger = await stack.pool.fetchval(
            "select claim_trigger from public.jobs where id = $1", uuid.UUID(gap[0])
        )
        assert trigger == "catchup"
        await realtime_pickups_again(stack, worker)


async def test_failing_rest_api_while_the_socket_is_fine(stack: DevStack) -> None:
    async with realtime_worker(stack) as worker:
        await healthy(worker)
        async with trickle(stack) as during:
            stack.rest.fail_for(3, status=503)
            await asyncio.sleep(4)
            stack.rest.hang_for(3)
            await asyncio.sleep(4)
        await none_lost(stack, during)
        await realtime_pickups_again(stack, worker)


async def _rebuilt(worker: Worker, before: int) -> bool:
    return worker.realtime.rebuilds > before


async def _joined(realtime: RealtimeWakeups) -> bool:
    return realtime.state == "joined"
