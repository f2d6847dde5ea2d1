"""What the generator stand-in answers for each behaviour, on ``/generate`` and on ``/images``.

Every answer imitates one a real endpoint gives (Modal's cold starts and 303 polling, OpenAI's
JSON, proxies' HTML error pages, oversize and never-ending bodies): the worker's handling of each
is what the tests are about.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from dataclasses import dataclass

from aiohttp import web

from devstack.generator.behaviours import ASSET_ONLY, GENERATE_ONLY, Behaviour, BehaviourError
from devstack.generator.images import FORMATS, noise_png, oversize_bytes, render, render_image
from devstack.serve import wait_while_connected

STOPPED_BODY = "modal-http: app for invoked web endpoint is stopped"
PRIVATE_URL = "https://10.0.0.5/x.png"
METADATA_URL = "http://169.254.169.254/latest/meta-data/"
DEFAULT_OVERSIZE = 25 * 1024 * 1024
_HTML = b"<!doctype html><html><head><title>Access denied</title></head><body>nope</body></html>"

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


@dataclass
class Asset:
    behaviour: Behaviour
    job_id: str
    seed: str
    width: int
    height: int
    fetches: int = 0


@dataclass
class FunctionCall:
    """A Modal-style long request: its result URL is polled with GET until it is done."""

    job_id: str
    seed: str
    width: int
    height: int
    redirects_left: int
    leg_seconds: float
    done: bool = False  # the result was produced: the result URL answers it again at once


class Answers:
    """The behaviours' answers, mixed into :class:`~devstack.generator.GeneratorStandIn`."""

    url: str
    base_url: str
    _assets: dict[str, Asset]
    _function_calls: dict[str, FunctionCall]
    _stopping: asyncio.Event

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
            return base64.b64encode(await render(seed, width, height)).decode()

        if name == "tiny":
            # Load tests and benchmarks: the claim path is under test, not PNG encoding.
            return image_response(render_image("tiny", 64, 64), "png")  # one cached image for all
        if name == "noise":
            size = int(behaviour.args[0]) if behaviour.args else 1024 * 1024
            return image_response(await asyncio.to_thread(noise_png, size), "png")
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
            self._function_calls[call_id] = FunctionCall(
                job_id,
                seed,
                width,
                height,
                redirects_left=(behaviour.whole(0, 2) or 1) - 1,
                leg_seconds=behaviour.number(1, 0.0) or 0.0,
            )
            return see_other_response(f"{self.url}?__modal_function_call_id={call_id}")
        if name == "cold404":
            if count <= (behaviour.whole(0, 1) or 0):
                return text_response(404, STOPPED_BODY)
            return image_response(await render(seed, width, height), "png")
        if name == "stopped":
            return text_response(404, STOPPED_BODY)
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
            blob = oversize_bytes(size)
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
        if name in ASSET_ONLY:
            raise BehaviourError(f"stand-in: {name!r} is for image URLs, not for /generate")
        return await self._serve(request, behaviour, seed, width, height, count)

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
        if name in FORMATS:
            return image_response(await render(seed, width, height, name), name)
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
            return image_response(await render(seed, width, height), "png")
        if name == "slow":
            if not await self._wait(request, behaviour.number(0, 1.0) or 0.0):
                return text_response(503, "stand-in stopping")
            return image_response(await render(seed, width, height), "png")
        if name == "hang":
            await self._wait(request, float("inf"))
            return text_response(503, "stand-in stopping")
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
            head = oversize_bytes(min(size, 1024))
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
        if behaviour.name in GENERATE_ONLY:
            raise BehaviourError(f"stand-in: {behaviour.name!r} cannot be served as an image URL")
        asset_id = secrets.token_hex(8)
        self._assets[asset_id] = Asset(behaviour, job_id, seed, width, height)
        extension = behaviour.name if behaviour.name in FORMATS else "png"
        return f"{self.base_url}/images/{asset_id}.{extension}"

    async def _wait(self, request: web.Request, seconds: float) -> bool:
        return await wait_while_connected(request, seconds, self._stopping)


def image_response(data: bytes, fmt: str) -> web.Response:
    return web.Response(body=data, content_type=FORMATS[fmt])


def text_response(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain")


def found_response(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


def see_other_response(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location})
