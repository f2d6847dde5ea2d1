"""Supabase Realtime stand-in: Phoenix channels (vsn 1.0.0) delivering ``postgres_changes``.

Serves ``GET /realtime/v1/websocket?apikey=…&vsn=1.0.0`` to the real, unmodified ``realtime``
Python client. Changes come from :mod:`devstack.capture` (logical decoding of the
``supabase_realtime`` publication, in commit order). The wire behaviour follows
``docs/supabase-realtime.md`` §3–§5 and the MUST list in §10; the nasty parts of the real server
are reproduced on purpose, because they are what break workers in production:

* the join reply comes *before* the subscription exists, then the "Subscribed to PostgreSQL"
  system message; changes committed in between are not delivered;
* nothing is buffered or replayed: a socket's subscriptions die with it;
* a duplicate join on one socket first gets ``phx_close`` for the *old* join ref (pitfall P9);
* fault switches (methods of RealtimeServer, and ``POST /admin/realtime/<fault>``) drop, close, refuse,
  freeze, error and delay exactly the way the real service does.

Known simplifications: no RLS on postgres_changes (every valid key sees every row, as the
service-role key does), no Broadcast/Presence, no 60 s idle timeout, and ``select`` is echoed
but does not trim records.

Where things are: :mod:`~devstack.realtime.server` (connections, joins, delivery),
:mod:`~devstack.realtime.faults` (the fault switches), :mod:`~devstack.realtime.phoenix` (one
client socket and its frames), :mod:`~devstack.realtime.subscriptions` (bindings, row filters).
"""

from devstack.realtime.phoenix import ClientSocket
from devstack.realtime.server import (
    MAX_FRAME_BYTES,
    POLL_IDLE,
    POLL_JITTER,
    POLL_MAX_CHANGES,
    POLL_NOBODY_WAITED,
    WEBSOCKET_PATH,
    Delivery,
    RealtimeServer,
)
from devstack.realtime.subscriptions import Binding, Channel, RowFilter, binding_id

__all__ = [
    "MAX_FRAME_BYTES",
    "POLL_IDLE",
    "POLL_JITTER",
    "POLL_MAX_CHANGES",
    "POLL_NOBODY_WAITED",
    "WEBSOCKET_PATH",
    "Binding",
    "Channel",
    "ClientSocket",
    "Delivery",
    "RealtimeServer",
    "RowFilter",
    "binding_id",
]
