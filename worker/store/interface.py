"""What the engine needs from a database: the ``JobStore`` interface and the values it trades in.

Two implementations: ``PostgrestStore`` (production: SQL functions of the migrations through
Supabase's REST API) and ``InMemoryStore`` (fast unit tests of the engine, with no server). Every
state change is one atomic, lease-guarded operation; an operation that needs the lease answers
False (or None) when the caller no longer holds it, and never writes in that case.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from loguru import logger

from worker.jobs import Job, UnreadableRow


class StoreError(Exception):
    """A database call failed or timed out; the call may or may not have taken effect."""

    def __init__(self, operation: str, detail: str) -> None:
        super().__init__(f"database call {operation} failed: {detail}")
        self.operation = operation
        self.detail = detail


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    job: Job
    lease_token: str
    # Set when the row holds a value the worker cannot read (``UnreadableRow``): ``job`` then
    # carries only the id and attempts, and the engine fails the job with this reason.
    unreadable: str | None = None


def claims_from_rows(rows: Iterable[dict[str, Any]]) -> list[ClaimedJob]:
    """The claims in a claim's answer, one per row, every store's one way to read them.

    A row with a value the worker cannot read is still a claim (its lease is ours): it comes
    back with ``unreadable`` set, so that the engine fails that one job through the normal,
    lease-guarded ``fail`` while the rest of the batch runs. Only a row without its id or lease
    token (which the SQL always returns) cannot be failed; it is left to the rescuer.
    """
    claims = []
    for row in rows:
        try:
            job_id, lease_token = str(row["id"]), str(row["lease_token"])
        except (KeyError, TypeError) as exc:
            logger.error("a claimed row has no {}; its lease will expire and be rescued", exc)
            continue
        try:
            claims.append(ClaimedJob(Job.from_row(row), lease_token))
        except Exception as exc:  # any value the worker cannot use: that job's fault, not ours
            reason = str(exc) if isinstance(exc, UnreadableRow) else f"{type(exc).__name__}: {exc}"
            attempts = row.get("attempts")
            placeholder = Job(
                id=job_id,
                prompt="",
                model=None,
                aspect_ratio="1:1",
                user_id=None,
                attempts=attempts if type(attempts) is int else 0,
            )
            claims.append(ClaimedJob(placeholder, lease_token, unreadable=reason))
    return claims


@dataclass(frozen=True, slots=True)
class RescuedJob:
    id: str
    status: str  # "pending" (returned to the queue), "failed" (out of attempts), "cancelled"
    attempts: int
    worker_id: str | None


# One finished job for ``complete_many``: the claim, the image URL, the thumbnail URL.
Completion = tuple[ClaimedJob, str, str]


class JobStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def claim(self, limit: int, trigger: str | None = None) -> list[ClaimedJob]:
        """Up to ``limit`` claimable jobs, now leased to this worker; ``trigger`` (what woke the
        claim: realtime, catchup, poll, sweep) is recorded on each."""
        ...

    async def heartbeat(self, claim: ClaimedJob, progress: int | None = None) -> bool | None:
        """Extend the lease (and set progress). True: held. False: the lease is lost, stop
        working. None: held, but a cancel was requested (``cancel_job``): stop working and end
        the job with ``mark_cancelled``."""
        ...

    async def complete_many(self, results: list[Completion]) -> dict[str, bool]:
        """Complete several jobs in one round trip; per job id, False when its lease was lost."""
        ...

    async def fail(self, claim: ClaimedJob, error_message: str) -> bool:
        """Fail the job for good. False: the lease was lost."""
        ...

    async def retry(self, claim: ClaimedJob, error_message: str, delay: float) -> str | None:
        """Back to pending after ``delay`` (or failed when out of attempts, or cancelled when a
        cancel was requested): the new status. None: lease lost."""
        ...

    async def release(self, claim: ClaimedJob) -> bool:
        """Back to pending at once, the attempt not counted (shutdown); cancelled instead when
        a cancel was requested. False: lease lost."""
        ...

    async def mark_cancelled(self, claim: ClaimedJob) -> bool:
        """The work was stopped after a cancel request: the job ends ``cancelled``. False: the
        lease was lost."""
        ...

    async def cancel_requested(self, job_ids: list[str]) -> list[str]:
        """Which of these running jobs have a cancel request (one read for all of them)."""
        ...

    async def set_generation_ref(self, claim: ClaimedJob, ref: dict[str, Any] | None) -> bool:
        """Record (None: forget) the provider's handle of the job's generation, kept through
        release and rescue so that the next attempt resumes it. False: the lease is lost."""
        ...

    async def generation_ref_in_use(self, job_id: str, ref_id: str) -> bool:
        """Whether the job will still run (pending, or running under any lease, not cancelled)
        and still refers to the generation ``ref_id``: then another worker resumes it. Needs
        no lease (asked after losing one)."""
        ...

    async def rescue(self, limit: int = 500) -> list[RescuedJob]:
        """Jobs whose lease expired: back to pending, or failed when out of attempts."""
        ...

    async def ping(self) -> None:
        """The cheapest round trip that proves the database answers; raises ``StoreError``."""
        ...
