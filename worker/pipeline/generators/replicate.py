"""Replicate's predictions API (``GENERATOR_KIND=replicate``).

``GENERATOR_URL`` is the API host (default ``https://api.replicate.com``; the paths carry
``/v1``), ``GENERATOR_TOKEN`` is sent as ``Authorization: Bearer …``. The job's ``model``
(default ``GENERATOR_DEFAULT_MODEL``, ``black-forest-labs/flux-schnell``) is ``owner/name``
(an official model: ``POST /v1/models/{owner}/{name}/predictions``), ``owner/name:version`` or a
bare version id (``POST /v1/predictions``).

The creation is asynchronous on purpose (no ``Prefer: wait``): its answer names the prediction
at once, and that id is the handle stored before waiting. Then ``GET /v1/predictions/{id}``
every 0.5 s, slowing to every 2 s: ``starting``/``processing`` wait, ``succeeded`` gives the
output URL (downloaded under the download rules: Replicate's files are WebP by default, which the
worker takes), ``failed`` fails the job with the model's own words (a safety filter's "NSFW
content detected"), ``canceled``/``aborted`` and a 404 (the prediction is gone) start a new one,
as does a ``succeeded`` one whose output was deleted (``data_removed``: Replicate keeps API
outputs one hour). Cancel: ``POST /v1/predictions/{id}/cancel``.

Aspect ratio → input (each model's ``predict.py`` inputs):

| model | input |
| --- | --- |
| names containing ``sdxl`` or ``stable-diffusion`` | ``width``/``height``: the SDXL buckets (pipeline/images.py) |
| ``black-forest-labs/flux-1.1-pro`` | ``aspect_ratio``, except 21:9 and 9:21 it lacks: ``custom`` 1440×608 / 608×1440 |
| any other (Flux and most current models) | ``aspect_ratio`` as is: Flux takes all nine ratios |

Errors are RFC 7807 problem details: 422 (bad input), 404 (no such model), 402 (billing) and
other 4xx fail the job quoting Replicate's ``title``/``detail`` (401/403: not quoted, they are
about the token); 429 is throttling (``Retry-After``, or the body's "resets in ~30s"); 5xx are
transient.
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

MODEL_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(?::[0-9a-f]{6,128})?$")
VERSION_RE = re.compile(r"^[0-9a-f]{32,128}$")
PREDICTION_ID_RE = re.compile(r"^[A-Za-z0-9]{1,64}$")
SIZE_INPUT_RE = re.compile(r"sdxl|stable-diffusion", re.IGNORECASE)
# black-forest-labs/flux-1.1-pro's aspect_ratio enum lacks these; "custom" takes width/height
# (256-1440, multiples of 32).
PRO_CUSTOM = {"21:9": (1440, 608), "9:21": (608, 1440)}
FIRST_POLL_SECONDS, MAX_POLL_SECONDS = 0.5, 2.0


def replicate_input(model: str, prompt: str, aspect_ratio: str) -> dict[str, Any]:
    """The prediction's ``input`` for ``model`` (see the table in the module docstring)."""
    name = model.split(":", 1)[0]
    if SIZE_INPUT_RE.search(name):
        width, height = DIMENSIONS[aspect_ratio]
        return {"prompt": prompt, "width": width, "height": height}
    if name == "black-forest-labs/flux-1.1-pro" and aspect_ratio in PRO_CUSTOM:
        width, height = PRO_CUSTOM[aspect_ratio]
        return {"prompt": prompt, "aspect_ratio": "custom", "width": width, "height": height}
    return {"prompt": prompt, "aspect_ratio": aspect_ratio}


