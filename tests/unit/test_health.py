"""Liveness from status snapshots alone: no server, no worker."""

from __future__ import annotations

import contextlib
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


HOSTY_ERROR = (
    "database call ping failed: ConnectError: Cannot connect to host db.internal.corp:5432"
)


async def failing_ping() -> None:
    from worker.store import StoreError

    raise StoreError("ping", "ConnectError: Cannot connect to host db.internal.corp:5432")


async def test_readyz_keeps_error_text_with_host_names_to_itself_unless_asked() -> None:
    """Finding 10: /readyz says what is wrong, not where (host names are for the logs)."""
    status = snapshot(last_claim_error=HOSTY_ERROR, dispatcher_alive_at=time.monotonic())
    quiet = health.HealthState(lambda: status, failing_ping)
    ready, body = await quiet.readiness()
    assert not ready
    assert body["database"]["ok"] is False and body["database"]["error"]
    assert body["last_claim_error"]
    assert "db.internal.corp" not in str(body)
    assert set(body["reasons"]) >= {"database unreachable", "claims failing"}

    verbose = health.HealthState(lambda: status, failing_ping, error_details=True)
    _, body = await verbose.readiness()
    assert "db.internal.corp" in body["database"]["error"]
    assert "db.internal.corp" in body["last_claim_error"]


async def test_the_health_server_binds_health_host() -> None:
    """Finding 10: HEALTH_HOST picks the address (default 0.0.0.0, for containers)."""
    import asyncio
    import socket

    import psutil

    from worker.settings import Settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(
        _env_file=None,
        supabase_url="http://127.0.0.1:9",
        supabase_service_role_key="k",
        health_port=port,
        health_host="127.0.0.1",
    )
    current = snapshot(dispatcher_alive_at=time.monotonic())

    async def ping() -> None:
        return None

    server = asyncio.create_task(health.serve_health(settings, lambda: current, ping))
    try:
        for _ in range(100):
            listening = [
                c.laddr
                for c in psutil.Process().net_connections(kind="tcp")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port
            ]
            if listening:
                break
            await asyncio.sleep(0.05)
        assert [address.ip for address in listening] == ["127.0.0.1"]
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
