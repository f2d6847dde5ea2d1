"""Finding 8, and the bad-input guarantees end to end: the real worker (dispatcher, executor,
the production pipeline) against a generator that answers like an attacker. Every job ends
failed with one clean sentence (or complete); the worker never crashes, nothing is retried as
a crash (each retry would be another paid generation)."""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from loguru import logger

from devstack.cloudinary import CloudinaryStandIn
from tests.integration.hostile import (
    CONTROL,
    TOKEN,
    Answer,
    HostileGenerator,
    answer_json,
    assert_clean,
    deep_json,
    nested_array,
    settings_for,
    settle,
    worker_on,
)
from worker.observability.logs import configure_logging

ESCAPES = b"\x1b[2J\x1b[1;1H\x1b]0;owned\x07\x1b[31mred\x9b31m\xe2\x80\xaereversed\r\nforged line"


@pytest_asyncio.fixture(scope="module")
async def generator() -> AsyncIterator[HostileGenerator]:
    server = HostileGenerator()
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module")
async def cloudinary() -> AsyncIterator[CloudinaryStandIn]:
    standin = CloudinaryStandIn()
    await standin.start("127.0.0.1")
    yield standin
    await standin.stop()


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """What the worker logs, in the text format (a sink that is not a terminal)."""
    buffer = io.StringIO()
    yield buffer
    logger.remove()
    logger.configure(patcher=lambda record: None)
    logger.add(sys.stderr)
    logging.basicConfig(handlers=[], force=True)


@pytest.mark.parametrize(
    ("name", "answer", "expected"),
    [
        (
            "deep JSON object",
            answer_json(200, deep_json(30_000)),
            "generator returned invalid JSON",
        ),
        (
            "deep JSON array",
            answer_json(200, nested_array(100_000)),
            "generator returned invalid JSON",
        ),
        (
            "deep JSON in a 429 body (Retry-After read from it)",
            answer_json(429, nested_array(100_000)),
            "generator unavailable after 3 attempts (last: HTTP 429)",
        ),
        (
            "deep JSON in a 400 body",
            answer_json(400, nested_array(100_000)),
            "generator rejected the request: HTTP 400",
        ),
    ],
)
async def test_deep_json_fails_the_job_once_and_is_never_retried_as_a_crash(
    generator: HostileGenerator,
    cloudinary: CloudinaryStandIn,
    name: str,
    answer: Answer,
    expected: str,
) -> None:
    async with worker_on(settings_for(generator, cloudinary)) as (_, store):
        job_id = store.insert(f"deep json: {name}")
        generator.answers[job_id] = answer
        await settle(store, [job_id])
    job = store.jobs[job_id]
    assert job.status == "failed", job
    assert store.calls["retry"] == 0, job.error_message  # not "broke unexpectedly"
    assert (job.error_message or "").startswith(expected), job.error_message
    assert_clean(job.error_message)


async def test_control_characters_never_reach_the_row_or_the_log(
    generator: HostileGenerator, cloudinary: CloudinaryStandIn, log_text: io.StringIO
) -> None:
    settings = settings_for(generator, cloudinary)
    configure_logging(settings, sink=log_text)
    async with worker_on(settings) as (_, store):
        rejected = store.insert("escapes in a refusal")
        generator.answers[rejected] = Answer(400, b"no: " + ESCAPES, {"Content-Type": "text/plain"})
        not_image = store.insert("escapes in a JSON answer")
        generator.answers[not_image] = answer_json(
            200, b'{"detail": "' + ESCAPES.replace(b"\r\n", b"\\r\\n") + b'"}'
        )
        prompt = store.insert(
            "a prompt with \x1b[2J escapes\u202e in it", aspect_ratio="1:1\x1b[5m"
        )
        await settle(store, [rejected, not_image, prompt])
    for job_id in (rejected, not_image, prompt):
        job = store.jobs[job_id]
        assert job.status == "failed", job
        assert_clean(job.error_message)
    assert "generator rejected the request: HTTP 400" in (store.jobs[rejected].error_message or "")
    text = log_text.getvalue()
    assert "job failed" in text
    assert "\x1b" not in text and "\x9b" not in text and "\u202e" not in text
    assert "\nforged line" not in text  # a remote body cannot start a log line of its own
    assert TOKEN not in text
    assert not CONTROL.search(text.replace("\n", ""))
