"""``image_worker_dashboard``: what it answers for a queue in every state (through PostgREST, as
the dashboard calls it), who may call it, and that it stays cheap on a large table: on 100,000
jobs no part of it scans the table, each reads only its partial index's share."""

from __future__ import annotations

import json
import re
from typing import Any

from devstack.stack import DevStack
from tests.helpers import worker_settings
from worker.store.operations import OperatorQueries

FUNCTION_ARGS = "p_list_limit integer, p_window_seconds integer, p_count_cap integer"


async def insert(stack: DevStack, count: int, **columns: str) -> list[str]:
    """``count`` jobs whose columns are the given SQL expressions (``g`` is 1..count)."""
    names = ", ".join(columns)
    values = ", ".join(columns.values())
    rows = await stack.pool.fetch(
        f"insert into public.jobs (prompt, {names}) "
        f"select 'a lighthouse #' || g, {values} from generate_series(1, {count}) g returning id"
    )
    return [str(r["id"]) for r in rows]


def running(lease: str, worker: str = "'w-1'", trigger: str = "'realtime'") -> dict[str, str]:
    return {
        "status": "'running'",
        "attempts": "1",
        "progress": "40",
        "worker_id": worker,
        "lease_token": "gen_random_uuid()",
        "started_at": "now() - interval '2 minutes'",
        "lease_expires_at": lease,
        "claim_trigger": trigger,
    }


def ended(status: str, ago: str, trigger: str = "'realtime'", **more: str) -> dict[str, str]:
    return {
        "status": f"'{status}'",
        "attempts": "1",
        "started_at": f"now() - {ago} - interval '30 seconds'",
        "completed_at": f"now() - {ago}",
        "claim_trigger": trigger,
        **more,
    }


async def dashboard(stack: DevStack, **params: int) -> dict[str, Any]:
    queries = OperatorQueries(worker_settings(stack))
    await queries.open()
    try:
        return await queries.dashboard(
            params.get("list_limit", 20),
            params.get("window_seconds", 3600),
            params.get("count_cap", 10000),
        )
    finally:
        await queries.close()


async def test_the_document_shows_the_queue(stack: DevStack) -> None:
    [live] = await insert(stack, 1, **running("now() + interval '40 seconds'"))
    [stuck] = await insert(stack, 1, **running("now() - interval '90 seconds'", "'w-dead'"))
    await insert(stack, 3, **ended("complete", "interval '5 minutes'"))
    await insert(stack, 2, **ended("complete", "interval '3 hours'", "'poll'"))  # before the hour
    await insert(stack, 1, **ended("complete", "interval '1 minute'", "'poll'"))
    [failed] = await insert(
        stack, 1, **ended("failed", "interval '2 minutes'", "'catchup'", error_message="'no <b>'")
    )
    await insert(stack, 1, **ended("cancelled", "interval '10 minutes'", "null"))
    three_minutes_ago = "now() - interval '3 minutes'"
    pending = await insert(stack, 2, created_at=three_minutes_ago, run_after=three_minutes_ago)
    await insert(stack, 1, run_after="now() + interval '1 hour'")  # a retry waiting its turn

    doc = await dashboard(stack, count_cap=6)

    assert doc["counts"] == {
        "pending": 3, "running": 2, "complete": 6, "failed": 1, "cancelled": 1, "total": 13,
    }  # fmt: skip
    assert doc["counts_capped"] == []
    assert doc["pending_delayed"] == 1
    assert 170 < doc["oldest_pending_age_seconds"] < 200
    assert doc["stuck_count"] == 1
    assert [r["id"] for r in doc["running"]] == sorted([live, stuck], key=[live, stuck].index)
    by_id = {r["id"]: r for r in doc["running"]}
    assert by_id[live]["progress"] == 40 and by_id[live]["worker_id"] == "w-1"
    assert 30 < by_id[live]["lease_seconds_left"] <= 40 and not by_id[live]["stuck"]
    assert by_id[stuck]["stuck"] and by_id[stuck]["lease_seconds_left"] < -80
    assert [(s["id"], s["worker_id"]) for s in doc["stuck"]] == [(stuck, "w-dead")]
    assert 80 < doc["stuck"][0]["lease_expired_seconds"] < 100
    assert {(w["worker_id"], w["running"], w["stuck"]) for w in doc["workers"]} == {
        ("w-1", 1, 0),
        ("w-dead", 1, 1),
    }
    [failure] = doc["recent_failures"]
    assert (failure["id"], failure["error_message"]) == (failed, "no <b>")
    assert 110 < failure["failed_seconds_ago"] < 130
    # Oldest first (the two share their created_at: then by id), the delayed one last.
    assert {p["id"] for p in doc["oldest_pending"][:2]} == set(pending)
    assert len(doc["oldest_pending"]) == 3 and doc["oldest_pending"][2]["delayed_seconds"] > 3000

    # The chart: 60 minutes, the current one last; what ended in the last hour, per minute.
    chart = doc["throughput"]
    assert len(chart) == 60 and doc["window_seconds"] == 3600
    totals = {k: sum(p[k] for p in chart) for k in ("complete", "failed", "cancelled")}
    assert totals == {"complete": 4, "failed": 1, "cancelled": 1}
    assert chart[-6]["complete"] == 3 or chart[-5]["complete"] == 3  # 5 minutes ago
    # Pickups: the jobs that started in the hour (running or ended in it), by claim trigger.
    assert doc["pickups"] == {"realtime": 5, "poll": 1, "catchup": 1, "unknown": 1}

    # Past the cap, a count stops and says so.
    capped = await dashboard(stack, count_cap=2, list_limit=1)
    assert capped["counts"]["complete"] == 2 and capped["counts_capped"] == ["complete"]
    assert len(capped["running"]) == len(capped["oldest_pending"]) == 1


