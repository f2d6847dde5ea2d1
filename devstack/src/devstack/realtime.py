"""Supabase Realtime stand-in: Phoenix channels (vsn 1.0.0) delivering ``postgres_changes``.

Serves ``GET /realtime/v1/websocket?apikey=…&vsn=1.0.0`` to the real, unmodified ``realtime``
Python client. Changes come from :mod:`devstack.capture` (logical decoding of the
``supabase_realtime`` publication, in commit order). The wire behaviour follows
``docs/supabase-realtime.md`` §3–§5 and the MUST list in §10; the nasty parts of the real server
are reproduced on purpose, because they are what break workers in production:

* the join reply comes *before* the subscription exists, then the "Subscribed to PostgreSQL"
  system message; changes committed in between are not delivered;
* nothing is buffered or replayed: a socket's subscriptions die with it;
* a duplicate join on one socket first gets ``phx_close`` for the *old* join ref (pitfall P9);
* fault switches (methods below, and ``POST /admin/realtime/<fault>``) drop, close, refuse,
  freeze, error and delay exactly the way the real service does.

Known simplifications: no RLS on postgres_changes (every valid key sees every row, as the
service-role key does), no Broadcast/Presence, no 60 s idle timeout, and ``select`` is echoed
but does not trim records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import socket
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from aiohttp import WSMsgType, web

from devstack.capture import Change, ChangeCapture, Transaction
from devstack.keys import Keys

log = logging.getLogger(__name__)

Delivery = Literal["fast", "realistic"]
T = TypeVar("T")

WEBSOCKET_PATH = "/realtime/v1/websocket"
MAX_FRAME_BYTES = 5 * 1024 * 1024  # the real server's max_frame_size

# The real ReplicationPoller (supabase-realtime.md §8): poll again at once after a poll that
# delivered something, wait 100 ms + 50–100 ms jitter after changes nobody wanted, 500 ms idle.
POLL_MAX_CHANGES = 100
POLL_NOBODY_WAITED = 0.1
POLL_JITTER = (0.05, 0.1)
POLL_IDLE = 0.5


def binding_id(params: dict[str, Any]) -> int:
    """A stable id in [1, 2^27) like the real server's ``phash2``; never 0 (pitfall P10)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return zlib.crc32(canonical.encode()) % (1 << 27) or 1


# -- filters: ``column=op.value`` as the real server evaluates them ------------------------------

_FILTER = re.compile(r"^([^=]+)=(eq|neq|lt|lte|gt|gte|in)\.(.*)$", re.DOTALL)
_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0"}


@dataclass(frozen=True, slots=True)
class RowFilter:
    column: str
    op: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        match = _FILTER.match(text)
        if not match:
            raise ValueError(f"invalid filter {text!r}: expected column=op.value")
        column, op, value = match.groups()
        if op != "in":
            return cls(column, op, (value,))
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError(f"invalid filter {text!r}: in takes a list like in.(a,b)")
        items = tuple(item.strip().strip('"') for item in value[1:-1].split(","))
        if len(items) > 100:
            raise ValueError(f"invalid filter {text!r}: in takes at most 100 values")
        return cls(column, op, items)

    def matches(self, row: dict[str, Any] | None) -> bool:
        # The real server casts the filter value to the column's type; SQL NULL never matches.
        if not row or row.get(self.column) is None:
            return False
        value = row[self.column]
        if self.op == "in":
            return any(_compare(value, item) == 0 for item in self.values)
        order = _compare(value, self.values[0])
        if order is None:
            return False
        return {
            "eq": order == 0,
            "neq": order != 0,
            "lt": order < 0,
            "lte": order <= 0,
            "gt": order > 0,
            "gte": order >= 0,
        }[self.op]


def _compare(value: Any, text: str) -> int | None:
    """-1/0/1 comparing a record value with a filter literal, or None when incomparable."""
    other: Any
    if isinstance(value, bool):
        lowered = text.lower()
        if lowered not in _TRUE | _FALSE:
            return None
        value, other = int(value), int(lowered in _TRUE)
    elif isinstance(value, int | float):
        try:
            other = float(text)
        except ValueError:
            return None
    elif isinstance(value, str):
        other = text
    else:  # json: compare its canonical text
        value, other = json.dumps(value, separators=(",", ":")), text
    return (value > other) - (value < other)


