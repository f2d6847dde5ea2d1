"""One client WebSocket speaking Phoenix channels (vsn 1.0.0): frames out in order, and faults.

Every outgoing frame goes through one queue, so the order the client sees is the order the
server decided; freezing and aborting act on the socket the way a dead network path would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from aiohttp import web

from devstack.realtime.subscriptions import Channel

if TYPE_CHECKING:
    from devstack.realtime.server import RealtimeServer


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


def system_payload(channel: Channel, extension: str, message: str, status: str) -> dict[str, Any]:
    return {"channel": channel.name, "extension": extension, "message": message, "status": status}
