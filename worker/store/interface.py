"""What the engine needs from a database: the ``JobStore`` interface and the values it trades in.

Two implementations: ``PostgrestStore`` (production: SQL functions of the migrations through
Supabase's REST API) and ``InMemoryStore`` (fast unit tests of the engine, with no server). Every
state change is one atomic, lease-guarded operation; an operation that needs the lease answers
False (or None) when the caller no longer holds it, and never writes in that case.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from worker.jobs import Job


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


@dataclass(frozen=True, slots=True)
class RescuedJob:
    id: str
    status: str  # "pending" (returned to the queue) or "failed" (out of attempts)
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

    async def heartbeat(self, claim: ClaimedJob, progress: int | None = None) -> bool:
        """Extend the lease (and set progress). False: the lease is lost, stop working."""
        ...

    async def complete_many(self, results: list[Completion]) -> dict[str, bool]:
        """Complete several jobs in one round trip; per job id, False when its lease was lost."""
        ...

    async def fail(self, claim: ClaimedJob, error_message: str) -> bool:
        """Fail the job for good. False: the lease was lost."""
        ...

    async def retry(self, claim: ClaimedJob, error_message: str, delay: float) -> str | None:
        """Back to pending after ``delay`` (or failed when out of attempts); None: lease lost."""
        ...

    async def release(self, claim: ClaimedJob) -> bool:
        """Back to pending at once, the attempt not counted (shutdown). False: lease lost."""
        ...

    async def rescue(self, limit: int = 500) -> list[RescuedJob]:
        """Jobs whose lease expired: back to pending, or failed when out of attempts."""
        ...

    async def ping(self) -> None:
        """The cheapest round trip that proves the database answers; raises ``StoreError``."""
        ...
