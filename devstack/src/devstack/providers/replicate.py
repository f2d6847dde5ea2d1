"""Replicate stand-in: the predictions API of https://api.replicate.com, on a local port.

Point a client at ``base_url`` (it plays ``https://api.replicate.com``; the paths carry ``/v1``,
as in replicate-python's ``Client(base_url=…)``). What it models, and where from:

- ``POST /v1/predictions`` ``{"version": "<id>" | "owner/name" | "owner/name:<id>", "input": {…}}``
  and ``POST /v1/models/{owner}/{name}/predictions`` ``{"input": {…}}``; ``GET
  /v1/predictions/{id}``; ``POST /v1/predictions/{id}/cancel`` — Replicate's OpenAPI spec
  (https://api.replicate.com/openapi.json, mirrored in tryAGI/Replicate
  src/libs/Replicate/openapi.yaml) and replicate/replicate-python replicate/prediction.py.
- The prediction object (``id, model, version, input, logs, output, data_removed, error, status,
  created_at, started_at, completed_at, urls{get,cancel,web}, metrics, source``): the same spec's
  ``schemas_prediction_response`` and replicate-python tests/cassettes/*.yaml. ``status`` goes
  ``starting`` → ``processing`` → ``succeeded``/``failed``/``canceled`` (``aborted`` for a
  ``Cancel-After`` deadline passed before it started: changelog 2025-10-16-prediction-deadlines).
- ``Prefer: wait`` / ``wait=N`` (1-60) holds the creation up to N s (60 for plain ``wait``) and
  answers whatever the prediction is then, with ``Preference-Applied`` and ``Location``
  (https://replicate.com/docs/topics/predictions/create-a-prediction#sync-mode; cassette
  test_predictions_create_blocking[True-10].yaml). 201 when it holds the outputs, 202 when not
  (the OpenAPI spec's two responses).
- Errors are RFC 7807 problem details, ``application/problem+json`` (replicate-python
  replicate/exceptions.py ``ReplicateError``): 401 ``{"title": "Unauthenticated", "detail":
  "You did not pass a valid authentication token", "status": 401}`` (cassette
  run__invalid-token.yaml); 422 "Input validation failed" and "Invalid version or not permitted";
  429 ``{"detail": "Request was throttled. Your rate limit resets in ~30s."}``
  (https://replicate.com/docs/topics/predictions/rate-limits), which current responses extend
  with ``"status": 429, "retry_after": N`` (observed: nodetool-ai/nodetool#5196); 404 for a
  prediction that does not exist (any more).
- A model failure is not an HTTP error: 200, ``status: "failed"``, ``error`` text (the NSFW texts
  are the models' own, see :mod:`replicate_spec`).
- Output files are real images served by this stand-in at ``/files/…/out-0.webp``, as
  replicate.delivery serves them.

Fault switches: :mod:`devstack.providers.faults` (``[gen:…]`` in ``input.prompt``).
"""

from __future__ import annotations

import base64
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from devstack.providers.common import ProviderStandIn, iso, prompt_seed
from devstack.providers.faults import FaultError, Faults
from devstack.providers.replicate_spec import (
    MODELS,
    Model,
    cancel_after,
    generic_model,
    not_found,
    output_plan,
    prefer_wait,
    problem,
    required,
    server_error,
    throttled,
    unauthenticated,
    validate,
    validation_body,
)

_TOP_LEVEL = {"input", "webhook", "webhook_completed", "webhook_events_filter", "stream"}
_EXTENSIONS = {"webp": "webp", "jpg": "jpeg", "png": "png"}


@dataclass
class Prediction:
    id: str
    model: Model
    version: str
    input: dict[str, Any]
    prompt: str
    faults: Faults
    created: float  # epoch
    started: float  # monotonic
    files: list[str]
    deadline: float | None = None  # Cancel-After, seconds from creation
    canceled_after: float | None = None  # seconds from creation
    polls: int = 0
    seed: int = field(default_factory=lambda: secrets.randbelow(65536))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def state(self) -> tuple[str, float | None]:
        """(status, seconds from creation at which it ended, or None while running)."""
        queue, run = self.faults.queue, self.faults.run
        elapsed = self.elapsed()
        stops = [t for t in (self.canceled_after, self.deadline) if t is not None]
        stop = min(stops) if stops else None
        if stop is not None and stop <= elapsed and stop < queue + run:
            user = self.canceled_after is not None and stop == self.canceled_after
            return ("aborted" if stop < queue and not user else "canceled"), stop
        if elapsed < queue:
            return "starting", None
        if elapsed < queue + run:
            return "processing", None
        failed = self.faults.fail is not None or self.faults.nsfw
        return ("failed" if failed else "succeeded"), queue + run

    def error(self) -> str | None:
        if self.faults.fail:
            return self.faults.fail
        if self.faults.fail is not None or self.faults.nsfw:
            return self.model.nsfw_text
        return None


