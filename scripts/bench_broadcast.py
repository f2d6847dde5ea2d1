"""Broadcast benchmarks (parts of scripts/bench.py; also runnable on their own):

    uv run python scripts/bench_broadcast.py                  # both parts
    uv run python scripts/bench.py broadcast_latency broadcast_hot_path

broadcast_latency   a job's progress written 200 times (one write at a time, service role, as
                    the worker's progress writes are) → the example app's Broadcast callback in
                    headless Chromium (supabase-js, vsn 2.0.0, private channel). The browser
                    stamps ``performance.timeOrigin + performance.now()`` in the page's
                    ``job-update`` event (fired from the channel's callback); the write is
                    stamped when PostgreSQL acknowledged its commit (and when it was sent). Same
                    machine, same wall clock. Needs Chromium and examples/web/node_modules.
broadcast_hot_path  what the broadcast triggers cost the worker's hot path: 2,000 jobs of 100
                    users inserted, claimed 32 at a time and completed 32 at a time
                    (image_worker_claim, image_worker_complete_many, the worker's own calls),
                    with the triggers and with them disabled, alternating, 5 rounds each: time
                    per job of each call, on one session. Twice: with the Realtime stand-in
                    streaming the WAL (as on a project, where Realtime decodes it), and with
                    its capture stopped (the database's own cost: the triggers, realtime.send,
                    the realtime.messages rows).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
WEB = REPO / "examples" / "web"
sys.path.insert(0, str(REPO))


from bench import percentile  # noqa: E402 (scripts/ is on sys.path when run)

from devstack.example_site import example_site  # noqa: E402
from devstack.serve import serve  # noqa: E402
from devstack.stack import DevStack  # noqa: E402


def _summary(values_ms: list[float]) -> dict[str, float]:
    return {
        "n": len(values_ms),
        "p50_ms": round(percentile(values_ms, 50), 2),
        "p95_ms": round(percentile(values_ms, 95), 2),
        "p99_ms": round(percentile(values_ms, 99), 2),
        "max_ms": round(max(values_ms), 2),
        "mean_ms": round(statistics.fmean(values_ms), 2),
    }


async def bench_broadcast_latency(server_url: str, updates: int = 200) -> dict[str, Any]:
    from playwright.async_api import async_playwright

    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium")
    if chromium is None or not (WEB / "node_modules" / "@supabase" / "supabase-js").is_dir():
        result = {"skipped": "needs chromium and `npm ci --prefix examples/web`"}
        print(f"broadcast_latency: {result}", flush=True)
        return result
    async with DevStack(server_url=server_url) as stack:
        user = stack.create_user("bench@example.com", "bench-password")
        job = await stack.pool.fetchval(
            "insert into public.jobs (prompt, user_id, status, progress, started_at)"
            " values ('progress bench', $1, 'running', 0, now()) returning id",
            uuid.UUID(user.id),
        )
        runner, url = await serve(example_site(stack.url, stack.keys.anon_key), "127.0.0.1")
        try:
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(
                    executable_path=chromium, args=["--no-sandbox"]
                )
                page = await browser.new_page()
                await page.goto(url + "/")
                await page.fill("#email", "bench@example.com")
                await page.fill("#password", "bench-password")
                await page.click("#sign-in button[type=submit]")
                await page.wait_for_selector("#live[data-state=SUBSCRIBED]", timeout=30_000)
                await page.evaluate(
                    """() => {
                      window.received = []
                      window.addEventListener('job-update', (e) => window.received.push(
                        [e.detail.progress, performance.timeOrigin + performance.now()]))
                    }"""
                )
                sent: list[tuple[int, float, float]] = []
                async with stack.pool.acquire() as conn:
                    for i in range(updates):
                        progress = i % 100 + 1  # every write changes the value: one event each
                        before = time.time()
                        await conn.execute(
                            "update public.jobs set progress = $1 where id = $2", progress, job
                        )
                        sent.append((progress, before, time.time()))
                        await page.wait_for_function(
                            f"window.received.length > {i}", timeout=10_000, polling=2
                        )
                        await asyncio.sleep(0.02)
                received = await page.evaluate("window.received")
                await browser.close()
        finally:
            await runner.cleanup()
    assert [p for p, _ in received] == [p for p, _, _ in sent], "updates lost or reordered"
    from_commit = [
        stamp - acked * 1000 for (_, stamp), (_, _, acked) in zip(received, sent, strict=True)
    ]
    from_sent = [
        stamp - began * 1000 for (_, stamp), (_, began, _) in zip(received, sent, strict=True)
    ]
    result = {
        "updates": updates,
        "from_commit_ack": _summary(from_commit),
        "from_write_sent": _summary(from_sent),
    }
    print(f"broadcast_latency: {json.dumps(result)}", flush=True)
    return result


async def bench_broadcast_hot_path(server_url: str) -> dict[str, Any]:
    result = {
        "streaming": await _hot_path(server_url, streaming=True),
        "database_only": await _hot_path(server_url, streaming=False),
    }
    print(f"broadcast_hot_path: {json.dumps(result)}", flush=True)
    return result


async def _hot_path(
    server_url: str,
    *,
    streaming: bool,
    jobs: int = 2000,
    users: int = 100,
    batch: int = 32,
    rounds: int = 5,
) -> dict[str, Any]:
    per_variant: dict[str, dict[str, list[float]]] = {
        "with_triggers": {"insert": [], "claim": [], "complete": []},
        "without_triggers": {"insert": [], "claim": [], "complete": []},
    }
    async with DevStack(server_url=server_url) as stack:
        if not streaming:
            await stack.realtime.capture.stop()
        owners = [uuid.uuid4() for _ in range(users)]
        async with stack.pool.acquire() as conn:
            for _ in range(rounds):
                for variant in ("with_triggers", "without_triggers"):
                    toggle = "enable" if variant == "with_triggers" else "disable"
                    await conn.execute(
                        f"alter table public.jobs {toggle} trigger jobs_broadcast_insert;"
                        f"alter table public.jobs {toggle} trigger jobs_broadcast_update"
                    )
                    started = time.perf_counter()
                    await conn.execute(
                        "insert into public.jobs (prompt, user_id)"
                        " select 'job ' || g, ($1::uuid[])[1 + g % $2]"
                        " from generate_series(1, $3) g",
                        owners,
                        users,
                        jobs,
                    )
                    insert_s = time.perf_counter() - started
                    claim_s = complete_s = 0.0
                    done = 0
                    while done < jobs:
                        started = time.perf_counter()
                        rows = await conn.fetch(
                            "select * from public.image_worker_claim('bench', $1, 60)", batch
                        )
                        claim_s += time.perf_counter() - started
                        claimed = [json.loads(r[0]) for r in rows]
                        if not claimed:
                            raise RuntimeError("nothing to claim")
                        results = [
                            {"id": j["id"], "lease_token": j["lease_token"],
                             "image_url": f"https://img.test/{j['id']}.png",
                             "thumbnail_url": f"https://img.test/{j['id']}_t.png"}
                            for j in claimed
                        ]  # fmt: skip
                        started = time.perf_counter()
                        await conn.fetch(
                            "select * from public.image_worker_complete_many($1::jsonb)",
                            json.dumps(results),
                        )
                        complete_s += time.perf_counter() - started
                        done += len(claimed)
                    timings = per_variant[variant]
                    timings["insert"].append(insert_s / jobs * 1e6)
                    timings["claim"].append(claim_s / jobs * 1e6)
                    timings["complete"].append(complete_s / jobs * 1e6)
                    await conn.execute("delete from public.jobs; truncate realtime.messages")
            await conn.execute(
                "alter table public.jobs enable trigger jobs_broadcast_insert;"
                "alter table public.jobs enable trigger jobs_broadcast_update"
            )
    result: dict[str, Any] = {"jobs": jobs, "users": users, "batch": batch, "rounds": rounds}
    for variant, timings in per_variant.items():
        result[variant] = {
            f"{call}_us_per_job": round(statistics.median(values), 1)
            for call, values in timings.items()
        }
    with_, without = result["with_triggers"], result["without_triggers"]
    result["added_us_per_job"] = {key: round(with_[key] - without[key], 1) for key in with_}
    return result


async def _main() -> None:
    from devstack.postgres import EmbeddedPostgres

    server_url = os.environ.get("DEVSTACK_DATABASE_URL")
    pg = None
    if server_url is None:
        pg = EmbeddedPostgres()
        pg.start()
        server_url = pg.dsn()
    try:
        await bench_broadcast_latency(server_url)
        await bench_broadcast_hot_path(server_url)
    finally:
        if pg is not None:
            pg.stop()


if __name__ == "__main__":
    asyncio.run(_main())
