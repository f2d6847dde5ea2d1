"""The cancel watcher: notices cancel requests of the jobs this worker is running.

Realtime's UPDATE event (``wakeups/realtime.py``) tells the worker at once that one of its
running jobs was cancelled (``cancel_job``); a lease renewal's answer tells it too, but only
every third of a lease. This loop is the fallback that keeps the contract's bound in polling
mode, while the socket is down and when an event is lost: every
``WORKER_POLL_INTERVAL_SECONDS`` it asks which of the running jobs have a cancel request, in one
read for all of them (and none while nothing runs), so a cancel is noticed within the poll
interval plus a round trip.
"""

from __future__ import annotations

import asyncio

from loguru import logger

from worker.engine.executor import Executor
from worker.observability import metrics
from worker.store import JobStore, StoreError, functions

# How often a worker on a database without the function tries again (the migration may come).
MISSING_FUNCTION_INTERVAL = 60.0


async def watch_cancels(
    store: JobStore, executor: Executor, interval: float, worker_id: str
) -> None:
    log = logger.bind(worker_id=worker_id)
    missing = False  # a database without the tenancy migration: check rarely, say it once
    while True:
        await asyncio.sleep(max(interval, MISSING_FUNCTION_INTERVAL) if missing else interval)
        running = executor.in_flight()
        if not running:
            continue
        try:
            requested = await store.cancel_requested(running)
        except StoreError as exc:
            if "PGRST202" in exc.detail:
                if not missing:
                    log.warning(
                        "the database has no image_worker_cancel_requested (apply {}); cancel "
                        "requests are noticed by lease renewals only",
                        functions.TENANCY_MIGRATION,
                    )
                missing = True
                continue
            metrics.DB_ERRORS.labels("cancel_requested").inc()
            log.warning("could not check for cancel requests: {}", exc)
            continue
        missing = False
        for job_id in requested:
            executor.request_cancel(job_id, "watch")
