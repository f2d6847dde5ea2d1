"""The worker's HTTP side: ``/healthz`` (liveness), ``/readyz`` (readiness), ``/metrics``.

Served on ``HEALTH_HOST:HEALTH_PORT`` while the worker runs (``HEALTH_PORT=0`` turns it off;
``HEALTH_HOST`` is ``0.0.0.0`` by default, for containers; ``127.0.0.1`` keeps it to the host).

Liveness answers "should this process be restarted?", so it must fail only for what a restart
fixes, never for an outside outage (a restart does not bring the database back):

- the event loop is hung → the request is never answered (the probe times out), and a loop that
  was blocked for a long stretch is reported by the heartbeat below;
- a side task (dispatcher, poller, rescuer, realtime) died → the Worker shuts down with exit
  code 1; we answer 503 meanwhile;
- the dispatcher is stuck → it has free slots but has not gone round its loop for longer than
  the longest gap between wake-ups allows (the poller wakes it at least every poll interval, or
  every safety-net sweep in realtime mode, whatever the database does).

While the worker shuts down gracefully, liveness stays 200: in-flight jobs are finishing, and a
restart would cut them short.

Readiness answers "is this replica doing its job?": the database answers (a cheap query with a
short deadline, cached briefly so probes don't hammer it) and the last claim did not fail. It is
for dashboards, alerts and rollouts; work is pulled from the database, not routed by a load
balancer, so an unready replica loses nothing.

Anyone who reaches the port can read these answers, so ``/readyz`` says *what* is wrong and not
*where*: the text of a database or claim error (host names, internal addresses) goes to the log,
and into the body only with ``HEALTH_ERROR_DETAILS=true`` (redacted either way).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from worker.engine.status import WorkerStatus
from worker.observability import metrics
from worker.observability.redact import redact
from worker.settings import Settings

StatusGetter = Callable[[], WorkerStatus]
Ping = Callable[[], Awaitable[None]]

TICK_SECONDS = 1.0
# A heartbeat older than this means the loop was blocked (or the heartbeat died).
LOOP_STALL_SECONDS = 10.0
DB_CHECK_TIMEOUT = 2.0
# /readyz reuses a database check this recent; the heartbeat refreshes it at this slower pace
# so the ready gauge stays current without probes.
DB_CHECK_MAX_AGE_PROBE = 1.5
DB_CHECK_MAX_AGE_TICK = 5.0
# Slack on top of the longest gap between wake-ups: one claim's deadline plus its back-off.
DISPATCHER_SLACK_SECONDS = 30.0


class HealthState:
    """What the endpoints report, from the worker's status snapshots, kept current by a
    heartbeat task."""

    def __init__(self, status: StatusGetter, ping: Ping, *, error_details: bool = False) -> None:
        self._status = status
        self._ping = ping
        self._error_details = error_details
        self.last_tick = time.monotonic()
        self.loop_lag = 0.0
        self._free_since: float | None = None
        self._db_checked_at: float | None = None
        self._db_error: str | None = None
        self._db_lock = asyncio.Lock()

    # --- liveness

    @staticmethod
    def dispatcher_idle_limit(status: WorkerStatus) -> float:
        # The poller jitters its interval by ±20 %.
        return 1.25 * status.longest_wake_gap + DISPATCHER_SLACK_SECONDS

    async def heartbeat(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(TICK_SECONDS)
            now = time.monotonic()
            self.loop_lag = max(0.0, now - before - TICK_SECONDS)
            metrics.LOOP_LAG.set(self.loop_lag)
            self.last_tick = now
            self._track_free_slots(self._status(), now)
            with contextlib.suppress(Exception):
                metrics.READY.set(1 if (await self.readiness(DB_CHECK_MAX_AGE_TICK))[0] else 0)

    def _track_free_slots(self, status: WorkerStatus, now: float) -> None:
        if status.dispatcher_alive_at is None:
            return
        if status.concurrency - status.in_flight <= 0:
            self._free_since = None
        elif self._free_since is None:
            self._free_since = now

    def liveness(self) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        status = self._status()
        problems: list[str] = []
        idle = None
        if status.failed:
            problems.append("a worker task stopped unexpectedly; the worker is shutting down")
        if now - self.last_tick > LOOP_STALL_SECONDS:
            problems.append(f"the event loop was blocked for {now - self.last_tick:.0f} s")
        if status.dispatcher_alive_at is not None:
            idle = now - status.dispatcher_alive_at
            limit = self.dispatcher_idle_limit(status)
            # Measured from when slots became free: a dispatcher waiting for a slot is not stuck.
            if (
                not status.stopping
                and self._free_since is not None
                and now - max(status.dispatcher_alive_at, self._free_since) > limit
            ):
                problems.append(
                    f"the dispatcher has free slots but has not run for {idle:.0f} s "
                    f"(limit {limit:.0f} s)"
                )
        state = "failing" if problems else ("stopping" if status.stopping else "ok")
        body = {
            "status": state,
            "problems": problems,
            "worker_id": status.worker_id,
            "stopping": status.stopping,
            "in_flight": status.in_flight,
            "dispatcher_idle_seconds": _round(idle),
            "loop_lag_seconds": _round(self.loop_lag),
            "uptime_seconds": _round(now - status.started_at),
        }
        return (503 if problems else 200), body

    # --- readiness

    async def database_error(self, max_age: float) -> str | None:
        """None when the database answered within ``max_age`` seconds, else the last error."""
        async with self._db_lock:  # one check at a time; concurrent probes share its result
            now = time.monotonic()
            if self._db_checked_at is None or now - self._db_checked_at > max_age:
                try:
                    async with asyncio.timeout(DB_CHECK_TIMEOUT):
                        await self._ping()
                except TimeoutError:
                    self._db_error = f"no answer within {DB_CHECK_TIMEOUT:g} s"
                except Exception as exc:  # StoreError, or a store closed at shutdown
                    error = redact(str(exc) or type(exc).__name__)
                    if error != self._db_error:  # once per new error, not once per probe
                        logger.warning("readiness: the database check failed: {}", error)
                    self._db_error = error
                else:
                    self._db_error = None
                self._db_checked_at = time.monotonic()
            return self._db_error

    def _shown(self, error: str | None, summary: str) -> str | None:
        """An error as /readyz shows it: in full only with HEALTH_ERROR_DETAILS."""
        if error is None:
            return None
        if self._error_details:
            return redact(error)
        # Our own "no answer within N s" names no host; anything else may.
        return error if error.startswith("no answer within") else summary

    async def readiness(self, max_age: float = DB_CHECK_MAX_AGE_PROBE) -> tuple[bool, dict]:
        db_error = await self.database_error(max_age)
        status = self._status()
        now = time.monotonic()
        reasons = []
        if status.stopping:
            reasons.append("stopping")
        if not status.ready:
            reasons.append("starting")
        if db_error is not None:
            reasons.append("database unreachable")
        if status.last_claim_error is not None:
            reasons.append("claims failing")
        realtime = None
        if status.realtime is not None:
            realtime = {
                "state": status.realtime.state,
                "for_seconds": _round(now - status.realtime.since),
                "rebuilds": status.realtime.rebuilds,
            }
        last_claim = status.last_claim_at
        body = {
            "status": "ready" if not reasons else "not ready",
            "reasons": reasons,
            "worker_id": status.worker_id,
            "mode": status.mode,
            "realtime": realtime,
            "in_flight": status.in_flight,
            "concurrency": status.concurrency,
            "last_claim_age_seconds": _round(now - last_claim) if last_claim else None,
            "last_claim_error": self._shown(
                status.last_claim_error, "the last claim failed (the worker's log has the error)"
            ),
            "database": {
                "ok": db_error is None,
                "error": self._shown(
                    db_error, "the database did not answer (the worker's log has the error)"
                ),
                "checked_seconds_ago": _round(now - self._db_checked_at)
                if self._db_checked_at
                else None,
            },
            "stopping": status.stopping,
        }
        return not reasons, body


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def build_app(state: HealthState) -> web.Application:
    async def healthz(request: web.Request) -> web.Response:
        status, body = state.liveness()
        return web.json_response(body, status=status)

    async def readyz(request: web.Request) -> web.Response:
        ready, body = await state.readiness()
        metrics.READY.set(1 if ready else 0)
        return web.json_response(body, status=200 if ready else 503)

    async def metrics_endpoint(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    return app


async def serve_health(settings: Settings, status: StatusGetter, ping: Ping) -> None:
    """Serve the endpoints until cancelled (the app starts this when HEALTH_PORT != 0), from the
    worker's ``status()`` snapshots and the store's ``ping``."""
    host, port = settings.health_host, settings.health_port
    log = logger.bind(worker_id=settings.worker_id)
    state = HealthState(status, ping, error_details=settings.health_error_details)
    runner = web.AppRunner(build_app(state), handle_signals=False, access_log=None)
    await runner.setup()
    heartbeat: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.error(
                "cannot serve /healthz, /readyz, /metrics on HEALTH_HOST {} HEALTH_PORT {}: {}",
                host,
                port,
                exc,
            )
            raise
        log.info("health and metrics on {}:{} (/healthz, /readyz, /metrics)", host, port)
        heartbeat = asyncio.create_task(state.heartbeat(), name="health-heartbeat")
        # The heartbeat never ends by itself; if it does (a bug), liveness reports the stale tick.
        await asyncio.Future()
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await runner.cleanup()
