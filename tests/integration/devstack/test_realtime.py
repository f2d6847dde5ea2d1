"""The Realtime stand-in against the real, unmodified ``supabase``/``realtime`` 2.34.1 client.

Each fault test checks the client-visible behaviour documented in docs/supabase-realtime.md §6.
The slow ones (give-up after 5 refused attempts, ~15 s; freeze detected by keepalive, ~20–50 s)
are dominated by the client's own timers, not by the server.
"""

from __future__ import annotations

import asyncio
import re
import statistics
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import websockets
from realtime import RealtimeSubscribeStates as States
from supabase import AsyncClient, acreate_client

from devstack.capture import parse_array, render_scalar
from devstack.realtime import RealtimeServer, RowFilter, binding_id
from devstack.stack import DevStack

ISO_MS_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ISO_TZ = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$")

TABLE_SQL = """
create table public.t (
    id bigserial primary key,
    status text not null default 'pending',
    n int,
    payload jsonb,
    created_at timestamptz not null default now()
);
alter publication supabase_realtime add table public.t;
"""


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.01)


class Watcher:
    """Synchronous, never-raising callbacks (the library kills its listen task otherwise)."""

    def __init__(self) -> None:
        self.states: list[tuple[States, Exception | None, float]] = []
        self.changes: list[dict[str, Any]] = []
        self.change_times: list[float] = []
        self.system: list[Any] = []

    def on_state(self, state: States, error: Exception | None) -> None:
        self.states.append((state, error, time.monotonic()))

    def on_change(self, payload: dict[str, Any]) -> None:
        self.changes.append(payload)
        self.change_times.append(time.perf_counter())

    def on_system(self, payload: Any) -> None:
        self.system.append(payload)

    def count(self, state: States) -> int:
        return sum(s == state for s, _, _ in self.states)

    def error(self, index: int = -1) -> Exception | None:
        errors = [e for s, e, _ in self.states if s == States.CHANNEL_ERROR]
        return errors[index]

    def subscribed_to_postgres(self) -> int:
        return sum(p.extension == "postgres_changes" and p.status == "ok" for p in self.system)

    async def wait_state(self, state: States, count: int = 1, timeout: float = 5.0) -> None:
        await eventually(lambda: self.count(state) >= count, timeout, f"{count}x {state}")

    async def wait_live(self, count: int = 1, timeout: float = 5.0) -> None:
        """SUBSCRIBED is not enough: changes flow only after "Subscribed to PostgreSQL"."""
        await self.wait_state(States.SUBSCRIBED, count, timeout)
        await eventually(lambda: self.subscribed_to_postgres() >= count, timeout, "system ok")

    def records(self) -> list[dict[str, Any]]:
        return [p["data"].get("record") or p["data"].get("old_record") for p in self.changes]


@pytest_asyncio.fixture
async def table(stack: DevStack) -> str:
    await stack.pool.execute(TABLE_SQL)
    return "t"


@pytest_asyncio.fixture
async def client(stack: DevStack) -> AsyncIterator[AsyncClient]:
    client = await acreate_client(stack.url, stack.keys.service_role_key)
    yield client
    await close_client(client)


async def close_client(client: AsyncClient) -> None:
    realtime = client.realtime
    listen = realtime._listen_task
    if listen is not None and listen.done() and not listen.cancelled():
        listen.exception()  # a given-up client: mark its exception as seen
    for channel in list(realtime.channels.values()):
        channel.rejoin_timer.reset()
        channel.join_push.destroy()
    await realtime.close()


async def subscribe(
    client: AsyncClient, event: str = "*", name: str = "x", **kwargs: Any
) -> tuple[Any, Watcher]:
    watcher = Watcher()
    channel = client.channel(name).on_postgres_changes(
        event, schema="public", table="t", callback=watcher.on_change, **kwargs
    )
    channel.on_system(watcher.on_system)
    await channel.subscribe(watcher.on_state)
    return channel, watcher


async def insert(stack: DevStack, status: str = "pending", n: int | None = None) -> int:
    return await stack.pool.fetchval(
        "insert into t(status, n) values ($1, $2) returning id", status, n
    )


# -- payloads, filters, order ---------------------------------------------------------------------


