"""Delivery of captured changes: postgres_changes to the channels whose bindings match (with
RLS for signed-in subscribers, as ``realtime.apply_rls`` does) and Broadcast rows of
``realtime.messages`` to the channels joined on their topic; at once, or on the real
ReplicationPoller's schedule in ``realistic`` mode.

A mixin of ``RealtimeServer``: it reads the server's sockets, inbox, backlog, database and
counters.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import asyncpg

from devstack.capture import Change, Transaction
from devstack.realtime.authorization import BYPASS_ROLES, Database
from devstack.realtime.phoenix import ClientSocket
from devstack.realtime.serializers import BINARY_ENCODING, JSON_ENCODING, UserBroadcast
from devstack.realtime.subscriptions import Channel

if TYPE_CHECKING:
    from devstack.realtime.server import Delivery

log = logging.getLogger("devstack.realtime")

# The real ReplicationPoller (supabase-realtime.md §8): poll again at once after a poll that
# delivered something, wait 100 ms + 50–100 ms jitter after changes nobody wanted, 500 ms idle.
POLL_MAX_CHANGES = 100
POLL_NOBODY_WAITED = 0.1
POLL_JITTER = (0.05, 0.1)
POLL_IDLE = 0.5


class ChangeDelivery:
    sockets: list[ClientSocket]
    delivery: Delivery
    db: Database
    _inbox: asyncio.Queue[tuple[str, list[Change], float]]
    _backlog: deque[Change]
    last_delivery_ms: float | None
    changes_delivered: int
    broadcasts_delivered: int

    def _on_transaction(self, txn: Transaction) -> None:
        messages = [c for c in txn.changes if _is_message(c)]
        changes = [c for c in txn.changes if not _is_message(c)] if messages else txn.changes
        if messages:  # Broadcast from the database streams at once in both modes
            self._inbox.put_nowait(("broadcasts", messages, txn.decoded_at))
        if not changes:
            return
        if self.delivery == "fast":
            self._inbox.put_nowait(("changes", changes, txn.decoded_at))
        else:
            self._backlog.extend(changes)

    async def _deliver_loop(self) -> None:
        """Everything captured, in commit order; one change's RLS checks hold up the next."""
        while True:
            kind, changes, decoded_at = await self._inbox.get()
            try:
                if kind == "broadcasts":
                    for change in changes:
                        self._broadcast(change)
                else:
                    for change in changes:
                        await self._dispatch(change)
                    self.last_delivery_ms = (time.perf_counter() - decoded_at) * 1000
            except Exception:  # one bad change must not stop delivery
                log.exception("error delivering %s", kind)

    async def _dispatch(self, change: Change) -> int:
        """Queue one frame per subscribed channel with matching bindings whose role may see the
        row (RLS, as ``realtime.apply_rls`` checks it); returns the count."""
        targets: list[tuple[ClientSocket, Channel, list[int]]] = []
        for sock in self.sockets:
            for channel in sock.channels.values():
                if not channel.subscribed:
                    continue
                ids = [b.id for b in channel.bindings if b.matches(change)]
                if ids:
                    targets.append((sock, channel, ids))
        if not targets:
            return 0
        shaped: dict[str, dict[str, Any] | None] = {}
        checked = [c for _, c, _ in targets if c.role not in BYPASS_ROLES]
        if checked:
            shaped = await self._shape(change, checked)
        sent = 0
        for sock, channel, ids in targets:
            if checked and sock.channels.get(channel.topic) is not channel:
                continue  # left or replaced while the row was checked
            if channel.role in BYPASS_ROLES:
                data: dict[str, Any] | None = change.data
            else:
                data = shaped.get(_claims_key(channel.claims))
            if data is not None:
                sock.fastlane(channel.topic, "postgres_changes", {"ids": ids, "data": data})
                sent += 1
        self.changes_delivered += sent
        return sent

    async def _shape(
        self, change: Change, channels: list[Channel]
    ) -> dict[str, dict[str, Any] | None]:
        """What each distinct set of claims may see of ``change`` (None: nothing)."""
        by_role: dict[str, dict[str, dict[str, Any]]] = {}
        for channel in channels:
            by_role.setdefault(channel.role, {})[_claims_key(channel.claims)] = channel.claims
        shaped: dict[str, dict[str, Any] | None] = {}
        for claims_by_key in by_role.values():
            try:
                results = await self.db.shape_for(change, list(claims_by_key.values()))
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError) as exc:
                log.warning("RLS check of a %s on %s failed: %s", change.type, change.table, exc)
                results = [None] * len(claims_by_key)
            shaped.update(zip(claims_by_key, results, strict=True))
        return shaped

    def _broadcast(self, change: Change) -> int:
        """One ``realtime.messages`` row from the stream, to the channels on its topic
        (ReplicationConnection → MessageDispatcher). Returns the frames queued."""
        record = change.record
        if change.type != "INSERT" or not record:
            return 0
        topic, event, private = record.get("topic"), record.get("event"), record.get("private")
        if not topic or not event or private is None or not record.get("id"):
            return 0  # the real server logs UnableToBroadcastChanges and moves on
        if record.get("binary_payload") is not None:
            body = bytes.fromhex(str(record["binary_payload"]).removeprefix("\\x"))
            encoding = BINARY_ENCODING
        elif record.get("payload") is not None:
            # The jsonb column's text, as the server forwards it (a Jason.Fragment).
            text = json.dumps(record["payload"], ensure_ascii=False, separators=(", ", ": "))
            body, encoding = text.encode(), JSON_ENCODING
        else:
            return 0
        sent = 0
        for sock in self.sockets:
            for channel in sock.channels.values():
                if channel.name != topic or channel.private is not bool(private):
                    continue
                if channel.private and not channel.broadcast_read:
                    continue
                msg = UserBroadcast(channel.topic, str(event), body, encoding, {"id": record["id"]})
                if sock.user_broadcast(msg):
                    sent += 1
        self.broadcasts_delivered += sent
        return sent

    async def _poll_loop(self) -> None:
        """Realistic mode: hand out captured changes on the real ReplicationPoller's schedule.
        Like the real poller, who gets a change is decided at poll time, not at commit."""
        wait = POLL_IDLE
        while True:
            await asyncio.sleep(wait)
            batch = [
                self._backlog.popleft() for _ in range(min(POLL_MAX_CHANGES, len(self._backlog)))
            ]
            delivered = 0
            for change in batch:
                try:
                    delivered += await self._dispatch(change)
                except Exception:  # one bad change must not stop the poller
                    log.exception("error delivering a %s on %s", change.type, change.table)
            if not batch:
                wait = POLL_IDLE
            elif delivered:
                wait = 0
            else:
                wait = POLL_NOBODY_WAITED + random.uniform(*POLL_JITTER)


def _is_message(change: Change) -> bool:
    """A row of ``realtime.messages`` (a partition: the publication publishes the leaves)."""
    return change.schema == "realtime" and change.table.startswith("messages")


def _claims_key(claims: dict[str, Any]) -> str:
    return json.dumps(claims, sort_keys=True)
