"""OpenAI stand-in: the Images API's ``POST /v1/images/generations``, on a local port.

Point a client at ``base_url`` + ``/v1`` (it plays ``https://api.openai.com/v1``, as in
openai-python's ``AsyncOpenAI(base_url=…)``). The call is synchronous: the image comes back in
the answer to the one request, so there is no handle to store, poll or cancel (a worker that
times out and retries pays again; the worker can only avoid that by not retrying blindly).

What it models, and where from:

- The request: ``prompt``, ``model`` (``gpt-image-1``, ``gpt-image-1-mini``, ``gpt-image-1.5``,
  ``gpt-image-2``, ``dall-e-3``, ``dall-e-2``; default ``dall-e-2``), ``n`` (1-10, ``dall-e-3``
  only 1), ``size`` (per model), ``response_format`` (``url``/``b64_json``, DALL·E only: the GPT
  image models refuse it and always answer base64), ``output_format`` (GPT image only),
  ``quality``, ``style`` — openai/openai-python src/openai/resources/images.py (``generate``).
- The answer ``{"created", "data": [{"b64_json"} | {"url"}, "revised_prompt"?], "size"?,
  "quality"?, "output_format"?, "background"?, "usage"?}`` — src/openai/types/images_response.py
  and types/image.py. DALL·E URLs point at this stand-in (the real ones live 60 minutes).
- Errors ``{"error": {"message", "type", "param", "code"}}`` with the status the error-codes
  guide gives (https://developers.openai.com/docs/guides/error-codes): 400 ``invalid_value`` for
  a size the model does not take ("Invalid value: '512x512'. Supported values are: …", observed
  verbatim in many projects), 400 ``unknown_parameter`` for ``response_format`` on GPT image
  models, 400 safety refusals (``moderation_blocked``, type ``image_generation_user_error``, for
  GPT image models; ``content_policy_violation`` for DALL·E), 401 ``invalid_api_key``, 429
  ``rate_limit_exceeded`` with ``retry-after`` and the ``x-ratelimit-*`` headers
  (https://platform.openai.com/docs/guides/rate-limits) or ``insufficient_quota``, 500
  ``server_error``, 503 overloaded. Every answer carries ``x-request-id``.

Fault switches: :mod:`devstack.providers.faults` (``[gen:…]`` in ``prompt``); ``queue``/``run``
delay the answer, ``fail``/``nsfw`` are the safety refusal, handle faults do not apply.
"""

from __future__ import annotations

import asyncio
import base64
import secrets
import time
from typing import Any

from aiohttp import web

from devstack.generator import render_image
from devstack.providers.common import ProviderStandIn, prompt_seed, retry_after_headers
from devstack.providers.faults import FaultError

GPT_IMAGE_SIZES = ("1024x1024", "1536x1024", "1024x1536", "auto")
SIZES: dict[str, tuple[str, ...]] = {
    "gpt-image-1": GPT_IMAGE_SIZES,
    "gpt-image-1-mini": GPT_IMAGE_SIZES,
    "gpt-image-1.5": GPT_IMAGE_SIZES,
    "gpt-image-2": GPT_IMAGE_SIZES,  # and custom WxH, see _custom_size_ok
    "dall-e-3": ("1024x1024", "1792x1024", "1024x1792"),
    "dall-e-2": ("256x256", "512x512", "1024x1024"),
}
_KNOWN_PARAMS = {
    *("prompt", "model", "n", "size", "quality", "response_format", "style", "user"),
    *("background", "moderation", "output_format", "output_compression", "stream"),
    "partial_images",
}
_SAFETY_GPT = (
    "Your request was rejected by the safety system. If you believe this is an error, contact "
    "us at help.openai.com and include the request ID {request_id}."
)
_SAFETY_DALLE = (
    "Your request was rejected as a result of our safety system. Your prompt may contain text "
    "that is not allowed by our safety system."
)


