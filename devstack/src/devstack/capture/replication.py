"""The replication stream: a thread that owns the ``pgoutput`` connection and hands over transactions.

psycopg2's replication connection is blocking, so a dedicated thread reads it; each committed
transaction is shaped there into the ``data`` objects the real server puts in its frames and
handed to the asyncio loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extras

from devstack.capture.pgoutput import (
    UNCHANGED_TOAST,
    Relation,
    decode_commit,
    decode_relation,
    decode_row_change,
    decode_type,
)
from devstack.capture.values import map_nested, parse_array, render_scalar

log = logging.getLogger("devstack.capture")  # the name it logged under before the split

PUBLICATION = "supabase_realtime"
SLOT_PREFIX = "devstack_rt_"
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# The real server caps a record at 1 MiB; above that it keeps only short fields and says so.
MAX_RECORD_BYTES = 1024 * 1024
TOO_LARGE_KEEP_BYTES = 64

# How often an idle stream sends a status update; well inside wal_sender_timeout (60 s).
FEEDBACK_INTERVAL = 10.0


@dataclass(frozen=True, slots=True)
class Change:
    """One row change, already shaped like the real server's ``payload.data``."""

    schema: str
    table: str
    type: str  # INSERT, UPDATE or DELETE
    data: dict[str, Any]

    @property
    def record(self) -> dict[str, Any] | None:
        return self.data.get("record")

    @property
    def old_record(self) -> dict[str, Any] | None:
        return self.data.get("old_record")


@dataclass(frozen=True, slots=True)
class Transaction:
    lsn: int
    commit_timestamp: str
    changes: list[Change]
    decoded_at: float = field(default_factory=time.perf_counter)


