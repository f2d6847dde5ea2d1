"""The migrations: idempotent, their RLS policies hold through the real supabase client, and the
functions are static SQL on public.jobs that behave exactly as the table-name versions did."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from devstack.postgres import (
    MIGRATIONS_DIR,
    SQL_DIR,
    bootstrap,
    create_database,
    drop_database,
    migration_files,
)
from devstack.stack import DevStack

# The migration that made every function static SQL on public.jobs (contract v2).
STATIC_SQL_MIGRATION = "20261127000000_image_worker_static_sql.sql"
# Many users, one queue (contract v2): limits, fair claims, cancelling.
TENANCY_MIGRATION = "20261127000100_image_worker_tenancy.sql"
# Every function the worker and its operator commands call, with its arguments.
WORKER_FUNCTIONS = {
    "image_worker_claim": "p_worker_id text, p_limit integer, "
    "p_lease_seconds double precision, p_trigger text",
    "image_worker_heartbeat": "p_id uuid, p_lease_token uuid, "
    "p_lease_seconds double precision, p_progress integer",
    "image_worker_complete_many": "p_jobs jsonb",
    "image_worker_fail": "p_id uuid, p_lease_token uuid, p_error_message text",
    "image_worker_retry": "p_id uuid, p_lease_token uuid, p_error_message text, "
    "p_delay_seconds double precision, p_max_attempts integer",
    "image_worker_release": "p_id uuid, p_lease_token uuid",
    "image_worker_rescue": "p_max_attempts integer, p_limit integer",
    "image_worker_replay_eligible": "p_status text, p_started_at timestamp with time zone, "
    "p_lease_expires_at timestamp with time zone, p_named boolean, "
    "p_stuck_seconds double precision, p_failed boolean, p_force boolean, p_cancelled boolean",
    "image_worker_replay_candidates": "p_ids uuid[], p_stuck_seconds double precision, "
    "p_failed boolean, p_limit integer, p_cancelled boolean",
    "image_worker_replay": "p_ids uuid[], p_named boolean, p_stuck_seconds double precision, "
    "p_failed boolean, p_force boolean, p_reason text, p_cancelled boolean",
    "image_worker_status": "p_list_limit integer",
}
# Added by the tenancy migration (20261127000100): the worker's side of cancelling.
TENANCY_FUNCTIONS = {
    "image_worker_mark_cancelled": "p_id uuid, p_lease_token uuid",
    "image_worker_cancel_requested": "p_ids uuid[]",
}


async def _client(stack: DevStack, token: str | None = None) -> AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await acreate_client(
        stack.url,
        stack.keys.anon_key,
        options=AsyncClientOptions(headers=headers, persist_session=False),
    )


async def test_migration_applies_twice_cleanly(stack: DevStack) -> None:
    assert migration_files(), "no migrations found"
    before = await _schema_snapshot(stack)
    await bootstrap(stack.dsn)  # bootstrap + every migration, a second time
    await bootstrap(stack.dsn)
    assert await _schema_snapshot(stack) == before
    publication = await stack.pool.fetchval(
        "select count(*) from pg_publication_tables where pubname = 'supabase_realtime' "
        "and tablename = 'jobs'"
    )
    assert publication == 1


async def test_the_static_sql_migration_applies_twice_over_the_old_functions(
    pg_server: str,
) -> None:
    """Applied where the table-name functions are (an existing project), then again: no error,
    the same schema, and the second run changes nothing."""
    async with _database(pg_server, _migrations(before=STATIC_SQL_MIGRATION)) as conn:
        assert "p_table" in await conn.fetchval(
            "select pg_get_function_identity_arguments('public.image_worker_claim'::regproc)"
        )
        static = (MIGRATIONS_DIR / STATIC_SQL_MIGRATION).read_text()
        await conn.execute(static)
        once = await _functions_snapshot(conn)
        await conn.execute(static)
        assert await _functions_snapshot(conn) == once
        assert [name for name, _, _, _ in once] == sorted(WORKER_FUNCTIONS)


async def test_the_tenancy_migration_applies_twice_over_a_live_queue(pg_server: str) -> None:
    """On an existing project with pending jobs (some with a user, some without), the tenancy
    migration applies twice; the backlog's queues are set up, so the fair claim finds it all."""
    async with _database(pg_server, _migrations(before=TENANCY_MIGRATION)) as conn:
        users = [uuid.uuid4(), uuid.uuid4(), None]
        for i in range(9):
            await conn.execute(
                "insert into public.jobs (prompt, user_id) values ($1, $2)",
                f"job {i}",
                users[i % 3],
            )
        await conn.execute("update public.jobs set status = 'complete' where prompt = 'job 0'")
        tenancy = (MIGRATIONS_DIR / TENANCY_MIGRATION).read_text()
        await conn.execute(tenancy)
        once = await _functions_snapshot(conn)
        await conn.execute(tenancy)
        assert await _functions_snapshot(conn) == once
        queues = await conn.fetchval("select count(*) from public.image_worker_queues")
        assert queues == 3
        claimed = await conn.fetch("select * from public.image_worker_claim('w', 100, 60)")
        assert len(claimed) == 8
        assert {json.loads(r[0])["user_id"] for r in claimed[:3]} == {
            None if u is None else str(u) for u in users
        }


