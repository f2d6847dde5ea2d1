"""Realtime wake-ups: a low-latency hint that work arrived, never the source of truth.

The realtime client (2.34.1) can fail silently in several ways (``docs/supabase-realtime.md``
§6–§7): it gives up after ~15 s of outage without telling anyone, its message loop dies if a
callback raises, a half-open socket goes unnoticed for ~47 s, and a channel can be closed for
good by one server error. So:

- events only ever call ``wake("realtime")``; the database claim decides what runs; the one
  exception is a cancel request (an UPDATE setting ``cancel_requested_at``), which is passed to
  ``on_cancel(job_id)`` so the executor stops that job at once (it checks the job is its own;
  the cancel watcher and lease renewals catch whatever this misses);
- we count as *healthy* only after the "Subscribed to PostgreSQL" system message, and every
  transition to healthy triggers a catch-up claim (and another a few seconds later, because
  ``SUBSCRIBED`` can precede delivery), covering whatever was inserted while we were away;
- while unhealthy the poller runs at ``WORKER_POLL_INTERVAL_SECONDS``; while healthy it keeps a
  slow safety-net sweep, because delivery is not guaranteed even then;
- a watchdog rebuilds the client and channel from scratch (closing the old client so its own
  retry loop stops) when the socket stays down past the library's retry window, when its message
  loop has died, when the channel is closed, when we never become healthy, or when our own ping
  goes unanswered (half-open socket), with a growing pause between rebuilds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from enum import StrEnum

from loguru import logger
from realtime import AsyncRealtimeChannel, AsyncRealtimeClient, RealtimeSubscribeStates

from worker.observability import metrics
from worker.settings import Settings

Wake = Callable[[str], None]
OnCancel = Callable[[str], None]
# An UPDATE that sets cancel_requested_at (cancel_job on a running job). Realtime filters support
# eq/neq/lt/lte/gt/gte/in, not "is not null": any timestamp is after this one.
CANCEL_FILTER = "cancel_requested_at=gt.1970-01-01T00:00:00+00:00"


class RealtimeState(StrEnum):
    CONNECTING = "connecting"  # building a client, connecting, joining
    JOINED = "joined"  # the join succeeded, changes not flowing yet
    HEALTHY = "healthy"  # "Subscribed to PostgreSQL": changes flow
    DOWN = "down"  # socket or channel in error; the library or the watchdog is on it
    STOPPED = "stopped"


class RealtimeWakeups:
    # The library retries a dropped socket at +0, 1, 3, 7, 15 s, then gives up silently.
    RETRY_WINDOW = 20.0
    # Longest we accept being connected but not subscribed (join errors, timeouts, no system
    # message) before starting over.
    UNHEALTHY_LIMIT = 30.0
    PING_INTERVAL = 10.0
    PING_TIMEOUT = 10.0  # so a half-open socket is caught within about 20 s
    SAFETY_NET_INTERVAL = 30.0
    SECOND_CATCHUP_AFTER = 3.0
    MAX_REBUILD_PAUSE = 30.0

    def __init__(self, settings: Settings, wake: Wake, on_cancel: OnCancel | None = None) -> None:
        self._settings = settings
        self._wake = wake
        self._on_cancel = on_cancel
        self._log = logger.bind(worker_id=settings.worker_id)
        self.state = RealtimeState.CONNECTING
        self.state_since = time.monotonic()
        self.rebuilds = 0
        self.events = 0
        self._client: AsyncRealtimeClient | None = None
        self._channel: AsyncRealtimeChannel | None = None
        self._subscribe_task: asyncio.Task | None = None
        self._timers: set[asyncio.Task] = set()
        self._closed = False
        for state in RealtimeState:
            metrics.REALTIME_STATE.labels(state.value).set(0)
        metrics.REALTIME_STATE.labels(self.state.value).set(1)

    @property
    def healthy(self) -> bool:
        return self.state == RealtimeState.HEALTHY

    def poll_schedule(self) -> tuple[float, str]:
        if self.healthy:
            return self.SAFETY_NET_INTERVAL, "sweep"
        return self._settings.worker_poll_interval_seconds, "poll"

    # --- callbacks: called synchronously by the library; they must never raise (a raising
    # callback kills the library's message loop without any other sign).

    def _on_change(self, payload: dict) -> None:
        try:
            self.events += 1
            self._wake("realtime")
        except Exception:
            self._log.exception("realtime change callback failed")

    def _on_cancel_event(self, payload: dict) -> None:
        try:
            self.events += 1
            record = (payload.get("data") or {}).get("record") or {}
            if record.get("status") == "running" and record.get("id") and self._on_cancel:
                self._on_cancel(str(record["id"]))
        except Exception:
            self._log.exception("realtime cancel callback failed")

    def _on_system(self, payload) -> None:
        try:
            if payload.extension == "postgres_changes" and payload.status == "ok":
                self._set_state(RealtimeState.HEALTHY)
        except Exception:
            self._log.exception("realtime system callback failed")

    def _on_subscribe_state(self, status: RealtimeSubscribeStates, error: Exception | None) -> None:
        try:
            if status == RealtimeSubscribeStates.SUBSCRIBED:
                if self.state != RealtimeState.HEALTHY:
                    self._set_state(RealtimeState.JOINED)
            else:
                reason = f" ({error})" if error else ""
                self._set_state(RealtimeState.DOWN, f"{status.value}{reason}")
        except Exception:
            self._log.exception("realtime subscribe callback failed")

    def _set_state(self, state: RealtimeState, detail: str = "") -> None:
        if state == self.state:
            return
        previous = self.state
        self.state = state
        self.state_since = time.monotonic()
        metrics.REALTIME_STATE.labels(previous.value).set(0)
        metrics.REALTIME_STATE.labels(state.value).set(1)
        suffix = f": {detail}" if detail else ""
        if state == RealtimeState.HEALTHY:
            self._log.info("realtime healthy; catching up on anything missed")
            self._wake("catchup")
            self._later(self.SECOND_CATCHUP_AFTER, lambda: self._wake("catchup"))
        elif state == RealtimeState.DOWN:
            self._log.warning("realtime down{}; polling every {:g} s meanwhile", suffix,
                              self._settings.worker_poll_interval_seconds)  # fmt: skip
        else:
            self._log.info("realtime {}{}", state.value, suffix)

    def _later(self, delay: float, action: Callable[[], None]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            action()

        task = asyncio.create_task(run())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    # --- the watchdog

    async def run(self) -> None:
        pause = 1.0
        while not self._closed:
            await self._build()
            cause = await self._watch()
            if self._closed:
                break
            self.rebuilds += 1
            metrics.REALTIME_RECONNECTS.labels(cause).inc()
            self._set_state(RealtimeState.DOWN, f"rebuilding the client ({cause})")
            await self._teardown()
            was_healthy = cause in ("channel_closed", "listener_died", "half_open")
            pause = 1.0 if was_healthy and pause <= 1.0 else min(pause * 2, self.MAX_REBUILD_PAUSE)
            self._log.info("rebuilding the realtime client in {:g} s", pause)
            await asyncio.sleep(pause)
            if self.state == RealtimeState.HEALTHY:
                pause = 1.0

    async def _build(self) -> None:
        s = self._settings
        self._set_state(RealtimeState.CONNECTING)
        client = AsyncRealtimeClient(
            f"{s.supabase_url}/realtime/v1",
            token=s.supabase_service_role_key.get_secret_value(),
            auto_reconnect=True,
        )
        channel = client.channel("image-worker:jobs")
        for event in ("INSERT", "UPDATE"):
            # UPDATE too: a job set back to pending (replay, rescue, release) is new work.
            channel.on_postgres_changes(
                event,
                schema="public",
                table="jobs",  # public.jobs: fixed since contract v2
                filter="status=eq.pending",
                callback=self._on_change,
            )
        if self._on_cancel is not None:
            channel.on_postgres_changes(
                "UPDATE",
                schema="public",
                table="jobs",
                filter=CANCEL_FILTER,
                callback=self._on_cancel_event,
            )
        channel.on_system(self._on_system)
        self._client, self._channel = client, channel
        self._subscribe_task = asyncio.create_task(channel.subscribe(self._on_subscribe_state))

    async def _watch(self) -> str:
        """Wait until the current client needs replacing; return why."""
        client, channel = self._client, self._channel
        assert client is not None and channel is not None
        down_since: float | None = None
        next_ping = time.monotonic() + self.PING_INTERVAL
        while not self._closed:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            sub = self._subscribe_task
            if sub is not None and sub.done() and not sub.cancelled() and sub.exception():
                self._log.warning("realtime connection failed: {}", sub.exception())
                return "connect_failed"
            if channel.is_closed or client.channels.get(channel.topic) is not channel:
                return "channel_closed"
            listen = client._listen_task
            if listen is not None and listen.done():
                # Either the library gave up reconnecting, or a callback raised.
                return "listener_died"
            if not client.is_connected:
                down_since = down_since or now
                if now - down_since > self.RETRY_WINDOW:
                    return "socket_down"
                continue
            down_since = None
            if not self.healthy and now - self.state_since > self.UNHEALTHY_LIMIT:
                return "not_subscribed"
            if now >= next_ping:
                next_ping = now + self.PING_INTERVAL
                if not await self._ping(client):
                    return "half_open"
        return "stopped"

    async def _ping(self, client: AsyncRealtimeClient) -> bool:
        ws = client._ws_connection
        if ws is None:
            return True  # not connected: the reconnect logic above handles it
        try:
            async with asyncio.timeout(self.PING_TIMEOUT):
                pong = await ws.ping()
                await pong
        except TimeoutError:
            self._log.warning("realtime socket did not answer a ping in {:g} s", self.PING_TIMEOUT)
            return False
        except Exception:
            return True  # the socket is closing; the library notices that by itself
        return True

    async def _teardown(self) -> None:
        client, channel = self._client, self._channel
        self._client = self._channel = None
        if self._subscribe_task is not None:
            self._subscribe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._subscribe_task
            self._subscribe_task = None
        if client is None:
            return
        for ch in [*client.channels.values(), *([channel] if channel else [])]:
            ch.rejoin_timer.reset()
        ws = client._ws_connection
        try:
            # close() waits for the close handshake, which a frozen peer never answers.
            async with asyncio.timeout(3):
                await client.close()
        except Exception:  # TimeoutError included
            if ws is not None and ws.transport is not None:
                ws.transport.abort()
        for task in (client._listen_task, client._heartbeat_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def close(self) -> None:
        self._closed = True
        for timer in list(self._timers):
            timer.cancel()
        await self._teardown()
        self._set_state(RealtimeState.STOPPED)
