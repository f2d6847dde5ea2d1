"""The generic protocol (``GENERATOR_KIND=http``): Modal web endpoints, or your own server.

``start`` POSTs the job to ``GENERATOR_URL``; the answer is turned into image bytes as the
contract's table says:

| answer | outcome |
| --- | --- |
| 2xx ``image/*`` (or any body whose magic bytes are an image) | the bytes (``source="bytes"``) |
| 2xx JSON ``image_base64`` / ``b64_json`` (plain or ``data:`` URI) | decoded bytes (``"base64"``) |
| 2xx JSON ``image_url`` / ``url`` | downloaded by ``ImageDownloader`` (``"url"``) |
| 2xx JSON ``cloudinary_link`` | kept as a link, no download (``"cloudinary_link"``) |
| 303 (or 301/302 to the POST) | the result URL: the generation's **handle**, then GET |
| 404 saying ``app for invoked web endpoint is stopped`` | retried |
| 408, 425, 429, 5xx, timeouts, connection errors | retried (``Retry-After`` honoured) |
| any other status, or a 2xx that is not an image | ``JobFailed`` at once |

JSON keys are tried in that order; OpenAI's ``{"data": [{"b64_json"|"url": …}]}`` works too.

**Redirects are followed by hand.** Modal answers a request longer than 150 s with ``303`` to a
result URL on the same host, which blocks until the result is ready and "can be reloaded without
triggering a new request" (modal.com/docs/guide/webhook-timeouts). That URL is the handle: the
driver stores it before waiting, and a later attempt GETs it instead of POSTing again. Hops
within ``GENERATOR_URL``'s origin are free and carry the token; a hop to any other origin is
checked like a download URL (``UrlPolicy``: https, public addresses, the peer re-checked), goes
out on the downloader's credential-free client, and nothing it answers is ever quoted in a
message: only the generator's own words (its refusal reason, redacted, ≤ 200 characters) may
reach a job's ``error_message``. 307/308 repeat the POST at the new place; a result URL that
answers 404/410 when resumed is gone, and the job is POSTed again.

**No cancel.** Modal web endpoints have no call to stop a running request: a generation whose
job is cancelled runs to its end (and is paid for).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx
from loguru import logger

from worker.errors import JobFailed
from worker.http import (
    BodyTooLarge,
    is_transient,
    media_type,
    pooled_client,
    read_capped,
    read_start,
)
from worker.observability import metrics
from worker.observability.redact import redact
from worker.pipeline.download import ImageDownloader
from worker.pipeline.generators.base import (
    Finished,
    GeneratedImage,
    GenerationRequest,
    Handle,
    HandleGone,
    Pending,
    ProviderTransient,
    Throttled,
    quote,
)
from worker.pipeline.generators.outputs import (
    NOT_AN_IMAGE,
    checked_link,
    decode_base64,
    download,
    is_json,
    json_limit,
    parse_json,
    text_field,
)
from worker.pipeline.generators.throttle import retry_after
from worker.pipeline.generators.transport import outcome_label, transport_failure
from worker.pipeline.images import sniff_image, too_large
from worker.settings import Settings

STOPPED_MARKER = "app for invoked web endpoint is stopped"
EXCERPT_READ_BYTES = 4096
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_HOPS = 20  # in one exchange (307/308 chains); Modal's 303 polling is one hop per poll


@dataclass(frozen=True)
class _Answer:
    """A generator's final 2xx answer, body read in full (within the size cap)."""

    content_type: str
    body: bytes
    foreign: bool  # from another origin than GENERATOR_URL's: never quoted


