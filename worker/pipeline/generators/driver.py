"""Running one provider for one job: resume or start, wait, retry, honour throttling, cancel.

``Generator.generate(job, width, height, context)``:

1. **Resume first.** A handle in the job's ``generation_ref`` (stored by an earlier attempt, in
   any process) is followed, not replaced: no new generation request is sent unless the provider
   says the handle failed, was cancelled or is gone (``HandleGone``).
2. **Store before waiting.** When ``start`` hands back a handle, it is written to
   ``generation_ref`` under the lease before the first poll; a new result URL (the generic
   kind's 303 to another place) is written too.
3. **Attempts.** ``len(GENERATOR_RETRY_DELAYS) + 1`` attempts of at most
   ``GENERATOR_TIMEOUT_SECONDS`` each, polling included. A transient failure keeps the handle:
   the next attempt resumes it. The wait between attempts is the configured delay, or the
   provider's ``Retry-After`` when longer, capped by one attempt's deadline.
4. **Throttling.** A throttled generation request closes this replica's ``ThrottleGate``: every
   job's next generation request waits for it.
5. **Cancelling.** When the job is stopped (cancelled, lease lost, deadline passed) or fails for
   good while a generation runs, the provider's cancel call is fired (shielded, with a short
   timeout) unless someone will resume it: a job released at shutdown keeps its handle for the
   next worker, and after a lost lease the job is asked whether it still refers to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable
from typing import Any

from loguru import logger

from worker.errors import JobFailed
from worker.jobs import Job
from worker.observability import metrics
from worker.pipeline.generators.base import (
    Finished,
    GeneratedImage,
    GenerationFailed,
    GenerationRequest,
    GeneratorContext,
    Handle,
    HandleGone,
    Provider,
    ProviderTransient,
    Throttled,
)
from worker.pipeline.generators.throttle import ThrottleGate
from worker.settings import Settings

CANCEL_TIMEOUT_SECONDS = 5.0
# The shortest time between two polls of the generic kind's result URL: Modal's legs block up
# to 150 s, but a server that answers 303 at once must not be hammered.
MIN_LEG_SECONDS = 0.25

# Provider cancel calls run to completion even when the job's task is cancelled again.
_background: set[asyncio.Task[Any]] = set()


class Generator:
    """One provider, driven for any number of jobs at once (one per replica)."""

    def __init__(self, settings: Settings, provider: Provider) -> None:
        self.provider = provider
        self.kind = provider.kind
        self._default_model = settings.generator_default_model
        self._timeout = settings.generator_timeout_seconds
        self._delays = settings.generator_retry_delays
        self.gate = ThrottleGate()

    async def aclose(self) -> None:
        await self.provider.aclose()

    async def generate(
        self, job: Job, width: int, height: int, context: GeneratorContext
    ) -> GeneratedImage:
        request = GenerationRequest(
            job_id=job.id,
            prompt=job.prompt,
            model=job.model or self._default_model,
            aspect_ratio=job.aspect_ratio,
            user_id=job.user_id,
            width=width,
            height=height,
        )
        self.provider.check(request)
        return await _Run(self, request, context, job.generation_ref).go()

    def unavailable(self, last: ProviderTransient | None, attempts: int) -> str:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if last is None:
            return f"generator unavailable after {tries}"
        if last.kind == "stopped":
            return (
                "generator endpoint is stopped (Modal: app for invoked web endpoint is stopped) "
                f"after {tries}"
            )
        if last.kind == "timeout":
            return f"generator timed out after {tries} ({self._timeout:g} s each)"
        if last.kind == "connection":
            return f"generator unreachable after {tries} (last: {last.detail})"
        return f"generator unavailable after {tries} (last: {last.detail})"


class _Run:
    """One job's generation: its handle, whether the row holds it, whether it still runs."""

    def __init__(
        self,
        generator: Generator,
        request: GenerationRequest,
        context: GeneratorContext,
        stored: dict[str, Any] | None,
    ) -> None:
        self.g = generator
        self.p = generator.provider
        self.request = request
        self.context = context
        self.log = logger.bind(job_id=request.job_id)
        self.handle: Handle | None = None
        self.saved = False  # the row holds self.handle
        self.live = False  # self.handle names a generation that may still be running
        self.fresh = False  # self.handle was started by this attempt (not resumed)
        handle = Handle.from_ref(stored) if stored is not None else None
        if handle is not None and handle.kind == self.p.kind and self.p.accepts(handle):
            self.handle, self.saved, self.live = handle, True, True
        elif stored is not None:
            self.log.warning("ignoring a stored generation handle this worker cannot resume")

    async def go(self) -> GeneratedImage:
        with logger.contextualize(job_id=self.request.job_id):
            return await self._go()

    async def _go(self) -> GeneratedImage:
        g = self.g
        attempts = len(g._delays) + 1
        last: ProviderTransient | None = None
        if self.handle is not None:
            metrics.GENERATIONS_RESUMED.labels(g.kind).inc()
            self.log.info("resuming generation {} (no new generation request)", self.handle.id)
        try:
            for number in range(1, attempts + 1):
                if number > 1:
                    wait = self._pause(number, last)
                    self.log.warning(
                        "generator attempt {}/{} failed ({}); retrying in {:g} s",
                        number - 1,
                        attempts,
                        last,
                        wait,
                    )
                    await asyncio.sleep(wait)
                try:
                    started = time.monotonic()
                    finished = await self._attempt()
                    image = await self.p.result(finished, self.request)
                    self.log.info(
                        "generator attempt {}/{} succeeded in {:.2f}s ({}, {})",
                        number,
                        attempts,
                        time.monotonic() - started,
                        image.source,
                        image.format or "link",
                    )
                    return image
                except HandleGone as exc:
                    # The finished generation's output is gone (deleted after its retention):
                    # the only way to an image is a new generation.
                    last = ProviderTransient("gone", f"generation lost: {exc.detail}")
                    await self._forget(exc.detail)
                except Throttled as exc:
                    if exc.creation and exc.retry_after:
                        g.gate.close(exc.retry_after)
                    metrics.GENERATOR_THROTTLED.labels(g.kind).inc()
                    last = exc
                except ProviderTransient as exc:
                    last = exc
        except asyncio.CancelledError:
            await self._stopped()
            raise
        except GenerationFailed:
            self.live = False  # the provider ended it: nothing to cancel
            raise
        except JobFailed:
            await self._cancel_if_live("the job failed")
            raise
        await self._cancel_if_live("the generation attempts ran out")
        raise JobFailed(g.unavailable(last, attempts), "generator_unavailable")

    def _pause(self, number: int, last: ProviderTransient | None) -> float:
        """The wait before attempt ``number``: the configured delay, or the provider's
        Retry-After when it asks for longer, never more than one attempt's deadline."""
        delays = self.g._delays
        wait = delays[min(number - 1, len(delays)) - 1]
        if last is not None and last.retry_after is not None:
            wait = max(wait, last.retry_after)
        return min(wait, self.g._timeout)

    async def _attempt(self) -> Finished:
        """Start (or resume) and wait for the generation, under one attempt's deadline."""
        if self.handle is None and (closed := self.g.gate.remaining) > 0:
            self.log.info("provider is throttling this replica: waiting {:.1f} s", closed)
            await self.g.gate.wait(self.g._timeout)
        self.fresh = False  # a handle kept from an earlier attempt is not this attempt's
        try:
            async with asyncio.timeout(self.g._timeout):
                restarted = False
                while True:
                    if self.handle is None:
                        metrics.GENERATION_REQUESTS.labels(self.g.kind).inc()
                        began = await self.p.start(self.request)
                        if isinstance(began, Finished):
                            return began
                        await self._remember(began, fresh=True)
                    try:
                        return await self._wait()
                    except HandleGone as exc:
                        if self.fresh or restarted:
                            # Started by this very attempt and gone already: not a handle to
                            # give up on at once, an attempt that failed.
                            await self._forget(exc.detail)
                            raise ProviderTransient(
                                "gone", f"generation lost: {exc.detail}"
                            ) from None
                        await self._forget(exc.detail)
                        restarted = True
        except TimeoutError:
            raise ProviderTransient("timeout", f"timed out after {self.g._timeout:g} s") from None

    async def _wait(self) -> Finished:
        polls = 0
        while True:
            assert self.handle is not None
            started = time.monotonic()
            step = await self.p.poll(self.handle, self.request)
            if isinstance(step, Finished):
                self.live = False
                return step
            if step.handle is not None and step.handle != self.handle:
                await self._remember(step.handle, fresh=self.fresh)
            elif not self.saved:
                await self._save()  # an earlier write did not get through: try again
            polls += 1
            pause = step.wait if step.wait is not None else self.p.poll_interval(polls)
            pause = max(pause, MIN_LEG_SECONDS - (time.monotonic() - started))
            if pause > 0:
                await asyncio.sleep(pause)

    async def _remember(self, handle: Handle, *, fresh: bool) -> None:
        self.handle, self.live, self.fresh, self.saved = handle, True, fresh, False
        await self._save()

    async def _save(self) -> None:
        assert self.handle is not None
        saved = await self.context.save(self.handle.to_ref())
        self.saved = saved is True
        if saved is False:
            # The lease is gone: the engine is stopping this job (and nobody else will resume
            # this generation, which never reached the row).
            self.log.warning("lease lost while storing generation {}", self.handle.id)

    async def _forget(self, why: str) -> None:
        if self.handle is not None:
            self.log.warning("generation {} is gone ({}); starting a new one", self.handle.id, why)
        self.handle, self.saved, self.live, self.fresh = None, False, False, False
        await self.context.save(None)

    async def _stopped(self) -> None:
        """The job's task is being cancelled: cancel the provider's generation unless whoever
        runs the job next resumes it."""
        handle, reason = self.handle, self.context.stop_reason
        if handle is None or not self.live or not self.p.can_cancel:
            return
        if self.saved and reason == "shutdown":
            self.log.info("released with its handle: generation {} left to resume", handle.id)
            return
        if self.saved and reason == "lease_lost":
            in_use = await _shielded(self.context.in_use(handle.id), "check the job's handle")
            if in_use is not False:
                self.log.info(
                    "lease lost; the job still refers to generation {}: left to resume",
                    handle.id,
                )
                return
        await self._cancel(f"the job was stopped ({reason or 'deadline'})")

    async def _cancel_if_live(self, why: str) -> None:
        if self.handle is not None and self.live and self.p.can_cancel:
            await self._cancel(why)

    async def _cancel(self, why: str) -> None:
        assert self.handle is not None
        handle = self.handle
        self.log.info("cancelling generation {} at the provider: {}", handle.id, why)
        metrics.PROVIDER_CANCELS.labels(self.g.kind).inc()
        await _shielded(self.p.cancel(handle), "cancel the generation")
        self.live = False


async def _shielded(call: Awaitable[Any], what: str) -> Any:
    """Run ``call`` to completion (at most ``CANCEL_TIMEOUT_SECONDS``) even if this task is
    cancelled again meanwhile; None if it failed or timed out."""

    async def bounded() -> Any:
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_SECONDS):
                return await call
        except Exception as exc:
            logger.warning("could not {}: {}", what, exc)
            return None

    task = asyncio.ensure_future(bounded())
    _background.add(task)
    task.add_done_callback(_background.discard)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({task})
    return task.result() if task.done() and not task.cancelled() else None
