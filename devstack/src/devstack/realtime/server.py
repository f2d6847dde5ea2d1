"""The Realtime server: WebSocket connections, joins and leaves, and delivery of changes.

Joins are answered the way the real server answers them, gaps and all (see the package
docstring), and changes are handed out either at once or on the real ReplicationPoller's
schedule.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from typing import Any, Literal

from aiohttp import WSMsgType, web

from devstack.capture import Change, ChangeCapture, Transaction
from devstack.keys import Keys
from devstack.realtime.faults import FaultSwitches
from devstack.realtime.phoenix import ClientSocket, system_payload
from devstack.realtime.subscriptions import Binding, Channel, RowFilter, binding_id

log = logging.getLogger("devstack.realtime")  # the name it logged under before the split

Delivery = Literal["fast", "realistic"]

WEBSOCKET_PATH = "/realtime/v1/websocket"
MAX_FRAME_BYTES = 5 * 1024 * 1024  # the real server's max_frame_size

# The real ReplicationPoller (supabase-realtime.md §8): poll again at once after a poll that
# delivered something, wait 100 ms + 50–100 ms jitter after changes nobody wanted, 500 ms idle.
POLL_MAX_CHANGES = 100
POLL_NOBODY_WAITED = 0.1
POLL_JITTER = (0.05, 0.1)
POLL_IDLE = 0.5


class RealtimeServer(FaultSwitches):
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
        super().__init__()
        if delivery not in ("fast", "realistic"):
            raise ValueError(f"delivery must be 'fast' or 'realistic', not {delivery!r}")
        self.dsn = dsn
        self.keys = keys
        self.delivery: Delivery = delivery
        self.capture = ChangeCapture(dsn, self._on_transaction)
        self.sockets: list[ClientSocket] = []
        self.frames_sent = 0
        self.changes_delivered = 0  # postgres_changes frames queued
        self.connections_accepted = 0
        self.upgrades_refused = 0
        self.last_delivery_ms: float | None = None  # decode -> frame queued, for health checks
        self._backlog: deque[Change] = deque()
        self._background: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None

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
            "faults": self._fault_status(),
        }

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
            sock.push(
                topic, "system", system_payload(channel, "postgres_changes", message, "error")
            )
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
        sock.push(
            channel.topic, "system", system_payload(channel, "postgres_changes", message, "ok")
        )

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
        sock.push(channel.topic, "system", system_payload(channel, "system", message, "error"))
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