class ReplicateProvider:
    kind = "replicate"
    can_cancel = True

    def __init__(self, settings: Settings, downloader: ImageDownloader) -> None:
        base = (settings.generator_url or "").rstrip("/")
        self._base = base.removesuffix("/v1")  # either spelling of the API base
        token = settings.generator_token.get_secret_value()
        redact.add([token])
        self._api = ApiClient(
            settings, self.kind, {"Authorization": f"Bearer {token}"} if token else {}
        )
        self._downloader = downloader

    async def aclose(self) -> None:
        await self._api.aclose()

    def check(self, request: GenerationRequest) -> None:
        model = request.model or ""
        if not (MODEL_RE.match(model) or VERSION_RE.match(model)):
            shown = model if len(model) <= 80 else model[:80] + "…"
            raise JobFailed(
                f"model {shown!r} is not a Replicate model (owner/name, owner/name:version or a "
                "version id)",
                "bad_input",
            )

    def accepts(self, handle: Handle) -> bool:
        return bool(PREDICTION_ID_RE.match(handle.id))

    def poll_interval(self, polls: int) -> float:
        return min(FIRST_POLL_SECONDS * 1.5**polls, MAX_POLL_SECONDS)

    def _prediction_url(self, prediction_id: str) -> str:
        # Built from our own base, never taken from an answer or the row: the token only ever
        # goes to GENERATOR_URL.
        return f"{self._base}/v1/predictions/{prediction_id}"

    async def start(self, request: GenerationRequest) -> Handle | Finished:
        model = request.model or ""
        payload: dict[str, Any] = {
            "input": replicate_input(model, request.prompt, request.aspect_ratio)
        }
        if MODEL_RE.match(model) and ":" not in model:
            url = f"{self._base}/v1/models/{model}/predictions"
        else:
            url, payload["version"] = f"{self._base}/v1/predictions", model
        reply = await self._api.call("POST", url, what="create prediction", json_body=payload)
        if not reply.ok:
            self._refused(reply, creating=True, model=model)
        document = reply.document()
        prediction_id = document.get("id") if isinstance(document, dict) else None
        if not isinstance(prediction_id, str) or not PREDICTION_ID_RE.match(prediction_id):
            raise JobFailed("Replicate answered without a prediction id", "generator_bad_output")
        return Handle(self.kind, prediction_id, self._prediction_url(prediction_id))

    async def poll(self, handle: Handle, request: GenerationRequest) -> Pending | Finished:
        reply = await self._api.call(
            "GET", self._prediction_url(handle.id), what="get prediction", quiet=True
        )
        if reply.status == 404:
            raise HandleGone("Replicate no longer knows the prediction (HTTP 404)")
        if not reply.ok:
            self._refused(reply, creating=False, model=request.model or "")
        document = reply.document()
        if not isinstance(document, dict):
            raise ProviderTransient("status", "Replicate answered a prediction that is not JSON")
        status = document.get("status")
        output_url = first_url(document.get("output"))
        if status == "succeeded":
            if output_url is not None:
                return Finished(output_url)
            if document.get("data_removed"):
                raise HandleGone("its output was deleted (data_removed)")
            raise GenerationFailed(
                "Replicate prediction succeeded without an image URL", "generator_bad_output"
            )
        if status == "failed":
            error = document.get("error")
            reason = quote(error) if isinstance(error, str) and error.strip() else "no reason given"
            raise GenerationFailed(f"Replicate prediction failed: {reason}", "generator_rejected")
        if status in ("canceled", "aborted"):
            raise HandleGone(f"the prediction was {status}")
        if status == "processing" and output_url is not None:
            return Finished(output_url)  # files ready before the status says so (sync-mode docs)
        return Pending()

    async def cancel(self, handle: Handle) -> None:
        await self._api.call("POST", f"{self._prediction_url(handle.id)}/cancel", what="cancel")

    async def result(self, finished: Finished, request: GenerationRequest) -> GeneratedImage:
        return await download(self._downloader, finished.output)

    def _refused(self, reply: Reply, *, creating: bool, model: str) -> None:
        status = reply.status
        document = reply.document()
        words = ""
        if isinstance(document, dict):
            title, detail = document.get("title"), document.get("detail")
            words = ": ".join(
                str(part).strip() for part in (title, detail) if isinstance(part, str) and part
            )
        if status == 429:
            raise Throttled("HTTP 429", retry_after(reply.headers, reply.body), creation=creating)
        if status >= 500 or status in (408, 425):
            raise ProviderTransient("status", f"HTTP {status}", retry_after(reply.headers))
        if status in (401, 403):
            raise JobFailed(
                f"Replicate refused the API token (HTTP {status})", "generator_rejected"
            )
        if creating and status == 404:
            raise JobFailed(f"Replicate has no model {model!r} (HTTP 404)", "generator_rejected")
        shown = f"HTTP {status}: {quote(words)}" if words else f"HTTP {status}"
        raise JobFailed(f"Replicate refused the request: {shown}", "generator_rejected")
