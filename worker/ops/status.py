"""``image-worker status``: the queue at a glance, from one SQL function."""

from __future__ import annotations

import asyncio
from typing import Any

from worker.errors import ExitCode
from worker.observability.redact import redact
from worker.ops.render import consoles, describe_store_error, print_json, print_status
from worker.settings import JOBS_TABLE, Settings
from worker.store import StoreError
from worker.store.operations import OperatorQueries


def status_command(settings: Settings, *, as_json: bool, list_limit: int) -> int:
    """``image-worker status``: returns the exit code."""
    out, err = consoles()
    store = OperatorQueries(settings)

    async def fetch() -> dict[str, Any]:
        await store.open()
        try:
            return await store.status(list_limit)
        finally:
            await store.close()

    try:
        report = asyncio.run(fetch())
    except StoreError as exc:
        err.print(describe_store_error(settings, exc), markup=False)
        return ExitCode.FAILURE
    report = _normalise_status(report)
    if as_json:
        print_json(report)
    else:
        print_status(out, report)
    return ExitCode.OK


# The keys of `status --json`, in this order; scripts rely on them (see the README, "Stuck and failed jobs").
STATUS_KEYS = (
    "table",
    "counts",
    "pending_delayed",
    "oldest_pending_age_seconds",
    "stuck_count",
    "running",
    "stuck",
    "recent_failures",
)


def _normalise_status(raw: dict[str, Any]) -> dict[str, Any]:
    report = {key: raw.get(key) for key in STATUS_KEYS}
    report["table"] = JOBS_TABLE  # always "jobs" since contract v2; the key stays for scripts
    report["counts"] = {
        k: int((raw.get("counts") or {}).get(k, 0))
        for k in ("pending", "running", "complete", "failed", "cancelled", "total")
    }
    for key in ("running", "stuck", "recent_failures"):
        report[key] = report[key] or []
    for failure in report["recent_failures"]:
        # Rows should never hold a secret, but this output is pasted into tickets and chats.
        if failure.get("error_message"):
            failure["error_message"] = redact(failure["error_message"])
    return report
