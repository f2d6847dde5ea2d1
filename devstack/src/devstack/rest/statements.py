"""A request compiled into one statement, and how that statement's single row becomes the answer.

One statement per request keeps every request to one round trip inside its transaction (see
:mod:`devstack.rest.handler`); counts, ``Content-Range``, single-object answers and the
``Prefer`` options are all decided from that one row, as PostgREST does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from devstack.rest.catalog import Catalog, Relation
from devstack.rest.errors import PgrstError, json_response
from devstack.rest.grammar import int_param, parse_prefer, read_json, single_object
from devstack.rest.quoting import ident
from devstack.rest.sql import (
    SqlParams,
    column_names,
    known_columns,
    order_by,
    select_list,
    where_clause,
)


@dataclass
class Plan:
    """A compiled request: one statement, and how its single result row becomes a response.

    ``respond`` runs inside the transaction: raising a PgrstError there rolls it back (a
    single-object request that matched several rows must not change anything).
    """

    sql: str
    params: list[Any]
    read_only: bool
    respond: Callable[[asyncpg.Record], web.Response]


def content_range(offset: int, n: int, total: int | None) -> str:
    shown = f"{offset}-{offset + n - 1}" if n else "*"
    return f"{shown}/{'*' if total is None else total}"


def rows_response(
    status: int,
    body: str | None,
    n: int,
    *,
    single: bool,
    headers: dict[str, str],
) -> web.Response:
    if single:
        check_single(n)
        if body is not None:
            body = body[1:-1]  # json_agg of exactly one row: "[{...}]"
    return json_response(status, body, headers)


def check_single(n: int) -> None:
    """``Accept: application/vnd.pgrst.object+json`` wants exactly one row."""
    if n != 1:
        raise PgrstError(
            406,
            "PGRST116",
            "Cannot coerce the result to a single JSON object",
            f"The result contains {n} rows",
        )


# -- tables ------------------------------------------------------------------------------


def _schema(catalog: Catalog, request: web.Request, header: str) -> str:
    schema = request.headers.get(header) or catalog.schemas[0]
    if schema not in catalog.schemas:
        raise PgrstError(
            406,
            "PGRST106",
            f"Invalid schema: {schema}",
            hint=f"Only the following schemas are exposed: {', '.join(catalog.schemas)}",
        )
    return schema


def compile_table(
    catalog: Catalog, request: web.Request, body: bytes, *, max_rows: int | None = None
) -> Plan:
    method = request.method
    reading = method in ("GET", "HEAD")
    schema = _schema(catalog, request, "Accept-Profile" if reading else "Content-Profile")
    rel = catalog.table(schema, request.match_info["table"])
    if reading:
        return _read_plan(request, rel, max_rows=max_rows)
    if method == "POST":
        return _insert_plan(request, rel, body)
    if method == "PATCH":
        return _update_plan(request, rel, body)
    if method == "DELETE":
        return _delete_plan(request, rel)
    raise PgrstError(405, "PGRST117", f"Unsupported HTTP method: {method}")


def _read_plan(
    request: web.Request,
    source: Relation,
    *,
    sql: SqlParams | None = None,
    prelude: str = "",
    skip: frozenset[str] = frozenset(),
    value_of: str = "pgrst_x",
    max_rows: int | None = None,
) -> Plan:
    """A select over a table, or over ``pgrst_source`` (a function's result, see prelude).

    ``max_rows`` is PostgREST's ``db-max-rows`` ("A hard limit to the number of rows PostgREST
    will fetch from a view, table, or function", docs.postgrest.org, references/configuration):
    PostgREST cuts the requested range to ``[offset, offset + max_rows)`` (``restrictRange`` in
    src/PostgREST/RangeQuery.hs), a LIMIT on the outer query, whatever the function itself
    does; ``count`` still counts every row, and the answer is then 206 with its Content-Range.
    """
    sql = sql or SqlParams()
    prefer = parse_prefer(request)
    single = single_object(request)
    head = request.method == "HEAD"
    where = where_clause(sql, source, request.query.items(), skip)
    columns = select_list(source, request.query.get("select"))
    limit, offset = int_param(request, "limit"), int_param(request, "offset") or 0
    if max_rows is not None:
        limit = max_rows if limit is None else min(limit, max_rows)
    page = order_by(source, request.query.get("order"))
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
        headers = {"Content-Range": content_range(offset, n, count)}
        return rows_response(status, row[0], n, single=single, headers=headers)

    return Plan(statement, sql.params, True, respond)


def _mutation_plan(request: web.Request, rel: Relation, statement: str, sql: SqlParams) -> Plan:
    """Wrap ``insert/update/delete`` so that one result row carries the body and the count.

    ``statement`` ends where its ``returning`` clause goes.
    """
    prefer = parse_prefer(request)
    single = single_object(request)
    returning = prefer.get("return", "minimal")
    location = returning == "headers-only" and request.method == "POST" and bool(rel.pk)
    if returning == "representation" or location:
        # Reading the new rows back makes Postgres apply SELECT policies to them, exactly
        # as with PostgREST.
        plain = Relation(rel.schema, rel.name, rel.columns)
        if location:
            columns = ", ".join(ident(c) for c in rel.pk)
        else:
            columns = select_list(plain, request.query.get("select"))
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
            headers = {"Content-Range": content_range(0, n, total)}
            status = 201 if created else 200
            return rows_response(status, row[0], n, single=single, headers=headers)
        if single:
            check_single(n)
        headers = {"Content-Range": f"*/{'*' if total is None else total}"}
        if location and n:
            first = json.loads(row[0])[0]
            query = "&".join(f"{k}=eq.{first[k]}" for k in rel.pk)
            headers["Location"] = f"/{rel.name}?{query}"
        return web.Response(status=201 if created else 204, headers=headers)

    return Plan(full, sql.params, False, respond)


def _insert_plan(request: web.Request, rel: Relation, body: bytes) -> Plan:
    payload = read_json(body)
    rows = payload if isinstance(payload, list) else [payload]
    if not all(isinstance(r, dict) for r in rows):
        raise PgrstError(400, "PGRST102", "All object keys must match")
    if "columns" in request.query:
        names = column_names(rel, request.query["columns"])
    else:
        names = known_columns(rel, dict.fromkeys(k for r in rows for k in r))
    sql = SqlParams()
    text = body.decode()
    records = sql.param(text if isinstance(payload, list) else f"[{text}]")
    source = f"json_populate_recordset(null::{rel.sql_name}, {records}::json)"
    target = ", ".join(ident(n) for n in names)
    if names:
        statement = f"insert into {rel.sql_name} ({target}) select {target} from {source}"
    else:  # rows of {}: all defaults
        statement = f"insert into {rel.sql_name} select from {source}"

    resolution = parse_prefer(request).get("resolution")
    if resolution in ("merge-duplicates", "ignore-duplicates"):
        if "on_conflict" in request.query:
            conflict = column_names(rel, request.query["on_conflict"])
        else:
            conflict = list(rel.pk)
        on = f" ({', '.join(ident(c) for c in conflict)})" if conflict else ""
        updates = [n for n in names if n not in conflict]
        if resolution == "merge-duplicates" and updates:
            assignments = ", ".join(f"{ident(n)} = excluded.{ident(n)}" for n in updates)
            statement += f" on conflict{on} do update set {assignments}"
        else:
            statement += f" on conflict{on} do nothing"
    return _mutation_plan(request, rel, statement, sql)


def _update_plan(request: web.Request, rel: Relation, body: bytes) -> Plan:
    payload = read_json(body)
    if not isinstance(payload, dict):
        raise PgrstError(400, "PGRST102", "Empty or invalid json", "Expected a JSON object")
    names = known_columns(rel, payload)
    sql = SqlParams()
    if not names:  # nothing to set: answered as an update that matched no row
        first = ident(next(iter(rel.columns)))
        statement = f"update {rel.sql_name} set {first} = {first} where false"
        return _mutation_plan(request, rel, statement, sql)
    record = sql.param(body.decode())
    where = where_clause(sql, rel, request.query.items(), frozenset())
    assignments = ", ".join(f"{ident(n)} = pgrst_body.{ident(n)}" for n in names)
    statement = (
        f"update {rel.sql_name} set {assignments} "
        f"from json_populate_record(null::{rel.sql_name}, {record}::json) pgrst_body{where}"
    )
    return _mutation_plan(request, rel, statement, sql)


def _delete_plan(request: web.Request, rel: Relation) -> Plan:
    sql = SqlParams()
    where = where_clause(sql, rel, request.query.items(), frozenset())
    return _mutation_plan(request, rel, f"delete from {rel.sql_name}{where}", sql)


# -- rpc ---------------------------------------------------------------------------------


def compile_rpc(
    catalog: Catalog, request: web.Request, body: bytes, *, max_rows: int | None = None
) -> Plan:
    method = request.method
    reading = method in ("GET", "HEAD")
    if method not in ("GET", "HEAD", "POST"):
        raise PgrstError(405, "PGRST101", "Only GET, HEAD and POST are allowed for RPC")
    schema = _schema(catalog, request, "Accept-Profile" if reading else "Content-Profile")
    name = request.match_info["fn"]
    if reading:
        # Query parameters naming an argument are arguments; the others filter the result.
        overloads = catalog.functions.get((schema, name), [])
        arg_names = {a[0] for f in overloads for a in f.args}
        args: dict[str, Any] = {k: v for k, v in request.query.items() if k in arg_names}
        args_json = json.dumps(args)
    else:
        payload = read_json(body)
        args = {} if payload is None else payload
        if not isinstance(args, dict):
            raise PgrstError(400, "PGRST102", "Empty or invalid json", "Expected an object")
        args_json = body.decode() if payload is not None else "{}"
    fn = catalog.function(schema, name, set(args))

    # Arguments travel as one JSON parameter that json_to_record() types, like PostgREST.
    sql = SqlParams()
    used = [a for a in fn.args if a[0] and a[0] in args]
    if fn.takes_whole_body and not used:
        call, call_from = f"{fn.sql_name}({sql.param(args_json)}::{fn.args[0][1]})", ""
    elif used:
        # A variadic argument's catalogued type is already the array type.
        record = ", ".join(f"{ident(n)} {t}" for n, t, _ in used)
        arguments = ", ".join(
            f"{'variadic ' if v else ''}{ident(n)} := pgrst_args.{ident(n)}" for n, _, v in used
        )
        call = f"{fn.sql_name}({arguments})"
        call_from = f"json_to_record({sql.param(args_json)}::json) as pgrst_args({record}), "
    else:
        call, call_from = f"{fn.sql_name}()", ""

    if fn.kind == "void":
        # PostgREST answers 204 without a body; postgrest-py turns that into data=[].
        statement = f"select null::text, count(*)::bigint from {call_from}{call} pgrst_call"
        return Plan(statement, sql.params, reading, lambda row: web.Response(status=204))

    if fn.kind == "scalar" and not fn.returns_set:
        args_table = f" from {call_from.removesuffix(', ')}" if call_from else ""
        statement = f"select to_json({call})::text{args_table}"

        def respond_scalar(row: asyncpg.Record) -> web.Response:
            return json_response(200, None if method == "HEAD" else (row[0] or "null"))

        return Plan(statement, sql.params, reading, respond_scalar)

    # A set or a composite is a relation, filtered, ordered and paged like a table. A set of
    # scalars gets a single column named after the function, as in PostgREST.
    if fn.kind == "scalar":
        columns = {fn.name: fn.return_type}
        alias, value_of = f"pgrst_call({ident(fn.name)})", f"pgrst_x.{ident(fn.name)}"
    else:
        columns, alias, value_of = fn.result_columns, "pgrst_call", "pgrst_x"
    plan = _read_plan(
        request,
        Relation(fn.schema, fn.name, columns, qualifier="pgrst_source"),
        sql=sql,
        prelude=f"with pgrst_source as (select pgrst_call.* from {call_from}{call} {alias}) ",
        skip=frozenset(args) if reading else frozenset(),
        value_of=value_of,
        max_rows=max_rows,
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
