"""What the demo watches and narrates: every job's row and the worker's Realtime state, one
printed line per change, and the live table on a terminal.

The jobs are read from the table (what the app would see); the worker's state only through its
``status()`` snapshot, never its internals.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    import asyncpg

    from devstack.demo.samples import SampleJob
    from devstack.stack import DevStack
    from worker.engine.status import WorkerStatus

# The worker claims a catch-up right after recovery and again this long after (RealtimeWakeups).
CATCHUP_WINDOW = timedelta(seconds=3.5)

# -- what the demo knows about each job -------------------------------------------------------

_GEN_TOKEN = re.compile(r"\s*\[gen:[^\]]*\]")
TERMINAL = ("complete", "failed", "cancelled")


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
    cancel_requested_at: datetime | None = None
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
        return seconds_between(self.created_at, self.started_at)

    @property
    def duration(self) -> float | None:
        return seconds_between(self.started_at, self.completed_at)

    def problem(self) -> str | None:
        """Why this job did not end as designed, or None."""
        sample = self.sample
        if sample is None:
            return None
        if sample.cancel_after is not None:
            if self.status != "cancelled":
                return f"is {self.status}, expected cancelled ({sample.note})"
            if self.image_url or self.thumbnail_url:
                return "is cancelled but has an image: something was uploaded"
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


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start and end else None


def now() -> datetime:
    return datetime.now(UTC)


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


JOB_COLUMNS = (
    "id, prompt, model, aspect_ratio, status, progress, claim_trigger, attempts, error_message, "
    "image_url, thumbnail_url, created_at, updated_at, started_at, completed_at, replayed_at, "
    "cancel_requested_at"
)

# -- watching: jobs and Realtime, narrated ------------------------------------------------------

STATE_STYLE = {
    "pending": "dim", "running": "yellow", "complete": "green", "failed": "red",
    "cancelled": "magenta",
}  # fmt: skip


class Monitor:
    """Polls the jobs table and the worker's Realtime state, prints one line per change and
    keeps what the summary, the report and the verdict need.

    Reading the table (not the worker's internals) means the demo sees what the app would see;
    the worker itself is seen through ``worker_status`` (``Worker.status``), a snapshot.
    """

    def __init__(
        self,
        console: Console,
        stack: DevStack,
        worker_status: Callable[[], WorkerStatus],
        t0: datetime,
        poll_interval: float,
    ) -> None:
        self.console = console
        self.stack = stack
        self.worker_status = worker_status
        self.t0 = t0
        self.poll_interval = poll_interval  # the worker's fallback poll while Realtime is down
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
        self._lines.append((at or now(), text))

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
        job.cancel_requested_at = row["cancel_requested_at"]
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
            pickup = fmt_seconds(seconds_between(job.requeued_at or job.created_at, job.started_at))
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
        if job.status == "cancelled":
            stopped = seconds_between(job.cancel_requested_at, job.completed_at)
            return (
                f"[magenta]cancelled[/] after {fmt_seconds(job.duration)} of work: the worker "
                f"stopped it {fmt_seconds(stopped)} after the request, nothing uploaded"
            )
        text = f"[green]complete[/] in {fmt_seconds(job.duration)}"
        if job.generator_calls > 1:
            text += f" [dim](after {job.generator_calls} generator calls)[/]"
        return text

    # -- Realtime

    def watch_realtime(self) -> None:
        realtime = self.worker_status().realtime
        if realtime is None:
            return
        if realtime.rebuilds != self._rebuilds:
            self._rebuilds = realtime.rebuilds
            self.say("realtime: the watchdog rebuilt the client")
        state = realtime.state
        if state != self.realtime_state:
            # When it changed, not when we looked: a catch-up claim can follow within
            # milliseconds, and the lines should come in that order.
            at = now() - timedelta(seconds=time.monotonic() - realtime.since)
            self.realtime_state = state
            self.realtime_events.append((at, state))
            self._narrate_realtime(state, at)
        recovered = self.recovered_at
        if recovered and not self.catchup_reported and now() - recovered >= CATCHUP_WINDOW:
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
                f"{self.poll_interval:g} s",
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
        elapsed = (now() - self.t0).total_seconds()
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
            time_cell = fmt_seconds(job.duration if job.status in TERMINAL else None)
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
