"""The Cloudinary stand-in, driven by the real ``cloudinary`` SDK over real HTTP.

SDK calls are blocking, and the stand-in runs on the test's event loop, so they go through
``asyncio.to_thread``. Every call passes its account options explicitly instead of touching the
SDK's global config.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import cloudinary
import cloudinary.exceptions
import cloudinary.uploader
import cloudinary.utils
import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from PIL import Image

from devstack.cloudinary import CloudinaryStandIn, parse_context, string_to_sign
from devstack.stack import DevStack


@pytest_asyncio.fixture
async def standin() -> AsyncIterator[CloudinaryStandIn]:
    s = CloudinaryStandIn()
    await s.start("127.0.0.1")
    try:
        yield s
    finally:
        await s.stop()


def image_bytes(width: int = 64, height: int = 48, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 90)).save(buffer, format=fmt)
    return buffer.getvalue()


async def sdk_upload(
    standin: CloudinaryStandIn, file: Any, *, api_secret: str | None = None, **options: Any
) -> dict[str, Any]:
    options.setdefault("timeout", 5)
    return await asyncio.to_thread(
        cloudinary.uploader.upload,
        file,
        cloud_name=standin.cloud_name,
        api_key=standin.api_key,
        api_secret=api_secret or standin.api_secret,
        upload_prefix=standin.base_url,
        **options,
    )


def delivery_options(standin: CloudinaryStandIn) -> dict[str, Any]:
    netloc = standin.base_url.removeprefix("http://")
    return {"cloud_name": standin.cloud_name, "cname": netloc, "secure": False}


async def test_sdk_upload_with_the_right_secret(standin: CloudinaryStandIn) -> None:
    data = image_bytes(64, 48, "JPEG")
    result = await sdk_upload(
        standin,
        data,
        public_id="generations/job-1",
        context={"prompt": "a cat | on a mat = cute & fluffy", "model": "flux"},
        tags=["generated", "model:flux"],
        filename="cat.jpg",
    )

    assert result["public_id"] == "generations/job-1"
    assert (result["width"], result["height"], result["format"]) == (64, 48, "jpg")
    assert result["bytes"] == len(data)
    assert result["etag"] == hashlib.md5(data).hexdigest()
    assert result["resource_type"] == "image" and result["type"] == "upload"
    assert result["tags"] == ["generated", "model:flux"]
    assert result["original_filename"] == "cat"
    assert result["existing"] is False and "overwritten" not in result
    assert result["context"] == {
        "custom": {"prompt": "a cat | on a mat = cute & fluffy", "model": "flux"}
    }
    version = result["version"]
    assert abs(version - time.time()) < 60
    assert result["secure_url"] == (
        f"{standin.base_url}/{standin.cloud_name}/image/upload/v{version}/generations/job-1.jpg"
    )
    expected_signature = cloudinary.utils.api_sign_request(
        {"public_id": "generations/job-1", "version": str(version)}, standin.api_secret
    )
    assert result["signature"] == expected_signature
    assert result["request_id"]  # the SDK copies X-Request-Id into the result

    [record] = standin.uploads["generations/job-1"]
    assert record.data == data and record.outcome == "created"
    assert record.context["prompt"] == "a cat | on a mat = cute & fluffy"
    assert record.params["api_key"] == standin.api_key
    asset = standin.assets["generations/job-1"]
    assert asset.version == version and asset.data == data


async def test_wrong_secret_is_rejected_like_cloudinary(standin: CloudinaryStandIn) -> None:
    with pytest.raises(cloudinary.exceptions.AuthorizationRequired) as raised:
        await sdk_upload(standin, image_bytes(), public_id="bad", api_secret="not-the-secret")
    message = str(raised.value)
    assert message.startswith("Invalid Signature ")
    assert "String to sign - 'public_id=bad&timestamp=" in message and message.endswith("'.")
    assert standin.assets == {} and standin.uploads == {}
    assert [r.status for r in standin.requests] == [401]


async def test_wrong_api_key_is_rejected(standin: CloudinaryStandIn) -> None:
    with pytest.raises(cloudinary.exceptions.AuthorizationRequired, match="Unknown API key"):
        await asyncio.to_thread(
            cloudinary.uploader.upload,
            image_bytes(),
            cloud_name=standin.cloud_name,
            api_key="999",
            api_secret=standin.api_secret,
            upload_prefix=standin.base_url,
            timeout=5,
        )


async def test_stale_timestamp_is_rejected(standin: CloudinaryStandIn) -> None:
    params = {"public_id": "old", "timestamp": str(int(time.time()) - 7200)}
    params["signature"] = cloudinary.utils.api_sign_request(params, standin.api_secret)
    params["api_key"] = standin.api_key
    async with httpx.AsyncClient() as client:
        response = await client.post(
            f"{standin.base_url}/v1_1/{standin.cloud_name}/image/upload",
            data=params,
            files={"file": ("a.png", image_bytes(), "image/png")},
        )
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("Stale request - reported time is ")


async def test_signature_string_matches_the_sdk() -> None:
    params = {
        "context": "prompt=a \\| b \\= c & d|model=m",
        "overwrite": "1",
        "public_id": "x/y",
        "timestamp": "1795357001",
        "api_key": "123",
        "file": "ignored",
    }
    assert string_to_sign(params) == cloudinary.utils.api_string_to_sign(
        {k: v for k, v in params.items() if k not in ("api_key", "file")}
    )
    assert "%26" in string_to_sign(params)


async def test_missing_bad_and_oversized_files_are_rejected(standin: CloudinaryStandIn) -> None:
    with pytest.raises(cloudinary.exceptions.BadRequest, match="Missing required parameter - file"):
        await sdk_upload(standin, b"", public_id="empty")
    with pytest.raises(cloudinary.exceptions.BadRequest, match=r"^Invalid image file$"):
        await sdk_upload(standin, b"definitely not an image", public_id="text")

    standin.max_file_bytes = 1000
    big = image_bytes(400, 400, "BMP")
    with pytest.raises(cloudinary.exceptions.BadRequest) as raised:
        await sdk_upload(standin, big, public_id="big")
    assert str(raised.value) == f"File size too large. Got {len(big)}. Maximum is 1000."
    assert standin.assets == {}


async def test_data_uri_upload_and_auto_resource_type(standin: CloudinaryStandIn) -> None:
    import base64

    uri = "data:image/png;base64," + base64.b64encode(image_bytes(10, 20)).decode()
    result = await sdk_upload(standin, uri, public_id="from-uri", resource_type="auto")
    assert (result["width"], result["height"], result["format"]) == (10, 20, "png")


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        ("a=1|b=2", {"a": "1", "b": "2"}),
        ("prompt=x \\| y \\= z|m=n", {"prompt": "x | y = z", "m": "n"}),
        ("k=v=w", {"k": "v=w"}),  # only the first unescaped "=" splits
        ("p=ends with \\\\|m=flux", {"p": "ends with \\", "m": "flux"}),
        # The SDK's own encoding of a trailing backslash: the "|" gets escaped, pairs merge.
        ("p=ends with \\|m=flux", {"p": "ends with |m=flux"}),
        ("k\\=ey=v", {"k=ey": "v"}),
        ("emoji=🐱🚀|empty=", {"emoji": "🐱🚀", "empty": ""}),
        ("", {}),
    ],
)
def test_context_parsing(raw: str, parsed: dict[str, str]) -> None:
    assert parse_context(raw) == parsed


async def test_overwrite_replaces_and_overwrite_false_keeps(standin: CloudinaryStandIn) -> None:
    first = await sdk_upload(standin, image_bytes(10, 10), public_id="job")
    second = await sdk_upload(standin, image_bytes(20, 10), public_id="job", invalidate=True)
    assert second["overwritten"] is True and second["existing"] is False
    assert second["version"] > first["version"]
    assert second["asset_id"] == first["asset_id"]
    assert second["width"] == 20
    assert list(standin.assets) == ["job"]
    assert standin.assets["job"].invalidations == 1

    kept = await sdk_upload(standin, image_bytes(30, 10), public_id="job", overwrite=False)
    assert kept["existing"] is True
    assert kept["version"] == second["version"] and kept["width"] == 20
    assert [r.outcome for r in standin.uploads["job"]] == ["created", "overwritten", "existing"]


async def test_folder_is_prefixed_like_fixed_folder_mode(standin: CloudinaryStandIn) -> None:
    plain = await sdk_upload(standin, image_bytes(), public_id="a", folder="generations")
    nested = await sdk_upload(standin, image_bytes(), public_id="x/b", folder="generations")
    generated = await sdk_upload(standin, image_bytes(), folder="generations")
    assert plain["public_id"] == "generations/a"
    assert nested["public_id"] == "x/b"
    assert generated["public_id"].startswith("generations/")


async def test_fail_switch_gives_cloudinary_errors(standin: CloudinaryStandIn) -> None:
    standin.fail_next(1, 500)
    standin.fail_next(1, 429, "Too Many Requests")
    standin.fail_next(1, 502, "Bad gateway")
    with pytest.raises(cloudinary.exceptions.GeneralError, match="Injected failure"):
        await sdk_upload(standin, image_bytes(), public_id="f")
    with pytest.raises(cloudinary.exceptions.RateLimited, match="Too Many Requests"):
        await sdk_upload(standin, image_bytes(), public_id="f")
    with pytest.raises(cloudinary.exceptions.Error, match="Bad gateway"):
        await sdk_upload(standin, image_bytes(), public_id="f")
    assert (await sdk_upload(standin, image_bytes(), public_id="f"))["public_id"] == "f"
    assert [(r.status, r.fault) for r in standin.requests] == [
        (500, "fail"),
        (429, "fail"),
        (502, "fail"),
        (200, None),
    ]


async def test_hang_switch_needs_the_callers_timeout(standin: CloudinaryStandIn) -> None:
    standin.hang_next(1)
    started = time.monotonic()
    with pytest.raises(cloudinary.exceptions.Error, match="Read timed out"):
        await sdk_upload(standin, image_bytes(), public_id="h", timeout=0.5)
    assert time.monotonic() - started < 3
    assert (await sdk_upload(standin, image_bytes(), public_id="h"))["public_id"] == "h"
    assert [r.fault for r in standin.requests] == ["hang", None]


async def test_clear_faults(standin: CloudinaryStandIn) -> None:
    standin.fail_next(3)
    standin.hang_next(1)
    standin.clear_faults()
    assert (await sdk_upload(standin, image_bytes(), public_id="ok"))["public_id"] == "ok"


async def test_served_images_and_thumbnails(standin: CloudinaryStandIn) -> None:
    original = image_bytes(600, 300)
    result = await sdk_upload(standin, original, public_id="generations/wide")
    thumbnail = cloudinary.CloudinaryImage(
        result["public_id"], version=result["version"], format=result["format"]
    ).build_url(width=256, height=256, crop="fill", **delivery_options(standin))
    assert thumbnail.startswith(f"{standin.base_url}/{standin.cloud_name}/image/upload/c_fill,")

    async with httpx.AsyncClient() as client:
        served = await client.get(result["secure_url"])
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        assert served.content == original

        thumb = await client.get(thumbnail)
        assert thumb.status_code == 200
        with Image.open(io.BytesIO(thumb.content)) as img:
            assert (img.format, img.size) == ("PNG", (256, 256))

        as_jpeg = await client.get(result["secure_url"].removesuffix(".png") + ".jpg")
        with Image.open(io.BytesIO(as_jpeg.content)) as img:
            assert (img.format, img.size) == ("JPEG", (600, 300))

        scaled = await client.get(
            f"{standin.base_url}/{standin.cloud_name}/image/upload/w_100/generations/wide.webp"
        )
        with Image.open(io.BytesIO(scaled.content)) as img:
            assert (img.format, img.size) == ("WEBP", (100, 50))

        missing = await client.get(f"{standin.base_url}/{standin.cloud_name}/image/upload/v1/no")
        assert missing.status_code == 404
        assert missing.headers["x-cld-error"] == "Resource not found - no"

        unsupported = await client.get(
            result["secure_url"].replace("/upload/", "/upload/e_blur:300/")
        )
        assert unsupported.status_code == 400 and "e" in unsupported.headers["x-cld-error"]


async def test_cloudinary_url_is_read_by_the_sdk(
    standin: CloudinaryStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLOUDINARY_CLOUD_NAME", raising=False)
    monkeypatch.setenv("CLOUDINARY_URL", standin.cloudinary_url)
    config = cloudinary.Config()  # a fresh object: the SDK's global config is left alone
    assert (config.cloud_name, config.api_key, config.api_secret) == (
        standin.cloud_name,
        standin.api_key,
        standin.api_secret,
    )
    assert config.upload_prefix == standin.base_url
    assert config.cname == standin.base_url.removeprefix("http://")


async def test_admin_routes(standin: CloudinaryStandIn) -> None:
    app = web.Application()
    app.add_routes(standin.admin_routes())
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    admin = f"http://127.0.0.1:{port}/admin/cloudinary"
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.post(f"{admin}/fail", json={"n": 2, "status": 503})).is_success
            assert (await client.post(f"{admin}/hang", json={"n": 1})).json() == {
                "pending_faults": 3
            }
            assert (await client.post(f"{admin}/clear")).json() == {"pending_faults": 0}

            await client.post(f"{admin}/fail", json={"n": 1, "status": 503})
            with pytest.raises(cloudinary.exceptions.Error):
                await sdk_upload(standin, image_bytes(), public_id="a")
            await sdk_upload(standin, image_bytes(), public_id="a", context={"k": "v"})

            listing = (await client.get(f"{admin}/uploads")).json()
            assert listing["requests"] == 2
            [upload] = listing["uploads"]["a"]
            assert upload["outcome"] == "created" and upload["context"] == {"k": "v"}
            assert listing["assets"]["a"]["public_id"] == "a"
    finally:
        await runner.cleanup()


async def test_devstack_wires_the_standin(stack: DevStack) -> None:
    """The whole devstack: its env reaches the stand-in, its admin port flips the switches."""
    assert stack.env["CLOUDINARY_URL"] == stack.cloudinary.cloudinary_url
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{stack.url}/admin/cloudinary/fail", json={"n": 1})
        assert response.json() == {"pending_faults": 1}
    with pytest.raises(cloudinary.exceptions.GeneralError):
        await sdk_upload(stack.cloudinary, image_bytes(), public_id="via-devstack")
    await sdk_upload(stack.cloudinary, image_bytes(), public_id="via-devstack")
    assert list(stack.cloudinary.assets) == ["via-devstack"]
