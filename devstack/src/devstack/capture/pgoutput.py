"""Decoding pgoutput's binary messages (protocol version 1) into plain Python values.

pgoutput protocol version 1 reference:
https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

UNCHANGED_TOAST = object()  # an UPDATE left a TOASTed value untouched: pgoutput omits it


@dataclass(slots=True)
class Relation:
    schema: str
    name: str
    columns: list[tuple[str, int, bool]]  # (name, type oid, part of the replica identity)


def decode_commit(buf: bytes) -> tuple[int, int]:
    """A Commit message: (commit LSN, commit timestamp in µs since 2000-01-01)."""
    _flags, lsn, _end_lsn, ts = struct.unpack_from(">bQQq", buf, 1)
    return lsn, ts


def decode_type(buf: bytes) -> tuple[int, str]:
    """A Type message: (oid, type name)."""
    oid = struct.unpack_from(">I", buf, 1)[0]
    _namespace, pos = _cstring(buf, 5)
    name, _ = _cstring(buf, pos)
    return oid, name


def decode_relation(buf: bytes) -> tuple[int, Relation]:
    """A Relation message: (relation id, its schema, name and columns)."""
    relid = struct.unpack_from(">I", buf, 1)[0]
    schema, pos = _cstring(buf, 5)
    name, pos = _cstring(buf, pos)
    pos += 1  # replica identity setting; the key flags below are what matter
    (ncols,) = struct.unpack_from(">h", buf, pos)
    pos += 2
    columns = []
    for _ in range(ncols):
        flags = buf[pos]
        colname, pos = _cstring(buf, pos + 1)
        type_oid, _typmod = struct.unpack_from(">Ii", buf, pos)
        pos += 8
        columns.append((colname, type_oid, bool(flags & 1)))
    return relid, Relation(schema or "pg_catalog", name, columns)


def decode_row_change(buf: bytes) -> dict[str, Any]:
    """An Insert, Update or Delete message: its relation, type and old/new value lists."""
    kind = buf[:1]
    relid = struct.unpack_from(">I", buf, 1)[0]
    pos = 5
    old: list[Any] | None = None
    new: list[Any] | None = None
    old_is_key = False
    if kind == b"I":
        new, pos = _tuple(buf, pos + 1)  # skip the 'N' marker
    else:
        marker = buf[pos : pos + 1]
        if marker in (b"K", b"O"):
            old_is_key = marker == b"K"
            old, pos = _tuple(buf, pos + 1)
        if kind == b"U":
            new, pos = _tuple(buf, pos + 1)
    type_ = {b"I": "INSERT", b"U": "UPDATE", b"D": "DELETE"}[kind]
    return {"relid": relid, "type": type_, "old": old, "old_is_key": old_is_key, "new": new}


def _cstring(buf: bytes, pos: int) -> tuple[str, int]:
    end = buf.index(b"\0", pos)
    return buf[pos:end].decode(), end + 1


def _tuple(buf: bytes, pos: int) -> tuple[list[Any], int]:
    (ncols,) = struct.unpack_from(">h", buf, pos)
    pos += 2
    values: list[Any] = []
    for _ in range(ncols):
        kind = buf[pos : pos + 1]
        pos += 1
        if kind == b"n":
            values.append(None)
        elif kind == b"u":
            values.append(UNCHANGED_TOAST)
        else:  # b"t": text format (we never ask for binary)
            (length,) = struct.unpack_from(">i", buf, pos)
            pos += 4
            values.append(buf[pos : pos + length].decode())
            pos += length
    return values, pos
