"""Runs one claimed job while holding its lease: step → outcome, written only by the lease holder.

The step is an async function ``step(job, progress) -> JobResult`` (the image pipeline in
production; simple functions in tests). Around it the executor:

- renews the lease every third of ``WORKER_LEASE_SECONDS``; when renewal says the lease is lost
  (or renewal keeps failing for a whole lease), the step is cancelled and nothing more is written;
- writes the outcome with retries (the SQL is idempotent for the lease holder), so a brief
  database outage does not lose a finished job: ``complete`` (batched with other jobs that
  finished at the same moment, see ``completer.py``), ``fail`` (``JobFailed``: the job's
  own fault, final) or ``retry`` (anything unexpected: tried again later, failed for good once
  ``JOB_MAX_ATTEMPTS`` claims are used);
- on shutdown, cancels the step and releases the job to ``pending`` at once;
- on a cancel request (``cancel_job``), noticed through ``request_cancel`` (Realtime's UPDATE
  event, the cancel watcher's poll) or a renewal that answers None, cancels the step (which
  starts nothing more, uploads included, and may cancel its provider's generation: its
  context's ``stop_reason`` is "cancelled") and ends the job ``cancelled`` under its lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from loguru import logger
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from worker.engine.completer import Completer
from worker.errors import JobFailed
from worker.jobs import JobResult, Step
from worker.observability import metrics
from worker.observability.redact import redact
from worker.settings import Settings
from worker.store import ClaimedJob, JobStore, StoreError
from worker.text import one_line

# Seconds before an attempt that broke unexpectedly is tried again: 2, 4, 8 … up to 60.
RETRY_BACKOFF_BASE = 2.0
RETRY_BACKOFF_MAX = 60.0


class _Attempt:
    """What the executor knows about one job it is running."""

    def __init__(self, claim: ClaimedJob) -> None:
        self.claim = claim
        self.work: asyncio.Task[JobResult] | None = None
        self.cancel_reason: str | None = None  # "lease_lost" | "shutdown" | "cancelled"
        self.lost_because = ""

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self.work is not None and not self.work.done():
            self.work.cancel()


class _ProgressReporter:
    """Writes a job's progress in the background: the work never waits on a progress write,
    and when writes queue up only the newest value is sent. A write that finds the lease gone
    still stops the job."""

    def __init__(
        self,
        store: JobStore,
        claim: ClaimedJob,
        on_lost: Callable[[], None],
        log,
        on_cancel: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._claim = claim
        self._on_lost = on_lost
        self._on_cancel = on_cancel
        self._log = log
        self._latest: int | None = None
        self._task: asyncio.Task[None] | None = None

    async def report(self, value: int) -> None:
        self._latest = value
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._latest is not None:
            value, self._latest = self._latest, None
            try:
                held = await self._store.heartbeat(self._claim, progress=value)
            except StoreError as exc:
                self._log.warning("progress {} not recorded: {}", value, exc)
                continue
            if held is None:  # held, but a cancel was requested
                if self._on_cancel is not None:
                    self._on_cancel()
                continue
            if not held:
                self._on_lost()
                return

    async def close(self, *, abandon: bool) -> None:
        """The work is over: no newer value is sent. A write already sent is let finish, so
        progress lands before the outcome and its pooled connection survives (cancelling a
        request mid-flight closes the connection it rides on). An abandoned attempt (lease
        lost, shutdown) cancels it instead."""
        self._latest = None
        if self._task is None or self._task.done():
            return
        if abandon:
            self._task.cancel()
        # wait(), not await: our own cancellation must neither reach the write nor be swallowed.
        await asyncio.wait([self._task])
        if not self._task.cancelled() and self._task.exception() is not None:
            self._log.opt(exception=self._task.exception()).warning("progress write broke")


class _JobContext:
    """What a running step gets as its ``progress`` (``worker.jobs.JobContext``): progress
    reports, the job's generation handle written under the lease, and why it is being stopped.
    The engine knows nothing of providers: a handle is an opaque JSON object to it."""

    def __init__(
        self,
        store: JobStore,
        attempt: _Attempt,
        reporter: _ProgressReporter,
        on_lost: Callable[[], None],
        log,
    ) -> None:
        self._store = store
        self._attempt = attempt
        self._reporter = reporter
        self._on_lost = on_lost
        self._log = log

    async def __call__(self, value: int) -> None:
        await self._reporter.report(value)

    @property
    def stop_reason(self) -> str | None:
        return self._attempt.cancel_reason

    async def save_generation_ref(self, ref: dict[str, Any] | None) -> bool | None:
        try:
            held = await self._store.set_generation_ref(self._attempt.claim, ref)
        except StoreError as exc:
            self._log.warning("generation handle not recorded: {}", exc)
            return None
        if not held:
            self._on_lost()
        return held

    async def generation_ref_in_use(self, ref_id: str) -> bool | None:
        try:
            return await self._store.generation_ref_in_use(self._attempt.claim.job.id, ref_id)
        except StoreError as exc:
            self._log.warning("could not check the job's generation handle: {}", exc)
            return None


class Executor:
    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        step: Step,
        completer: Completer,
        job_deadline: float | None = None,
    ) -> None:
        self._settings = settings
        self._store = store
        self._step = step
        self._completer = completer
        self._job_deadline = job_deadline
        self._attempts: dict[str, _Attempt] = {}

    @property
    def renew_interval(self) -> float:
        return self._settings.worker_lease_seconds / 3

    def cancel_all(self, reason: str) -> None:
        for attempt in list(self._attempts.values()):
            attempt.cancel(reason)

    def in_flight(self) -> list[str]:
        """The ids of the jobs running now."""
        return list(self._attempts)

    def request_cancel(self, job_id: str, noticed_by: str) -> bool:
        """A cancel was requested for this job (``noticed_by``: realtime, watch, renewal): stop
        its step and end it ``cancelled``. False when this worker is not running it."""
        attempt = self._attempts.get(job_id)
        if attempt is None:
            return False
        if attempt.cancel_reason is None:
            logger.bind(job_id=job_id, worker_id=self._settings.worker_id).info(
                "cancel requested (noticed via {}): stopping the job", noticed_by
            )
            metrics.CANCELS_NOTICED.labels(noticed_by).inc()
        attempt.cancel("cancelled")
        return True

    async def run(self, claim: ClaimedJob) -> None:
        job = claim.job
        log = logger.bind(job_id=job.id, worker_id=self._settings.worker_id)
        attempt = _Attempt(claim)
        self._attempts[job.id] = attempt
        metrics.JOBS_IN_FLIGHT.inc()
        if job.created_at is not None:
            metrics.PICKUP_LATENCY.observe(
                max(0.0, (datetime.now(UTC) - job.created_at).total_seconds())
            )
        log.info("job started (attempt {})", job.attempts)
        started = time.monotonic()
        renewer = asyncio.create_task(self._keep_lease(attempt, log))
        try:
            attempt.work = asyncio.create_task(self._run_step(attempt, log))
            try:
                result = await attempt.work
            except asyncio.CancelledError:
                if attempt.cancel_reason is None:
                    raise  # we ourselves are being cancelled: not a job outcome
                result = None
            except JobFailed as exc:
                if attempt.cancel_reason != "cancelled":
                    await self._finish_failed(attempt, exc, log)
                    return
                result = None  # stopped for its cancel: whatever it raised on the way out
            except Exception as exc:
                if attempt.cancel_reason != "cancelled":
                    await self._finish_broken(attempt, exc, log)
                    return
                result = None
            finally:
                renewer.cancel()
            if attempt.cancel_reason == "shutdown":
                await self._release(attempt, log)
            elif attempt.cancel_reason == "lease_lost":
                metrics.LEASES_LOST.inc()
                log.warning("job abandoned, nothing written: {}", attempt.lost_because)
            elif attempt.cancel_reason == "cancelled":
                # Noticed before the outcome was written: even a finished result is dropped.
                await self._finish_cancelled(attempt, log)
            elif result is not None:
                await self._finish_complete(attempt, result, log)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            self._attempts.pop(job.id, None)
            metrics.JOBS_IN_FLIGHT.dec()
            metrics.STAGE_DURATION.labels("total").observe(time.monotonic() - started)

    async def _run_step(self, attempt: _Attempt, log) -> JobResult:
        if attempt.claim.unreadable is not None:
            # Retrying cannot make the row readable: fail it now, under the lease.
            raise JobFailed(f"the job row cannot be read: {attempt.claim.unreadable}", "bad_row")
        reporter = _ProgressReporter(
            self._store,
            attempt.claim,
            lambda: self._lose(attempt, "the lease was taken over by another worker", log),
            log,
            on_cancel=lambda: self.request_cancel(attempt.claim.job.id, "renewal"),
        )
        context = _JobContext(
            self._store,
            attempt,
            reporter,
            lambda: self._lose(attempt, "the lease was taken over by another worker", log),
            log,
        )
        cancelled = False
        try:
            if self._job_deadline is None:
                return await self._step(attempt.claim.job, context)
            try:
                async with asyncio.timeout(self._job_deadline):
                    return await self._step(attempt.claim.job, context)
            except TimeoutError:
                raise JobFailed(
                    f"job took longer than its {self._job_deadline:.0f} s limit", "timeout"
                ) from None
        except asyncio.CancelledError:
            cancelled = True
            raise
        finally:
            await reporter.close(abandon=cancelled)

    def _lose(self, attempt: _Attempt, because: str, log) -> None:
        if attempt.cancel_reason is None:
            attempt.lost_because = because
            log.warning("lease lost: {}", because)
        attempt.cancel("lease_lost")

    async def _keep_lease(self, attempt: _Attempt, log) -> None:
        lease = self._settings.worker_lease_seconds
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_interval)
            try:
                held = await self._store.heartbeat(attempt.claim)
            except StoreError as exc:
                silent_for = time.monotonic() - last_renewed
                log.warning(
                    "lease renewal failed ({:.0f} s since the last one): {}", silent_for, exc
                )
                if silent_for + self.renew_interval >= lease:
                    # By the next try the lease will have expired and the rescuer may already
                    # have handed the job to another worker: stop now rather than race it.
                    self._lose(
                        attempt, f"the lease could not be renewed for {silent_for:.0f} s", log
                    )
                    return
                continue
            if held is None:  # held, but a cancel was requested: stop the work
                self.request_cancel(attempt.claim.job.id, "renewal")
            elif not held:
                self._lose(attempt, "the lease was taken over by another worker", log)
                return
            last_renewed = time.monotonic()

    async def _write(self, operation: str, call: Callable[[], Awaitable[object]], log) -> object:
        """An outcome write, retried while the lease can still be ours."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(StoreError),
            stop=stop_after_delay(self._settings.worker_lease_seconds),
            wait=wait_exponential_jitter(multiplier=0.2, max=5),
            reraise=True,
        )
        try:
            async for try_ in retrying:
                with try_:
                    return await call()
        except StoreError as exc:
            metrics.DB_ERRORS.labels(operation).inc()
            log.error(
                "could not record the outcome ({}); the lease will expire and the job will be "
                "rescued",
                exc,
            )
            raise
        return None  # unreachable: AsyncRetrying either returns or raises

    async def _finish_complete(self, attempt: _Attempt, result: JobResult, log) -> None:
        try:
            held = await self._write(
                "complete",
                lambda: self._completer.complete(
                    attempt.claim, result.image_url, result.thumbnail_url
                ),
                log,
            )
        except StoreError:
            return
        if held:
            metrics.JOBS_COMPLETED.inc()
            log.info("job complete: {}", result.image_url)
        else:
            metrics.LEASES_LOST.inc()
            log.warning("job finished but its lease was lost meanwhile; result discarded")

    async def _finish_failed(self, attempt: _Attempt, exc: JobFailed, log) -> None:
        message = redact(exc.message)
        try:
            held = await self._write("fail", lambda: self._store.fail(attempt.claim, message), log)
        except StoreError:
            return
        if held:
            metrics.JOBS_FAILED.labels(exc.reason).inc()
            log.warning("job failed ({}): {}", exc.reason, message)
        else:
            metrics.LEASES_LOST.inc()
            log.warning("job failed but its lease was lost meanwhile; nothing written")

    async def _finish_broken(self, attempt: _Attempt, exc: Exception, log) -> None:
        detail = redact(
            one_line(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        )
        message = f"attempt {attempt.claim.job.attempts} broke unexpectedly ({detail[:300]})"
        delay = min(RETRY_BACKOFF_BASE**attempt.claim.job.attempts, RETRY_BACKOFF_MAX)
        log.opt(exception=exc).error("job attempt broke unexpectedly")
        try:
            status = await self._write(
                "retry", lambda: self._store.retry(attempt.claim, message, delay), log
            )
        except StoreError:
            return
        if status == "failed":
            metrics.JOBS_FAILED.labels("internal_error").inc()
            log.warning("job failed for good after {} attempts", attempt.claim.job.attempts)
        elif status == "pending":
            metrics.JOBS_RETRIED.inc()
            log.info("job will be retried in {:.0f} s", delay)
        elif status == "cancelled":  # its cancel was requested meanwhile: not retried
            metrics.JOBS_CANCELLED.inc()
            log.info("job cancelled (a cancel was requested; not retried)")
        else:
            metrics.LEASES_LOST.inc()

    async def _finish_cancelled(self, attempt: _Attempt, log) -> None:
        try:
            held = await self._write(
                "mark_cancelled", lambda: self._store.mark_cancelled(attempt.claim), log
            )
        except StoreError:
            return  # the lease expires; rescue ends the job cancelled (its cancel is recorded)
        if held:
            metrics.JOBS_CANCELLED.inc()
            log.info("job cancelled")
        else:
            metrics.LEASES_LOST.inc()
            log.warning("job stopped for its cancel, but its lease was lost meanwhile")

    async def _release(self, attempt: _Attempt, log) -> None:
        try:
            # At shutdown there is no time for long retries: the lease expiry is the safety net.
            async with asyncio.timeout(10):
                released = await self._store.release(attempt.claim)
        except (StoreError, TimeoutError) as exc:
            log.warning("could not release the job at shutdown ({}); it will be rescued", exc)
            return
        if released:
            metrics.JOBS_RELEASED.inc()
            log.info("job released back to pending for another worker")