def origin(url: httpx.URL) -> tuple[str, str, int | None]:
    port = url.port or {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host.lower(), port


class HttpProvider:
    kind = "http"
    can_cancel = False  # Modal web endpoints have no cancel call

    def __init__(self, settings: Settings, downloader: ImageDownloader) -> None:
        if not settings.generator_url:
            raise ValueError("GENERATOR_URL is required")
        self._url = httpx.URL(settings.generator_url)
        self._origin = origin(self._url)
        self._token = settings.generator_token.get_secret_value()
        self._timeout = settings.generator_timeout_seconds
        self._max_bytes = settings.max_image_bytes
        self._downloader = downloader
        # A misconfigured endpoint may echo the request headers back: what it says is quoted
        # in messages only after the shared redactor has masked the token.
        redact.add([self._token])
        # The token is sent per request, and only to GENERATOR_URL's origin.
        self._auth = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        self._client = pooled_client(
            connections=settings.worker_concurrency,
            follow_redirects=False,
            headers={"User-Agent": "image-worker", "Accept": "image/*, application/json"},
            # The per-attempt asyncio deadline is what bounds an attempt; these only catch a
            # connect that hangs early. (Modal's result URL blocks up to 150 s per leg.)
            timeout=httpx.Timeout(self._timeout, connect=min(10.0, self._timeout)),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    # ----------------------------------------------------------------- the provider interface

    def check(self, request: GenerationRequest) -> None:
        return None  # any model name: it is the endpoint's business

    def accepts(self, handle: Handle) -> bool:
        try:
            url = httpx.URL(handle.url)
        except httpx.InvalidURL:
            return False
        return url.scheme in ("http", "https") and bool(url.host)

    def poll_interval(self, polls: int) -> float:
        return 0.0  # each GET of the result URL blocks until done or a new 303 (Modal: 150 s)

    async def start(self, request: GenerationRequest) -> Handle | Finished:
        payload = {
            "job_id": request.job_id,
            "prompt": request.prompt,
            "model": request.model,
            "aspect_ratio": request.aspect_ratio,
            "user_id": request.user_id,
            "width": request.width,
            "height": request.height,
        }
        outcome = await self._follow("POST", self._url, payload)
        return outcome

    async def poll(self, handle: Handle, request: GenerationRequest) -> Pending | Finished:
        outcome = await self._follow("GET", httpx.URL(handle.url), None, resuming=True)
        if isinstance(outcome, Handle):
            return Pending(handle=outcome)
        return outcome

    async def cancel(self, handle: Handle) -> None:
        return None  # no such call (see the module docstring)

    async def result(self, finished: Finished, request: GenerationRequest) -> GeneratedImage:
        answer: _Answer = finished.output
        body, content_type = answer.body, answer.content_type
        who = "generator's redirect target on another origin" if answer.foreign else "generator"
        if is_json(content_type) or (not content_type and body.lstrip().startswith(b"{")):
            return await self._from_json(body, answer.foreign, who)
        if image_format := sniff_image(body):
            return GeneratedImage(body, image_format, None, "bytes")
        if not body:
            raise JobFailed(f"{who} returned an empty answer", "generator_bad_output")
        if answer.foreign:  # not even its content type is quoted
            raise JobFailed(
                f"{who} returned something that is {NOT_AN_IMAGE}", "generator_bad_output"
            )
        if content_type.startswith("image/"):
            raise JobFailed(
                f"{who} returned {content_type} data that is {NOT_AN_IMAGE}",
                "generator_bad_output",
            )
        shown = content_type or "a body without a content type"
        raise JobFailed(f"{who} returned {shown}, not an image", "generator_bad_output")

    # ----------------------------------------------------------------- redirects by hand

    async def _follow(
        self, method: str, url: httpx.URL, payload: dict[str, Any] | None, resuming: bool = False
    ) -> Handle | Finished:
        """One request and its 307/308 hops. A redirect that turns the request into a GET
        (303, or 301/302 to a POST) and any redirect of a GET is a result URL: returned as the
        generation's handle. Otherwise the final 2xx answer (``Finished``), or an error."""
        for _hop in range(MAX_HOPS + 1):
            foreign = origin(url) != self._origin
            status, headers, content_type, body = await self._exchange(
                method, url, payload, foreign
            )
            if status in REDIRECTS:
                location = headers.get("location")
                if not location:
                    raise JobFailed(
                        f"generator answered HTTP {status} without a Location", "generator_rejected"
                    )
                try:
                    target = url.join(location)
                except httpx.InvalidURL:
                    raise JobFailed(
                        "generator redirected to an unusable URL", "generator_rejected"
                    ) from None
                if target.scheme not in ("http", "https"):
                    raise JobFailed(
                        "generator redirected to an unsupported URL", "generator_rejected"
                    )
                if method == "GET" or status == 303 or status in (301, 302):
                    return Handle(self.kind, str(target), str(target))
                url = target  # 307/308: the same request at the new place
                continue
            if 200 <= status < 300:
                return Finished(_Answer(content_type, body, foreign))
            self._refused(status, headers, body, foreign, resuming and method == "GET")
        raise JobFailed("generator redirected too many times", "generator_rejected")

    def _refused(
        self, status: int, headers: httpx.Headers, body: bytes, foreign: bool, resuming: bool
    ) -> None:
        """Raise what a non-2xx, non-redirect answer means."""
        if foreign:
            # Another origin: its status may classify the answer, its words never leave here.
            detail = f"redirect target on another origin answered HTTP {status}"
            if resuming and status in (404, 410):
                raise HandleGone(detail)
            if is_transient(status):
                raise ProviderTransient("status", detail, retry_after(headers))
            raise JobFailed(f"generator's {detail}", "generator_rejected")
        excerpt = quote(body.decode("utf-8", "replace"))
        if status == 404 and STOPPED_MARKER in excerpt.lower():
            raise ProviderTransient("stopped", "HTTP 404 endpoint stopped")
        if resuming and status in (404, 410):
            raise HandleGone(f"the result URL answered HTTP {status}")
        if status == 429 or (status == 503 and "retry-after" in headers):
            raise Throttled(f"HTTP {status}", retry_after(headers, body), creation=not resuming)
        if is_transient(status):
            raise ProviderTransient("status", f"HTTP {status}", retry_after(headers, body))
        detail = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
        raise JobFailed(f"generator rejected the request: {detail}", "generator_rejected")

    async def _exchange(
        self, method: str, url: httpx.URL, payload: dict[str, Any] | None, foreign: bool
    ) -> tuple[int, httpx.Headers, str, bytes]:
        started = time.monotonic()
        status: int | None = None
        content_type = ""
        body = b""
        outcome = ""
        kwargs: dict[str, Any] = {"json": payload} if payload is not None else {}
        try:
            if foreign:
                stream = self._downloader.checked_stream(
                    method,
                    url,
                    "generator redirect",
                    headers={"Accept": "image/*, application/json"},
                    **kwargs,
                )
            else:
                stream = self._client.stream(method, url, headers=self._auth, **kwargs)
            async with stream as response:
                status = response.status_code
                content_type = media_type(response)
                headers = response.headers
                if status in REDIRECTS:
                    pass  # the body of a redirect is never read
                elif 200 <= status < 300:
                    body = await self._read_success(response, content_type)
                else:
                    body = await read_start(response, EXCERPT_READ_BYTES)
        except httpx.HTTPError as exc:
            failure = transport_failure(exc, self._timeout)
            outcome = str(failure)
            raise failure from None
        except JobFailed as exc:
            outcome = exc.message
            raise
        finally:
            metrics.GENERATOR_ATTEMPTS.labels(outcome_label(status, outcome)).inc()
            logger.info(
                "generator {} {}: {} {} {} bytes, {:.2f}s{}",
                method,
                "another origin" if foreign else "GENERATOR_URL's origin",
                f"HTTP {status}" if status is not None else "no answer",
                content_type or "-",
                len(body),
                time.monotonic() - started,
                f" ({outcome})" if outcome else "",
            )
        return status, headers, content_type, body

    async def _read_success(self, response: httpx.Response, content_type: str) -> bytes:
        if not is_json(content_type):
            try:
                return await read_capped(response, self._max_bytes)
            except BodyTooLarge as exc:
                raise too_large(exc.size, self._max_bytes) from None
        # Base64 in JSON is 4/3 the image size; the decoded size is checked once parsed. A JSON
        # body over even this cap holds an image over the limit, whatever its exact size.
        try:
            return await read_capped(response, json_limit(self._max_bytes))
        except BodyTooLarge:
            raise too_large(None, self._max_bytes) from None

    # ----------------------------------------------------------------- the answer

    async def _from_json(self, body: bytes, foreign: bool, who: str) -> GeneratedImage:
        document = parse_json(body, who)
        candidates = [document] if isinstance(document, dict) else []
        openai_items = candidates and document.get("data")
        if isinstance(openai_items, list) and openai_items and isinstance(openai_items[0], dict):
            candidates.append(openai_items[0])
        for fields in candidates:
            for key in ("image_base64", "b64_json"):
                if value := text_field(fields, key):
                    return decode_base64(value, self._max_bytes, who)
            for key in ("image_url", "url"):
                if value := text_field(fields, key):
                    logger.info("generator answered with an image URL; downloading it")
                    return await download(self._downloader, value)
            if value := text_field(fields, "cloudinary_link"):
                return GeneratedImage(None, None, checked_link(value, who), "cloudinary_link")
        if foreign:
            raise JobFailed(f"{who} returned JSON without an image", "generator_bad_output")
        raise JobFailed(
            f"{who} returned JSON without an image: {quote(body.decode('utf-8', 'replace'))}",
            "generator_bad_output",
        )
