"""Completions in batches: jobs that finish at the same moment are completed in one round trip.

Under load, jobs finish in bursts (a slot frees, a claim refills it, …); writing each
completion separately made the database API the bottleneck. The completer collects what
finished while its previous write was in flight and completes it all with one guarded
statement (``complete_many``), as River's batch completer does. With a single job in flight
it adds no delay: the write goes out at once.

It is a service like the dispatcher: the app starts ``run()`` and supervises it. Should it ever
stop, every completion still waiting gets a ``StoreError`` (the executor's retries then give up
and the lease expiry hands the job to another worker) instead of waiting forever.
"""

from __future__ import annotations

import asyncio

from worker.store import ClaimedJob, JobStore, StoreError

MAX_BATCH = 100

_Pending = tuple[ClaimedJob, str, str, asyncio.Future[bool]]


class Completer:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._running = False

    async def complete(self, claim: ClaimedJob, image_url: str, thumbnail_url: str) -> bool:
        """True when the job is complete under our lease; raises ``StoreError`` when the write
        failed (the caller retries); False when the lease was lost."""
        if not self._running:
            raise StoreError("complete", "the completer is not running")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append((claim, image_url, thumbnail_url, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        self._running = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                    await self._write(batch)
        finally:
            self._running = False
            stopped = StoreError("complete", "the completer stopped")
            for *_, future in self._queue:
                if not future.done():
                    future.set_exception(stopped)
            self._queue.clear()

    async def _write(self, batch: list[_Pending]) -> None:
        live = [item for item in batch if not item[3].done()]  # callers may have gone
        if not live:
            return
        try:
            done = await self._store.complete_many([item[:3] for item in live])
        except StoreError as exc:
            for *_, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            # Not a database failure: a bug. Its callers must not wait forever; run() ends
            # with the exception and the app reports it.
            stopped = StoreError("complete", "the completer broke")
            for *_, future in live:
                if not future.done():
                    future.set_exception(stopped)
            raise
        for claim, _, _, future in live:
            if not future.done():
                future.set_result(done.get(claim.job.id, False))
