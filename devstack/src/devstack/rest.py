"""PostgREST stand-in: the part of PostgREST's API that supabase-py 2.34.1 uses, on real Postgres.

How a request is served:

1. the fault switches (``fail_*``/``hang_*``) get the first say;
2. the API key (checked like Supabase's gateway does) and the bearer JWT pick the role and the
   claims; the result is cached per token pair, with the ``begin; set_config(...)`` prelude;
3. the URL, headers and body compile into one SQL statement against a cached catalog: every
   identifier is checked and quoted, every value is a text parameter cast in SQL;
4. one transaction in three round trips: the prelude (one simple query), the statement
   (prepared and cached by asyncpg), ``commit``.

Postgres renders the JSON (``json_agg``), so values look exactly as PostgREST renders them.

Supported: ``GET HEAD POST PATCH DELETE /rest/v1/<table>`` with the filters ``eq neq gt gte lt lte
like ilike match imatch in is isdistinct cs cd ov sl sr nxl nxr adj fts plfts phfts wfts``, the
``not.`` prefix, ``(any)``/``(all)`` modifiers, ``or=``/``and=`` trees, JSON paths (``col->a->>b``),
``select`` (columns, ``alias:col``, ``col::type``), ``order``, ``limit``, ``offset``, ``columns``,
``on_conflict``, ``Prefer`` (``return``, ``count``, ``resolution``, ``handling=strict`` with
``max-affected``), the single-object ``Accept`` header; ``POST/GET/HEAD /rest/v1/rpc/<fn>``.
Not supported: resource embedding (rejected with PGRST200), ``missing=default``, ``PUT``, CSV,
``explain``, aggregates, the ``request.headers``/``request.method`` settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import asyncpg
import jwt
from aiohttp import web

from devstack.keys import Keys

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
SINGLE_OBJECT = "application/vnd.pgrst.object+json"

# Query parameters that are not column filters.
_RESERVED = frozenset({"select", "order", "limit", "offset", "on_conflict", "columns", "apikey"})
_LOGIC_KEYS = frozenset({"or", "and", "not.or", "not.and"})
_ORDER_MODIFIERS = frozenset({"asc", "desc", "nullsfirst", "nullslast"})

_COMPARISONS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_PATTERNS = {"like": "like", "ilike": "ilike", "match": "~", "imatch": "~*"}
_CONTAINMENT = {
    "cs": "@>", "cd": "<@", "ov": "&&",
    "sl": "<<", "sr": ">>", "nxl": "&<", "nxr": "&>", "adj": "-|-",
}  # fmt: skip
_FULL_TEXT = {
    "fts": "to_tsquery",
    "plfts": "plainto_tsquery",
    "phfts": "phraseto_tsquery",
    "wfts": "websearch_to_tsquery",
}
_IS_VALUES = {"null": "null", "true": "true", "false": "false", "unknown": "unknown"}


# --------------------------------------------------------------------------------------------
# Errors


class PgrstError(Exception):
    """An error answered the way PostgREST answers it: ``{"code","details","hint","message"}``.

    ``catalog_miss`` marks errors that a stale catalog could cause (unknown table, column or
    function): the request is compiled once more after reloading the catalog before giving up.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        hint: str | None = None,
        *,
        catalog_miss: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.hint = details, hint
        self.catalog_miss = catalog_miss
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"code": self.code, "details": self.details, "hint": self.hint}
        body["message"] = self.message
        return _json(self.status, json.dumps(body), self.headers)


def _parse_error(message: str, details: str | None = None) -> PgrstError:
    return PgrstError(400, "PGRST100", message, details)


def _gateway_error(message: str, hint: str) -> web.Response:
    """What Supabase's API gateway (Kong) answers before the request reaches PostgREST."""
    return _json(401, json.dumps({"message": message, "hint": hint}))


def _sqlstate_status(code: str, authed: bool) -> int:
    """PostgREST's HTTP status for a SQLSTATE (``pgErrorStatus`` in PostgREST's Error.hs)."""
    exact = {
        "23503": 409, "23505": 409, "25006": 405, "21000": 500, "53400": 500, "57P01": 503,
        "P0001": 400, "42883": 404, "42P01": 404, "42P17": 500,
    }  # fmt: skip
    if code in exact:
        return exact[code]
    if code == "42501":
        return 403 if authed else 401
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    by_class = {
        "08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
        "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
        "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500,
    }  # fmt: skip
    return by_class.get(code[:2], 400)


def _from_postgres(exc: asyncpg.PostgresError, authed: bool) -> PgrstError:
    code = exc.sqlstate or "XX000"
    return PgrstError(
        _sqlstate_status(code, authed),
        code,
        exc.args[0] if exc.args else str(exc),
        getattr(exc, "detail", None),
        getattr(exc, "hint", None),
    )


# --------------------------------------------------------------------------------------------
# Small helpers