async def test_only_the_service_role_may_call_it(stack: DevStack) -> None:
    row = await stack.pool.fetchrow(
        "select pg_get_function_identity_arguments(p.oid) as args, p.prosrc as body,"
        "  has_function_privilege('anon', p.oid, 'execute') as anon,"
        "  has_function_privilege('authenticated', p.oid, 'execute') as authenticated,"
        "  has_function_privilege('service_role', p.oid, 'execute') as service_role,"
        "  p.provolatile::text as volatility "
        "from pg_proc p where p.proname = 'image_worker_dashboard'"
    )
    assert row["args"] == FUNCTION_ARGS
    assert (row["anon"], row["authenticated"], row["service_role"]) == (False, False, True)
    assert row["volatility"] == "s"  # stable: reads only
    assert not re.search(r"\b(update|insert|delete)\b", row["body"], re.IGNORECASE)


# 100,000 jobs as a busy project keeps them: a week of finished jobs (a few hundred in the last
# hour), a backlog of pending ones, a hundred running (a tenth of them stuck).
FILL_100K = """
insert into public.jobs (prompt, status, progress, attempts, created_at, started_at, completed_at,
  run_after, worker_id, lease_token, lease_expires_at, claim_trigger, error_message, user_id)
select 'p' || g, s.status,
  case s.status when 'complete' then 100 when 'running' then 10 else 0 end,
  case when s.status = 'pending' then 0 else 1 end,
  s.ended - interval '2 minutes',
  case when s.status <> 'pending' then s.ended - interval '1 minute' end,
  case when s.status in ('complete', 'failed', 'cancelled') then s.ended end,
  case when s.status = 'pending' then s.ended else now() end,
  case when s.status = 'running' then 'w' || (g % 4) end,
  case when s.status = 'running' then gen_random_uuid() end,
  case when s.status = 'running' then now() + case when g % 10 = 0
    then interval '-5 minutes' else interval '50 seconds' end end,
  (array['realtime', 'realtime', 'realtime', 'poll', 'catchup', 'sweep'])[1 + g % 6],
  case when s.status = 'failed' then 'the generator refused: reason ' || g end,
  ('00000000-0000-0000-0000-' || lpad((g % 1000)::text, 12, '0'))::uuid
from generate_series(1, 100000) g,
lateral (select
  case when g <= 80000 then 'complete' when g <= 85000 then 'failed'
       when g <= 86000 then 'cancelled' when g <= 86100 then 'running' else 'pending' end
    as status,
  case when g <= 86000 then now() - (g % 10080) * interval '1 minute'
       else now() - random() * interval '1 hour' end as ended) as s
"""
PENDING_100K = 13_900


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


async def test_it_stays_cheap_on_100k_jobs(stack: DevStack) -> None:
    await stack.pool.execute(FILL_100K)
    await stack.pool.execute("vacuum analyze public.jobs")
    body = await stack.pool.fetchval(
        "select prosrc from pg_proc where proname = 'image_worker_dashboard'"
    )
    # The function's own statement, with its parameters as $1..$3, planned as the function is.
    for i, name in enumerate(("p_list_limit", "p_window_seconds", "p_count_cap"), 1):
        body = re.sub(rf"\b{name}\b", f"${i}", body)
    async with stack.pool.acquire() as conn:
        await conn.execute(f"prepare dashboard(integer, integer, integer) as {body}")
        for _ in range(2):  # warm: the figure below is the steady refresh
            await conn.fetchval("execute dashboard(20, 3600, 10000)")
        [explained] = json.loads(
            await conn.fetchval(
                "explain (analyze, buffers, format json) execute dashboard(20, 3600, 10000)"
            )
        )
        await conn.execute("deallocate dashboard")

    scans = [n for n in _nodes(explained["Plan"]) if n.get("Relation Name") == "jobs"]
    summary = [
        (n["Node Type"], n.get("Index Name"), int(n["Actual Rows"]), n.get("Shared Hit Blocks"))
        for n in scans
    ]
    print(
        f"\nimage_worker_dashboard on 100,000 jobs: {explained['Execution Time']:.1f} ms, "
        f"{explained['Plan'].get('Shared Hit Blocks', 0) + explained['Plan'].get('Shared Read Blocks', 0)}"
        f" buffers; scans of jobs: {summary}"
    )
    assert scans
    assert not [n for n in scans if n["Node Type"] == "Seq Scan"], summary
    # The largest share any part reads is the backlog (13,900 pending) or the cap (10,001).
    assert all(int(n["Actual Rows"]) * n.get("Actual Loops", 1) <= PENDING_100K for n in scans)
    total = explained["Plan"].get("Shared Hit Blocks", 0) + explained["Plan"].get(
        "Shared Read Blocks", 0
    )
    table_blocks = await stack.pool.fetchval(
        "select pg_relation_size('public.jobs') / current_setting('block_size')::int"
    )
    assert total < table_blocks, (total, table_blocks)  # less than one pass over the table
