"""``image-worker run`` as a real process on the devstack, one job per generator answer type."""

from __future__ import annotations

import io
import signal
import uuid

import httpx
from PIL import Image

from devstack.stack import DevStack
from tests.helpers import all_terminal, spawn_worker, wait_for, worker_env

SUCCEEDS = {
    "png": "1:1",
    "jpeg": "16:9",
    "webp": "9:16",
    "gif": "4:3",
    "base64": "3:4",
    "b64_json": "3:2",
    "datauri": "2:3",
    "image_url": "21:9",
    "url:jpeg": "9:21",
    "redirect303": "1:1",
    "cold404:2": "16:9",
    "status:503:1": "1:1",
}
FAILS = {
    "status:400": "generator rejected the request: HTTP 400",
    "html_as_png": "is not a PNG, JPEG, WebP or GIF image",
    "bad_base64": "base64",
    "stopped": "generator endpoint is stopped",
}


async def test_run_completes_every_answer_type(stack: DevStack) -> None:
    ids: dict[str, str] = {}
    for behaviour, ratio in SUCCEEDS.items():
        ids[behaviour] = str(
            await stack.pool.fetchval(
                "insert into public.jobs (prompt, model, aspect_ratio, user_id) "
                "values ($1, 'flux-schnell', $2, gen_random_uuid()) returning id",
                f"a harbour at dawn [gen:{behaviour}]",
                ratio,
            )
        )
    link = await stack.pool.fetchval(
        "insert into public.jobs (prompt, aspect_ratio) values ($1, '1:1') returning id",
        "already uploaded [gen:cloudinary_link:https://res.cloudinary.com/demo/image/upload/"
        "v1700000000/generations/sample.png]",
    )
    failing = {}
    for behaviour in FAILS:
        failing[behaviour] = str(
            await stack.pool.fetchval(
                "insert into public.jobs (prompt) values ($1) returning id",
                f"a storm [gen:{behaviour}]",
            )
        )
    env = worker_env(stack, worker_mode="realtime", generator_retry_delays="0.1,0.1,0.1")
    proc = spawn_worker(env, "e2e")
    try:
        await wait_for(lambda: all_terminal(stack), timeout=90, interval=0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0

    async with httpx.AsyncClient() as http:
        for behaviour, job_id in ids.items():
            row = await stack.pool.fetchrow(
                "select * from public.jobs where id = $1", uuid.UUID(job_id)
            )
            assert row["status"] == "complete", (behaviour, row["error_message"])
            assert row["progress"] == 100 and row["completed_at"] is not None
            asset = stack.cloudinary.assets[f"generations/{job_id}"]
            assert row["image_url"] == stack.cloudinary.delivery_url(asset)
            assert asset.context["job_id"] == job_id and asset.context["model"] == "flux-schnell"
            thumbnail = await http.get(row["thumbnail_url"])
            assert thumbnail.status_code == 200, behaviour
            image = Image.open(io.BytesIO(thumbnail.content))
            assert image.size == (256, 256)
    row = await stack.pool.fetchrow("select * from public.jobs where id = $1", link)
    assert row["status"] == "complete" and row["progress"] == 100
    assert row["image_url"].endswith("generations/sample.png")
    assert "c_fill,h_256,w_256" in row["thumbnail_url"]
    assert f"generations/{link}" not in stack.cloudinary.assets  # no second upload

    for behaviour, job_id in failing.items():
        row = await stack.pool.fetchrow(
            "select * from public.jobs where id = $1", uuid.UUID(job_id)
        )
        assert row["status"] == "failed", behaviour
        assert FAILS[behaviour] in row["error_message"], row["error_message"]
        assert stack.generator.token not in row["error_message"]
