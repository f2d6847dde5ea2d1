"""Supabase Realtime stand-in: Phoenix channels (vsn 1.0.0 and 2.0.0) with ``postgres_changes``
and Broadcast from the database.

Serves ``GET /realtime/v1/websocket?apikey=…&vsn=…`` to the real, unmodified clients:
realtime-py (vsn 1.0.0, JSON objects) and supabase-js (vsn 2.0.0, JSON arrays and binary
frames), one serializer per connection chosen from ``vsn`` as Phoenix does
(:mod:`~devstack.realtime.serializers`). Changes come from :mod:`devstack.capture` (logical
decoding of the ``supabase_realtime`` publication, in commit order). The wire behaviour follows
``docs/supabase-realtime.md`` §3–§5, §10 and §11; the nasty parts of the real server are
reproduced on purpose, because they are what break workers in production:

* the join reply comes *before* the subscription exists, then the "Subscribed to PostgreSQL"
  system message; changes committed in between are not delivered;
* nothing is buffered or replayed: a socket's subscriptions die with it;
* a duplicate join on one socket first gets ``phx_close`` for the *old* join ref (pitfall P9);
* fault switches (methods of RealtimeServer, and ``POST /admin/realtime/<fault>``) drop, close,
  refuse, freeze, error and delay exactly the way the real service does.

And what the app's users rely on (:mod:`~devstack.realtime.authorization`):

* **RLS on postgres_changes**: a channel acts with its ``access_token`` (else the apikey); a row
  goes to it only if its role and claims may select it, with only the columns they may select
  (``realtime.apply_rls``). The service role skips the check, as it bypasses RLS.
* **Broadcast from the database**: ``realtime.send`` rows in ``realtime.messages`` go out at
  once to channels joined on their topic; a **private** channel (``config.private``) is joined
  only if the ``realtime.messages`` read policies let its claims read the topic (Realtime
  Authorization), and only private channels get private messages.

Known simplifications: no Presence, no client-sent broadcasts (they are ignored, so ``ack``
never comes), no replay, no 60 s idle timeout, and ``select`` is echoed but does not trim
records.

Where things are: :mod:`~devstack.realtime.server` (connections, joins, delivery),
:mod:`~devstack.realtime.faults` (the fault switches), :mod:`~devstack.realtime.phoenix` (one
client socket and its frames), :mod:`~devstack.realtime.serializers` (vsn 1.0.0 and 2.0.0),
:mod:`~devstack.realtime.subscriptions` (bindings, row filters),
:mod:`~devstack.realtime.authorization` (the questions it asks the database).
"""

from devstack.realtime.delivery import (
    POLL_IDLE,
    POLL_JITTER,
    POLL_MAX_CHANGES,
    POLL_NOBODY_WAITED,
)
from devstack.realtime.phoenix import ClientSocket
from devstack.realtime.serializers import (
    Message,
    UserBroadcast,
    V1JSONSerializer,
    V2Serializer,
    negotiate,
)
from devstack.realtime.server import MAX_FRAME_BYTES, WEBSOCKET_PATH, Delivery, RealtimeServer
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
    "Message",
    "RealtimeServer",
    "RowFilter",
    "UserBroadcast",
    "V1JSONSerializer",
    "V2Serializer",
    "binding_id",
    "negotiate",
]
