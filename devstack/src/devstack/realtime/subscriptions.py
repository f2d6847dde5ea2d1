"""What a channel asked for: its ``postgres_changes`` bindings and their row filters.

Deciding which change goes to which channel is the part of Realtime workers depend on most, so
it is kept apart from the socket plumbing and can be tested on its own (``RowFilter``).
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from devstack.capture import Change


def binding_id(params: dict[str, Any]) -> int:
    """A stable id in [1, 2^27) like the real server's ``phash2``; never 0 (pitfall P10)."""
    canonical = json.dumps(params, sort_keys=True, separators=(",", ":"))
    return zlib.crc32(canonical.encode()) % (1 << 27) or 1


# -- filters: ``column=op.value`` as the real server evaluates them ------------------------------

_FILTER = re.compile(r"^([^=]+)=(eq|neq|lt|lte|gt|gte|in)\.(.*)$", re.DOTALL)
_TRUE = {"true", "t", "yes", "y", "on", "1"}
_FALSE = {"false", "f", "no", "n", "off", "0"}


@dataclass(frozen=True, slots=True)
class RowFilter:
    column: str
    op: str
    values: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        match = _FILTER.match(text)
        if not match:
            raise ValueError(f"invalid filter {text!r}: expected column=op.value")
        column, op, value = match.groups()
        if op != "in":
            return cls(column, op, (value,))
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError(f"invalid filter {text!r}: in takes a list like in.(a,b)")
        items = tuple(item.strip().strip('"') for item in value[1:-1].split(","))
        if len(items) > 100:
            raise ValueError(f"invalid filter {text!r}: in takes at most 100 values")
        return cls(column, op, items)

    def matches(self, row: dict[str, Any] | None) -> bool:
        # The real server casts the filter value to the column's type; SQL NULL never matches.
        if not row or row.get(self.column) is None:
            return False
        value = row[self.column]
        if self.op == "in":
            return any(_compare(value, item) == 0 for item in self.values)
        order = _compare(value, self.values[0])
        if order is None:
            return False
        return {
            "eq": order == 0,
            "neq": order != 0,
            "lt": order < 0,
            "lte": order <= 0,
            "gt": order > 0,
            "gte": order >= 0,
        }[self.op]


def _compare(value: Any, text: str) -> int | None:
    """-1/0/1 comparing a record value with a filter literal, or None when incomparable."""
    other: Any
    if isinstance(value, bool):
        lowered = text.lower()
        if lowered not in _TRUE | _FALSE:
            return None
        value, other = int(value), int(lowered in _TRUE)
    elif isinstance(value, int | float):
        try:
            other = float(text)
        except ValueError:
            return None
    elif isinstance(value, str):
        other = text
    else:  # json: compare its canonical text
        value, other = json.dumps(value, separators=(",", ":")), text
    return (value > other) - (value < other)


# -- channels ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Binding:
    """One entry of a join's ``config.postgres_changes``."""

    id: int
    event: str
    schema: str
    table: str | None
    filter: RowFilter | None

    def matches(self, change: Change) -> bool:
        if self.schema not in ("*", change.schema) or self.table not in (None, "*", change.table):
            return False
        if self.event != "*" and self.event.upper() != change.type:
            return False
        if self.filter is None:
            return True
        # DELETEs are filtered on the old record, which is only the key unless the table has
        # REPLICA IDENTITY FULL: in practice "DELETE events are not filterable".
        row = change.old_record if change.type == "DELETE" else change.record
        return self.filter.matches(row)


@dataclass(slots=True)
class Channel:
    topic: str
    join_ref: str | None
    bindings: list[Binding]
    # False until "Subscribed to PostgreSQL": the gap in which the real server drops changes.
    subscribed: bool = False
    # config.private: Broadcast only from messages sent private, and only after the channel's
    # realtime.messages read policy allowed it (Realtime Authorization).
    private: bool = False
    broadcast_read: bool = False
    # The JWT claims the channel acts with (its access_token, else the socket's apikey):
    # postgres_changes are checked against the row's RLS policies as this role and these claims.
    claims: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.topic.removeprefix("realtime:")

    @property
    def role(self) -> str:
        return str(self.claims.get("role") or "anon")
