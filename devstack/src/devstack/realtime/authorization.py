"""What the Realtime server asks the project's database: Broadcast authorization and RLS.

Everything here runs on the project's own PostgreSQL, with the user's role and claims, so the
policies that decide are the ones the migrations wrote, exactly as on the real server:

* **Realtime Authorization** (private channels). supabase/realtime
  ``lib/realtime/tenants/authorization.ex`` (``get_read_policies_for_connection``): in one
  transaction, insert a probe row per extension into ``realtime.messages`` (as the server's own
  role, which RLS does not restrict), set ``role``, ``realtime.topic``, ``request.jwt.claims``,
  ``request.jwt.claim.sub``, ``request.jwt.claim.role`` and ``request.headers``
  (``set_conn_config``), select the probes back, roll back. A probe the user can see is a read
  permission for that extension.
* **RLS on postgres_changes**. supabase/realtime ``realtime.apply_rls``
  (``priv/repo/tenant_schema/realtime/functions/apply_rls.sql``): columns the role may not
  select are left out; a row of a table with RLS on (INSERT and UPDATE; DELETE is not checked)
  goes only to subscribers for whom ``select exists(select 1 from <table> where <pk> = …)``
  (``build_prepared_statement_sql``) is true under their role and claims; no primary key gives
  ``Error 400: Bad Request, no primary key``, a primary key the role may not select
  ``Error 401: Unauthorized``.
* **Broadcast from the database**: the daily ``realtime.messages`` partitions
  (``Realtime.Tenants.create_messages_partitions``: yesterday to three days ahead) and the
  publication the server streams the table from (``ReplicationConnection``:
  ``supabase_realtime_messages_publication``).

Roles whose claims say ``service_role`` bypass RLS (the role has BYPASSRLS and every grant), so
the worker's subscriptions never cost a query.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

from devstack.capture import Change

MESSAGES_PUBLICATION = "supabase_realtime_messages_publication"
BYPASS_ROLES = frozenset({"service_role"})


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Policies:
    """``Realtime.Tenants.Authorization.Policies``: the read side, per extension."""

    broadcast_read: bool
    presence_read: bool | None  # None: not checked (presence disabled on the channel)


class Database:
    """A small pool of the Realtime server's own connections, opened on first use (a stack whose
    clients only use the service role never opens one)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        async with self._opening:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self.dsn,
                    min_size=0,
                    max_size=4,
                    server_settings={"application_name": "realtime"},
                )
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), 5)
        except Exception:  # a stuck close (TimeoutError) included
            pool.terminate()

    # -- Broadcast from the database: the table's partitions and publication --

    async def prepare_messages(self) -> bool:
        """Create the partitions and the publication, as the real server does when it connects
        to a project. False when the database has no ``realtime.messages`` (no Broadcast)."""
        conn = await asyncpg.connect(self.dsn)
        try:
            if await conn.fetchval("select to_regclass('realtime.messages')") is None:
                return False
            today = dt.datetime.now(dt.UTC).date()
            for offset in range(-1, 4):
                day = today + dt.timedelta(days=offset)
                name = f"messages_{day.isoformat().replace('-', '_')}"
                with contextlib.suppress(asyncpg.DuplicateTableError):
                    await conn.execute(
                        f"create table if not exists realtime.{quote_ident(name)} "
                        f"partition of realtime.messages for values from ('{day}') "
                        f"to ('{day + dt.timedelta(days=1)}')"
                    )
            with contextlib.suppress(asyncpg.DuplicateObjectError):
                await conn.execute(
                    f"""
                    do $$
                    begin
                      if not exists (select 1 from pg_publication
                                     where pubname = '{MESSAGES_PUBLICATION}') then
                        create publication {MESSAGES_PUBLICATION} for table realtime.messages;
                      end if;
                    end
                    $$
                    """
                )
            return True
        finally:
            await conn.close()

    # -- Realtime Authorization --

    async def read_policies(
        self, topic: str, claims: dict[str, Any], headers: dict[str, str], presence: bool
    ) -> Policies:
        """Which extensions of ``topic`` these claims may read (``get_read_authorizations``).
        Raises asyncpg errors (the caller answers them as the real server does: unauthorized)."""
        extensions = ["broadcast", "presence"] if presence else ["broadcast"]
        probes = {ext: uuid.uuid4() for ext in extensions}
        pool = await self.pool()
        async with pool.acquire() as conn:
            await conn.execute("begin")
            try:
                await conn.execute(
                    "insert into realtime.messages (id, topic, extension, inserted_at, updated_at)"
                    " select unnest($1::uuid[]), $2, unnest($3::text[]),"
                    " now() at time zone 'utc', now() at time zone 'utc'",
                    list(probes.values()),
                    topic,
                    list(probes),
                )
                await _set_conn_config(conn, claims, topic, headers)
                rows = await conn.fetch(
                    "select id from realtime.messages where id = any($1::uuid[])",
                    list(probes.values()),
                )
            finally:
                with contextlib.suppress(Exception):
                    await conn.execute("rollback")
        seen = {row["id"] for row in rows}
        return Policies(
            broadcast_read=probes["broadcast"] in seen,
            presence_read=(probes["presence"] in seen) if presence else None,
        )

    # -- RLS on postgres_changes --

    async def shape_for(
        self, change: Change, claims_list: list[dict[str, Any]]
    ) -> list[dict[str, Any] | None]:
        """``change.data`` as each of these claims may see it, or None where RLS hides the row
        (``realtime.apply_rls``, one subscriber at a time). All the claims share one role."""
        role = str(claims_list[0].get("role") or "anon")
        pool = await self.pool()
        async with pool.acquire() as conn:
            info = await conn.fetchrow(
                """
                select c.oid, c.relrowsecurity,
                       coalesce(array_agg(a.attname::text order by a.attnum)
                         filter (where has_column_privilege($3, c.oid, a.attname, 'SELECT')),
                         '{}') as selectable,
                       coalesce((select array_agg(k.attname::text order by k.attnum)
                                 from pg_index i
                                 join pg_attribute k on k.attrelid = i.indrelid
                                                    and k.attnum = any(i.indkey)
                                 where i.indrelid = c.oid and i.indisprimary), '{}') as pkey
                from pg_class c
                join pg_namespace n on n.oid = c.relnamespace
                join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
                where n.nspname = $1 and c.relname = $2
                group by c.oid, c.relrowsecurity
                """,
                change.schema,
                change.table,
                role,
            )
            if info is None:  # the table is gone: nothing to show anyone
                return [None] * len(claims_list)
            selectable, pkey = set(info["selectable"]), list(info["pkey"])
            base = {
                k: v
                for k, v in change.data.items()
                if k not in ("columns", "record", "old_record", "errors")
            }
            if change.type != "DELETE" and not pkey:
                errored = {**base, "errors": ["Error 400: Bad Request, no primary key"]}
                return [errored] * len(claims_list)
            if change.type != "DELETE" and not set(pkey) <= selectable:
                errored = {**base, "errors": ["Error 401: Unauthorized"]}
                return [errored] * len(claims_list)
            data = _trim(change.data, selectable)
            if not info["relrowsecurity"] or change.type == "DELETE":
                return [data] * len(claims_list)
            record = change.record or {}
            types = {c["name"]: c["type"] for c in change.data.get("columns", [])}
            where = " and ".join(
                f"{quote_ident(col)} = ${i}::text::{quote_ident(types.get(col, 'text'))}"
                for i, col in enumerate(pkey, start=1)
            )
            sql = (
                f"select exists(select 1 from {quote_ident(change.schema)}."
                f"{quote_ident(change.table)} where {where})"
            )
            values = [_as_text(record.get(col)) for col in pkey]
            shaped: list[dict[str, Any] | None] = []
            for claims in claims_list:
                await conn.execute("begin isolation level read committed read only")
                try:
                    await conn.execute(
                        "select set_config('role', $1, true),"
                        " set_config('request.jwt.claims', $2, true)",
                        role,
                        json.dumps(claims),
                    )
                    visible = await conn.fetchval(sql, *values)
                finally:
                    with contextlib.suppress(Exception):
                        await conn.execute("rollback")
                shaped.append(data if visible else None)
            return shaped


async def _set_conn_config(
    conn: asyncpg.Connection, claims: dict[str, Any], topic: str, headers: dict[str, str]
) -> None:
    role = str(claims.get("role") or "anon")
    await conn.execute(
        """
        select set_config('role', $1, true),
               set_config('realtime.topic', $2, true),
               set_config('request.jwt.claims', $3, true),
               set_config('request.jwt.claim.sub', $4, true),
               set_config('request.jwt.claim.role', $5, true),
               set_config('request.headers', $6, true)
        """,
        role,
        topic,
        json.dumps(claims),
        str(claims.get("sub") or ""),
        role,
        json.dumps(headers),
    )


def _trim(data: dict[str, Any], selectable: set[str]) -> dict[str, Any]:
    trimmed = dict(data)
    trimmed["columns"] = [c for c in data.get("columns", []) if c["name"] in selectable]
    for key in ("record", "old_record"):
        if isinstance(data.get(key), dict):
            trimmed[key] = {k: v for k, v in data[key].items() if k in selectable}
    return trimmed


def _as_text(value: Any) -> str | None:
    """A record value as the text ``quote_nullable(value #>> '{}')`` gives."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value, separators=(",", ":"))
