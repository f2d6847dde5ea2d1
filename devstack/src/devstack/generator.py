"""Generator stand-in: a local HTTP server that answers like an image-generation endpoint.

It runs on its own port (like the real remote service) and speaks the contract's protocol:
``POST /generate`` with JSON ``{"job_id", "prompt", "model", "aspect_ratio", "user_id", "width",
"height"}`` and ``Authorization: Bearer <token>`` (401 without it). Every request is recorded per
job id in ``calls`` (and at ``GET /admin/generator/calls`` on the devstack's main port).

How it answers is chosen by a token in the prompt: ``[gen:NAME]`` or ``[gen:NAME:ARG:ARG…]``,
e.g. ``"a red fox [gen:cold404:2]"``. Without one, ``default_behaviour`` applies ("png";
``POST /admin/generator/default {"behaviour": "status:503"}`` changes it). Counts ("the first N
calls") are per job id, so a retried job sees the failure N times, then success. An unknown
behaviour is answered 400 ``stand-in: unknown behaviour``.

Images (seeded by the prompt: blurry colour fields, ~15 KB per megapixel as PNG):

| behaviour | answer |
| --- | --- |
| ``png`` (default), ``jpeg``, ``webp``, ``gif`` | 200 with the image, the requested width × height |
| ``tiny`` | 200 with a 64 × 64 PNG whatever the size asked (load tests, benchmarks) |
| ``noise[:BYTES]`` | 200 with a PNG of random noise of about BYTES (default 1 MiB; memory soaks) |
| ``base64`` | 200 JSON ``{"image_base64": "<png>"}`` |
| ``b64_json`` | 200 JSON ``{"b64_json": "<png>"}`` |
| ``datauri`` | 200 JSON ``{"b64_json": "data:image/png;base64,<png>"}`` |
| ``openai`` | 200 JSON ``{"data": [{"b64_json": "<png>"}]}`` (OpenAI Images shape) |
| ``image_url[:ASSET]`` | 200 JSON ``{"image_url": "<stand-in>/images/<id>.png"}``, serving ASSET |
| ``url[:ASSET]`` | the same with the key ``url`` |
| ``cloudinary_link[:URL]`` | 200 JSON ``{"cloudinary_link": URL}`` (default a res.cloudinary.com URL) |
| ``redirect303[:N[:S]]`` | Modal's long-request protocol: POST → 303 to ``/generate?__modal_function_call_id=fc-…``; each GET there waits S s (default 0) and answers 303 again, N times in all (default 2), then 200 PNG. A POST to the result URL → 400 ``modal-http: bad redirect method`` |

Failures:

| behaviour | answer |
| --- | --- |
| ``cold404[:N]`` | 404 ``modal-http: app for invoked web endpoint is stopped`` the first N calls (default 1), then PNG |
| ``stopped`` | that 404 on every call |
| ``status:CODE[:N]`` | HTTP CODE with a realistic body the first N calls, then PNG; without N, always. 400 JSON detail, 401 proxy-auth text, 404 ``modal-http: invalid function call``, 429 with ``Retry-After``, 500 ``modal-http: internal error…``, 502 HTML… |
| ``slow:S`` | waits S seconds, then PNG |
| ``hang`` | never answers (until the client leaves or the stand-in stops) |
| ``dribble[:S]`` | 200 ``image/png`` with Content-Length, a small valid PNG sent one byte every S s (default 1) |
| ``html_as_png`` | 200 ``image/png`` whose body is an HTML page |
| ``html`` | 200 ``text/html`` page |
| ``json_no_image`` | 200 JSON without any image field |
| ``bad_json`` | 200 ``application/json`` that does not parse |
| ``bad_base64`` | 200 JSON ``{"image_base64": "…"}`` that is not base64 |
| ``base64_not_image`` | 200 JSON ``{"image_base64": …}``: valid base64 of an HTML page |
| ``oversize[:BYTES]`` | 200 ``image/png``, BYTES long (default 25 MiB), with Content-Length |
| ``oversize_chunked[:BYTES]`` | the same, chunked, without Content-Length |
| ``oversize_base64[:BYTES]`` | 200 JSON ``image_base64`` of BYTES bytes |
| ``private_url`` | 200 JSON ``{"image_url": "https://10.0.0.5/x.png"}`` (never to be fetched, even with ALLOW_INSECURE_DOWNLOADS) |
| ``metadata_url`` | 200 JSON ``{"image_url": "http://169.254.169.254/latest/meta-data/"}`` |
| ``redirect_private`` | 200 JSON ``image_url`` on the stand-in that redirects to ``https://10.0.0.5/x.png`` |
| ``echo_auth`` | 400 whose body echoes the Authorization header (an endpoint leaking the token) |

ASSET (what ``/images/<id>`` serves, for ``image_url``/``url`` and ``asset_url()``): ``png``,
``jpeg``, ``webp``, ``gif``, ``html_as_png``, ``html``, ``oversize[:BYTES]``,
``oversize_chunked[:BYTES]``, ``dribble[:S]``, ``slow:S``, ``hang``, ``status:CODE[:N]`` (counted
per asset), ``redirect_to:URL`` (302 to URL), ``redirect:N`` (302 to itself N times, then PNG).
``/images/*`` needs no token (image hosts don't) and is recorded under the job that made it.

``latency`` (seconds, default 0; ``POST /admin/generator/latency {"seconds": 0.5}``), spread by
``latency_jitter`` (± seconds, uniform), is added to
every authorised ``POST /generate`` to simulate generation time in benchmarks.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import json
import random
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from PIL import Image

from devstack.serve import serve

STOPPED_BODY = "modal-http: app for invoked web endpoint is stopped"
PRIVATE_URL = "https://10.0.0.5/x.png"
METADATA_URL = "http://169.254.169.254/latest/meta-data/"
DEFAULT_OVERSIZE = 25 * 1024 * 1024
_TOKEN_RE = re.compile(r"\[gen:([^\]\s]+)\]")
_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif"}
_HTML = b"<!doctype html><html><head><title>Access denied</title></head><body>nope</body></html>"

# Answers only /generate gives (they concern the protocol, not the bytes).
_GENERATE_ONLY = frozenset(
    {
        "base64",
        "b64_json",
        "datauri",
        "openai",
        "image_url",
        "url",
        "cloudinary_link",
        "redirect303",
        "cold404",
        "stopped",
        "json_no_image",
        "bad_json",
        "bad_base64",
        "base64_not_image",
        "oversize_base64",
        "private_url",
        "metadata_url",
        "redirect_private",
        "echo_auth",
        "tiny",
        "noise",
    }
)
# Answers about the bytes themselves: valid for /generate and for /images assets.
_SHARED = frozenset(
    {
        *_FORMATS,
        "html_as_png",
        "html",
        "oversize",
        "oversize_chunked",
        "dribble",
        "slow",
        "hang",
        "status",
    }
)
_ASSET_ONLY = frozenset({"redirect_to", "redirect"})

# (content type, body, extra headers) per status for ``status:CODE``: what such answers look like.
_STATUS_ANSWERS: dict[int, tuple[str, str, dict[str, str]]] = {
    400: ("application/json", '{"detail": "prompt was rejected by the content filter"}', {}),
    401: ("text/plain", "modal-http: missing credentials for proxy authorization", {}),
    403: ("text/plain", "forbidden", {}),
    404: ("text/plain", "modal-http: invalid function call", {}),
    408: ("text/plain", "Request Timeout", {}),
    425: ("text/plain", "Too Early", {}),
    429: ("text/plain", "Too Many Requests", {"Retry-After": "1"}),
    500: ("text/plain", "modal-http: internal error: function was terminated by signal", {}),
    502: ("text/html", "<html><body><h1>502 Bad Gateway</h1></body></html>", {}),
    503: ("text/plain", "Service Unavailable", {}),
    504: ("text/html", "<html><body><h1>504 Gateway Time-out</h1></body></html>", {}),
}


class BehaviourError(ValueError):
    """A ``[gen:…]`` token the stand-in cannot follow."""


@dataclass(frozen=True)
class Behaviour:
    name: str
    args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Behaviour:
        name, _, rest = text.strip().partition(":")
        behaviour = cls(name, tuple(rest.split(":")) if rest else ())
        if name not in _GENERATE_ONLY | _SHARED | _ASSET_ONLY:
            raise BehaviourError(f"stand-in: unknown behaviour {text!r}")
        return behaviour

    @classmethod
    def from_prompt(cls, prompt: str, default: str) -> Behaviour:
        match = _TOKEN_RE.search(prompt)
        return cls.parse(match.group(1) if match else default)

    def number(self, index: int, default: float | None = None) -> float | None:
        if index >= len(self.args) or self.args[index] == "":
            return default
        try:
            return float(self.args[index])
        except ValueError:
            raise BehaviourError(
                f"stand-in: {self} needs a number, not {self.args[index]!r}"
            ) from None

    def whole(self, index: int, default: int | None = None) -> int | None:
        value = self.number(index, default)
        return None if value is None else int(value)

    def rest(self, index: int = 0) -> str:
        """The remaining arguments joined back (for URLs and nested behaviours, which hold ':')."""
        return ":".join(self.args[index:])

    def __str__(self) -> str:
        return ":".join((self.name, *self.args))


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


@dataclass
class _Asset:
    behaviour: Behaviour
    job_id: str
    seed: str
    width: int
    height: int
    fetches: int = 0


@dataclass
class _FunctionCall:
    """A Modal-style long request: its result URL is polled with GET until it is done."""

    job_id: str
    seed: str
    width: int
    height: int
    redirects_left: int
    leg_seconds: float


@functools.lru_cache(maxsize=64)
def render_image(seed: str, width: int, height: int, fmt: str = "png") -> bytes:
    """A small image that looks like something: smooth colour fields seeded by ``seed``.

    Posterised to 64 colours at a quarter of the size then scaled up, so a 1 MP PNG is ~15 KB
    and takes ~0.1 s (cached: benchmarks ask for the same few images over and over).
    """
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    grid = Image.new("RGB", (6, 6))
    grid.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(36)])
    quarter = grid.resize((max(1, width // 4), max(1, height // 4)), Image.Resampling.BICUBIC)
    image = quarter.quantize(64, dither=Image.Dither.NONE).resize(
        (width, height), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    if fmt in ("png", "gif"):
        image.save(buffer, fmt.upper())
    else:
        image.convert("RGB").save(buffer, fmt.upper(), quality=80)
    return buffer.getvalue()


class GeneratorStandIn:
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
        self._assets: dict[str, _Asset] = {}
        self._function_calls: dict[str, _FunctionCall] = {}
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
                "syntax": "put [gen:NAME:ARG…] in the prompt; see devstack/generator.py",
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
            return _text(400, str(exc))
        self._record(request, job_id, body, str(behaviour), authorized)

        if "__modal_function_call_id" in request.query:
            return _text(400, "modal-http: bad redirect method")
        if not authorized:
            return _text(401, "missing or invalid bearer token")
        if not isinstance(body, dict):
            return _text(400, "request body must be a JSON object")
        delay = self.latency + random.uniform(-self.latency_jitter, self.latency_jitter)
        if delay > 0 and not await self._wait(request, delay):
            return _text(503, "stand-in stopping")

        width, height = _dimension(fields.get("width")), _dimension(fields.get("height"))
        seed = f"{prompt}|{fields.get('model')}"
        count = len(self.calls_for(job_id, "POST"))
        try:
            return await self._answer(request, behaviour, job_id, seed, width, height, count)
        except BehaviourError as exc:
            return _text(400, str(exc))

    async def _answer(
        self,
        request: web.Request,
        behaviour: Behaviour,
        job_id: str,
        seed: str,
        width: int,
        height: int,
        count: int,
    ) -> web.StreamResponse:
        """The answer to the ``count``-th POST of a job."""
        name = behaviour.name

        async def png_b64() -> str:
            return base64.b64encode(await _render(seed, width, height)).decode()

        if name == "tiny":
            # Load tests and benchmarks: the claim path is under test, not PNG encoding.
            return _image(render_image("tiny", 64, 64), "png")  # one cached image for all
        if name == "noise":
            size = int(behaviour.args[0]) if behaviour.args else 1024 * 1024
            return _image(await asyncio.to_thread(noise_png, size), "png")
        if name == "base64":
            return web.json_response({"image_base64": await png_b64()})
        if name == "b64_json":
            return web.json_response({"b64_json": await png_b64()})
        if name == "datauri":
            return web.json_response({"b64_json": "data:image/png;base64," + await png_b64()})
        if name == "openai":
            return web.json_response(
                {"created": int(time.time()), "data": [{"b64_json": await png_b64()}]}
            )
        if name in ("image_url", "url"):
            asset = Behaviour.parse(behaviour.rest() or "png")
            return web.json_response({name: self._new_asset(asset, job_id, seed, width, height)})
        if name == "cloudinary_link":
            link = behaviour.rest() or (
                f"https://res.cloudinary.com/demo/image/upload/v1/generations/{job_id}.png"
            )
            return web.json_response({"cloudinary_link": link})
        if name == "redirect303":
            call_id = "fc-" + secrets.token_hex(12)
            self._function_calls[call_id] = _FunctionCall(
                job_id,
                seed,
                width,
                height,
                redirects_left=(behaviour.whole(0, 2) or 1) - 1,
                leg_seconds=behaviour.number(1, 0.0) or 0.0,
            )
            return _see_other(f"{self.url}?__modal_function_call_id={call_id}")
        if name == "cold404":
            if count <= (behaviour.whole(0, 1) or 0):
                return _text(404, STOPPED_BODY)
            return _image(await _render(seed, width, height), "png")
        if name == "stopped":
            return _text(404, STOPPED_BODY)
        if name == "json_no_image":
            return web.json_response({"status": "succeeded", "seed": 42, "images": []})
        if name == "bad_json":
            return web.Response(body=b'{"image_base64": "iVBOR', content_type="application/json")
        if name == "bad_base64":
            return web.json_response({"image_base64": "iVBORw0K*not&base64!"})
        if name == "base64_not_image":
            return web.json_response({"image_base64": base64.b64encode(_HTML).decode()})
        if name == "oversize_base64":
            size = behaviour.whole(0, DEFAULT_OVERSIZE) or DEFAULT_OVERSIZE
            blob = _oversize_bytes(size)
            return web.json_response({"image_base64": base64.b64encode(blob).decode()})
        if name == "private_url":
            return web.json_response({"image_url": PRIVATE_URL})
        if name == "metadata_url":
            return web.json_response({"image_url": METADATA_URL})
        if name == "redirect_private":
            asset = Behaviour("redirect_to", (PRIVATE_URL,))
            return web.json_response(
                {"image_url": self._new_asset(asset, job_id, seed, width, height)}
            )
        if name == "echo_auth":
            echoed = request.headers.get("Authorization", "")
            return web.json_response({"error": f"bad request, you sent: {echoed}"}, status=400)
        if name in _ASSET_ONLY:
            raise BehaviourError(f"stand-in: {name!r} is for image URLs, not for /generate")
        return await self._serve(request, behaviour, seed, width, height, count)

    async def _get_result(self, request: web.Request) -> web.StreamResponse:
        """The result URL of a Modal-style long request: 303 to itself until done, then PNG."""
        call_id = request.query.get("__modal_function_call_id", "")
        call = self._function_calls.get(call_id)
        self._record(request, call.job_id if call else "-", None, "redirect303", True)
        if call is None:
            return _text(404, "modal-http: invalid function call")
        if call.leg_seconds and not await self._wait(request, call.leg_seconds):
            return _text(503, "stand-in stopping")
        if call.redirects_left > 0:
            call.redirects_left -= 1
            return _see_other(f"{self.url}?__modal_function_call_id={call_id}")
        del self._function_calls[call_id]
        return _image(await _render(call.seed, call.width, call.height), "png")

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
            return _text(404, "no such image")
        asset.fetches += 1
        behaviour = asset.behaviour
        if behaviour.name == "redirect_to":
            return _found(behaviour.rest())
        if behaviour.name == "redirect":
            if asset.fetches <= (behaviour.whole(0, 1) or 0):
                return _found(str(request.url))
            return _image(await _render(asset.seed, asset.width, asset.height), "png")
        try:
            return await self._serve(
                request, behaviour, asset.seed, asset.width, asset.height, asset.fetches
            )
        except BehaviourError as exc:
            return _text(400, str(exc))

    async def _serve(
        self,
        request: web.Request,
        behaviour: Behaviour,
        seed: str,
        width: int,
        height: int,
        count: int,
    ) -> web.StreamResponse:
        """Answers about the bytes, shared by /generate and /images."""
        name = behaviour.name
        if name in _FORMATS:
            return _image(await _render(seed, width, height, name), name)
        if name == "status":
            code = behaviour.whole(0)
            if code is None or not 100 <= code <= 599:
                raise BehaviourError(f"stand-in: {behaviour} needs an HTTP status")
            times = behaviour.whole(1)
            if times is None or count <= times:
                content_type, text, headers = _STATUS_ANSWERS.get(
                    code, ("text/plain", f"stand-in: HTTP {code}", {})
                )
                return web.Response(
                    status=code, text=text, content_type=content_type, headers=headers
                )
            return _image(await _render(seed, width, height), "png")
        if name == "slow":
            if not await self._wait(request, behaviour.number(0, 1.0) or 0.0):
                return _text(503, "stand-in stopping")
            return _image(await _render(seed, width, height), "png")
        if name == "hang":
            await self._wait(request, float("inf"))
            return _text(503, "stand-in stopping")
        if name == "dribble":
            return await self._dribble(request, behaviour.number(0, 1.0) or 0.0, seed)
        if name == "html_as_png":
            return web.Response(body=_HTML, content_type="image/png")
        if name == "html":
            return web.Response(body=_HTML, content_type="text/html")
        if name in ("oversize", "oversize_chunked"):
            size = behaviour.whole(0, DEFAULT_OVERSIZE) or DEFAULT_OVERSIZE
            return await self._stream_oversize(request, size, chunked=name == "oversize_chunked")
        raise BehaviourError(f"stand-in: {name!r} is not valid here")

    async def _dribble(
        self, request: web.Request, interval: float, seed: str
    ) -> web.StreamResponse:
        data = render_image(seed, 8, 8)
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(data)
        await response.prepare(request)
        try:
            for i in range(len(data)):
                await response.write(data[i : i + 1])
                if not await self._wait(request, interval):
                    return response
            await response.write_eof()
        except ConnectionError:
            pass  # the client gave up, as it should
        return response

    async def _stream_oversize(
        self, request: web.Request, size: int, *, chunked: bool
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        if chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = size
        await response.prepare(request)
        chunk = b"\0" * 65536
        sent = 0
        try:
            head = _oversize_bytes(min(size, 1024))
            await response.write(head)
            sent = len(head)
            while sent < size and not self._stopping.is_set():
                piece = chunk[: size - sent]
                await response.write(piece)
                sent += len(piece)
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading at its cap
        return response

    def _new_asset(
        self, behaviour: Behaviour, job_id: str, seed: str, width: int, height: int
    ) -> str:
        if behaviour.name in _GENERATE_ONLY:
            raise BehaviourError(f"stand-in: {behaviour.name!r} cannot be served as an image URL")
        asset_id = secrets.token_hex(8)
        self._assets[asset_id] = _Asset(behaviour, job_id, seed, width, height)
        extension = behaviour.name if behaviour.name in _FORMATS else "png"
        return f"{self.base_url}/images/{asset_id}.{extension}"

    async def _wait(self, request: web.Request, seconds: float) -> bool:
        """Sleep ``seconds``; False early if the client left or the stand-in is stopping."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            transport = request.transport
            if self._stopping.is_set() or transport is None or transport.is_closing():
                return False
            await asyncio.sleep(min(0.05, left))
        return True


async def _render(seed: str, width: int, height: int, fmt: str = "png") -> bytes:
    # ~0.1 s per megapixel: off the event loop, which the whole devstack (and often the worker
    # under test) shares.
    return await asyncio.to_thread(render_image, seed, width, height, fmt)


@functools.lru_cache(maxsize=8)
def noise_png(size: int) -> bytes:
    """A real PNG of about ``size`` bytes: noise does not compress, so 3 bytes per pixel."""
    side = max(8, int((size / 3) ** 0.5))
    image = Image.frombytes("RGB", (side, side), random.Random(size).randbytes(side * side * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _dimension(value: Any) -> int:
    return min(max(value, 1), 4096) if isinstance(value, int) else 1024


def _oversize_bytes(size: int) -> bytes:
    """PNG magic followed by filler: looks like an image until its size is noticed."""
    header = render_image("oversize", 8, 8)
    return (header + b"\0" * max(0, size - len(header)))[:size]


def _image(data: bytes, fmt: str) -> web.Response:
    return web.Response(body=data, content_type=_FORMATS[fmt])


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


def _found(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


def _see_other(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})


async def _json_or_none(request: web.Request) -> Any:
    try:
        return json.loads(await request.read() or b"null")
    except ValueError:
        return None
