"""worker/images.py: the aspect-ratio table, input validation and format sniffing."""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from worker.errors import JobFailed
from worker.jobs import Job
from worker.pipeline.images import DIMENSIONS, human_size, sniff_image, too_large, validate_job
from worker.settings import ASPECT_RATIOS, Settings

SETTINGS = Settings(supabase_url="http://127.0.0.1:9", supabase_service_role_key="k")


def job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": "j1",
        "prompt": "a cat",
        "model": None,
        "aspect_ratio": "1:1",
        "user_id": None,
        "attempts": 0,
    }
    values.update(fields)
    return Job(**values)


def test_table_covers_exactly_the_contract_ratios() -> None:
    assert tuple(DIMENSIONS) == ASPECT_RATIOS


@pytest.mark.parametrize("ratio", ASPECT_RATIOS)
def test_dimensions_are_about_one_megapixel_multiples_of_64(ratio: str) -> None:
    width, height = DIMENSIONS[ratio]
    assert width % 64 == 0 and height % 64 == 0
    assert 0.9 <= width * height / 2**20 <= 1.0
    a, b = (int(n) for n in ratio.split(":"))
    assert abs(width / height - a / b) / (a / b) < 0.1  # the nearest bucket, not always exact


def test_known_values() -> None:
    assert DIMENSIONS["1:1"] == (1024, 1024)
    assert DIMENSIONS["16:9"] == (1344, 768)
    assert DIMENSIONS["9:16"] == (768, 1344)
    assert DIMENSIONS["21:9"] == (1536, 640)


def test_valid_job_gives_its_dimensions() -> None:
    assert validate_job(job(aspect_ratio="3:2"), SETTINGS) == (1216, 832)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   \n\t "}, "prompt is empty"),
        ({"prompt": "x" * 4001}, "prompt is 4001 characters, over the 4000 limit"),
        (
            {"aspect_ratio": "5:1"},
            "aspect ratio '5:1' is not one of 1:1, 16:9, 9:16, 4:3, 3:4, 3:2, 2:3, 21:9, 9:21",
        ),
        ({"aspect_ratio": ""}, "aspect ratio '' is not one of"),
        ({"aspect_ratio": "1:1" * 50}, "aspect ratio '1:11:11:11:11:11:11:…' is not one of"),
    ],
)
def test_bad_input_messages(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(JobFailed) as caught:
        validate_job(job(**fields), SETTINGS)
    assert caught.value.message.startswith(message)
    assert caught.value.reason == "bad_input"


def test_prompt_limit_follows_the_setting() -> None:
    settings = Settings(
        supabase_url="http://127.0.0.1:9", supabase_service_role_key="k", max_prompt_chars=10
    )
    assert validate_job(job(prompt="x" * 10), settings) == (1024, 1024)
    with pytest.raises(JobFailed, match="prompt is 11 characters, over the 10 limit"):
        validate_job(job(prompt="x" * 11), settings)


def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "teal").save(buffer, fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "name"), [("PNG", "png"), ("JPEG", "jpeg"), ("WEBP", "webp"), ("GIF", "gif")]
)
def test_sniff_real_images(fmt: str, name: str) -> None:
    assert sniff_image(_encoded(fmt)) == name


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"<html>",
        b"\x89PN",
        b"RIFF\0\0\0\0WAVE",
        b"GIF90a",
        b'{"image_base64": ""}',
        b"\xff\xd8",
    ],
)
def test_sniff_non_images(data: bytes) -> None:
    assert sniff_image(data) is None


@pytest.mark.parametrize(
    ("n", "text"),
    [(900, "900 bytes"), (1536, "1.5 KB"), (65536, "64 KB"), (31 * 2**20, "31 MB")],
)
def test_human_size(n: int, text: str) -> None:
    assert human_size(n) == text


def test_too_large_messages() -> None:
    limit = 20 * 2**20
    assert too_large(31 * 2**20, limit).message == "image is 31 MB, over the 20 MB limit"
    assert too_large(None, limit).message == "image is over the 20 MB limit"
    assert too_large(limit + 1, limit).message == (
        f"image is {limit + 1} bytes, over the {limit} bytes limit"
    )
    assert too_large(None, limit).reason == "image_too_large"
