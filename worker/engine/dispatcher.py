"""Turns wake-ups into claims: on each wake-up, claim up to the free slots and start executors.

Wake-up sources (Realtime, the poller, the catch-up after a reconnect) only call ``wake(trigger)``.
Wake-ups coalesce into one flag that is cleared *before* each claim, never after: a wake-up that
arrives while a claim is in flight leads to one more claim, so it can never be lost. When a claim
finds work there may be more, so the dispatcher claims again each time a job finishes, until a
claim comes back empty (not merely short: a fair claim passes over users at their
``max_running``, whose next job becomes claimable when one of theirs finishes).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from loguru import logger

from worker.engine.executor import Executor
from worker.observability import metrics
from worker.store import ClaimedJob, JobStore, StoreError

# When a wake-up names several triggers at once, the claim is credited to the most specific.
_PRIORITY = {"realtime": 0, "catchup": 1, "sweep": 2, "poll": 3}


class WakeSignal:
    """A coalescing 'work may be there' flag that remembers why it was raised."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._trigger: str | None = None

    def set(self, trigger: str) -> None:
        if self._trigger is None or _PRIORITY.get(trigger, 9) < _PRIORITY.get(self._trigger, 9):
            self._trigger = trigger
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def take(self) -> str:
        """Clear the flag and return its trigger; call right before claiming."""
        trigger = self._trigger or "poll"
        self._trigger = None
        self._event.clear()
        return trigger


class Dispatcher:
    def __init__(
        self, store: JobStore, executor: Executor, concurrency: int, worker_id: str
    ) -> None:
        self._store = store
        self._executor = executor
        self._concurrency = concurrency
        self._log = logger.bind(worker_id=worker_id)
        self._wake = WakeSignal()
        self._slot_freed = asyncio.Event()
        self._stopped = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._drain_trigger: str | None = None
        self._claim_failures = 0
        self.last_claim_at: float | None = None  # monotonic time of the last successful claim
        self.last_claim_error: str | None = None
        self.loop_alive_at = time.monotonic()
        self.claimed_by_trigger: Counter[str] = Counter()

    def wake(self, trigger: str) -> None:
        if not self._stopped.is_set():
            self._wake.set(trigger)

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def tasks(self) -> list[asyncio.Task[None]]:
        return list(self._tasks.values())

    def stop_claiming(self) -> None:
        self._stopped.set()
        self._wake.set("poll")  # unblock the loop so it can see the stop

    async def run(self) -> None:
        while not self._stopped.is_set():
            self.loop_alive_at = time.monotonic()
            await self._wake.wait()
            if self._stopped.is_set():
                break
            free = self._concurrency - len(self._tasks)
            if free <= 0:
                # The flag stays raised: we claim as soon as a job finishes.
                self._slot_freed.clear()
                await self._slot_freed.wait()
                continue
            trigger = self._wake.take()
            try:
                claims = await self._store.claim(free, trigger)
            except StoreError as exc:
                await self._claim_failed(trigger, exc)
                continue
            self._claim_failures = 0
            self.last_claim_at = time.monotonic()
            self.last_claim_error = None
            metrics.CLAIM_CALLS.labels(trigger, "yes" if claims else "no").inc()
            if claims:
                metrics.JOBS_CLAIMED.labels(trigger).inc(len(claims))
                self.claimed_by_trigger[trigger] += len(claims)
                self._log.debug("claimed {} job(s) ({})", len(claims), trigger)
            for claim in claims:
                self._start(claim, trigger)
            self._drain_trigger = trigger if claims else None

    async def _claim_failed(self, trigger: str, exc: StoreError) -> None:
        metrics.DB_ERRORS.labels("claim").inc()
        self.last_claim_error = str(exc)
        self._claim_failures += 1
        delay = min(0.5 * 2 ** (self._claim_failures - 1), 10.0)
        self._log.warning("claim failed, trying again in {:.1f} s: {}", delay, exc)
        # Wait, unless told to stop, then try again with the same trigger.
        try:
            async with asyncio.timeout(delay):
                await self._stopped.wait()
        except TimeoutError:
            self.wake(trigger)

    def _start(self, claim: ClaimedJob, trigger: str) -> None:
        task = asyncio.create_task(self._executor.run(claim), name=f"job-{claim.job.id}")
        self._tasks[claim.job.id] = task
        task.add_done_callback(lambda t, job_id=claim.job.id: self._finished(job_id, t))

    def _finished(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            self._log.opt(exception=task.exception()).error("executor crashed for job {}", job_id)
        self._slot_freed.set()
        if self._drain_trigger is not None:
            self.wake(self._drain_trigger)