async def test_functions_are_static_sql_on_public_jobs(stack: DevStack) -> None:
    """After every migration: one definition per function (PostgREST never has to choose), none
    takes the table name, none builds SQL at run time; callable by the service role only."""
    rows = await stack.pool.fetch(
        """
        select p.proname::text as name, pg_get_function_identity_arguments(p.oid) as args,
               coalesce(p.proargnames, '{}') as argnames, p.prosrc as body,
               l.lanname::text as language, p.proconfig as config,
               has_function_privilege('anon', p.oid, 'execute') as anon,
               has_function_privilege('authenticated', p.oid, 'execute') as authenticated,
               has_function_privilege('service_role', p.oid, 'execute') as service_role
        from pg_proc p
        join pg_namespace n on n.oid = p.pronamespace
        join pg_language l on l.oid = p.prolang
        where n.nspname = 'public' and p.proname like 'image\\_worker\\_%'
        order by 1, 2
        """
    )
    by_name: dict[str, list[asyncpg.Record]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)
    for row in rows:
        assert "p_table" not in row["argnames"], row["name"]
        assert not re.search(r"\bexecute\b", row["body"], re.IGNORECASE), row["name"]
        assert "%1$I" not in row["body"], row["name"]
    for name, args in {**WORKER_FUNCTIONS, **TENANCY_FUNCTIONS}.items():
        assert [r["args"] for r in by_name.get(name, [])] == [args], name
        (row,) = by_name[name]
        assert row["language"] in ("sql", "plpgsql"), name
        assert "search_path=pg_catalog, public" in (row["config"] or []), name
        assert (row["anon"], row["authenticated"], row["service_role"]) == (False, False, True)


