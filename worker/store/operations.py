"""The operators' database calls (``replay``, ``status``), on a connection of their own.

Which jobs replay may touch is decided in SQL, and decided again inside the UPDATE itself, so a
job that completes between the listing and the change is left alone; ages are computed on the
database's clock, not the operator's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from worker.settings import Settings
from worker.store import functions
from worker.store.postgrest import CALL_TIMEOUT_SECONDS, PostgrestConnection


@dataclass(frozen=True, slots=True)
class ReplayCriteria:
    job_ids: tuple[str, ...] = ()
    stuck_for: float | None = None
    failed: bool = False
    force: bool = False

    @property
    def named(self) -> bool:
        return bool(self.job_ids)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A job replay looked at, as it was when listed."""

    id: str
    status: str
    attempts: int
    worker_id: str | None
    error_message: str | None
    age_seconds: float | None
    lease_seconds_left: float | None
    lease_live: bool
    eligible: bool  # replayable, given --force where the lease is live


@dataclass(frozen=True, slots=True)
class Replayed:
    id: str
    old_status: str
    attempts: int
    worker_id: str | None
    age_seconds: float | None


class OperatorQueries:
    def __init__(self, settings: Settings, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        self._db = PostgrestConnection(settings, connections=2, timeout=timeout)

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def replay_candidates(self, criteria: ReplayCriteria, limit: int) -> list[Candidate]:
        rows = await self._db.rpc(
            "replay_candidates",
            functions.REPLAY_CANDIDATES,
            {
                "p_ids": list(criteria.job_ids) or None,
                "p_stuck_seconds": criteria.stuck_for,
                "p_failed": criteria.failed,
                "p_limit": limit,
            },
        )
        return [
            Candidate(
                id=str(r["id"]),
                status=r["status"],
                attempts=int(r["attempts"]),
                worker_id=r.get("worker_id"),
                error_message=r.get("error_message"),
                age_seconds=r.get("age_seconds"),
                lease_seconds_left=r.get("lease_seconds_left"),
                lease_live=bool(r.get("lease_live")),
                eligible=bool(r.get("eligible")),
            )
            for r in rows or []
        ]

    async def replay(
        self, ids: Sequence[str], criteria: ReplayCriteria, reason: str
    ) -> list[Replayed]:
        rows = await self._db.rpc(
            "replay",
            functions.REPLAY,
            {
                "p_ids": list(ids),
                "p_named": criteria.named,
                "p_stuck_seconds": criteria.stuck_for,
                "p_failed": criteria.failed,
                "p_force": criteria.force,
                "p_reason": reason,
            },
        )
        return [
            Replayed(
                id=str(r["id"]),
                old_status=r["old_status"],
                attempts=int(r["attempts"]),
                worker_id=r.get("worker_id"),
                age_seconds=r.get("age_seconds"),
            )
            for r in rows or []
        ]

    async def status(self, list_limit: int) -> dict[str, Any]:
        return await self._db.rpc("status", functions.STATUS, {"p_list_limit": list_limit})
