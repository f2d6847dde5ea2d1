"""`image-worker replay` and `image-worker status`, run as the CLI they are, against the devstack.

Jobs are put into the states an incident leaves behind directly with SQL (a worker that died
mid-job, a job that is slow but alive, failures), then the command runs in a subprocess with the
worker's environment, stdin not a terminal.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from dataclasses import dataclass

import pytest

from devstack.stack import DevStack
from tests.helpers import REPO, instant_step, running_worker, wait_for, worker_settings


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


REPLAY_SCRIPT = REPO / "scripts" / "replay_stuck_jobs.py"


async def cli(
    stack: DevStack, *args: str, env: dict[str, str] | None = None, program=("-m", "worker")
) -> CliResult:
    # asyncio's subprocess, not subprocess.run: the devstack serves from this very event loop.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *program,
        *args,
        env={**os.environ, **stack.env, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())


async def insert(stack: DevStack, sql_values: str, prompt: str = "a lighthouse") -> str:
    """One job with the given column values (``status``, ``attempts``, ages…)."""
    columns, values = sql_values.split("|")
    return str(
        await stack.pool.fetchval(
            f"insert into jobs (prompt, {columns}) values ($1, {values}) returning id", prompt
        )
    )


async def dead_worker_job(stack: DevStack) -> str:
    """Running, its worker gone: the lease expired a minute ago."""
    return await insert(
        stack,
        "status, attempts, worker_id, lease_token, started_at, lease_expires_at, progress|"
        "'running', 2, 'dead-worker', gen_random_uuid(), now() - interval '1 hour', "
        "now() - interval '1 minute', 60",
    )


async def slow_live_job(stack: DevStack) -> str:
    """Running for an hour, but its worker still renews the lease."""
    return await insert(
        stack,
        "status, attempts, worker_id, lease_token, started_at, lease_expires_at, progress|"
        "'running', 1, 'live-worker', gen_random_uuid(), now() - interval '1 hour', "
        "now() + interval '10 minutes', 60",
    )


async def failed_job(stack: DevStack, message: str = "the generator said no") -> str:
    return await insert(
        stack,
        "status, attempts, error_message, started_at, completed_at, progress|"
        f"'failed', 3, '{message}', now() - interval '2 hours', now() - interval '1 hour', 10",
    )


async def complete_job(stack: DevStack) -> str:
    return await insert(
        stack,
        "status, attempts, image_url, started_at, completed_at, progress|"
        "'complete', 1, 'https://res.cloudinary.com/x.png', now() - interval '1 hour', now(), 100",
    )


async def rows(stack: DevStack) -> dict[str, dict]:
    records = await stack.pool.fetch("select * from jobs")
    return {str(r["id"]): dict(r) for r in records}


def assert_replayed(row: dict, reason: str | None = None) -> None:
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["progress"] == 0
    assert row["worker_id"] is None
    assert row["lease_token"] is None
    assert row["lease_expires_at"] is None
    assert row["error_message"] is None
    assert row["started_at"] is None
    assert row["completed_at"] is None
    assert row["replayed_at"] is not None
    assert row["replay_reason"]
    if reason is not None:
        assert row["replay_reason"] == reason


async def test_dry_run_lists_and_changes_nothing(stack: DevStack) -> None:
    dead, live, failed = (
        await dead_worker_job(stack),
        await slow_live_job(stack),
        await failed_job(stack),
    )
    before = await rows(stack)

    result = await cli(stack, "replay", "--stuck-for", "10m", "--failed", "--dry-run", "--json")

    assert result.code == 0, result.stderr
    report = result.json()
    assert report["dry_run"] is True
    assert {j["id"] for j in report["would_replay"]} == {dead, failed}
    assert [(s["id"], s["status"]) for s in report["skipped"]] == [(live, "running")]
    assert "--force" in report["skipped"][0]["reason"]
    assert report["replayed"] == []
    assert await rows(stack) == before

    human = await cli(stack, "replay", "--stuck-for", "10m", "--failed", "--dry-run")
    assert human.code == 0, human.stderr
    assert dead in human.stdout and failed in human.stdout
    assert "Dry run: nothing changed; 2 job(s) would be replayed." in human.stdout
    assert await rows(stack) == before


async def test_refuses_without_yes_when_stdin_is_not_a_terminal(stack: DevStack) -> None:
    await dead_worker_job(stack)
    before = await rows(stack)

    result = await cli(stack, "replay")

    assert result.code == 2
    assert "without confirmation" in result.stderr and "--yes" in result.stderr
    assert "Traceback" not in result.stderr
    assert await rows(stack) == before


async def test_replay_resets_jobs_and_a_worker_completes_them(stack: DevStack) -> None:
    dead, live, failed = (
        await dead_worker_job(stack),
        await slow_live_job(stack),
        await failed_job(stack),
    )
    untouched_failed = await failed_job(stack, "not asked for")
    done = await complete_job(stack)
    live_before = (await rows(stack))[live]

    # Without --failed: only the dead worker's job; the live lease is left alone.
    result = await cli(stack, "replay", "--stuck-for", "10m", "--yes", "--reason", "incident 42")
    assert result.code == 0, result.stderr
    assert "Replayed 1 job(s)." in result.stdout
    assert dead in result.stdout and "dead-worker" in result.stdout
    assert f"skipped {live} (running)" in result.stdout
    after = await rows(stack)
    assert_replayed(after[dead], "incident 42")
    assert after[live] == live_before
    assert after[failed]["status"] == after[untouched_failed]["status"] == "failed"
    assert after[done]["status"] == "complete"

    # --force takes the live lease too (fencing off its worker), --failed the failures.
    result = await cli(stack, "replay", "--stuck-for", "10m", "--failed", "--force", "--yes")
    assert result.code == 0, result.stderr
    assert "Replayed 3 job(s)." in result.stdout
    after = await rows(stack)
    for job_id in (live, failed, untouched_failed):
        assert_replayed(after[job_id])
    assert after[live]["replay_reason"].startswith("image-worker replay by ")
    assert after[done]["status"] == "complete"

    # Running workers pick replayed jobs up like new ones.
    async def all_complete() -> bool:
        return {r["status"] for r in (await rows(stack)).values()} == {"complete"}

    settings = worker_settings(stack, worker_id="replay-test-worker")
    async with running_worker(settings, instant_step):
        await wait_for(all_complete, timeout=15)
    after = await rows(stack)
    for job_id in (dead, live, failed, untouched_failed):
        assert after[job_id]["attempts"] == 1
        assert after[job_id]["worker_id"] == "replay-test-worker"


async def test_job_option_names_exactly_the_jobs_to_replay(stack: DevStack) -> None:
    first, second = await failed_job(stack), await failed_job(stack)
    live = await slow_live_job(stack)
    done = await complete_job(stack)
    missing = str(uuid.uuid4())

    result = await cli(
        stack,
        "replay",
        *("--job", first, "--job", live, "--job", done, "--job", missing),
        "--yes",
        "--json",
    )

    assert result.code == 0, result.stderr
    report = result.json()
    # A named failed job needs no --failed; a named live lease still needs --force.
    assert [r["id"] for r in report["replayed"]] == [first]
    assert report["replayed"][0]["old_status"] == "failed"
    assert report["replayed"][0]["attempts"] == 3
    skipped = {s["id"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {live, done}
    assert "--force" in skipped[live] and "complete" in skipped[done]
    assert report["not_found"] == [missing]
    after = await rows(stack)
    assert_replayed(after[first])
    assert after[second]["status"] == "failed"
    assert after[live]["status"] == "running"
    assert after[done]["status"] == "complete"

    result = await cli(stack, "replay", "--job", live, "--force", "--yes", "--json")
    assert result.code == 0, result.stderr
    assert [r["id"] for r in result.json()["replayed"]] == [live]
    assert_replayed((await rows(stack))[live])


async def test_large_replays_go_in_batches_and_the_script_wraps_the_command(
    stack: DevStack,
) -> None:
    await stack.pool.execute(
        "insert into jobs (prompt, status, attempts, error_message, completed_at) "
        "select 'p' || g, 'failed', 3, 'boom', now() from generate_series(1, 250) as g"
    )

    result = await cli(
        stack, "--failed", "--yes", "--reason", "bulk", program=(str(REPLAY_SCRIPT),)
    )

    assert result.code == 0, result.stderr
    assert "Replayed 250 job(s)." in result.stdout
    counts = await stack.pool.fetchrow(
        "select count(*) filter (where status = 'pending' and attempts = 0 "
        "and replay_reason = 'bulk') as replayed, count(*) as total from jobs"
    )
    assert counts["replayed"] == counts["total"] == 250


async def test_replay_considers_every_job_behind_postgrest_max_rows(stack: DevStack) -> None:
    """Finding 9: Supabase's PostgREST returns at most "Max rows" rows of a function's result
    too; replay pages through them instead of silently considering only the first page."""
    await stack.pool.execute(
        "insert into jobs (prompt, status, attempts, error_message, completed_at) "
        "select 'p' || g, 'failed', 3, 'boom', now() - g * interval '1 second' "
        "from generate_series(1, 250) as g"
    )
    stack.rest.max_rows = 100
    try:
        everything = await cli(stack, "replay", "--failed", "--dry-run", "--json")
        assert everything.code == 0, everything.stderr
        report = everything.json()
        assert len({j["id"] for j in report["would_replay"]}) == 250
        assert report["truncated"] is False

        limited = await cli(stack, "replay", "--failed", "--dry-run", "--json", "--limit", "120")
        assert limited.code == 0, limited.stderr
        assert len({j["id"] for j in limited.json()["would_replay"]}) == 120
        assert limited.json()["truncated"] is True

        done = await cli(stack, "replay", "--failed", "--yes", "--reason", "paged")
        assert done.code == 0, done.stderr
        assert "Replayed 250 job(s)." in done.stdout
    finally:
        stack.rest.max_rows = None
    assert (
        await stack.pool.fetchval(
            "select count(*) from jobs where status = 'pending' and replay_reason = 'paged'"
        )
        == 250
    )


async def test_bad_options_are_usage_errors(stack: DevStack) -> None:
    for args in (("--stuck-for", "soon"), ("--job", "not-a-uuid")):
        result = await cli(stack, "replay", *args)
        assert result.code == 2
        assert "Traceback" not in result.stderr


async def test_the_guard_leaves_a_job_that_changed_since_the_listing(stack: DevStack) -> None:
    """The UPDATE re-checks eligibility itself: a job listed as stuck that completes before the
    replay statement runs is not touched (the race `replay` runs against live workers)."""
    dead = await dead_worker_job(stack)
    await stack.pool.execute(
        "update jobs set status = 'complete', completed_at = now() where id = $1", uuid.UUID(dead)
    )
    changed = await stack.pool.fetch(
        "select * from image_worker_replay($1::uuid[], false, null, false, false, 'race')",
        [uuid.UUID(dead)],
    )
    assert changed == []
    assert (await rows(stack))[dead]["status"] == "complete"


async def test_status_shows_counts_running_stuck_and_failures(stack: DevStack) -> None:
    dead, live = await dead_worker_job(stack), await slow_live_job(stack)
    failed = await failed_job(stack, "the generator refused the prompt")
    await complete_job(stack)
    pending = await insert(stack, "status|'pending'")
    await stack.pool.execute(
        "update jobs set created_at = now() - interval '5 minutes', "
        "run_after = now() - interval '5 minutes' where id = $1",
        uuid.UUID(pending),
    )

    result = await cli(stack, "status", "--json")
    assert result.code == 0, result.stderr
    report = result.json()
    assert list(report) == [
        "table",
        "counts",
        "pending_delayed",
        "oldest_pending_age_seconds",
        "stuck_count",
        "running",
        "stuck",
        "recent_failures",
    ]
    assert report["table"] == "jobs"
    assert report["counts"] == {
        "pending": 1, "running": 2, "complete": 1, "failed": 1, "cancelled": 0, "total": 5
    }  # fmt: skip
    assert 290 < report["oldest_pending_age_seconds"] < 400
    assert report["stuck_count"] == 1
    assert [j["id"] for j in report["stuck"]] == [dead]
    running = {j["id"]: j for j in report["running"]}
    assert set(running) == {dead, live}
    assert running[live]["worker_id"] == "live-worker"
    assert running[live]["progress"] == 60
    assert 500 < running[live]["lease_seconds_left"] <= 600
    assert running[dead]["lease_seconds_left"] < 0
    assert report["recent_failures"][0]["id"] == failed
    assert report["recent_failures"][0]["error_message"] == "the generator refused the prompt"

    human = await cli(stack, "status")
    assert human.code == 0, human.stderr
    for text in ("pending", "running", "complete", "failed", "live-worker", dead, failed):
        assert text in human.stdout
    assert "the generator refused the prompt" in human.stdout
    assert "oldest pending: 5m" in human.stdout
    assert "stuck (running, lease expired): 1" in human.stdout


async def test_jobs_table_is_jobs_or_refused(stack: DevStack) -> None:
    """JOBS_TABLE is retired: `jobs` works as before; another table stops the command before it
    touches the database, in one line."""
    dead = await dead_worker_job(stack)
    accepted = await cli(stack, "status", "--json", env={"JOBS_TABLE": "jobs"})
    assert accepted.code == 0, accepted.stderr
    assert accepted.json()["table"] == "jobs"
    assert accepted.json()["stuck_count"] == 1

    for command in (("status",), ("replay", "--yes")):
        refused = await cli(stack, *command, env={"JOBS_TABLE": "other"})
        assert refused.code == 2
        assert refused.stderr.splitlines() == [
            "configuration error: JOBS_TABLE: is retired: the worker uses public.jobs; "
            "unset it or set it to jobs"
        ]
        assert refused.stdout == ""
    assert (await rows(stack))[dead]["status"] == "running"  # replay changed nothing


@pytest.mark.parametrize("command", [("status",), ("replay", "--dry-run")])
async def test_unreachable_database_is_one_clear_line(stack: DevStack, command) -> None:
    result = await cli(stack, *command, env={"SUPABASE_URL": "http://127.0.0.1:9"})
    assert result.code == 1
    assert "cannot reach the database at http://127.0.0.1:9" in result.stderr
    assert "Traceback" not in result.stderr
    assert stack.keys.service_role_key not in result.stderr + result.stdout


async def cancelled_job(stack: DevStack) -> str:
    return await insert(
        stack,
        "status, attempts, started_at, completed_at, cancel_requested_at, generation_ref, "
        "progress|'cancelled', 1, now() - interval '2 hours', now() - interval '1 hour', "
        "now() - interval '1 hour', '{\"id\": \"gen-1\"}', 40",
    )


async def test_cancel_command_cancels_pending_requests_running_and_leaves_finished(
    stack: DevStack,
) -> None:
    pending = await insert(stack, "status|'pending'")
    live = await slow_live_job(stack)
    done = await complete_job(stack)

    result = await cli(stack, "cancel", "--job", pending, "--json")
    assert result.code == 0, result.stderr
    assert result.json() == {"id": pending, "status": "cancelled", "outcome": "cancelled"}
    result = await cli(stack, "cancel", "--job", live, "--json")
    assert result.json() == {"id": live, "status": "running", "outcome": "cancel_requested"}
    result = await cli(stack, "cancel", "--job", done)
    assert result.code == 0, result.stderr
    assert "already complete: nothing to cancel" in result.stdout

    table = await rows(stack)
    assert table[pending]["status"] == "cancelled" and table[pending]["completed_at"]
    assert table[live]["status"] == "running" and table[live]["cancel_requested_at"]
    assert table[done]["status"] == "complete" and table[done]["cancel_requested_at"] is None

    unknown = str(uuid.uuid4())
    missing = await cli(stack, "cancel", "--job", unknown, "--json")
    assert missing.code == 1
    assert missing.json() == {"id": unknown, "status": None, "outcome": "not_found"}
    human = await cli(stack, "cancel", "--job", unknown)
    assert human.code == 1 and f"job {unknown}: no such job" in human.stderr
    bad = await cli(stack, "cancel", "--job", "not-a-uuid")
    assert bad.code == 2 and "is not a job id" in bad.stderr
    assert (await cli(stack, "cancel")).code == 2  # --job is required

    status = (await cli(stack, "status", "--json")).json()
    assert status["counts"]["cancelled"] == 1
    assert {j["id"]: j["cancel_requested"] for j in status["running"]} == {live: True}


async def test_cancelled_jobs_are_replayed_only_with_cancelled(stack: DevStack) -> None:
    cancelled = await cancelled_job(stack)
    failed = await failed_job(stack)

    plain = await cli(stack, "replay", "--failed", "--job", cancelled, "--yes", "--json")
    assert plain.code == 0, plain.stderr
    assert plain.json()["replayed"] == []
    assert plain.json()["skipped"] == [
        {"id": cancelled, "status": "cancelled",
         "reason": "it was cancelled: use --cancelled to requeue it"}
    ]  # fmt: skip
    everything = await cli(stack, "replay", "--failed", "--dry-run", "--json")
    assert [j["id"] for j in everything.json()["would_replay"]] == [failed]

    result = await cli(stack, "replay", "--cancelled", "--yes", "--json")
    assert result.code == 0, result.stderr
    assert [(j["id"], j["old_status"]) for j in result.json()["replayed"]] == [
        (cancelled, "cancelled")
    ]
    row = (await rows(stack))[cancelled]
    assert_replayed(row)
    assert row["cancel_requested_at"] is None and row["generation_ref"] is None
    assert (await rows(stack))[failed]["status"] == "failed"
