"""An in-memory ``JobStore``: the engine's unit tests run on it in milliseconds, with no server.

It keeps the SQL functions' rules (``supabase/migrations``) in Python: claims are fair (highest
priority first, users take turns, oldest first within a user, users at ``max_running`` passed
over: ``limits``) and count an attempt; every lease-guarded call checks the lease token and
``running``; a completion or failure already written by the same holder answers True again
(idempotent for the holder); rescue returns expired leases to the queue or fails jobs out of
attempts; ``request_cancel`` is ``cancel_job`` (a running job's heartbeat then answers None,
and a retry, release or rescue ends it cancelled). The clock is ``time.monotonic`` unless a
test gives another.

Tests steer it like a misbehaving database: ``fail_next`` makes calls raise ``StoreError``,
``delay`` holds calls in flight, ``take_over`` hands a job's lease to another worker, ``calls``
counts what was asked; ``insert(..., extra={"created_at": "infinity"})`` gives a row a raw
column value, as a backend writing the table directly could.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from worker.jobs import Job
from worker.store.interface import (
    ClaimedJob,
    Completion,
    RescuedJob,
    StoreError,
    claims_from_rows,
)

# The user of jobs without user_id, and the key of the default limits row.
DEFAULT_USER = "00000000-0000-0000-0000-000000000000"


@dataclass
class StoredJob:
    id: str
    prompt: str
    model: str | None = None
    aspect_ratio: str = "1:1"
    user_id: str | None = None
    status: str = "pending"
    progress: int = 0
    attempts: int = 0
    image_url: str | None = None
    thumbnail_url: str | None = None
    error_message: str | None = None
    created: int = 0  # insertion order: "oldest first"
    run_after: float = 0.0
    worker_id: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    claim_trigger: str | None = None
    generation_ref: dict[str, Any] | None = None
    priority: int = 0
    cancel_requested_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class InMemoryStore:
    def __init__(
        self,
        *,
        worker_id: str = "memory-worker",
        lease_seconds: float = 60.0,
        max_attempts: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.clock = clock
        self.jobs: dict[str, StoredJob] = {}
        self.calls: Counter[str] = Counter()
        self.claim_limits: list[int] = []
        self._order = itertools.count()
        self._failures: dict[str, list[Exception]] = {}
        self._delays: dict[str, float] = {}
        self.opened = False
        # ``image_worker_limits.max_running`` by user (DEFAULT_USER: the default row); the
        # turns of the fair claim: when each (priority, user) queue was last served.
        self.limits: dict[str, int | None] = {}
        self._served: dict[tuple[int, str], int] = {}
        self._served_now: list[tuple[int, str]] = []
        self._turns = itertools.count()

    # --- steering, for tests

    def insert(self, prompt: str = "a prompt", **fields: Any) -> str:
        job_id = fields.pop("id", None) or str(uuid.uuid4())
        self.jobs[job_id] = StoredJob(
            id=job_id, prompt=prompt, created=next(self._order), run_after=self.clock(), **fields
        )
        return job_id

    def fail_next(self, operation: str, times: int = 1, error: Exception | None = None) -> None:
        """The next ``times`` calls of ``operation`` raise ``error`` (a ``StoreError`` unless
        told otherwise) without taking effect."""
        failures = self._failures.setdefault(operation, [])
        failures.extend(error or StoreError(operation, "injected failure") for _ in range(times))

    def delay(self, operation: str, seconds: float) -> None:
        """Calls of ``operation`` (``claim``, ``complete``) answer this long after taking effect
        (0 to stop)."""
        self._delays[operation] = seconds

    def take_over(self, job_id: str) -> None:
        """Another worker now holds the job's lease (as after a rescue and a new claim)."""
        job = self.jobs[job_id]
        job.lease_token = str(uuid.uuid4())
        job.worker_id = "another-worker"
        job.lease_expires_at = self.clock() + self.lease_seconds

    def by_status(self) -> Counter[str]:
        return Counter(job.status for job in self.jobs.values())

    # --- JobStore

    async def open(self) -> None:
        self.opened = True

    async def close(self) -> None:
        self.opened = False

    async def _enter(self, operation: str) -> None:
        self.calls[operation] += 1
        if failures := self._failures.get(operation):
            raise failures.pop(0)

    async def _answer(self, operation: str) -> None:
        """The statement has taken effect; its answer is on the way back (``delay``): the
        window in which a real database has moved on while the caller still waits."""
        if delay := self._delays.get(operation):
            await asyncio.sleep(delay)

    def _held(self, claim: ClaimedJob) -> StoredJob | None:
        job = self.jobs.get(claim.job.id)
        if job is None or job.lease_token != claim.lease_token or job.status != "running":
            return None
        return job

    async def claim(self, limit: int, trigger: str | None = None) -> list[ClaimedJob]:
        await self._enter("claim")
        self.claim_limits.append(limit)
        now = self.clock()
        ready = self._fair_pick(limit, now)
        claims = []
        for job in ready:
            job.status, job.progress = "running", 10
            job.attempts += 1
            job.worker_id, job.claim_trigger = self.worker_id, trigger
            job.lease_token = str(uuid.uuid4())
            job.lease_expires_at = now + self.lease_seconds
            # Read the way PostgrestStore reads the SQL's rows; ``extra`` holds raw column
            # values a test gives the row (``{"created_at": "infinity"}``: a row the worker
            # cannot read).
            row = {**asdict(_as_job(job)), **job.extra, "lease_token": job.lease_token}
            claims.extend(claims_from_rows([row]))
        await self._answer("claim")
        return claims

    def _fair_pick(self, limit: int, now: float) -> list[StoredJob]:
        """The SQL claim's order: highest priority first; within a priority users take turns
        (the queue served least recently first); within a user oldest first; a user at
        max_running (``limits``) passed over."""
        queues: dict[tuple[int, str], list[StoredJob]] = {}
        ready = (j for j in self.jobs.values() if j.status == "pending" and j.run_after <= now)
        for job in sorted(ready, key=lambda j: j.created):
            queues.setdefault((job.priority, job.user_id or DEFAULT_USER), []).append(job)
        order = sorted(queues, key=lambda k: (-k[0], self._served.get(k, float("-inf")), k[1]))
        room: dict[str, float] = {}
        for _, user in order:
            limit_of = self.limits[user] if user in self.limits else self.limits.get(DEFAULT_USER)
            running = sum(
                1
                for j in self.jobs.values()
                if j.status == "running"
                and (j.user_id or DEFAULT_USER) == user
                and (j.lease_expires_at or 0.0) > now
            )
            room[user] = float("inf") if limit_of is None else limit_of - running
        picked: list[StoredJob] = []
        for level in sorted({k[0] for k in order}, reverse=True):
            level_queues = [k for k in order if k[0] == level]
            while len(picked) < limit:  # rounds: one job per queue of this priority each
                took = False
                for key in level_queues:
                    if len(picked) >= limit:
                        break
                    if queues[key] and room[key[1]] > 0:
                        picked.append(queues[key].pop(0))
                        room[key[1]] -= 1
                        took = True
                        if key not in self._served_now:
                            self._served_now.append(key)
                if not took:
                    break
        for key in self._served_now:
            self._served[key] = next(self._turns)
        self._served_now.clear()
        return picked

    def request_cancel(self, job_id: str) -> str:
        """``cancel_job``: pending → cancelled at once; running → the cancel is requested (the
        holder's heartbeat answers None, ``cancel_requested`` lists it); else unchanged."""
        job = self.jobs[job_id]
        if job.status == "pending":
            job.status, job.cancel_requested_at = "cancelled", self.clock()
            job.generation_ref = None
        elif job.status == "running" and job.cancel_requested_at is None:
            job.cancel_requested_at = self.clock()
        return job.status

    async def heartbeat(self, claim: ClaimedJob, progress: int | None = None) -> bool | None:
        await self._enter("heartbeat")
        job = self._held(claim)
        if job is None:
            return False
        job.lease_expires_at = self.clock() + self.lease_seconds
        if progress is not None:
            job.progress = progress
        return None if job.cancel_requested_at is not None else True

    async def complete_many(self, results: list[Completion]) -> dict[str, bool]:
        await self._enter("complete")
        done = {}
        for claim, image_url, thumbnail_url in results:
            job = self._held(claim)
            if job is not None:
                job.status, job.progress = "complete", 100
                job.image_url, job.thumbnail_url = image_url, thumbnail_url
                job.error_message, job.lease_expires_at = None, None
                job.generation_ref = None
            stored = self.jobs.get(claim.job.id)
            done[claim.job.id] = (
                stored is not None
                and stored.lease_token == claim.lease_token
                and stored.status == "complete"
            )
        await self._answer("complete")
        return done

    async def fail(self, claim: ClaimedJob, error_message: str) -> bool:
        await self._enter("fail")
        job = self._held(claim)
        if job is not None:
            job.status, job.error_message = "failed", error_message[:1000]
            job.lease_expires_at = job.generation_ref = None
        stored = self.jobs.get(claim.job.id)
        return bool(
            stored and stored.lease_token == claim.lease_token and stored.status == "failed"
        )

    async def retry(self, claim: ClaimedJob, error_message: str, delay: float) -> str | None:
        await self._enter("retry")
        job = self._held(claim)
        if job is None:
            return None
        if job.cancel_requested_at is not None:  # cancelled, never back to pending
            job.status, job.generation_ref, job.lease_expires_at = "cancelled", None, None
            return job.status
        out_of_attempts = job.attempts >= self.max_attempts
        job.status = "failed" if out_of_attempts else "pending"
        job.error_message = (
            f"gave up after {job.attempts} attempts: {error_message}"
            if out_of_attempts
            else error_message
        )[:1000]
        job.run_after = self.clock() + delay
        job.lease_expires_at = None
        if out_of_attempts:
            job.generation_ref = None
        return job.status

    async def release(self, claim: ClaimedJob) -> bool:
        await self._enter("release")
        job = self._held(claim)
        if job is None:
            return False
        job.attempts = max(job.attempts - 1, 0)
        job.run_after = self.clock()
        job.lease_token = job.lease_expires_at = None
        if job.cancel_requested_at is not None:  # cancelled, never back to pending
            job.status, job.generation_ref = "cancelled", None
        else:
            job.status, job.progress = "pending", 0
        return True

    async def mark_cancelled(self, claim: ClaimedJob) -> bool:
        await self._enter("mark_cancelled")
        job = self._held(claim)
        if job is not None:
            job.status, job.lease_expires_at, job.generation_ref = "cancelled", None, None
            job.cancel_requested_at = job.cancel_requested_at or self.clock()
        stored = self.jobs.get(claim.job.id)
        return bool(
            stored and stored.lease_token == claim.lease_token and stored.status == "cancelled"
        )

    async def cancel_requested(self, job_ids: list[str]) -> list[str]:
        await self._enter("cancel_requested")
        return [
            job_id
            for job_id in job_ids
            if (job := self.jobs.get(job_id)) is not None
            and job.status == "running"
            and job.cancel_requested_at is not None
        ]

    async def set_generation_ref(self, claim: ClaimedJob, ref: dict[str, Any] | None) -> bool:
        await self._enter("set_generation_ref")
        job = self._held(claim)
        if job is None:
            return False
        job.generation_ref = ref
        return True

    async def generation_ref_in_use(self, job_id: str, ref_id: str) -> bool:
        await self._enter("generation_ref_in_use")
        job = self.jobs.get(job_id)
        return (
            job is not None
            and job.status in ("pending", "running")
            and isinstance(job.generation_ref, dict)
            and job.generation_ref.get("id") == ref_id
            and job.cancel_requested_at is None
        )

    async def rescue(self, limit: int = 500) -> list[RescuedJob]:
        await self._enter("rescue")
        now = self.clock()
        expired = sorted(
            (
                j
                for j in self.jobs.values()
                if j.status == "running"
                and j.lease_expires_at is not None
                and j.lease_expires_at < now
            ),
            key=lambda j: j.lease_expires_at or 0.0,
        )[:limit]
        rescued = []
        for job in expired:
            if job.cancel_requested_at is not None:
                job.status, job.generation_ref = "cancelled", None
            elif job.attempts >= self.max_attempts:
                job.status = "failed"
                job.error_message = (
                    f"failed after {job.attempts} attempts: the worker running it stopped "
                    f"responding each time (lease expired; last worker {job.worker_id})"
                )
                job.generation_ref = None
            else:
                job.status, job.progress, job.lease_token = "pending", 0, None
            job.run_after, job.lease_expires_at = now, None
            rescued.append(RescuedJob(job.id, job.status, job.attempts, job.worker_id))
        return rescued

    async def ping(self) -> None:
        await self._enter("ping")


def _as_job(job: StoredJob) -> Job:
    return Job(
        id=job.id,
        prompt=job.prompt,
        model=job.model,
        aspect_ratio=job.aspect_ratio,
        user_id=job.user_id,
        attempts=job.attempts,
        generation_ref=job.generation_ref,
    )
