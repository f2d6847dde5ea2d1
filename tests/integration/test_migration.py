"""The jobs migration: idempotent, and its RLS policies hold through the real supabase client."""

from __future__ import annotations

import uuid

import pytest
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from devstack.postgres import bootstrap, migration_files
from devstack.stack import DevStack


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


async def test_user_inserts_and_reads_only_their_own_jobs(stack: DevStack) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    as_alice = await _client(stack, stack.keys.user_token(alice))
    as_bob = await _client(stack, stack.keys.user_token(bob))

    inserted = (
        await as_alice.table("jobs")
        .insert(
            {
                "user_id": str(alice),
                "prompt": "a castle",
                "aspect_ratio": "16:9",
                # Whatever a user sends for these is replaced: they only request work.
                "status": "complete",
                "image_url": "https://evil.example/x.png",
                "attempts": 99,
                "progress": 100,
            }
        )
        .execute()
    ).data[0]
    assert inserted["status"] == "pending"
    assert inserted["image_url"] is None and inserted["attempts"] == 0
    assert inserted["progress"] == 0

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
    assert (await anon.table("jobs").select("*").execute()).data == []
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
