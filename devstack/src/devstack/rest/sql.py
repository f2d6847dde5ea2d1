"""The clauses of a statement: filters, select list, order, column lists, as SQL text.

Every identifier is checked against the catalog and quoted; every value travels as a text
parameter cast in SQL, so no request text is ever spliced into a statement unquoted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from devstack.rest.catalog import Relation
from devstack.rest.errors import PgrstError, parse_error
from devstack.rest.grammar import (
    LOGIC_KEYS,
    RESERVED,
    column_path,
    embedded_target,
    in_list,
    name_list,
    nested_tree,
    order_terms,
    parse_filter,
    select_item,
    split_top,
    tree_items,
    tree_leaf,
)
from devstack.rest.quoting import ident, literal

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


class SqlParams:
    """Collects the parameters of one statement; values always travel as parameters."""

    def __init__(self) -> None:
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def cast(self, value: str, typ: str) -> str:
        return f"{self.param(value)}::text" + ("" if typ == "text" else f"::{typ}")


@dataclass
class Column:
    sql: str  # qualified expression
    type: str  # the type filter values are cast to
    alias: str  # the output key when selected
    is_path: bool = False


def column(rel: Relation, raw: str) -> Column:
    """``name`` or a JSON path ``name->key->>key``; the name must be a column of ``rel``."""
    name, path = column_path(raw)
    if name not in rel.columns:
        raise PgrstError(
            400, "42703", f"column {rel.name}.{name} does not exist", catalog_miss=True
        )
    qualified = f"{rel.qualifier}.{ident(name)}" if rel.qualifier else ident(name)
    col = Column(qualified, rel.columns[name], name)
    for arrow, key in path:
        if not key:
            raise parse_error(f'"failed to parse json path ({raw})"')
        key_sql = key if re.fullmatch(r"-?\d+", key) else literal(key)
        col.sql, col.alias, col.is_path = f"({col.sql}{arrow}{key_sql})", key, True
        # ``->`` yields json or jsonb depending on the column; compare as jsonb.
        col.type = "text" if arrow == "->>" else "jsonb"
    if col.is_path and col.type == "jsonb":
        col.sql = f"{col.sql}::jsonb"
    return col


def condition(
    sql: SqlParams, rel: Relation, column_ref: str, expr: str, *, in_tree: bool = False
) -> str:
    """One ``column=[not.]op[(modifier)].value`` filter as a SQL boolean expression."""
    f = parse_filter(expr, in_tree=in_tree)
    expr, op, modifier, value = f.expr, f.op, f.modifier, f.value
    col = column(rel, column_ref)

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
            raise parse_error(f'"failed to parse filter ({expr})"', "Expected (any) or (all)")
    elif op == "in":
        items = in_list(value)
        cond = f"{col.sql} = any({sql.param(items)}::text[]::{col.type}[])" if items else "false"
    elif op == "is":
        keyword = _IS_VALUES.get(value.lower())
        if keyword is None:
            raise parse_error(
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
        raise parse_error(f'"failed to parse filter ({expr})"', f"Unknown operator {op}")
    return f"not ({cond})" if f.negate else cond


def logic_tree(sql: SqlParams, rel: Relation, key: str, value: str) -> str:
    """``or=(a.eq.1,and(b.gt.2,c.is.null))`` and friends."""
    negate = key.startswith("not.")
    joiner = " or " if key.endswith("or") else " and "
    parts = []
    for item in tree_items(value):
        nested = nested_tree(item)
        if nested:
            parts.append(logic_tree(sql, rel, *nested))
            continue
        column_ref, expr = tree_leaf(item, value)
        parts.append(condition(sql, rel, column_ref, expr, in_tree=True))
    cond = "(" + joiner.join(parts) + ")"
    return f"not {cond}" if negate else cond


def where_clause(
    sql: SqlParams, rel: Relation, query: Iterable[tuple[str, str]], skip: frozenset[str]
) -> str:
    conds = []
    for key, value in query:
        if key in RESERVED or key in skip:
            continue
        if key in LOGIC_KEYS:
            conds.append(logic_tree(sql, rel, key, value))
        else:
            conds.append(condition(sql, rel, key, value))
    return " where " + " and ".join(conds) if conds else ""


def select_list(rel: Relation, raw: str | None) -> str:
    if raw is None or raw.strip() in ("", "*"):
        return "*"
    items = []
    for item in split_top(raw):
        item = item.strip()
        target = embedded_target(item)
        if target is not None:
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
        parsed = select_item(item, raw)
        col = column(rel, parsed.column)
        expr = col.sql if parsed.cast is None else f"({col.sql})::{parsed.cast}"
        name = parsed.alias if parsed.alias is not None else col.alias
        items.append(f"{expr} as {ident(name)}")
    return ", ".join(items)


def order_by(rel: Relation, raw: str | None) -> str:
    if not raw:
        return ""
    terms = []
    for column_ref, modifiers in order_terms(raw):
        term = column(rel, column_ref).sql
        if "desc" in modifiers:
            term += " desc"
        if "nullsfirst" in modifiers:
            term += " nulls first"
        elif "nullslast" in modifiers:
            term += " nulls last"
        terms.append(term)
    return " order by " + ", ".join(terms)


def column_names(rel: Relation, raw: str) -> list[str]:
    """The ``columns`` and ``on_conflict`` parameters: a comma list of (maybe quoted) names."""
    return known_columns(rel, name_list(raw))


def known_columns(rel: Relation, names: Iterable[str]) -> list[str]:
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