async def test_static_functions_behave_as_the_table_name_ones(pg_server: str) -> None:
    """The same calls on a database with the old functions (p_table, dynamic SQL) and on one with
    the static ones give the same answers and leave the same rows: locking aside, the semantics
    are unchanged, guards, idempotency, messages and truncation included."""
    old_files = _migrations(before=STATIC_SQL_MIGRATION)
    new_files = [*old_files, MIGRATIONS_DIR / STATIC_SQL_MIGRATION]
    async with _database(pg_server, old_files) as conn:
        before = await _scenario(conn)
    async with _database(pg_server, new_files) as conn:
        assert "p_table" not in await conn.fetchval(
            "select pg_get_function_identity_arguments('public.image_worker_claim'::regproc)"
        )
        after = await _scenario(conn)
    assert len(after) == len(before)
    for (step, old), (_, new) in zip(before, after, strict=True):
        assert new == old, step
    # The scenario did what it says (so that equal is not trivially equal).
    observed = dict(after)
    assert observed["claim 0"] == observed["claim null"] == []
    assert {r["id"] for r in observed["claim 3"]} == {str(_job(i)) for i in (1, 2, 3)}
    assert observed["heartbeat, wrong token"] is False
    assert sorted(observed["complete_many"]) == sorted(
        [[str(_job(1)), True], [str(_job(2)), False]]
    )
    assert observed["complete_many again"] == [[str(_job(1)), True]]
    assert observed["complete_many, other token"] == [[str(_job(1)), False]]
    assert observed["fail"] is observed["fail again"] is True
    assert observed["fail, wrong token"] is False
    assert observed["retry, last attempt"] == "failed"
    assert observed["retry, not the holder"] is None
    assert observed["release again"] is False
    assert observed["progress"] == [50]
    assert [r[:3] for r in observed["rescue the longest expired"]] == [[str(_job(4)), "pending", 1]]
    assert [r[:3] for r in observed["rescue"]] == [[str(_job(6)), "failed", 3]]
    assert [r[0] for r in observed["candidates, stuck for 10 s and failed"]] == [
        str(_job(i)) for i in (2, 5, 6, 7, 8)
    ]
    assert [r[0] for r in observed["candidates, stuck"]] == [str(_job(8))]
    assert observed["rescue again"] == []
    assert len(observed["replay forced"]) == 2
    table = {r["id"]: r for r in observed["rows"]}
    assert observed["failed message"] == ["the generator said no " + "x" * 978]
    assert table[str(_job(5))]["error_message"] == "gave up after 3 attempts: boom"
    assert table[str(_job(6))]["error_message"].startswith("failed after 3 attempts")
    assert len(table[str(_job(7))]["replay_reason"]) == 500


async def test_user_inserts_and_reads_only_their_own_jobs(stack: DevStack) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    as_alice = await _client(stack, stack.keys.user_token(alice))
    as_bob = await _client(stack, stack.keys.user_token(bob))

    inserted = (
        await as_alice.table("jobs")
        .insert({"user_id": str(alice), "prompt": "a castle", "aspect_ratio": "16:9"})
        .execute()
    ).data[0]
    assert inserted["status"] == "pending"
    assert inserted["image_url"] is None and inserted["attempts"] == 0
    assert inserted["progress"] == 0
    # A user only requests work: any other column is refused (column privileges, contract v2;
    # tests/integration/test_tenancy.py has the whole list).
    with pytest.raises(APIError) as caught:
        await (
            as_alice.table("jobs")
            .insert({"user_id": str(alice), "prompt": "x", "status": "complete", "attempts": 99})
            .execute()
        )
    assert caught.value.code == "42501"

    # Not for someone else.
    with pytest.raises(APIError) as caught:
        await as_alice.table("jobs").insert({"user_id": str(bob), "prompt": "x"}).execute()
    assert caught.value.code == "42501"

    # Reads: only their own.
    await as_bob.table("jobs").insert({"user_id": str(bob), "prompt": "bob's"}).execute()
    alice_rows = (await as_alice.table("jobs").select("*").execute()).data
    assert [r["prompt"] for r in alice_rows] == ["a castle"]
    bob_sees_alice = (
        await as_bob.table("jobs").select("*").eq("id", inserted["id"]).execute()
    ).data
    assert bob_sees_alice == []


