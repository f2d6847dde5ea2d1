"""Change capture for the Realtime stand-in: logical decoding of the ``supabase_realtime`` publication.

The real Realtime server reads a temporary wal2json slot with ``pg_logical_slot_get_changes``,
so it sees committed transactions in commit order, only for tables in the publication, and loses
whatever was committed while its slot did not exist. We have no wal2json (the embedded PostgreSQL
ships only ``pgoutput``), so we stream ``pgoutput`` over the replication protocol instead: same
source, same order, same loss semantics, and about 0.3 ms from commit to decoded change.

A dedicated thread owns the replication connection (psycopg2 is blocking); each committed
transaction is decoded there into the ``data`` objects the real server puts in its frames and
handed to the asyncio loop with ``call_soon_threadsafe``.

pgoutput protocol version 1 reference:
https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html

Where things are: :mod:`~devstack.capture.replication` (the slot, the streaming thread, shaping
changes), :mod:`~devstack.capture.pgoutput` (decoding the binary messages),
:mod:`~devstack.capture.values` (text values as the JSON the real server sends).
"""

from devstack.capture.replication import (
    FEEDBACK_INTERVAL,
    MAX_RECORD_BYTES,
    PG_EPOCH,
    PUBLICATION,
    SLOT_PREFIX,
    TOO_LARGE_KEEP_BYTES,
    Change,
    ChangeCapture,
    Transaction,
)
from devstack.capture.values import parse_array, render_scalar

__all__ = [
    "FEEDBACK_INTERVAL",
    "MAX_RECORD_BYTES",
    "PG_EPOCH",
    "PUBLICATION",
    "SLOT_PREFIX",
    "TOO_LARGE_KEEP_BYTES",
    "Change",
    "ChangeCapture",
    "Transaction",
    "parse_array",
    "render_scalar",
]