def _json(status: int, body: str | None, headers: dict[str, str] | None = None) -> web.Response:
    all_headers = {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
    return web.Response(
        status=status, body=None if body is None else body.encode(), headers=all_headers
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: str) -> str:
    # Only used in the simple-query prelude and for JSON path keys; standard_conforming_strings
    # is on in every supported Postgres, so doubling quotes is the whole escaping.
    return "'" + value.replace("'", "''") + "'"


def _unquote(token: str) -> str:
    """``"a,b"`` -> ``a,b`` (postgrest-py quotes names and values that contain ``,:()"\\``)."""
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def _split_top(text: str) -> list[str]:
    """Split on commas outside parentheses and double quotes."""
    parts: list[str] = []
    depth, quoted, escaped, start = 0, False, False, 0
    for i, char in enumerate(text):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
        elif not quoted and depth == 0 and char == ",":
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def _parse_prefer(request: web.Request) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for header in request.headers.getall("Prefer", ()):
        for item in header.split(","):
            key, _, value = item.strip().partition("=")
            if key:
                prefs[key] = value
    return prefs


def _int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise _parse_error(f'"failed to parse {name} ({raw})"', "Expected a non-negative integer")
    return int(raw)


# --------------------------------------------------------------------------------------------
# Catalog


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
        return f"{_ident(self.schema)}.{_ident(self.name)}"


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
        return f"{_ident(self.schema)}.{_ident(self.name)}"

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
                    qualifier=f"{_ident(r['schema'])}.{_ident(r['name'])}",
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


# --------------------------------------------------------------------------------------------
# Query compilation


class _Sql:
    """Collects the parameters of one statement; values always travel as parameters."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def cast(self, value: str, typ: str) -> str:
        return f"{self.param(value)}::text" + ("" if typ == "text" else f"::{typ}")


@dataclass
class _Column:
    sql: str  # qualified expression
    type: str  # the type filter values are cast to
    alias: str  # the output key when selected
    is_path: bool = False


def _column(rel: Relation, raw: str) -> _Column:
    """``name`` or a JSON path ``name->key->>key``; the name must be a column of ``rel``."""
    name, *path = re.split(r"(->>?)", raw.strip())
    name = _unquote(name)
    if name not in rel.columns:
        raise PgrstError(
            400, "42703", f"column {rel.name}.{name} does not exist", catalog_miss=True
        )
    qualified = f"{rel.qualifier}.{_ident(name)}" if rel.qualifier else _ident(name)
    col = _Column(qualified, rel.columns[name], name)
    for arrow, key in zip(path[::2], path[1::2], strict=True):
        key = _unquote(key)
        if not key:
            raise _parse_error(f'"failed to parse json path ({raw})"')
        key_sql = key if re.fullmatch(r"-?\d+", key) else _literal(key)
        col.sql, col.alias, col.is_path = f"({col.sql}{arrow}{key_sql})", key, True
        # ``->`` yields json or jsonb depending on the column; compare as jsonb.
        col.type = "text" if arrow == "->>" else "jsonb"
    if col.is_path and col.type == "jsonb":
        col.sql = f"{col.sql}::jsonb"
    return col


def _in_list(value: str) -> list[str]:
    if not (value.startswith("(") and value.endswith(")")):
        raise _parse_error(f'"failed to parse filter (in.{value})"', "Expected a list: (a,b)")
    inner = value[1:-1]
    return [_unquote(item.strip()) for item in _split_top(inner)] if inner else []


def _condition(sql: _Sql, rel: Relation, column: str, expr: str, *, in_tree: bool = False) -> str:
    """One ``column=[not.]op[(modifier)].value`` filter as a SQL boolean expression."""
    negate = expr.startswith("not.")
    if negate:
        expr = expr[4:]
    op_token, dot, value = expr.partition(".")
    match = re.fullmatch(r"(\w+)(?:\(([\w ]+)\))?", op_token)
    if not dot or match is None:
        raise _parse_error(f'"failed to parse filter ({expr})"', "Expected operator.value")
    op, modifier = match[1], match[2]
    if in_tree and op != "in":
        value = _unquote(value)
    col = _column(rel, column)

    if op in _COMPARISONS or op in _PATTERNS:
        sql_op = _COMPARISONS.get(op) or _PATTERNS[op]
        typ = col.type if op in _COMPARISONS else "text"
        if op in ("like", "ilike"):
            value = value.replace("*", "%")
        if modifier in ("any", "all"):
            cond = f"{col.sql} {sql_op} {modifier}({sql.param(value)}::text::{typ}[])"
        elif modifier is None:
            cond = f"{col.sql} {sql_op} {sql.cast(value, typ)}"
        else:
            raise _parse_error(f'"failed to parse filter ({expr})"', "Expected (any) or (all)")
    elif op == "in":
        items = _in_list(value)
        cond = f"{col.sql} = any({sql.param(items)}::text[]::{col.type}[])" if items else "false"
    elif op == "is":
        keyword = _IS_VALUES.get(value.lower())
        if keyword is None:
            raise _parse_error(
                f'"failed to parse filter (is.{value})"', "Expected null, true, false or unknown"
            )
        cond = f"{col.sql} is {keyword}"
    elif op == "isdistinct":
        cond = f"{col.sql} is distinct from {sql.cast(value, col.type)}"
    elif op in _CONTAINMENT:
        cond = f"{col.sql} {_CONTAINMENT[op]} {sql.cast(value, col.type)}"
    elif op in _FULL_TEXT:
        config = f"{sql.param(modifier)}::regconfig, " if modifier else ""
        vector = col.sql if col.type == "tsvector" else f"to_tsvector({config}{col.sql})"
        cond = f"{vector} @@ {_FULL_TEXT[op]}({config}{sql.param(value)}::text)"
    else:
        raise _parse_error(f'"failed to parse filter ({expr})"', f"Unknown operator {op}")
    return f"not ({cond})" if negate else cond


def _logic_tree(sql: _Sql, rel: Relation, key: str, value: str) -> str:
    """``or=(a.eq.1,and(b.gt.2,c.is.null))`` and friends."""
    negate = key.startswith("not.")
    joiner = " or " if key.endswith("or") else " and "
    if not (value.startswith("(") and value.endswith(")")):
        raise _parse_error(f'"failed to parse logic tree ({value})"', "Expected (filter,...)")
    parts = []
    for item in _split_top(value[1:-1]):
        item = item.strip()
        nested = re.fullmatch(r"((?:not\.)?(?:and|or))(\(.*\))", item, re.DOTALL)
        if nested:
            parts.append(_logic_tree(sql, rel, nested[1], nested[2]))
            continue
        column, dot, expr = item.partition(".")
        if not dot:
            raise _parse_error(f'"failed to parse logic tree ({value})"')
        parts.append(_condition(sql, rel, column, expr, in_tree=True))
    cond = "(" + joiner.join(parts) + ")"
    return f"not {cond}" if negate else cond


def _where(sql: _Sql, rel: Relation, query: Iterable[tuple[str, str]], skip: frozenset[str]) -> str:
    conds = []
    for key, value in query:
        if key in _RESERVED or key in skip:
            continue
        if key in _LOGIC_KEYS:
            conds.append(_logic_tree(sql, rel, key, value))
        else:
            conds.append(_condition(sql, rel, key, value))
    return " where " + " and ".join(conds) if conds else ""


def _select_list(rel: Relation, raw: str | None) -> str:
    if raw is None or raw.strip() in ("", "*"):
        return "*"
    items = []
    for item in _split_top(raw):
        item = item.strip()
        if "(" in item:
            target = item.split("(", 1)[0].split(":")[-1].split("!")[0].lstrip(".")
            raise PgrstError(
                400,
                "PGRST200",
                f"Could not find a relationship between '{rel.name}' and '{target}' "
                "in the schema cache",
                f"Searched for a foreign key relationship between '{rel.name}' and "
                f"'{target}' in the schema '{rel.schema}', but no matches were found.",
                "The devstack PostgREST stand-in does not support resource embedding.",
            )
        if item == "*":
            items.append(f"{rel.qualifier}.*" if rel.qualifier else "*")
            continue
        match = re.fullmatch(r"(?:([^:]+):(?!:))?(.+?)(?:::(\w+))?", item)
        if match is None:
            raise _parse_error(f'"failed to parse select parameter ({raw})"')
        alias, col = match[1], _column(rel, match[2])
        expr = col.sql if match[3] is None else f"({col.sql})::{match[3]}"
        name = _unquote(alias) if alias else col.alias
        items.append(f"{expr} as {_ident(name)}")
    return ", ".join(items)


def _order_by(rel: Relation, raw: str | None) -> str:
    if not raw:
        return ""
    terms = []
    for item in _split_top(raw):
        parts = item.strip().split(".")
        modifiers: list[str] = []
        while len(parts) > 1 and parts[-1] in _ORDER_MODIFIERS:
            modifiers.insert(0, parts.pop())
        term = _column(rel, ".".join(parts)).sql
        if "desc" in modifiers:
            term += " desc"
        if "nullsfirst" in modifiers:
            term += " nulls first"
        elif "nullslast" in modifiers:
            term += " nulls last"
        terms.append(term)
    return " order by " + ", ".join(terms)


def _column_names(rel: Relation, raw: str) -> list[str]:
    """The ``columns`` and ``on_conflict`` parameters: a comma list of (maybe quoted) names."""
    return _known_columns(rel, [_unquote(c.strip()) for c in _split_top(raw) if c.strip()])


def _known_columns(rel: Relation, names: Iterable[str]) -> list[str]:
    names = list(names)
    for name in names:
        if name not in rel.columns:
            raise PgrstError(
                400,
                "PGRST204",
                f"Could not find the '{name}' column of '{rel.name}' in the schema cache",
                catalog_miss=True,
            )
    return names


def _read_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else None
    except ValueError as exc:
        raise PgrstError(400, "PGRST102", "Empty or invalid json", str(exc)) from None


# --------------------------------------------------------------------------------------------
# Requests


@dataclass
class _Auth:
    role: str
    authed: bool  # PostgREST answers 42501 with 403 when authenticated, 401 for anon
    begin_read_only: str
    begin_read_write: str
    expires_at: float


@dataclass
class _Plan:
    """A compiled request: one statement, and how its single result row becomes a response.

    ``respond`` runs inside the transaction: raising a PgrstError there rolls it back (a
    single-object request that matched several rows must not change anything).
    """

    sql: str
    params: list[Any]
    read_only: bool
    respond: Callable[[asyncpg.Record], web.Response]


@dataclass
class _Faults:
    fail_next: int = 0
    fail_next_status: int = 503
    fail_until: float = 0.0
    fail_until_status: int = 503
    hang_next: int = 0
    hang_until: float = 0.0
    slow_until: float = 0.0
    slow_delay: float = 0.0


def _content_range(offset: int, n: int, total: int | None) -> str:
    shown = f"{offset}-{offset + n - 1}" if n else "*"
    return f"{shown}/{'*' if total is None else total}"


def _rows_response(
    status: int,
    body: str | None,
    n: int,
    *,
    single: bool,
    headers: dict[str, str],
) -> web.Response:
    if single:
        _check_single(n)
        if body is not None:
            body = body[1:-1]  # json_agg of exactly one row: "[{...}]"
    return _json(status, body, headers)


def _check_single(n: int) -> None:
    """``Accept: application/vnd.pgrst.object+json`` wants exactly one row."""
    if n != 1:
        raise PgrstError(
            406,
            "PGRST116",
            "Cannot coerce the result to a single JSON object",
            f"The result contains {n} rows",
        )


class RestApi:
    """The ``/rest/v1`` routes of a Supabase project, plus fault switches for tests."""

    def __init__(
        self, pool: asyncpg.Pool, keys: Keys, *, schemas: tuple[str, ...] = ("public",)
    ) -> None:
        self.pool = pool
        self.keys = keys
        self.catalog = Catalog(pool, schemas)
        self.request_count = 0
        self.failed = 0
        self.hung = 0
        self.hanging = 0  # requests being held right now
        # Client (address, port) pairs seen: how many connections clients opened.
        self.peers: set[tuple[str, int]] = set()
        self._faults = _Faults()
        self._closing = asyncio.Event()
        self._auth_cache: dict[tuple[str, str], _Auth] = {}

    # -- interface ---------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", "/rest/v1/rpc/{fn}", self._handle_rpc),
            web.route("*", "/rest/v1/{table}", self._handle_table),
        ]

    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.post("/admin/rest/fail", self._admin_fail),
            web.post("/admin/rest/hang", self._admin_hang),
            web.post("/admin/rest/slow", self._admin_slow),
            web.post("/admin/rest/clear", self._admin_clear),
            web.get("/admin/rest/status", self._admin_status),
        ]

    async def close(self) -> None:
        """Release held requests (their connections are dropped without an answer)."""
        self._closing.set()
        for _ in range(50):
            if not self.hanging:
                break
            await asyncio.sleep(0.01)

    def fail_next(self, n: int, status: int = 503) -> None:
        self._faults.fail_next, self._faults.fail_next_status = n, status

    def fail_for(self, seconds: float, status: int = 503) -> None:
        self._faults.fail_until = time.monotonic() + seconds
        self._faults.fail_until_status = status

    def hang_next(self, n: int) -> None:
        self._faults.hang_next = n

    def hang_for(self, seconds: float) -> None:
        self._faults.hang_until = time.monotonic() + seconds

    def slow_for(self, seconds: float, delay: float) -> None:
        """Answer every request ``delay`` seconds late, for ``seconds`` (a loaded database)."""
        self._faults.slow_until = time.monotonic() + seconds
        self._faults.slow_delay = delay

    def clear_faults(self) -> None:
        self._faults = _Faults()

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        f = self._faults
        return {
            "request_count": self.request_count,
            "failed": self.failed,
            "hung": self.hung,
            "hanging": self.hanging,
            "connections_seen": len(self.peers),
            "faults": {
                "fail_next": f.fail_next,
                "fail_next_status": f.fail_next_status,
                "fail_for_seconds": max(0.0, f.fail_until - now),
                "fail_for_status": f.fail_until_status,
                "hang_next": f.hang_next,
                "hang_for_seconds": max(0.0, f.hang_until - now),
                "slow_for_seconds": max(0.0, f.slow_until - now),
                "slow_delay": f.slow_delay,
            },
        }

    # -- admin -------------------------------------------------------------------------------

    async def _admin_fail(self, request: web.Request) -> web.Response:
        spec = await request.json() if request.can_read_body else {}
        status = int(spec.get("status", 503))
        if "seconds" in spec:
            self.fail_for(float(spec["seconds"]), status)
        else:
            self.fail_next(int(spec.get("n", 1)), status)
        return web.json_response(self.status())

    async def _admin_hang(self, request: web.Request) -> web.Response:
        spec = await request.json() if request.can_read_body else {}
        if "seconds" in spec:
            self.hang_for(float(spec["seconds"]))
        else:
            self.hang_next(int(spec.get("n", 1)))
        return web.json_response(self.status())

    async def _admin_slow(self, request: web.Request) -> web.Response:
        spec = await request.json() if request.can_read_body else {}
        self.slow_for(float(spec.get("seconds", 10)), float(spec.get("delay", 0.5)))
        return web.json_response(self.status())

    async def _admin_clear(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response(self.status())

    async def _admin_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status())

    # -- faults ------------------------------------------------------------------------------

    async def _fault(self, request: web.Request) -> web.Response | None:
        f = self._faults
        now = time.monotonic()
        if f.hang_next > 0 or now < f.hang_until:
            if f.hang_next > 0:
                f.hang_next -= 1
            await self._hold(request)
            # Never delivered: the client hung up, or _hold() dropped the connection.
            return web.Response(status=503)
        if now < f.slow_until:
            await asyncio.sleep(f.slow_delay)
        status = None
        if f.fail_next > 0:
            f.fail_next -= 1
            status = f.fail_next_status
        elif now < f.fail_until:
            status = f.fail_until_status
        if status is None:
            return None
        self.failed += 1
        body = {
            "code": "DEVSTACK",
            "details": "Injected by the devstack fault switches (/admin/rest/fail).",
            "hint": None,
            "message": f"Injected fault: HTTP {status}",
        }
        return _json(status, json.dumps(body), {"X-Devstack-Fault": "fail"})

    async def _hold(self, request: web.Request) -> None:
        """Answer nothing until close() or until the client hangs up.

        aiohttp does not cancel handlers when the peer goes away, so poll the transport: a
        benchmark that gives up on thousands of held requests must not leak them.
        """
        self.hung += 1
        self.hanging += 1
        try:
            while not self._closing.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), 0.05)
            if request.transport is not None:
                request.transport.close()
        finally:
            self.hanging -= 1

    # -- auth --------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> _Auth:
        apikey = request.headers.get("apikey") or request.query.get("apikey") or ""
        authorization = request.headers.get("Authorization", "")
        cache_key = (apikey, authorization)
        auth = self._auth_cache.get(cache_key)
        if auth is not None and auth.expires_at > time.time():
            return auth

        if not apikey:
            raise _GatewayReject(
                "No API key found in request",
                "No `apikey` request header or url param was found.",
            )
        key_claims = self.keys.verify(apikey)
        if key_claims is None:
            raise _GatewayReject(
                "Invalid API key", "Double check your Supabase `anon` or `service_role` API key."
            )
        claims = key_claims
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            token = token.strip()
            verified = self.keys.verify(token)
            if verified is None:
                raise self._jwt_error(token)
            claims = verified

        auth = self._auth_for(claims)
        auth.expires_at = min(auth.expires_at, float(key_claims.get("exp", float("inf"))))
        if len(self._auth_cache) > 10_000:
            self._auth_cache.clear()
        self._auth_cache[cache_key] = auth
        return auth

    def _auth_for(self, claims: dict[str, Any]) -> _Auth:
        role = claims["role"]
        settings = ", ".join(
            f"set_config({_literal(name)}, {_literal(value)}, true)"
            for name, value in (
                ("role", role),
                ("request.jwt.claims", json.dumps(claims)),
                ("request.jwt.claim.sub", str(claims.get("sub", ""))),
                ("request.jwt.claim.role", role),
            )
        )
        return _Auth(
            role=role,
            authed=role != "anon",
            begin_read_only=f"begin isolation level read committed read only; select {settings}",
            begin_read_write=f"begin isolation level read committed; select {settings}",
            expires_at=float(claims.get("exp", float("inf"))),
        )

    def _jwt_error(self, token: str) -> PgrstError:
        code, message = "PGRST301", "JWSError JWSInvalidSignature"
        try:
            jwt.decode(
                token, self.keys.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
            message = "JWT role is not one of anon, authenticated, service_role"
        except jwt.ExpiredSignatureError:
            code, message = "PGRST303", "JWT expired"
        except jwt.DecodeError:
            message = "JWSError (CompactDecodeError Invalid number of parts)"
        except jwt.PyJWTError:
            pass
        challenge = f'Bearer error="invalid_token", error_description="{message}"'
        return PgrstError(401, code, message, headers={"WWW-Authenticate": challenge})

    # -- request handling --------------------------------------------------------------------

    async def _handle_table(self, request: web.Request) -> web.Response:
        return await self._handle(request, self._compile_table)

    async def _handle_rpc(self, request: web.Request) -> web.Response:
        return await self._handle(request, self._compile_rpc)

    async def _handle(
        self,
        request: web.Request,
        compile_: Callable[[web.Request, bytes], _Plan],
    ) -> web.Response:
        self.request_count += 1
        if request.transport is not None and (peer := request.transport.get_extra_info("peername")):
            self.peers.add(peer[:2])
        if (faulted := await self._fault(request)) is not None:
            return faulted
        if self._closing.is_set():
            return web.Response(status=503)
        try:
            auth = self._authenticate(request)
            body = await request.read() if request.can_read_body else b""
            if self.catalog.stale:
                await self.catalog.reload(self.catalog.generation)
            generation = self.catalog.generation
            try:
                plan = compile_(request, body)
            except PgrstError as exc:
                if not exc.catalog_miss:
                    raise
                await self.catalog.reload(generation)
                plan = compile_(request, body)
            return await self._execute(auth, plan)
        except _GatewayReject as exc:
            return _gateway_error(exc.message, exc.hint)
        except PgrstError as exc:
            return exc.response()
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            return PgrstError(
                503, "PGRST001", "Database client error. Retrying the connection.", str(exc)
            ).response()

    async def _execute(self, auth: _Auth, plan: _Plan) -> web.Response:
        for last_try in (False, True):
            try:
                return await self._transaction(auth, plan)
            except asyncpg.InvalidCachedStatementError as exc:
                # A table changed shape under asyncpg's statement cache. asyncpg has dropped
                # the statement, so the second try prepares it afresh.
                self.catalog.stale = True
                if last_try:
                    raise _from_postgres(exc, auth.authed) from None
            except asyncpg.PostgresError as exc:
                if exc.sqlstate in ("42P01", "42703", "42883"):
                    self.catalog.stale = True
                raise _from_postgres(exc, auth.authed) from None
        raise AssertionError("unreachable")

    async def _transaction(self, auth: _Auth, plan: _Plan) -> web.Response:
        async with self.pool.acquire() as conn:
            try:
                await conn.execute(
                    auth.begin_read_only if plan.read_only else auth.begin_read_write
                )
                row = await conn.fetchrow(plan.sql, *plan.params)
                response = plan.respond(row)
                await conn.execute("commit")
                return response
            except BaseException:
                # Never commit after an error, ours (from respond()) or the database's. If the
                # rollback cannot run (cancelled, connection lost), the pool's reset rolls back.
                with contextlib.suppress(Exception):
                    await conn.execute("rollback")
                raise

    # -- tables ------------------------------------------------------------------------------

    def _schema(self, request: web.Request, header: str) -> str:
        schema = request.headers.get(header) or self.catalog.schemas[0]
        if schema not in self.catalog.schemas:
            raise PgrstError(
                406,
                "PGRST106",
                f"Invalid schema: {schema}",
                hint=f"Only the following schemas are exposed: {', '.join(self.catalog.schemas)}",
            )
        return schema

    def _compile_table(self, request: web.Request, body: bytes) -> _Plan:
        method = request.method
        reading = method in ("GET", "HEAD")
        schema = self._schema(request, "Accept-Profile" if reading else "Content-Profile")
        rel = self.catalog.table(schema, request.match_info["table"])
        if reading:
            return self._compile_read(request, rel)
        if method == "POST":
            return self._compile_insert(request, rel, body)
        if method == "PATCH":
            return self._compile_update(request, rel, body)
        if method == "DELETE":
            return self._compile_delete(request, rel)
        raise PgrstError(405, "PGRST117", f"Unsupported HTTP method: {method}")

    def _compile_read(
        self,
        request: web.Request,
        source: Relation,
        *,
        sql: _Sql | None = None,
        prelude: str = "",
        skip: frozenset[str] = frozenset(),
        value_of: str = "pgrst_x",
    ) -> _Plan:
        """A select over a table, or over ``pgrst_source`` (a function's result, see prelude)."""
        sql = sql or _Sql()
        prefer = _parse_prefer(request)
        single = request.headers.get("Accept", "").startswith(SINGLE_OBJECT)
        head = request.method == "HEAD"
        where = _where(sql, source, request.query.items(), skip)
        columns = _select_list(source, request.query.get("select"))
        limit, offset = _int_param(request, "limit"), _int_param(request, "offset") or 0
        page = _order_by(source, request.query.get("order"))
        if limit is not None:
            page += f" limit {sql.param(limit)}::bigint"
        if offset:
            page += f" offset {sql.param(offset)}::bigint"
        table = source.qualifier  # the table's own name, or "pgrst_source"
        counted = prefer.get("count") in ("exact", "planned", "estimated")
        total = f", (select count(*) from {table}{where})::bigint" if counted else ""
        body = "null::text" if head else f"coalesce(json_agg({value_of}), '[]')::text"
        statement = (
            f"{prelude}select {body}, count(*)::bigint{total} "
            f"from (select {columns} from {table}{where}{page}) pgrst_x"
        )

        def respond(row: asyncpg.Record) -> web.Response:
            n, count = row[1], row[2] if counted else None
            status = 200
            if count is not None:
                if offset > count:
                    raise PgrstError(
                        416,
                        "PGRST103",
                        "Requested range not satisfiable",
                        f"An offset of {offset} was requested, but there are only {count} rows.",
                    )
                status = 206 if n < count else 200
            headers = {"Content-Range": _content_range(offset, n, count)}
            return _rows_response(status, row[0], n, single=single, headers=headers)

        return _Plan(statement, sql.params, True, respond)

    def _mutation_plan(
        self, request: web.Request, rel: Relation, statement: str, sql: _Sql
    ) -> _Plan:
        """Wrap ``insert/update/delete`` so that one result row carries the body and the count.

        ``statement`` ends where its ``returning`` clause goes.
        """
        prefer = _parse_prefer(request)
        single = request.headers.get("Accept", "").startswith(SINGLE_OBJECT)
        returning = prefer.get("return", "minimal")
        location = returning == "headers-only" and request.method == "POST" and bool(rel.pk)
        if returning == "representation" or location:
            # Reading the new rows back makes Postgres apply SELECT policies to them, exactly
            # as with PostgREST.
            plain = Relation(rel.schema, rel.name, rel.columns)
            if location:
                columns = ", ".join(_ident(c) for c in rel.pk)
            else:
                columns = _select_list(plain, request.query.get("select"))
            statement += f" returning {rel.sql_name}.*"
            result = "coalesce(json_agg(pgrst_x), '[]')::text"
            source = f"(select {columns} from pgrst_source) pgrst_x"
        else:
            # "returning 1" counts rows without reading them: SELECT policies stay out of it.
            statement += " returning 1"
            result, source = "null::text", "pgrst_source"
        full = f"with pgrst_source as ({statement}) select {result}, count(*)::bigint from {source}"
        counted = prefer.get("count") in ("exact", "planned", "estimated")
        max_affected = prefer.get("max-affected", "")
        strict = prefer.get("handling") == "strict" and max_affected.isdigit()
        created = request.method == "POST"

        def respond(row: asyncpg.Record) -> web.Response:
            n = row[1]
            if strict and n > int(max_affected):
                raise PgrstError(
                    400,
                    "PGRST124",
                    "Query result exceeds max-affected preference constraint",
                    f"The query affects {n} rows",
                )
            total = n if counted else None
            if returning == "representation":
                headers = {"Content-Range": _content_range(0, n, total)}
                status = 201 if created else 200
                return _rows_response(status, row[0], n, single=single, headers=headers)
            if single:
                _check_single(n)
            headers = {"Content-Range": f"*/{'*' if total is None else total}"}
            if location and n:
                first = json.loads(row[0])[0]
                query = "&".join(f"{k}=eq.{first[k]}" for k in rel.pk)
                headers["Location"] = f"/{rel.name}?{query}"
            return web.Response(status=201 if created else 204, headers=headers)

        return _Plan(full, sql.params, False, respond)

    def _compile_insert(self, request: web.Request, rel: Relation, body: bytes) -> _Plan:
        payload = _read_json(body)
        rows = payload if isinstance(payload, list) else [payload]
        if not all(isinstance(r, dict) for r in rows):
            raise PgrstError(400, "PGRST102", "All object keys must match")
        if "columns" in request.query:
            names = _column_names(rel, request.query["columns"])
        else:
            names = _known_columns(rel, dict.fromkeys(k for r in rows for k in r))
        sql = _Sql()
        text = body.decode()
        records = sql.param(text if isinstance(payload, list) else f"[{text}]")
        source = f"json_populate_recordset(null::{rel.sql_name}, {records}::json)"
        target = ", ".join(_ident(n) for n in names)
        if names:
            statement = f"insert into {rel.sql_name} ({target}) select {target} from {source}"
        else:  # rows of {}: all defaults
            statement = f"insert into {rel.sql_name} select from {source}"

        resolution = _parse_prefer(request).get("resolution")
        if resolution in ("merge-duplicates", "ignore-duplicates"):
            if "on_conflict" in request.query:
                conflict = _column_names(rel, request.query["on_conflict"])
            else:
                conflict = list(rel.pk)
            on = f" ({', '.join(_ident(c) for c in conflict)})" if conflict else ""
            updates = [n for n in names if n not in conflict]
            if resolution == "merge-duplicates" and updates:
                assignments = ", ".join(f"{_ident(n)} = excluded.{_ident(n)}" for n in updates)
                statement += f" on conflict{on} do update set {assignments}"
            else:
                statement += f" on conflict{on} do nothing"
        return self._mutation_plan(request, rel, statement, sql)

    def _compile_update(self, request: web.Request, rel: Relation, body: bytes) -> _Plan:
        payload = _read_json(body)
        if not isinstance(payload, dict):
            raise PgrstError(400, "PGRST102", "Empty or invalid json", "Expected a JSON object")
        names = _known_columns(rel, payload)
        sql = _Sql()
        if not names:  # nothing to set: answered as an update that matched no row
            first = _ident(next(iter(rel.columns)))
            statement = f"update {rel.sql_name} set {first} = {first} where false"
            return self._mutation_plan(request, rel, statement, sql)
        record = sql.param(body.decode())
        where = _where(sql, rel, request.query.items(), frozenset())
        assignments = ", ".join(f"{_ident(n)} = pgrst_body.{_ident(n)}" for n in names)
        statement = (
            f"update {rel.sql_name} set {assignments} "
            f"from json_populate_record(null::{rel.sql_name}, {record}::json) pgrst_body{where}"
        )
        return self._mutation_plan(request, rel, statement, sql)

    def _compile_delete(self, request: web.Request, rel: Relation) -> _Plan:
        sql = _Sql()
        where = _where(sql, rel, request.query.items(), frozenset())
        return self._mutation_plan(request, rel, f"delete from {rel.sql_name}{where}", sql)

    # -- rpc ---------------------------------------------------------------------------------

    def _compile_rpc(self, request: web.Request, body: bytes) -> _Plan:
        method = request.method
        reading = method in ("GET", "HEAD")
        if method not in ("GET", "HEAD", "POST"):
            raise PgrstError(405, "PGRST101", "Only GET, HEAD and POST are allowed for RPC")
        schema = self._schema(request, "Accept-Profile" if reading else "Content-Profile")
        name = request.match_info["fn"]
        if reading:
            # Query parameters naming an argument are arguments; the others filter the result.
            overloads = self.catalog.functions.get((schema, name), [])
            arg_names = {a[0] for f in overloads for a in f.args}
            args: dict[str, Any] = {k: v for k, v in request.query.items() if k in arg_names}
            args_json = json.dumps(args)
        else:
            payload = _read_json(body)
            args = {} if payload is None else payload
            if not isinstance(args, dict):
                raise PgrstError(400, "PGRST102", "Empty or invalid json", "Expected an object")
            args_json = body.decode() if payload is not None else "{}"
        fn = self.catalog.function(schema, name, set(args))

        # Arguments travel as one JSON parameter that json_to_record() types, like PostgREST.
        sql = _Sql()
        used = [a for a in fn.args if a[0] and a[0] in args]
        if fn.takes_whole_body and not used:
            call, call_from = f"{fn.sql_name}({sql.param(args_json)}::{fn.args[0][1]})", ""
        elif used:
            # A variadic argument's catalogued type is already the array type.
            record = ", ".join(f"{_ident(n)} {t}" for n, t, _ in used)
            arguments = ", ".join(
                f"{'variadic ' if v else ''}{_ident(n)} := pgrst_args.{_ident(n)}"
                for n, _, v in used
            )
            call = f"{fn.sql_name}({arguments})"
            call_from = f"json_to_record({sql.param(args_json)}::json) as pgrst_args({record}), "
        else:
            call, call_from = f"{fn.sql_name}()", ""

        if fn.kind == "void":
            # PostgREST answers 204 without a body; postgrest-py turns that into data=[].
            statement = f"select null::text, count(*)::bigint from {call_from}{call} pgrst_call"
            return _Plan(statement, sql.params, reading, lambda row: web.Response(status=204))

        if fn.kind == "scalar" and not fn.returns_set:
            args_table = f" from {call_from.removesuffix(', ')}" if call_from else ""
            statement = f"select to_json({call})::text{args_table}"

            def respond_scalar(row: asyncpg.Record) -> web.Response:
                return _json(200, None if method == "HEAD" else (row[0] or "null"))

            return _Plan(statement, sql.params, reading, respond_scalar)

        # A set or a composite is a relation, filtered, ordered and paged like a table. A set of
        # scalars gets a single column named after the function, as in PostgREST.
        if fn.kind == "scalar":
            columns = {fn.name: fn.return_type}
            alias, value_of = f"pgrst_call({_ident(fn.name)})", f"pgrst_x.{_ident(fn.name)}"
        else:
            columns, alias, value_of = fn.result_columns, "pgrst_call", "pgrst_x"
        plan = self._compile_read(
            request,
            Relation(fn.schema, fn.name, columns, qualifier="pgrst_source"),
            sql=sql,
            prelude=f"with pgrst_source as (select pgrst_call.* from {call_from}{call} {alias}) ",
            skip=frozenset(args) if reading else frozenset(),
            value_of=value_of,
        )
        plan.read_only = reading
        if fn.returns_set:
            return plan

        respond_rows = plan.respond

        def respond_object(row: asyncpg.Record) -> web.Response:
            # A function returning one composite answers an object, not an array.
            response = respond_rows(row)
            if method != "HEAD":
                response.body = row[0][1:-1].encode() if row[1] == 1 else b"null"
            return response

        plan.respond = respond_object
        return plan


class _GatewayReject(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint
