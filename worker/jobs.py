"""The job as the worker sees it (a row of ``public.jobs``), and the shape of the work done on it.

The engine runs a ``Step`` for each claimed job; the image pipeline is the production step.
Both sides depend on these types, so they live here, below both.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable


class UnreadableRow(ValueError):
    """A job row holding a value the worker cannot use: the database accepts more than Python
    reads (``created_at = 'infinity'``, years past 9999), and a backend may write what the app's
    insert path never would. The job fails with this message; the worker goes on."""

    def __init__(self, column: str, value: object, expected: str) -> None:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:59] + "…"
        super().__init__(f"{column} {shown} is not {expected}")
        self.column = column


def _text(row: dict[str, Any], column: str) -> str | None:
    value = row.get(column)
    if value is None or isinstance(value, str):
        return value
    raise UnreadableRow(column, value, "text")


def _count(row: dict[str, Any], column: str) -> int:
    value = row.get(column)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
        return value
    raise UnreadableRow(column, value, "a count")


def _timestamp(row: dict[str, Any], column: str) -> datetime | None:
    value = row.get(column)
    if value is None:
        return None
    parsed = value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(value)
    # Aware only: the engine subtracts it from the current UTC time.
    if isinstance(parsed, datetime) and parsed.tzinfo is not None:
        return parsed
    raise UnreadableRow(column, value, "a date and time the worker can read")


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    prompt: str
    model: str | None
    aspect_ratio: str
    user_id: str | None
    attempts: int
    created_at: datetime | None = None
    # The provider's handle of a generation an earlier attempt started (contract v2, "Never
    # paying twice"): resumed instead of paying for a new one. Worker bookkeeping, never user input.
    generation_ref: dict[str, Any] | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=str(row["id"]),
            prompt=_text(row, "prompt") or "",
            model=_text(row, "model"),
            aspect_ratio=_text(row, "aspect_ratio") or "1:1",
            user_id=_text(row, "user_id") or None,
            attempts=_count(row, "attempts"),
            created_at=_timestamp(row, "created_at"),
            generation_ref=ref if isinstance(ref := row.get("generation_ref"), dict) else None,
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    image_url: str
    thumbnail_url: str


# Reports a job's progress (0-100); the work never waits on the write.
Progress = Callable[[int], Awaitable[None]]


@runtime_checkable
class JobContext(Protocol):
    """What the engine hands a running step as its ``progress``: callable as ``Progress``, and
    the job's generation handle kept under the lease. A step that needs more than progress
    checks ``isinstance(progress, JobContext)`` (tests may pass a plain function)."""

    async def __call__(self, value: int) -> None: ...

    @property
    def stop_reason(self) -> str | None:
        """Why the step is being cancelled, once it is: "shutdown" (the job is released with
        its handle), "lease_lost", or another reason of the engine's."""
        ...

    async def save_generation_ref(self, ref: dict[str, Any] | None) -> bool | None:
        """Store the handle (None: forget it). False: the lease is lost (the engine stops the
        job); None: the database did not answer, nothing is known."""
        ...

    async def generation_ref_in_use(self, ref_id: str) -> bool | None:
        """Whether the job still refers to generation ``ref_id`` and will run again (another
        worker will resume it); None when the database did not answer."""
        ...


# The work done for one claimed job: ``step(job, progress) -> JobResult``.
Step = Callable[[Job, Progress], Awaitable[JobResult]]
