"""fal's queue API (``GENERATOR_KIND=fal``).

``GENERATOR_URL`` is the queue host (default ``https://queue.fal.run``), ``GENERATOR_TOKEN`` the
key (``key_id:key_secret``), sent as ``Authorization: Key …``. The job's ``model`` (default
``GENERATOR_DEFAULT_MODEL``, ``fal-ai/flux/schnell``) is the endpoint id.

``POST {queue}/{model}`` with the model's input answers ``{"request_id", …}`` at once: the
handle, stored before waiting. The request is followed at ``{queue}/{app}/requests/{id}``, where
``app`` is the endpoint id's owner and app only (``fal-ai/flux``, or three parts under the
``workflows``/``comfy`` namespaces: fal's "status, result, and cancel URLs use only the owner
and the app"): ``GET …/status`` every 0.5 s, slowing to every 2 s (``IN_QUEUE``,
``IN_PROGRESS``; ``COMPLETED``), then ``GET …`` for the result (``images[0].url``, downloaded
under the download rules). The URLs are built from ``GENERATOR_URL``, never taken from an
answer or the row, so the key only goes there. A request that is gone (404: fal keeps results
for a limited time) or was cancelled is started again; a refusal (422, e.g.
``content_policy_violation``) fails the job with fal's words, and so does an image flagged by
the safety checker (``has_nsfw_concepts``: fal returns a black image). Cancel:
``PUT …/cancel``.

Aspect ratio → ``image_size`` (fal's presets where one matches, else explicit pixels):

| aspect ratio | ``image_size`` |
| --- | --- |
| 1:1 | ``square_hd`` (1024×1024) |
| 4:3, 3:4 | ``landscape_4_3`` (1024×768), ``portrait_4_3`` (768×1024) |
| 16:9, 9:16 | ``landscape_16_9`` (1024×576), ``portrait_16_9`` (576×1024) |
| 3:2, 2:3, 21:9, 9:21 | ``{"width", "height"}``: the SDXL/Flux buckets (1216×832, 832×1216, 1536×640, 640×1536) |

fal_client is not used: its queue host is a module constant, always https, so it cannot be
pointed at ``GENERATOR_URL``.
"""

from __future__ import annotations

import re
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
    HandleGone,
    Pending,
    ProviderTransient,
    Throttled,
    quote,
)
from worker.pipeline.generators.outputs import download, first_url
from worker.pipeline.generators.throttle import retry_after
from worker.pipeline.generators.transport import ApiClient, Reply
from worker.pipeline.images import DIMENSIONS
from worker.settings import Settings

MODEL_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)+$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9-]{1,64}$")
APP_NAMESPACES = ("workflows", "comfy")  # fal_client AppId.from_endpoint_id
PRESETS = {
    "1:1": "square_hd",
    "4:3": "landscape_4_3",
    "3:4": "portrait_4_3",
    "16:9": "landscape_16_9",
    "9:16": "portrait_16_9",
}
FIRST_POLL_SECONDS, MAX_POLL_SECONDS = 0.5, 2.0


def fal_image_size(aspect_ratio: str) -> str | dict[str, int]:
    if preset := PRESETS.get(aspect_ratio):
        return preset
    width, height = DIMENSIONS[aspect_ratio]
    return {"width": width, "height": height}


def app_id(model: str) -> str:
    parts = model.split("/")
    return "/".join(parts[: 3 if parts[0] in APP_NAMESPACES else 2])


