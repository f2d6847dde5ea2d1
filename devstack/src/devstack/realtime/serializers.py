"""Phoenix channel serializers: vsn 1.0.0 (JSON objects) and 2.0.0 (JSON arrays + binary frames).

One endpoint serves both, as the real one does. Phoenix picks a connection's serializer from the
``vsn`` query parameter (``Phoenix.Socket.__connect__``: ``vsn = params["vsn"] || "1.0.0"``, then
the first serializer whose requirement matches; no match, or no valid version: HTTP 403), and
supabase/realtime's endpoint (``lib/realtime_web/endpoint.ex``) lists
``{Phoenix.Socket.V1.JSONSerializer, "~> 1.0.0"}`` and ``{RealtimeWeb.Socket.V2Serializer,
"~> 2.0.0"}``. realtime-py 2.34.1 asks for 1.0.0; supabase-js (realtime-js ≥ 2.7x) for 2.0.0.

Sources, read for this module:

* phoenixframework/phoenix ``lib/phoenix/socket/serializers/v1_json_serializer.ex``: objects
  ``{"topic","event","payload","ref"}`` out (``join_ref`` dropped), objects in;
* phoenixframework/phoenix ``lib/phoenix/socket/serializers/v2_json_serializer.ex``: arrays
  ``[join_ref, ref, topic, event, payload]`` both ways; binary kinds push 0, reply 1, broadcast 2;
* supabase/realtime ``lib/realtime_web/socket/v2_serializer.ex``: V2 plus user broadcast push
  (kind 3, client → server) and user broadcast (kind 4, server → client), and
  ``lib/realtime_web/socket/user_broadcast.ex`` (``convert_to_json_broadcast``: what a V1 client
  gets instead of kind 4);
* supabase/supabase-js ``packages/core/realtime-js/src/lib/serializer.ts``: the client's side of
  kinds 3 and 4 (it decodes only kind 4 among binary frames).

Binary layouts (every size one unsigned byte, strings UTF-8, at most 255 bytes each):

* kind 3, user broadcast push: ``3, join_ref_size, ref_size, topic_size, user_event_size,
  metadata_size, encoding, join_ref, ref, topic, user_event, metadata, payload``;
* kind 4, user broadcast: ``4, topic_size, user_event_size, metadata_size, encoding, topic,
  user_event, metadata, payload``.

``encoding`` is 0 for binary, 1 for JSON; metadata is JSON (``{"id": …}`` for a message from the
database) or empty.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from typing import Any

JSON_ENCODING = 1
BINARY_ENCODING = 0

KIND_PUSH = 0
KIND_REPLY = 1
KIND_BROADCAST = 2
KIND_USER_BROADCAST_PUSH = 3
KIND_USER_BROADCAST = 4

_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$")


class SerializerError(ValueError):
    """A frame this serializer cannot read (Phoenix raises; the stand-in logs and skips it)."""


@dataclass(frozen=True, slots=True)
class Message:
    """``Phoenix.Socket.Message``: one decoded client frame."""

    topic: str
    event: str
    payload: Any
    ref: str | None
    join_ref: str | None


@dataclass(frozen=True, slots=True)
class UserBroadcast:
    """``RealtimeWeb.Socket.UserBroadcast``: a broadcast whose user payload travels as bytes."""

    topic: str  # the topic the channel joined ("realtime:…"), as MessageDispatcher sets it
    user_event: str
    user_payload: bytes  # JSON text when encoding is JSON, raw bytes otherwise
    user_payload_encoding: int = JSON_ENCODING
    metadata: dict[str, Any] | None = None


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class V1JSONSerializer:
    """``Phoenix.Socket.V1.JSONSerializer``: what realtime-py speaks."""

    vsn = "1.0.0"

    def decode(self, data: str | bytes) -> Message:
        if isinstance(data, bytes):
            raise SerializerError("V1 JSON Serializer expected text, got a binary frame")
        try:
            frame = json.loads(data)
            if not isinstance(frame, dict):
                raise SerializerError(f"V1 JSON Serializer expected a map, got {type(frame)}")
            return Message(
                str(frame["topic"]),
                str(frame["event"]),
                frame.get("payload") or {},
                frame.get("ref"),
                frame.get("join_ref"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SerializerError(str(exc)) from exc

    def message(
        self, topic: str, event: str, payload: Any, ref: str | None, join_ref: str | None
    ) -> str:
        # encode_v1_fields_only: Map.take([:topic, :event, :payload, :ref]); join_ref is dropped.
        return _dumps({"topic": topic, "event": event, "payload": payload, "ref": ref})

    def reply(
        self, topic: str, ref: str | None, join_ref: str | None, status: str, response: Any
    ) -> str:
        payload = {"status": status, "response": response}
        return self.message(topic, "phx_reply", payload, ref, join_ref)

    def broadcast(self, topic: str, event: str, payload: Any) -> str:
        return self.message(topic, event, payload, None, None)

    def user_broadcast(self, msg: UserBroadcast) -> str | None:
        """MessageDispatcher converts for V1 (``UserBroadcast.convert_to_json_broadcast``); a
        binary user payload cannot be converted and is not sent."""
        if msg.user_payload_encoding != JSON_ENCODING:
            return None
        payload: dict[str, Any] = {
            "event": msg.user_event,
            "payload": json.loads(msg.user_payload),
            "type": "broadcast",
        }
        if msg.metadata:
            payload["meta"] = msg.metadata
        return self.broadcast(msg.topic, "broadcast", payload)


class V2Serializer:
    """``RealtimeWeb.Socket.V2Serializer``: Phoenix's V2 JSON serializer plus user broadcasts;
    what supabase-js speaks."""

    vsn = "2.0.0"

    def decode(self, data: str | bytes) -> Message:
        if isinstance(data, bytes):
            return self._decode_binary(data)
        try:
            frame = json.loads(data)
        except ValueError as exc:
            raise SerializerError(str(exc)) from exc
        if not isinstance(frame, list) or len(frame) < 5:
            raise SerializerError(f"expected V2 array, got: {str(frame)[:200]}")
        join_ref, ref, topic, event, payload = frame[:5]
        if not isinstance(topic, str) or not isinstance(event, str):
            raise SerializerError(f"expected V2 array, got: {str(frame)[:200]}")
        return Message(topic, event, payload if payload is not None else {}, ref, join_ref)

    def _decode_binary(self, data: bytes) -> Message:
        try:
            kind = data[0]
            if kind == KIND_PUSH:
                sizes = struct.unpack_from("4B", data, 1)
                join_ref, ref, topic, event, rest = _split(data, 5, sizes)
                return Message(topic, event, {"binary": rest}, ref or None, join_ref or None)
            if kind == KIND_USER_BROADCAST_PUSH:
                *sizes, encoding = struct.unpack_from("6B", data, 1)
                join_ref, ref, topic, user_event, metadata, rest = _split(data, 7, sizes)
                payload: dict[str, Any] = {
                    "type": "broadcast",
                    "event": user_event,
                    "payload": json.loads(rest) if encoding == JSON_ENCODING else rest,
                }
                if metadata:
                    payload["meta"] = json.loads(metadata)
                return Message(topic, "broadcast", payload, ref or None, join_ref or None)
        except (IndexError, struct.error, ValueError) as exc:
            raise SerializerError(f"malformed binary frame: {exc}") from exc
        raise SerializerError(f"unknown binary frame kind {data[:1]!r}")

    def message(
        self, topic: str, event: str, payload: Any, ref: str | None, join_ref: str | None
    ) -> str:
        return _dumps([join_ref, ref, topic, event, payload])

    def reply(
        self, topic: str, ref: str | None, join_ref: str | None, status: str, response: Any
    ) -> str:
        return _dumps([join_ref, ref, topic, "phx_reply", {"status": status, "response": response}])

    def broadcast(self, topic: str, event: str, payload: Any) -> str:
        return _dumps([None, None, topic, event, payload])

    def user_broadcast(self, msg: UserBroadcast) -> bytes:
        topic = msg.topic.encode()
        event = msg.user_event.encode()
        metadata = _dumps(msg.metadata).encode() if msg.metadata else b""
        for name, part in (("topic", topic), ("user_event", event), ("metadata", metadata)):
            if len(part) > 255:
                raise ValueError(f"{name} must be at most 255 bytes, is {len(part)}")
        header = struct.pack(
            "5B", KIND_USER_BROADCAST, len(topic), len(event), len(metadata),
            msg.user_payload_encoding,
        )  # fmt: skip
        return header + topic + event + metadata + msg.user_payload


def _split(data: bytes, offset: int, sizes: list[int] | tuple[int, ...]) -> list[Any]:
    parts: list[Any] = []
    for size in sizes:
        chunk = data[offset : offset + size]
        if len(chunk) != size:
            raise ValueError("frame shorter than its header says")
        parts.append(chunk.decode())
        offset += size
    parts.append(data[offset:])
    return parts


Serializer = V1JSONSerializer | V2Serializer


def negotiate(vsn: str | None) -> Serializer | None:
    """The serializer for a connection's ``vsn`` (missing: 1.0.0), or None (Phoenix: 403).

    ``~> 1.0.0`` is ``>= 1.0.0 and < 1.1.0``; ``~> 2.0.0`` is ``>= 2.0.0 and < 2.1.0``.
    """
    match = _SEMVER.match(vsn if vsn is not None else "1.0.0")
    if not match:
        return None
    major, minor, _patch = (int(part) for part in match.groups())
    if (major, minor) == (1, 0) and "-" not in (vsn or ""):
        return V1JSONSerializer()
    if (major, minor) == (2, 0) and "-" not in (vsn or ""):
        return V2Serializer()
    return None
