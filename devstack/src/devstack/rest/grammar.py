"""PostgREST's request language: query parameters, ``Prefer``/``Accept`` headers and the body.

Only the text is read here: which column, operator, alias or modifier a parameter names. What
that means in SQL is :mod:`devstack.rest.sql`'s job, and the caller decides the order in which
pieces are read, so that a request with several mistakes gets the same error PostgREST gives.
The quoting rules follow what postgrest-py sends.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from devstack.rest.errors import PgrstError, parse_error

SINGLE_OBJECT = "application/vnd.pgrst.object+json"

# Query parameters that are not column filters.
RESERVED = frozenset({"select", "order", "limit", "offset", "on_conflict", "columns", "apikey"})
LOGIC_KEYS = frozenset({"or", "and", "not.or", "not.and"})
_ORDER_MODIFIERS = frozenset({"asc", "desc", "nullsfirst", "nullslast"})


def unquote(token: str) -> str:
    """``"a,b"`` -> ``a,b`` (postgrest-py quotes names and values that contain ``,:()"\\``)."""
    if len(token) >= 2 and token[0] == token[-1] == '"':
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


def split_top(text: str) -> list[str]:
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


# -- headers, paging and the body ------------------------------------------------------------


def parse_prefer(request: web.Request) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for header in request.headers.getall("Prefer", ()):
        for item in header.split(","):
            key, _, value = item.strip().partition("=")
            if key:
                prefs[key] = value
    return prefs


def single_object(request: web.Request) -> bool:
    """``Accept: application/vnd.pgrst.object+json``: one JSON object instead of an array."""
    return request.headers.get("Accept", "").startswith(SINGLE_OBJECT)


def int_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise parse_error(f'"failed to parse {name} ({raw})"', "Expected a non-negative integer")
    return int(raw)


def read_json(body: bytes) -> Any:
    try:
        return json.loads(body) if body.strip() else None
    except ValueError as exc:
        raise PgrstError(400, "PGRST102", "Empty or invalid json", str(exc)) from None


# -- columns -----------------------------------------------------------------------------------


def column_path(raw: str) -> tuple[str, list[tuple[str, str]]]:
    """``name->key->>key``: the column name and its JSON path as (arrow, key) pairs, unquoted.

    An empty key is not rejected here: the column is checked first, as PostgREST does.
    """
    name, *path = re.split(r"(->>?)", raw.strip())
    steps = [(arrow, unquote(key)) for arrow, key in zip(path[::2], path[1::2], strict=True)]
    return unquote(name), steps


def name_list(raw: str) -> list[str]:
    """The ``columns`` and ``on_conflict`` parameters: a comma list of (maybe quoted) names."""
    return [unquote(c.strip()) for c in split_top(raw) if c.strip()]


# -- filters: ``column=[not.]op[(modifier)].value`` and ``or=(...)`` trees ---------------------


@dataclass(frozen=True)
class Filter:
    expr: str  # without its ``not.`` prefix: what error messages quote
    negate: bool
    op: str
    modifier: str | None
    value: str


def parse_filter(expr: str, *, in_tree: bool = False) -> Filter:
    negate = expr.startswith("not.")
    if negate:
        expr = expr[4:]
    op_token, dot, value = expr.partition(".")
    match = re.fullmatch(r"(\w+)(?:\(([\w ]+)\))?", op_token)
    if not dot or match is None:
        raise parse_error(f'"failed to parse filter ({expr})"', "Expected operator.value")
    op, modifier = match[1], match[2]
    if in_tree and op != "in":
        value = unquote(value)
    return Filter(expr, negate, op, modifier, value)


def in_list(value: str) -> list[str]:
    if not (value.startswith("(") and value.endswith(")")):
        raise parse_error(f'"failed to parse filter (in.{value})"', "Expected a list: (a,b)")
    inner = value[1:-1]
    return [unquote(item.strip()) for item in split_top(inner)] if inner else []


def tree_items(value: str) -> list[str]:
    """The members of ``(a.eq.1,and(b.gt.2,c.is.null))``, stripped."""
    if not (value.startswith("(") and value.endswith(")")):
        raise parse_error(f'"failed to parse logic tree ({value})"', "Expected (filter,...)")
    return [item.strip() for item in split_top(value[1:-1])]


def nested_tree(item: str) -> tuple[str, str] | None:
    """``and(...)``/``not.or(...)`` inside a tree: (key, value), else None."""
    nested = re.fullmatch(r"((?:not\.)?(?:and|or))(\(.*\))", item, re.DOTALL)
    return (nested[1], nested[2]) if nested else None


def tree_leaf(item: str, tree: str) -> tuple[str, str]:
    """``column.op.value`` inside the tree ``tree``: (column, ``op.value``)."""
    column, dot, expr = item.partition(".")
    if not dot:
        raise parse_error(f'"failed to parse logic tree ({tree})"')
    return column, expr


# -- select and order --------------------------------------------------------------------------


@dataclass(frozen=True)
class SelectItem:
    alias: str | None  # unquoted; None without ``alias:``
    column: str  # a column reference for column_path()
    cast: str | None


def embedded_target(item: str) -> str | None:
    """The resource a select item embeds (``alias:table!hint(...)``), or None."""
    if "(" not in item:
        return None
    return item.split("(", 1)[0].split(":")[-1].split("!")[0].lstrip(".")


def select_item(item: str, raw: str) -> SelectItem:
    """``[alias:]column[::type]``; ``raw`` is the whole parameter, for the error message."""
    match = re.fullmatch(r"(?:([^:]+):(?!:))?(.+?)(?:::(\w+))?", item)
    if match is None:
        raise parse_error(f'"failed to parse select parameter ({raw})"')
    alias = unquote(match[1]) if match[1] else None
    return SelectItem(alias, match[2], match[3])


def order_terms(raw: str) -> list[tuple[str, list[str]]]:
    """``col.desc.nullslast,other``: (column reference, modifiers) per term."""
    terms = []
    for item in split_top(raw):
        parts = item.strip().split(".")
        modifiers: list[str] = []
        while len(parts) > 1 and parts[-1] in _ORDER_MODIFIERS:
            modifiers.insert(0, parts.pop())
        terms.append((".".join(parts), modifiers))
    return terms