class FalProvider:
    kind = "fal"
    can_cancel = True

    def __init__(self, settings: Settings, downloader: ImageDownloader) -> None:
        self._base = (settings.generator_url or "").rstrip("/")
        token = settings.generator_token.get_secret_value()
        redact.add([token, token.partition(":")[2]])  # the whole key, and its secret half
        self._api = ApiClient(
            settings, self.kind, {"Authorization": f"Key {token}"} if token else {}
        )
        self._downloader = downloader

    async def aclose(self) -> None:
        await self._api.aclose()

    def check(self, request: GenerationRequest) -> None:
        model = request.model or ""
        parts = model.split("/")
        deep_enough = len(parts) >= (3 if parts[0] in APP_NAMESPACES else 2)
        if not (MODEL_RE.match(model) and deep_enough):
            shown = model if len(model) <= 80 else model[:80] + "…"
            raise JobFailed(
                f"model {shown!r} is not a fal endpoint id (e.g. fal-ai/flux/schnell)", "bad_input"
            )

    def accepts(self, handle: Handle) -> bool:
        app = handle.extra.get("app", "")
        return bool(REQUEST_ID_RE.match(handle.id)) and bool(MODEL_RE.match(app))

    def poll_interval(self, polls: int) -> float:
        return min(FIRST_POLL_SECONDS * 1.5**polls, MAX_POLL_SECONDS)

    def _request_url(self, handle: Handle) -> str:
        return f"{self._base}/{handle.extra['app']}/requests/{handle.id}"

    async def start(self, request: GenerationRequest) -> Handle | Finished:
        model = request.model or ""
        payload = {"prompt": request.prompt, "image_size": fal_image_size(request.aspect_ratio)}
        reply = await self._api.call(
            "POST", f"{self._base}/{model}", what="submit", json_body=payload
        )
        if not reply.ok:
            self._refused(reply, creating=True, model=model)
        document = reply.document()
        request_id = document.get("request_id") if isinstance(document, dict) else None
        if not isinstance(request_id, str) or not REQUEST_ID_RE.match(request_id):
            raise JobFailed("fal answered without a request id", "generator_bad_output")
        handle = Handle(self.kind, request_id, "", {"app": app_id(model)})
        return Handle(self.kind, request_id, self._request_url(handle), handle.extra)

    async def poll(self, handle: Handle, request: GenerationRequest) -> Pending | Finished:
        url = self._request_url(handle)
        reply = await self._api.call("GET", f"{url}/status", what="status", quiet=True)
        if reply.status == 404:
            raise HandleGone("fal no longer knows the request (HTTP 404)")
        if not reply.ok:
            self._refused(reply, creating=False, model=request.model or "")
        document = reply.document()
        if not isinstance(document, dict):
            raise ProviderTransient("status", "fal answered a status that is not JSON")
        if document.get("status") != "COMPLETED":
            return Pending()
        error = document.get("error")
        if error:
            if document.get("error_type") == "request_cancelled":
                raise HandleGone("the request was cancelled")
            raise GenerationFailed(
                f"fal refused the request: {quote(str(error))}", "generator_rejected"
            )
        reply = await self._api.call("GET", url, what="result")
        if reply.status == 404:
            raise HandleGone("fal no longer has the result (HTTP 404)")
        if not reply.ok:
            document = reply.document()
            if isinstance(document, dict) and document.get("error_type") == "request_cancelled":
                raise HandleGone("the request was cancelled")
            self._refused(reply, creating=False, model=request.model or "")
        document = reply.document()
        if not isinstance(document, dict):
            raise GenerationFailed("fal answered a result that is not JSON", "generator_bad_output")
        return Finished(document)

    async def cancel(self, handle: Handle) -> None:
        await self._api.call("PUT", f"{self._request_url(handle)}/cancel", what="cancel")

    async def result(self, finished: Finished, request: GenerationRequest) -> GeneratedImage:
        document: dict[str, Any] = finished.output
        images = document.get("images")
        first = images[0] if isinstance(images, list) and images else None
        url = first_url(first.get("url")) if isinstance(first, dict) else None
        if url is None:
            raise JobFailed("fal's result has no image URL", "generator_bad_output")
        flagged = document.get("has_nsfw_concepts")
        if isinstance(flagged, list) and flagged and flagged[0] is True:
            raise JobFailed(
                "fal's safety checker flagged the image (has_nsfw_concepts)", "generator_rejected"
            )
        return await download(self._downloader, url)

    def _refused(self, reply: Reply, *, creating: bool, model: str) -> None:
        status = reply.status
        if status == 429:
            raise Throttled("HTTP 429", retry_after(reply.headers, reply.body), creation=creating)
        if status >= 500 or status in (408, 425):
            raise ProviderTransient("status", f"HTTP {status}", retry_after(reply.headers))
        if status in (401, 403):
            raise JobFailed(f"fal refused the API key (HTTP {status})", "generator_rejected")
        if creating and status == 404:
            raise JobFailed(f"fal has no endpoint {model!r} (HTTP 404)", "generator_rejected")
        words = _detail(reply.document())
        shown = f"HTTP {status}: {quote(words)}" if words else f"HTTP {status}"
        failure = GenerationFailed if status == 422 else JobFailed
        raise failure(f"fal refused the request: {shown}", "generator_rejected")


def _detail(document: Any) -> str:
    """fal's error words: ``detail`` as text, or the first pydantic-style item's ``msg``."""
    if not isinstance(document, dict):
        return ""
    detail = document.get("detail")
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        message = detail[0].get("msg")
        return message if isinstance(message, str) else ""
    return ""
