"""What the hosted-provider stand-ins share: the base server, the call log, the output files.

A subclass adds its routes (``routes``) and its auth check (``authorized``); the base records
every call (``calls``, ``calls_for``, ``creations_for``), serves the generated files, keeps the
injected and default faults (:mod:`devstack.providers.faults`) and the admin routes
``/admin/<provider>``, ``…/calls``, ``…/inject``, ``…/default``, ``…/reset``.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from dataclasses import asdict, dataclass, field, replace
from email.utils import formatdate
from typing import Any

from aiohttp import web

from devstack.generator import render_image
from devstack.providers.faults import TOKEN_RE, FaultError, Faults
from devstack.serve import serve, wait_while_connected

IMAGE_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


def prompt_seed(prompt: str) -> str:
    """The image seed: the prompt without its fault tokens (a retried job draws the same image)."""
    return TOKEN_RE.sub("", prompt).strip()


def iso(epoch: float | None) -> str | None:
    """RFC 3339 UTC with microseconds and a Z, as Replicate writes its timestamps."""
    if epoch is None:
        return None
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{seconds}.{int((epoch % 1) * 1_000_000):06d}Z"


def retry_after_headers(seconds: float, style: str) -> dict[str, str]:
    """``Retry-After`` as delta-seconds or as an HTTP date (RFC 9110 §10.2.3); none for "body"."""
    if style == "body":
        return {}
    if style == "date":
        # Whole seconds, rounded up: a date that names the moment the limit resets, never one
        # that is up to a second early (the wait then rounds to as little as nothing).
        return {"Retry-After": formatdate(math.ceil(time.time() + seconds), usegmt=True)}
    return {"Retry-After": str(max(0, round(seconds)))}


@dataclass
class CallRecord:
    """One request a stand-in received, as tests read them back (``calls``, ``calls_for``)."""

    kind: str  # create | poll | result | cancel | file | other
    method: str
    path: str
    prompt: str | None  # the generation's prompt (creations, and calls on a known handle)
    handle: str | None  # prediction / request id
    authorized: bool
    body: Any  # the JSON body received (None for GETs)
    headers: dict[str, str]  # Authorization redacted
    time: float = field(default_factory=time.time)
    status: int | None = None  # the status answered (None while still answering)
    created: bool = False  # this call started a (billable) generation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_RECORD = web.RequestKey("provider_record", CallRecord)


@dataclass
class StoredFile:
    seed: str
    width: int
    height: int
    fmt: str
    prompt: str
    fetches: int = 0


class ProviderStandIn:
    """Base of the three stand-ins: lifecycle, call log, fault bookkeeping, files, admin routes."""

    name = "provider"

    def __init__(self, token: str) -> None:
        self.token = token
        self.base_url = ""  # set by start()
        self.default_faults = ""
        self.calls: list[CallRecord] = []
        self._injected: list[list[Any]] = []  # [fault text, remaining, phase]
        self._attempts: dict[str, int] = {}
        self._files: dict[str, StoredFile] = {}
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # ----------------------------------------------------------------- lifecycle

    def routes(self, app: web.Application) -> None:
        raise NotImplementedError

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application(middlewares=[self._record_status])
        app.router.add_get("/files/{file_id}/{name}", self._get_file)
        self.routes(app)
        self._runner, self.base_url = await serve(app, host, port)

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----------------------------------------------------------------- for tests

    @property
    def creations(self) -> int:
        """Generations started (billable), all prompts together."""
        return sum(1 for c in self.calls if c.created)

    def creations_for(self, prompt: str) -> int:
        return sum(1 for c in self.calls if c.created and c.prompt == prompt)

    def attempts_for(self, prompt: str) -> int:
        """Creation requests for ``prompt``, refused ones (429, 5xx, 4xx) included."""
        return sum(1 for c in self.calls if c.kind == "create" and c.prompt == prompt)

    def calls_for(self, prompt: str, kind: str | None = None) -> list[CallRecord]:
        return [c for c in self.calls if c.prompt == prompt and (kind is None or c.kind == kind)]

    def cancels_for(self, prompt: str) -> list[CallRecord]:
        return self.calls_for(prompt, "cancel")

    def inject(self, fault: str, times: int = 1) -> None:
        """The next ``times`` calls (creations; polls for ``poll_error``) get ``fault``."""
        Faults().merged(fault, bare=True)  # refuse unknown faults now, not at the next call
        phase = "poll" if "poll_error" in fault else "create"
        self._injected.append([fault, times, phase])

    def reset(self) -> None:
        self.calls.clear()
        self._injected.clear()
        self._attempts.clear()
        self._files.clear()
        self.default_faults = ""

    # ----------------------------------------------------------------- for the subclasses

    def record(
        self, request: web.Request, kind: str, body: Any, prompt: str | None, handle: str | None
    ) -> CallRecord:
        headers = dict(request.headers)
        for name in ("Authorization", "authorization"):
            if name in headers:
                headers[name] = headers[name].split(" ", 1)[0] + " [redacted]"
        record = CallRecord(
            kind,
            request.method,
            request.path_qs,
            prompt,
            handle,
            self.authorized(request),
            body,
            headers,
        )
        self.calls.append(record)
        request[_RECORD] = record
        return record

    def authorized(self, request: web.Request) -> bool:
        raise NotImplementedError

    def creation_faults(self, prompt: str) -> tuple[Faults, int]:
        """The faults of one creation attempt of ``prompt`` and its 1-based attempt number."""
        faults = Faults().merged(self.default_faults, bare=True)
        for entry in self._injected:
            if entry[2] == "create" and entry[1] > 0:
                entry[1] -= 1
                # An injected fault is limited by its own count, so it applies to this call
                # whatever the prompt's attempt number.
                injected = Faults().merged(entry[0], bare=True)
                if injected.throttle is not None:
                    injected = replace(injected, throttle_times=0)
                if injected.create_error is not None:
                    injected = replace(injected, create_error_times=0)
                faults = faults.overlay(injected)
        self._injected = [e for e in self._injected if e[1] > 0]
        faults = faults.merged(prompt)
        self._attempts[prompt] = self._attempts.get(prompt, 0) + 1
        return faults, self._attempts[prompt]

    def poll_error_for(self, faults: Faults, poll: int) -> int | None:
        """The HTTP error poll number ``poll`` of a handle gets: its own fault, or an injected one."""
        if faults.poll_error is not None and (
            faults.poll_error_times == 0 or poll <= faults.poll_error_times
        ):
            return faults.poll_error
        for entry in self._injected:
            if entry[2] == "poll" and entry[1] > 0:
                entry[1] -= 1
                self._injected = [e for e in self._injected if e[1] > 0]
                return Faults().merged(entry[0], bare=True).poll_error
        return None

    def add_file(self, prompt: str, seed: str, width: int, height: int, fmt: str, name: str) -> str:
        """A URL on this stand-in serving a real image (like replicate.delivery / fal.media)."""
        file_id = secrets.token_hex(10)
        self._files[file_id] = StoredFile(seed, width, height, fmt, prompt)
        return f"{self.base_url}/files/{file_id}/{name}"

    async def wait(self, request: web.Request, seconds: float) -> bool:
        return await wait_while_connected(request, seconds, self._stopping)

    # ----------------------------------------------------------------- HTTP

    @web.middleware
    async def _record_status(self, request: web.Request, handler: Any) -> web.StreamResponse:
        response = await handler(request)
        record = request.get(_RECORD)
        if record is not None and record.status is None:
            record.status = response.status
        return response

    async def _get_file(self, request: web.Request) -> web.StreamResponse:
        # Output files need no token: replicate.delivery and fal.media serve them to anyone
        # holding the URL (Replicate's API reference nevertheless suggests sending the token).
        stored = self._files.get(request.match_info["file_id"])
        self.record(request, "file", None, stored.prompt if stored else None, None)
        if stored is None:
            return web.Response(status=404, text="Not Found")
        stored.fetches += 1
        data = await asyncio.to_thread(
            render_image, stored.seed, stored.width, stored.height, stored.fmt
        )
        return web.Response(body=data, content_type=IMAGE_TYPES[stored.fmt])

    def admin_routes(self) -> list[web.RouteDef]:
        base = f"/admin/{self.name}"
        return [
            web.get(base, self._admin_info),
            web.get(f"{base}/calls", self._admin_calls),
            web.post(f"{base}/inject", self._admin_inject),
            web.post(f"{base}/default", self._admin_default),
            web.post(f"{base}/reset", self._admin_reset),
        ]

    async def _admin_info(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "url": self.base_url,
                "default_faults": self.default_faults,
                "injected": [{"fault": f, "times": n} for f, n, _ in self._injected],
                "creations": self.creations,
                "syntax": "put [gen:NAME:ARG…] in the prompt; see devstack/providers/faults.py",
            }
        )

    async def _admin_calls(self, request: web.Request) -> web.Response:
        prompt = request.query.get("prompt")
        selected = self.calls if prompt is None else [c for c in self.calls if c.prompt == prompt]
        return web.json_response({"calls": [c.to_dict() for c in selected]})

    async def _admin_inject(self, request: web.Request) -> web.Response:
        payload = await request.json()
        fault, times = payload.get("fault"), payload.get("times", 1)
        if not isinstance(fault, str) or not isinstance(times, int) or times < 1:
            return web.json_response({"error": 'expected {"fault": "...", "times": N}'}, status=400)
        try:
            self.inject(fault, times)
        except FaultError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"injected": fault, "times": times})

    async def _admin_default(self, request: web.Request) -> web.Response:
        payload = await request.json()
        faults = payload.get("faults")
        if not isinstance(faults, str):
            return web.json_response({"error": 'expected {"faults": "..."}'}, status=400)
        try:
            Faults().merged(faults, bare=True)
        except FaultError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self.default_faults = faults
        return web.json_response({"default_faults": faults})

    async def _admin_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})