async def test_nobody_but_the_service_role_updates_or_deletes(stack: DevStack) -> None:
    alice = uuid.uuid4()
    as_alice = await _client(stack, stack.keys.user_token(alice))
    anon = await _client(stack)
    job = (
        await as_alice.table("jobs").insert({"user_id": str(alice), "prompt": "mine"}).execute()
    ).data[0]

    for client in (as_alice, anon):
        with pytest.raises(APIError):
            await (
                client.table("jobs")
                .update({"status": "complete", "image_url": "https://x"})
                .eq("id", job["id"])
                .execute()
            )
        with pytest.raises(APIError):
            await client.table("jobs").delete().eq("id", job["id"]).execute()
    row = await stack.pool.fetchrow("select * from public.jobs where id = $1", uuid.UUID(job["id"]))
    assert row["status"] == "pending" and row["image_url"] is None

    service = await acreate_client(stack.url, stack.keys.service_role_key)
    updated = (
        await service.table("jobs").update({"progress": 5}).eq("id", job["id"]).execute()
    ).data
    assert updated[0]["progress"] == 5


async def test_anon_cannot_read_or_insert(stack: DevStack) -> None:
    await stack.pool.execute("insert into public.jobs (prompt) values ('hidden')")
    anon = await _client(stack)
    # No privilege at all on the table since contract v2 (before: RLS hid every row).
    with pytest.raises(APIError) as caught:
        await anon.table("jobs").select("*").execute()
    assert caught.value.code == "42501"
    with pytest.raises(APIError):
        await anon.table("jobs").insert({"prompt": "anonymous"}).execute()


async def test_worker_functions_are_for_the_service_role_only(stack: DevStack) -> None:
    alice = uuid.uuid4()
    for client in (await _client(stack), await _client(stack, stack.keys.user_token(alice))):
        with pytest.raises(APIError):
            await client.rpc(
                "image_worker_claim",
                {"p_worker_id": "intruder", "p_limit": 10, "p_lease_seconds": 60},
            ).execute()
    service = await acreate_client(stack.url, stack.keys.service_role_key)
    claimed = await service.rpc(
        "image_worker_claim", {"p_worker_id": "w", "p_limit": 10, "p_lease_seconds": 60}
    ).execute()
    assert claimed.data == []


async def _schema_snapshot(stack: DevStack) -> list[tuple]:
    rows = await stack.pool.fetch(
        """
        select 'column' as kind, column_name::text as name, data_type::text as detail
          from information_schema.columns where table_name = 'jobs'
        union all
        select 'index', indexname::text, indexdef::text from pg_indexes where tablename = 'jobs'
        union all
        select 'policy', policyname::text, cmd::text from pg_policies where tablename = 'jobs'
        union all
        select 'trigger', tgname::text, tgenabled::text from pg_trigger
          where tgrelid = 'public.jobs'::regclass and not tgisinternal
        union all
        select 'function', p.proname::text, pg_get_function_identity_arguments(p.oid)
          from pg_proc p join pg_namespace n on n.oid = p.pronamespace
          where n.nspname = 'public' and p.proname like 'image_worker_%'
        union all
        select 'constraint', conname::text, pg_get_constraintdef(oid)
          from pg_constraint where conrelid = 'public.jobs'::regclass
        order by 1, 2, 3
        """
    )
    return [tuple(r) for r in rows]


def _migrations(*, before: str) -> list[Path]:
    return [p for p in migration_files() if p.name < before]


class _database:
    """A fresh database on the test server with Supabase's bootstrap and the given migrations."""

    def __init__(self, server: str, files: Iterable[Path]) -> None:
        self._server, self._files = server, list(files)

    async def __aenter__(self) -> asyncpg.Connection:
        self._dsn = await create_database(self._server)
        self._conn = await asyncpg.connect(self._dsn)
        await self._conn.execute((SQL_DIR / "supabase_bootstrap.sql").read_text())
        for path in self._files:
            await self._conn.execute(path.read_text())
        return self._conn

    async def __aexit__(self, *exc: object) -> None:
        await self._conn.close()
        await drop_database(self._server, self._dsn.rsplit("/", 1)[1])


async def _functions_snapshot(conn: asyncpg.Connection) -> list[tuple]:
    rows = await conn.fetch(
        """
        select p.proname::text, pg_get_function_identity_arguments(p.oid), p.prosrc,
               coalesce(p.proacl::text, '')
        from pg_proc p join pg_namespace n on n.oid = p.pronamespace
        where n.nspname = 'public' and p.proname like 'image\\_worker\\_%'
        order by 1, 2
        """
    )
    return [tuple(r) for r in rows]


