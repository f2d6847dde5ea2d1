"""One client WebSocket speaking Phoenix channels: frames out in order, and faults.

The socket's serializer (vsn 1.0.0 or 2.0.0, :mod:`devstack.realtime.serializers`) turns each
frame into text or a binary frame. Every outgoing frame goes through one queue, so the order the
client sees is the order the server decided; freezing and aborting act on the socket the way a
dead network path would.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from devstack.realtime.serializers import Serializer, UserBroadcast, V1JSONSerializer
from devstack.realtime.subscriptions import Channel

if TYPE_CHECKING:
    from devstack.realtime.server import RealtimeServer


class ClientSocket:
    """One WebSocket connection. Every outgoing frame goes through one FIFO, so order is kept."""

    def __init__(
        self,
        server: RealtimeServer,
        ws: web.WebSocketResponse,
        request: web.Request,
        serializer: Serializer | None = None,
        claims: dict[str, Any] | None = None,
    ):
        self.server = server
        self.ws = ws
        self.transport = request.transport
        self.serializer: Serializer = serializer or V1JSONSerializer()
        # The apikey's claims: what a join without its own access_token acts with.
        self.claims: dict[str, Any] = claims or {}
        # Phoenix's connect_info x_headers: what Realtime Authorization sets as request.headers.
        self.headers = {
            k.lower(): v for k, v in request.headers.items() if k.lower().startswith("x-")
        }
        self.channels: dict[str, Channel] = {}
        self.outbox: asyncio.Queue[str | bytes] = asyncio.Queue()
        self.tasks: set[asyncio.Task[None]] = set()
        # Cleared while frozen: nothing is read, answered or sent (a half-open socket).
        self.thawed = asyncio.Event()
        self.thawed.set()
        self._thaw_timer: asyncio.TimerHandle | None = None

    def push(
        self,
        topic: str,
        event: str,
        payload: dict[str, Any],
        ref: str | None = None,
        join_ref: str | None = None,
    ) -> None:
        """A ``Phoenix.Socket.Message`` (a channel's push; vsn 1.0.0 drops ``join_ref``)."""
        self.outbox.put_nowait(self.serializer.message(topic, event, payload, ref, join_ref))

    def reply(
        self,
        topic: str,
        ref: str | None,
        status: str,
        response: dict[str, Any],
        join_ref: str | None = None,
    ) -> None:
        """A ``Phoenix.Socket.Reply``: ``phx_reply`` to the client's frame ``ref``."""
        self.outbox.put_nowait(self.serializer.reply(topic, ref, join_ref, status, response))

    def close_channel(self, topic: str, join_ref: str | None) -> None:
        """``phx_close`` as ``Phoenix.Socket.encode_close`` sends it: ref and join_ref both the
        channel's join ref (so a client ignores the close of a join it already replaced)."""
        self.push(topic, "phx_close", {}, join_ref, join_ref)

    def fastlane(self, topic: str, event: str, payload: dict[str, Any]) -> None:
        """A ``Phoenix.Socket.Broadcast`` pushed by fastlane: no ref, no join_ref."""
        self.outbox.put_nowait(self.serializer.broadcast(topic, event, payload))

    def user_broadcast(self, msg: UserBroadcast) -> bool:
        """A broadcast whose payload is bytes: binary kind 4 for vsn 2.0.0, the JSON
        ``broadcast`` event for 1.0.0 (nothing when a binary payload cannot be converted)."""
        frame = self.serializer.user_broadcast(msg)
        if frame is None:
            return False
        self.outbox.put_nowait(frame)
        return True

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
                if isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                else:
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


def system_payload(channel: Channel, extension: str, message: str, status: str) -> dict[str, Any]:
    return {"channel": channel.name, "extension": extension, "message": message, "status": status}
