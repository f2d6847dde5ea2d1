"""fal stand-in: the queue API of https://queue.fal.run, on a local port.

Point a client at ``base_url`` (it plays ``https://queue.fal.run``). What it models, and where
from (https://docs.fal.ai/model-endpoints/queue, https://fal.ai/docs/api-reference/inference-api,
fal-ai/fal projects/fal_client/src/fal_client/client.py, fal-ai/fal-js libs/client/src):

- ``POST /{model_id}[/{subpath}]`` (e.g. ``fal-ai/flux/schnell``) with the model input as the
  body answers ``{"status": "IN_QUEUE", "request_id", "response_url", "status_url",
  "cancel_url", "queue_position"}``. The three URLs name the app only, ``owner/app`` (plus a
  ``workflows``/``comfy`` namespace), never the subpath: "The status, result, and cancel URLs use
  only the owner and the app" (inference-api page; fal_client ``AppId.from_endpoint_id`` and
  ``from_request_id``). Calling them with the subpath answers 404 here.
- ``GET …/requests/{id}/status[?logs=1]``: ``IN_QUEUE`` (+ ``queue_position``), ``IN_PROGRESS``
  (+ ``logs``), ``COMPLETED`` (+ ``logs``, ``metrics.inference_time``; ``error``/``error_type``
  when it failed, as fal_client's ``Completed``); 202 until complete, then 200 (inference-api
  page). fal has no FAILED status: a failed request completes and its result is the error
  (TanStack/ai#396; fal-js types/common.ts).
- ``GET …/requests/{id}``: the model output, or the model's error with its status (422 with a
  ``detail`` list of ``{loc, msg, type, …}`` for bad input or a content-policy refusal:
  https://fal.ai/docs/documentation/model-apis/errors); 400 while not complete.
- ``PUT …/requests/{id}/cancel``: 202 ``{"status": "CANCELLATION_REQUESTED"}``, 400
  ``{"status": "ALREADY_COMPLETED"}``, 404 ``{"status": "NOT_FOUND"}`` (fal.ai/docs/inference-api/
  queue/cancel). A cancelled request completes with an error (the stand-in's choice: fal does
  not document what its status shows).
- ``Authorization: Key <key_id>:<key_secret>`` (fal_client auth.py ``AuthCredentials("Key", …)``);
  a wrong key is 401 ``{"detail": "No user found for Key ID and Secret"}`` (fal-ai/fal#1068), a
  key without ``:`` 401 "Invalid Key Authorization header format…" (observed).
- Request errors: ``{"detail", "error_type"}`` + ``X-Fal-Error-Type`` (503
  ``runner_scheduling_failure``, 504 ``request_timeout``: fal.ai/docs/documentation/model-apis/
  request-errors); a 502 from the ingress is an nginx page without ``x-fal-request-id`` (what
  fal_client's ``_is_ingress_error`` looks for). fal queues rather than refuses over its
  concurrency limit (docs: concurrency-limits), so ``queue:S`` is the usual "throttle"; a 429 on
  submit is modelled for the clients' retry path (fal_client ``RETRY_CODES``).
- Input: ``image_size`` a preset (fal-ai/fal projects/fal/src/fal/toolkit/image/image.py
  ``IMAGE_SIZE_PRESETS``) or ``{"width", "height"}``; output ``{"images": [{"url", "width",
  "height", "content_type"}], "timings", "seed", "has_nsfw_concepts", "prompt"}`` (fal-js
  types/endpoints.ts ``FluxDevInput``, ``unoOutput``). Files are served by this stand-in.

Fault switches: :mod:`devstack.providers.faults` (``[gen:…]`` in ``prompt``); ``nsfw`` sets
``has_nsfw_concepts``; ``fail[:TEXT]`` is a content-policy 422.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from devstack.providers.common import ProviderStandIn, prompt_seed, retry_after_headers
from devstack.providers.faults import FaultError, Faults

IMAGE_SIZE_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
APP_NAMESPACES = ("workflows", "comfy")  # fal_client client.py
_FORMATS = {"jpeg": "image/jpeg", "png": "image/png"}
_POLICY_URL = "https://docs.fal.ai/errors#content_policy_violation"
_NO_KEY = "Missing credentials: send 'Authorization: Key <key_id>:<key_secret>'"  # stand-in's text
_BAD_KEY_FORMAT = "Invalid Key Authorization header format. Expected '<key_id>:<key_secret>'."


@dataclass
class FalRequest:
    id: str
    app: str  # owner/app (with namespace): the part the status/result/cancel URLs use
    endpoint: str  # the full model id the request was submitted to
    input: dict[str, Any]
    prompt: str
    faults: Faults
    started: float = field(default_factory=time.monotonic)
    canceled_after: float | None = None
    polls: int = 0
    seed: int = field(default_factory=lambda: secrets.randbelow(2**31))
    output: dict[str, Any] | None = None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def status(self) -> str:
        if self.canceled_after is not None:
            return "COMPLETED"
        elapsed = self.elapsed()
        if elapsed < self.faults.queue:
            return "IN_QUEUE"
        if elapsed < self.faults.queue + self.faults.run:
            return "IN_PROGRESS"
        return "COMPLETED"


class FalStandIn(ProviderStandIn):
    name = "fal"

    def __init__(self, token: str | None = None) -> None:
        super().__init__(token or f"{uuid.uuid4()}:{secrets.token_hex(16)}")
        self.requests: dict[str, FalRequest] = {}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/{tail:.+}", self._submit)
        app.router.add_get("/{tail:.+}", self._read)
        app.router.add_put("/{tail:.+}", self._cancel)

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Key {self.token}"

    def reset(self) -> None:
        super().reset()
        self.requests.clear()

    # ----------------------------------------------------------------- endpoints

    async def _submit(self, request: web.Request) -> web.StreamResponse:
        endpoint = request.match_info["tail"].strip("/")
        try:
            body = await request.json()
        except ValueError:
            body = None
        payload = body if isinstance(body, dict) else {}
        prompt = str(payload.get("prompt") or "")
        record = self.record(request, "create", body, prompt, None)
        if (refused := self._auth_error(request)) is not None:
            return refused
        try:
            faults, attempt = self.creation_faults(prompt)
        except FaultError as exc:
            return _json(400, {"detail": str(exc)})
        if faults.throttles(attempt):
            wait = max(1, round(faults.throttle))
            headers = retry_after_headers(faults.throttle, faults.throttle_style)
            return _json(
                429, {"detail": f"Too many requests. Try again in {wait} seconds."}, headers
            )
        if (code := faults.create_error_for(attempt)) is not None:
            return _server_error(code)
        parts = endpoint.split("/")
        depth = 3 if parts[0] in APP_NAMESPACES else 2
        if len(parts) < depth:
            return _json(404, {"detail": "Application not found"})
        # The queue accepts any JSON body: the model checks it when it runs (the result says).
        job = FalRequest(
            str(uuid.uuid4()), "/".join(parts[:depth]), endpoint, payload, prompt, faults
        )
        self.requests[job.id] = job
        record.handle, record.created = job.id, True
        urls = self._urls(job)
        doc = {
            "status": "IN_QUEUE",
            "request_id": job.id,
            **urls,
            "queue_position": self._position(job),
        }
        return _json(200, doc, {"x-fal-request-id": job.id})

    async def _read(self, request: web.Request) -> web.StreamResponse:
        app, job_id, action = _split(request.match_info["tail"])
        job = self._find(app, job_id)
        kind = "poll" if action.startswith("status") else "result"
        self.record(request, kind if job_id else "other", None, job.prompt if job else None, job_id)
        if (refused := self._auth_error(request)) is not None:
            return refused
        if job is None or action not in ("", "status"):
            return _json(404, {"detail": "Request not found"})
        job.polls += 1
        if (code := self.poll_error_for(job.faults, job.polls)) is not None:
            return _server_error(code)
        if action == "status":
            return self._status(job, request.query.get("logs", "") in ("1", "true", "True"))
        if job.status() != "COMPLETED":
            return _json(400, {"detail": "Request is still in progress"})
        return self._result(job)

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        app, job_id, action = _split(request.match_info["tail"])
        job = self._find(app, job_id)
        self.record(request, "cancel", None, job.prompt if job else None, job_id)
        if (refused := self._auth_error(request)) is not None:
            return refused
        if job is None or action != "cancel":
            return _json(404, {"status": "NOT_FOUND"})
        if job.status() == "COMPLETED":
            return _json(400, {"status": "ALREADY_COMPLETED"})
        job.canceled_after = job.elapsed()
        return _json(202, {"status": "CANCELLATION_REQUESTED"})

    # ----------------------------------------------------------------- answers

    def _status(self, job: FalRequest, with_logs: bool) -> web.Response:
        status = job.status()
        doc: dict[str, Any] = {"status": status, "request_id": job.id, **self._urls(job)}
        if status == "IN_QUEUE":
            doc["queue_position"] = self._position(job)
            return _json(202, doc)
        logs = [
            {
                "message": f"Using seed {job.seed}",
                "level": "INFO",
                "source": "USER",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            },
        ]
        doc["logs"] = logs if with_logs else None
        if status == "IN_PROGRESS":
            return _json(202, doc)
        doc["metrics"] = {"inference_time": job.faults.run or 0.01}
        refusal = self._refusal(job)
        if refusal is not None:
            detail = refusal[1]["detail"]
            first = detail[0] if isinstance(detail, list) else refusal[1]
            doc["error"] = first["msg"] if isinstance(detail, list) else detail
            doc["error_type"] = first.get("type") or first.get("error_type")
        return _json(200, doc)

    def _result(self, job: FalRequest) -> web.Response:
        headers = {"x-fal-request-id": job.id}
        refusal = self._refusal(job)
        if refusal is not None:
            return _json(refusal[0], refusal[1], {**headers, "X-Fal-Retryable": "false"})
        if job.output is None:
            job.output = self._output(job)
        return _json(200, job.output, headers)

    def _output(self, job: FalRequest) -> dict[str, Any]:
        size = job.input.get("image_size", "landscape_4_3")
        width, height = (
            IMAGE_SIZE_PRESETS[size] if isinstance(size, str) else (size["width"], size["height"])
        )
        fmt = job.input.get("output_format", "jpeg")
        count = job.input.get("num_images", 1)
        seed = prompt_seed(job.prompt) or job.id
        images = [
            {
                "url": self.add_file(
                    job.prompt,
                    f"{seed}|{i}",
                    width,
                    height,
                    fmt,
                    f"image-{i}.{'jpg' if fmt == 'jpeg' else fmt}",
                ),
                "width": width,
                "height": height,
                "content_type": _FORMATS[fmt],
            }
            for i in range(count)
        ]
        return {
            "images": images,
            "timings": {"inference": job.faults.run or 0.01},
            "seed": job.input.get("seed", job.seed),
            "has_nsfw_concepts": [job.faults.nsfw] * count,
            "prompt": job.prompt,
        }

    def _refusal(self, job: FalRequest) -> tuple[int, dict[str, Any]] | None:
        """How the model run ended, when it did not produce images: (status, result body)."""
        if job.canceled_after is not None:
            return 400, {"detail": "Request was cancelled", "error_type": "request_cancelled"}
        problems = _validate(job.input)
        if not problems and job.faults.fail is not None:
            flagged = job.faults.fail or "The content was flagged by a content checker."
            problems = [
                {
                    "loc": ["body", "prompt"],
                    "msg": flagged,
                    "type": "content_policy_violation",
                    "url": _POLICY_URL,
                    "input": job.prompt,
                }
            ]
        return (422, {"detail": problems}) if problems else None

    # ----------------------------------------------------------------- helpers

    def _auth_error(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if self.authorized(request):
            return None
        if not header.startswith("Key "):
            return _json(401, {"detail": _NO_KEY})
        if ":" not in header[4:]:
            return _json(401, {"detail": _BAD_KEY_FORMAT})
        return _json(401, {"detail": "No user found for Key ID and Secret"})

    def _urls(self, job: FalRequest) -> dict[str, str]:
        base = f"{self.base_url}/{job.app}/requests/{job.id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def _position(self, job: FalRequest) -> int:
        """Requests ahead of ``job`` that are still waiting for a runner."""
        return sum(
            1
            for other in self.requests.values()
            if other.started < job.started and other.status() == "IN_QUEUE"
        )

    def _find(self, app: str, job_id: str) -> FalRequest | None:
        job = self.requests.get(job_id)
        if job is None or job.app != app:
            return None
        if job.faults.expire is not None and job.elapsed() >= job.faults.expire:
            # fal keeps a result 1 hour (6 minutes from 10 KB): docs, inference-api/queue/result.
            return None
        return job


def _split(tail: str) -> tuple[str, str, str]:
    """(app, request id, what follows) of ``{app}/requests/{id}[/status|/cancel]``."""
    parts = tail.strip("/").split("/")
    if "requests" not in parts:
        return "/".join(parts), "", ""
    at = parts.index("requests")
    rest = parts[at + 1 :]
    return "/".join(parts[:at]), rest[0] if rest else "", "/".join(rest[1:])


def _validate(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The model's input check (fal-js FluxDevInput; pydantic v2 ``detail`` items)."""
    problems: list[dict[str, Any]] = []
    prompt = payload.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        problems.append({"loc": ["body", "prompt"], "msg": "Field required", "type": "missing"})
    size = payload.get("image_size", "landscape_4_3")
    ok_dict = isinstance(size, dict) and all(
        isinstance(size.get(k), int) and 0 < size[k] <= 14142 for k in ("width", "height")
    )
    if not (ok_dict or (isinstance(size, str) and size in IMAGE_SIZE_PRESETS)):
        listed = ", ".join(f"'{p}'" for p in IMAGE_SIZE_PRESETS)
        problems.append(
            {
                "loc": ["body", "image_size"],
                "msg": f"Input should be a valid ImageSize or one of {listed}",
                "type": "value_error",
                "input": size,
            }
        )
    count = payload.get("num_images", 1)
    if not isinstance(count, int) or not 1 <= count <= 4:
        problems.append(
            {
                "loc": ["body", "num_images"],
                "msg": "Input should be between 1 and 4",
                "type": "value_error",
                "input": count,
            }
        )
    if payload.get("output_format", "jpeg") not in _FORMATS:
        problems.append(
            {
                "loc": ["body", "output_format"],
                "msg": "Input should be 'jpeg' or 'png'",
                "type": "literal_error",
                "input": payload.get("output_format"),
            }
        )
    return problems


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(doc, status=status, headers=headers)


def _server_error(code: int) -> web.Response:
    request_id = {"x-fal-request-id": str(uuid.uuid4())}
    if code == 429:
        return _json(
            429, {"detail": "Too many requests. Try again in 1 seconds."}, {"Retry-After": "1"}
        )
    if code == 502:
        page = "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>"
        return web.Response(status=502, text=page, content_type="text/html")
    kinds = {
        503: ("No runner could be allocated to handle the request.", "runner_scheduling_failure"),
        504: ("Request timed out", "request_timeout"),
    }
    if code in kinds:
        detail, kind = kinds[code]
        return _json(
            code, {"detail": detail, "error_type": kind}, {**request_id, "X-Fal-Error-Type": kind}
        )
    return _json(code, {"detail": "Internal Server Error"}, request_id)
