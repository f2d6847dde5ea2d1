"""The schema cache: which tables, views and functions PostgREST would expose, and their columns.

Every identifier in a request is checked against it before it reaches SQL. Like PostgREST's
own schema cache, a miss names the closest match in its hint.
"""

from __future__ import annotations

import asyncio
import difflib
from dataclasses import dataclass
from typing import Literal

import asyncpg

from devstack.rest.errors import PgrstError
from devstack.rest.quoting import ident


@dataclass(frozen=True)
class Relation:
    """Something rows can be selected from: a table or view, or a function's result set."""

    schema: str
    name: str
    columns: dict[str, str]  # name -> type without typmod, for casting filter values
    pk: tuple[str, ...] = ()
    qualifier: str = ""  # what column references are qualified with in SQL

    @property
    def sql_name(self) -> str:
        return f"{ident(self.schema)}.{ident(self.name)}"


@dataclass(frozen=True)
class Function:
    schema: str
    name: str
    args: tuple[tuple[str, str, bool], ...]  # (name, type, variadic) of the input arguments
    n_required: int
    returns_set: bool
    kind: Literal["scalar", "composite", "void"]
    return_type: str
    result_columns: dict[str, str]

    @property
    def sql_name(self) -> str:
        return f"{ident(self.schema)}.{ident(self.name)}"

    def accepts(self, keys: set[str]) -> bool:
        names = [a[0] for a in self.args]
        return set(names[: self.n_required]) <= keys <= set(names)

    @property
    def takes_whole_body(self) -> bool:
        """PostgREST passes the whole body to a function with a single unnamed json argument."""
        return len(self.args) == 1 and not self.args[0][0] and self.args[0][1] in ("json", "jsonb")


_TABLES_SQL = """
select n.nspname as schema, c.relname as name,
       array(select a.attname::text from pg_attribute a
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
             order by a.attnum) as columns,
       array(select format_type(a.atttypid, null) from pg_attribute a
             where a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
             order by a.attnum) as types,
       array(select a.attname::text from pg_index i
             join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
             where i.indrelid = c.oid and i.indisprimary
             order by array_position(i.indkey::int2[], a.attnum)) as pk
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where n.nspname = any($1::text[]) and c.relkind in ('r', 'v', 'm', 'f', 'p')
"""

_FUNCTIONS_SQL = """
select n.nspname as schema, p.proname as name, p.pronargs as nargs,
       p.pronargdefaults as ndefaults, p.proretset as returns_set,
       coalesce(p.proargnames, '{}') as argnames,
       coalesce(p.proargmodes::text[], '{}') as argmodes,
       array(select format_type(t, null)
             from unnest(coalesce(p.proallargtypes, p.proargtypes::oid[])) with ordinality u(t, i)
             order by i) as argtypes,
       format_type(p.prorettype, null) as return_type,
       p.prorettype = 'void'::regtype as is_void,
       rt.typtype = 'c' or p.prorettype = 'record'::regtype as is_composite,
       array(select a.attname::text from pg_attribute a
             where rt.typtype = 'c' and a.attrelid = rt.typrelid and a.attnum > 0
               and not a.attisdropped order by a.attnum) as rcolumns,
       array(select format_type(a.atttypid, null) from pg_attribute a
             where rt.typtype = 'c' and a.attrelid = rt.typrelid and a.attnum > 0
               and not a.attisdropped order by a.attnum) as rtypes
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type rt on rt.oid = p.prorettype
where n.nspname = any($1::text[]) and p.prokind = 'f'
"""


