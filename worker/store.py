"""Every database call the worker makes, in one place, through supabase-py's ``AsyncClient``.

Each call is one SQL function of the migration (``supabase/migrations``) reached through
``/rest/v1/rpc``, so every state change is a single atomic, lease-guarded statement. Every call
has a deadline: postgrest-py's own GET retries can stall a call for about 7 s, and an unanswered
request must never hold a job. Failures surface as ``StoreError`` with a clear sentence.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from worker.http import pooled_client
from worker.jobs import Job
from worker.settings import Settings

CALL_TIMEOUT_SECONDS = 10.0


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


class Store:
    def __init__(self, settings: Settings, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        self._settings = settings
        self._timeout = timeout
        self._client: AsyncClient | None = None

    async def open(self) -> None:
        # About one call in flight per running job (heartbeats, outcomes) plus the claim.
        self._http = pooled_client(
            connections=min(self._settings.worker_concurrency + 2, 64),
            timeout=httpx.Timeout(self._timeout),
            follow_redirects=True,
        )
        options = AsyncClientOptions(
            httpx_client=self._http,
            # We retry where it is safe, with our own deadline; see the module docstring.
            postgrest_client_retry=False,
            auto_refresh_token=False,
            persist_session=False,
        )
        self._client = await acreate_client(
            self._settings.supabase_url,
            self._settings.supabase_service_role_key.get_secret_value(),
            options=options,
        )

    async def close(self) -> None:
        if self._client is not None:
            await self._http.aclose()
            self._client = None

    async def _rpc(self, operation: str, fn: str, params: dict[str, Any]) -> Any:
        assert self._client is not None, "Store.open() was not called"
        params = {**params, "p_table": self._settings.jobs_table}
        return await self._execute(operation, self._client.rpc(fn, params))

    async def _execute(self, operation: str, request: Any) -> Any:
        """Run a postgrest-py request under our deadline; failures become ``StoreError``."""
        try:
            async with asyncio.timeout(self._timeout):
                response = await request.execute()
        except TimeoutError:
            raise StoreError(operation, f"no answer within {self._timeout:g} s") from None
        except APIError as exc:
            raise StoreError(operation, _describe_api_error(exc)) from None
        except httpx.HTTPError as exc:
            raise StoreError(operation, f"{type(exc).__name__}: {exc}") from None
        return response.data

    async def claim(self, limit: int, trigger: str | None = None) -> list[ClaimedJob]:
        """Up to ``limit`` pending jobs, now leased to us; ``trigger`` is recorded on each."""
        rows = await self._rpc(
            "claim",
            "image_worker_claim",
            {
                "p_worker_id": self._settings.worker_id,
                "p_limit": limit,
                "p_lease_seconds": self._settings.worker_lease_seconds,
                "p_trigger": trigger,
            },
        )
        return [ClaimedJob(Job.from_row(row), str(row["lease_token"])) for row in rows or []]

    async def heartbeat(self, claim: ClaimedJob, progress: int | None = None) -> bool:
        """Extend the lease (and set progress). False: the lease is lost, stop working."""
        return bool(
            await self._rpc(
                "heartbeat",
                "image_worker_heartbeat",
                {
                    "p_id": claim.job.id,
                    "p_lease_token": claim.lease_token,
                    "p_lease_seconds": self._settings.worker_lease_seconds,
                    "p_progress": progress,
                },
            )
        )

    async def complete_many(self, results: list[tuple[ClaimedJob, str, str]]) -> dict[str, bool]:
        """Complete several jobs in one round trip; per job id, False when its lease was lost."""
        rows = await self._rpc(
            "complete",
            "image_worker_complete_many",
            {
                "p_jobs": [
                    {
                        "id": claim.job.id,
                        "lease_token": claim.lease_token,
                        "image_url": image_url,
                        "thumbnail_url": thumbnail_url,
                    }
                    for claim, image_url, thumbnail_url in results
                ]
            },
        )
        return {str(row["id"]): bool(row["completed"]) for row in rows or []}

    async def fail(self, claim: ClaimedJob, error_message: str) -> bool:
        return bool(
            await self._rpc(
                "fail",
                "image_worker_fail",
                {
                    "p_id": claim.job.id,
                    "p_lease_token": claim.lease_token,
                    "p_error_message": error_message,
                },
            )
        )

    async def retry(self, claim: ClaimedJob, error_message: str, delay: float) -> str | None:
        """Back to pending after ``delay`` (or failed when out of attempts); None: lease lost."""
        return await self._rpc(
            "retry",
            "image_worker_retry",
            {
                "p_id": claim.job.id,
                "p_lease_token": claim.lease_token,
                "p_error_message": error_message,
                "p_delay_seconds": delay,
                "p_max_attempts": self._settings.job_max_attempts,
            },
        )

    async def release(self, claim: ClaimedJob) -> bool:
        return bool(
            await self._rpc(
                "release",
                "image_worker_release",
                {"p_id": claim.job.id, "p_lease_token": claim.lease_token},
            )
        )

    async def rescue(self, limit: int = 500) -> list[RescuedJob]:
        rows = await self._rpc(
            "rescue",
            "image_worker_rescue",
            {"p_max_attempts": self._settings.job_max_attempts, "p_limit": limit},
        )
        return [
            RescuedJob(str(r["id"]), r["status"], int(r["attempts"]), r.get("worker_id"))
            for r in rows or []
        ]

    async def ping(self) -> None:
        """Cheapest round trip that proves the database answers and the table exists."""
        assert self._client is not None, "Store.open() was not called"
        request = self._client.table(self._settings.jobs_table).select("id").limit(1).retry(False)
        await self._execute("ping", request)


def _describe_api_error(exc: APIError) -> str:
    parts = [p for p in (exc.code, exc.message) if p]
    return ": ".join(str(p) for p in parts)[:300] or "unknown API error"
