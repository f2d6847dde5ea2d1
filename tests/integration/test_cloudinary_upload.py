"""``CloudinaryUploader`` against the Cloudinary stand-in over real HTTP (no mocks)."""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import pytest_asyncio
from loguru import logger
from PIL import Image

from devstack.cloudinary import CloudinaryStandIn
from worker.errors import JobFailed
from worker.jobs import Job
from worker.pipeline.cloudinary import (
    CloudinaryAccount,
    CloudinaryUploader,
    encode_context,
    job_context,
)
from worker.settings import MissingSetting, Settings

MakeUploader = Callable[..., Awaitable[CloudinaryUploader]]


@pytest_asyncio.fixture
async def standin() -> AsyncIterator[CloudinaryStandIn]:
    s = CloudinaryStandIn()
    await s.start("127.0.0.1")
    try:
        yield s
    finally:
        await s.stop()


def settings(cloudinary_url: str, **overrides: Any) -> Settings:
    return Settings(
        supabase_url="http://127.0.0.1:9",
        supabase_service_role_key="k",
        cloudinary_url=cloudinary_url,
        **overrides,
    )


@pytest_asyncio.fixture
async def make_uploader(standin: CloudinaryStandIn) -> AsyncIterator[MakeUploader]:
    """Fast uploaders: 1 s per attempt, millisecond backoffs."""
    made: list[CloudinaryUploader] = []

    async def make(cloudinary_url: str | None = None, **kwargs: Any) -> CloudinaryUploader:
        options = {"timeout": 1.0, "backoff": 0.01, "max_backoff": 0.05}
        options |= {k: kwargs.pop(k) for k in list(kwargs) if k in options or k == "attempts"}
        uploader = CloudinaryUploader(
            settings(cloudinary_url or standin.cloudinary_url, **kwargs), **options
        )
        made.append(uploader)
        return uploader

    yield make
    for uploader in made:
        await uploader.aclose()


@pytest_asyncio.fixture
async def uploader(make_uploader: MakeUploader) -> CloudinaryUploader:
    return await make_uploader()


def standin_url(standin: CloudinaryStandIn, secret: str | None = None) -> str:
    """The stand-in's API, without the delivery options its own ``cloudinary_url`` carries."""
    return (
        f"cloudinary://{standin.api_key}:{secret or standin.api_secret}@{standin.cloud_name}"
        f"?upload_prefix={standin.base_url}"
    )


def make_job(**overrides: Any) -> Job:
    fields: dict[str, Any] = {
        "id": str(uuid.uuid4()),
        "prompt": "a lighthouse at dawn",
        "model": "flux-schnell",
        "aspect_ratio": "16:9",
        "user_id": str(uuid.uuid4()),
        "attempts": 1,
    }
    return Job(**(fields | overrides))


