"""The production store: every database call through supabase-py's ``AsyncClient``.

Each call is one SQL function of the migrations (``supabase/migrations``) reached through
``/rest/v1/rpc``, so every state change is a single atomic, lease-guarded statement. Every call
has a deadline: postgrest-py's own GET retries can stall a call for about 7 s, and an unanswered
request must never hold a job. Failures surface as ``StoreError`` with a clear sentence.

``PostgrestConnection`` is the client, its deadline and its error mapping; ``PostgrestStore`` (the
engine's calls) and ``OperatorQueries`` (``replay``, ``status``) are each built on one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from worker.http import pooled_client
from worker.settings import JOBS_TABLE, Settings
from worker.store import functions
from worker.store.interface import (
    ClaimedJob,
    Completion,
    RescuedJob,
    StoreError,
    claims_from_rows,
)

CALL_TIMEOUT_SECONDS = 10.0
# Rows asked for per answer when paging through a function's result (rpc_rows): Supabase's
# default "Max rows".
PAGE_ROWS = 1000


class PostgrestConnection:
    """supabase-py's client with the service-role key, a per-call deadline and one error type."""

    def __init__(
        self, settings: Settings, *, connections: int, timeout: float = CALL_TIMEOUT_SECONDS
    ) -> None:
        self._settings = settings
        self._connections = connections
        self._timeout = timeout
        self._client: AsyncClient | None = None

    async def open(self) -> None:
        self._http = pooled_client(
            connections=self._connections,
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

    @property
    def client(self) -> AsyncClient:
        assert self._client is not None, "open() was not called"
        return self._client

    async def rpc(self, operation: str, fn: str, params: dict[str, Any]) -> Any:
        return await self.execute(operation, self.client.rpc(fn, params))

    async def rpc_rows(
        self,
        operation: str,
        fn: str,
        params: dict[str, Any],
        *,
        limit: int,
        key: str = "id",
        page: int = PAGE_ROWS,
    ) -> list[dict[str, Any]]:
        """Up to ``limit`` rows of a set-returning function, however many PostgREST returns
        per answer. Its ``db-max-rows`` (Supabase's "Max rows", 1000 by default) cuts a
        function's result like a table's, silently: the rows are asked for in pages ordered by
        ``key`` (unique), each after the last ``key`` seen (keyset: a row that changes between
        pages shifts nothing), until ``limit`` rows or an empty page. A cap below ``page`` only
        costs more round trips. The rows come in ``key`` order."""
        rows: list[dict[str, Any]] = []
        while len(rows) < limit:
            request = self.client.rpc(fn, params).order(key).limit(min(page, limit - len(rows)))
            if rows:
                request = request.gt(key, rows[-1][key])
            batch = await self.execute(operation, request) or []
            if not batch:
                break
            rows.extend(batch)
        return rows[:limit]

    async def execute(self, operation: str, request: Any) -> Any:
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


class PostgrestStore:
    """The engine's ``JobStore`` on Supabase."""

    def __init__(self, settings: Settings, timeout: float = CALL_TIMEOUT_SECONDS) -> None:
        self._settings = settings
        # About one call in flight per running job (heartbeats, outcomes) plus the claim.
        self._db = PostgrestConnection(
            settings, connections=min(settings.worker_concurrency + 2, 64), timeout=timeout
        )

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def claim(self, limit: int, trigger: str | None = None) -> list[ClaimedJob]:
        rows = await self._db.rpc(
            "claim",
            functions.CLAIM,
            {
                "p_worker_id": self._settings.worker_id,
                "p_limit": limit,
                "p_lease_seconds": self._settings.worker_lease_seconds,
                "p_trigger": trigger,
            },
        )
        return claims_from_rows(rows or [])

    async def heartbeat(self, claim: ClaimedJob, progress: int | None = None) -> bool | None:
        held = await self._db.rpc(
            "heartbeat",
            functions.HEARTBEAT,
            {
                "p_id": claim.job.id,
                "p_lease_token": claim.lease_token,
                "p_lease_seconds": self._settings.worker_lease_seconds,
                "p_progress": progress,
            },
        )
        return None if held is None else bool(held)  # SQL NULL: held, cancel requested

    async def complete_many(self, results: list[Completion]) -> dict[str, bool]:
        rows = await self._db.rpc(
            "complete",
            functions.COMPLETE_MANY,
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
            await self._db.rpc(
                "fail",
                functions.FAIL,
                {
                    "p_id": claim.job.id,
                    "p_lease_token": claim.lease_token,
                    "p_error_message": error_message,
                },
            )
        )

    async def retry(self, claim: ClaimedJob, error_message: str, delay: float) -> str | None:
        return await self._db.rpc(
            "retry",
            functions.RETRY,
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
            await self._db.rpc(
                "release",
                functions.RELEASE,
                {"p_id": claim.job.id, "p_lease_token": claim.lease_token},
            )
        )

    async def mark_cancelled(self, claim: ClaimedJob) -> bool:
        return bool(
            await self._db.rpc(
                "mark_cancelled",
                functions.MARK_CANCELLED,
                {"p_id": claim.job.id, "p_lease_token": claim.lease_token},
            )
        )

    async def cancel_requested(self, job_ids: list[str]) -> list[str]:
        rows = await self._db.rpc(
            "cancel_requested", functions.CANCEL_REQUESTED, {"p_ids": list(job_ids)}
        )
        # A setof uuid comes back as a JSON array of strings.
        return [str(row) for row in rows or []]

    async def set_generation_ref(self, claim: ClaimedJob, ref: dict[str, Any] | None) -> bool:
        return bool(
            await self._db.rpc(
                "set_generation_ref",
                functions.SET_GENERATION_REF,
                {"p_id": claim.job.id, "p_lease_token": claim.lease_token, "p_ref": ref},
            )
        )

    async def generation_ref_in_use(self, job_id: str, ref_id: str) -> bool:
        return bool(
            await self._db.rpc(
                "generation_ref_in_use",
                functions.GENERATION_REF_IN_USE,
                {"p_id": job_id, "p_ref_id": ref_id},
            )
        )

    async def rescue(self, limit: int = 500) -> list[RescuedJob]:
        rows = await self._db.rpc(
            "rescue",
            functions.RESCUE,
            {"p_max_attempts": self._settings.job_max_attempts, "p_limit": limit},
        )
        return [
            RescuedJob(str(r["id"]), r["status"], int(r["attempts"]), r.get("worker_id"))
            for r in rows or []
        ]

    async def ping(self) -> None:
        """A one-row select: proves the database answers and the table exists."""
        request = self._db.client.table(JOBS_TABLE).select("id").limit(1)
        await self._db.execute("ping", request.retry(False))


def _describe_api_error(exc: APIError) -> str:
    parts = [p for p in (exc.code, exc.message) if p]
    return ": ".join(str(p) for p in parts)[:300] or "unknown API error"
