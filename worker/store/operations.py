"""The operators' database calls (``replay``, ``status``, ``cancel``), on a connection of their own.

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
from worker.store.interface import StoreError
from worker.store.postgrest import CALL_TIMEOUT_SECONDS, PostgrestConnection

# What cancel_job raises for another user's job or an unknown id (HTTP 404 through PostgREST).
NO_SUCH_JOB_CODE = "PT404"


@dataclass(frozen=True, slots=True)
class ReplayCriteria:
    job_ids: tuple[str, ...] = ()
    stuck_for: float | None = None
    failed: bool = False
    force: bool = False
    cancelled: bool = False  # also cancelled jobs (`replay --cancelled`), named or not

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
        """The first ``limit`` jobs by creation that replay would consider, every one of them
        even behind PostgREST's max-rows (paged, ``rpc_rows``), the oldest in their state
        first."""
        rows = await self._db.rpc_rows(
            "replay_candidates",
            functions.REPLAY_CANDIDATES,
            {
                "p_ids": list(criteria.job_ids) or None,
                "p_stuck_seconds": criteria.stuck_for,
                "p_failed": criteria.failed,
                "p_limit": limit,
                # Sent only when asked for, so a database without it (before the tenancy
                # migration) still answers every other replay.
                **({"p_cancelled": True} if criteria.cancelled else {}),
            },
            limit=limit,
        )
        rows.sort(key=lambda r: -(r.get("age_seconds") or 0.0))  # stable: id order for ties
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
                **({"p_cancelled": True} if criteria.cancelled else {}),
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

    async def dashboard(
        self, list_limit: int, window_seconds: int, count_cap: int
    ) -> dict[str, Any]:
        """What ``image-worker dashboard`` shows, as one document (see the migration)."""
        return await self._db.rpc(
            "dashboard",
            functions.DASHBOARD,
            {
                "p_list_limit": list_limit,
                "p_window_seconds": window_seconds,
                "p_count_cap": count_cap,
            },
        )

    async def cancel(self, job_id: str) -> str | None:
        """``cancel_job`` as the service role: the job's status after the call (``cancelled``;
        ``running`` with its cancel requested; or its unchanged final status). None: no such
        job."""
        try:
            return await self._db.rpc("cancel", functions.CANCEL_JOB, {"job_id": job_id})
        except StoreError as exc:
            if exc.detail.startswith(f"{NO_SUCH_JOB_CODE}:"):
                return None
            raise
