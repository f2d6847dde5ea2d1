"""Job updates over Broadcast from the database (the migration …_image_worker_broadcast.sql):
what the trigger sends and when, who the policy lets receive it, and that a worker's jobs reach
their user's private channel through the real realtime-py client."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
from realtime import RealtimeSubscribeStates as States
from supabase import acreate_client

from devstack.postgres import MIGRATIONS_DIR, SQL_DIR, create_database, drop_database
from devstack.stack import DevStack
from tests.helpers import instant_step, running_worker, worker_settings
from tests.integration.devstack.test_realtime import close_client, eventually

BROADCAST_MIGRATION = "20261127000400_image_worker_broadcast.sql"
PAYLOAD_KEYS = {"id", "status", "progress", "image_url", "thumbnail_url", "error_message"}


async def messages(stack: DevStack) -> list[dict[str, Any]]:
    rows = await stack.pool.fetch(
        "select topic, event, private, extension, payload from realtime.messages"
        " order by inserted_at, (payload->>'progress')::int"
    )
    return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]


async def test_every_status_or_progress_change_is_sent_once(stack: DevStack) -> None:
    alice = uuid.uuid4()
    job = await stack.pool.fetchval(
        "insert into public.jobs (prompt, user_id) values ('a fox', $1) returning id", alice
    )
    (claimed,) = await stack.pool.fetch("select * from public.image_worker_claim('w', 10, 60)")
    token = uuid.UUID(json.loads(claimed[0])["lease_token"])
    await stack.pool.execute("insert into public.jobs (prompt) values ('no user: nobody to tell')")
    # A lease renewal that reports no new progress changes neither column: nothing is sent.
    await stack.pool.execute("select public.image_worker_heartbeat($1, $2, 60, null)", job, token)
    await stack.pool.execute("select public.image_worker_heartbeat($1, $2, 60, 10)", job, token)
    await stack.pool.execute("select public.image_worker_heartbeat($1, $2, 60, 60)", job, token)
    await stack.pool.execute(
        "select * from public.image_worker_complete_many($1::jsonb)",
        json.dumps(
            [
                {
                    "id": str(job),
                    "lease_token": str(token),
                    "image_url": "https://i/x.png",
                    "thumbnail_url": "https://i/t.png",
                }
            ]
        ),
    )
    sent = await messages(stack)
    assert [(m["payload"]["status"], m["payload"]["progress"]) for m in sent] == [
        ("pending", 0),
        ("running", 10),
        ("running", 60),
        ("complete", 100),
    ]
    for m in sent:
        assert (m["topic"], m["event"], m["private"], m["extension"]) == (
            f"jobs:{alice}", "job_update", True, "broadcast"
        )  # fmt: skip
        assert set(m["payload"]) == PAYLOAD_KEYS and m["payload"]["id"] == str(job)
    assert sent[-1]["payload"]["image_url"] == "https://i/x.png"
    assert sent[-1]["payload"]["thumbnail_url"] == "https://i/t.png"


async def test_failures_and_cancels_are_sent_with_their_reason(stack: DevStack) -> None:
    alice = uuid.uuid4()
    pending, failing = [
        await stack.pool.fetchval(
            "insert into public.jobs (prompt, user_id) values ($1, $2) returning id", p, alice
        )
        for p in ("cancel me", "fail me")
    ]
    await stack.pool.execute("select public.cancel_job($1)", pending)
    (claimed,) = await stack.pool.fetch("select * from public.image_worker_claim('w', 1, 60)")
    row = json.loads(claimed[0])
    await stack.pool.execute(
        "select public.image_worker_fail($1, $2, 'the generator refused the prompt')",
        uuid.UUID(row["id"]),
        uuid.UUID(row["lease_token"]),
    )
    last = {}
    for m in await messages(stack):
        last[m["payload"]["id"]] = m["payload"]
    assert last[str(pending)]["status"] == "cancelled"
    assert last[str(failing)]["status"] == "failed"
    assert last[str(failing)]["error_message"] == "the generator refused the prompt"


async def test_a_users_own_insert_is_sent_too(stack: DevStack) -> None:
    """The insert runs as `authenticated`, which may not write realtime.messages: the trigger's
    function is SECURITY DEFINER (as Supabase's docs do it), so the user's first event arrives."""
    alice = uuid.uuid4()
    async with stack.pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "select set_config('role', 'authenticated', true),"
            " set_config('request.jwt.claims', $1, true)",
            json.dumps({"sub": str(alice), "role": "authenticated"}),
        )
        await conn.execute("insert into public.jobs (prompt) values ('mine')")
    (sent,) = await messages(stack)
    assert sent["topic"] == f"jobs:{alice}" and sent["payload"]["status"] == "pending"


async def test_the_policy_lets_a_user_read_only_their_own_topic(stack: DevStack) -> None:
    """What Realtime Authorization asks (a probe row, the user's role and claims, the channel's
    topic in realtime.topic()), asked directly."""
    alice, bob = uuid.uuid4(), uuid.uuid4()

    async def may_read(role: str, sub: uuid.UUID | None, topic: str, extension: str) -> bool:
        async with stack.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                probe = await conn.fetchval(
                    "insert into realtime.messages (topic, extension) values ($1, $2) returning id",
                    topic,
                    extension,
                )
                await conn.execute(
                    "select set_config('role', $1, true), set_config('realtime.topic', $2, true),"
                    " set_config('request.jwt.claims', $3, true)",
                    role,
                    topic,
                    json.dumps({"role": role, **({"sub": str(sub)} if sub else {})}),
                )
                return bool(
                    await conn.fetchval(
                        "select count(*) from realtime.messages where id = $1", probe
                    )
                )
            finally:
                await tx.rollback()

    assert await may_read("authenticated", alice, f"jobs:{alice}", "broadcast")
    assert not await may_read("authenticated", bob, f"jobs:{alice}", "broadcast")
    assert not await may_read("authenticated", alice, f"jobs:{alice}", "presence")
    assert not await may_read("authenticated", alice, f"other:{alice}", "broadcast")
    assert not await may_read("anon", None, f"jobs:{alice}", "broadcast")


async def test_the_migration_is_idempotent_and_harmless_without_realtime(pg_server: str) -> None:
    """Twice on a Supabase database: one trigger pair, one policy. On a PostgreSQL without
    Realtime's schema: notices only, and job writes go on."""
    dsn = await create_database(pg_server)
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute((SQL_DIR / "supabase_bootstrap.sql").read_text())
            for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
                await conn.execute(path.read_text())
            migration = (MIGRATIONS_DIR / BROADCAST_MIGRATION).read_text()
            await conn.execute(migration)
            triggers = await conn.fetch(
                "select tgname from pg_trigger where tgrelid = 'public.jobs'::regclass"
                " and tgname like 'jobs_broadcast%' order by 1"
            )
            assert [t["tgname"] for t in triggers] == [
                "jobs_broadcast_insert",
                "jobs_broadcast_update",
            ]
            policies = await conn.fetchval(
                "select count(*) from pg_policies where schemaname = 'realtime'"
                " and policyname = 'image_worker_receive_own_job_updates'"
            )
            assert policies == 1

            await conn.execute("drop trigger jobs_broadcast_insert on public.jobs")
            await conn.execute("drop trigger jobs_broadcast_update on public.jobs")
            await conn.execute("drop schema realtime cascade")
            notices: list[str] = []
            conn.add_log_listener(lambda _c, m: notices.append(m.message))
            await conn.execute(migration)
            assert any("realtime.send not found" in n for n in notices)
            job = await conn.fetchval(
                "insert into public.jobs (prompt, user_id) values ('x', $1) returning id",
                uuid.uuid4(),
            )
            await conn.execute("update public.jobs set progress = 50 where id = $1", job)
        finally:
            await conn.close()
    finally:
        await drop_database(pg_server, dsn.rsplit("/", 1)[1])


async def test_a_workers_job_reaches_its_users_private_channel(stack: DevStack) -> None:
    alice = uuid.uuid4()
    client = await acreate_client(stack.url, stack.keys.anon_key)
    try:
        await client.realtime.set_auth(stack.keys.user_token(alice))
        got: list[dict[str, Any]] = []
        states: list[States] = []
        channel = client.channel(f"jobs:{alice}", {"config": {"private": True}})
        channel.on_broadcast("job_update", lambda m: got.append(m["payload"]))
        await channel.subscribe(lambda state, _err: states.append(state))
        await eventually(lambda: States.SUBSCRIBED in states)
        async with running_worker(worker_settings(stack), instant_step):
            job = await stack.pool.fetchval(
                "insert into public.jobs (prompt, user_id) values ('a fox', $1) returning id", alice
            )
            await eventually(lambda: got and got[-1]["status"] == "complete", timeout=15)
        assert [(m["status"], m["progress"]) for m in got] == [
            ("pending", 0),
            ("running", 10),
            ("complete", 100),
        ]
        assert {m["id"] for m in got} == {str(job)}
        assert got[-1]["image_url"] == f"https://img.test/{job}.png"
        await asyncio.sleep(0)
    finally:
        await close_client(client)
