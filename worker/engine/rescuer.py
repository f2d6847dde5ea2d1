"""The rescuer: returns jobs whose lease expired (a dead or partitioned worker) to the queue.

It runs on every replica with jitter and needs no leader: the statement is atomic and safe to
race. A job out of attempts is failed instead (a job that keeps killing workers).
"""

from __future__ import annotations

import asyncio
import random

from loguru import logger

from worker.observability import metrics
from worker.store import JobStore, StoreError
from worker.wakeups.poller import Wake, jittered


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
                if job.status == "cancelled":
                    log.info(
                        "job {} cancelled: its cancel was requested and the lease of worker {} "
                        "expired",
                        job.id,
                        job.worker_id,
                    )
                elif job.status == "failed":
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
