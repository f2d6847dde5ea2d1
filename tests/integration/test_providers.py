"""The hosted generator kinds (replicate, openai, fal) against their devstack stand-ins.

Each test picks the stand-in's behaviour with ``[gen:…]`` tokens in the prompt (see
devstack/providers/faults.py) and checks the outcome, the calls the stand-in received (how many
generations it started: ``creations_for``) and the handle writes the generator made
(``Recorder``, the test's ``JobContext``). Resumes across processes are in
tests/system/test_paid_once.py.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image

from devstack.providers import FalStandIn, OpenAIStandIn, ReplicateStandIn
from devstack.providers.replicate_spec import FLUX_NSFW
from tests.helpers import Recorder
from worker.errors import JobFailed
from worker.jobs import Job
from worker.pipeline.download import ImageDownloader
from worker.pipeline.generators import GeneratedImage, GeneratorContext, make_generator
from worker.settings import Settings

SDXL_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"


async def written(recorder: Recorder) -> None:
    """Until the generator has written its handle."""
    async with asyncio.timeout(5):
        while not recorder.writes:  # noqa: ASYNC110 - the recorder has no event to wait on
            await asyncio.sleep(0.02)


def prompt(*faults: str) -> str:
    return f"a lighthouse {uuid.uuid4().hex[:8]} " + "".join(f"[gen:{f}]" for f in faults)


@pytest_asyncio.fixture(scope="module")
async def rep() -> AsyncIterator[ReplicateStandIn]:
    server = ReplicateStandIn()
    await server.start("127.0.0.1")
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module")
async def oai() -> AsyncIterator[OpenAIStandIn]:
    server = OpenAIStandIn()
    await server.start("127.0.0.1")
    yield server
    await server.stop()


@pytest_asyncio.fixture(scope="module")
async def fal() -> AsyncIterator[FalStandIn]:
    server = FalStandIn()
    await server.start("127.0.0.1")
    yield server
    await server.stop()


Server = ReplicateStandIn | OpenAIStandIn | FalStandIn


def settings_for(server: Server, **overrides: Any) -> Settings:
    kind = server.name
    url = server.api_base if isinstance(server, OpenAIStandIn) else server.base_url
    values: dict[str, Any] = {
        "supabase_url": "http://127.0.0.1:9",
        "supabase_service_role_key": "k",
        "generator_kind": kind,
        "generator_url": url,
        "generator_token": server.token,
        "generator_retry_delays": "0.05,0.05,0.05",
        "generator_timeout_seconds": 5,
        "allow_insecure_downloads": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


async def generate(
    server: Server,
    text: str,
    *,
    context: Recorder | None = None,
    stored: dict[str, Any] | None = None,
    model: str | None = None,
    aspect_ratio: str = "1:1",
    **overrides: Any,
) -> GeneratedImage:
    settings = settings_for(server, **overrides)
    downloader = ImageDownloader(settings, retry_wait_seconds=0.01)
    generator = make_generator(settings, downloader)
    job = Job(str(uuid.uuid4()), text, model, aspect_ratio, None, 1, generation_ref=stored)
    try:
        return await generator.generate(
            job,
            1024,
            1024,
            GeneratorContext.of(context) if context else GeneratorContext.detached(),
        )
    finally:
        await generator.aclose()
        await downloader.aclose()


async def generate_fails(server: Server, text: str, **kwargs: Any) -> JobFailed:
    with pytest.raises(JobFailed) as caught:
        await generate(server, text, **kwargs)
    return caught.value


def picture(image: GeneratedImage) -> Image.Image:
    assert image.data is not None
    result = Image.open(io.BytesIO(image.data))
    result.load()
    return result


# ===================================================================== Replicate


async def test_replicate_flux_takes_the_aspect_ratio_and_stores_the_handle(
    rep: ReplicateStandIn,
) -> None:
    text, recorder = prompt("queue:0.3", "run:0.3"), Recorder()
    image = await generate(rep, text, context=recorder, aspect_ratio="16:9")
    assert (picture(image).format, picture(image).size) == ("WEBP", (1344, 768))
    (create,) = rep.calls_for(text, "create")
    assert create.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert create.body == {"input": {"prompt": text, "aspect_ratio": "16:9"}}
    assert "Prefer" not in create.headers  # asynchronous: the handle comes back at once
    # The handle was written once, before the first poll, and names the prediction.
    (ref,) = recorder.writes
    assert ref is not None and ref["kind"] == "replicate" and ref["id"] == create.handle
    polls = rep.calls_for(text, "poll")
    assert polls and all(p.time >= create.time for p in polls)
    assert rep.creations_for(text) == 1


@pytest.mark.parametrize(
    ("model", "ratio", "sent", "size"),
    [
        (f"stability-ai/sdxl:{SDXL_VERSION}", "3:2", {"width": 1216, "height": 832}, (1216, 832)),
        # A bare version id does not name the model: it gets aspect_ratio, which SDXL ignores
        # (write owner/name:version for an SDXL-style model).
        (SDXL_VERSION, "9:21", {"aspect_ratio": "9:21"}, (1024, 1024)),
        (
            "black-forest-labs/flux-1.1-pro",
            "21:9",
            {"aspect_ratio": "custom", "width": 1440, "height": 608},
            (1440, 608),
        ),
        ("black-forest-labs/flux-1.1-pro", "4:3", {"aspect_ratio": "4:3"}, (1152, 896)),
        ("black-forest-labs/flux-dev", "9:21", {"aspect_ratio": "9:21"}, (640, 1536)),
    ],
)
async def test_replicate_maps_the_aspect_ratio_per_model(
    rep: ReplicateStandIn, model: str, ratio: str, sent: dict[str, Any], size: tuple[int, int]
) -> None:
    text = prompt()
    image = await generate(rep, text, model=model, aspect_ratio=ratio)
    (create,) = rep.calls_for(text, "create")
    assert create.body["input"] == {"prompt": text, **sent}
    if ":" in model or "/" not in model:
        assert create.path == "/v1/predictions" and create.body["version"] == model
    assert picture(image).size == size


async def test_replicate_safety_refusal_fails_at_once_with_the_models_words(
    rep: ReplicateStandIn,
) -> None:
    text = prompt("nsfw")
    failed = await generate_fails(rep, text)
    assert failed.message == f"Replicate prediction failed: {FLUX_NSFW}"
    assert rep.creations_for(text) == 1 and not rep.cancels_for(text)


async def test_replicate_model_failure_is_quoted_short_and_clean(rep: ReplicateStandIn) -> None:
    text = prompt("fail:CUDA error:\x07 out of memory\n" + "x" * 300)
    failed = await generate_fails(rep, text)
    assert failed.message.startswith("Replicate prediction failed: CUDA error: out of memory x")
    assert "\x07" not in failed.message and "\n" not in failed.message
    reason = failed.message.removeprefix("Replicate prediction failed: ")
    assert len(reason) == 200 and reason.endswith("…")


@pytest.mark.parametrize("fault", ["throttle:1.2", "throttle_date:2", "throttle_body:1.2"])
async def test_replicate_throttle_waits_as_asked(rep: ReplicateStandIn, fault: str) -> None:
    text = prompt(fault)
    await generate(rep, text)
    first, second = rep.calls_for(text, "create")
    assert first.status == 429 and second.status == 201
    assert second.time - first.time >= 1.0  # not the 0.05 s of GENERATOR_RETRY_DELAYS
    assert rep.creations_for(text) == 1


async def test_replicate_retry_after_is_capped_by_the_attempt_deadline(
    rep: ReplicateStandIn,
) -> None:
    text = prompt("throttle:30")
    started = time.monotonic()
    await generate(rep, text, generator_timeout_seconds=1)
    assert 1.0 <= time.monotonic() - started < 5
    assert rep.creations_for(text) == 1


async def test_replicate_transient_poll_errors_resume_the_same_prediction(
    rep: ReplicateStandIn,
) -> None:
    text, recorder = prompt("run:0.3", "poll_error:503:2"), Recorder()
    await generate(rep, text, context=recorder)
    assert [c.status for c in rep.calls_for(text, "poll")][:2] == [503, 503]
    assert rep.creations_for(text) == 1 and len(recorder.writes) == 1


async def test_replicate_creation_5xx_is_retried_and_counted_once(rep: ReplicateStandIn) -> None:
    text = prompt("create_error:502:2")
    await generate(rep, text)
    assert [c.status for c in rep.calls_for(text, "create")] == [502, 502, 201]
    assert rep.creations_for(text) == 1


async def test_replicate_resumes_a_stored_handle_without_a_new_prediction(
    rep: ReplicateStandIn,
) -> None:
    text, first = prompt("queue:0.5", "run:0.5"), Recorder()
    first.stop_reason = "shutdown"  # released, as at a SIGTERM (a SIGKILL runs nothing at all)
    task = asyncio.create_task(generate(rep, text, context=first))
    await written(first)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    second = Recorder()
    image = await generate(rep, text, context=second, stored=first.writes[0])
    assert image.format == "webp" and rep.creations_for(text) == 1
    assert second.writes == []  # resumed: nothing new to store


async def test_replicate_gone_or_cancelled_handle_starts_a_new_one(rep: ReplicateStandIn) -> None:
    text, first = prompt("queue:5", "expire:0.2"), Recorder()
    task = asyncio.create_task(generate(rep, text, context=first, generator_timeout_seconds=0.5))
    with pytest.raises(JobFailed):
        await task  # attempts spent: its handles expired each time
    assert rep.creations_for(text) >= 2  # a fresh handle that vanished: a new one next attempt
    # A stored handle that the provider no longer knows is replaced within the same attempt.
    text = prompt("run:0.2")
    recorder = Recorder()
    stale = {"v": 1, "kind": "replicate", "id": "nosuchprediction", "url": "x"}
    await generate(rep, text, context=recorder, stored=stale)
    assert rep.creations_for(text) == 1
    assert recorder.writes[0] is None and recorder.writes[1]["id"] != "nosuchprediction"


async def test_replicate_removed_output_is_a_lost_generation(rep: ReplicateStandIn) -> None:
    text = prompt("data_removed")
    failed = await generate_fails(rep, text, generator_retry_delays="0.01")
    assert failed.message == (
        "generator unavailable after 2 attempts (last: generation lost: its output was deleted "
        "(data_removed))"
    )


async def test_replicate_early_output_is_taken(rep: ReplicateStandIn) -> None:
    text = prompt("run:3", "early_output")
    started = time.monotonic()
    await generate(rep, text)
    assert time.monotonic() - started < 2


async def test_replicate_bad_token_and_bad_model(rep: ReplicateStandIn) -> None:
    failed = await generate_fails(rep, prompt(), generator_token="r8_wrong")
    assert failed.message == "Replicate refused the API token (HTTP 401)"
    failed = await generate_fails(rep, prompt(), model="not a model")
    assert (failed.reason, failed.message) == (
        "bad_input",
        "model 'not a model' is not a Replicate model (owner/name, owner/name:version or a "
        "version id)",
    )
    failed = await generate_fails(rep, prompt(), model="0123456789abcdef0123456789abcdef")
    assert failed.message == (
        "Replicate refused the request: HTTP 422: Invalid version or not permitted: The "
        "specified version does not exist (or perhaps you don't have permission to use it?)"
    )


@pytest.mark.parametrize(
    ("reason", "in_use", "cancelled"),
    [
        ("cancelled", True, True),  # the job was cancelled: nobody wants the image
        (None, True, True),  # the job's deadline passed: it fails
        ("shutdown", True, False),  # released with its handle: the next worker resumes it
        ("lease_lost", True, False),  # the job still refers to it: whoever runs it resumes it
        ("lease_lost", False, True),  # replayed or cancelled meanwhile: nobody will
        ("lease_lost", None, False),  # the database did not say: leave it be
    ],
)
async def test_replicate_cancel_when_stopped_unless_someone_resumes(
    rep: ReplicateStandIn, reason: str | None, in_use: bool | None, cancelled: bool
) -> None:
    text, recorder = prompt("queue:10"), Recorder(in_use=in_use, stop_reason=reason)
    task = asyncio.create_task(generate(rep, text, context=recorder))
    await written(recorder)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(rep.cancels_for(text)) == (1 if cancelled else 0)
    assert recorder.asked == ([recorder.writes[0]["id"]] if reason == "lease_lost" else [])
    prediction = rep.predictions[recorder.writes[0]["id"]]
    assert prediction.state()[0] == ("canceled" if cancelled else "starting")


async def test_replicate_unstored_handle_is_cancelled_when_the_lease_is_gone(
    rep: ReplicateStandIn,
) -> None:
    # The handle write found the lease gone: no row holds the handle, nobody can resume it.
    text, recorder = prompt("queue:10"), Recorder(held=False, stop_reason="lease_lost")
    task = asyncio.create_task(generate(rep, text, context=recorder))
    await written(recorder)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(rep.cancels_for(text)) == 1 and recorder.asked == []


async def test_replicate_attempts_running_out_cancel_the_prediction(rep: ReplicateStandIn) -> None:
    text = prompt("queue:30")
    failed = await generate_fails(
        rep, text, generator_timeout_seconds=0.3, generator_retry_delays="0.01"
    )
    assert failed.message == "generator timed out after 2 attempts (0.3 s each)"
    assert rep.creations_for(text) == 1 and len(rep.cancels_for(text)) == 1


async def test_a_throttled_creation_holds_back_the_replicas_other_jobs(
    rep: ReplicateStandIn,
) -> None:
    settings = settings_for(rep, generator_retry_delays="0.05")
    downloader = ImageDownloader(settings, retry_wait_seconds=0.01)
    generator = make_generator(settings, downloader)
    first, second = prompt("throttle:1.5"), prompt()

    async def run(text: str) -> GeneratedImage:
        job = Job(str(uuid.uuid4()), text, None, "1:1", None, 1)
        return await generator.generate(job, 1024, 1024, GeneratorContext.detached())

    try:
        one = asyncio.create_task(run(first))
        async with asyncio.timeout(5):
            while not (calls := rep.calls_for(first, "create")) or calls[0].status is None:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        await asyncio.gather(one, run(second))
    finally:
        await generator.aclose()
        await downloader.aclose()
    throttled = rep.calls_for(first, "create")[0]
    (other,) = rep.calls_for(second, "create")  # one request, after the gate opened: no 429
    assert throttled.status == 429 and other.status == 201
    assert other.time - throttled.time >= 1.4


# ===================================================================== OpenAI


@pytest.mark.parametrize(
    ("model", "ratio", "size", "extra"),
    [
        ("gpt-image-1", "16:9", "1536x1024", {}),
        ("gpt-image-1", "9:21", "1024x1536", {}),
        ("gpt-image-1", "1:1", "1024x1024", {}),
        ("gpt-image-2", "16:9", "1344x768", {}),
        ("dall-e-3", "3:4", "1024x1792", {"response_format": "b64_json"}),
        ("dall-e-2", "21:9", "1024x1024", {"response_format": "b64_json"}),
    ],
)
async def test_openai_sizes_per_model(
    oai: OpenAIStandIn, model: str, ratio: str, size: str, extra: dict[str, str]
) -> None:
    text = prompt()
    image = await generate(oai, text, model=model, aspect_ratio=ratio)
    (create,) = oai.calls_for(text, "create")
    assert create.body == {"model": model, "prompt": text, "n": 1, "size": size, **extra}
    assert image.source == "base64" and picture(image).size == tuple(
        int(v) for v in size.split("x")
    )


async def test_openai_default_model_is_sent(oai: OpenAIStandIn) -> None:
    text = prompt()
    await generate(oai, text)
    assert oai.calls_for(text, "create")[0].body["model"] == "gpt-image-1"


async def test_openai_safety_refusal_is_quoted_and_not_retried(oai: OpenAIStandIn) -> None:
    text = prompt("nsfw")
    failed = await generate_fails(oai, text)
    assert failed.message.startswith(
        "OpenAI refused the request: HTTP 400: Your request was rejected by the safety system."
    )
    assert oai.attempts_for(text) == 1


async def test_openai_quota_is_not_retried(oai: OpenAIStandIn) -> None:
    text = prompt("quota")
    failed = await generate_fails(oai, text)
    assert failed.message == (
        "OpenAI refused the request: the account is out of quota (insufficient_quota)"
    )
    assert oai.attempts_for(text) == 1


@pytest.mark.parametrize("fault", ["throttle:1.2", "throttle_date:2", "throttle_body:1.2"])
async def test_openai_rate_limit_waits_as_asked(oai: OpenAIStandIn, fault: str) -> None:
    text = prompt(fault)
    await generate(oai, text)
    first, second = oai.calls_for(text, "create")
    assert (first.status, second.status) == (429, 200)
    assert second.time - first.time >= 1.0
    assert oai.creations_for(text) == 1


async def test_openai_server_errors_are_retried(oai: OpenAIStandIn) -> None:
    text = prompt("create_error:503:2")
    await generate(oai, text)
    assert [c.status for c in oai.calls_for(text, "create")] == [503, 503, 200]


async def test_openai_bad_key_is_not_quoted(oai: OpenAIStandIn) -> None:
    failed = await generate_fails(oai, prompt(), generator_token="sk-wrong-key-123456")
    assert failed.message == "OpenAI refused the API key (HTTP 401 invalid_api_key)"
    assert "3456" not in failed.message


async def test_openai_has_no_handle_to_store(oai: OpenAIStandIn) -> None:
    recorder = Recorder()
    await generate(oai, prompt("run:0.2"), context=recorder)
    assert recorder.writes == []


# ===================================================================== fal


@pytest.mark.parametrize(
    ("ratio", "sent", "size"),
    [
        ("16:9", "landscape_16_9", (1024, 576)),
        ("3:4", "portrait_4_3", (768, 1024)),
        ("1:1", "square_hd", (1024, 1024)),
        ("3:2", {"width": 1216, "height": 832}, (1216, 832)),
        ("9:21", {"width": 640, "height": 1536}, (640, 1536)),
    ],
)
async def test_fal_maps_the_aspect_ratio_to_image_size(
    fal: FalStandIn, ratio: str, sent: Any, size: tuple[int, int]
) -> None:
    text, recorder = prompt("queue:0.2", "run:0.2"), Recorder()
    image = await generate(fal, text, context=recorder, aspect_ratio=ratio)
    (create,) = fal.calls_for(text, "create")
    assert create.path == "/fal-ai/flux/schnell"
    assert create.body == {"prompt": text, "image_size": sent}
    assert (picture(image).format, picture(image).size) == ("JPEG", size)
    (ref,) = recorder.writes
    assert ref is not None and ref["id"] == create.handle and ref["extra"] == {"app": "fal-ai/flux"}
    assert all(c.path.startswith("/fal-ai/flux/requests/") for c in fal.calls_for(text, "poll"))


async def test_fal_refusal_fails_with_fals_words(fal: FalStandIn) -> None:
    text = prompt("fail")
    failed = await generate_fails(fal, text)
    assert (
        failed.message == "fal refused the request: The content was flagged by a content checker."
    )
    assert fal.creations_for(text) == 1 and not fal.cancels_for(text)


async def test_fal_nsfw_image_fails(fal: FalStandIn) -> None:
    failed = await generate_fails(fal, prompt("nsfw"))
    assert failed.message == "fal's safety checker flagged the image (has_nsfw_concepts)"


async def test_fal_throttle_and_poll_errors(fal: FalStandIn) -> None:
    text = prompt("throttle:1.2")
    await generate(fal, text)
    first, second = fal.calls_for(text, "create")
    assert (first.status, second.status) == (429, 200) and second.time - first.time >= 1.0
    text = prompt("run:0.2", "poll_error:503:2")
    await generate(fal, text)
    assert fal.creations_for(text) == 1


async def test_fal_cancel_and_resume(fal: FalStandIn) -> None:
    text, recorder = prompt("queue:10"), Recorder(stop_reason="cancelled")
    task = asyncio.create_task(generate(fal, text, context=recorder))
    await written(recorder)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [c.status for c in fal.cancels_for(text)] == [202]
    # A cancelled request, resumed, is started again.
    stored = recorder.writes[0]
    again = Recorder()
    await generate(fal, text.replace("[gen:queue:10]", ""), context=again, stored=stored)
    assert again.writes[0] is None  # the cancelled handle forgotten, then a new one stored
    # Resumed while still queued: no new request.
    text, first = prompt("queue:0.6"), Recorder(stop_reason="shutdown")
    task = asyncio.create_task(generate(fal, text, context=first))
    await written(first)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not fal.cancels_for(text)
    await generate(fal, text, stored=first.writes[0])
    assert fal.creations_for(text) == 1


async def test_fal_bad_key_and_model(fal: FalStandIn) -> None:
    failed = await generate_fails(fal, prompt(), generator_token=f"{uuid.uuid4()}:{'0' * 32}")
    assert failed.message == "fal refused the API key (HTTP 401)"
    failed = await generate_fails(fal, prompt(), model="flux")
    assert failed.reason == "bad_input"