async def test_insert_update_delete_payload_shape(stack: DevStack, table: str, client) -> None:
    channel, w = await subscribe(client, "*")
    await w.wait_live()
    binding = channel.postgres_changes_callbacks[0]
    assert binding.id and binding.id >= 1

    row_id = await stack.pool.fetchval(
        "insert into t(status, n, payload) values ('pending', 7, '{\"a\": [1, 2]}') returning id"
    )
    await stack.pool.execute("update t set status = 'done' where id = $1", row_id)
    await stack.pool.execute("delete from t where id = $1", row_id)
    await eventually(lambda: len(w.changes) == 3)

    insert_, update, delete = (p["data"] for p in w.changes)
    assert [p["ids"] for p in w.changes] == [[binding.id]] * 3
    assert [d["type"] for d in (insert_, update, delete)] == ["INSERT", "UPDATE", "DELETE"]
    for data in (insert_, update, delete):
        assert data["schema"] == "public" and data["table"] == "t"
        assert ISO_MS_Z.match(data["commit_timestamp"]), data["commit_timestamp"]
        assert data["errors"] is None
        assert data["columns"] == [
            {"name": "id", "type": "int8"},
            {"name": "status", "type": "text"},
            {"name": "n", "type": "int4"},
            {"name": "payload", "type": "jsonb"},
            {"name": "created_at", "type": "timestamptz"},
        ]
    record = insert_["record"]
    assert record["id"] == row_id and record["n"] == 7 and record["status"] == "pending"
    assert record["payload"] == {"a": [1, 2]}
    assert ISO_TZ.match(record["created_at"]), record["created_at"]
    assert "old_record" not in insert_
    assert update["record"]["status"] == "done" and update["old_record"] == {"id": row_id}
    assert delete["old_record"] == {"id": row_id} and "record" not in delete


async def test_filter_and_commit_order(stack: DevStack, table: str, client) -> None:
    _, pending = await subscribe(client, "INSERT", "pending", filter="status=eq.pending")
    _, listed = await subscribe(client, "INSERT", "listed", filter="n=in.(1,3)")
    _, big = await subscribe(client, "*", "big", filter="n=gte.2")
    for w in (pending, listed, big):
        await w.wait_live()

    # Two open transactions: the one that commits first is delivered first, whatever its id.
    async with stack.pool.acquire() as first, stack.pool.acquire() as second:
        tx1, tx2 = first.transaction(), second.transaction()
        await tx1.start()
        await tx2.start()
        await first.execute("insert into t(status, n) values ('pending', 1)")  # lower id
        await second.execute("insert into t(status, n) values ('pending', 2)")
        await tx2.commit()
        await tx1.commit()
    for n in range(3, 7):
        await insert(stack, "pending" if n % 2 else "done", n)

    await eventually(lambda: len(pending.changes) == 4 and len(listed.changes) == 2)
    await eventually(lambda: len(big.changes) == 5)
    assert [r["n"] for r in pending.records()] == [2, 1, 3, 5]
    assert [r["n"] for r in listed.records()] == [1, 3]
    assert [r["n"] for r in big.records()] == [2, 3, 4, 5, 6]
    await asyncio.sleep(0.1)
    assert len(pending.changes) == 4


