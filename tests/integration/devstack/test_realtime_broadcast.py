"""The Realtime stand-in as supabase-js and the app's users meet it: vsn 2.0.0 beside 1.0.0,
private channels authorized by ``realtime.messages`` policies, Broadcast from the database, RLS
on postgres_changes; and the Auth stand-in and CORS the browser needs.

Raw frames (the ``websockets`` library) check the wire format byte for byte against the sources
named in :mod:`devstack.realtime.serializers`; the real realtime-py and supabase_auth clients
check that the Python side still works. The browser side (supabase-js itself) is
tests/system/test_example_app.py.
"""

from __future__ import annotations

import asyncio
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import websockets
from realtime import RealtimeSubscribeStates as States
from supabase import AsyncClient, AsyncClientOptions, acreate_client
from supabase_auth.errors import AuthApiError

from devstack.realtime import UserBroadcast, V1JSONSerializer, V2Serializer, negotiate
from devstack.stack import DevStack
from tests.integration.devstack.test_realtime import close_client, eventually


def ws_url(stack: DevStack, key: str, vsn: str | None = "2.0.0") -> str:
    url = stack.url.replace("http://", "ws://") + f"/realtime/v1/websocket?apikey={key}"
    return url + (f"&vsn={vsn}" if vsn is not None else "")


class RawV2:
    """A vsn 2.0.0 client written from the protocol, frame by frame, as realtime-js sends them."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.ref = 0
        self.frames: list[Any] = []  # decoded arrays, or ("binary", bytes)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            self.frames.append(
                ("binary", message) if isinstance(message, bytes) else json.loads(message)
            )

    async def send(
        self, topic: str, event: str, payload: dict[str, Any], join_ref: str | None = None
    ) -> str:
        self.ref += 1
        ref = str(self.ref)
        await self.ws.send(json.dumps([join_ref, ref, topic, event, payload]))
        return ref

    async def join(self, topic: str, token: str, *, private: bool, pg: list | None = None) -> list:
        config = {
            "broadcast": {"ack": False, "self": False},
            "presence": {"key": "", "enabled": False},
            "postgres_changes": pg or [],
            "private": private,
        }
        self.ref += 1
        ref = str(self.ref)
        await self.ws.send(
            json.dumps([ref, ref, topic, "phx_join", {"config": config, "access_token": token}])
        )
        return await self.reply(ref)

    async def reply(self, ref: str) -> list:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            for frame in self.frames:
                if isinstance(frame, list) and frame[1] == ref and frame[3] == "phx_reply":
                    return frame
            await asyncio.sleep(0.01)
        raise AssertionError(f"no reply to {ref}: {self.frames}")

    def binaries(self) -> list[bytes]:
        return [f[1] for f in self.frames if isinstance(f, tuple)]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


@pytest_asyncio.fixture
async def raw(stack: DevStack) -> AsyncIterator[Any]:
    opened: list[RawV2] = []

    async def open_(key: str | None = None, vsn: str | None = "2.0.0") -> RawV2:
        ws = await websockets.connect(ws_url(stack, key or stack.keys.anon_key, vsn))
        client = RawV2(ws)
        opened.append(client)
        return client

    yield open_
    for client in opened:
        await client.close()


def decode_user_broadcast(frame: bytes) -> dict[str, Any]:
    """Kind 4 as realtime-js's Serializer._decodeUserBroadcast reads it."""
    kind, topic_size, event_size, meta_size, encoding = struct.unpack_from("5B", frame)
    assert kind == 4
    offset = 5
    topic = frame[offset : offset + topic_size].decode()
    offset += topic_size
    event = frame[offset : offset + event_size].decode()
    offset += event_size
    meta = frame[offset : offset + meta_size].decode()
    offset += meta_size
    body = frame[offset:]
    return {
        "topic": topic,
        "event": event,
        "meta": json.loads(meta) if meta_size else None,
        "encoding": encoding,
        "payload": json.loads(body) if encoding == 1 else body,
    }


