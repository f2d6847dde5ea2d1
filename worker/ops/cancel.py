"""``image-worker cancel --job ID``: the operator's cancel, the same call an app user makes
(``cancel_job``), as the service role so any job may be cancelled.

A pending job ends ``cancelled`` at once; a running job gets its cancel requested and the worker
holding it stops it (within about 2 s in realtime mode, the poll interval in polling mode); a
finished job is left as it is.
"""

from __future__ import annotations

import asyncio

from worker.errors import ExitCode
from worker.ops.render import consoles, describe_store_error, print_json
from worker.settings import Settings
from worker.store import StoreError
from worker.store.operations import OperatorQueries

# What each answer of cancel_job means, for people and for `--json`'s "outcome".
_OUTCOMES = {
    "cancelled": ("cancelled", "cancelled"),
    "running": (
        "cancel_requested",
        "running: cancel requested; the worker holding it stops it and marks it cancelled",
    ),
}


def cancel_command(settings: Settings, job_id: str, *, as_json: bool) -> int:
    """``image-worker cancel``: returns the exit code."""
    out, err = consoles()
    store = OperatorQueries(settings)

    async def call() -> str | None:
        await store.open()
        try:
            return await store.cancel(job_id)
        finally:
            await store.close()

    try:
        status = asyncio.run(call())
    except StoreError as exc:
        err.print(describe_store_error(settings, exc), markup=False)
        return ExitCode.FAILURE
    if status is None:
        if as_json:
            print_json({"id": job_id, "status": None, "outcome": "not_found"})
        else:
            err.print(f"job {job_id}: no such job", markup=False)
        return ExitCode.FAILURE
    outcome, text = _OUTCOMES.get(status, ("unchanged", f"already {status}: nothing to cancel"))
    if as_json:
        print_json({"id": job_id, "status": status, "outcome": outcome})
    else:
        out.print(f"job {job_id}: {text}", markup=False)
    return ExitCode.OK
