"""The generic generator kind (``GENERATOR_KIND=http``) against the real generator stand-in,
over real HTTP on loopback.

Each test picks the stand-in's answer with a ``[gen:…]`` token in the prompt (see
devstack/generator.py) and checks both the outcome and the calls the stand-in recorded.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from loguru import logger

from devstack.generator import GeneratorStandIn
from tests.helpers import Recorder
from worker.errors import JobFailed
from worker.jobs import Job
from worker.pipeline.addresses import UrlPolicy
from worker.pipeline.download import ImageDownloader
from worker.pipeline.generators import GeneratedImage, GeneratorContext, make_generator
from worker.pipeline.images import sniff_image
from worker.settings import Settings


@pytest_asyncio.fixture(scope="module")
async def standin() -> AsyncIterator[GeneratorStandIn]:
    server = GeneratorStandIn()
    await server.start("127.0.0.1")
    yield server
    await server.stop()


def make_settings(standin: GeneratorStandIn, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "supabase_url": "http://127.0.0.1:9",
        "supabase_service_role_key": "k",
        "generator_url": standin.url,
        "generator_token": standin.token,
        "generator_retry_delays": "0.05,0.05,0.05",
        "generator_timeout_seconds": 2,
        "allow_insecure_downloads": True,
    }
    values.update(overrides)
    return Settings(**values)


def make_job(behaviour: str | None, **fields: Any) -> Job:
    prompt = f"a lighthouse at dusk [gen:{behaviour}]" if behaviour else "a lighthouse at dusk"
    values: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "prompt": prompt,
        "model": "flux-schnell",
        "aspect_ratio": "16:9",
        "user_id": str(uuid.uuid4()),
        "attempts": 1,
    }
    values.update(fields)
    return Job(**values)


async def run(
    standin: GeneratorStandIn,
    job: Job,
    *,
    size: tuple[int, int] = (320, 180),
    download_deadline: float = 2.0,
    policy: UrlPolicy | None = None,
    **overrides: Any,
) -> GeneratedImage:
    settings = make_settings(standin, **overrides)
    downloader = ImageDownloader(settings, deadline_seconds=download_deadline, policy=policy)
    client = make_generator(settings, downloader)
    try:
        return await client.generate(job, *size, GeneratorContext.detached())
    finally:
        await client.aclose()
        await downloader.aclose()


async def generate(
    standin: GeneratorStandIn, behaviour: str | None, **kwargs: Any
) -> tuple[Job, GeneratedImage]:
    job = make_job(behaviour)
    return job, await run(standin, job, **kwargs)


async def generate_fails(
    standin: GeneratorStandIn, behaviour: str | None, **kwargs: Any
) -> tuple[Job, JobFailed]:
    job = make_job(behaviour)
    with pytest.raises(JobFailed) as caught:
        await run(standin, job, **kwargs)
    return job, caught.value


def posts(standin: GeneratorStandIn, job: Job) -> list[int | None]:
    return [r.status for r in standin.calls_for(job.id, "POST")]


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message} {extra}")
    yield lines
    logger.remove(sink)


# ------------------------------------------------------------------ 2xx answers with an image


async def test_png_bytes_and_request_shape(standin: GeneratorStandIn) -> None:
    job, image = await generate(standin, "png")
    assert image.source == "bytes" and image.format == "png" and image.cloudinary_link is None
    assert image.data is not None and sniff_image(image.data) == "png"
    (call,) = standin.calls_for(job.id)
    assert call.authorized and call.headers["Authorization"] == "Bearer [redacted]"
    assert call.body == {
        "job_id": job.id,
        "prompt": job.prompt,
        "model": "flux-schnell",
        "aspect_ratio": "16:9",
        "user_id": job.user_id,
        "width": 320,
        "height": 180,
    }


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "gif"])
async def test_other_image_formats(standin: GeneratorStandIn, fmt: str) -> None:
    _, image = await generate(standin, fmt)
    assert (image.source, image.format) == ("bytes", fmt)


@pytest.mark.parametrize("behaviour", ["base64", "b64_json", "datauri", "openai"])
async def test_base64_answers(standin: GeneratorStandIn, behaviour: str) -> None:
    _, image = await generate(standin, behaviour)
    assert (image.source, image.format) == ("base64", "png")
    assert image.data is not None and sniff_image(image.data) == "png"


@pytest.mark.parametrize("key", ["image_url", "url"])
async def test_image_url_is_downloaded_without_credentials(
    standin: GeneratorStandIn, key: str
) -> None:
    job, image = await generate(standin, f"{key}:webp")
    assert (image.source, image.format) == ("url", "webp")
    post, download = standin.calls_for(job.id)
    assert post.method == "POST" and download.method == "GET"
    assert download.path.startswith("/images/")
    assert "Authorization" not in download.headers


async def test_cloudinary_link_is_returned_without_download(standin: GeneratorStandIn) -> None:
    job, image = await generate(standin, "cloudinary_link")
    assert image == GeneratedImage(
        None,
        None,
        f"https://res.cloudinary.com/demo/image/upload/v1/generations/{job.id}.png",
        "cloudinary_link",
    )
    assert len(standin.calls_for(job.id)) == 1


async def test_invalid_cloudinary_link_fails(standin: GeneratorStandIn) -> None:
    _, failed = await generate_fails(standin, "cloudinary_link:javascript:alert(1)")
    assert failed.message == "generator returned an invalid cloudinary_link"
    assert failed.reason == "generator_bad_output"


async def test_modal_303_chain_is_followed_with_get(standin: GeneratorStandIn) -> None:
    job, image = await generate(standin, "redirect303:3")
    assert image.format == "png"
    calls = standin.calls_for(job.id)
    assert [(c.method, c.status) for c in calls] == [
        ("POST", 303),
        ("GET", 303),
        ("GET", 303),
        ("GET", 200),
    ]
    assert all("__modal_function_call_id=fc-" in c.path for c in calls[1:])


async def test_slow_answer_within_the_deadline(standin: GeneratorStandIn) -> None:
    started = time.monotonic()
    job, image = await generate(standin, "slow:0.5")
    assert image.format == "png" and time.monotonic() - started >= 0.5
    assert posts(standin, job) == [200]


# ------------------------------------------------------------------ retried answers


async def test_cold_start_404_twice_then_success(standin: GeneratorStandIn) -> None:
    job, image = await generate(standin, "cold404:2")
    assert image.format == "png"
    assert posts(standin, job) == [404, 404, 200]


async def test_stopped_forever_fails_after_all_attempts(standin: GeneratorStandIn) -> None:
    job, failed = await generate_fails(standin, "stopped")
    assert failed.message == (
        "generator endpoint is stopped (Modal: app for invoked web endpoint is stopped) "
        "after 4 attempts"
    )
    assert failed.reason == "generator_unavailable"
    assert posts(standin, job) == [404] * 4


@pytest.mark.parametrize("code", [500, 502, 503, 429, 408, 425])
async def test_transient_status_is_retried_then_succeeds(
    standin: GeneratorStandIn, code: int
) -> None:
    job, image = await generate(standin, f"status:{code}:2")
    assert image.format == "png"
    assert posts(standin, job) == [code, code, 200]


async def test_500_forever_fails_with_last_status(standin: GeneratorStandIn) -> None:
    job, failed = await generate_fails(standin, "status:500")
    assert failed.message == "generator unavailable after 4 attempts (last: HTTP 500)"
    assert failed.reason == "generator_unavailable"
    assert posts(standin, job) == [500] * 4


async def test_retry_delays_decide_the_number_of_attempts(standin: GeneratorStandIn) -> None:
    job, failed = await generate_fails(standin, "status:503", generator_retry_delays="0.01")
    assert failed.message == "generator unavailable after 2 attempts (last: HTTP 503)"
    assert posts(standin, job) == [503, 503]


async def test_retries_wait_the_configured_delays(standin: GeneratorStandIn) -> None:
    started = time.monotonic()
    await generate(standin, "status:503:2", generator_retry_delays="0.3,0.3")
    assert time.monotonic() - started >= 0.6


async def test_hang_times_out_each_attempt(standin: GeneratorStandIn) -> None:
    started = time.monotonic()
    job, failed = await generate_fails(standin, "hang", generator_timeout_seconds=0.3)
    assert failed.message == "generator timed out after 4 attempts (0.3 s each)"
    assert failed.reason == "generator_unavailable"
    assert len(posts(standin, job)) == 4
    assert time.monotonic() - started < 3


async def test_dribbling_body_is_cut_by_the_overall_deadline(standin: GeneratorStandIn) -> None:
    started = time.monotonic()
    job, failed = await generate_fails(
        standin, "dribble:0.1", generator_timeout_seconds=0.5, generator_retry_delays="0.05"
    )
    assert failed.message == "generator timed out after 2 attempts (0.5 s each)"
    assert len(posts(standin, job)) == 2
    assert time.monotonic() - started < 2.5


async def test_connection_refused_is_retried_then_fails(standin: GeneratorStandIn) -> None:
    with socket.socket() as sock:  # a loopback port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(JobFailed) as caught:
        await generate(standin, "png", generator_url=f"http://127.0.0.1:{port}/generate")
    assert caught.value.message.startswith("generator unreachable after 4 attempts (last: Connect")
    assert caught.value.reason == "generator_unavailable"


# ------------------------------------------------------------------ permanent failures


async def test_400_fails_at_once_with_the_body_excerpt(standin: GeneratorStandIn) -> None:
    job, failed = await generate_fails(standin, "status:400")
    assert failed.message == (
        'generator rejected the request: HTTP 400: {"detail": "prompt was rejected by the '
        'content filter"}'
    )
    assert failed.reason == "generator_rejected"
    assert posts(standin, job) == [400]


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (401, "modal-http: missing credentials for proxy authorization"),
        (403, "forbidden"),
        (404, "modal-http: invalid function call"),
    ],
)
async def test_other_4xx_fail_at_once(standin: GeneratorStandIn, code: int, text: str) -> None:
    job, failed = await generate_fails(standin, f"status:{code}")
    assert failed.message == f"generator rejected the request: HTTP {code}: {text}"
    assert posts(standin, job) == [code]


async def test_missing_token_is_rejected(standin: GeneratorStandIn) -> None:
    job, failed = await generate_fails(standin, "png", generator_token="")
    assert (
        failed.message
        == "generator rejected the request: HTTP 401: missing or invalid bearer token"
    )
    (call,) = standin.calls_for(job.id)
    assert not call.authorized and "Authorization" not in call.headers


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        (
            "html_as_png",
            "generator returned image/png data that is not a PNG, JPEG, WebP or GIF image",
        ),
        ("html", "generator returned text/html, not an image"),
        ("bad_base64", "generator returned invalid base64 image data"),
        (
            "base64_not_image",
            "generator returned base64 data that is not a PNG, JPEG, WebP or GIF image",
        ),
        ("bad_json", "generator returned invalid JSON"),
        (
            "json_no_image",
            'generator returned JSON without an image: {"status": "succeeded", "seed": 42, '
            '"images": []}',
        ),
    ],
)
async def test_2xx_that_is_not_an_image_fails_at_once(
    standin: GeneratorStandIn, behaviour: str, message: str
) -> None:
    job, failed = await generate_fails(standin, behaviour)
    assert failed.message == message
    assert failed.reason == "generator_bad_output"
    assert posts(standin, job) == [200]


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("oversize:200000", "image is 195.3 KB, over the 64 KB limit"),
        ("oversize_chunked:200000", "image is over the 64 KB limit"),
        ("oversize_base64:80000", "image is 78.1 KB, over the 64 KB limit"),
        ("oversize_base64:200000", "image is over the 64 KB limit"),
    ],
)
async def test_oversize_image_fails(
    standin: GeneratorStandIn, behaviour: str, message: str
) -> None:
    job, failed = await generate_fails(standin, behaviour, max_image_bytes=65536)
    assert failed.message == message
    assert failed.reason == "image_too_large"
    assert len(posts(standin, job)) == 1


async def test_oversize_download_fails(standin: GeneratorStandIn) -> None:
    _, failed = await generate_fails(standin, "image_url:oversize:200000", max_image_bytes=65536)
    assert (failed.message, failed.reason) == (
        "image is 195.3 KB, over the 64 KB limit",
        "image_too_large",
    )


# ALLOW_INSECURE_DOWNLOADS=true admits plain http and loopback only (private addresses stay
# refused); the private-address cases also pin that loopback-only policy explicitly: the
# stand-in itself stays reachable and no test ever connects to 10.0.0.5.
LOOPBACK_ONLY = UrlPolicy(allow_http=True, allow_loopback=True, allow_private=False)


@pytest.mark.parametrize(
    ("behaviour", "insecure", "policy", "message"),
    [
        ("private_url", False, None, "image URL points to a private address (10.0.0.5)"),
        ("private_url", True, LOOPBACK_ONLY, "image URL points to a private address (10.0.0.5)"),
        ("metadata_url", False, None, "image URL must use https"),
        (
            "metadata_url",
            True,
            None,
            "image URL points to a cloud metadata address (169.254.169.254)",
        ),
        (
            "redirect_private",
            True,
            LOOPBACK_ONLY,
            "image URL redirect points to a private address (10.0.0.5)",
        ),
        ("image_url:html", True, None, "downloaded file is not an image (text/html)"),
    ],
)
async def test_unsafe_or_bad_image_urls_fail(
    standin: GeneratorStandIn,
    behaviour: str,
    insecure: bool,
    policy: UrlPolicy | None,
    message: str,
) -> None:
    job, failed = await generate_fails(
        standin, behaviour, allow_insecure_downloads=insecure, policy=policy
    )
    assert (failed.message, failed.reason) == (message, "download")
    assert posts(standin, job) == [200]  # a bad download never re-POSTs (no second generation)


async def test_image_url_download_deadline(standin: GeneratorStandIn) -> None:
    _, failed = await generate_fails(standin, "image_url:dribble:0.1", download_deadline=0.4)
    assert failed.message == "image download timed out after 0.4 s"


# ------------------------------------------------------------------ secrets


async def test_token_never_in_messages_or_logs(
    standin: GeneratorStandIn, log_lines: list[str]
) -> None:
    messages = []
    for behaviour in ("echo_auth", "status:400", "status:503", "html", "png"):
        try:
            await generate(standin, behaviour, generator_retry_delays="0.01")
        except JobFailed as exc:
            messages.append(exc.message)
    assert messages[0] == (
        'generator rejected the request: HTTP 400: {"error": "bad request, you sent: Bearer '
        '[REDACTED]"}'
    )
    assert log_lines and any("generator attempt" in line for line in log_lines)
    for text in messages + log_lines:
        assert standin.token not in text
        assert "Authorization" not in text


async def test_each_attempt_is_logged(standin: GeneratorStandIn, log_lines: list[str]) -> None:
    job, _ = await generate(standin, "status:503:1")
    lines = [line for line in log_lines if job.id in line]
    assert len(lines) == 4  # the POST, the retry notice, the POST, the success
    assert "generator POST GENERATOR_URL's origin: HTTP 503 text/plain" in lines[0]
    assert "generator attempt 1/4 failed (HTTP 503); retrying in 0.05 s" in lines[1]
    assert "generator POST GENERATOR_URL's origin: HTTP 200 image/png" in lines[2]
    assert "generator attempt 2/4 succeeded in" in lines[3]


# ------------------------------------------------------------------ the 303 handle (paid once)


async def run_job(
    standin: GeneratorStandIn, job: Job, context: Recorder | None, **overrides: Any
) -> GeneratedImage:
    settings = make_settings(standin, **overrides)
    downloader = ImageDownloader(settings, deadline_seconds=2.0)
    generator = make_generator(settings, downloader)
    try:
        return await generator.generate(
            job, 320, 180, GeneratorContext.of(context) if context else GeneratorContext.detached()
        )
    finally:
        await generator.aclose()
        await downloader.aclose()


async def test_the_303_result_url_is_stored_before_waiting(standin: GeneratorStandIn) -> None:
    job, recorder = make_job("redirect303:3:0.2"), Recorder()
    await run_job(standin, job, recorder)
    (ref,) = recorder.writes  # the same result URL each leg: written once
    assert ref is not None and ref["kind"] == "http"
    assert "__modal_function_call_id=fc-" in ref["url"] and ref["url"].startswith(standin.url)
    first_get = standin.calls_for(job.id, "GET")[0]
    assert first_get.path in ref["url"]
    assert first_get.headers["Authorization"] == "Bearer [redacted]"  # its own origin: the token


async def test_a_released_job_resumes_its_result_url_without_a_new_post(
    standin: GeneratorStandIn,
) -> None:
    job, first = make_job("redirect303:3:0.4"), Recorder(stop_reason="shutdown")
    task = asyncio.create_task(run_job(standin, job, first))
    async with asyncio.timeout(5):
        while not first.writes:  # noqa: ASYNC110 - the recorder has no event to wait on
            await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    resumed = Job(**{**_fields(job), "attempts": 2, "generation_ref": first.writes[0]})
    second = Recorder()
    image = await run_job(standin, resumed, second)
    assert image.format == "png" and second.writes == []
    assert posts(standin, job) == [303]  # one generation request in all
    assert [c.status for c in standin.calls_for(job.id, "GET")][-1] == 200


async def test_a_gone_result_url_is_posted_again(standin: GeneratorStandIn) -> None:
    job = make_job("png")
    stale = {
        "v": 1,
        "kind": "http",
        "id": "x",
        "url": f"{standin.url}?__modal_function_call_id=fc-0",
    }
    recorder = Recorder()
    image = await run_job(standin, Job(**{**_fields(job), "generation_ref": stale}), recorder)
    assert image.format == "png" and recorder.writes == [None]
    calls = standin.calls_for("-", "GET")[-1:] + standin.calls_for(job.id)
    assert [(c.method, c.status) for c in calls] == [("GET", 404), ("POST", 200)]


async def test_a_handle_of_another_kind_is_ignored(standin: GeneratorStandIn) -> None:
    job = make_job("png")
    foreign = {"v": 1, "kind": "replicate", "id": "abc", "url": "https://api.replicate.com/x"}
    await run_job(standin, Job(**{**_fields(job), "generation_ref": foreign}), None)
    assert posts(standin, job) == [200]


async def test_retry_after_is_honoured(standin: GeneratorStandIn) -> None:
    job = make_job("status:429:1")  # the stand-in's 429 says Retry-After: 1
    await run_job(standin, job, None)
    first, second = standin.calls_for(job.id, "POST")
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 1.0  # not the configured 0.05 s


def _fields(job: Job) -> dict[str, Any]:
    return {name: getattr(job, name) for name in Job.__dataclass_fields__}
