"""The job as the worker sees it: a row of ``public.jobs``."""

from __future__ import annotations

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
