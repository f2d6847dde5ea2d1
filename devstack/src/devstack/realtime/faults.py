"""The Realtime stand-in's fault switches: the ways the real service drops, refuses and confuses.

Each one reproduces something the real server does in production (deploys, token expiry, a dead
NAT path, a slow join), so a worker's recovery can be tested on demand, from a test or over
``POST /admin/realtime/<fault>``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from aiohttp import web

from devstack.realtime.phoenix import ClientSocket, system_payload

T = TypeVar("T")


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


class FaultSwitches:
    """The fault switches of :class:`~devstack.realtime.RealtimeServer` (call them from the
    event loop's thread); the server consults the armed ones when it joins and upgrades."""

    sockets: list[ClientSocket]
    _background: set[asyncio.Task[Any]]

    def __init__(self) -> None:
        # Real Phoenix answers a duplicate join with phx_close for the old join ref (pitfall P9).
        self.duplicate_join_close = True
        self._refuse_until = 0.0
        self._refuse_status = 503
        self._join_error: _Armed[str] = _Armed()
        self._no_join_reply: _Armed[bool] = _Armed()
        self._slow_join: _Armed[float] = _Armed()
        self._delay_subscribed: _Armed[float] = _Armed()

    def status(self) -> dict[str, Any]:
        raise NotImplementedError

    def _fault_status(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "refusing_for_s": max(0.0, round(self._refuse_until - now, 3)),
            "frozen_sockets": sum(not s.thawed.is_set() for s in self.sockets),
            "duplicate_join_close": self.duplicate_join_close,
            "join_error": self._join_error.describe(),
            "no_join_reply": self._no_join_reply.describe(),
            "slow_join": self._slow_join.describe(),
            "delay_subscribed": self._delay_subscribed.describe(),
        }

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
                payload = system_payload(channel, "system", message, "error")
                sock.push(channel.topic, "system", payload, None, channel.join_ref)
                sock.close_channel(channel.topic, channel.join_ref)
            sock.channels.clear()

    def phx_error(self) -> None:
        """``phx_error`` on every joined channel: the channel process crashed and is gone."""
        for sock in self.sockets:
            for channel in list(sock.channels.values()):
                sock.push(channel.topic, "phx_error", {}, channel.join_ref, channel.join_ref)
            sock.channels.clear()

    def postgres_changes_error(self, message: str = "Unable to connect to the database") -> None:
        """A postgres_changes subscription error on every joined channel. The server keeps the
        channel joined, so the client's automatic rejoin is a duplicate join (pitfall P9)."""
        for sock in self.sockets:
            for channel in sock.channels.values():
                channel.subscribed = False
                payload = system_payload(channel, "postgres_changes", message, "error")
                sock.push(channel.topic, "system", payload, None, channel.join_ref)

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