def _job(i: int) -> uuid.UUID:
    """Job i is the i-th oldest; ids run the other way, so an order by id shows."""
    return uuid.UUID(int=100 - i)


class _Normaliser:
    """Makes the answers of two databases comparable: lease tokens become t0, t1… in order of
    appearance, timestamps "set" (run_after: "due" or "later"), ages and lease times their sign."""

    TIMES = ("created_at", "updated_at", "started_at", "completed_at", "lease_expires_at")
    TIMES += ("replayed_at",)

    def __init__(self) -> None:
        self.tokens: dict[str, str] = {}

    def token(self, value: object) -> str | None:
        if value is None:
            return None
        return self.tokens.setdefault(str(value), f"t{len(self.tokens)}")

    def __call__(self, value: Any, key: str = "", now: datetime | None = None) -> Any:
        if isinstance(value, dict | asyncpg.Record):
            return {k: self(v, k, now) for k, v in dict(value).items()}
        if isinstance(value, list | tuple):
            return [self(v, key, now) for v in value]
        if key == "lease_token":
            return self.token(value)
        if key == "run_after" and isinstance(value, datetime) and now is not None:
            return "due" if value <= now else "later"
        if key in self.TIMES or key == "run_after":
            return None if value is None else "set"
        if isinstance(value, float):
            return (value > 0) - (value < 0)
        if isinstance(value, uuid.UUID):
            return str(value)
        return value


