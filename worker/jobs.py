"""The job as the worker sees it (a row of ``public.jobs``), and the shape of the work done on it.

The engine runs a ``Step`` for each claimed job; the image pipeline is the production step.
Both sides depend on these types, so they live here, below both.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    prompt: str
    model: str | None
    aspect_ratio: str
    user_id: str | None
    attempts: int
    created_at: datetime | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        created = row.get("created_at")
        return cls(
            id=str(row["id"]),
            prompt=row.get("prompt") or "",
            model=row.get("model"),
            aspect_ratio=row.get("aspect_ratio") or "1:1",
            user_id=str(row["user_id"]) if row.get("user_id") else None,
            attempts=int(row.get("attempts") or 0),
            created_at=datetime.fromisoformat(created) if isinstance(created, str) else created,
        )


@dataclass(frozen=True, slots=True)
class JobResult:
    image_url: str
    thumbnail_url: str


# Reports a job's progress (0-100); the work never waits on the write.
Progress = Callable[[int], Awaitable[None]]
# The work done for one claimed job: ``step(job, progress) -> JobResult``.
Step = Callable[[Job, Progress], Awaitable[JobResult]]
