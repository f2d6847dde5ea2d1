"""The hosted-provider stand-ins (devstack.providers), seen through the providers' own clients.

Replicate through ``replicate.Client(base_url=…)``, OpenAI through ``AsyncOpenAI(base_url=…)``,
fal through ``fal_client.AsyncClient`` (whose queue host is a module constant, always https, so
the test points it at the stand-in with monkeypatch). Details the clients hide (headers, exact
bodies) are checked with plain httpx.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import fal_client
import fal_client.client
import httpx
import openai
import pytest
import pytest_asyncio
import replicate
from PIL import Image
from replicate.exceptions import ModelError, ReplicateError

from devstack.providers import FalStandIn, FaultError, Faults, OpenAIStandIn, ReplicateStandIn
from devstack.providers.replicate_spec import FLUX_NSFW, SDXL_NSFW
from devstack.stack import DevStack

SDXL_VERSION = "39ed52f2a78e934b3ba6e2a89f5b1c712de7dfea535525255b1aa35c5565e08b"


def prompt(*faults: str) -> str:
    """A prompt of its own per test (counts are per prompt), with fault tokens."""
    return f"a red fox {uuid.uuid4().hex[:8]} " + "".join(f"[gen:{f}]" for f in faults)


def image_of(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@pytest_asyncio.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        yield client


def test_fault_tokens() -> None:
    faults = Faults().merged(
        "a fox [gen:throttle:3:2][gen:poll_error:503:always][gen:fail:CUDA error: out of memory]"
    )
    assert (faults.throttle, faults.throttle_times, faults.throttle_style) == (3.0, 2, "seconds")
    assert (faults.poll_error, faults.poll_error_times) == (503, 0)
    assert faults.fail == "CUDA error: out of memory"
    assert Faults().merged("queue:2 run:1", bare=True).describe() == "queue=2.0 run=1.0"
    assert Faults().merged("a fox") == Faults()  # no token, no fault
    for bad in ("[gen:bogus]", "[gen:queue:soon]", "[gen:create_error]", "[gen:poll_error:200]"):
        with pytest.raises(FaultError):
            Faults().merged(bad)


# ===================================================================== Replicate


@pytest_asyncio.fixture
async def rep() -> AsyncIterator[ReplicateStandIn]:
    server = ReplicateStandIn()
    await server.start("127.0.0.1")
    yield server
    await server.stop()


def rep_client(server: ReplicateStandIn, token: str | None = None) -> replicate.Client:
    return replicate.Client(api_token=token or server.token, base_url=server.base_url)


async def test_replicate_run_official_model_with_prefer_wait(rep: ReplicateStandIn) -> None:
    text = prompt("run:0.2")
    output = await rep_client(rep).async_run(
        "black-forest-labs/flux-schnell", input={"prompt": text, "aspect_ratio": "16:9"}
    )
    # replicate-python wraps only https:// URLs in FileOutput; the stand-in's are http://.
    assert isinstance(output, list) and len(output) == 1 and isinstance(output[0], str)
    async with httpx.AsyncClient(trust_env=False) as http:
        picture = image_of((await http.get(output[0])).content)
    assert (picture.format, picture.size) == ("WEBP", (1344, 768))  # cog-flux's 16:9 bucket
    create = rep.calls_for(text, "create")[0]
    assert create.headers["Prefer"] == "wait" and create.status == 201
    assert create.path == "/v1/models/black-forest-labs/flux-schnell/predictions"
    assert rep.creations_for(text) == 1 and not rep.calls_for(text, "poll")


async def test_replicate_version_prediction_lifecycle(rep: ReplicateStandIn) -> None:
    client = rep_client(rep)
    text = prompt("queue:0.3", "run:0.3")
    prediction = await client.predictions.async_create(
        version=SDXL_VERSION, input={"prompt": text, "width": 768, "height": 512}
    )
    assert prediction.status == "starting" and prediction.output is None
    assert prediction.model == "stability-ai/sdxl" and prediction.version == SDXL_VERSION
    assert prediction.urls["get"] == f"{rep.base_url}/v1/predictions/{prediction.id}"
    await asyncio.sleep(0.35)
    await prediction.async_reload()
    assert prediction.status == "processing" and prediction.started_at
    await prediction.async_wait()
    assert prediction.status == "succeeded" and prediction.completed_at
    assert prediction.metrics is not None and prediction.metrics["predict_time"] > 0
    assert prediction.progress is not None and prediction.progress.percentage == 1.0
    async with httpx.AsyncClient(trust_env=False) as http:
        picture = image_of((await http.get(prediction.output[0])).content)
    assert (picture.format, picture.size) == ("PNG", (768, 512))
    assert rep.creations_for(text) == 1 and len(rep.calls_for(text, "poll")) >= 2


async def test_replicate_output_string_model_and_bare_version_id(
    rep: ReplicateStandIn, http: httpx.AsyncClient
) -> None:
    auth = {"Authorization": f"Bearer {rep.token}"}
    answer = await http.post(
        f"{rep.base_url}/v1/models/black-forest-labs/flux-1.1-pro/predictions",
        json={"input": {"prompt": prompt(), "aspect_ratio": "3:2", "output_format": "png"}},
        headers={**auth, "Prefer": "wait=5"},
    )
    assert answer.status_code == 201 and isinstance(answer.json()["output"], str)
    assert answer.headers["Location"] == answer.json()["urls"]["get"]
    answer = await http.post(
        f"{rep.base_url}/v1/predictions",
        json={"version": SDXL_VERSION, "input": {"prompt": prompt()}},
        headers=auth,
    )
    assert answer.status_code == 201 and answer.json()["model"] == "stability-ai/sdxl"
    # A community model by name without its version: Replicate's "Invalid version" 422.
    answer = await http.post(
        f"{rep.base_url}/v1/predictions",
        json={"version": "stability-ai/sdxl", "input": {"prompt": prompt()}},
        headers=auth,
    )
    assert answer.status_code == 422
    assert answer.json()["title"] == "Invalid version or not permitted"


async def test_replicate_prefer_wait_returns_what_it_has_when_time_is_up(
    rep: ReplicateStandIn, http: httpx.AsyncClient
) -> None:
    text = prompt("run:3")
    started = time.monotonic()
    answer = await http.post(
        f"{rep.base_url}/v1/models/black-forest-labs/flux-dev/predictions",
        json={"input": {"prompt": text}},
        headers={"Authorization": f"Bearer {rep.token}", "Prefer": "wait=1"},
    )
    assert 0.9 <= time.monotonic() - started < 2.5
    assert answer.status_code == 202 and answer.headers["Preference-Applied"] == "wait=1"
    assert answer.json()["status"] == "processing" and answer.json()["output"] is None
    # early_output: the files arrive before the status says so (sync-mode docs).
    answer = await http.post(
        f"{rep.base_url}/v1/models/black-forest-labs/flux-dev/predictions",
        json={"input": {"prompt": prompt("run:3", "early_output")}},
        headers={"Authorization": f"Bearer {rep.token}", "Prefer": "wait"},
    )
    assert answer.status_code == 201
    assert answer.json()["status"] == "processing" and answer.json()["output"]


async def test_replicate_auth_is_checked(rep: ReplicateStandIn, http: httpx.AsyncClient) -> None:
    with pytest.raises(ReplicateError) as caught:
        await rep_client(rep, token="r8_wrong").async_run(
            "black-forest-labs/flux-schnell", input={"prompt": "x"}
        )
    assert caught.value.status == 401 and caught.value.title == "Unauthenticated"
    assert caught.value.detail == "You did not pass a valid authentication token"
    answer = await http.get(f"{rep.base_url}/v1/predictions/abc")
    assert answer.status_code == 401
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert rep.creations == 0


async def test_replicate_counts_and_unknown_faults(
    rep: ReplicateStandIn, http: httpx.AsyncClient
) -> None:
    url = f"{rep.base_url}/v1/models/black-forest-labs/flux-schnell/predictions"
    auth = {"Authorization": f"Bearer {rep.token}"}
    text = prompt("throttle:1:2")
    statuses = [
        (await http.post(url, json={"input": {"prompt": text}}, headers=auth)).status_code
        for _ in range(3)
    ]
    assert statuses == [429, 429, 201] and rep.creations_for(text) == 1
    answer = await http.post(url, json={"input": {"prompt": "x [gen:bogus]"}}, headers=auth)
    assert answer.status_code == 400 and "unknown fault" in answer.json()["detail"]


async def test_replicate_validation_422(rep: ReplicateStandIn) -> None:
    with pytest.raises(ReplicateError) as caught:
        await rep_client(rep).models.predictions.async_create(
            model="black-forest-labs/flux-schnell",
            input={"prompt": "x", "aspect_ratio": "7:5", "num_outputs": 0},
        )
    error = caught.value
    assert error.status == 422 and error.title == "Input validation failed"
    assert error.detail.startswith(
        '- input.aspect_ratio: aspect_ratio must be one of the following: "1:1"'
    )
    assert "- input.num_outputs: Must be greater than or equal to 1\n" in error.detail
    assert rep.creations == 0


@pytest.mark.parametrize(
    ("fault", "header"),
    [("throttle:4", "4"), ("throttle_date:30", "date"), ("throttle_body:7", None)],
)
async def test_replicate_throttle_shapes(
    rep: ReplicateStandIn, http: httpx.AsyncClient, fault: str, header: str | None
) -> None:
    text = prompt(fault)
    url = f"{rep.base_url}/v1/models/black-forest-labs/flux-schnell/predictions"
    auth = {"Authorization": f"Bearer {rep.token}"}
    answer = await http.post(url, json={"input": {"prompt": text}}, headers=auth)
    assert answer.status_code == 429
    body = answer.json()
    assert body["detail"].startswith("Request was throttled. Your rate limit resets in ~")
    if header is None:  # only the body names the wait: the documented shape
        assert "Retry-After" not in answer.headers and body == {
            "detail": "Request was throttled. Your rate limit resets in ~7s."
        }
    elif header == "date":
        wait = parsedate_to_datetime(answer.headers["Retry-After"]).timestamp() - time.time()
        assert 25 < wait <= 31 and body["retry_after"] == 30
    else:
        assert answer.headers["Retry-After"] == header and body["retry_after"] == 4
    again = await http.post(url, json={"input": {"prompt": text}}, headers=auth)
    assert again.status_code == 201  # the first attempt only
    assert rep.attempts_for(text) == 2 and rep.creations_for(text) == 1


async def test_replicate_client_waits_out_a_poll_429_and_5xx(rep: ReplicateStandIn) -> None:
    client = rep_client(rep)
    text = prompt("poll_error:429:1")
    prediction = await client.models.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": text}
    )
    started = time.monotonic()
    fetched = await client.predictions.async_get(prediction.id)  # retried after Retry-After: 1
    assert time.monotonic() - started >= 0.9 and fetched.status == "succeeded"
    text = prompt("poll_error:503:2")
    prediction = await client.models.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": text}
    )
    assert (await client.predictions.async_get(prediction.id)).status == "succeeded"
    assert [c.status for c in rep.calls_for(text, "poll")] == [503, 503, 200]
    text = prompt("poll_error:500:1")
    prediction = await client.models.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": text}
    )
    with pytest.raises(ReplicateError) as caught:  # 500 is not retried by the client
        await client.predictions.async_get(prediction.id)
    assert caught.value.status == 500
    assert (await client.predictions.async_get(prediction.id)).status == "succeeded"
    rep.inject("poll_error:500", times=1)  # global: the next poll, whatever the prediction
    with pytest.raises(ReplicateError):
        await client.predictions.async_get(prediction.id)
    assert (await client.predictions.async_get(prediction.id)).status == "succeeded"


async def test_replicate_create_5xx_then_success_counts_one_creation(
    rep: ReplicateStandIn,
) -> None:
    client = rep_client(rep)
    text = prompt("create_error:500:1")
    with pytest.raises(ReplicateError) as caught:
        await client.models.predictions.async_create(
            model="black-forest-labs/flux-schnell", input={"prompt": text}
        )
    assert caught.value.status == 500
    await client.models.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": text}
    )
    assert rep.attempts_for(text) == 2 and rep.creations_for(text) == 1
    rep.inject("create_error:502", times=1)  # global: the next creation, whatever its prompt
    with pytest.raises(ReplicateError) as caught:
        await client.models.predictions.async_create(
            model="black-forest-labs/flux-schnell", input={"prompt": prompt()}
        )
    assert caught.value.status == 502


async def test_replicate_failed_prediction(rep: ReplicateStandIn) -> None:
    client = rep_client(rep)
    with pytest.raises(ModelError) as caught:
        await client.async_run("black-forest-labs/flux-schnell", input={"prompt": prompt("nsfw")})
    assert caught.value.prediction.status == "failed"
    assert caught.value.prediction.error == FLUX_NSFW
    prediction = await client.predictions.async_create(
        version=SDXL_VERSION, input={"prompt": prompt("fail")}
    )
    await prediction.async_wait()
    assert (prediction.status, prediction.error) == ("failed", SDXL_NSFW)
    prediction = await client.predictions.async_create(
        version=SDXL_VERSION, input={"prompt": prompt("fail:CUDA out of memory")}
    )
    await prediction.async_wait()
    assert prediction.error == "CUDA out of memory" and prediction.output is None


async def test_replicate_cancel(rep: ReplicateStandIn) -> None:
    client = rep_client(rep)
    text = prompt("queue:5")
    prediction = await client.models.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": text}
    )
    await prediction.async_cancel()
    assert prediction.status == "canceled" and prediction.completed_at
    assert (await client.predictions.async_get(prediction.id)).status == "canceled"
    assert len(rep.cancels_for(text)) == 1 and rep.creations_for(text) == 1
    # Cancelling a finished prediction changes nothing.
    done = await client.models.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": prompt()}
    )
    assert (await client.predictions.async_cancel(done.id)).status == "succeeded"


async def test_replicate_expired_handle_and_removed_data(
    rep: ReplicateStandIn, http: httpx.AsyncClient
) -> None:
    client = rep_client(rep)
    prediction = await client.models.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": prompt("queue:1", "expire:0.2")}
    )
    assert (await client.predictions.async_get(prediction.id)).status == "starting"
    await asyncio.sleep(0.25)
    with pytest.raises(ReplicateError) as caught:
        await client.predictions.async_get(prediction.id)
    assert caught.value.status == 404
    prediction = await client.models.predictions.async_create(
        model="black-forest-labs/flux-schnell", input={"prompt": prompt("data_removed")}
    )
    fetched = await client.predictions.async_get(prediction.id)
    assert fetched.status == "succeeded" and fetched.output is None
    answer = await http.get(fetched.urls["get"], headers={"Authorization": f"Bearer {rep.token}"})
    assert answer.json()["data_removed"] is True


async def test_replicate_cancel_after_deadline_aborts(
    rep: ReplicateStandIn, http: httpx.AsyncClient
) -> None:
    answer = await http.post(
        f"{rep.base_url}/v1/models/black-forest-labs/flux-schnell/predictions",
        json={"input": {"prompt": prompt("queue:60")}},
        headers={"Authorization": f"Bearer {rep.token}", "Cancel-After": "5s"},
    )
    prediction = rep.predictions[answer.json()["id"]]
    prediction.started -= 6  # as if six seconds had passed
    doc = (
        await http.get(
            answer.json()["urls"]["get"], headers={"Authorization": f"Bearer {rep.token}"}
        )
    ).json()
    assert doc["status"] == "aborted" and "deadline" in doc


# ===================================================================== OpenAI


@pytest_asyncio.fixture
async def oai() -> AsyncIterator[OpenAIStandIn]:
    server = OpenAIStandIn()
    await server.start("127.0.0.1")
    yield server
    await server.stop()


def oai_client(server: OpenAIStandIn, **options: Any) -> openai.AsyncOpenAI:
    options.setdefault("max_retries", 0)
    options.setdefault("api_key", server.token)
    return openai.AsyncOpenAI(base_url=server.api_base, **options)


async def test_openai_gpt_image_returns_base64(oai: OpenAIStandIn) -> None:
    text = prompt("run:0.2")
    started = time.monotonic()
    result = await oai_client(oai).images.generate(
        model="gpt-image-1", prompt=text, size="1536x1024"
    )
    assert time.monotonic() - started >= 0.2  # synchronous: the call lasts the generation
    assert result.data is not None and result.data[0].url is None
    picture = image_of(base64.b64decode(result.data[0].b64_json or ""))
    assert (picture.format, picture.size) == ("PNG", (1536, 1024))
    assert result.size == "1536x1024" and result.usage is not None
    assert oai.creations_for(text) == 1


async def test_openai_dalle_url_and_b64(oai: OpenAIStandIn, http: httpx.AsyncClient) -> None:
    client = oai_client(oai)
    result = await client.images.generate(model="dall-e-3", prompt=prompt(), size="1792x1024")
    assert result.data is not None and result.data[0].revised_prompt
    picture = image_of((await http.get(result.data[0].url or "")).content)
    assert picture.size == (1792, 1024)
    result = await client.images.generate(
        model="dall-e-2", prompt=prompt(), size="256x256", response_format="b64_json", n=2
    )
    assert result.data is not None and len(result.data) == 2
    assert image_of(base64.b64decode(result.data[1].b64_json or "")).size == (256, 256)


async def test_openai_bad_requests(oai: OpenAIStandIn) -> None:
    client = oai_client(oai)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(model="gpt-image-1", prompt="x", size="512x512")
    assert (caught.value.code, caught.value.param) == ("invalid_value", "size")
    assert caught.value.message.endswith(
        "Invalid value: '512x512'. Supported values are: '1024x1024', '1536x1024', "
        "'1024x1536', and 'auto'."
    )
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(model="gpt-image-1", prompt="x", response_format="url")
    assert caught.value.code == "unknown_parameter"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(model="dall-e-3", prompt="x", n=2)
    assert caught.value.param == "n"
    assert oai.creations == 0


async def test_openai_safety_refusals(oai: OpenAIStandIn) -> None:
    client = oai_client(oai)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(model="gpt-image-1", prompt=prompt("nsfw"))
    assert caught.value.code == "moderation_blocked"
    assert caught.value.type == "image_generation_user_error"
    with pytest.raises(openai.BadRequestError) as caught:
        await client.images.generate(model="dall-e-3", prompt=prompt("nsfw"))
    assert caught.value.code == "content_policy_violation"
    assert "safety system" in caught.value.message


async def test_openai_auth(oai: OpenAIStandIn, http: httpx.AsyncClient) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        await oai_client(oai, api_key="sk-wrong-key-123456").images.generate(
            model="gpt-image-1", prompt="x"
        )
    assert caught.value.code == "invalid_api_key"
    assert "Incorrect API key provided: sk-***3456." in caught.value.message
    answer = await http.post(f"{oai.api_base}/images/generations", json={"prompt": "x"})
    assert answer.status_code == 401
    assert answer.json()["error"]["message"].startswith("You didn't provide an API key.")
    assert answer.headers["x-request-id"].startswith("req_")


async def test_openai_rate_limits(oai: OpenAIStandIn) -> None:
    text = prompt("throttle:1")
    with pytest.raises(openai.RateLimitError) as caught:
        await oai_client(oai).images.generate(model="gpt-image-1", prompt=text)
    error = caught.value
    assert error.code == "rate_limit_exceeded" and "Please try again in 1s." in error.message
    headers = error.response.headers
    assert headers["retry-after"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "1s"
    # The client's own retries honour Retry-After (seconds, or an HTTP date).
    for fault in ("throttle:1", "throttle_date:1"):
        text = prompt(fault)
        started = time.monotonic()
        result = await oai_client(oai, max_retries=1).images.generate(
            model="gpt-image-1", prompt=text
        )
        assert result.data and time.monotonic() - started >= 0.5
        assert oai.attempts_for(text) == 2 and oai.creations_for(text) == 1
    with pytest.raises(openai.RateLimitError) as caught:
        await oai_client(oai, max_retries=2).images.generate(
            model="gpt-image-1", prompt=prompt("quota")
        )
    assert caught.value.code == "insufficient_quota"


async def test_openai_server_errors(oai: OpenAIStandIn) -> None:
    client = oai_client(oai)
    with pytest.raises(openai.InternalServerError) as caught:
        await client.images.generate(model="gpt-image-1", prompt=prompt("create_error:500"))
    assert caught.value.status_code == 500 and caught.value.type == "server_error"
    oai.inject("create_error:503", times=2)
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as caught:
            await client.images.generate(model="gpt-image-1", prompt=prompt())
        assert "overloaded" in caught.value.message
    assert (await client.images.generate(model="gpt-image-1", prompt=prompt())).data


# ===================================================================== fal


@pytest_asyncio.fixture
async def fal(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FalStandIn]:
    server = FalStandIn()
    await server.start("127.0.0.1")
    # fal_client builds the submit URL from a module constant, https://{FAL_QUEUE_RUN_HOST}/.
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{server.base_url}/")
    yield server
    await server.stop()


def fal_api(server: FalStandIn, key: str | None = None) -> fal_client.AsyncClient:
    return fal_client.AsyncClient(key=key or server.token)


async def test_fal_submit_status_result(fal: FalStandIn, http: httpx.AsyncClient) -> None:
    text = prompt("queue:0.3", "run:0.3")
    handle = await fal_api(fal).submit(
        "fal-ai/flux/schnell", arguments={"prompt": text, "image_size": "landscape_16_9"}
    )
    base = f"{fal.base_url}/fal-ai/flux/requests/{handle.request_id}"  # no "/schnell"
    assert (handle.response_url, handle.status_url, handle.cancel_url) == (
        base, f"{base}/status", f"{base}/cancel",
    )  # fmt: skip
    assert isinstance(await handle.status(), fal_client.Queued)
    await asyncio.sleep(0.35)
    in_progress = await handle.status(with_logs=True)
    assert isinstance(in_progress, fal_client.InProgress) and in_progress.logs
    result = await handle.get()
    image = result["images"][0]
    assert (image["width"], image["height"], image["content_type"]) == (1024, 576, "image/jpeg")
    assert result["has_nsfw_concepts"] == [False] and result["prompt"] == text
    picture = image_of((await http.get(image["url"])).content)
    assert (picture.format, picture.size) == ("JPEG", (1024, 576))
    done = await handle.status()
    assert isinstance(done, fal_client.Completed) and done.error is None
    assert fal.creations_for(text) == 1
    # The status answers 202 until the request is complete, then 200.
    assert [c.status for c in fal.calls_for(text, "poll")][:2] == [202, 202]
    assert fal.calls_for(text, "poll")[-1].status == 200


async def test_fal_queue_position_and_custom_size(fal: FalStandIn, http: httpx.AsyncClient) -> None:
    client = fal_api(fal)
    first = await client.submit("fal-ai/flux/dev", arguments={"prompt": prompt("queue:5")})
    second = await client.submit(
        "fal-ai/flux/dev",
        arguments={"prompt": prompt("queue:5"), "image_size": {"width": 640, "height": 320}},
    )
    assert (await second.status()) == fal_client.Queued(position=1)
    await first.cancel()
    assert (await second.status()) == fal_client.Queued(position=0)
    fal.requests[second.request_id].started -= 5
    result = await second.get()
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (640, 320)
    # The status/result URLs take the app id only: with the subpath they are not found.
    answer = await http.get(
        f"{fal.base_url}/fal-ai/flux/dev/requests/{second.request_id}/status",
        headers={"Authorization": f"Key {fal.token}"},
    )
    assert answer.status_code == 404


async def test_fal_cancel(fal: FalStandIn) -> None:
    text = prompt("queue:5")
    handle = await fal_api(fal).submit("fal-ai/flux/schnell", arguments={"prompt": text})
    await handle.cancel()  # 202 CANCELLATION_REQUESTED
    assert fal.cancels_for(text)[0].status == 202
    done = await handle.status()
    assert isinstance(done, fal_client.Completed) and done.error == "Request was cancelled"
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.cancel()
    assert caught.value.status_code == 400
    assert caught.value.response.json() == {"status": "ALREADY_COMPLETED"}


async def test_fal_refusals_surface_at_the_result(fal: FalStandIn) -> None:
    client = fal_api(fal)
    handle = await client.submit(
        "fal-ai/flux/schnell", arguments={"prompt": "x", "image_size": "huge"}
    )
    done = await handle.status()  # accepted by the queue, refused by the model when it ran
    assert isinstance(done, fal_client.Completed) and done.error_type == "value_error"
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.get()
    assert caught.value.status_code == 422
    assert caught.value.response.json()["detail"][0]["loc"] == ["body", "image_size"]
    handle = await client.submit("fal-ai/flux/schnell", arguments={"prompt": prompt("fail")})
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.get()
    detail = caught.value.response.json()["detail"][0]
    assert detail["type"] == "content_policy_violation" and caught.value.status_code == 422
    assert caught.value.response_headers["x-fal-retryable"] == "false"
    result = await (
        await client.submit("fal-ai/flux/schnell", arguments={"prompt": prompt("nsfw")})
    ).get()
    assert result["has_nsfw_concepts"] == [True]


async def test_fal_auth(fal: FalStandIn) -> None:
    wrong = f"{uuid.uuid4()}:{'0' * 32}"
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await fal_api(fal, key=wrong).submit("fal-ai/flux/schnell", arguments={"prompt": "x"})
    assert caught.value.status_code == 401
    assert str(caught.value) == "No user found for Key ID and Secret"
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await fal_api(fal, key="no-colon").submit("fal-ai/flux/schnell", arguments={"prompt": "x"})
    assert "Expected '<key_id>:<key_secret>'" in str(caught.value)
    assert fal.creations == 0


async def test_fal_throttle_and_errors(fal: FalStandIn, http: httpx.AsyncClient) -> None:
    client = fal_api(fal)
    text = prompt("throttle:1")
    await client.submit("fal-ai/flux/schnell", arguments={"prompt": text})  # fal_client retries 429
    assert [c.status for c in fal.calls_for(text, "create")] == [429, 200]
    assert fal.creations_for(text) == 1
    answer = await http.post(
        f"{fal.base_url}/fal-ai/flux/schnell",
        json={"prompt": prompt("throttle_date:20")},
        headers={"Authorization": f"Key {fal.token}"},
    )
    assert answer.status_code == 429 and parsedate_to_datetime(answer.headers["Retry-After"])
    # A 502 from the ingress (nginx page, no x-fal-request-id) is retried by the client; a 503
    # from fal itself is not, and says why.
    text = prompt("poll_error:502:1")
    handle = await client.submit("fal-ai/flux/schnell", arguments={"prompt": text})
    assert isinstance(await handle.status(), fal_client.Completed)
    assert [c.status for c in fal.calls_for(text, "poll")] == [502, 200]
    handle = await client.submit(
        "fal-ai/flux/schnell", arguments={"prompt": prompt("poll_error:503")}
    )
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.status()
    assert (
        caught.value.status_code == 503 and caught.value.error_type == "runner_scheduling_failure"
    )
    assert isinstance(await handle.status(), fal_client.Completed)


async def test_fal_expired_handle(fal: FalStandIn) -> None:
    handle = await fal_api(fal).submit(
        "fal-ai/flux/schnell", arguments={"prompt": prompt("expire")}
    )
    with pytest.raises(fal_client.client.FalClientHTTPError) as caught:
        await handle.get()
    assert caught.value.status_code == 404


# ===================================================================== in the devstack


async def test_devstack_runs_the_provider_standins(
    stack: DevStack, http: httpx.AsyncClient
) -> None:
    assert stack.provider_env("replicate") == {
        "GENERATOR_KIND": "replicate",
        "GENERATOR_URL": stack.replicate.base_url,
        "GENERATOR_TOKEN": stack.replicate.token,
    }
    assert stack.provider_env("openai")["GENERATOR_URL"] == f"{stack.openai.base_url}/v1"
    assert stack.provider_env("fal")["GENERATOR_TOKEN"] == stack.fal.token
    assert stack.provider_env("http")["GENERATOR_URL"] == stack.generator.url
    endpoints = stack.admin_endpoints()
    for name in ("replicate", "openai", "fal"):
        assert f"POST {stack.url}/admin/{name}/inject" in endpoints
    # A global switch through the admin route: the next creation, any prompt, is throttled.
    answer = await http.post(f"{stack.url}/admin/openai/inject", json={"fault": "throttle:2"})
    assert answer.status_code == 200
    client = openai.AsyncOpenAI(
        base_url=stack.openai.api_base, api_key=stack.openai.token, max_retries=0
    )
    with pytest.raises(openai.RateLimitError) as caught:
        await client.images.generate(model="gpt-image-1", prompt="a fox")
    assert caught.value.response.headers["retry-after"] == "2"
    assert (await client.images.generate(model="gpt-image-1", prompt="a fox")).data
    calls = (await http.get(f"{stack.url}/admin/openai/calls", params={"prompt": "a fox"})).json()
    assert [c["status"] for c in calls["calls"]] == [429, 200]
    answer = await http.post(f"{stack.url}/admin/fal/default", json={"faults": "queue:5"})
    assert answer.json() == {"default_faults": "queue:5"}
    submitted = await http.post(
        f"{stack.fal.base_url}/fal-ai/flux/schnell",
        json={"prompt": "a fox"},
        headers={"Authorization": f"Key {stack.fal.token}"},
    )
    status = await http.get(
        submitted.json()["status_url"], headers={"Authorization": f"Key {stack.fal.token}"}
    )
    assert (status.status_code, status.json()["status"]) == (202, "IN_QUEUE")
    bad = await http.post(f"{stack.url}/admin/replicate/inject", json={"fault": "bogus"})
    assert bad.status_code == 400 and "unknown fault" in bad.json()["error"]
