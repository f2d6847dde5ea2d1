"""The generator stand-in on its own, seen through raw HTTP (no worker code involved)."""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image

from devstack.generator import GeneratorStandIn, render_image


@pytest_asyncio.fixture(scope="module")
async def standin() -> AsyncIterator[GeneratorStandIn]:
    server = GeneratorStandIn()
    await server.start("127.0.0.1")
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        yield client


@pytest_asyncio.fixture(scope="module")
async def admin(standin: GeneratorStandIn) -> AsyncIterator[str]:
    """The admin routes mounted on another server, as the devstack mounts them on its port."""
    app = web.Application()
    app.add_routes(standin.admin_routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    await runner.cleanup()


def body(behaviour: str | None = None, **fields: Any) -> dict[str, Any]:
    prompt = f"a fox [gen:{behaviour}]" if behaviour else "a fox"
    values: dict[str, Any] = {
        "job_id": str(uuid.uuid4()),
        "prompt": prompt,
        "model": "m",
        "aspect_ratio": "4:3",
        "user_id": None,
        "width": 96,
        "height": 72,
    }
    values.update(fields)
    return values


async def post(
    http: httpx.AsyncClient,
    standin: GeneratorStandIn,
    payload: dict[str, Any],
    *,
    token: str | None = "default",
    **kwargs: Any,
) -> httpx.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {standin.token if token == 'default' else token}"
    return await http.post(standin.url, json=payload, headers=headers, **kwargs)


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


# ------------------------------------------------------------------ protocol basics


async def test_requires_the_bearer_token(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    payload = body()
    assert (await post(http, standin, payload, token=None)).status_code == 401
    assert (await post(http, standin, payload, token="wrong")).status_code == 401
    assert (await post(http, standin, payload)).status_code == 200
    records = standin.calls_for(payload["job_id"])
    assert [(r.authorized, r.status) for r in records] == [(False, 401), (False, 401), (True, 200)]
    assert records[2].headers["Authorization"] == "Bearer [redacted]"
    assert records[2].body == payload


async def test_png_of_the_requested_size_seeded_by_the_prompt(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    first = await post(http, standin, body(width=200, height=120))
    again = await post(http, standin, body(width=200, height=120))
    other = await post(http, standin, body(prompt="a whale", width=200, height=120))
    assert first.headers["content-type"] == "image/png"
    assert decode(first.content).size == (200, 120)
    assert first.content == again.content != other.content


def test_a_megapixel_png_is_small() -> None:
    assert len(render_image("a lighthouse", 1344, 768)) < 100_000


@pytest.mark.parametrize(("fmt", "pil"), [("jpeg", "JPEG"), ("webp", "WEBP"), ("gif", "GIF")])
async def test_other_formats(
    standin: GeneratorStandIn, http: httpx.AsyncClient, fmt: str, pil: str
) -> None:
    response = await post(http, standin, body(fmt))
    assert response.headers["content-type"] == f"image/{fmt}"
    assert decode(response.content).format == pil


@pytest.mark.parametrize(
    ("behaviour", "extract"),
    [
        ("base64", lambda doc: doc["image_base64"]),
        ("b64_json", lambda doc: doc["b64_json"]),
        ("datauri", lambda doc: doc["b64_json"].removeprefix("data:image/png;base64,")),
        ("openai", lambda doc: doc["data"][0]["b64_json"]),
    ],
)
async def test_base64_answers(
    standin: GeneratorStandIn, http: httpx.AsyncClient, behaviour: str, extract: Any
) -> None:
    response = await post(http, standin, body(behaviour))
    image = decode(base64.b64decode(extract(response.json()), validate=True))
    assert image.format == "PNG" and image.size == (96, 72)


async def test_image_url_serves_from_the_standin(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    payload = body("image_url:jpeg")
    url = (await post(http, standin, payload)).json()["image_url"]
    assert url.startswith(f"{standin.base_url}/images/") and url.endswith(".jpeg")
    image = await http.get(url)
    assert decode(image.content).format == "JPEG"
    assert [r.method for r in standin.calls_for(payload["job_id"])] == ["POST", "GET"]
    assert (await post(http, standin, body("url"))).json()["url"].endswith(".png")


async def test_cloudinary_link(standin: GeneratorStandIn, http: httpx.AsyncClient) -> None:
    payload = body("cloudinary_link")
    assert (await post(http, standin, payload)).json() == {
        "cloudinary_link": (
            f"https://res.cloudinary.com/demo/image/upload/v1/generations/{payload['job_id']}.png"
        )
    }
    given = "https://res.cloudinary.com/acme/image/upload/v7/x.webp"
    doc = (await post(http, standin, body(f"cloudinary_link:{given}"))).json()
    assert doc == {"cloudinary_link": given}


async def test_modal_303_protocol(standin: GeneratorStandIn, http: httpx.AsyncClient) -> None:
    payload = body("redirect303:2")
    first = await post(http, standin, payload)
    assert first.status_code == 303
    result_url = first.headers["location"]
    assert "?__modal_function_call_id=fc-" in result_url
    rejected = await http.post(result_url, headers={"Authorization": f"Bearer {standin.token}"})
    assert (rejected.status_code, rejected.text) == (400, "modal-http: bad redirect method")
    second = await http.get(result_url)
    assert second.status_code == 303 and second.headers["location"] == result_url
    done = await http.get(result_url)
    assert done.status_code == 200 and decode(done.content).format == "PNG"
    # "The result URL can be reloaded without triggering a new request" (Modal's docs).
    again = await http.get(result_url)
    assert again.status_code == 200 and again.content == done.content
    unknown = await http.get(result_url.split("fc-")[0] + "fc-0123")
    assert (unknown.status_code, unknown.text) == (404, "modal-http: invalid function call")
    assert len(standin.calls_for(payload["job_id"], "POST")) == 1


async def test_303_chain_followed_by_httpx(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    payload = body("redirect303:4")
    response = await post(http, standin, payload, follow_redirects=True)
    assert response.status_code == 200 and [r.status_code for r in response.history] == [303] * 4
    assert [r.method for r in standin.calls_for(payload["job_id"])] == ["POST"] + ["GET"] * 4


async def test_unknown_behaviour_is_a_400(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    response = await post(http, standin, body("sparkles"))
    assert (response.status_code, response.text) == (
        400,
        "stand-in: unknown behaviour 'sparkles'",
    )


# ------------------------------------------------------------------ failures, counted per job


async def test_cold404_then_png(standin: GeneratorStandIn, http: httpx.AsyncClient) -> None:
    payload = body("cold404:2")
    answers = [await post(http, standin, payload) for _ in range(3)]
    assert [a.status_code for a in answers] == [404, 404, 200]
    assert answers[0].text == "modal-http: app for invoked web endpoint is stopped"
    other_job = await post(http, standin, body("cold404:2"))
    assert other_job.status_code == 404  # counts are per job


async def test_stopped_forever(standin: GeneratorStandIn, http: httpx.AsyncClient) -> None:
    payload = body("stopped")
    assert {(await post(http, standin, payload)).status_code for _ in range(5)} == {404}


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (400, '{"detail": "prompt was rejected by the content filter"}'),
        (401, "modal-http: missing credentials for proxy authorization"),
        (404, "modal-http: invalid function call"),
        (408, "Request Timeout"),
        (429, "Too Many Requests"),
        (500, "modal-http: internal error: function was terminated by signal"),
        (502, "<html><body><h1>502 Bad Gateway</h1></body></html>"),
        (503, "Service Unavailable"),
        (418, "stand-in: HTTP 418"),
    ],
)
async def test_status_always(
    standin: GeneratorStandIn, http: httpx.AsyncClient, code: int, text: str
) -> None:
    payload = body(f"status:{code}")
    for _ in range(2):
        response = await post(http, standin, payload)
        assert (response.status_code, response.text) == (code, text)
    if code == 429:
        assert response.headers["retry-after"] == "1"


async def test_status_n_times_then_png(standin: GeneratorStandIn, http: httpx.AsyncClient) -> None:
    payload = body("status:503:2")
    statuses = [(await post(http, standin, payload)).status_code for _ in range(4)]
    assert statuses == [503, 503, 200, 200]


async def test_slow(standin: GeneratorStandIn, http: httpx.AsyncClient) -> None:
    started = time.monotonic()
    response = await post(http, standin, body("slow:0.3"))
    assert response.status_code == 200 and time.monotonic() - started >= 0.3


async def test_hang_never_answers(standin: GeneratorStandIn, http: httpx.AsyncClient) -> None:
    with pytest.raises(httpx.ReadTimeout):
        await post(http, standin, body("hang"), timeout=0.3)


async def test_dribble_sends_a_valid_png_slowly(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    started = time.monotonic()
    response = await post(http, standin, body("dribble:0.005"))
    assert decode(response.content).format == "PNG"
    assert int(response.headers["content-length"]) == len(response.content)
    assert time.monotonic() - started >= 0.005 * (len(response.content) - 1)


@pytest.mark.parametrize(
    ("behaviour", "content_type", "starts"),
    [
        ("html_as_png", "image/png", b"<!doctype html>"),
        ("html", "text/html", b"<!doctype html>"),
        ("bad_json", "application/json", b'{"image_base64": "iVBOR'),
    ],
)
async def test_wrong_bodies(
    standin: GeneratorStandIn,
    http: httpx.AsyncClient,
    behaviour: str,
    content_type: str,
    starts: bytes,
) -> None:
    response = await post(http, standin, body(behaviour))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(content_type)
    assert response.content.startswith(starts)


async def test_json_without_image_and_broken_base64(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    doc = (await post(http, standin, body("json_no_image"))).json()
    assert not {"image_base64", "b64_json", "image_url", "url", "cloudinary_link"} & set(doc)
    broken = (await post(http, standin, body("bad_base64"))).json()["image_base64"]
    with pytest.raises(ValueError):
        base64.b64decode(broken, validate=True)
    html = (await post(http, standin, body("base64_not_image"))).json()["image_base64"]
    assert base64.b64decode(html).startswith(b"<!doctype html>")


async def test_oversize_with_and_without_length(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    sized = await post(http, standin, body("oversize:300000"))
    assert sized.headers["content-length"] == "300000" and len(sized.content) == 300000
    assert sized.content.startswith(b"\x89PNG")
    chunked = await post(http, standin, body("oversize_chunked:300000"))
    assert "content-length" not in chunked.headers and len(chunked.content) == 300000
    encoded = (await post(http, standin, body("oversize_base64:5000"))).json()["image_base64"]
    assert len(base64.b64decode(encoded)) == 5000


async def test_oversize_default_is_over_20_mb(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    async with http.stream(
        "POST",
        standin.url,
        json=body("oversize"),
        headers={"Authorization": f"Bearer {standin.token}"},
    ) as response:
        assert int(response.headers["content-length"]) > 20 * 2**20  # not read: closed here


async def test_unsafe_image_urls(standin: GeneratorStandIn, http: httpx.AsyncClient) -> None:
    private = (await post(http, standin, body("private_url"))).json()
    assert private == {"image_url": "https://10.0.0.5/x.png"}
    metadata = (await post(http, standin, body("metadata_url"))).json()
    assert metadata == {"image_url": "http://169.254.169.254/latest/meta-data/"}
    hop = (await post(http, standin, body("redirect_private"))).json()["image_url"]
    assert hop.startswith(standin.base_url)
    redirect = await http.get(hop)  # not followed: the target must never be contacted
    assert (redirect.status_code, redirect.headers["location"]) == (302, "https://10.0.0.5/x.png")


async def test_echo_auth_leaks_the_header(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    response = await post(http, standin, body("echo_auth"))
    assert response.status_code == 400 and standin.token in response.text


async def test_asset_urls_for_downloader_tests(
    standin: GeneratorStandIn, http: httpx.AsyncClient
) -> None:
    redirect = await http.get(standin.asset_url("redirect:1", job_id="assets"))
    assert redirect.status_code == 302
    final = await http.get(redirect.headers["location"])
    assert final.status_code == 200
    flaky = standin.asset_url("status:503:1", job_id="assets")
    assert [(await http.get(flaky)).status_code for _ in range(2)] == [503, 200]
    assert [c.status for c in standin.calls_for("assets")] == [302, 200, 503, 200]
    assert (await http.get(f"{standin.base_url}/images/nope.png")).status_code == 404
    with pytest.raises(ValueError, match="cannot be served as an image URL"):
        standin.asset_url("base64")


# ------------------------------------------------------------------ admin and knobs


async def test_admin_default_behaviour_and_calls(
    standin: GeneratorStandIn, http: httpx.AsyncClient, admin: str
) -> None:
    bad = await http.post(f"{admin}/admin/generator/default", json={"behaviour": "nope"})
    assert bad.status_code == 400
    ok = await http.post(f"{admin}/admin/generator/default", json={"behaviour": "status:503"})
    assert ok.status_code == 200
    try:
        payload = body()
        assert (await post(http, standin, payload)).status_code == 503
        calls = (
            await http.get(f"{admin}/admin/generator/calls", params={"job_id": payload["job_id"]})
        ).json()["calls"][payload["job_id"]]
        assert [(c["method"], c["status"], c["behaviour"]) for c in calls] == [
            ("POST", 503, "status:503")
        ]
        assert calls[0]["body"] == payload
        assert standin.token not in str(calls)
        # A behaviour in the prompt still wins over the default.
        assert (await post(http, standin, body("png"))).status_code == 200
    finally:
        standin.default_behaviour = "png"
    info = (await http.get(f"{admin}/admin/generator")).json()
    assert info["url"] == standin.url and info["default_behaviour"] == "png"


async def test_latency(standin: GeneratorStandIn, http: httpx.AsyncClient, admin: str) -> None:
    assert (await http.post(f"{admin}/admin/generator/latency", json={"seconds": 0.3})).is_success
    try:
        started = time.monotonic()
        assert (await post(http, standin, body())).status_code == 200
        assert time.monotonic() - started >= 0.3
    finally:
        standin.latency = 0.0
    bad = await http.post(f"{admin}/admin/generator/latency", json={"seconds": -1})
    assert bad.status_code == 400


async def test_stop_releases_hanging_requests(http: httpx.AsyncClient) -> None:
    server = GeneratorStandIn(token="t0ken-for-this-test")
    await server.start("127.0.0.1")
    pending = asyncio.create_task(post(http, server, body("hang"), timeout=10))
    await asyncio.sleep(0.2)
    started = time.monotonic()
    await server.stop()
    with pytest.raises(httpx.HTTPError):
        response = await pending
        response.raise_for_status()
    assert time.monotonic() - started < 2
