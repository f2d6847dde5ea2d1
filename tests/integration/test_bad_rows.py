"""Rows the worker cannot read, written straight into PostgreSQL as a backend would (asyncpg, no
API in between): each fails its own job through the lease-guarded ``fail``, with a clear
``error_message``, and never stops the worker or the other jobs claimed in the same batch."""

from __future__ import annotations

import asyncio

from devstack.stack import DevStack
from tests.helpers import all_terminal, insert_jobs, instant_step, wait_for, worker_settings
from worker.engine.app import Worker

# created_at values PostgreSQL accepts and Python's datetime cannot hold.
ODD_CREATED_AT = ["infinity", "-infinity", "10000-01-01 00:00:00+00", "0044-03-15 00:00:00+00 BC"]


async def test_unreadable_rows_fail_alone_and_the_batch_runs(stack: DevStack) -> None:
    good = await insert_jobs(stack, 3, prompt="fine")
    bad = {}
    for value in ODD_CREATED_AT:
        job_id = await stack.pool.fetchval(
            "insert into public.jobs (prompt, created_at) values ('odd row', $1::text::timestamptz) "
            "returning id",
            value,
        )
        bad[str(job_id)] = value
    good += await insert_jobs(stack, 3, prompt="fine too")

    # Every job in one claim: the bad rows sit in the same batch as the good ones.
    worker = Worker(worker_settings(stack, worker_concurrency=16), instant_step)
    task = asyncio.create_task(worker.run())
    try:
        await wait_for(lambda: all_terminal(stack), timeout=20)
        assert not task.done(), "the worker stopped"
    finally:
        worker.stop()
        exit_code = await asyncio.wait_for(task, 60)
    assert exit_code == 0

    rows = {
        str(r["id"]): r
        for r in await stack.pool.fetch("select id, status, error_message, attempts from jobs")
    }
    assert all(rows[job_id]["status"] == "complete" for job_id in good)
    for job_id in bad:
        row = rows[job_id]
        assert row["status"] == "failed", row
        assert row["attempts"] == 1  # failed at once: retrying would not make it readable
        assert row["error_message"].startswith("the job row cannot be read: created_at "), row
        assert "\n" not in row["error_message"]
