"""deploy/keda-scaledobject.yaml: its database role recipe and its query, run as written on the
migrated schema. The role counts what the autoscaler needs and reads nothing else."""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from devstack.stack import DevStack
from tests.helpers import REPO

KEDA = (REPO / "deploy" / "keda-scaledobject.yaml").read_text()


def recipe() -> list[str]:
    """The SQL statements of the comment "Run once in the SQL editor"."""
    block = KEDA.split("Run once in the SQL editor", 1)[1].split("# Use the project's", 1)[0]
    lines = [line.removeprefix("#").strip() for line in block.splitlines()]
    sql = " ".join(line for line in lines if line and not line.startswith("--")).lstrip(": ")
    statements = [s.strip() for s in sql.split(";") if s.strip()]
    return [s for s in statements if re.match(r"(create|grant)\b", s)]


def queries() -> tuple[str, str]:
    """The trigger's query, and the queue-depth variant given beside it."""
    folded = re.search(r"query: >-\n((?: {10,}\S.*\n)+)", KEDA)
    assert folded, "no folded `query: >-` in the ScaledObject"
    main = " ".join(line.strip() for line in folded.group(1).splitlines())
    variant = re.search(
        r"#   (select count\(\*\) from public\.jobs where status = 'pending'.*)", KEDA
    )
    assert variant
    return main, variant.group(1)


def as_role(dsn: str, role: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}:secret@{host}"))


async def test_the_recipe_role_counts_claimable_and_in_flight_jobs_and_reads_nothing_else(
    stack: DevStack,
) -> None:
    role = f"keda_reader_{uuid.uuid4().hex[:8]}"  # roles are per server; tests share one
    statements = [s.replace("keda_reader", role).replace("'...'", "'secret'") for s in recipe()]
    assert [s.split()[0] for s in statements] == ["create", "grant", "grant", "create"]
    for statement in statements:
        await stack.pool.execute(statement)
    try:
        await stack.pool.execute(
            """
            insert into public.jobs (prompt, status, run_after, lease_expires_at) values
              ('claimable 1', 'pending', now() - interval '1 second', null),
              ('claimable 2', 'pending', now(), null),
              ('retry later', 'pending', now() + interval '1 minute', null),
              ('in flight', 'running', now(), now() + interval '30 seconds'),
              ('worker gone', 'running', now(), now() - interval '30 seconds'),
              ('done', 'complete', now(), null)
            """
        )
        main, depth_only = queries()
        conn = await asyncpg.connect(as_role(stack.dsn, role))
        try:
            # The expired lease is the rescuer's (back to pending, then claimable): not counted
            # twice meanwhile.
            assert await conn.fetchval(main) == 3
            assert await conn.fetchval(depth_only) == 2
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetchval("select prompt from public.jobs limit 1")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute("update public.jobs set status = 'failed'")
        finally:
            await conn.close()
    finally:
        await stack.pool.execute(
            f"drop policy if exists jobs_{role}_counts on public.jobs; "
            f"revoke all on public.jobs from {role}; revoke usage on schema public from {role}; "
            f"drop role {role}"
        )