class ChangeCapture:
    """Streams committed changes of the publication's tables to ``on_transaction`` (on the loop)."""

    def __init__(
        self,
        dsn: str,
        on_transaction: Callable[[Transaction], None],
        *,
        publication: str = PUBLICATION,
        slot_prefix: str = SLOT_PREFIX,
    ) -> None:
        self.dsn = dsn
        self.publication = publication
        self.slot_prefix = slot_prefix
        self.slot_name = f"{slot_prefix}{os.getpid()}_{uuid.uuid4().hex[:10]}"
        self.transactions = 0
        self.changes = 0
        self.error: BaseException | None = None
        self._on_transaction = on_transaction
        self._loop: asyncio.AbstractEventLoop | None = None
        self._conn: Any = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = -1, -1
        self._types: dict[int, tuple[str, int]] = {}  # oid -> (typname, element type oid)
        self._relations: dict[int, Relation] = {}
        self._pending: list[Change] = []

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open)
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name=f"capture-{self.slot_name}")
        self._thread.daemon = True
        self._thread.start()

    async def stop(self) -> None:
        """Stop streaming; closing the replication connection drops the (temporary) slot."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            os.write(self._wake_w, b"x")
            await asyncio.to_thread(thread.join, 10)
            os.close(self._wake_r)
            os.close(self._wake_w)
        if self._conn is not None:
            with contextlib.suppress(psycopg2.Error):
                self._conn.close()
            self._conn = None
            await asyncio.to_thread(self._drop_slot)

    def _drop_slot(self) -> None:
        # The walsender releases a temporary slot a moment after its connection closes; wait for
        # that so a stopped server leaves nothing behind, and drop the slot if it lingers.
        with contextlib.closing(psycopg2.connect(self.dsn)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    cur.execute(
                        "select active from pg_replication_slots where slot_name = %s",
                        (self.slot_name,),
                    )
                    row = cur.fetchone()
                    if row is None:
                        return
                    if not row[0]:
                        with contextlib.suppress(psycopg2.errors.UndefinedObject):
                            cur.execute("select pg_drop_replication_slot(%s)", (self.slot_name,))
                        return
                    time.sleep(0.02)

    # -- setup (runs in a worker thread: slot creation waits for running transactions) --

    def _open(self) -> None:
        with contextlib.closing(psycopg2.connect(self.dsn)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                # Slots are temporary, but a persistent one left by an older build would pin WAL.
                cur.execute(
                    "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                    " where slot_name like %s and not active and database = current_database()",
                    (self.slot_prefix.replace("_", r"\_") + "%",),
                )
                cur.execute("select oid, typname, typelem from pg_type")
                self._types = {oid: (name, elem) for oid, name, elem in cur.fetchall()}

        # Values are decoded as text in this session's settings: pin them to what the real
        # server's own session (UTC, ISO dates, exact floats) would render.
        conn = psycopg2.connect(
            self.dsn,
            connection_factory=psycopg2.extras.LogicalReplicationConnection,
            options="-c TimeZone=UTC -c DateStyle=ISO -c extra_float_digits=1",
        )
        try:
            cur = conn.cursor()
            # TEMPORARY like the real server's slot: it dies with this connection, even on a crash.
            cur.execute(f'CREATE_REPLICATION_SLOT "{self.slot_name}" TEMPORARY LOGICAL pgoutput')
            cur.start_replication(
                slot_name=self.slot_name,
                decode=False,
                options={"proto_version": "1", "publication_names": self.publication},
            )
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    # -- the streaming thread --

    def _run(self) -> None:
        cur = self._conn.cursor()
        last_feedback = time.monotonic()
        try:
            while not self._stopping.is_set():
                msg = cur.read_message()
                if msg is None:
                    ready, _, _ = select.select([self._conn, self._wake_r], [], [], 1.0)
                    if not ready and time.monotonic() - last_feedback > FEEDBACK_INTERVAL:
                        cur.send_feedback(reply=True)
                        last_feedback = time.monotonic()
                    continue
                if self._handle(msg.payload):
                    # Confirm at once (force) so PostgreSQL can recycle the WAL right away.
                    cur.send_feedback(flush_lsn=msg.data_start, force=True)
                    last_feedback = time.monotonic()
        except Exception as exc:
            if not self._stopping.is_set():
                self.error = exc
                log.exception("change capture stopped: no more postgres_changes will be sent")

    def _handle(self, buf: bytes) -> bool:
        """Decode one pgoutput message; True when it was a commit."""
        kind = buf[:1]
        if kind == b"B":
            self._pending = []
        elif kind == b"C":
            self._commit(*decode_commit(buf))
            return True
        elif kind == b"R":
            relid, relation = decode_relation(buf)
            self._relations[relid] = relation
        elif kind == b"Y":
            oid, name = decode_type(buf)
            self._types[oid] = (name, 0)
        elif kind in (b"I", b"U", b"D"):
            self._pending.append(decode_row_change(buf))
        # Origin, Truncate and logical messages are not part of postgres_changes.
        return False

    def _commit(self, lsn: int, ts: int) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        stamp = PG_EPOCH + timedelta(microseconds=ts)
        # Milliseconds, truncated, like the real server's to_char(... 'MS') rendering.
        commit_timestamp = (
            stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
        )
        changes = [self._shape(raw, commit_timestamp) for raw in pending]
        self.transactions += 1
        self.changes += len(changes)
        txn = Transaction(lsn, commit_timestamp, changes)
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
                loop.call_soon_threadsafe(self._on_transaction, txn)

    def _shape(self, raw: dict[str, Any], commit_timestamp: str) -> Change:
        """The real server's ``data`` object for one change (see supabase-realtime.md §4)."""
        rel = self._relations[raw["relid"]]
        type_ = raw["type"]
        names = [name for name, _, _ in rel.columns]
        typnames = [self._types.get(oid, ("unknown", 0))[0] for _, oid, _ in rel.columns]
        keys = [is_key for _, _, is_key in rel.columns]
        errors: list[str] = []
        if not any(keys):
            errors.append("Error 400: Bad Request, no primary key")

        data: dict[str, Any] = {
            "schema": rel.schema,
            "table": rel.name,
            "commit_timestamp": commit_timestamp,
            "type": type_,
            "columns": [{"name": n, "type": t} for n, t in zip(names, typnames, strict=True)],
        }
        new, old = raw["new"], raw["old"]
        if new is not None:
            data["record"] = self._record(rel, new, errors)
        if type_ in ("UPDATE", "DELETE"):
            # Default replica identity: only the key columns; REPLICA IDENTITY FULL: the old row.
            # An UPDATE that did not touch the key carries no old tuple, so take the key from new.
            if old is not None and not raw["old_is_key"]:
                data["old_record"] = self._record(rel, old, errors)
            else:
                source = old if old is not None else new or []
                key_only = [v if k else UNCHANGED_TOAST for v, k in zip(source, keys, strict=True)]
                data["old_record"] = self._record(rel, key_only, errors)
        data["errors"] = errors or None
        return Change(rel.schema, rel.name, type_, data)

    def _record(self, rel: Relation, values: list[Any], errors: list[str]) -> dict[str, Any]:
        too_large = sum(len(v) for v in values if isinstance(v, str)) > MAX_RECORD_BYTES
        if too_large and "Error 413: Payload Too Large" not in errors:
            errors.append("Error 413: Payload Too Large")
        record: dict[str, Any] = {}
        for (name, oid, _), value in zip(rel.columns, values, strict=True):
            if value is UNCHANGED_TOAST:
                continue
            if too_large and isinstance(value, str) and len(value) > TOO_LARGE_KEEP_BYTES:
                continue
            record[name] = None if value is None else self._render(value, oid)
        return record

    def _render(self, text: str, oid: int) -> Any:
        """``text`` as ``to_jsonb(text::type)`` would render it."""
        typname, elem = self._types.get(oid, ("unknown", 0))
        if elem and typname.startswith("_"):
            try:
                items = parse_array(text)
            except (IndexError, ValueError):
                return text
            return map_nested(items, lambda item: self._render(item, elem))
        return render_scalar(text, typname)