async def insert_job(stack: DevStack, user_id: uuid.UUID | None, prompt: str = "a fox") -> str:
    return str(
        await stack.pool.fetchval(
            "insert into public.jobs (prompt, user_id) values ($1, $2) returning id",
            prompt,
            user_id,
        )
    )


# -- serializers ----------------------------------------------------------------------------------


def test_serializers_are_picked_by_vsn_as_phoenix_does() -> None:
    assert isinstance(negotiate(None), V1JSONSerializer)  # Phoenix: params["vsn"] || "1.0.0"
    assert isinstance(negotiate("1.0.0"), V1JSONSerializer)
    assert isinstance(negotiate("2.0.0"), V2Serializer)
    assert isinstance(negotiate("2.0.7"), V2Serializer)  # "~> 2.0.0"
    for vsn in ("3.0.0", "2.1.0", "2.0", "abc", "", "2.0.0-rc.1"):
        assert negotiate(vsn) is None, vsn


def test_v2_frames_match_phoenix_and_realtime_js() -> None:
    v2 = V2Serializer()
    assert (
        v2.message("realtime:x", "system", {"a": 1}, None, "7")
        == '["7",null,"realtime:x","system",{"a":1}]'
    )
    assert v2.reply("realtime:x", "3", "1", "ok", {}) == (
        '["1","3","realtime:x","phx_reply",{"status":"ok","response":{}}]'
    )
    assert (
        v2.broadcast("realtime:x", "postgres_changes", {})
        == '[null,null,"realtime:x","postgres_changes",{}]'
    )
    msg = v2.decode('["1","2","realtime:x","phx_join",{"config":{}}]')
    assert (msg.join_ref, msg.ref, msg.topic, msg.event, msg.payload) == (
        "1",
        "2",
        "realtime:x",
        "phx_join",
        {"config": {}},
    )

    frame = v2.user_broadcast(
        UserBroadcast("realtime:jobs:u", "job_update", b'{"id": "j"}', 1, {"id": "m"})
    )
    assert frame[:5] == bytes([4, len("realtime:jobs:u"), len("job_update"), len('{"id":"m"}'), 1])
    assert decode_user_broadcast(frame) == {
        "topic": "realtime:jobs:u", "event": "job_update", "meta": {"id": "m"},
        "encoding": 1, "payload": {"id": "j"},
    }  # fmt: skip

    # Kind 3, as realtime-js's _encodeUserBroadcastPush builds it: the server reads it back.
    header = bytes([3, 1, 1, len("realtime:x"), len("ping"), 0, 1])
    pushed = v2.decode(header + b"1" + b"2" + b"realtime:x" + b"ping" + b'{"n":1}')
    assert (pushed.event, pushed.topic, pushed.ref, pushed.join_ref) == (
        "broadcast",
        "realtime:x",
        "2",
        "1",
    )
    assert pushed.payload == {"type": "broadcast", "event": "ping", "payload": {"n": 1}}


def test_v1_frames_are_unchanged_and_get_broadcasts_as_json() -> None:
    v1 = V1JSONSerializer()
    assert v1.reply("phoenix", None, "1", "ok", {}) == (
        '{"topic":"phoenix","event":"phx_reply","payload":{"status":"ok","response":{}},"ref":null}'
    )
    text = v1.user_broadcast(UserBroadcast("realtime:t", "e", b'{"a": 1}', 1, {"id": "m"}))
    assert json.loads(text) == {
        "topic": "realtime:t", "event": "broadcast", "ref": None,
        "payload": {"event": "e", "payload": {"a": 1}, "type": "broadcast", "meta": {"id": "m"}},
    }  # fmt: skip
    assert v1.user_broadcast(UserBroadcast("realtime:t", "e", b"\x00", 0)) is None


# -- one endpoint, both versions ------------------------------------------------------------------


