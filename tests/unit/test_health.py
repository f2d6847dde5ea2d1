"""Liveness from status snapshots alone: no server, no worker."""

from __future__ import annotations

import dataclasses
import time

import pytest

from worker.engine.status import WorkerStatus
from worker.observability import health


def snapshot(**fields) -> WorkerStatus:
    defaults = dict(
        worker_id="w", mode="polling", concurrency=2, started_at=time.monotonic(),
        longest_wake_gap=1.0, ready=True,
    )  # fmt: skip
    return WorkerStatus(**{**defaults, **fields})


async def never_called() -> None:
    raise AssertionError("liveness must not touch the database")


@pytest.mark.parametrize(
    ("in_flight", "idle_for", "expected"),
    [
        (0, 5.0, 200),  # idle between wake-ups: fine
        (0, 120.0, 503),  # free slots, no wake-up handled for two minutes: stuck
        (2, 120.0, 200),  # every slot busy: waiting for a job to finish, not stuck
    ],
)
def test_liveness_detects_a_stuck_dispatcher(in_flight: int, idle_for: float, expected) -> None:
    now = time.monotonic()
    status = snapshot(in_flight=in_flight, dispatcher_alive_at=now - idle_for)
    state = health.HealthState(lambda: status, never_called)
    state._track_free_slots(status, now - idle_for)  # slots have been free (or busy) all along
    code, body = state.liveness()
    assert code == expected, body
    if expected == 503:
        assert "dispatcher" in body["problems"][0]


def test_liveness_fails_after_a_side_task_died_or_the_loop_blocked() -> None:
    current = snapshot(in_flight=0, dispatcher_alive_at=time.monotonic())
    state = health.HealthState(lambda: current, never_called)
    assert state.liveness()[0] == 200
    current = dataclasses.replace(current, failed=True)
    assert state.liveness()[0] == 503
    current = dataclasses.replace(current, failed=False)
    state.last_tick -= 60
    code, body = state.liveness()
    assert code == 503 and "event loop" in body["problems"][0]
