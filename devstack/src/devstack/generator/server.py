"""The generator stand-in's HTTP server: the endpoint, the image URLs, the record of every call.

It runs on its own port, like the real remote service, and keeps what it was asked per job id
so that tests can check the calls a worker made (``calls_for``) as well as the outcome.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from devstack.generator.answers import (
    Answers,
    Asset,
    FunctionCall,
    found_response,
    image_response,
    see_other_response,
    text_response,
)
from devstack.generator.behaviours import Behaviour, BehaviourError
from devstack.generator.images import render
from devstack.serve import serve


@dataclass
class CallRecord:
    job_id: str
    method: str
    path: str
    headers: dict[str, str]  # Authorization redacted
    authorized: bool  # the right bearer token was sent
    body: Any  # the JSON body received (None for GETs or unparsable bodies)
    behaviour: str
    time: float = field(default_factory=time.time)  # epoch seconds
    status: int | None = None  # the status answered (None while still answering)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_RECORD = web.RequestKey("record", CallRecord)


class GeneratorStandIn(Answers):
    def __init__(self, token: str | None = None) -> None:
        self.token = token or "gen-" + secrets.token_urlsafe(18)
        self.url = ""  # GENERATOR_URL, set by start()
        self.base_url = ""
        self.default_behaviour = "png"
        self.latency = 0.0
        # Real generation times vary; a spread (± seconds, uniform) keeps a benchmark's jobs from
        # marching in lockstep, which no production load does.
        self.latency_jitter = 0.0
        self.calls: dict[str, list[CallRecord]] = {}
        self._assets: dict[str, Asset] = {}
        self._function_calls: dict[str, FunctionCall] = {}
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- lifecycle

    async def start(self, host: str, port: int = 0) -> None:
        app = web.Application(middlewares=[self._record_status])
        app.router.add_post("/generate", self._post_generate)
        app.router.add_get("/generate", self._get_result)
        app.router.add_get("/images/{asset}", self._get_asset)
        self._runner, self.base_url = await serve(app, host, port)
        self.url = f"{self.base_url}/generate"

    async def stop(self) -> None:
        self._stopping.set()  # releases hang/dribble/slow handlers so shutdown is quick
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----------------------------------------------------------------- helpers for tests

    def calls_for(self, job_id: str, method: str | None = None) -> list[CallRecord]:
        return [c for c in self.calls.get(job_id, []) if method is None or c.method == method]

    def asset_url(
        self, behaviour: str = "png", *, job_id: str = "-", width: int = 64, height: int = 64
    ) -> str:
        """A URL on this stand-in serving ``behaviour`` (an ASSET), e.g. for downloader tests."""
        return self._new_asset(Behaviour.parse(behaviour), job_id, job_id, width, height)

    def reset(self) -> None:
        self.calls.clear()
        self._assets.clear()
        self._function_calls.clear()

    # ----------------------------------------------------------------- admin (devstack port)

    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/generator", self._admin_info),
            web.get("/admin/generator/calls", self._admin_calls),
            web.post("/admin/generator/default", self._admin_default),
            web.post("/admin/generator/latency", self._admin_latency),
            web.post("/admin/generator/reset", self._admin_reset),
        ]

    async def _admin_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "url": self.url,
                "default_behaviour": self.default_behaviour,
                "latency": self.latency,
                "jobs": len(self.calls),
                "syntax": "put [gen:NAME:ARG…] in the prompt; see devstack/src/devstack/generator/__init__.py",
            }
        )

    async def _admin_calls(self, request: web.Request) -> web.Response:
        job_id = request.query.get("job_id")
        selected = {job_id: self.calls.get(job_id, [])} if job_id else self.calls
        return web.json_response(
            {"calls": {job: [c.to_dict() for c in records] for job, records in selected.items()}}
        )

    async def _admin_default(self, request: web.Request) -> web.Response:
        payload = await _json_or_none(request)
        text = payload.get("behaviour") if isinstance(payload, dict) else None
        if not isinstance(text, str):
            return web.json_response({"error": 'expected {"behaviour": "..."}'}, status=400)
        try:
            Behaviour.parse(text)
        except BehaviourError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.default_behaviour = text
        return web.json_response({"default_behaviour": text})

    async def _admin_latency(self, request: web.Request) -> web.Response:
        payload = await _json_or_none(request)
        seconds = payload.get("seconds") if isinstance(payload, dict) else None
        if not isinstance(seconds, int | float) or seconds < 0:
            return web.json_response({"error": 'expected {"seconds": >= 0}'}, status=400)
        self.latency = float(seconds)
        return web.json_response({"latency": self.latency})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    # ----------------------------------------------------------------- the endpoint

    @web.middleware
    async def _record_status(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        record: CallRecord | None = request.get(_RECORD)
        if record is not None and record.status is None:
            record.status = response.status
        return response

    def _record(
        self, request: web.Request, job_id: str, body: Any, behaviour: str, authorized: bool
    ) -> CallRecord:
        headers = dict(request.headers)
        if "Authorization" in headers:
            headers["Authorization"] = "Bearer [redacted]"
        record = CallRecord(
            job_id, request.method, request.path_qs, headers, authorized, body, behaviour
        )
        self.calls.setdefault(job_id, []).append(record)
        request[_RECORD] = record
        return record

    async def _post_generate(self, request: web.Request) -> web.StreamResponse:
        body = await _json_or_none(request)
        fields = body if isinstance(body, dict) else {}
        job_id = str(fields.get("job_id") or "-")
        prompt = str(fields.get("prompt") or "")
        authorized = request.headers.get("Authorization") == f"Bearer {self.token}"
        try:
            behaviour = Behaviour.from_prompt(prompt, self.default_behaviour)
        except BehaviourError as exc:
            self._record(request, job_id, body, "?", authorized)
            return text_response(400, str(exc))
        self._record(request, job_id, body, str(behaviour), authorized)

        if "__modal_function_call_id" in request.query:
            return text_response(400, "modal-http: bad redirect method")
        if not authorized:
            return text_response(401, "missing or invalid bearer token")
        if not isinstance(body, dict):
            return text_response(400, "request body must be a JSON object")
        delay = self.latency + random.uniform(-self.latency_jitter, self.latency_jitter)
        if delay > 0 and not await self._wait(request, delay):
            return text_response(503, "stand-in stopping")

        width, height = _dimension(fields.get("width")), _dimension(fields.get("height"))
        seed = f"{prompt}|{fields.get('model')}"
        count = len(self.calls_for(job_id, "POST"))
        try:
            return await self._answer(request, behaviour, job_id, seed, width, height, count)
        except BehaviourError as exc:
            return text_response(400, str(exc))

    async def _get_result(self, request: web.Request) -> web.StreamResponse:
        """The result URL of a Modal-style long request: 303 to itself until done, then PNG.

        Once done it stays done: "The result URL can be reloaded without triggering a new
        request" (modal.com/docs/guide/webhook-timeouts), so a GET after the result was
        delivered (a client that died before using it) gets it again, at once. An unknown id
        is Modal's 404 ``invalid function call``."""
        call_id = request.query.get("__modal_function_call_id", "")
        call = self._function_calls.get(call_id)
        self._record(request, call.job_id if call else "-", None, "redirect303", True)
        if call is None:
            return text_response(404, "modal-http: invalid function call")
        if not call.done:
            if call.leg_seconds and not await self._wait(request, call.leg_seconds):
                return text_response(503, "stand-in stopping")
            if call.redirects_left > 0:
                call.redirects_left -= 1
                return see_other_response(f"{self.url}?__modal_function_call_id={call_id}")
            call.done = True
        return image_response(await render(call.seed, call.width, call.height), "png")

    async def _get_asset(self, request: web.Request) -> web.StreamResponse:
        asset_id = request.match_info["asset"].split(".", 1)[0]
        asset = self._assets.get(asset_id)
        self._record(
            request,
            asset.job_id if asset else "-",
            None,
            str(asset.behaviour) if asset else "?",
            True,
        )
        if asset is None:
            return text_response(404, "no such image")
        asset.fetches += 1
        behaviour = asset.behaviour
        if behaviour.name == "redirect_to":
            return found_response(behaviour.rest())
        if behaviour.name == "redirect":
            if asset.fetches <= (behaviour.whole(0, 1) or 0):
                return found_response(str(request.url))
            return image_response(await render(asset.seed, asset.width, asset.height), "png")
        try:
            return await self._serve(
                request, behaviour, asset.seed, asset.width, asset.height, asset.fetches
            )
        except BehaviourError as exc:
            return text_response(400, str(exc))


def _dimension(value: Any) -> int:
    return min(max(value, 1), 4096) if isinstance(value, int) else 1024


async def _json_or_none(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except ValueError:
        return None
