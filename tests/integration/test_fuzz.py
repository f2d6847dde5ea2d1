"""The fuzz test of the job row → pipeline path: hostile rows and hostile generator answers.

Hypothesis draws batches of jobs whose rows hold odd values (wrong types, years past 9999,
infinity, control characters, huge prompts) and whose generator answers are an attacker's
(any status, wrong content types, deep JSON, JSON of the wrong shapes, random bytes, gzip that
lies, bodies echoing the token in every encoding). They run through the real worker (dispatcher,
executor, the production pipeline: generator client, downloader, Cloudinary upload against the
stand-in) on the in-memory store. For every batch:

* the worker never crashes, and no job is left pending or running;
* no attempt "broke unexpectedly" (that path retries: another paid generation);
* every failed job's ``error_message`` is one clean line: no control character, no secret in
  any encoding.

Bounded (``max_examples``) to run in well under a minute; ``database=None`` keeps Hypothesis
from writing an example database into the checkout.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import pytest_asyncio
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from devstack.cloudinary import CloudinaryStandIn
from tests.integration.hostile import (
    PNG,
    TOKEN,
    Answer,
    HostileGenerator,
    assert_clean,
    deep_json,
    nested_array,
    settings_for,
    settle,
    worker_on,
)
from worker.engine.app import Worker
from worker.settings import ASPECT_RATIOS
from worker.store.memory import InMemoryStore

pytestmark = pytest.mark.timeout(240)

SECRET_FORMS = {
    TOKEN,
    quote(TOKEN, safe=""),
    quote_plus(TOKEN),
    json.dumps(TOKEN)[1:-1],
    base64.b64encode(TOKEN.encode()).decode(),
}

# --------------------------------------------------------------------------- strategies

CONTROLS = "\x00\x07\x08\x1b\x7f\x85\x9b\u202e\u2066\r\n\t"
hostile_text = st.text(
    alphabet=st.one_of(st.characters(codec="utf-8"), st.sampled_from(CONTROLS)), max_size=80
)
odd_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(
        [
            "infinity",
            "-infinity",
            "10000-01-01T00:00:00+00:00",
            "0044-03-15T00:00:00+00:00 BC",
            "2026-11-27T10:00:00",  # no offset
            "2026-11-27T10:00:00+00:00",
            "1:1",
            "16:9",
        ]
    ),
)
row_overrides = st.dictionaries(
    st.sampled_from(["created_at", "attempts", "prompt", "model", "aspect_ratio", "user_id"]),
    odd_value,
    max_size=2,
)
prompt = st.one_of(
    st.just("a lighthouse at dusk"),
    hostile_text,
    st.just(""),
    st.just("a very long prompt " * 300),  # over MAX_PROMPT_CHARS
)
aspect_ratio = st.one_of(st.sampled_from(ASPECT_RATIOS), hostile_text)


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


json_documents = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), hostile_text),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
image_field = st.sampled_from(["image_base64", "b64_json", "image_url", "url", "cloudinary_link"])
bodies = st.one_of(
    st.just(PNG),
    st.just(PNG[:40]),  # a truncated image
    st.binary(max_size=200),
    hostile_text.map(str.encode),
    st.integers(min_value=65, max_value=3000).map(deep_json),
    st.integers(min_value=65, max_value=20_000).map(nested_array),
    json_documents.map(_json),
    st.tuples(image_field, odd_value).map(lambda kv: _json({kv[0]: kv[1]})),
    st.tuples(image_field, hostile_text).map(lambda kv: _json({kv[0]: kv[1]})),
    st.sampled_from(
        [
            _json({"image_base64": base64.b64encode(PNG).decode()}),
            _json({"b64_json": "data:image/png;base64," + base64.b64encode(PNG).decode()}),
            _json({"data": [{"b64_json": base64.b64encode(b"<html>not an image").decode()}]}),
            _json({"data": "not a list"}),
            _json({"image_url": "http://169.254.169.254/latest/meta-data/"}),
            _json({"image_url": "https://10.0.0.5/x.png"}),
            _json({"image_url": "file:///etc/passwd"}),
            _json({"image_url": "PLACEHOLDER/asset/png"}),
            _json({"image_url": "PLACEHOLDER/asset/html"}),
            _json({"image_url": "PLACEHOLDER/asset/bomb"}),
            _json({"cloudinary_link": "javascript:alert(1)"}),
            _json({"url": ["https://example.com/a.png"]}),
            b'{"error": "you sent Bearer {token}"}',
            b"echo: Authorization=Bearer%20{token}",
            b'{"detail": "\\u001b[2J\\u001b]0;owned\\u0007 screen cleared"}',
        ]
    ),
)
content_type = st.sampled_from(
    [
        "image/png",
        "image/jpeg",
        "image/svg+xml",
        "application/json",
        "application/problem+json",
        "application/json; charset=utf-16",
        "text/html",
        "text/plain",
        "application/octet-stream",
        "",
    ]
)
status = st.sampled_from(
    [200, 200, 200, 201, 204, 400, 401, 403, 404, 413, 418, 422, 429, 500, 503]
)
retry_after = st.sampled_from([None, "0", "-5", "nan", "soon", "Wed, 21 Oct 2015 07:28:00 GMT"])
encoding = st.sampled_from([None, None, "gzip", "gzip-lie", "br", "gzip, gzip"])


@st.composite
def answers(draw: st.DrawFn) -> Answer:
    body = draw(bodies)
    headers: dict[str, str] = {}
    if kind := draw(content_type):
        headers["Content-Type"] = kind
    if (after := draw(retry_after)) is not None:
        headers["Retry-After"] = after
    coding = draw(encoding)
    if coding == "gzip":
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    elif coding == "gzip-lie":  # says gzip, is not
        headers["Content-Encoding"] = "gzip"
    elif coding is not None:
        headers["Content-Encoding"] = coding
    return Answer(draw(status), body, headers)


# A seed corpus, as fuzzers keep: answers known to have broken workers, met in every run
# besides whatever Hypothesis draws.
ESCAPES = b"\x1b[2J\x1b]0;owned\x07\x1b[31mred\x9b31m\xe2\x80\xaereversed\r\nforged"
corpus = st.sampled_from(
    [
        Answer(429, nested_array(100_000), {"Content-Type": "application/json"}),
        Answer(503, deep_json(5_000), {"Content-Type": "application/json"}),
        Answer(200, nested_array(100_000), {"Content-Type": "application/json"}),
        Answer(400, b"refused: " + ESCAPES, {"Content-Type": "text/plain"}),
        Answer(422, b'{"detail": "' + ESCAPES.replace(b"\r\n", b" ") + b'"}', {}),
        Answer(
            200,
            gzip.compress(bytes(64 << 20)),
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        ),
        Answer(
            200,
            gzip.compress(PNG + bytes(64 << 20)),
            {"Content-Type": "image/png", "Content-Encoding": "gzip"},
        ),
        Answer(303, b"", {"Location": "http://169.254.169.254/latest/meta-data/"}),
        Answer(401, b"bad token: Bearer {token}", {"Content-Type": "text/plain"}),
    ]
)


@dataclass
class HostileJob:
    prompt: str
    aspect_ratio: str
    overrides: dict[str, Any]
    answer: Answer


# Mostly sound rows, so that most answers reach the generator and beyond; odd rows often
# enough to meet every kind.
hostile_jobs = st.builds(
    HostileJob,
    st.one_of(st.just("a lighthouse at dusk"), st.just("a red fox"), prompt),
    st.one_of(st.sampled_from(ASPECT_RATIOS), st.sampled_from(ASPECT_RATIOS), aspect_ratio),
    st.one_of(st.just({}), st.just({}), st.just({}), row_overrides),
    st.one_of(answers(), corpus),
)

# --------------------------------------------------------------------------- the run


@dataclass
class Running:
    worker: Worker
    store: InMemoryStore


@pytest_asyncio.fixture(scope="module")
async def generator() -> AsyncIterator[HostileGenerator]:
    server = HostileGenerator()
    await server.start()
    server.assets["png"] = Answer(200, PNG, {"Content-Type": "image/png"})
    server.assets["html"] = Answer(200, b"<html>nope</html>", {"Content-Type": "image/png"})
    server.assets["bomb"] = Answer(
        200,
        gzip.compress(PNG[:8] + bytes(64 << 20)),
        {"Content-Type": "image/png", "Content-Encoding": "gzip"},
    )
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module")
async def running(generator: HostileGenerator) -> AsyncIterator[Running]:
    cloudinary = CloudinaryStandIn()
    await cloudinary.start("127.0.0.1")
    try:
        async with worker_on(settings_for(generator, cloudinary)) as (worker, store):
            yield Running(worker, store)
    finally:
        await cloudinary.stop()


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    # No shrinking: a failing example can cost seconds (a crash is retried with back-off), and
    # the first one found is reported whole, which is enough to reproduce it.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(hostile_jobs, min_size=1, max_size=5))
async def test_hostile_rows_and_answers_never_crash_the_worker_or_strand_a_job(
    running: Running, generator: HostileGenerator, batch: list[HostileJob]
) -> None:
    store = running.store
    retries_before = store.calls["retry"]
    job_ids = []
    for job in batch:
        job_id = store.insert(job.prompt, aspect_ratio=job.aspect_ratio, extra=job.overrides)
        answer = job.answer
        answer.body = answer.body.replace(b"PLACEHOLDER", generator.url.encode())
        generator.answers[job_id] = answer
        job_ids.append(job_id)
    assert running.worker.dispatcher is not None
    running.worker.dispatcher.wake("poll")
    await settle(store, job_ids, timeout=60)

    assert running.worker.exit_code == 0 and not running.worker.status().failed
    assert store.calls["retry"] == retries_before, [
        store.jobs[j].error_message for j in job_ids if store.jobs[j].status == "failed"
    ]
    for job_id in job_ids:
        row = store.jobs[job_id]
        assert row.status in ("complete", "failed"), row
        if row.status == "complete":
            assert row.image_url and row.thumbnail_url
            continue
        assert_clean(row.error_message)
        message = row.error_message or ""
        assert not any(form in message for form in SECRET_FORMS), message
