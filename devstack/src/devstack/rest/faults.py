"""The REST stand-in's fault switches: fail, hang or slow down requests on purpose, for tests.

Workers must survive a PostgREST that errors, stalls or drags; these switches make that happen
on demand, from a test (``stack.rest.fail_next(3)``) or over HTTP (``POST /admin/rest/fail``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from devstack.rest.errors import json_response


@dataclass
class _Faults:
    fail_next: int = 0
    fail_next_status: int = 503
    fail_until: float = 0.0
    fail_until_status: int = 503
    hang_next: int = 0
    hang_until: float = 0.0
    slow_until: float = 0.0
    slow_delay: float = 0.0


class FaultSwitches:
    """The fault switches and their counters, mixed into :class:`~devstack.rest.RestApi`."""

    # Kept by the request handler; reported by status().
    request_count: int
    peers: set[tuple[str, int]]

    def __init__(self) -> None:
        self.failed = 0
        self.hung = 0
        self.hanging = 0  # requests being held right now
        self._faults = _Faults()
        self._closing = asyncio.Event()

    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.post("/admin/rest/fail", self._admin_fail),
            web.post("/admin/rest/hang", self._admin_hang),
            web.post("/admin/rest/slow", self._admin_slow),
            web.post("/admin/rest/clear", self._admin_clear),
            web.get("/admin/rest/status", self._admin_status),
        ]

    async def close(self) -> None:
        """Release held requests (their connections are dropped without an answer)."""
        self._closing.set()
        for _ in range(50):
            if not self.hanging:
                break
            await asyncio.sleep(0.01)

    def fail_next(self, n: int, status: int = 503) -> None:
        self._faults.fail_next, self._faults.fail_next_status = n, status

    def fail_for(self, seconds: float, status: int = 503) -> None:
        self._faults.fail_until = time.monotonic() + seconds
        self._faults.fail_until_status = status

    def hang_next(self, n: int) -> None:
        self._faults.hang_next = n

    def hang_for(self, seconds: float) -> None:
        self._faults.hang_until = time.monotonic() + seconds

    def slow_for(self, seconds: float, delay: float) -> None:
        """Answer every request ``delay`` seconds late, for ``seconds`` (a loaded database)."""
        self._faults.slow_until = time.monotonic() + seconds
        self._faults.slow_delay = delay

    def clear_faults(self) -> None:
        self._faults = _Faults()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        f = self._faults
        return {
            "request_count": self.request_count,
            "failed": self.failed,
            "hung": self.hung,
            "hanging": self.hanging,
            "connections_seen": len(self.peers),
            "faults": {
                "fail_next": f.fail_next,
                "fail_next_status": f.fail_next_status,
                "fail_for_seconds": max(0.0, f.fail_until - now),
                "fail_for_status": f.fail_until_status,
                "hang_next": f.hang_next,
                "hang_for_seconds": max(0.0, f.hang_until - now),
                "slow_for_seconds": max(0.0, f.slow_until - now),
                "slow_delay": f.slow_delay,
            },
        }

    # -- admin -------------------------------------------------------------------------------

    async def _admin_fail(self, request: web.Request) -> web.Response:
        spec = await request.json() if request.can_read_body else {}
        status = int(spec.get("status", 503))
        if "seconds" in spec:
            self.fail_for(float(spec["seconds"]), status)
        else:
            self.fail_next(int(spec.get("n", 1)), status)
        return web.json_response(self.status())

    async def _admin_hang(self, request: web.Request) -> web.Response:
        spec = await request.json() if request.can_read_body else {}
        if "seconds" in spec:
            self.hang_for(float(spec["seconds"]))
        else:
            self.hang_next(int(spec.get("n", 1)))
        return web.json_response(self.status())

    async def _admin_slow(self, request: web.Request) -> web.Response:
        spec = await request.json() if request.can_read_body else {}
        self.slow_for(float(spec.get("seconds", 10)), float(spec.get("delay", 0.5)))
        return web.json_response(self.status())

    async def _admin_clear(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response(self.status())

    async def _admin_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    # -- faults ------------------------------------------------------------------------------

    async def _fault(self, request: web.Request) -> web.Response | None:
        f = self._faults
        now = time.monotonic()
        if f.hang_next > 0 or now < f.hang_until:
            if f.hang_next > 0:
                f.hang_next -= 1
            await self._hold(request)
            # Never delivered: the client hung up, or _hold() dropped the connection.
            return web.Response(status=503)
        if now < f.slow_until:
            await asyncio.sleep(f.slow_delay)
        status = None
        if f.fail_next > 0:
            f.fail_next -= 1
            status = f.fail_next_status
        elif now < f.fail_until:
            status = f.fail_until_status
        if status is None:
            return None
        self.failed += 1
        body = {
            "code": "DEVSTACK",
            "details": "Injected by the devstack fault switches (/admin/rest/fail).",
            "hint": None,
            "message": f"Injected fault: HTTP {status}",
        }
        return json_response(status, json.dumps(body), {"X-Devstack-Fault": "fail"})

    async def _hold(self, request: web.Request) -> None:
        """Answer nothing until close() or until the client hangs up.

        aiohttp does not cancel handlers when the peer goes away, so poll the transport: a
        benchmark that gives up on thousands of held requests must not leak them.
        """
        self.hung += 1
        self.hanging += 1
        try:
            while not self._closing.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 0.05)
            if request.transport is not None:
                request.transport.close()
        finally:
            self.hanging -= 1
