"""Timers that wake the dispatcher: the poll, and the rescue of expired leases.

Both run on every replica with jitter, so replicas spread out instead of hitting the database in
step, and no leader is needed: every statement they trigger is atomic and safe to race.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

from loguru import logger

from worker.observability import metrics
from worker.store import JobStore, StoreError

Wake = Callable[[str], None]


def jittered(seconds: float, spread: float = 0.2) -> float:
    return seconds * random.uniform(1 - spread, 1 + spread)


async def poll_forever(wake: Wake, schedule: Callable[[], tuple[float, str]]) -> None:
    """Wake the dispatcher on a jittered timer. ``schedule()`` says how long and with which
    trigger, so realtime mode can poll fast while unhealthy and slowly while healthy; it is
    re-read every second, so a drop switches to the fast interval at once, not after a sweep."""
    last = time.monotonic()
    jitter = jittered(1.0)
    while True:
        interval, trigger = schedule()
        wait = last + interval * jitter - time.monotonic()
        if wait > 0:
            await asyncio.sleep(min(wait, 1.0))
            continue
        wake(trigger)
        last = time.monotonic()
        jitter = jittered(1.0)


async def rescue_forever(store: JobStore, lease_seconds: float, wake: Wake, worker_id: str) -> None:
    """Return expired leases to the queue (or fail jobs out of attempts).

    Runs about four times per lease, so a dead worker's job waits at most about 1.25 leases.
    """
    log = logger.bind(worker_id=worker_id)
    period = max(lease_seconds / 4, 1.0)
    await asyncio.sleep(random.uniform(0, period))
    while True:
        try:
            rescued = await store.rescue()
        except StoreError as exc:
            metrics.DB_ERRORS.labels("rescue").inc()
            log.warning("rescue failed: {}", exc)
        else:
            for job in rescued:
                metrics.JOBS_RESCUED.labels(job.status).inc()
                if job.status == "failed":
                    log.warning(
                        "job {} failed: its lease expired after its last allowed attempt "
                        "(last worker {})",
                        job.id,
                        job.worker_id,
                    )
                else:
                    log.warning(
                        "job {} returned to the queue: the lease of worker {} expired",
                        job.id,
                        job.worker_id,
                    )
            if any(job.status == "pending" for job in rescued):
                wake("poll")
        await asyncio.sleep(jittered(period, spread=0.5))