# -- channels and sockets -------------------------------------------------------------------------


@dataclass(slots=True)
class Binding:
    """One entry of a join's ``config.postgres_changes``."""

    id: int
    event: str
    schema: str
    table: str | None
    filter: RowFilter | None

    def matches(self, change: Change) -> bool:
        if self.schema not in ("*", change.schema) or self.table not in (None, "*", change.table):
            return False
        if self.event != "*" and self.event.upper() != change.type:
            return False
        if self.filter is None:
            return True
        # DELETEs are filtered on the old record, which is only the key unless the table has
        # REPLICA IDENTITY FULL: in practice "DELETE events are not filterable".
        row = change.old_record if change.type == "DELETE" else change.record
        return self.filter.matches(row)


@dataclass(slots=True)
class Channel:
    topic: str
    join_ref: str | None
    bindings: list[Binding]
    # False until "Subscribed to PostgreSQL": the gap in which the real server drops changes.
    subscribed: bool = False

    @property
    def name(self) -> str:
        return self.topic.removeprefix("realtime:")


class ClientSocket:
    """One WebSocket connection. Every outgoing frame goes through one FIFO, so order is kept."""

    def __init__(self, server: RealtimeServer, ws: web.WebSocketResponse, request: web.Request):
        self.server = server
        self.ws = ws
        self.transport = request.transport
        self.channels: dict[str, Channel] = {}
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        # Cleared while frozen: nothing is read, answered or sent (a half-open socket).
        self.thawed = asyncio.Event()
        self.thawed.set()
        self._thaw_timer: asyncio.TimerHandle | None = None

    def push(self, topic: str, event: str, payload: dict[str, Any], ref: str | None = None) -> None:
        frame = {"topic": topic, "event": event, "payload": payload, "ref": ref}
        self.outbox.put_nowait(json.dumps(frame, separators=(",", ":")))

    def reply(self, topic: str, ref: str | None, status: str, response: dict[str, Any]) -> None:
        self.push(topic, "phx_reply", {"status": status, "response": response}, ref)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def write_loop(self) -> None:
        while True:
            frame = await self.outbox.get()
            await self.thawed.wait()
            if self.ws.closed:
                return
            try:
                await self.ws.send_str(frame)
            except (ConnectionError, RuntimeError):
                return
            self.server.frames_sent += 1

    def freeze(self, seconds: float) -> None:
        self.thaw()
        self.thawed.clear()
        self._thaw_timer = asyncio.get_running_loop().call_later(seconds, self.thaw)

    def thaw(self) -> None:
        if self._thaw_timer is not None:
            self._thaw_timer.cancel()
            self._thaw_timer = None
        self.thawed.set()

    def abort(self) -> None:
        """Reset the TCP connection without a close frame: the client sees 1006."""
        if self.transport is not None and not self.transport.is_closing():
            sock = self.transport.get_extra_info("socket")
            if sock is not None:  # SO_LINGER 0 turns close into an RST, like a killed process
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        self.thaw()  # let the read/write loops see the dead connection and exit


class _Armed(Generic[T]):
    """A fault armed for the next ``count`` uses (None: until cleared)."""

    def __init__(self) -> None:
        self.value: T | None = None
        self.remaining: int | None = 0

    def arm(self, value: T, count: int | None) -> None:
        self.value, self.remaining = value, count

    def clear(self) -> None:
        self.value, self.remaining = None, 0

    def take(self) -> T | None:
        if self.remaining is None:
            return self.value
        if self.remaining <= 0:
            return None
        self.remaining -= 1
        return self.value

    def describe(self) -> dict[str, Any] | None:
        if self.remaining is not None and self.remaining <= 0:
            return None
        return {"value": self.value, "remaining": self.remaining}


# -- the server -----------------------------------------------------------------------------------


