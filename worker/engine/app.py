"""One worker process: wires wake-up sources → dispatcher → executor → completer → store, and
supervises them.

    Worker(settings).run()   # until stop() (SIGTERM/SIGINT in the CLI); returns the exit code

Every long-running part is a service task the app starts and watches: a service that ends on
its own is a bug, so the worker shuts down cleanly and exits 1 for the orchestrator to restart
it. Shutdown: stop claiming, let in-flight jobs finish for up to WORKER_SHUTDOWN_GRACE_SECONDS,
then cancel the rest and release them to ``pending`` at once for another worker. Readers of the
worker's state (health, the demo) get ``status()``, an immutable snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from loguru import logger

from worker.engine.cancels import watch_cancels
from worker.engine.completer import Completer
from worker.engine.dispatcher import Dispatcher
from worker.engine.executor import Executor
from worker.engine.rescuer import rescue_forever
from worker.engine.status import RealtimeStatus, WorkerStatus
from worker.jobs import Step
from worker.observability.redact import redact
from worker.settings import Settings, WorkerMode
from worker.store import JobStore
from worker.wakeups.poller import poll_forever

# Services that must outlive the drain of in-flight jobs: their jobs still need them.
_DRAIN_SERVICES = ("completer", "health")


class Worker:
    def __init__(
        self,
        settings: Settings,
        step: Step | None = None,
        *,
        job_deadline: float | None = None,
        store: JobStore | None = None,
    ) -> None:
        self.settings = settings
        self._step = step
        self._job_deadline = job_deadline
        self._stop = asyncio.Event()
        self.started_at = time.monotonic()
        if store is None:
            from worker.store.postgrest import PostgrestStore

            store = PostgrestStore(settings)
        self.store = store
        self.dispatcher: Dispatcher | None = None
        self.executor: Executor | None = None
        self.realtime = None  # the Realtime wake-up source, in realtime mode
        self.ready = asyncio.Event()  # set once the worker claims work
        self.exit_code = 0
        self._log = logger.bind(worker_id=settings.worker_id)

    def stop(self) -> None:
        """Begin a graceful shutdown (idempotent)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def status(self) -> WorkerStatus:
        s, dispatcher, realtime = self.settings, self.dispatcher, self.realtime
        longest_gap = s.worker_poll_interval_seconds
        if realtime is not None:
            longest_gap = max(longest_gap, realtime.SAFETY_NET_INTERVAL)
        return WorkerStatus(
            worker_id=s.worker_id,
            mode=str(s.worker_mode),
            concurrency=s.worker_concurrency,
            started_at=self.started_at,
            longest_wake_gap=longest_gap,
            ready=self.ready.is_set() and dispatcher is not None,
            stopping=self.stopping,
            failed=self.exit_code != 0,
            in_flight=dispatcher.in_flight if dispatcher else 0,
            dispatcher_alive_at=dispatcher.loop_alive_at if dispatcher else None,
            last_claim_at=dispatcher.last_claim_at if dispatcher else None,
            last_claim_error=dispatcher.last_claim_error if dispatcher else None,
            claimed_by_trigger=dict(dispatcher.claimed_by_trigger) if dispatcher else {},
            realtime=RealtimeStatus(
                state=str(realtime.state),
                since=realtime.state_since,
                rebuilds=realtime.rebuilds,
                events=realtime.events,
            )
            if realtime is not None
            else None,
        )

    async def run(self) -> int:
        s = self.settings
        redact.add(s.secrets())
        pipeline = None
        step = self._step
        job_deadline = self._job_deadline
        if step is None:
            from worker.pipeline.step import ImagePipeline

            pipeline = ImagePipeline(s)
            step = pipeline
            job_deadline = job_deadline or pipeline.deadline
        await self.store.open()
        completer = Completer(self.store)
        self.executor = executor = Executor(
            s, self.store, step, completer, job_deadline=job_deadline
        )
        self.dispatcher = dispatcher = Dispatcher(
            self.store, executor, s.worker_concurrency, s.worker_id
        )
        self._log.info(
            "worker starting: mode={} concurrency={} lease={:g}s table=jobs",
            s.worker_mode,
            s.worker_concurrency,
            s.worker_lease_seconds,
        )
        services: dict[str, asyncio.Task[None]] = {}
        services["completer"] = asyncio.create_task(completer.run(), name="completer")
        services["dispatcher"] = asyncio.create_task(dispatcher.run(), name="dispatcher")
        services["rescuer"] = asyncio.create_task(
            rescue_forever(self.store, s.worker_lease_seconds, dispatcher.wake, s.worker_id),
            name="rescuer",
        )
        services["cancels"] = asyncio.create_task(
            watch_cancels(self.store, executor, s.worker_poll_interval_seconds, s.worker_id),
            name="cancels",
        )
        if s.worker_mode == WorkerMode.REALTIME:
            from worker.wakeups.realtime import RealtimeWakeups

            self.realtime = RealtimeWakeups(
                s,
                dispatcher.wake,
                on_cancel=lambda job_id: executor.request_cancel(job_id, "realtime"),
            )
            services["realtime"] = asyncio.create_task(self.realtime.run(), name="realtime")
            schedule = self.realtime.poll_schedule
        else:

            def schedule() -> tuple[float, str]:
                return s.worker_poll_interval_seconds, "poll"

        services["poller"] = asyncio.create_task(
            poll_forever(dispatcher.wake, schedule), name="poller"
        )
        if s.health_port:
            from worker.observability.health import serve_health

            services["health"] = asyncio.create_task(
                serve_health(s, self.status, self.store.ping), name="health"
            )
        dispatcher.wake("poll")  # the backlog: jobs inserted before we started
        self.ready.set()

        stop_wait = asyncio.create_task(self._stop.wait())
        done, _ = await asyncio.wait([stop_wait, *services.values()], return_when="FIRST_COMPLETED")
        for task in done:
            if task is not stop_wait:
                # A service must never end on its own: that is a bug. Shut down cleanly and
                # exit non-zero so the orchestrator restarts us.
                self._log.opt(exception=task.exception() if not task.cancelled() else None).error(
                    "{} stopped unexpectedly; shutting down", task.get_name()
                )
                self.exit_code = 1
        stop_wait.cancel()
        await self._shutdown(dispatcher, executor, services)
        if pipeline is not None:
            await pipeline.aclose()
        await self.store.close()
        self._log.info("worker stopped")
        return self.exit_code

    async def _shutdown(
        self, dispatcher: Dispatcher, executor: Executor, services: dict[str, asyncio.Task[None]]
    ) -> None:
        grace = self.settings.worker_shutdown_grace_seconds
        dispatcher.stop_claiming()
        if self.realtime is not None:
            await self.realtime.close()
        for name, task in services.items():
            if name not in _DRAIN_SERVICES:
                task.cancel()
        in_flight = dispatcher.tasks()
        if in_flight:
            self._log.info("waiting up to {:g} s for {} job(s)", grace, len(in_flight))
            _, pending = await asyncio.wait(in_flight, timeout=grace)
            if pending:
                self._log.warning("releasing {} unfinished job(s)", len(pending))
                executor.cancel_all("shutdown")
                await asyncio.wait(pending, timeout=15)
        for task in services.values():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
