"""Many users, one queue (contract v2): the jobs table as a safe API for signed-in users, their
limits, fair claims, idempotency keys and cancellation.

Everything a user does goes through the real supabase-py client (or plain HTTP where the status
line itself is the point) with a user JWT the devstack mints, against the PostgREST stand-in,
whose answers (status, error body) are PostgREST's.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
from postgrest.exceptions import APIError
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from devstack.stack import DevStack
from tests.helpers import (
    instant_step,
    running_worker,
    spawn_worker,
    wait_for,
    worker_env,
    worker_settings,
)
from worker.jobs import Job, JobResult
from worker.observability import metrics
from worker.store.postgrest import PostgrestStore

DEFAULT = "00000000-0000-0000-0000-000000000000"
REQUEST_COLUMNS = ("prompt", "model", "aspect_ratio", "idempotency_key", "user_id")


async def client(stack: DevStack, user: uuid.UUID | None = None) -> AsyncClient:
    """The app's client: the anon key, and the user's access token when signed in."""
    headers = {"Authorization": f"Bearer {stack.keys.user_token(user)}"} if user else {}
    return await acreate_client(
        stack.url,
        stack.keys.anon_key,
        options=AsyncClientOptions(headers=headers, persist_session=False),
    )


async def service(stack: DevStack) -> AsyncClient:
    return await acreate_client(stack.url, stack.keys.service_role_key)


async def post(stack: DevStack, user: uuid.UUID | None, path: str, body: Any) -> httpx.Response:
    """A raw request, for the status line and headers a client library hides."""
    headers = {"apikey": stack.keys.anon_key, "Prefer": "return=representation"}
    if user is not None:
        headers["Authorization"] = f"Bearer {stack.keys.user_token(user)}"
    async with httpx.AsyncClient(base_url=f"{stack.url}/rest/v1") as http:
        return await http.post(path, json=body, headers=headers)


async def refused(call) -> APIError:
    with pytest.raises(APIError) as caught:
        await call.execute()
    return caught.value


async def count_jobs(stack: DevStack, user: uuid.UUID | None = None) -> int:
    if user is None:
        return await stack.pool.fetchval("select count(*) from public.jobs")
    return await stack.pool.fetchval("select count(*) from public.jobs where user_id = $1", user)


async def set_limits(stack: DevStack, user: str | uuid.UUID, **limits: Any) -> None:
    columns = ", ".join(["user_id", *limits])
    values = ", ".join(f"${i}" for i in range(1, len(limits) + 2))
    updates = ", ".join(f"{c} = excluded.{c}" for c in limits) or "user_id = excluded.user_id"
    await stack.pool.execute(
        f"insert into public.image_worker_limits ({columns}) values ({values}) "
        f"on conflict (user_id) do update set {updates}",
        uuid.UUID(str(user)),
        *limits.values(),
    )


# -- inserts: what a user may set, and the rules ------------------------------------------------


async def test_a_user_insert_sets_only_the_request_columns(stack: DevStack) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    as_alice = await client(stack, alice)
    row = (
        await as_alice.table("jobs")
        .insert({"prompt": "a castle", "model": "flux", "aspect_ratio": "16:9",
                 "idempotency_key": "k-1"})
        .execute()
    ).data[0]  # fmt: skip
    assert row["user_id"] == str(alice)  # defaults to auth.uid()
    assert (row["status"], row["priority"], row["attempts"]) == ("pending", 0, 0)
    assert row["generation_ref"] is None and row["cancel_requested_at"] is None
    # select('*') works for the owner: every column is readable.
    (mine,) = (await as_alice.table("jobs").select("*").execute()).data
    assert mine == row

    chosen_id = str(uuid.uuid4())
    for column, value in [
        ("id", chosen_id), ("status", "complete"), ("priority", 32000), ("attempts", 99),
        ("image_url", "https://evil.example/x.png"), ("lease_token", str(uuid.uuid4())),
        ("generation_ref", {"id": "x"}), ("cancel_requested_at", "2030-01-01T00:00:00Z"),
        ("created_at", "2000-01-01T00:00:00Z"), ("worker_id", "me"), ("progress", 100),
    ]:  # fmt: skip
        answer = await post(stack, alice, "jobs", {"prompt": "sneaky", column: value})
        assert answer.status_code == 403, (column, answer.text)
        assert answer.json() == {
            "code": "42501", "details": None, "hint": None,
            "message": "permission denied for table jobs",
        }  # fmt: skip
    assert await count_jobs(stack) == 1
    assert not await stack.pool.fetchval(
        "select exists (select 1 from public.jobs where id = $1)", uuid.UUID(chosen_id)
    )

    # Only for themselves.
    error = await refused(as_alice.table("jobs").insert({"prompt": "x", "user_id": str(bob)}))
    assert error.code == "42501"
    assert await count_jobs(stack) == 1


@pytest.mark.parametrize(
    ("job", "column", "message"),
    [
        ({"prompt": "   "}, "prompt", "prompt must not be blank"),
        ({"prompt": "\n\t \u00a0\u3000"}, "prompt", "prompt must not be blank"),
        ({"prompt": None}, "prompt", "prompt must not be blank"),
        ({"prompt": "x" * 4001}, "prompt",
         "prompt must be at most 4000 characters (this one has 4001)"),
        ({"prompt": "x" * 5_000_000}, "prompt",
         "prompt must be at most 4000 characters (this one has 5000000)"),
        ({"prompt": "a fox", "aspect_ratio": "99999:1"}, "aspect_ratio",
         "aspect_ratio must be one of 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3, 21:9, 9:21"),
        ({"prompt": "a fox", "aspect_ratio": None}, "aspect_ratio",
         "aspect_ratio must be one of 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3, 21:9, 9:21"),
        ({"prompt": "a fox", "model": "m" * 201}, "model", "model must be at most 200 characters"),
        ({"prompt": "a fox", "idempotency_key": " "}, "idempotency_key",
         "idempotency_key must be 1 to 200 characters, not blank"),
    ],
)  # fmt: skip
async def test_bad_inserts_are_rejected_naming_the_rule(
    stack: DevStack, job: dict, column: str, message: str
) -> None:
    user = uuid.uuid4()
    error = await refused((await client(stack, user)).table("jobs").insert(job))
    assert (error.code, error.message) == ("23514", message)
    assert column in error.message
    answer = await post(stack, user, "jobs", job)
    assert answer.status_code == 400
    assert set(answer.json()) == {"code", "details", "hint", "message"}
    assert await count_jobs(stack) == 0


async def test_a_bulk_insert_with_one_bad_row_inserts_nothing(stack: DevStack) -> None:
    user = uuid.uuid4()
    rows = [{"prompt": f"job {i}", "aspect_ratio": "1:1"} for i in range(2000)]
    rows[1234]["aspect_ratio"] = "99999:1"
    error = await refused((await client(stack, user)).table("jobs").insert(rows))
    assert error.code == "23514" and "aspect_ratio" in error.message
    assert await count_jobs(stack) == 0


async def test_models_are_checked_against_the_enabled_rows(stack: DevStack) -> None:
    user = uuid.uuid4()
    jobs = (await client(stack, user)).table("jobs")
    # No rows: any model.
    await jobs.insert({"prompt": "a", "model": "anything"}).execute()
    # Only disabled rows: still any model.
    await stack.pool.execute(
        "insert into public.image_worker_models (name, enabled) values ('retired', false)"
    )
    await jobs.insert({"prompt": "b", "model": "anything"}).execute()
    # Enabled rows: one of them, or none at all (the generator's default).
    await stack.pool.execute(
        "insert into public.image_worker_models (name) values ('flux-schnell'), ('sdxl')"
    )
    error = await refused(jobs.insert({"prompt": "c", "model": "anything"}))
    assert error.code == "23514"
    assert error.message == "model is not one of the enabled models"
    assert error.details == "model was 'anything'"
    assert "image_worker_models" in (error.hint or "")
    error = await refused(jobs.insert({"prompt": "d", "model": "retired"}))
    assert error.message == "model is not one of the enabled models"
    await jobs.insert({"prompt": "e", "model": "sdxl"}).execute()
    await jobs.insert({"prompt": "f"}).execute()
    assert await count_jobs(stack, user) == 4
    # A user may list the enabled models (a model picker), nothing else.
    models = (await client(stack, user)).table("image_worker_models")
    listed = (await models.select("*").order("name").execute()).data
    assert listed == [{"name": "flux-schnell", "enabled": True}, {"name": "sdxl", "enabled": True}]
    # The service role's inserts are trusted.
    await (await service(stack)).table("jobs").insert({"prompt": "g", "model": "x"}).execute()


async def test_privileges_are_trimmed_to_what_the_app_needs(stack: DevStack) -> None:
    privileges = (
        "SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER",
    )  # fmt: skip
    for role, allowed in (("anon", set()), ("authenticated", {"SELECT"})):
        for privilege in privileges:
            has = await stack.pool.fetchval(
                "select has_table_privilege($1, 'public.jobs', $2)", role, privilege
            )
            assert has == (privilege in allowed), (role, privilege)
    columns = await stack.pool.fetch(
        "select column_name::text as name, "
        "has_column_privilege('authenticated', 'public.jobs', column_name, 'INSERT') as ins, "
        "has_column_privilege('anon', 'public.jobs', column_name, 'INSERT') as anon_ins "
        "from information_schema.columns where table_schema = 'public' and table_name = 'jobs'"
    )
    assert {r["name"] for r in columns if r["ins"]} == set(REQUEST_COLUMNS)
    assert not any(r["anon_ins"] for r in columns)
    for table in ("image_worker_limits", "image_worker_models", "image_worker_queues"):
        for privilege in ("INSERT", "UPDATE", "DELETE", "TRUNCATE"):
            for role in ("anon", "authenticated"):
                assert not await stack.pool.fetchval(
                    "select has_table_privilege($1, $2, $3)", role, f"public.{table}", privilege
                ), (table, role, privilege)

    await stack.pool.execute("insert into public.jobs (prompt) values ('hidden')")
    anon = await client(stack)
    error = await refused(anon.table("jobs").select("*"))
    assert error.code == "42501"
    answer = await post(stack, None, "jobs", {"prompt": "anonymous"})
    assert answer.status_code == 401 and answer.json()["code"] == "42501"
    user = await client(stack, uuid.uuid4())
    assert (await refused(user.table("image_worker_queues").select("*"))).code == "42501"
    error = await refused(user.table("image_worker_limits").insert({"user_id": DEFAULT}))
    assert error.code == "42501"


# -- idempotency keys -----------------------------------------------------------------------------


async def test_a_repeated_idempotency_key_is_409_and_creates_nothing(stack: DevStack) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    jobs = (await client(stack, alice)).table("jobs")
    first = (await jobs.insert({"prompt": "a boat", "idempotency_key": "click-1"}).execute()).data
    answer = await post(stack, alice, "jobs", {"prompt": "a boat", "idempotency_key": "click-1"})
    assert answer.status_code == 409
    body = answer.json()
    assert body["code"] == "23505" and "idempotency_key" in body["message"]
    assert await count_jobs(stack, alice) == 1
    # The documented way to read the existing job back.
    existing = (await jobs.select("*").eq("idempotency_key", "click-1").single().execute()).data
    assert existing["id"] == first[0]["id"]
    # Keys are per user.
    other = (await client(stack, bob)).table("jobs")
    await other.insert({"prompt": "a boat", "idempotency_key": "click-1"}).execute()
    # A double click: two inserts at once, one job.
    answers = await asyncio.gather(
        *(post(stack, alice, "jobs", {"prompt": "twice", "idempotency_key": "click-2"})
          for _ in range(2))
    )  # fmt: skip
    assert sorted(a.status_code for a in answers) == [201, 409]
    assert await count_jobs(stack, alice) == 2


async def test_a_repeated_key_is_409_even_at_a_limit(stack: DevStack) -> None:
    user = uuid.uuid4()
    await set_limits(stack, user, max_queued=1)
    jobs = (await client(stack, user)).table("jobs")
    await jobs.insert({"prompt": "one", "idempotency_key": "k"}).execute()
    error = await refused(jobs.insert({"prompt": "one", "idempotency_key": "k"}))
    assert error.code == "23505"
    error = await refused(jobs.insert({"prompt": "two", "idempotency_key": "other"}))
    assert error.code == "PT429"


# -- limits ---------------------------------------------------------------------------------------


async def test_max_queued_counts_pending_and_running_jobs(stack: DevStack) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    await set_limits(stack, DEFAULT, max_queued=3, priority=1)
    jobs = (await client(stack, user)).table("jobs")
    inserted = [(await jobs.insert({"prompt": f"job {i}"}).execute()).data[0] for i in range(3)]
    assert {r["priority"] for r in inserted} == {1}  # the default row's priority
    answer = await post(stack, user, "jobs", {"prompt": "one too many"})
    assert answer.status_code == 429
    assert answer.json() == {
        "code": "PT429",
        "details": None,
        "hint": "Wait for a job to finish, or cancel one.",
        "message": "max_queued reached: at most 3 of your jobs may be pending or running at once",
    }
    # Running jobs count too; finished and cancelled ones do not.
    await stack.pool.execute(
        "update public.jobs set status = 'running' where id = $1", uuid.UUID(inserted[0]["id"])
    )
    assert (await refused(jobs.insert({"prompt": "x"}))).code == "PT429"
    await (await client(stack, user)).rpc("cancel_job", {"job_id": inserted[1]["id"]}).execute()
    await jobs.insert({"prompt": "room again"}).execute()
    # Another user has a queue of their own.
    await (await client(stack, other)).table("jobs").insert({"prompt": "mine"}).execute()
    # A bulk insert past the limit inserts nothing.
    await set_limits(stack, DEFAULT, max_queued=10)
    error = await refused(jobs.insert([{"prompt": f"bulk {i}"} for i in range(2000)]))
    assert error.code == "PT429" and "max_queued" in error.message
    assert await count_jobs(stack, user) == 4
    # A user's own row replaces the default entirely (here: no limit, priority 0).
    await set_limits(stack, user)
    await jobs.insert([{"prompt": f"bulk {i}"} for i in range(50)]).execute()
    # The service role's inserts are trusted, and count against the user's max_queued.
    await set_limits(stack, user, max_queued=60)
    await (
        (await service(stack))
        .table("jobs")
        .insert([{"prompt": "backend", "user_id": str(user)}] * 10)
        .execute()
    )
    assert (await refused(jobs.insert({"prompt": "x"}))).code == "PT429"


async def test_concurrent_inserts_cannot_slip_past_max_queued(stack: DevStack) -> None:
    user = uuid.uuid4()
    await set_limits(stack, user, max_queued=5)
    answers = await asyncio.gather(
        *(post(stack, user, "jobs", {"prompt": f"race {i}"}) for i in range(30))
    )
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] * 5 + [429] * 25
    assert await count_jobs(stack, user) == 5


async def test_max_inserts_per_minute(stack: DevStack) -> None:
    user = uuid.uuid4()
    await set_limits(stack, user, max_inserts_per_minute=3)
    jobs = (await client(stack, user)).table("jobs")
    await jobs.insert([{"prompt": "a"}, {"prompt": "b"}]).execute()
    await jobs.insert({"prompt": "c"}).execute()
    answer = await post(stack, user, "jobs", {"prompt": "d"})
    assert answer.status_code == 429
    assert answer.json()["message"] == (
        "max_inserts_per_minute reached: at most 3 jobs in any 60 seconds"
    )
    error = await refused(jobs.insert([{"prompt": f"bulk {i}"} for i in range(2000)]))
    assert "max_inserts_per_minute" in error.message
    # Concurrent inserts count each other too.
    await stack.pool.execute("delete from public.jobs")
    answers = await asyncio.gather(*(post(stack, user, "jobs", {"prompt": "r"}) for _ in range(10)))
    assert sorted(a.status_code for a in answers) == [201] * 3 + [429] * 7
    # A minute later there is room again.
    await stack.pool.execute("update public.jobs set created_at = now() - interval '61 seconds'")
    await jobs.insert({"prompt": "later"}).execute()
    assert await count_jobs(stack, user) == 4


# -- fair claims (the SQL, through the worker's own RPC) -----------------------------------------


async def claim(stack: DevStack, limit: int, worker: str = "w") -> list[dict]:
    rows = await stack.pool.fetch(
        "select * from public.image_worker_claim($1, $2, 60, 'poll')", worker, limit
    )
    return [json.loads(r[0]) for r in rows]


async def insert_for(stack: DevStack, user: uuid.UUID | None, n: int, **cols: Any) -> list[str]:
    rows = await stack.pool.fetch(
        "insert into public.jobs (prompt, user_id, priority, created_at) "
        "select $1 || ' #' || g, $2, $3, now() - make_interval(secs => $4 - g) "
        "from generate_series(1, $4) g returning id",
        cols.get("prompt", "job"),
        user,
        cols.get("priority", 0),
        n,
    )
    return [str(r["id"]) for r in rows]


async def test_a_small_user_is_not_starved_by_a_backlog(stack: DevStack) -> None:
    big, small = uuid.uuid4(), uuid.uuid4()
    backlog = await insert_for(stack, big, 300)
    assert [r["id"] for r in await claim(stack, 4)] == backlog[:4]  # oldest first
    # The small user inserts one job, through the app, after the whole backlog.
    mine = await (await client(stack, small)).table("jobs").insert({"prompt": "mine"}).execute()
    (next_one,) = await claim(stack, 1)  # the next free slot
    assert next_one["id"] == mine.data[0]["id"]
    rest = await claim(stack, 32)
    assert [r["id"] for r in rest] == backlog[4:36]  # the big user gets every other slot


async def test_claims_take_priority_then_turns_then_age(stack: DevStack) -> None:
    users = [uuid.uuid4() for _ in range(3)]
    jobs = {u: await insert_for(stack, u, 4) for u in users}
    anonymous = await insert_for(stack, None, 2)  # no user_id: one more user
    urgent = await insert_for(stack, uuid.uuid4(), 2, priority=5)
    first = await claim(stack, 6)
    assert [r["id"] for r in first[:2]] == urgent  # highest priority first, oldest first
    by_user: dict[str, list[str]] = {}
    for r in first + await claim(stack, 4):
        by_user.setdefault(r["user_id"] or "none", []).append(r["id"])
    # Every user got a turn before anyone got a third job; each user's jobs oldest first.
    assert {len(v) for k, v in by_user.items() if k in map(str, users)} == {2}
    assert by_user["none"] == anonymous
    for u in users:
        assert by_user[str(u)] == jobs[u][:2]


async def test_max_running_passes_a_user_over_across_concurrent_claims(stack: DevStack) -> None:
    capped, free = uuid.uuid4(), uuid.uuid4()
    await set_limits(stack, capped, max_running=2)
    await insert_for(stack, capped, 50)
    await insert_for(stack, free, 50)
    # Twenty replicas claim at once.
    results = await asyncio.gather(*(claim(stack, 5, f"replica-{i}") for i in range(20)))
    claimed = [r for rows in results for r in rows]
    assert sum(r["user_id"] == str(capped) for r in claimed) == 2
    assert sum(r["user_id"] == str(free) for r in claimed) == 50
    assert len({r["id"] for r in claimed}) == len(claimed)  # nothing claimed twice
    # When one of the capped user's jobs finishes, the next claim takes one more.
    running = await stack.pool.fetch(
        "select id, lease_token from public.jobs where user_id = $1 and status = 'running'", capped
    )
    await stack.pool.execute(
        "select * from public.image_worker_complete_many($1::jsonb)",
        json.dumps([{"id": str(running[0]["id"]), "lease_token": str(running[0]["lease_token"]),
                     "image_url": "https://x", "thumbnail_url": "https://y"}]),
    )  # fmt: skip
    assert [r["user_id"] for r in await claim(stack, 10)] == [str(capped)]
    # A lease that expired does not count (the job is stuck, its worker gone).
    await stack.pool.execute(
        "update public.jobs set lease_expires_at = now() - interval '1 second' "
        "where user_id = $1 and status = 'running'",
        capped,
    )
    assert len(await claim(stack, 10)) == 2


async def test_a_delayed_retry_does_not_block_its_queue_or_the_others(stack: DevStack) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    (delayed,) = await insert_for(stack, user, 1)
    await stack.pool.execute(
        "update public.jobs set run_after = now() + interval '1 hour' where id = $1",
        uuid.UUID(delayed),
    )
    ready = await insert_for(stack, other, 1)
    assert [r["id"] for r in await claim(stack, 5)] == ready
    assert await claim(stack, 5) == []
    await stack.pool.execute("update public.jobs set run_after = now() where id = $1",
                             uuid.UUID(delayed))  # fmt: skip
    assert [r["id"] for r in await claim(stack, 5)] == [delayed]


# -- cancelling -----------------------------------------------------------------------------------


async def test_cancel_job_for_users_and_the_service_role(stack: DevStack) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    as_alice, as_bob = await client(stack, alice), await client(stack, bob)
    running = (await as_alice.table("jobs").insert({"prompt": "r"}).execute()).data[0]["id"]
    assert [r["id"] for r in await claim(stack, 1)] == [running]
    pending = (await as_alice.table("jobs").insert({"prompt": "p"}).execute()).data[0]["id"]

    # Someone else's job, or no job at all: the same 404, nothing changed.
    for who, job_id in ((as_bob, pending), (as_bob, running), (as_alice, str(uuid.uuid4()))):
        error = await refused(who.rpc("cancel_job", {"job_id": job_id}))
        assert (error.code, error.message) == ("PT404", "no such job")
    answer = await post(stack, bob, "rpc/cancel_job", {"job_id": pending})
    assert answer.status_code == 404
    anon = await post(stack, None, "rpc/cancel_job", {"job_id": pending})
    assert anon.status_code == 401

    assert (await as_alice.rpc("cancel_job", {"job_id": pending}).execute()).data == "cancelled"
    assert (await as_alice.rpc("cancel_job", {"job_id": running}).execute()).data == "running"
    rows = {
        str(r["id"]): r
        for r in await stack.pool.fetch("select * from public.jobs where user_id = $1", alice)
    }
    assert rows[pending]["status"] == "cancelled" and rows[pending]["completed_at"] is not None
    assert rows[running]["status"] == "running" and rows[running]["cancel_requested_at"]
    # Finished jobs are left as they are; cancelling again changes nothing.
    assert (await as_alice.rpc("cancel_job", {"job_id": pending}).execute()).data == "cancelled"
    done = (await as_alice.table("jobs").insert({"prompt": "d"}).execute()).data[0]["id"]
    await stack.pool.execute("update public.jobs set status = 'complete' where id = $1",
                             uuid.UUID(done))  # fmt: skip
    assert (await as_alice.rpc("cancel_job", {"job_id": done}).execute()).data == "complete"
    # The service role cancels anyone's job.
    other = (await as_bob.table("jobs").insert({"prompt": "b"}).execute()).data[0]["id"]
    result = await (await service(stack)).rpc("cancel_job", {"job_id": other}).execute()
    assert result.data == "cancelled"
    # A cancelled job is never claimed.
    assert await claim(stack, 10) == []


async def test_the_worker_side_of_a_cancel_through_the_store(stack: DevStack) -> None:
    """Heartbeat answers None once a cancel is requested; the job ends cancelled under its
    lease; a job released or rescued before its worker saw the cancel ends cancelled too."""
    store = PostgrestStore(worker_settings(stack, worker_lease_seconds=30))
    await store.open()
    try:
        ids = await insert_for(stack, uuid.uuid4(), 3)
        claims = {c.job.id: c for c in await store.claim(3)}
        await stack.pool.execute('update public.jobs set generation_ref = \'{"id": "gen"}\'::jsonb')
        watched, released, rescued = (claims[i] for i in ids)
        assert await store.heartbeat(watched) is True
        assert await store.cancel_requested(ids) == []
        for job_id in ids:
            await (await service(stack)).rpc("cancel_job", {"job_id": job_id}).execute()
        assert await store.heartbeat(watched, progress=40) is None
        assert sorted(await store.cancel_requested([*ids, str(uuid.uuid4())])) == sorted(ids)
        assert await store.mark_cancelled(watched) is True
        assert await store.mark_cancelled(watched) is True  # idempotent for the holder
        assert await store.release(released) is True
        await stack.pool.execute(
            "update public.jobs set lease_expires_at = now() - interval '1 second' where id = $1",
            uuid.UUID(rescued.job.id),
        )
        assert [(r.id, r.status) for r in await store.rescue()] == [(rescued.job.id, "cancelled")]
        assert await store.heartbeat(watched) is False
    finally:
        await store.close()
    rows = await stack.pool.fetch("select status, generation_ref, completed_at from public.jobs")
    assert {(r["status"], r["generation_ref"]) for r in rows} == {("cancelled", None)}
    assert all(r["completed_at"] for r in rows)


class SlowGeneration:
    """A step that 'generates' for a long time, then 'uploads'; records both."""

    def __init__(self) -> None:
        self.uploaded: list[str] = []

    async def __call__(self, job: Job, progress) -> JobResult:
        await asyncio.sleep(30)
        self.uploaded.append(job.id)
        return await instant_step(job, progress)


@pytest.mark.parametrize("mode", ["realtime", "polling"])
async def test_a_running_job_is_cancelled_by_its_user_in_both_modes(
    stack: DevStack, mode: str
) -> None:
    """The user's cancel reaches the worker holding the job: by the Realtime UPDATE event in
    realtime mode (no poll, no renewal in the window), by the cancel watcher's poll in polling
    mode. The worker stops the step, uploads nothing, and writes `cancelled` under its lease."""
    poll = 30.0 if mode == "realtime" else 0.5
    settings = worker_settings(
        stack, worker_mode=mode, worker_poll_interval_seconds=poll, worker_lease_seconds=60
    )
    user = uuid.uuid4()
    as_user = await client(stack, user)
    step = SlowGeneration()
    via = "realtime" if mode == "realtime" else "watch"
    noticed_before = metrics.CANCELS_NOTICED.labels(via)._value.get()
    async with running_worker(settings, step) as worker:
        if mode == "realtime":
            await wait_for(lambda: _healthy(worker), timeout=60, interval=0.05)
        job_id = (await as_user.table("jobs").insert({"prompt": "slow"}).execute()).data[0]["id"]
        await wait_for(lambda: _status_is(stack, job_id, "running"), timeout=30, interval=0.02)
        assert (await as_user.rpc("cancel_job", {"job_id": job_id}).execute()).data == "running"
        await wait_for(lambda: _status_is(stack, job_id, "cancelled"), timeout=10, interval=0.02)
        # The user watches it end: their own row says so.
        (row,) = (await as_user.table("jobs").select("*").eq("id", job_id).execute()).data
        assert row["status"] == "cancelled"
    db_row = await stack.pool.fetchrow(
        "select *, extract(epoch from completed_at - cancel_requested_at) as latency "
        "from public.jobs where id = $1",
        uuid.UUID(job_id),
    )
    assert db_row["lease_token"] is not None and db_row["image_url"] is None
    assert step.uploaded == []
    assert metrics.CANCELS_NOTICED.labels(via)._value.get() == noticed_before + 1
    assert db_row["latency"] < (2.0 if mode == "realtime" else poll + 2.0)


async def test_a_job_cancelled_in_the_real_pipeline_is_never_uploaded(stack: DevStack) -> None:
    """The production step (generator stand-in, Cloudinary stand-in): cancelled while the
    generator works, the job gets no upload at all, and the worker goes on with the next job."""
    settings = worker_settings(stack, worker_mode="realtime", worker_lease_seconds=60)
    as_user = await client(stack, uuid.uuid4())
    jobs = as_user.table("jobs")
    async with running_worker(settings) as worker:
        await wait_for(lambda: _healthy(worker), timeout=60, interval=0.05)
        slow = (await jobs.insert({"prompt": "a slow one [gen:slow:20]"}).execute()).data[0]["id"]
        await wait_for(lambda: _generating(stack, slow), timeout=30, interval=0.02)
        assert (await as_user.rpc("cancel_job", {"job_id": slow}).execute()).data == "running"
        await wait_for(lambda: _status_is(stack, slow, "cancelled"), timeout=5, interval=0.02)
        quick = (await jobs.insert({"prompt": "a quick one"}).execute()).data[0]["id"]
        await wait_for(lambda: _status_is(stack, quick, "complete"), timeout=30, interval=0.05)
    assert not [key for key in stack.cloudinary.uploads if slow in key]
    assert [key for key in stack.cloudinary.uploads if quick in key]


async def _generating(stack: DevStack, job_id: str) -> bool:
    return bool(stack.generator.calls_for(job_id, "POST"))


async def _healthy(worker) -> bool:
    return worker.realtime is not None and worker.realtime.healthy


async def _status_is(stack: DevStack, job_id: str, status: str) -> bool:
    return await stack.pool.fetchval(
        "select status = $2 from public.jobs where id = $1", uuid.UUID(job_id), status
    )


async def test_a_pending_job_cancelled_by_its_user_is_never_run(stack: DevStack) -> None:
    user = uuid.uuid4()
    as_user = await client(stack, user)
    job_id = (await as_user.table("jobs").insert({"prompt": "never"}).execute()).data[0]["id"]
    assert (await as_user.rpc("cancel_job", {"job_id": job_id}).execute()).data == "cancelled"
    kept = (await as_user.table("jobs").insert({"prompt": "kept"}).execute()).data[0]["id"]
    async with running_worker(worker_settings(stack), instant_step):
        await wait_for(lambda: _status_is(stack, kept, "complete"), timeout=30)
    assert await _status_is(stack, job_id, "cancelled")


# -- the whole thing with worker processes ---------------------------------------------------------


async def test_max_running_holds_across_three_worker_processes(stack: DevStack) -> None:
    capped, free = uuid.uuid4(), uuid.uuid4()
    await set_limits(stack, capped, max_running=2)
    capped_jobs = await insert_for(stack, capped, 12, prompt="capped [gen:slow:0.4]")
    await insert_for(stack, free, 12, prompt="free [gen:slow:0.4]")
    env = worker_env(
        stack, worker_concurrency=4, worker_poll_interval_seconds=0.1, worker_lease_seconds=30
    )
    procs = [spawn_worker(env, f"capped-{i}") for i in range(3)]
    try:
        await wait_for(lambda: _all_complete(stack), timeout=180, interval=0.2)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)
    rows = await stack.pool.fetch(
        "select user_id, worker_id, started_at, completed_at from public.jobs "
        "where status = 'complete'"
    )
    assert len(rows) == 24

    def most_at_once(user: uuid.UUID) -> int:
        events = sorted(
            [(r["started_at"], 1) for r in rows if r["user_id"] == user]
            + [(r["completed_at"], -1) for r in rows if r["user_id"] == user]
        )
        now = peak = 0
        for _, step in events:
            now += step
            peak = max(peak, now)
        return peak

    assert most_at_once(capped) <= 2
    assert most_at_once(free) > 2  # the workers had room: the cap, not capacity, held it
    assert len({r["worker_id"] for r in rows if r["user_id"] == capped}) >= 2
    assert len(capped_jobs) == 12


async def _all_complete(stack: DevStack) -> bool:
    return not await stack.pool.fetchval(
        "select count(*) from public.jobs where status <> 'complete'"
    )