class OpenAIStandIn(ProviderStandIn):
    name = "openai"

    def __init__(self, token: str | None = None) -> None:
        super().__init__(token or "sk-proj-" + secrets.token_urlsafe(36))

    @property
    def api_base(self) -> str:
        """What openai-python calls ``base_url`` (and the worker's ``GENERATOR_URL``)."""
        return f"{self.base_url}/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/images/generations", self._generate)

    def authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        request_id = "req_" + secrets.token_hex(16)
        try:
            body = await request.json()
        except ValueError:
            body = None
        prompt = str(body.get("prompt") or "") if isinstance(body, dict) else ""
        record = self.record(request, "create", body, prompt, request_id)
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            return _error(request_id, 401, _NO_KEY, "invalid_request_error", None, None)
        if not record.authorized:
            shown = f"{header[7:10]}***{header[-4:]}" if len(header) > 14 else "***"
            message = (
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys."
            )
            return _error(
                request_id, 401, message, "invalid_request_error", None, "invalid_api_key"
            )
        try:
            faults, attempt = self.creation_faults(prompt)
        except FaultError as exc:
            return _error(request_id, 400, str(exc), "invalid_request_error", None, None)
        model = body.get("model") if isinstance(body, dict) else None
        model = model if isinstance(model, str) else "dall-e-2"
        if faults.quota:
            return _error(request_id, 429, _QUOTA, "insufficient_quota", None, "insufficient_quota")
        if faults.throttles(attempt):
            return _throttled(request_id, model, faults.throttle, faults.throttle_style)
        if (code := faults.create_error_for(attempt)) is not None:
            return _server_error(request_id, code, model)
        problem = _check(body, model)
        if problem is not None:
            message, param, code = problem
            return _error(request_id, 400, message, "invalid_request_error", param, code)

        # The generation itself: the connection stays open while the model runs.
        if not await self.wait(request, faults.queue + faults.run):
            return _server_error(request_id, 503, model)
        record.created = True  # the request reached the model (a refusal below comes from it)
        if faults.fail is not None or faults.nsfw:
            if model.startswith("gpt-image"):
                message = faults.fail or _SAFETY_GPT.format(request_id=request_id)
                return _error(
                    request_id,
                    400,
                    message,
                    "image_generation_user_error",
                    None,
                    "moderation_blocked",
                )
            message = faults.fail or _SAFETY_DALLE
            return _error(
                request_id, 400, message, "invalid_request_error", None, "content_policy_violation"
            )
        return web.json_response(
            await self._answer(body, model, prompt, request_id), headers=_headers(request_id)
        )

    async def _answer(
        self, body: dict[str, Any], model: str, prompt: str, request_id: str
    ) -> dict[str, Any]:
        size = body.get("size") or "1024x1024"
        if size == "auto":
            size = "1024x1024"
        width, height = (int(v) for v in size.split("x"))
        gpt = model.startswith("gpt-image")
        fmt = (body.get("output_format") or "png") if gpt else "png"
        n = body.get("n") or 1
        seed = prompt_seed(prompt) or request_id
        data: list[dict[str, Any]] = []
        for i in range(n):
            item: dict[str, Any] = {}
            if gpt or body.get("response_format") == "b64_json":
                image = await asyncio.to_thread(render_image, f"{seed}|{i}", width, height, fmt)
                item["b64_json"] = base64.b64encode(image).decode()
            else:
                item["url"] = self.add_file(prompt, f"{seed}|{i}", width, height, fmt, "img.png")
            if model == "dall-e-3":
                item["revised_prompt"] = f"A detailed rendering of: {prompt_seed(prompt)}"
            data.append(item)
        answer: dict[str, Any] = {"created": int(time.time()), "data": data}
        if gpt:
            answer.update(
                {
                    "background": "opaque",
                    "output_format": fmt,
                    "quality": body.get("quality")
                    if body.get("quality") in ("low", "medium", "high")
                    else "medium",
                    "size": size,
                    "usage": {
                        "input_tokens": len(prompt.split()) + 1,
                        "input_tokens_details": {
                            "image_tokens": 0,
                            "text_tokens": len(prompt.split()) + 1,
                        },
                        "output_tokens": 1056 * n,
                        "total_tokens": 1056 * n + len(prompt.split()) + 1,
                    },
                }
            )
        return answer