async def test_fast_mode_latency(stack: DevStack, table: str, client) -> None:
    _, w = await subscribe(client, "INSERT")
    await w.wait_live()
    latencies = []
    for i in range(100):
        started = time.perf_counter()
        await insert(stack, n=i)  # includes the INSERT round trip and the commit
        await eventually(lambda i=i: len(w.changes) > i, 2)
        latencies.append((w.change_times[i] - started) * 1000)
    p50 = statistics.median(latencies)
    p99 = sorted(latencies)[98]
    print(f"\nfast mode commit->callback: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    assert p50 < 5, latencies


async def test_broadcast_only_join_and_leave(stack: DevStack, client) -> None:
    w = Watcher()
    channel = client.channel("plain").on_system(w.on_system)
    await channel.subscribe(w.on_state)
    assert w.count(States.SUBSCRIBED) == 1
    await asyncio.sleep(0.1)
    assert w.system == []  # no "Subscribed to PostgreSQL" without bindings
    assert stack.realtime.joined_channels == ["realtime:plain"]

    await channel.unsubscribe()
    await w.wait_state(States.CLOSED)
    await eventually(lambda: stack.realtime.joined_channels == [])


# -- connection faults ----------------------------------------------------------------------------


async def test_abrupt_drop_then_reconnect(stack: DevStack, table: str, client) -> None:
    _, w = await subscribe(client)
    await w.wait_live()
    stack.realtime.drop_all()
    await w.wait_state(States.CHANNEL_ERROR)
    error = w.error()
    assert isinstance(error, websockets.ConnectionClosedError) and error.rcvd is None  # 1006
    await w.wait_live(2)
    row_id = await insert(stack)
    await eventually(lambda: [r["id"] for r in w.records()] == [row_id])


async def test_clean_close_1001_then_reconnect(stack: DevStack, table: str, client) -> None:
    _, w = await subscribe(client)
    await w.wait_live()
    stack.realtime.close_all(code=1001)
    await w.wait_state(States.CHANNEL_ERROR)
    error = w.error()
    assert isinstance(error, websockets.ConnectionClosedOK) and error.rcvd.code == 1001
    await w.wait_live(2)
    assert stack.realtime.connections_accepted == 2


async def test_refused_upgrades_client_gives_up(stack: DevStack, table: str, client) -> None:
    _, w = await subscribe(client)
    await w.wait_live()
    stack.realtime.refuse_upgrades(20)
    started = time.monotonic()
    stack.realtime.drop_all()
    await w.wait_state(States.CHANNEL_ERROR)
    # Attempts at +0, 1, 3, 7 and 15 s, then it stops for good and tells nobody.
    await eventually(lambda: client.realtime._listen_task.done(), 25, "the client to give up")
    elapsed = time.monotonic() - started
    assert 13 < elapsed < 20, elapsed
    assert not client.realtime.is_connected
    assert "503" in str(client.realtime._listen_task.exception())
    assert stack.realtime.upgrades_refused == 5
    assert w.count(States.CHANNEL_ERROR) == 1 and w.count(States.SUBSCRIBED) == 1


async def test_freeze_is_noticed_only_by_keepalive(stack: DevStack, table: str, client) -> None:
    _, w = await subscribe(client)
    await w.wait_live()
    stack.realtime.freeze(75)
    started = time.monotonic()
    await insert(stack)  # queued on the frozen socket, never seen by the client
    # websockets pings every 20 s and gives up 20 s later: detection takes 20–40 s (+ slack).
    await w.wait_state(States.CHANNEL_ERROR, timeout=60)
    detected = time.monotonic() - started
    print(f"\nfreeze detected after {detected:.1f} s")
    assert detected > 18, detected
    assert isinstance(w.error(), websockets.ConnectionClosedError)
    assert w.changes == []
    await w.wait_live(2)  # a fresh connection is served normally
    row_id = await insert(stack)
    await eventually(lambda: [r["id"] for r in w.records()] == [row_id])


async def test_changes_while_disconnected_are_lost(stack: DevStack, table: str, client) -> None:
    _, w = await subscribe(client)
    await w.wait_live()
    stack.realtime.refuse_upgrades(2)
    stack.realtime.drop_all()
    await w.wait_state(States.CHANNEL_ERROR)
    await eventually(lambda: stack.realtime.connected_sockets == 0)
    lost = await insert(stack)
    await w.wait_live(2, timeout=10)
    kept = await insert(stack)
    await eventually(lambda: len(w.changes) >= 1)
    await asyncio.sleep(0.2)
    assert [r["id"] for r in w.records()] == [kept] and lost != kept


# -- channel faults -------------------------------------------------------------------------------


async def test_system_error_closes_channel_for_good(stack: DevStack, table: str, client) -> None:
    channel, w = await subscribe(client)
    await w.wait_live()
    stack.realtime.system_error_close("Token has expired 0 seconds ago")
    await w.wait_state(States.CLOSED)
    assert [s for s, _, _ in w.states] == [States.SUBSCRIBED, States.CHANNEL_ERROR, States.CLOSED]
    assert "Token has expired" in str(w.error())
    assert channel.topic not in client.realtime.channels
    await asyncio.sleep(1.5)  # the client's 1 s rejoin timer was cancelled by phx_close
    assert stack.realtime.joined_channels == []


async def test_phx_error_then_rejoin(stack: DevStack, table: str, client) -> None:
    _, w = await subscribe(client)
    await w.wait_live()
    stack.realtime.phx_error()
    await w.wait_state(States.CHANNEL_ERROR)
    await w.wait_live(2)  # rejoined after the client's 1 s timer
    row_id = await insert(stack)
    await eventually(lambda: [r["id"] for r in w.records()] == [row_id])


async def test_join_error_reply_then_retry(stack: DevStack, table: str, client) -> None:
    reason = "UnableToConnectToProject: Realtime was unable to connect to the project database"
    stack.realtime.join_error(reason, count=1)
    _, w = await subscribe(client)
    assert [s for s, _, _ in w.states] == [States.CHANNEL_ERROR]
    assert reason in str(w.error())
    await w.wait_live(1, timeout=5)  # the client retries after 1 s; the fault was for one join


async def test_delayed_subscribed_loses_the_gap(stack: DevStack, table: str, client) -> None:
    stack.realtime.delay_subscribed(1.0)
    _, w = await subscribe(client)
    assert w.count(States.SUBSCRIBED) == 1 and w.system == []
    in_gap = await insert(stack)
    await w.wait_live()
    after = await insert(stack)
    await eventually(lambda: len(w.changes) >= 1)
    await asyncio.sleep(0.2)
    assert [r["id"] for r in w.records()] == [after] and in_gap != after


async def test_postgres_changes_error_duplicate_join_closes(
    stack: DevStack, table: str, client
) -> None:
    # Default: the rejoin is a duplicate join; phx_close(old ref) kills the new channel (P9).
    channel, w = await subscribe(client, name="p9")
    await w.wait_live()
    stack.realtime.postgres_changes_error()
    await w.wait_state(States.CLOSED, timeout=5)
    assert [s for s, _, _ in w.states] == [States.SUBSCRIBED, States.CHANNEL_ERROR, States.CLOSED]
    assert channel.topic not in client.realtime.channels

    # With the switch off the same sequence recovers.
    stack.realtime.set_duplicate_join_close(False)
    _, w2 = await subscribe(client, name="lenient")
    await w2.wait_live()
    stack.realtime.postgres_changes_error()
    await w2.wait_state(States.CHANNEL_ERROR)
    await w2.wait_live(2)
    assert w2.count(States.CLOSED) == 0


async def test_unanswered_and_slow_joins(stack: DevStack, table: str) -> None:
    """No reply: TIMED_OUT, then a normal rejoin. A reply later than the client's 10 s timeout:
    TIMED_OUT, then the rejoin is a duplicate join and phx_close(old ref) closes it (P9)."""
    ignored_client = await acreate_client(stack.url, stack.keys.service_role_key)
    slow_client = await acreate_client(stack.url, stack.keys.service_role_key)
    try:
        stack.realtime.no_join_reply(count=1)
        ignored = asyncio.create_task(subscribe(ignored_client, name="ignored"))
        await eventually(lambda: stack.realtime.status()["faults"]["no_join_reply"] is None)
        stack.realtime.slow_join(10.5, count=1)
        slow = asyncio.create_task(subscribe(slow_client, name="slow"))
        (_, w_ignored), (channel, w_slow) = await asyncio.gather(ignored, slow)

        assert [s for s, _, _ in w_ignored.states] == [States.TIMED_OUT]
        await w_ignored.wait_live(1, timeout=5)
        assert [s for s, _, _ in w_slow.states][:1] == [States.TIMED_OUT]
        await w_slow.wait_state(States.CLOSED, timeout=5)
        assert channel.topic not in slow_client.realtime.channels
    finally:
        await close_client(ignored_client)
        await close_client(slow_client)


# -- realistic delivery ---------------------------------------------------------------------------


async def test_realistic_mode_polls_like_the_real_server(realistic_stack: DevStack) -> None:
    stack = realistic_stack
    await stack.pool.execute(TABLE_SQL)
    client = await acreate_client(stack.url, stack.keys.service_role_key)
    try:
        _, w = await subscribe(client)
        await w.wait_live()
        latencies = []
        for i in range(5):
            await asyncio.sleep(0.7)  # let the poller go idle (500 ms cycle)
            started = time.perf_counter()
            await insert(stack, n=i)
            await eventually(lambda i=i: len(w.changes) > i, 2)
            latencies.append(w.change_times[i] - started)
        print(f"\nrealistic idle latencies: {[round(x, 3) for x in latencies]}")
        assert all(x < 0.65 for x in latencies), latencies
        assert max(latencies) > 0.1, latencies  # fast mode would be ~1 ms every time
    finally:
        await close_client(client)


# -- HTTP surface and lifecycle -------------------------------------------------------------------


async def test_bad_apikey_is_refused_with_401(stack: DevStack) -> None:
    url = f"{stack.url}/realtime/v1/websocket"
    async with aiohttp.ClientSession() as http:
        for params in ({"vsn": "1.0.0"}, {"apikey": "forged", "vsn": "1.0.0"}):
            with pytest.raises(aiohttp.WSServerHandshakeError) as info:
                await http.ws_connect(url, params=params)
            assert info.value.status == 401
        async with http.get(url, params={"vsn": "1.0.0"}) as response:
            assert response.status == 401 and "error" in await response.json()


async def test_admin_routes(stack: DevStack) -> None:
    async with aiohttp.ClientSession() as http:
        base = f"{stack.url}/admin/realtime"
        async with http.post(f"{base}/join-error", json={"reason": "X", "count": 2}) as response:
            status = await response.json()
        assert status["faults"]["join_error"] == {"value": "X", "remaining": 2}
        async with http.post(f"{base}/refuse", json={"seconds": 5}) as response:
            assert (await response.json())["faults"]["refusing_for_s"] > 4
        async with http.post(f"{base}/freeze", json={"bogus": 1}) as response:
            assert response.status == 400
        async with http.post(f"{base}/clear") as response:
            assert response.status == 200
        async with http.get(f"{base}/status") as response:
            status = await response.json()
    assert status["faults"]["join_error"] is None and status["faults"]["refusing_for_s"] == 0
    assert status["capture_running"] and status["delivery"] == "fast"


async def test_stop_drops_the_replication_slot(stack: DevStack) -> None:
    server = RealtimeServer(stack.dsn, stack.keys)
    await server.start()
    slots = "select slot_name from pg_replication_slots where slot_name like 'devstack_rt%'"
    assert server.capture.slot_name in [r[0] for r in await stack.pool.fetch(slots)]
    await server.stop()
    assert server.capture.slot_name not in [r[0] for r in await stack.pool.fetch(slots)]


# -- pure helpers ---------------------------------------------------------------------------------


def test_row_filters() -> None:
    row = {"status": "pending", "n": 5, "ok": True, "gone": None}
    assert RowFilter.parse("status=eq.pending").matches(row)
    assert not RowFilter.parse("status=neq.pending").matches(row)
    assert RowFilter.parse("n=gt.4.5").matches(row) and RowFilter.parse("n=lte.5").matches(row)
    assert not RowFilter.parse("n=lt.5").matches(row)
    assert RowFilter.parse("n=in.(1,5)").matches(row)
    assert RowFilter.parse('status=in.("pending",queued)').matches(row)
    assert RowFilter.parse("ok=eq.true").matches(row)
    assert not RowFilter.parse("gone=eq.null").matches(row)  # SQL NULL never matches
    assert not RowFilter.parse("n=eq.abc").matches(row)
    for bad in ("status", "status=like.x", "n=in.1,2"):
        with pytest.raises(ValueError):
            RowFilter.parse(bad)


def test_binding_ids_are_stable_and_never_zero() -> None:
    params = {"event": "INSERT", "schema": "public", "table": "jobs"}
    assert binding_id(params) == binding_id(dict(reversed(params.items())))
    assert 1 <= binding_id(params) < 2**27


def test_value_rendering() -> None:
    assert render_scalar("42", "int8") == 42 and render_scalar("1.5", "float8") == 1.5
    assert render_scalar("NaN", "numeric") == "NaN"
    assert render_scalar("t", "bool") is True
    assert render_scalar('{"a": 1}', "jsonb") == {"a": 1}
    ts = "2026-11-22 14:13:10.585174+00"
    assert render_scalar(ts, "timestamptz") == "2026-11-22T14:13:10.585174+00:00"
    assert render_scalar("2026-11-22 14:13:10", "timestamp") == "2026-11-22T14:13:10"
    assert render_scalar("\\x0102", "bytea") == "\\x0102"
    assert parse_array('{a,"b c",NULL,"x\\"y"}') == ["a", "b c", None, 'x"y']
    assert parse_array("{{1,2},{3,4}}") == [["1", "2"], ["3", "4"]]
