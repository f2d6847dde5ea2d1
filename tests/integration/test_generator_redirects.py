"""The generic generator's redirects: free within GENERATOR_URL's origin, checked elsewhere.

Hardening finding: "Generator redirects are followed without address checks, and the first 200
characters of whatever the target answers go into error_message". A generator (or whoever holds
its DNS name) answering ``302 → http://127.0.0.1/internal`` made the worker fetch the internal
page and quote it in the job's row. Here a rogue generator on ``127.0.0.1`` redirects to an
"internal" server on another origin (``localhost``, another port): a hop to another origin is
checked like a download URL, and no text of that origin ever reaches an error message.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from devstack.serve import serve
from worker.errors import JobFailed
from worker.jobs import Job
from worker.pipeline.addresses import UrlPolicy
from worker.pipeline.download import ImageDownloader
from worker.pipeline.generators import GeneratorContext, make_generator
from worker.settings import Settings

SECRET_PAGE = "internal admin console: db password hunter2, do not expose"


class Rogue:
    """A generator whose POST answers with a redirect, and an internal server on another origin."""

    def __init__(self) -> None:
        self.generator_url = ""
        self.internal_url = ""
        self.internal_hits: list[str] = []
        self.status_for: dict[str, int] = {}

    async def start(self) -> list[web.AppRunner]:
        internal = web.Application()
        internal.router.add_route("*", "/{name}", self._internal)
        internal_runner, internal_base = await serve(internal, "127.0.0.1")
        # Another origin: the same loopback server reached by another host name.
        self.internal_url = internal_base.replace("127.0.0.1", "localhost")
        generator = web.Application()
        generator.router.add_post("/generate", self._generate)
        generator.router.add_get("/result", self._result)
        generator_runner, generator_base = await serve(generator, "127.0.0.1")
        self.generator_url = f"{generator_base}/generate"
        return [internal_runner, generator_runner]

    async def _generate(self, request: web.Request) -> web.Response:
        target = (await request.json())["prompt"].split("go:", 1)[1]
        if target.startswith("/"):  # a redirect within the generator's own origin first
            return web.Response(status=303, headers={"Location": target})
        return web.Response(status=302, headers={"Location": f"{self.internal_url}/{target}"})

    async def _result(self, request: web.Request) -> web.Response:
        target = request.query["then"]
        return web.Response(status=302, headers={"Location": f"{self.internal_url}/{target}"})

    async def _internal(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        self.internal_hits.append(name)
        if name == "json":
            return web.json_response({"note": SECRET_PAGE})
        if name == "page":  # a 2xx that is no image, its very content type a secret
            return web.Response(status=200, text=SECRET_PAGE, content_type="text/x-hunter2")
        status = int(name.removeprefix("status")) if name.startswith("status") else 403
        return web.Response(status=status, text=SECRET_PAGE, content_type="text/plain")


@pytest_asyncio.fixture(scope="module")
async def rogue() -> AsyncIterator[Rogue]:
    server = Rogue()
    runners = await server.start()
    yield server
    for runner in runners:
        await runner.cleanup()


def settings_for(rogue: Rogue, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "supabase_url": "http://127.0.0.1:9",
        "supabase_service_role_key": "k",
        "generator_url": rogue.generator_url,
        "generator_token": "gen-token-never-leaves",
        "generator_retry_delays": "0.01",
        "generator_timeout_seconds": 3,
        "allow_insecure_downloads": True,
    }
    values.update(overrides)
    return Settings(**values)


async def generate_fails(rogue: Rogue, target: str, policy: UrlPolicy | None = None) -> JobFailed:
    settings = settings_for(rogue)
    downloader = ImageDownloader(settings, policy=policy, retry_wait_seconds=0.01)
    generator = make_generator(settings, downloader)
    job = Job(str(uuid.uuid4()), f"a fox go:{target}", None, "1:1", None, 1)
    try:
        with pytest.raises(JobFailed) as caught:
            await generator.generate(job, 64, 64, GeneratorContext.detached())
    finally:
        await generator.aclose()
        await downloader.aclose()
    return caught.value


# The production rule for loopback (refused), with plain http allowed: the rogue generator
# itself lives on 127.0.0.1, which stays reachable because its own origin is not checked.
NO_LOOPBACK = UrlPolicy(allow_http=True, allow_loopback=False)


async def test_redirect_to_another_origin_is_checked_like_a_download(rogue: Rogue) -> None:
    hits = len(rogue.internal_hits)
    failed = await generate_fails(rogue, "admin", NO_LOOPBACK)
    assert failed.message.startswith("generator redirect points to a loopback address")
    assert SECRET_PAGE not in failed.message and "hunter2" not in failed.message
    assert len(rogue.internal_hits) == hits  # refused before any connection


async def test_a_same_origin_hop_then_another_origin_is_checked(rogue: Rogue) -> None:
    hits = len(rogue.internal_hits)
    failed = await generate_fails(rogue, "/result?then=admin", NO_LOOPBACK)
    assert failed.message.startswith("generator redirect points to a loopback address")
    assert len(rogue.internal_hits) == hits


@pytest.mark.parametrize("target", ["admin", "status400", "status404", "json", "page"])
async def test_text_of_another_origin_never_reaches_the_message(rogue: Rogue, target: str) -> None:
    # ALLOW_INSECURE_DOWNLOADS: the hop is allowed, and its answer read; none of it is quoted.
    failed = await generate_fails(rogue, target)
    assert "hunter2" not in failed.message and "admin console" not in failed.message
    assert "another origin" in failed.message