async def _scenario(conn: asyncpg.Connection) -> list[tuple[str, Any]]:
    """Every function, on its happy path and on each of its guards, called without p_table (the
    old functions take their default, 'jobs'). Returns (step, normalised answer) pairs."""
    norm = _Normaliser()
    seen: list[tuple[str, Any]] = []
    tokens: dict[str, str] = {}

    async def call(step: str, sql: str, *args: Any, ordered: bool = False) -> Any:
        rows = await conn.fetch(sql, *args)
        values = [tuple(r) if len(r) > 1 else r[0] for r in rows]
        values = [json.loads(v) if isinstance(v, str) and v[:1] in "{[" else v for v in values]
        if not ordered and len(values) > 1:  # UPDATE … RETURNING promises no order
            values.sort(key=lambda v: str(v["id"] if isinstance(v, dict) else v[0]))
        answer = norm(values[0] if sql.lstrip().startswith("select public.") else values)
        seen.append((step, answer))
        return values

    async def claim(step: str, *args: Any) -> None:
        for row in await call(
            step, "select * from public.image_worker_claim($1, $2, $3, $4)", *args
        ):
            tokens[row["id"]] = row["lease_token"]
            norm.token(row["lease_token"])

    def tok(i: int) -> uuid.UUID:
        return uuid.UUID(tokens[str(_job(i))])

    wrong = uuid.UUID(int=999)
    for i in range(1, 9):
        await conn.execute(
            "insert into public.jobs (id, prompt, created_at) "
            "values ($1, 'a lighthouse', now() - make_interval(secs => 100 - $2))",
            _job(i),
            i,
        )

    await claim("claim 0", "w1", 0, 60.0, "poll")
    await claim("claim null", "w1", None, 60.0, "poll")
    await claim("claim 3", "w1", 3, 60.0, "poll")

    heartbeat = "select public.image_worker_heartbeat($1, $2, $3, $4)"
    await call("heartbeat, wrong token", heartbeat, _job(1), wrong, 60.0, 40)
    await call("heartbeat with progress", heartbeat, _job(1), tok(1), 60.0, 50)
    await call("heartbeat keeps progress", heartbeat, _job(1), tok(1), 120.0, None)
    await call("progress", "select progress from public.jobs where id = $1", _job(1))

    complete = "select * from public.image_worker_complete_many($1::jsonb)"

    def results(*jobs: tuple[int, uuid.UUID]) -> str:
        return json.dumps(
            [
                {
                    "id": str(_job(i)),
                    "lease_token": str(t),
                    "image_url": f"https://img/{i}.png",
                    "thumbnail_url": f"https://img/{i}_t.png",
                }
                for i, t in jobs
            ]
        )

    await call("complete_many", complete, results((1, tok(1)), (2, wrong)))
    await call("complete_many again", complete, results((1, tok(1))))
    await call("complete_many, other token", complete, results((1, wrong)))

    fail = "select public.image_worker_fail($1, $2, $3)"
    await call("fail", fail, _job(2), tok(2), "the generator said no " + "x" * 2000)
    await call("fail again", fail, _job(2), tok(2), "a second reason")
    await call("fail, wrong token", fail, _job(2), wrong, "y")
    await call("fail, completed job", fail, _job(1), tok(1), "z")
    await call("failed message", "select error_message from public.jobs where id = $1", _job(2))

    retry = "select public.image_worker_retry($1, $2, $3, $4, $5)"
    await call("retry", retry, _job(3), tok(3), "boom", 60.0, 3)
    await call("retry, not the holder", retry, _job(3), tok(3), "boom", 60.0, 3)
    await claim("claim 2", "w2", 2, 60.0, "sweep")  # 4 and 5: 3 waits for its retry delay
    await conn.execute("update public.jobs set attempts = 3 where id = $1", _job(5))
    await call("retry, last attempt", retry, _job(5), tok(5), "boom", 0.0, 3)

    release = "select public.image_worker_release($1, $2)"
    await call("release", release, _job(4), tok(4))
    await call("release again", release, _job(4), tok(4))

    await claim("claim 5", "w3", 5, 60.0, None)  # 4, 6, 7, 8
    await conn.execute(
        "update public.jobs set lease_expires_at = now() - interval '2 minutes' where id = $1",
        _job(4),
    )
    await conn.execute(
        "update public.jobs set lease_expires_at = now() - interval '1 minute', attempts = 3, "
        "progress = 70 where id = $1",
        _job(6),
    )
    await conn.execute(
        "update public.jobs set started_at = now() - interval '1 hour' where id = $1", _job(7)
    )
    status = "select public.image_worker_status($1)"
    await call("status, 2 per list", status, 2)
    rescue = "select * from public.image_worker_rescue($1, $2)"
    await call("rescue the longest expired", rescue, 3, 1)
    await call("rescue", rescue, 3, 500)
    await call("rescue again", rescue, 3, 500)
    # Running without a lease (written by hand, or by an older worker): stuck, though rescue,
    # which looks for an expired lease, leaves it to replay.
    await conn.execute("update public.jobs set lease_expires_at = null where id = $1", _job(8))

    candidates = "select * from public.image_worker_replay_candidates($1, $2, $3, $4)"
    await call("candidates, stuck", candidates, None, None, False, 10000, ordered=True)
    await call(
        "candidates, stuck for 10 s and failed", candidates, None, 10.0, True, 10000, ordered=True
    )
    await call("candidates, limit 1", candidates, None, 10.0, True, 1, ordered=True)
    await call(
        "candidates, named", candidates, [_job(7), _job(1), _job(42)], None, False, 10, ordered=True
    )

    replay = "select * from public.image_worker_replay($1, $2, $3, $4, $5, $6)"
    named = [_job(7), _job(2)]
    await call("replay unforced", replay, named, False, None, False, False, "r")
    await call("replay forced", replay, named, True, None, False, True, "r" * 600)
    await call("replay, nothing left", replay, named, True, None, False, True, "again")

    await call("status", status, 20)
    await call("status, 1 per list", status, 1)

    now = await conn.fetchval("select now()")
    rows = await conn.fetch("select * from public.jobs order by id")
    seen.append(("rows", [norm(dict(r), now=now) for r in rows]))
    return seen
