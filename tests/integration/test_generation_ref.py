"""``generation_ref`` in the database: written under the lease, returned by the claim, kept by
release and rescue, cleared by completion, failure, cancellation and replay (contract v2,
"Never paying twice"), through the worker's own store and PostgREST."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest_asyncio

from devstack.stack import DevStack
from tests.helpers import insert_jobs, worker_settings
from worker.store import ClaimedJob
from worker.store.postgrest import PostgrestStore

REF = {"v": 1, "kind": "replicate", "id": "abc123", "url": "http://x/v1/predictions/abc123"}


@pytest_asyncio.fixture
async def store(stack: DevStack) -> AsyncIterator[PostgrestStore]:
    store = PostgrestStore(worker_settings(stack, worker_lease_seconds=30))
    await store.open()
    yield store
    await store.close()


async def claim_one(stack: DevStack, store: PostgrestStore) -> ClaimedJob:
    (job_id,) = await insert_jobs(stack, 1)
    (claim,) = await store.claim(1)
    assert claim.job.id == job_id
    return claim


async def ref_of(stack: DevStack, job_id: str) -> object:
    return await stack.pool.fetchval(
        "select generation_ref from public.jobs where id = $1", uuid.UUID(job_id)
    )


async def test_written_under_the_lease_and_returned_by_the_next_claim(
    stack: DevStack, store: PostgrestStore
) -> None:
    claim = await claim_one(stack, store)
    assert claim.job.generation_ref is None
    stranger = ClaimedJob(claim.job, str(uuid.uuid4()))
    assert await store.set_generation_ref(stranger, REF) is False
    assert await ref_of(stack, claim.job.id) is None
    assert await store.set_generation_ref(claim, REF) is True
    assert await store.set_generation_ref(claim, REF) is True  # the same again: still ours
    assert await store.release(claim)  # a SIGTERM release keeps it
    (again,) = await store.claim(1)
    assert again.job.id == claim.job.id and again.job.generation_ref == REF


async def test_kept_by_rescue_and_retry_cleared_by_complete_and_fail(
    stack: DevStack, store: PostgrestStore
) -> None:
    claim = await claim_one(stack, store)
    await store.set_generation_ref(claim, REF)
    await stack.pool.execute(
        "update public.jobs set lease_expires_at = now() - interval '1 s' where id = $1",
        uuid.UUID(claim.job.id),
    )
    (rescued,) = await store.rescue()
    assert rescued.status == "pending" and await ref_of(stack, claim.job.id) is not None
    (claim,) = await store.claim(1)
    assert await store.retry(claim, "transient", 0) == "pending"
    assert claim.job.generation_ref == REF and await ref_of(stack, claim.job.id) is not None
    (claim,) = await store.claim(1)
    assert (await store.complete_many([(claim, "https://i/x.png", "https://i/t.png")]))[
        claim.job.id
    ]
    assert await ref_of(stack, claim.job.id) is None
    failing = await claim_one(stack, store)
    await store.set_generation_ref(failing, REF)
    assert await store.fail(failing, "refused")
    assert await ref_of(stack, failing.job.id) is None


async def test_in_use_while_the_job_will_run_and_still_refers_to_it(
    stack: DevStack, store: PostgrestStore
) -> None:
    claim = await claim_one(stack, store)
    assert await store.generation_ref_in_use(claim.job.id, "abc123") is False
    await store.set_generation_ref(claim, REF)
    assert await store.generation_ref_in_use(claim.job.id, "abc123") is True
    assert await store.generation_ref_in_use(claim.job.id, "another") is False
    await store.release(claim)  # pending, with the handle: the next worker resumes it
    assert await store.generation_ref_in_use(claim.job.id, "abc123") is True
    # An operator's forced replay of the running job starts it afresh: the old generation is
    # nobody's any more.
    (claim,) = await store.claim(1)
    await stack.pool.execute(
        "select * from public.image_worker_replay(array[$1]::uuid[], p_named => true,"
        " p_force => true)",
        uuid.UUID(claim.job.id),
    )
    assert await ref_of(stack, claim.job.id) is None
    assert await store.generation_ref_in_use(claim.job.id, "abc123") is False


async def test_only_the_service_role_may_call_the_functions(stack: DevStack) -> None:
    rows = await stack.pool.fetch(
        "select p.proname::text as name,"
        " has_function_privilege('anon', p.oid, 'execute') as anon,"
        " has_function_privilege('authenticated', p.oid, 'execute') as authenticated,"
        " has_function_privilege('service_role', p.oid, 'execute') as service_role"
        " from pg_proc p where p.proname in"
        " ('image_worker_set_generation_ref', 'image_worker_generation_ref_in_use')"
    )
    assert sorted((r["name"], r["anon"], r["authenticated"], r["service_role"]) for r in rows) == [
        ("image_worker_generation_ref_in_use", False, False, True),
        ("image_worker_set_generation_ref", False, False, True),
    ]