class RealtimeServer:
    """The Realtime service of one devstack project.

    Fault switches, callable from tests on the event loop's thread (or via ``POST
    /admin/realtime/<name>`` with the keyword arguments as JSON; see :meth:`admin_routes`):
    ``drop_all()``, ``close_all(code=1001)``, ``refuse_upgrades(seconds)``, ``freeze(seconds)``,
    ``system_error_close(message)``, ``phx_error()``, ``postgres_changes_error(message)``,
    ``delay_subscribed(seconds, joins=1)``, ``join_error(reason, count=1)``,
    ``no_join_reply(count=1)``, ``slow_join(seconds, count=1)``,
    ``set_duplicate_join_close(enabled)`` and ``clear_faults()``.
    """

    def __init__(self, dsn: str, keys: Keys, delivery: Delivery = "fast") -> None:
        if delivery not in ("fast", "realistic"):
            raise ValueError(f"delivery must be 'fast' or 'realistic', not {delivery!r}")
        self.dsn = dsn
        self.keys = keys
        self.delivery: Delivery = delivery
        self.capture = ChangeCapture(dsn, self._on_transaction)
        self.sockets: list[ClientSocket] = []
        # Real Phoenix answers a duplicate join with phx_close for the old join ref (pitfall P9).
        self.duplicate_join_close = True
        self.frames_sent = 0
        self.changes_delivered = 0  # postgres_changes frames queued
        self.connections_accepted = 0
        self.upgrades_refused = 0
        self.last_delivery_ms: float | None = None  # decode -> frame queued, for health checks
        self._backlog: deque[Change] = deque()
        self._background: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._refuse_until = 0.0
        self._refuse_status = 503
        self._join_error: _Armed[str] = _Armed()
        self._no_join_reply: _Armed[bool] = _Armed()
        self._slow_join: _Armed[float] = _Armed()
        self._delay_subscribed: _Armed[float] = _Armed()

    # -- lifecycle --

    async def start(self) -> None:
        await self.capture.start()
        if self.delivery == "realistic":
            self._poller = asyncio.create_task(self._poll_loop())

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        for task in list(self._background):
            task.cancel()
        for sock in list(self.sockets):
            sock.thaw()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.ws.close(code=1001, message=b"server shutdown"), 1)
            sock.abort()
        await self.capture.stop()

    def routes(self) -> list[web.RouteDef]:
        return [web.get(WEBSOCKET_PATH, self._websocket)]

    # -- state for tests and health checks --

    @property
    def connected_sockets(self) -> int:
        return len(self.sockets)

    @property
    def joined_channels(self) -> list[str]:
        return [topic for sock in self.sockets for topic in sock.channels]

    @property
    def subscribed_channels(self) -> list[str]:
        return [c.topic for sock in self.sockets for c in sock.channels.values() if c.subscribed]

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "delivery": self.delivery,
            "slot": self.capture.slot_name,
            "capture_running": self.capture.running,
            "capture_error": repr(self.capture.error) if self.capture.error else None,
            "transactions_captured": self.capture.transactions,
            "changes_captured": self.capture.changes,
            "connected_sockets": self.connected_sockets,
            "joined_channels": self.joined_channels,
            "subscribed_channels": self.subscribed_channels,
            "connections_accepted": self.connections_accepted,
            "upgrades_refused": self.upgrades_refused,
            "frames_sent": self.frames_sent,
            "changes_delivered": self.changes_delivered,
            "last_delivery_ms": self.last_delivery_ms,
            "faults": {
                "refusing_for_s": max(0.0, round(self._refuse_until - now, 3)),
                "frozen_sockets": sum(not s.thawed.is_set() for s in self.sockets),
                "duplicate_join_close": self.duplicate_join_close,
                "join_error": self._join_error.describe(),
                "no_join_reply": self._no_join_reply.describe(),
                "slow_join": self._slow_join.describe(),
                "delay_subscribed": self._delay_subscribed.describe(),
            },
        }

    # -- fault switches (call from the event loop's thread) --

    def drop_all(self) -> None:
        """Abort every socket (TCP reset, no close frame): the client sees 1006."""
        for sock in list(self.sockets):
            sock.abort()

    def close_all(self, code: int = 1001, reason: str = "going away") -> None:
        """Close every socket cleanly with ``code`` (1001: a deploy or drain)."""
        for sock in list(self.sockets):
            sock.thaw()
            # Not a socket task: the socket's cleanup would cancel its own closing handshake.
            task = asyncio.create_task(sock.ws.close(code=code, message=reason.encode()))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def refuse_upgrades(self, seconds: float, status: int = 503) -> None:
        """Answer WebSocket upgrades with HTTP ``status`` for ``seconds``, like the gateway."""
        self._refuse_until = time.monotonic() + seconds
        self._refuse_status = status

    def freeze(self, seconds: float) -> None:
        """Half-open every current socket for ``seconds``: TCP stays up, nothing is read,
        answered (no pong, no heartbeat reply) or sent. New connections are served normally,
        as after a NAT or load-balancer path dies. Afterwards surviving sockets carry on."""
        for sock in self.sockets:
            sock.freeze(seconds)

    def system_error_close(self, message: str = "Token has expired 0 seconds ago") -> None:
        """``system`` error (extension "system") then ``phx_close`` on every joined channel:
        what token expiry or a rate limit does. The client removes the channel for good."""
        for sock in self.sockets:
            for channel in list(sock.channels.values()):
                sock.push(channel.topic, "system", _system(channel, "system", message, "error"))
                sock.push(channel.topic, "phx_close", {}, channel.join_ref)
            sock.channels.clear()

    def phx_error(self) -> None:
        """``phx_error`` on every joined channel: the channel process crashed and is gone."""
        for sock in self.sockets:
            for channel in list(sock.channels.values()):
                sock.push(channel.topic, "phx_error", {}, channel.join_ref)
            sock.channels.clear()

    def postgres_changes_error(self, message: str = "Unable to connect to the database") -> None:
        """A postgres_changes subscription error on every joined channel. The server keeps the
        channel joined, so the client's automatic rejoin is a duplicate join (pitfall P9)."""
        for sock in self.sockets:
            for channel in sock.channels.values():
                channel.subscribed = False
                payload = _system(channel, "postgres_changes", message, "error")
                sock.push(channel.topic, "system", payload)

    def delay_subscribed(self, seconds: float, joins: int | None = 1) -> None:
        """For the next ``joins`` joins (None: until cleared), register the subscription and send
        "Subscribed to PostgreSQL" ``seconds`` after the ok reply. Changes in the gap are lost."""
        self._delay_subscribed.arm(seconds, joins)

    def join_error(self, reason: str = "Unknown Error on Channel", count: int | None = 1) -> None:
        """Answer the next ``count`` joins with an error reply ``{"reason": reason}``."""
        self._join_error.arm(reason, count)

    def no_join_reply(self, count: int | None = 1) -> None:
        """Ignore the next ``count`` joins entirely: the client times out after 10 s."""
        self._no_join_reply.arm(True, count)

    def slow_join(self, seconds: float, count: int | None = 1) -> None:
        """Complete the next ``count`` joins only after ``seconds``, holding that socket's
        later frames meanwhile (Phoenix joins synchronously). Past the client's 10 s timeout
        this gives TIMED_OUT, then a rejoin that is a duplicate join (pitfall P9)."""
        self._slow_join.arm(seconds, count)

    def set_duplicate_join_close(self, enabled: bool = True) -> None:
        self.duplicate_join_close = enabled

    def clear_faults(self) -> None:
        self._refuse_until = 0.0
        self._join_error.clear()
        self._no_join_reply.clear()
        self._slow_join.clear()
        self._delay_subscribed.clear()
        self.duplicate_join_close = True
        for sock in self.sockets:
            sock.thaw()

    def admin_routes(self) -> list[web.RouteDef]:
        """``POST /admin/realtime/<fault>`` with the method's keyword arguments as a JSON body;
        every answer is the status. ``GET /admin/realtime/status``."""
        actions: dict[str, Callable[..., None]] = {
            "drop": self.drop_all,
            "close": self.close_all,
            "refuse": self.refuse_upgrades,
            "freeze": self.freeze,
            "system-error": self.system_error_close,
            "phx-error": self.phx_error,
            "postgres-changes-error": self.postgres_changes_error,
            "delay-subscribed": self.delay_subscribed,
            "join-error": self.join_error,
            "no-join-reply": self.no_join_reply,
            "slow-join": self.slow_join,
            "duplicate-join-close": self.set_duplicate_join_close,
            "clear": self.clear_faults,
        }

        def handler(action: Callable[..., None]) -> Callable[[web.Request], Any]:
            async def handle(request: web.Request) -> web.Response:
                try:
                    body = await request.json() if request.can_read_body else {}
                    action(**(body or {}))
                except (TypeError, ValueError) as exc:
                    return web.json_response({"error": str(exc)}, status=400)
                return web.json_response(self.status())

            return handle

        async def status(request: web.Request) -> web.Response:
            return web.json_response(self.status())

        routes = [web.get("/admin/realtime/status", status)]
        routes += [web.post(f"/admin/realtime/{name}", handler(fn)) for name, fn in actions.items()]
        return routes

    # -- connections --

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._refuse_until:
            self.upgrades_refused += 1
            return web.json_response({"error": "Service Unavailable"}, status=self._refuse_status)
        token = request.query.get("apikey") or request.headers.get("x-api-key")
        if self.keys.verify(token) is None:
            return web.json_response({"error": "Invalid or missing apikey"}, status=401)

        # autoping/autoclose off: a frozen socket must not answer pings or close frames either.
        ws = web.WebSocketResponse(autoping=False, autoclose=False, max_msg_size=MAX_FRAME_BYTES)
        await ws.prepare(request)
        sock = ClientSocket(self, ws, request)
        self.sockets.append(sock)
        self.connections_accepted += 1
        writer = asyncio.create_task(sock.write_loop())
        try:
            await self._read_loop(sock)
        finally:
            self.sockets.remove(sock)
            sock.channels.clear()  # no buffering: the socket's subscriptions die with it
            for task in [writer, *sock.tasks]:
                task.cancel()
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close()
        return ws

    async def _read_loop(self, sock: ClientSocket) -> None:
        ws = sock.ws
        while True:
            msg = await ws.receive()
            await sock.thawed.wait()
            if msg.type is WSMsgType.TEXT:
                try:
                    await self._on_frame(sock, msg.data)
                except Exception:  # a bad frame must not take the socket down
                    log.exception("error handling frame %.200r", msg.data)
            elif msg.type is WSMsgType.PING:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.pong(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.close()
                return
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return

    async def _on_frame(self, sock: ClientSocket, text: str) -> None:
        try:
            frame = json.loads(text)
            topic, event = frame["topic"], frame["event"]
            payload = frame.get("payload") or {}
            ref, join_ref = frame.get("ref"), frame.get("join_ref")
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring malformed frame %.200r", text)
            return
        if topic == "phoenix" and event == "heartbeat":
            sock.reply("phoenix", ref, "ok", {})
        elif event == "phx_join":
            await self._join(sock, topic, payload, ref, join_ref or ref)
        elif event == "phx_leave":
            self._leave(sock, topic, ref)
        elif event == "access_token" and topic in sock.channels:
            self._access_token(sock, sock.channels[topic], payload)
        # Anything else (broadcast, presence, unknown events) is ignored.

    async def _join(
        self, sock: ClientSocket, topic: str, payload: dict[str, Any], ref: Any, join_ref: Any
    ) -> None:
        if self._no_join_reply.take():
            return
        if (delay := self._slow_join.take()) is not None:
            await asyncio.sleep(delay)
        if (reason := self._join_error.take()) is not None:
            sock.reply(topic, ref, "error", {"reason": reason})
            return
        if not topic.startswith("realtime:") or topic == "realtime:":
            sock.reply(
                topic, ref, "error", {"reason": "TopicNameRequired: You must provide a topic"}
            )
            return
        token = payload.get("access_token")
        if token and not token.startswith("sb_") and self.keys.verify(token) is None:
            reason = "InvalidJWTToken: Token is invalid or has expired"
            sock.reply(topic, ref, "error", {"reason": reason})
            return

        old = sock.channels.pop(topic, None)
        if old is not None and self.duplicate_join_close:
            sock.push(topic, "phx_close", {}, old.join_ref)

        config = payload.get("config") or {}
        requested = config.get("postgres_changes") or []
        bindings: list[Binding] = []
        echoed: list[dict[str, Any]] = []
        filter_errors: list[str] = []
        for params in requested:
            params = {k: v for k, v in dict(params).items() if k != "id"}
            row_filter = None
            if params.get("filter"):
                try:
                    row_filter = RowFilter.parse(params["filter"])
                except ValueError as exc:
                    filter_errors.append(str(exc))
            ident = binding_id(params)
            bindings.append(
                Binding(
                    ident,
                    str(params.get("event", "*")),
                    str(params.get("schema", "public")),
                    params.get("table"),
                    row_filter,
                )
            )
            echoed.append({**params, "id": ident})

        channel = Channel(topic, join_ref, bindings)
        sock.channels[topic] = channel
        # The ok reply goes out before the subscription exists, exactly like the real server.
        sock.reply(topic, ref, "ok", {"postgres_changes": echoed})
        if not bindings:
            return
        if filter_errors:
            message = f"Error parsing `filter` params: {filter_errors}"
            sock.push(topic, "system", _system(channel, "postgres_changes", message, "error"))
            return
        delay = self._delay_subscribed.take()
        if delay:
            sock.spawn(self._subscribe_later(sock, channel, delay))
        else:
            self._subscribe(sock, channel)

    def _subscribe(self, sock: ClientSocket, channel: Channel) -> None:
        if sock.channels.get(channel.topic) is not channel:
            return  # left, replaced or closed meanwhile
        channel.subscribed = True
        message = "Subscribed to PostgreSQL"
        sock.push(channel.topic, "system", _system(channel, "postgres_changes", message, "ok"))

    async def _subscribe_later(self, sock: ClientSocket, channel: Channel, delay: float) -> None:
        await asyncio.sleep(delay)
        self._subscribe(sock, channel)

    def _leave(self, sock: ClientSocket, topic: str, ref: Any) -> None:
        channel = sock.channels.pop(topic, None)
        if channel is None:
            sock.reply(topic, ref, "error", {"reason": "unmatched topic"})
            return
        sock.reply(topic, ref, "ok", {})
        sock.push(topic, "phx_close", {}, channel.join_ref)

    def _access_token(self, sock: ClientSocket, channel: Channel, payload: dict[str, Any]) -> None:
        # No reply on success; a bad token closes the channel like token expiry does.
        token = payload.get("access_token")
        if not token or token.startswith("sb_") or self.keys.verify(token) is not None:
            return
        message = "Token is invalid or has expired"
        sock.push(channel.topic, "system", _system(channel, "system", message, "error"))
        sock.push(channel.topic, "phx_close", {}, channel.join_ref)
        sock.channels.pop(channel.topic, None)

    # -- delivery --

    def _on_transaction(self, txn: Transaction) -> None:
        if self.delivery == "fast":
            for change in txn.changes:
                self._dispatch(change)
            self.last_delivery_ms = (time.perf_counter() - txn.decoded_at) * 1000
        else:
            self._backlog.extend(txn.changes)

    def _dispatch(self, change: Change) -> int:
        """Queue one frame per subscribed channel with matching bindings; returns the count."""
        sent = 0
        for sock in self.sockets:
            for channel in sock.channels.values():
                if not channel.subscribed:
                    continue
                ids = [b.id for b in channel.bindings if b.matches(change)]
                if ids:
                    payload = {"ids": ids, "data": change.data}
                    sock.push(channel.topic, "postgres_changes", payload)
                    sent += 1
        self.changes_delivered += sent
        return sent

    async def _poll_loop(self) -> None:
        """Realistic mode: hand out captured changes on the real ReplicationPoller's schedule.
        Like the real poller, who gets a change is decided at poll time, not at commit."""
        wait = POLL_IDLE
        while True:
            await asyncio.sleep(wait)
            batch = [
                self._backlog.popleft() for _ in range(min(POLL_MAX_CHANGES, len(self._backlog)))
            ]
            if not batch:
                wait = POLL_IDLE
            elif sum(self._dispatch(change) for change in batch):
                wait = 0
            else:
                wait = POLL_NOBODY_WAITED + random.uniform(*POLL_JITTER)


def _system(channel: Channel, extension: str, message: str, status: str) -> dict[str, Any]:
    return {"channel": channel.name, "extension": extension, "message": message, "status": status}