def _check(body: Any, model: str) -> tuple[str, str | None, str | None] | None:
    """(message, param, code) of the 400 the request earns, or None."""
    if not isinstance(body, dict):
        return "We could not parse the JSON body of your request.", None, None
    for name in body:
        if name not in _KNOWN_PARAMS:
            return f"Unknown parameter: '{name}'.", name, "unknown_parameter"
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
    if model not in SIZES:
        supported = ", ".join(f"'{m}'" for m in SIZES)
        return (
            f"Invalid value: '{model}'. Supported values are: {supported}.",
            "model",
            "invalid_value",
        )
    gpt = model.startswith("gpt-image")
    if gpt and "response_format" in body:
        return "Unknown parameter: 'response_format'.", "response_format", "unknown_parameter"
    if not gpt and body.get("response_format", "url") not in ("url", "b64_json"):
        value = body.get("response_format")
        return (
            f"Invalid value: '{value}'. Supported values are: 'url' and 'b64_json'.",
            "response_format",
            "invalid_value",
        )
    n = body.get("n", 1)
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 10:
        return (
            f"Invalid value for 'n': {n}. Expected an integer between 1 and 10.",
            "n",
            "invalid_value",
        )
    if model == "dall-e-3" and n != 1:
        return "Invalid value for 'n': dall-e-3 only supports n=1.", "n", "invalid_value"
    size = body.get("size", "1024x1024")
    allowed = SIZES[model]
    if size not in allowed and not (model == "gpt-image-2" and _custom_size_ok(size)):
        listed = ", ".join(f"'{s}'" for s in allowed[:-1]) + f", and '{allowed[-1]}'"
        return f"Invalid value: '{size}'. Supported values are: {listed}.", "size", "invalid_value"
    if gpt and body.get("output_format", "png") not in ("png", "jpeg", "webp"):
        value = body.get("output_format")
        return (
            f"Invalid value: '{value}'. Supported values are: 'png', 'jpeg', and 'webp'.",
            "output_format",
            "invalid_value",
        )
    return None


def _custom_size_ok(size: Any) -> bool:
    """gpt-image-2's custom WxH: both divisible by 16, ratio within 1:3..3:1, at most 3840x2160
    (openai-python resources/images.py, ``size``)."""
    try:
        width, height = (int(v) for v in str(size).split("x"))
    except ValueError:
        return False
    return (
        width % 16 == 0
        and height % 16 == 0
        and 1 / 3 <= width / height <= 3
        and max(width, height) <= 3840
        and min(width, height) <= 2160
    )


_NO_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY). You can obtain an API key from "
    "https://platform.openai.com/account/api-keys."
)
_QUOTA = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, read the docs: "
    "https://platform.openai.com/docs/guides/error-codes/api-errors."
)


def _headers(request_id: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"x-request-id": request_id, "openai-processing-ms": "1", **(extra or {})}


def _error(
    request_id: str,
    status: int,
    message: str,
    kind: str,
    param: str | None,
    code: str | None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    doc = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(doc, status=status, headers=_headers(request_id, headers))


def _throttled(request_id: str, model: str, seconds: float, style: str) -> web.Response:
    wait = max(1, round(seconds))
    message = (
        f"Rate limit reached for {model} in organization org-standin on images per minute "
        f"(IPM): Limit 5, Used 5, Requested 1. Please try again in {wait}s. Visit "
        "https://platform.openai.com/account/rate-limits to learn more."
    )
    headers = {
        **retry_after_headers(seconds, style),
        "x-ratelimit-limit-requests": "5",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": f"{wait}s",
    }
    return _error(request_id, 429, message, "requests", None, "rate_limit_exceeded", headers)


def _server_error(request_id: str, code: int, model: str) -> web.Response:
    if code == 429:
        return _throttled(request_id, model, 1, "seconds")
    if code == 503:
        message = "The engine is currently overloaded, please try again later"
        return _error(request_id, 503, message, "server_error", None, None)
    message = "The server had an error while processing your request. Sorry about that!"
    return _error(request_id, code, message, "server_error", None, None)
