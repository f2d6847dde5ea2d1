"""Completions in batches: jobs that finish at the same moment are completed in one round trip.

Under load, jobs finish in bursts (a slot frees, a claim refills it, …); writing each
completion separately made the database API the bottleneck. The completer collects what
finished while its previous write was in flight and completes it all with one guarded
statement (``image_worker_complete_many``), as River's batch completer does. With a single
job in flight it adds no delay: the write goes out at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from worker.store import ClaimedJob, JobStore, StoreError

MAX_BATCH = 100


class Completer:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._queue: list[tuple[ClaimedJob, str, str, asyncio.Future[bool]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def complete(self, claim: ClaimedJob, image_url: str, thumbnail_url: str) -> bool:
        """True when the job is complete under our lease; raises ``StoreError`` when the write
        failed (the caller retries); False when the lease was lost."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="completer")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((claim, image_url, thumbnail_url, future))
        self._wake.set()
        return await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                live = [item for item in batch if not item[3].done()]  # callers may have gone
                if not live:
                    continue
                try:
                    done = await self._store.complete_many([item[:3] for item in live])
                except StoreError as exc:
                    for *_, future in live:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for claim, _, _, future in live:
                    if not future.done():
                        future.set_result(done.get(claim.job.id, False))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
