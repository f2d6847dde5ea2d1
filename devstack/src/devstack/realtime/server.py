"""The Realtime server: WebSocket connections, joins and leaves, and delivery of changes.

Joins are answered the way the real server answers them, gaps and all (see the package
docstring), and changes are handed out either at once or on the real ReplicationPoller's
schedule. Each connection speaks the serializer its ``vsn`` asked for (1.0.0 or 2.0.0).

Broadcast from the database: rows inserted into ``realtime.messages`` (by ``realtime.send``)
arrive through the same logical decoding stream (the ``supabase_realtime_messages_publication``
the real server's ReplicationConnection reads) and go out at once, in both delivery modes, to the
channels joined on their topic with the same ``private`` flag (a private channel only after its
read policy allowed it) — as ``RealtimeWeb.RealtimeChannel.MessageDispatcher`` does: a binary
user broadcast (kind 4) for vsn 2.0.0, the JSON ``broadcast`` event for 1.0.0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import Any, Literal

import asyncpg
from aiohttp import WSMsgType, web

from devstack.capture import PUBLICATION, Change, ChangeCapture
from devstack.keys import Keys
from devstack.realtime.authorization import MESSAGES_PUBLICATION, Database
from devstack.realtime.delivery import ChangeDelivery
from devstack.realtime.faults import FaultSwitches
from devstack.realtime.phoenix import ClientSocket, system_payload
from devstack.realtime.serializers import (
    SerializerError,
    negotiate,
)
from devstack.realtime.subscriptions import Binding, Channel, RowFilter, binding_id

log = logging.getLogger("devstack.realtime")  # the name it logged under before the split

Delivery = Literal["fast", "realistic"]

WEBSOCKET_PATH = "/realtime/v1/websocket"
MAX_FRAME_BYTES = 5 * 1024 * 1024  # the real server's max_frame_size


class RealtimeServer(FaultSwitches, ChangeDelivery):
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
        self.db = Database(dsn)
        self.capture = ChangeCapture(dsn, self._on_transaction)
        self.sockets: list[ClientSocket] = []
        self.frames_sent = 0
        self.changes_delivered = 0  # postgres_changes frames queued
        self.broadcasts_delivered = 0  # broadcast frames queued (from the database)
        self.broadcast_enabled = False  # the database has realtime.messages
        self.connections_accepted = 0
        self.upgrades_refused = 0
        self.last_delivery_ms: float | None = None  # decode -> frame queued, for health checks
        self._backlog: deque[Change] = deque()
        self._background: set[asyncio.Task[Any]] = set()
        self._poller: asyncio.Task[None] | None = None
        # Captured work in commit order: ("changes", [Change], decoded_at) or ("broadcasts", …).
        self._inbox: asyncio.Queue[tuple[str, list[Change], float]] = asyncio.Queue()
        self._deliverer: asyncio.Task[None] | None = None

    # -- lifecycle --

    async def start(self) -> None:
        # Like the real server on connecting to a project: the realtime.messages partitions and
        # the publication Broadcast from the database is streamed from.
        self.broadcast_enabled = await self.db.prepare_messages()
        if self.broadcast_enabled:
            self.capture.publication = f"{PUBLICATION},{MESSAGES_PUBLICATION}"
        await self.capture.start()
        self._deliverer = asyncio.create_task(self._deliver_loop())
        if self.delivery == "realistic":
            self._poller = asyncio.create_task(self._poll_loop())

    async def stop(self) -> None:
        for task in (self._poller, self._deliverer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._poller = self._deliverer = None
        for task in list(self._background):
            task.cancel()
        for sock in list(self.sockets):
            sock.thaw()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sock.ws.close(code=1001, message=b"server shutdown"), 1)
            sock.abort()
        await self.capture.stop()
        await self.db.close()

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
            "broadcasts_delivered": self.broadcasts_delivered,
            "broadcast_enabled": self.broadcast_enabled,
            "last_delivery_ms": self.last_delivery_ms,
            "faults": self._fault_status(),
        }

    # -- connections --

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._refuse_until:
            self.upgrades_refused += 1
            return web.json_response({"error": "Service Unavailable"}, status=self._refuse_status)
        # Phoenix picks the serializer before anything else: an unknown vsn is a bare 403.
        serializer = negotiate(request.query.get("vsn"))
        if serializer is None:
            return web.Response(status=403)
        token = request.query.get("apikey") or request.headers.get("x-api-key")
        claims = self.keys.verify(token)
        if claims is None:
            return web.json_response({"error": "Invalid or missing apikey"}, status=401)

        # autoping/autoclose off: a frozen socket must not answer pings or close frames either.
        ws = web.WebSocketResponse(autoping=False, autoclose=False, max_msg_size=MAX_FRAME_BYTES)
        await ws.prepare(request)
        sock = ClientSocket(self, ws, request, serializer, claims)
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
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
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

    async def _on_frame(self, sock: ClientSocket, data: str | bytes) -> None:
        try:
            frame = sock.serializer.decode(data)
        except SerializerError:
            log.warning("ignoring malformed frame %.200r", data)
            return
        topic, event, ref, join_ref = frame.topic, frame.event, frame.ref, frame.join_ref
        payload = frame.payload if isinstance(frame.payload, dict) else {}
        if topic == "phoenix" and event == "heartbeat":
            sock.reply("phoenix", ref, "ok", {})
        elif event == "phx_join":
            await self._join(sock, topic, payload, ref, join_ref or ref)
        elif event == "phx_leave":
            self._leave(sock, topic, ref, join_ref)
        elif event == "access_token" and topic in sock.channels:
            await self._access_token(sock, sock.channels[topic], payload)
        # Anything else (client broadcast, presence, unknown events) is ignored.

    async def _join(
        self, sock: ClientSocket, topic: str, payload: dict[str, Any], ref: Any, join_ref: Any
    ) -> None:
        if self._no_join_reply.take():
            return
        if (delay := self._slow_join.take()) is not None:
            await asyncio.sleep(delay)
        if (reason := self._join_error.take()) is not None:
            sock.reply(topic, ref, "error", {"reason": reason}, join_ref)
            return
        if not topic.startswith("realtime:") or topic == "realtime:":
            reason = "TopicNameRequired: You must provide a topic"
            sock.reply(topic, ref, "error", {"reason": reason}, join_ref)
            return
        # The channel acts with its access_token (user_token), else the socket's apikey; an
        # sb_ key stands for the apikey (RealtimeChannel.assign_access_token).
        token = payload.get("access_token") or payload.get("user_token")
        claims = sock.claims
        if isinstance(token, str) and token and not token.startswith("sb_"):
            verified = self.keys.verify(token)
            if verified is None:
                reason = "InvalidJWTToken: Token is invalid or has expired"
                sock.reply(topic, ref, "error", {"reason": reason}, join_ref)
                return
            claims = verified

        old = sock.channels.pop(topic, None)
        if old is not None and self.duplicate_join_close:
            sock.close_channel(topic, old.join_ref)

        config = payload.get("config") or {}
        if not isinstance(config, dict):
            config = {}
        private = config.get("private") is True
        broadcast_read = False
        if private:
            presence = config.get("presence") or {}
            presence_enabled = isinstance(presence, dict) and presence.get("enabled") is True
            reason = await self._authorize(sock, topic, claims, presence_enabled)
            if isinstance(reason, str):
                sock.reply(topic, ref, "error", {"reason": reason}, join_ref)
                return
            broadcast_read = reason
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

        channel = Channel(
            topic, join_ref, bindings, private=private, broadcast_read=broadcast_read, claims=claims
        )
        sock.channels[topic] = channel
        # The ok reply goes out before the subscription exists, exactly like the real server.
        sock.reply(topic, ref, "ok", {"postgres_changes": echoed}, join_ref)
        if not bindings:
            return
        if filter_errors:
            message = f"Error parsing `filter` params: {filter_errors}"
            payload = system_payload(channel, "postgres_changes", message, "error")
            sock.push(topic, "system", payload, None, join_ref)
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
        payload = system_payload(channel, "postgres_changes", message, "ok")
        sock.push(channel.topic, "system", payload, None, channel.join_ref)

    async def _subscribe_later(self, sock: ClientSocket, channel: Channel, delay: float) -> None:
        await asyncio.sleep(delay)
        self._subscribe(sock, channel)

    def _leave(self, sock: ClientSocket, topic: str, ref: Any, join_ref: Any = None) -> None:
        channel = sock.channels.pop(topic, None)
        if channel is None:
            sock.reply(topic, ref, "error", {"reason": "unmatched topic"}, join_ref)
            return
        sock.reply(topic, ref, "ok", {}, join_ref)
        sock.close_channel(topic, channel.join_ref)

    async def _authorize(
        self, sock: ClientSocket, topic: str, claims: dict[str, Any], presence: bool
    ) -> bool | str:
        """Realtime Authorization for a private channel: whether it may read Broadcast, or the
        join error's reason (RealtimeChannel.maybe_assign_policies)."""
        sub_topic = topic.removeprefix("realtime:")
        denied = (
            "Unauthorized: You do not have permissions to read from this Channel topic: "
            + sub_topic
        )
        try:
            policies = await self.db.read_policies(sub_topic, claims, sock.headers, presence)
        except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
            log.warning("RlsPolicyError on %s: %s", topic, exc)  # the real server's log code
            return denied
        if policies.broadcast_read or policies.presence_read:
            return policies.broadcast_read
        return denied

    async def _access_token(
        self, sock: ClientSocket, channel: Channel, payload: dict[str, Any]
    ) -> None:
        # No reply on success; a bad token closes the channel like token expiry does. A new
        # token becomes the channel's claims; a private channel's policies are checked again.
        token = payload.get("access_token")
        if not isinstance(token, str) or not token or token.startswith("sb_"):
            return
        claims = self.keys.verify(token)
        if claims is None:
            self._shutdown(sock, channel, "Token is invalid or has expired")
            return
        if claims == channel.claims:
            return
        channel.claims = claims
        if channel.private:
            allowed = await self._authorize(sock, channel.topic, claims, presence=False)
            if sock.channels.get(channel.topic) is not channel:
                return
            if allowed is not True:  # a reason (denied), or presence-only
                message = (
                    "You no longer have permission to read from this Channel topic: " + channel.name
                )
                self._shutdown(sock, channel, message)
                return
            channel.broadcast_read = True

    def _shutdown(self, sock: ClientSocket, channel: Channel, message: str) -> None:
        """RealtimeChannel.shutdown_response: a system error, then the channel closes."""
        payload = system_payload(channel, "system", message, "error")
        sock.push(channel.topic, "system", payload, None, channel.join_ref)
        sock.close_channel(channel.topic, channel.join_ref)
        sock.channels.pop(channel.topic, None)
