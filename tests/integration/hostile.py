"""A generator endpoint that answers whatever a test tells it to, and a worker to point at it.

The devstack's generator stand-in plays the real services' failure modes; this one plays an
attacker's: any status, content type, encoding and body, per job, including bodies that echo the
request's token in every encoding. Used by the hostile-input tests and the fuzz test.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from aiohttp import web

from devstack.cloudinary import CloudinaryStandIn
from devstack.generator import render_image
from worker.engine.app import Worker
from worker.settings import Settings
from worker.store.memory import InMemoryStore

TOKEN = "hostile+gen/token=0123456789-abcdef"
PNG = render_image("hostile", 32, 32)
# What must never be in an error_message: C0 and C1 controls (tab and newline included: one
# line), DEL, and the bidirectional overrides that reorder what a terminal shows.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass
class Answer:
    status: int = 200
    body: bytes = PNG
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "image/png"})


class HostileGenerator:
    """``POST /generate`` answers ``answers[job_id]`` (a PNG by default); ``GET /asset/<name>``
    serves ``assets[name]``, for image URLs. ``{token}`` in a body becomes the bearer token the
    request carried, so a body can echo it."""

    def __init__(self) -> None:
        self.answers: dict[str, Answer] = {}
        self.assets: dict[str, Answer] = {}
        self.posts: Counter[str] = Counter()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=1 << 20)
        app.router.add_post("/generate", self._generate)
        app.router.add_get("/asset/{name}", self._asset)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        job_id = str(payload.get("job_id"))
        self.posts[job_id] += 1
        answer = self.answers.get(job_id, Answer())
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        return self._respond(answer, token)

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        return self._respond(self.assets.get(request.match_info["name"], Answer(404, b"")), "")

    @staticmethod
    def _respond(answer: Answer, token: str) -> web.StreamResponse:
        body = answer.body.replace(b"{token}", token.encode())
        response = web.Response(status=answer.status, body=body)
        # Set as given, Content-Type included (aiohttp would otherwise add its own).
        for name, value in answer.headers.items():
            response.headers[name] = value
        if "Content-Type" not in answer.headers:
            response.headers.pop("Content-Type", None)
        return response


def settings_for(generator: HostileGenerator, cloudinary: CloudinaryStandIn) -> Settings:
    return Settings(
        _env_file=None,
        supabase_url="http://127.0.0.1:9",
        supabase_service_role_key="service-role-key-hostile-0123456789",
        worker_mode="polling",
        worker_poll_interval_seconds=0.05,
        worker_concurrency=8,
        worker_lease_seconds=30,
        worker_shutdown_grace_seconds=2,
        worker_id="hostile-test-worker",
        generator_url=f"{generator.url}/generate",
        generator_token=TOKEN,
        generator_timeout_seconds=3,
        generator_retry_delays="0,0",
        cloudinary_url=cloudinary.cloudinary_url,
        max_image_bytes=256 * 1024,
        allow_insecure_downloads=True,
        health_port=0,
    )


@contextlib.asynccontextmanager
async def worker_on(settings: Settings) -> AsyncIterator[tuple[Worker, InMemoryStore]]:
    """The real worker (dispatcher, executor, the production pipeline) on an in-memory store."""
    store = InMemoryStore(
        worker_id=settings.worker_id,
        lease_seconds=settings.worker_lease_seconds,
        max_attempts=settings.job_max_attempts,
    )
    worker = Worker(settings, store=store)
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            await worker.ready.wait()
        yield worker, store
        assert not task.done(), "the worker stopped by itself"
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    assert worker.exit_code == 0


async def settle(store: InMemoryStore, job_ids: list[str], timeout: float = 20) -> None:
    """Until none of ``job_ids`` is pending or running."""
    deadline = time.monotonic() + timeout
    while any(store.jobs[j].status in ("pending", "running") for j in job_ids):
        if time.monotonic() > deadline:
            stuck = {j: store.jobs[j].status for j in job_ids}
            raise AssertionError(f"jobs not finished within {timeout} s: {stuck}")
        await asyncio.sleep(0.02)


def assert_clean(message: str | None) -> None:
    """An error_message as the contract wants it: one line, no control characters."""
    assert message, "a failed job has no error_message"
    assert not CONTROL.search(message), repr(message)
    assert message == message.strip() and len(message) <= 600, repr(message)


def deep_json(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def nested_array(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def answer_json(status: int, body: bytes, **headers: str) -> Answer:
    return Answer(status, body, {"Content-Type": "application/json", **headers})