def png(width: int = 64, height: int = 64) -> bytes:
    """Noise, so the file size grows with the pixel count."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(buffer, "PNG")
    return buffer.getvalue()


async def test_upload_stores_one_asset_with_its_metadata(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    prompt = "a 🐱 | on a mat = cute & fluffy, ends in a backslash \\"
    job = make_job(prompt=prompt, model="flux|dev=2")
    uploaded = await uploader.upload(job, png(80, 60))

    public_id = f"generations/{job.id}"
    assert uploaded.public_id == public_id
    assert (uploaded.width, uploaded.height, uploaded.format) == (80, 60, "png")
    asset = standin.assets[public_id]
    assert uploaded.version == asset.version and uploaded.bytes == asset.size
    assert uploaded.image_url == standin.delivery_url(asset)
    assert asset.context == {
        "prompt": prompt,
        "model": "flux|dev=2",
        "aspect_ratio": "16:9",
        "job_id": job.id,
        "user_id": job.user_id,
    }
    [record] = standin.uploads[public_id]
    assert record.params["overwrite"] == "1" and record.params["invalidate"] == "1"
    assert "folder" not in record.params
    assert asset.original_filename == job.id


async def test_empty_values_are_left_out(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    job = make_job(user_id=None, model="")
    await uploader.upload(job, png())
    [record] = standin.uploads[f"generations/{job.id}"]
    assert set(record.context) == {"prompt", "aspect_ratio", "job_id"}
    assert "None" not in record.params["context"]


async def test_long_prompt_is_truncated_to_the_api_limit(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    job = make_job(prompt="word | " * 700)
    await uploader.upload(job, png())
    stored = standin.assets[f"generations/{job.id}"].context["prompt"]
    assert len(stored) <= 1024
    assert stored.endswith("…") and job.prompt.startswith(stored[:-1])


def test_context_encoding_escapes_what_cloudinary_splits_on() -> None:
    assert encode_context({"p": "a|b=c\\", "k": "v"}) == "p=a\\|b\\=c\\\\|k=v"
    context = job_context(make_job(prompt="tab\there\nnewline", user_id=None, model=None))
    assert context["prompt"] == "tab here\nnewline"  # the API refuses control characters
    assert "user_id" not in context and "model" not in context


async def test_a_rerun_replaces_the_asset(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    job = make_job()
    first = await uploader.upload(job, png(32, 32))
    second = await uploader.upload(job, png(48, 48))
    assert list(standin.assets) == [first.public_id] == [second.public_id]
    assert [r.outcome for r in standin.uploads[first.public_id]] == ["created", "overwritten"]
    assert second.version is not None and first.version is not None
    assert second.version > first.version and second.width == 48
    assert standin.assets[first.public_id].invalidations == 2


async def test_a_hung_upload_is_cut_by_the_timeout_and_retried(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    standin.hang_next(1)
    started = time.monotonic()
    uploaded = await uploader.upload(make_job(), png())
    assert 1.0 <= time.monotonic() - started < 3.0
    assert uploaded.public_id in standin.assets
    assert [r.fault for r in standin.requests] == ["hang", None]


async def test_server_errors_and_rate_limits_are_retried(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    standin.fail_next(1, 500)
    standin.fail_next(1, 429, "Too Many Requests")
    uploaded = await uploader.upload(make_job(), png())
    assert uploaded.public_id in standin.assets
    assert [r.status for r in standin.requests] == [500, 429, 200]


async def test_retries_run_out_with_a_clear_message(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    standin.fail_next(3, 502, "Bad gateway")
    with pytest.raises(JobFailed) as raised:
        await uploader.upload(make_job(), png())
    assert raised.value.message == "Cloudinary upload failed after 3 attempts (last: HTTP 502)"
    assert raised.value.reason == "upload"
    assert len(standin.requests) == 3 and standin.assets == {}


async def test_timeouts_run_out_with_a_clear_message(
    make_uploader: MakeUploader, standin: CloudinaryStandIn
) -> None:
    uploader = await make_uploader(timeout=0.3, attempts=2)
    standin.hang_next(2)
    with pytest.raises(JobFailed) as raised:
        await uploader.upload(make_job(), png())
    assert raised.value.message == "Cloudinary upload timed out after 2 attempts (0.3 s each)"


async def test_connection_errors_are_retried_then_reported(make_uploader: MakeUploader) -> None:
    closed = CloudinaryStandIn(api_key="1", api_secret="s")
    await closed.start("127.0.0.1")
    await closed.stop()  # nothing listens on that port any more
    uploader = await make_uploader(closed.cloudinary_url)
    with pytest.raises(JobFailed, match=r"after 3 attempts \(last: connection error: Connect"):
        await uploader.upload(make_job(), png())


async def test_a_rejected_image_fails_at_once(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    standin.max_file_bytes = 1000
    image = png(300, 300)
    with pytest.raises(JobFailed) as raised:
        await uploader.upload(make_job(), image)
    assert raised.value.message == (
        f"Cloudinary rejected the image: File size too large. Got {len(image)}. Maximum is 1000."
    )
    assert len(standin.requests) == 1


async def test_a_wrong_secret_fails_at_once_without_leaking_it(
    make_uploader: MakeUploader, standin: CloudinaryStandIn
) -> None:
    wrong_secret = "wrong-secret-value"
    url = standin_url(standin, secret=wrong_secret)
    uploader = await make_uploader(url)
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG")
    try:
        with pytest.raises(JobFailed) as raised:
            await uploader.upload(make_job(prompt="secret-free prompt"), png())
    finally:
        logger.remove(sink)
    message = raised.value.message
    assert message.startswith("Cloudinary refused the upload (HTTP 401): Invalid Signature ")
    assert "CLOUDINARY_URL" in message and "String to sign" not in message
    assert len(standin.requests) == 1
    logged = "\n".join(lines)
    assert "HTTP 401" in logged
    for secret in (wrong_secret, standin.api_secret, url):
        assert secret not in message and secret not in logged
    assert wrong_secret not in repr(CloudinaryAccount.from_url(url))


async def test_the_thumbnail_resolves_at_the_standin(
    make_uploader: MakeUploader, standin: CloudinaryStandIn
) -> None:
    uploader = await make_uploader(thumbnail_size=128)
    uploaded = await uploader.upload(make_job(), png(640, 360))
    assert f"/image/upload/c_fill,h_128,w_128/v{uploaded.version}/" in uploaded.thumbnail_url
    assert uploaded.thumbnail_url.endswith(f"{uploaded.public_id}.png")
    async with httpx.AsyncClient() as client:
        response = await client.get(uploaded.thumbnail_url)
    assert response.status_code == 200
    with Image.open(io.BytesIO(response.content)) as img:
        assert img.size == (128, 128)


async def test_thumbnail_of_a_standin_link(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    uploaded = await uploader.upload(make_job(), png(300, 500))
    assert uploader.thumbnail_url(uploaded.image_url) == uploaded.thumbnail_url
    async with httpx.AsyncClient() as client:
        response = await client.get(uploader.thumbnail_url(uploaded.image_url))
    with Image.open(io.BytesIO(response.content)) as img:
        assert img.size == (256, 256)


async def test_thumbnail_of_real_cloudinary_links(make_uploader: MakeUploader) -> None:
    uploader = await make_uploader("cloudinary://123:abc@mycloud")
    thumb = uploader.thumbnail_url
    assert thumb("https://res.cloudinary.com/demo/image/upload/v1795356744/gen/a-b.png") == (
        "https://res.cloudinary.com/demo/image/upload/c_fill,h_256,w_256/v1795356744/gen/a-b.png"
    )
    # Existing transformations are dropped: the thumbnail is of the original asset.
    assert thumb("http://res.cloudinary.com/demo/image/upload/c_scale,w_900/q_auto/v7/x.jpg") == (
        "https://res.cloudinary.com/demo/image/upload/c_fill,h_256,w_256/v7/x.jpg"
    )
    assert thumb("https://res.cloudinary.com/demo/image/upload/w_500/sample.webp") == (
        "https://res.cloudinary.com/demo/image/upload/c_fill,h_256,w_256/sample.webp"
    )
    assert thumb("https://acme-res.cloudinary.com/image/upload/v3/p/q.png") == (
        "https://acme-res.cloudinary.com/image/upload/c_fill,h_256,w_256/v3/p/q.png"
    )
    for link in (
        "https://example.com/image/upload/v1/a.png",
        "https://res.cloudinary.com/demo/video/upload/v1/a.mp4",
        "https://res.cloudinary.com/demo/image/private/v1/a.png",
        "/etc/passwd",
    ):
        with pytest.raises(JobFailed) as raised:
            thumb(link)
        assert raised.value.reason == "cloudinary_link"
        assert "cloudinary_link" in raised.value.message


async def test_real_account_thumbnails_are_https(
    make_uploader: MakeUploader, standin: CloudinaryStandIn
) -> None:
    # Uploads go to the stand-in, but with no delivery options the URL is Cloudinary's CDN.
    url = standin_url(standin)
    uploader = await make_uploader(url)
    uploaded = await uploader.upload(make_job(), png())
    assert uploaded.thumbnail_url == (
        f"https://res.cloudinary.com/{standin.cloud_name}/image/upload/c_fill,h_256,w_256/"
        f"v{uploaded.version}/{uploaded.public_id}.png"
    )


async def test_only_validated_image_bytes_are_sent(
    uploader: CloudinaryUploader, standin: CloudinaryStandIn
) -> None:
    with pytest.raises(TypeError):
        await uploader.upload(make_job(), "/etc/hostname")  # type: ignore[arg-type]
    with pytest.raises(JobFailed, match="not an image"):
        await uploader.upload(make_job(), b"<html>not an image</html>")
    with pytest.raises(JobFailed, match="empty"):
        await uploader.upload(make_job(), b"")
    assert standin.requests == []


def test_cloudinary_url_parsing() -> None:
    account = CloudinaryAccount.from_url(
        "cloudinary://123:s3cr3t@demo?upload_prefix=http://127.0.0.1:9&secure=false&cname=h:9"
    )
    assert (account.cloud_name, account.api_key, account.api_secret) == ("demo", "123", "s3cr3t")
    assert account.options == {
        "upload_prefix": "http://127.0.0.1:9",
        "secure": False,
        "cname": "h:9",
    }
    assert account.api_url() == "http://127.0.0.1:9/v1_1/demo/image/upload"
    assert CloudinaryAccount.from_url("cloudinary://1:2@c").api_url() == (
        "https://api.cloudinary.com/v1_1/c/image/upload"
    )
    private = CloudinaryAccount.from_url("cloudinary://1:2@c/cdn.example.com")
    assert private.options == {"private_cdn": True, "secure_distribution": "cdn.example.com"}
    for bad in ("cloudinary://c", "cloudinary://key@c"):
        with pytest.raises(ValueError, match="CLOUDINARY_URL"):
            CloudinaryAccount.from_url(bad)
    with pytest.raises(MissingSetting):
        CloudinaryUploader(
            Settings(supabase_url="http://127.0.0.1:9", supabase_service_role_key="k")
        )