class ReplicateStandIn(ProviderStandIn):
    name = "replicate"

    def __init__(self, token: str | None = None) -> None:
        super().__init__(token or "r8_" + secrets.token_urlsafe(27))
        self.predictions: dict[str, Prediction] = {}
        self.versions: dict[str, str] = {v: m.ref for m in MODELS.values() for v in m.versions}

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/predictions", self._create)
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)

    def authorized(self, request: web.Request) -> bool:
        # OpenAPI securitySchemes: "Bearer <token>"; the older "Token <token>" still works (the
        # same spec's files.delete example uses it).
        header = request.headers.get("Authorization", "")
        return header in (f"Bearer {self.token}", f"Token {self.token}")

    def reset(self) -> None:
        super().reset()
        self.predictions.clear()

    # ----------------------------------------------------------------- endpoints

    async def _create(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = None
        payload = body.get("input") if isinstance(body, dict) else None
        prompt = str(payload.get("prompt") or "") if isinstance(payload, dict) else ""
        record = self.record(request, "create", body, prompt, None)
        if not record.authorized:
            return unauthenticated()
        try:
            faults, attempt = self.creation_faults(prompt)
        except FaultError as exc:
            return problem(400, "Bad request", str(exc))
        if faults.throttles(attempt):
            return throttled(faults.throttle, faults.throttle_style)
        if (code := faults.create_error_for(attempt)) is not None:
            return server_error(code)

        model, version, problems = self._resolve(request, body)
        if model is None:
            return problem(
                422,
                "Invalid version or not permitted",
                "The specified version does not exist (or perhaps you don't have permission to "
                "use it?)",
            )
        if problems or not isinstance(payload, dict):
            return _json(422, validation_body(problems or [required("input")]))
        problems = validate(model, payload)
        if problems:
            return _json(422, validation_body(problems))

        prediction = self._new_prediction(request, model, version, payload, prompt, faults)
        record.handle, record.created = prediction.id, True
        wait = prefer_wait(request.headers.get("Prefer"))
        headers = {"Location": self._url(prediction.id)}
        if wait is None:
            return _json(201, self._render(prediction), headers)
        headers["Preference-Applied"] = f"wait={wait}"
        deadline = time.monotonic() + wait
        while not self._has_outputs(prediction) and time.monotonic() < deadline:
            if not await self.wait(request, min(0.05, deadline - time.monotonic())):
                break
        status = 201 if self._has_outputs(prediction) else 202
        return _json(status, self._render(prediction), headers)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        prediction = self._find(request.match_info["id"])
        self.record(
            request,
            "poll",
            None,
            prediction.prompt if prediction else None,
            request.match_info["id"],
        )
        if not self.authorized(request):
            return unauthenticated()
        if prediction is None:
            return not_found()
        prediction.polls += 1
        if (code := self.poll_error_for(prediction.faults, prediction.polls)) is not None:
            return server_error(code)
        return _json(200, self._render(prediction))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        prediction = self._find(request.match_info["id"])
        self.record(
            request,
            "cancel",
            None,
            prediction.prompt if prediction else None,
            request.match_info["id"],
        )
        if not self.authorized(request):
            return unauthenticated()
        if prediction is None:
            return not_found()
        status, _ = prediction.state()
        if status in ("starting", "processing"):
            prediction.canceled_after = prediction.elapsed()
        # A prediction that already ended is answered as it is (the cancel changes nothing).
        return _json(200, self._render(prediction))

    # ----------------------------------------------------------------- helpers

    def _resolve(
        self, request: web.Request, body: Any
    ) -> tuple[Model | None, str, list[dict[str, str]]]:
        """The model and version a creation names, or (None, …) for an unknown version."""
        if not isinstance(body, dict):
            return generic_model("unknown/unknown"), "", [required("input")]
        allowed = _TOP_LEVEL if "owner" in request.match_info else {*_TOP_LEVEL, "version"}
        extra = sorted(set(body) - allowed)
        problems = [
            {
                "type": "additional_property_not_allowed",
                "field": "",
                "description": f"Additional property {name} is not allowed",
            }
            for name in extra
        ]
        if "owner" in request.match_info:
            ref = f"{request.match_info['owner']}/{request.match_info['name']}"
            return MODELS.get(ref) or generic_model(ref), "hidden", problems
        version = body.get("version")
        if not isinstance(version, str) or not version:
            return generic_model("unknown/unknown"), "", [*problems, required("version")]
        ref, _, version_id = version.partition(":")
        if "/" not in ref:  # a bare version id
            ref, version_id = self.versions.get(version, ""), version
            if not ref:
                return None, "", problems
        elif not version_id and not (MODELS.get(ref) or generic_model(ref)).official:
            return None, "", problems  # a community model needs its version id
        return MODELS.get(ref) or generic_model(ref), version_id or "hidden", problems

    def _new_prediction(
        self,
        request: web.Request,
        model: Model,
        version: str,
        payload: dict[str, Any],
        prompt: str,
        faults: Faults,
    ) -> Prediction:
        # Replicate ids: 26 characters of lowercase base32 (cassettes: "vgcm4plb7tgzlyznry5d5jkgvu").
        prediction_id = base64.b32encode(secrets.token_bytes(20)).decode().lower()[:26]
        width, height, fmt, count = output_plan(model, payload)
        seed = prompt_seed(prompt) or prediction_id
        files = [
            self.add_file(
                prompt, f"{seed}|{i}", width, height, _EXTENSIONS.get(fmt, "webp"), f"out-{i}.{fmt}"
            )
            for i in range(1 if model.output == "string" else count)
        ]
        prediction = Prediction(
            prediction_id,
            model,
            version,
            payload,
            prompt,
            faults,
            time.time(),
            time.monotonic(),
            files,
            cancel_after(request.headers.get("Cancel-After")),
        )
        self.predictions[prediction_id] = prediction
        return prediction

    def _find(self, prediction_id: str) -> Prediction | None:
        prediction = self.predictions.get(prediction_id)
        if prediction is None:
            return None
        expire = prediction.faults.expire
        if expire is not None and prediction.elapsed() >= expire:
            return None  # expired handle: Replicate no longer knows it
        return prediction

    def _has_outputs(self, prediction: Prediction) -> bool:
        status, _ = prediction.state()
        return status not in ("starting", "processing") or (
            status == "processing" and prediction.faults.early_output
        )

    def _url(self, prediction_id: str) -> str:
        return f"{self.base_url}/v1/predictions/{prediction_id}"

    def _render(self, p: Prediction) -> dict[str, Any]:
        status, ended = p.state()
        queue, run = p.faults.queue, p.faults.run
        started = p.elapsed() >= queue and status != "aborted"
        output: Any = None
        if status == "succeeded" or (status == "processing" and p.faults.early_output):
            output = p.files[0] if p.model.output == "string" else list(p.files)
        removed = status == "succeeded" and p.faults.data_removed
        if removed:
            output = None
        doc: dict[str, Any] = {
            "id": p.id,
            "model": p.model.ref,
            "version": p.version,
            "input": None if removed else p.input,
            "logs": _logs(p, status, run),
            "output": output,
            "data_removed": removed,
            "error": p.error() if status == "failed" else None,
            "status": status,
            "created_at": iso(p.created),
            "urls": {
                "get": self._url(p.id),
                "cancel": f"{self._url(p.id)}/cancel",
                "web": f"https://replicate.com/p/{p.id}",
            },
            "source": "api",
        }
        if started:
            doc["started_at"] = iso(p.created + queue)
        if ended is not None:
            doc["completed_at"] = iso(p.created + ended)
            doc["metrics"] = {
                "predict_time": round(max(0.0, ended - queue), 6),
                "total_time": round(ended, 6),
            }
        if p.deadline is not None:
            doc["deadline"] = iso(p.created + p.deadline)
        return doc


def _logs(p: Prediction, status: str, run: float) -> str:
    """cog-style logs; the tqdm lines are what replicate-python's ``Prediction.progress`` reads."""
    if status in ("starting", "aborted"):
        return ""
    steps = 4
    done = (
        steps
        if status != "processing"
        else int(steps * min(1.0, (p.elapsed() - p.faults.queue) / max(run, 1e-9)))
    )
    lines = [f"Using seed: {p.seed}"]
    for step in range(1, done + 1):
        bar = "█" * (10 * step // steps)
        lines.append(f"{100 * step // steps:3d}%|{bar:<10}| {step}/{steps} [00:00<00:00, 8.00it/s]")
    if status == "failed":
        lines.append(p.error() or "")
    return "\n".join(lines) + "\n"


def _json(status: int, doc: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(doc, status=status, headers=headers)
