"""A cancelled job's generation is cancelled at the provider (Replicate, fal: they have a cancel
call), through the whole worker: ``cancel_job`` → the worker stops the job's step → the
generator fires the provider's cancel → the job ends ``cancelled`` with nothing uploaded."""

from __future__ import annotations

import uuid

import pytest

from devstack.stack import DevStack
from tests.helpers import running_worker, wait_for, worker_settings


@pytest.mark.parametrize("kind", ["replicate", "fal"])
async def test_cancel_job_cancels_the_generation_at_the_provider(
    stack: DevStack, kind: str
) -> None:
    prompt = f"a slow lighthouse {uuid.uuid4().hex[:8]} [gen:queue:30]"
    job_id = await stack.pool.fetchval(
        "insert into public.jobs (prompt) values ($1) returning id", prompt
    )
    provider = {"replicate": stack.replicate, "fal": stack.fal}[kind]
    settings = worker_settings(stack, **stack.provider_env(kind))  # type: ignore[arg-type]
    async with running_worker(settings):

        async def has_handle() -> bool:
            return await stack.pool.fetchval(
                "select generation_ref is not null from public.jobs where id = $1", job_id
            )

        await wait_for(has_handle, timeout=20)
        assert await stack.pool.fetchval("select public.cancel_job($1)", job_id) == "running"

        async def cancelled() -> bool:
            return (
                await stack.pool.fetchval("select status from public.jobs where id = $1", job_id)
                == "cancelled"
            )

        await wait_for(cancelled, timeout=10)
    row = await stack.pool.fetchrow("select * from public.jobs where id = $1", job_id)
    assert row["generation_ref"] is None and row["image_url"] is None
    assert provider.creations_for(prompt) == 1
    assert len(provider.cancels_for(prompt)) == 1
    assert stack.cloudinary.uploads == {}
