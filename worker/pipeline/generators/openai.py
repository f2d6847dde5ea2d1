"""OpenAI's Images API (``GENERATOR_KIND=openai``).

``GENERATOR_URL`` is the API base (default ``https://api.openai.com/v1``), ``GENERATOR_TOKEN``
the API key (``Authorization: Bearer …``). The job's ``model`` (default
``GENERATOR_DEFAULT_MODEL``, ``gpt-image-1``) is always sent: the API's own default is dall-e-2.

``POST {base}/images/generations`` ``{"model", "prompt", "n": 1, "size"}`` is synchronous: the
image comes back in the answer (GPT image models always as ``b64_json``; DALL·E is asked for
``b64_json`` too, instead of a URL that expires in an hour). There is **no handle**: nothing to
store, resume or cancel, so "paid once" cannot cover this kind: an attempt cut by its deadline, a
connection lost mid-generation, a SIGKILL or a release at shutdown pays for the next try. The
worker never retries a refusal (400, ``insufficient_quota``), waits out ``Retry-After`` on a
``rate_limit_exceeded`` 429 (as ``Retry-After-Ms``/``Retry-After`` or "try again in 1.5s"), and
retries 5xx.

Aspect ratio → ``size`` (the sizes each model takes; the nearest orientation):

| model | 1:1 | landscape (16:9, 4:3, 3:2, 21:9) | portrait (9:16, 3:4, 2:3, 9:21) |
| --- | --- | --- | --- |
| ``gpt-image-1``, ``gpt-image-1-mini``, ``gpt-image-1.5`` (and other names) | 1024x1024 | 1536x1024 | 1024x1536 |
| ``gpt-image-2`` (any WxH, multiples of 16) | the SDXL/Flux buckets of pipeline/images.py (1344x768 for 16:9, …) | | |
| ``dall-e-3`` | 1024x1024 | 1792x1024 | 1024x1792 |
| ``dall-e-2`` | 1024x1024 | 1024x1024 | 1024x1024 |

openai-python is not used: for one POST it would add a large dependency tree (its generated
types, ``jiter``, ``distro``, ``tqdm``), retry on its own unless told not to, and hide the
``Retry-After`` handling this worker does for every kind alike.
"""

from __future__ import annotations

from typing import Any

from worker.errors import JobFailed
from worker.observability.redact import redact
from worker.pipeline.download import ImageDownloader
from worker.pipeline.generators.base import (
    Finished,
    GeneratedImage,
    GenerationFailed,
    GenerationRequest,
    Handle,
    Pending,
    ProviderTransient,
    Throttled,
    quote,
)
from worker.pipeline.generators.outputs import decode_base64, download, json_limit, text_field
from worker.pipeline.generators.throttle import retry_after
from worker.pipeline.generators.transport import ApiClient, Reply
from worker.pipeline.images import DIMENSIONS
from worker.settings import Settings

# (square, landscape, portrait) per model family.
GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536")
DALLE3_SIZES = ("1024x1024", "1792x1024", "1024x1792")
DALLE2_SIZES = ("1024x1024", "1024x1024", "1024x1024")


def openai_size(model: str, aspect_ratio: str) -> str:
    width, height = DIMENSIONS[aspect_ratio]
    if model == "gpt-image-2":
        return f"{width}x{height}"
    sizes = {"dall-e-3": DALLE3_SIZES, "dall-e-2": DALLE2_SIZES}.get(model, GPT_IMAGE_SIZES)
    return sizes[0 if width == height else 1 if width > height else 2]


class OpenAIProvider:
    kind = "openai"
    can_cancel = False  # one synchronous request: there is nothing to cancel but the connection

    def __init__(self, settings: Settings, downloader: ImageDownloader) -> None:
        self._base = (settings.generator_url or "").rstrip("/")
        token = settings.generator_token.get_secret_value()
        redact.add([token])
        self._api = ApiClient(
            settings, self.kind, {"Authorization": f"Bearer {token}"} if token else {}
        )
        self._max_bytes = settings.max_image_bytes
        self._downloader = downloader

    async def aclose(self) -> None:
        await self._api.aclose()

    def check(self, request: GenerationRequest) -> None:
        model = request.model or ""
        if not model or len(model) > 100 or any(c.isspace() for c in model):
            raise JobFailed(f"model {model[:100]!r} is not an OpenAI image model", "bad_input")

    def accepts(self, handle: Handle) -> bool:
        return False  # no handles

    def poll_interval(self, polls: int) -> float:
        return 1.0

    async def start(self, request: GenerationRequest) -> Handle | Finished:
        model = request.model or ""
        payload: dict[str, Any] = {
            "model": model,
            "prompt": request.prompt,
            "n": 1,
            "size": openai_size(model, request.aspect_ratio),
        }
        if model.startswith("dall-e"):
            payload["response_format"] = "b64_json"
        reply = await self._api.call(
            "POST",
            f"{self._base}/images/generations",
            what="images/generations",
            json_body=payload,
            limit=json_limit(self._max_bytes),
        )
        if not reply.ok:
            self._refused(reply)
        return Finished(reply.document())

    async def poll(self, handle: Handle, request: GenerationRequest) -> Pending | Finished:
        raise AssertionError("OpenAI's Images API has no handles to poll")

    async def cancel(self, handle: Handle) -> None:
        return None

    async def result(self, finished: Finished, request: GenerationRequest) -> GeneratedImage:
        document = finished.output
        items = document.get("data") if isinstance(document, dict) else None
        first = items[0] if isinstance(items, list) and items else None
        if isinstance(first, dict):
            if value := text_field(first, "b64_json"):
                return decode_base64(value, self._max_bytes, "OpenAI")
            if value := text_field(first, "url"):
                return await download(self._downloader, value)
        raise JobFailed("OpenAI returned no image", "generator_bad_output")

    def _refused(self, reply: Reply) -> None:
        status = reply.status
        document = reply.document()
        error = document.get("error") if isinstance(document, dict) else None
        error = error if isinstance(error, dict) else {}
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else ""
        if status == 429 and code == "insufficient_quota":
            raise JobFailed(
                "OpenAI refused the request: the account is out of quota (insufficient_quota)",
                "generator_rejected",
            )
        if status == 429:
            raise Throttled("HTTP 429", retry_after(reply.headers, reply.body), creation=True)
        if status >= 500 or status in (408, 425):
            raise ProviderTransient("status", f"HTTP {status}", retry_after(reply.headers))
        if status in (401, 403):
            # Not quoted: OpenAI's text shows part of the key ("sk-***3456").
            shown = f" {code}" if code else ""
            raise JobFailed(
                f"OpenAI refused the API key (HTTP {status}{shown})", "generator_rejected"
            )
        shown = f"HTTP {status}: {quote(message)}" if message else f"HTTP {status}"
        raise GenerationFailed(f"OpenAI refused the request: {shown}", "generator_rejected")