def _function_from_row(row: asyncpg.Record) -> Function:
    types = list(row["argtypes"])
    modes = list(row["argmodes"]) or ["i"] * len(types)
    names = list(row["argnames"]) + [""] * (len(types) - len(row["argnames"]))
    args = tuple(
        (name, typ, mode == "v")
        for name, typ, mode in zip(names, types, modes, strict=True)
        if mode in ("i", "b", "v")
    )
    if row["is_void"]:
        kind: Literal["scalar", "composite", "void"] = "void"
    elif row["is_composite"]:
        kind = "composite"
    else:
        kind = "scalar"
    if row["rcolumns"]:
        result = dict(zip(row["rcolumns"], row["rtypes"], strict=True))
    else:  # RETURNS TABLE (...) or OUT parameters
        result = {
            name: typ
            for name, typ, mode in zip(names, types, modes, strict=True)
            if mode in ("o", "b", "t")
        }
    return Function(
        schema=row["schema"],
        name=row["name"],
        args=args,
        n_required=len(args) - row["ndefaults"],
        returns_set=row["returns_set"],
        kind=kind,
        return_type=row["return_type"],
        result_columns=result,
    )


class Catalog:
    """Tables, views and functions of the exposed schemas, read once and reloaded on a miss.

    Reloading only on a miss keeps catalog queries off the request path, and still finds
    tables and functions created after startup (by migrations or by tests).
    """

    def __init__(self, pool: asyncpg.Pool, schemas: tuple[str, ...]) -> None:
        self._pool = pool
        self.schemas = schemas
        self.tables: dict[tuple[str, str], Relation] = {}
        self.functions: dict[tuple[str, str], list[Function]] = {}
        self.generation = 0
        self.stale = True
        self._lock = asyncio.Lock()

    async def reload(self, seen_generation: int | None = None) -> None:
        """Reload, unless another request already did since ``seen_generation``."""
        async with self._lock:
            if seen_generation is not None and seen_generation != self.generation:
                return
            async with self._pool.acquire() as conn:
                table_rows = await conn.fetch(_TABLES_SQL, list(self.schemas))
                function_rows = await conn.fetch(_FUNCTIONS_SQL, list(self.schemas))
            self.tables = {
                (r["schema"], r["name"]): Relation(
                    r["schema"],
                    r["name"],
                    dict(zip(r["columns"], r["types"], strict=True)),
                    tuple(r["pk"]),
                    qualifier=f"{ident(r['schema'])}.{ident(r['name'])}",
                )
                for r in table_rows
            }
            functions: dict[tuple[str, str], list[Function]] = {}
            for r in function_rows:
                functions.setdefault((r["schema"], r["name"]), []).append(_function_from_row(r))
            self.functions = functions
            self.generation += 1
            self.stale = False

    def table(self, schema: str, name: str) -> Relation:
        rel = self.tables.get((schema, name))
        if rel is None:
            names = [f"{s}.{t}" for s, t in self.tables if s == schema]
            close = difflib.get_close_matches(f"{schema}.{name}", names, n=1)
            raise PgrstError(
                404,
                "PGRST205",
                f"Could not find the table '{schema}.{name}' in the schema cache",
                hint=f"Perhaps you meant the table '{close[0]}'" if close else None,
                catalog_miss=True,
            )
        return rel

    def function(self, schema: str, name: str, keys: set[str]) -> Function:
        overloads = self.functions.get((schema, name), [])
        matches = [f for f in overloads if f.accepts(keys)]
        if not matches:
            matches = [f for f in overloads if f.takes_whole_body]
        if len(matches) == 1:
            return matches[0]
        qualified = f"{schema}.{name}"
        if len(matches) > 1:
            raise PgrstError(
                300,
                "PGRST203",
                f"Could not choose the best candidate function between: {qualified}",
                hint="Try renaming the parameters or the function itself in the database.",
            )
        params = ", ".join(sorted(keys))
        if keys:
            message = f"Could not find the function {qualified}({params}) in the schema cache"
            searched = f"with parameters {params}"
        else:
            message = (
                f"Could not find the function {qualified} without parameters in the schema cache"
            )
            searched = "without parameters"
        raise PgrstError(
            404,
            "PGRST202",
            message,
            f"Searched for the function {qualified} {searched} or with a single unnamed "
            "json/jsonb parameter, but no matches were found in the schema cache.",
            catalog_miss=True,
        )