async def test_one_endpoint_serves_both_versions(stack: DevStack, raw) -> None:
    v2 = await raw(vsn="2.0.0")
    ref = await v2.send("phoenix", "heartbeat", {})
    assert await v2.reply(ref) == [
        None,
        ref,
        "phoenix",
        "phx_reply",
        {"status": "ok", "response": {}},
    ]

    async with websockets.connect(ws_url(stack, stack.keys.anon_key, vsn=None)) as v1:
        await v1.send(
            json.dumps({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"})
        )
        assert json.loads(await v1.recv()) == {
            "topic": "phoenix", "event": "phx_reply",
            "payload": {"status": "ok", "response": {}}, "ref": "1",
        }  # fmt: skip

    async with aiohttp.ClientSession() as http:
        url = ws_url(stack, stack.keys.anon_key, vsn="3.0.0").replace("ws://", "http://")
        async with http.get(url, headers={"Upgrade": "websocket", "Connection": "Upgrade"}) as r:
            assert r.status == 403  # Phoenix: no serializer for this vsn


async def test_postgres_changes_over_vsn_2(stack: DevStack, raw) -> None:
    """What supabase-js did against the old stand-in (TIMED_OUT, every frame malformed) now
    works: the join reply, the system message with the join ref, the change as a fastlane."""
    client = await raw(stack.keys.service_role_key)
    binding = {"event": "INSERT", "schema": "public", "table": "jobs"}
    reply = await client.join(
        "realtime:any", stack.keys.service_role_key, private=False, pg=[binding]
    )
    assert reply[0] == reply[1] and reply[2] == "realtime:any"
    (echoed,) = reply[4]["response"]["postgres_changes"]
    assert echoed["id"] >= 1 and {k: echoed[k] for k in binding} == binding
    await eventually(lambda: any(f[3] == "system" for f in client.frames if isinstance(f, list)))
    system = next(f for f in client.frames if isinstance(f, list) and f[3] == "system")
    assert system[:2] == [reply[0], None] and system[4]["status"] == "ok"

    job = await insert_job(stack, None)
    await eventually(
        lambda: any(f[3] == "postgres_changes" for f in client.frames if isinstance(f, list))
    )
    change = next(f for f in client.frames if isinstance(f, list) and f[3] == "postgres_changes")
    assert change[:3] == [None, None, "realtime:any"]
    assert change[4]["ids"] == [echoed["id"]] and change[4]["data"]["record"]["id"] == job


# -- Broadcast from the database on private channels ----------------------------------------------


async def test_job_updates_reach_only_their_users_private_channel(stack: DevStack, raw) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    token = stack.keys.user_token(alice)
    mine = await raw(token)
    reply = await mine.join(f"realtime:jobs:{alice}", token, private=True)
    assert reply[4] == {"status": "ok", "response": {"postgres_changes": []}}
    public = await raw(token)  # the same topic, not private: gets no private message
    assert (await public.join(f"realtime:jobs:{alice}", token, private=False))[4]["status"] == "ok"

    intruder = await raw(stack.keys.user_token(bob))
    refused = await intruder.join(
        f"realtime:jobs:{alice}", stack.keys.user_token(bob), private=True
    )
    assert refused[4] == {
        "status": "error",
        "response": {
            "reason": "Unauthorized: You do not have permissions to read from this Channel "
            f"topic: jobs:{alice}"
        },
    }
    anonymous = await raw()
    refused = await anonymous.join(f"realtime:jobs:{alice}", stack.keys.anon_key, private=True)
    assert refused[4]["status"] == "error"

    job = await insert_job(stack, alice, "a red fox")
    await insert_job(stack, bob)
    await stack.pool.execute(
        "update public.jobs set status = 'running', progress = 10 where id = $1", job
    )
    await eventually(lambda: len(mine.binaries()) == 2)
    first, second = (decode_user_broadcast(f) for f in mine.binaries())
    assert first["topic"] == f"realtime:jobs:{alice}" and first["event"] == "job_update"
    assert first["encoding"] == 1 and uuid.UUID(first["meta"]["id"])
    assert first["payload"] == {
        "id": job, "status": "pending", "progress": 0,
        "image_url": None, "thumbnail_url": None, "error_message": None,
    }  # fmt: skip
    assert (second["payload"]["status"], second["payload"]["progress"]) == ("running", 10)
    await asyncio.sleep(0.2)
    assert public.binaries() == [] and intruder.binaries() == []
    assert stack.realtime.status()["broadcasts_delivered"] == 2


async def test_realtime_py_gets_the_json_broadcast(stack: DevStack) -> None:
    alice = uuid.uuid4()
    client = await acreate_client(stack.url, stack.keys.anon_key)
    try:
        await client.realtime.set_auth(stack.keys.user_token(alice))
        got: list[dict[str, Any]] = []
        states: list[States] = []
        channel = client.channel(f"jobs:{alice}", {"config": {"private": True}})
        channel.on_broadcast("job_update", got.append)
        await channel.subscribe(lambda state, _err: states.append(state))
        await eventually(lambda: States.SUBSCRIBED in states)
        job = await insert_job(stack, alice)
        await eventually(lambda: len(got) == 1)
        assert got[0]["event"] == "job_update" and got[0]["payload"]["id"] == job
        assert set(got[0]["payload"]) == {
            "id", "status", "progress", "image_url", "thumbnail_url", "error_message"
        }  # fmt: skip
        assert uuid.UUID(got[0]["meta"]["id"])
    finally:
        await close_client(client)


async def test_a_new_token_is_checked_again(stack: DevStack, raw) -> None:
    """access_token with another user's JWT: the policies no longer allow the topic, so the
    channel is shut (system error, then phx_close with its join ref)."""
    alice = uuid.uuid4()
    client = await raw(stack.keys.user_token(alice))
    topic = f"realtime:jobs:{alice}"
    reply = await client.join(topic, stack.keys.user_token(alice), private=True)
    assert reply[4]["status"] == "ok"
    await client.send(
        topic, "access_token", {"access_token": stack.keys.user_token(uuid.uuid4())}, reply[0]
    )
    await eventually(
        lambda: any(isinstance(f, list) and f[3] == "phx_close" for f in client.frames)
    )
    system = next(f for f in client.frames if isinstance(f, list) and f[3] == "system")
    assert system[4]["status"] == "error" and "no longer have permission" in system[4]["message"]
    close = next(f for f in client.frames if isinstance(f, list) and f[3] == "phx_close")
    assert close[:2] == [reply[0], reply[0]]
    assert topic not in stack.realtime.joined_channels


# -- RLS on postgres_changes ----------------------------------------------------------------------


async def test_postgres_changes_respect_rls(stack: DevStack) -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    watchers: dict[str, list[dict[str, Any]]] = {"alice": [], "service": []}
    clients: list[AsyncClient] = []
    try:
        for name, token in (
            ("alice", stack.keys.user_token(alice)),
            ("service", stack.keys.service_role_key),
        ):
            client = await acreate_client(
                stack.url, stack.keys.anon_key, options=AsyncClientOptions(persist_session=False)
            )
            clients.append(client)
            await client.realtime.set_auth(token)
            states: list[Any] = []
            channel = client.channel(f"watch-{name}").on_postgres_changes(
                "*", schema="public", table="jobs", callback=watchers[name].append
            )
            system: list[Any] = []
            channel.on_system(system.append)
            await channel.subscribe(lambda s, _e, states=states: states.append(s))
            await eventually(lambda system=system: len(system) == 1)
        mine = await insert_job(stack, alice)
        theirs = await insert_job(stack, bob)
        await stack.pool.execute(
            "update public.jobs set progress = 5 where id = any($1::uuid[])", [mine, theirs]
        )
        await eventually(lambda: len(watchers["service"]) == 4)
        await eventually(lambda: len(watchers["alice"]) == 2)
        await asyncio.sleep(0.2)
        assert [p["data"]["record"]["id"] for p in watchers["alice"]] == [mine, mine]
        assert [p["data"]["type"] for p in watchers["alice"]] == ["INSERT", "UPDATE"]
        assert {p["data"]["record"]["id"] for p in watchers["service"]} == {mine, theirs}
    finally:
        for client in clients:
            await close_client(client)


# -- Auth stand-in, CORS --------------------------------------------------------------------------


async def test_auth_sign_ins_with_the_real_client(stack: DevStack) -> None:
    alice = stack.create_user("Alice@Example.com", "correct horse")
    client = await acreate_client(
        stack.url, stack.keys.anon_key, options=AsyncClientOptions(persist_session=False)
    )
    with pytest.raises(AuthApiError) as refused:
        await client.auth.sign_in_with_password({"email": "alice@example.com", "password": "wrong"})
    assert refused.value.code == "invalid_credentials" and refused.value.status == 400

    signed = await client.auth.sign_in_with_password(
        {"email": "alice@example.com", "password": "correct horse"}
    )
    assert signed.user.id == alice.id and signed.user.email == "alice@example.com"
    assert signed.session.token_type == "bearer" and signed.session.expires_in == 3600
    claims = stack.keys.verify(signed.session.access_token)
    assert claims["sub"] == alice.id and claims["role"] == "authenticated"
    assert claims["aud"] == "authenticated" and claims["is_anonymous"] is False
    assert claims["iss"] == f"{stack.url}/auth/v1"
    assert (await client.auth.get_user()).user.id == alice.id

    refreshed = await client.auth.refresh_session()
    assert refreshed.session.refresh_token != signed.session.refresh_token
    with pytest.raises(AuthApiError):  # refresh tokens rotate: the used one is gone
        await client.auth.refresh_session(signed.session.refresh_token)

    inserted = await client.table("jobs").insert({"prompt": "signed in"}).execute()
    assert inserted.data[0]["user_id"] == alice.id  # PostgREST stand-in takes the token

    await client.auth.sign_out()
    with pytest.raises(AuthApiError):
        await client.auth.get_user(refreshed.session.access_token)

    guest = await client.auth.sign_in_anonymously()
    assert guest.user.is_anonymous and stack.keys.verify(guest.session.access_token)["is_anonymous"]
    stack.auth.anonymous_sign_ins = False
    with pytest.raises(AuthApiError) as disabled:
        await client.auth.sign_in_anonymously()
    assert disabled.value.code == "anonymous_provider_disabled"


async def test_auth_needs_the_apikey_and_cors_is_answered(stack: DevStack) -> None:
    origin = {"Origin": "http://127.0.0.1:8000"}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{stack.url}/auth/v1/token?grant_type=password", json={}) as r:
            assert r.status == 401 and (await r.json())["message"] == "No API key found in request"
        preflight = {
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "apikey,authorization,content-type,x-client-info",
        }
        for path in (
            "/auth/v1/token?grant_type=password",
            "/rest/v1/jobs",
            "/rest/v1/rpc/cancel_job",
        ):
            async with http.options(stack.url + path, headers=preflight) as r:
                assert r.status == 200, path
                assert r.headers["Access-Control-Allow-Origin"] == "*"
                assert "POST" in r.headers["Access-Control-Allow-Methods"]
                assert (
                    r.headers["Access-Control-Allow-Headers"]
                    == preflight["Access-Control-Request-Headers"]
                )
        headers = {**origin, "apikey": stack.keys.anon_key}
        async with http.get(f"{stack.url}/rest/v1/jobs?select=id", headers=headers) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Content-Range" in r.headers["Access-Control-Expose-Headers"]
