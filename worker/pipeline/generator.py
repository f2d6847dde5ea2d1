"""The client of the image-generation endpoint (often a Modal web endpoint).

One call of ``GeneratorClient.generate`` is: POST the job to ``GENERATOR_URL``, follow redirects
(Modal answers requests longer than 150 s with ``303`` to a result URL, to be fetched with GET),
then turn the answer into validated image bytes, as the contract's table says:

| answer | outcome |
| --- | --- |
| 2xx ``image/*`` (or any body whose magic bytes are an image) | the bytes (``source="bytes"``) |
| 2xx JSON ``image_base64`` / ``b64_json`` (plain or ``data:`` URI) | decoded bytes (``"base64"``) |
| 2xx JSON ``image_url`` / ``url`` | downloaded by ``ImageDownloader`` (``"url"``) |
| 2xx JSON ``cloudinary_link`` | kept as a link, no download (``"cloudinary_link"``) |
| 404 saying ``app for invoked web endpoint is stopped`` | retried |
| 408, 425, 429, 5xx, timeouts, connection errors | retried |
| any other status, or a 2xx that is not an image | ``JobFailed`` at once |

JSON keys are tried in that order; OpenAI's ``{"data": [{"b64_json"|"url": …}]}`` works too.

Retries wait ``GENERATOR_RETRY_DELAYS`` (so ``len(delays) + 1`` attempts; ``Retry-After`` is not
honoured, the configured delays are the operator's choice). ``GENERATOR_TIMEOUT_SECONDS`` is one
deadline per attempt covering redirects and the body: httpx's own timeouts are per socket read,
so a server sending one byte a second would otherwise hold the job forever. A downloaded
``image_url`` is not re-POSTed on failure (that would start a second, billed generation); the
downloader has its own deadline and retries.

Failures are ``JobFailed`` with one sentence for the job row. Reasons: ``generator_unavailable``
(retries ran out), ``generator_rejected`` (a 4xx), ``generator_bad_output`` (a 2xx that is not
an image), ``image_too_large``, ``download``. Neither messages nor logs ever contain the token:
it is only in the client's default headers, and any text echoed by the server is redacted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from loguru import logger
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from worker.errors import JobFailed, TransientError
from worker.http import (
    BodyTooLarge,
    is_transient,
    media_type,
    pooled_client,
    read_capped,
    read_start,
    really_timed_out,
)
from worker.jobs import Job
from worker.observability import metrics
from worker.observability.redact import redact
from worker.pipeline.download import ImageDownloader
from worker.pipeline.images import sniff_image, too_large
from worker.settings import Settings

if TYPE_CHECKING:
    from loguru import Logger

STOPPED_MARKER = "app for invoked web endpoint is stopped"
EXCERPT_CHARS = 200
EXCERPT_READ_BYTES = 4096
NOT_AN_IMAGE = "not a PNG, JPEG, WebP or GIF image"


@dataclass(frozen=True)
class GeneratedImage:
    data: bytes | None  # validated image bytes (None when cloudinary_link)
    format: str | None  # png/jpeg/webp/gif
    cloudinary_link: str | None  # used as the job's image_url without a new upload
    source: str  # "bytes" | "base64" | "url" | "cloudinary_link"


class _Transient(TransientError):
    """A retryable attempt; ``kind`` picks the final sentence once retries run out."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(detail or kind)
        self.kind = kind  # "status" | "stopped" | "timeout" | "connection"
        self.detail = detail


@dataclass(frozen=True)
class _Answer:
    """A 2xx answer, body read in full (within the size cap)."""

    status: int
    content_type: str
    body: bytes


class GeneratorClient:
    def __init__(self, settings: Settings, downloader: ImageDownloader) -> None:
        if not settings.generator_url:
            raise ValueError("GENERATOR_URL is required")
        self._url = settings.generator_url
        self._token = settings.generator_token.get_secret_value()
        self._timeout = settings.generator_timeout_seconds
        self._delays = settings.generator_retry_delays
        self._max_bytes = settings.max_image_bytes
        self._downloader = downloader
        # A misconfigured endpoint may echo the request headers back: what it says is quoted
        # in messages only after the shared redactor has masked the token.
        redact.add([self._token])
        headers = {"User-Agent": "image-worker", "Accept": "image/*, application/json"}
        if self._token:
            # Default headers: httpx drops Authorization on cross-origin redirects by itself.
            headers["Authorization"] = f"Bearer {self._token}"
        self._client = pooled_client(
            connections=settings.worker_concurrency,
            follow_redirects=True,
            headers=headers,
            # The per-attempt asyncio deadline is what bounds an attempt; these only catch a
            # connect that hangs early.
            timeout=httpx.Timeout(self._timeout, connect=min(10.0, self._timeout)),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def generate(self, job: Job, width: int, height: int) -> GeneratedImage:
        payload = {
            "job_id": job.id,
            "prompt": job.prompt,
            "model": job.model,
            "aspect_ratio": job.aspect_ratio,
            "user_id": job.user_id,
            "width": width,
            "height": height,
        }
        log = logger.bind(job_id=job.id)
        attempts = len(self._delays) + 1
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=self._wait,
                retry=retry_if_exception_type(_Transient),
                before_sleep=lambda state: log.warning(
                    "generator attempt {} failed ({}); retrying in {:g} s",
                    state.attempt_number,
                    state.outcome.exception() if state.outcome else "?",
                    self._wait(state),
                ),
                reraise=True,
            ):
                with attempt:
                    number = attempt.retry_state.attempt_number
                    answer = await self._attempt(payload, number, attempts, log)
        except _Transient as exc:
            raise JobFailed(self._unavailable(exc, attempts), "generator_unavailable") from None
        return await self._interpret(answer, log)

    def _wait(self, state: RetryCallState) -> float:
        return self._delays[min(state.attempt_number, len(self._delays)) - 1]

    def _unavailable(self, last: _Transient, attempts: int) -> str:
        tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
        if last.kind == "stopped":
            return f"generator endpoint is stopped (Modal: {STOPPED_MARKER}) after {tries}"
        if last.kind == "timeout":
            return f"generator timed out after {tries} ({self._timeout:g} s each)"
        if last.kind == "connection":
            return f"generator unreachable after {tries} (last: {last.detail})"
        return f"generator unavailable after {tries} (last: {last.detail})"

    async def _attempt(
        self, payload: dict[str, Any], number: int, attempts: int, log: Logger
    ) -> _Answer:
        """One POST, redirects and body included, under one deadline. Returns a 2xx answer;
        raises ``_Transient`` for what is worth retrying and ``JobFailed`` for the rest."""
        started = time.monotonic()
        status: int | None = None
        content_type = ""
        body = b""
        redirects = 0
        outcome = ""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._client.stream("POST", self._url, json=payload) as response:
                    status = response.status_code
                    content_type = media_type(response)
                    redirects = len(response.history)
                    if 200 <= status < 300:
                        body = await self._read_success(response, content_type)
                    else:
                        body = await read_start(response, EXCERPT_READ_BYTES)
        except TimeoutError:
            outcome = f"timed out after {self._timeout:g} s"
            raise _Transient("timeout") from None
        except httpx.TimeoutException as exc:
            if really_timed_out(exc):
                outcome = f"timed out ({type(exc).__name__})"
                raise _Transient("timeout") from None
            detail = self._excerpt(f"ConnectError: {exc.__cause__}".encode())
            outcome = detail
            raise _Transient("connection", detail) from None
        except httpx.TooManyRedirects:
            outcome = "too many redirects"
            raise JobFailed("generator redirected too many times", "generator_rejected") from None
        except (httpx.UnsupportedProtocol, httpx.InvalidURL):
            outcome = "redirect to an unusable URL"
            raise JobFailed(
                "generator redirected to an unsupported URL", "generator_rejected"
            ) from None
        except httpx.TransportError as exc:
            detail = self._excerpt(f"{type(exc).__name__}: {exc}".rstrip(": ").encode())
            outcome = detail
            raise _Transient("connection", detail) from None
        except JobFailed as exc:
            outcome = exc.message
            raise
        finally:
            metrics.GENERATOR_ATTEMPTS.labels(attempt_outcome(status, outcome)).inc()
            log.info(
                "generator attempt {}/{}: {} {} {} bytes, {} redirect(s), {:.2f}s{}",
                number,
                attempts,
                f"HTTP {status}" if status is not None else "no answer",
                content_type or "-",
                len(body),
                redirects,
                time.monotonic() - started,
                f" ({outcome})" if outcome else "",
            )

        assert status is not None  # every path without an answer raised above
        if 200 <= status < 300:
            return _Answer(status, content_type, body)
        excerpt = self._excerpt(body)
        if status == 404 and STOPPED_MARKER in excerpt.lower():
            raise _Transient("stopped", "HTTP 404 endpoint stopped")
        if is_transient(status):
            raise _Transient("status", f"HTTP {status}")
        detail = f"HTTP {status}: {excerpt}" if excerpt else f"HTTP {status}"
        raise JobFailed(f"generator rejected the request: {detail}", "generator_rejected")

    async def _read_success(self, response: httpx.Response, content_type: str) -> bytes:
        if not _is_json(content_type):
            try:
                return await read_capped(response, self._max_bytes)
            except BodyTooLarge as exc:
                raise too_large(exc.size, self._max_bytes) from None
        # Base64 in JSON is 4/3 the image size; the decoded size is checked once parsed. A JSON
        # body over even this cap holds an image over the limit, whatever its exact size.
        try:
            return await read_capped(response, self._max_bytes * 4 // 3 + 65536)
        except BodyTooLarge:
            raise too_large(None, self._max_bytes) from None

    async def _interpret(self, answer: _Answer, log: Logger) -> GeneratedImage:
        body, content_type = answer.body, answer.content_type
        if _is_json(content_type) or (not content_type and body.lstrip().startswith(b"{")):
            return await self._from_json(body, log)
        if image_format := sniff_image(body):
            return GeneratedImage(body, image_format, None, "bytes")
        if not body:
            raise JobFailed("generator returned an empty answer", "generator_bad_output")
        if content_type.startswith("image/"):
            raise JobFailed(
                f"generator returned {content_type} data that is {NOT_AN_IMAGE}",
                "generator_bad_output",
            )
        shown = content_type or "a body without a content type"
        raise JobFailed(f"generator returned {shown}, not an image", "generator_bad_output")

    async def _from_json(self, body: bytes, log: Logger) -> GeneratedImage:
        try:
            document = json.loads(body)
        except ValueError:
            raise JobFailed("generator returned invalid JSON", "generator_bad_output") from None
        candidates = [document] if isinstance(document, dict) else []
        openai_items = candidates and document.get("data")
        if isinstance(openai_items, list) and openai_items and isinstance(openai_items[0], dict):
            candidates.append(openai_items[0])
        for fields in candidates:
            for key in ("image_base64", "b64_json"):
                if value := _text_field(fields, key):
                    data, image_format = self._decode_base64(value)
                    return GeneratedImage(data, image_format, None, "base64")
            for key in ("image_url", "url"):
                if value := _text_field(fields, key):
                    log.info("generator answered with an image URL; downloading it")
                    data = await self._downloader.fetch(value)
                    return GeneratedImage(data, sniff_image(data), None, "url")
            if value := _text_field(fields, "cloudinary_link"):
                return GeneratedImage(None, None, _checked_link(value), "cloudinary_link")
        raise JobFailed(
            f"generator returned JSON without an image: {self._excerpt(body)}",
            "generator_bad_output",
        )

    def _decode_base64(self, value: str) -> tuple[bytes, str]:
        if value.startswith("data:"):
            header, comma, value = value.partition(",")
            if not comma or not header.endswith(";base64"):
                raise JobFailed(
                    "generator returned a data URI that is not base64", "generator_bad_output"
                )
        compact = "".join(value.split())  # some encoders wrap lines; validate=True refuses those
        estimated = len(compact) * 3 // 4
        if estimated > self._max_bytes:  # refuse before allocating the decoded copy
            raise too_large(estimated, self._max_bytes)
        try:
            data = base64.b64decode(compact, validate=True)
        except (binascii.Error, ValueError):
            raise JobFailed(
                "generator returned invalid base64 image data", "generator_bad_output"
            ) from None
        image_format = sniff_image(data)
        if image_format is None:
            raise JobFailed(
                f"generator returned base64 data that is {NOT_AN_IMAGE}", "generator_bad_output"
            )
        return data, image_format

    def _excerpt(self, body: bytes) -> str:
        """A short single line of a server's answer, safe for a job row."""
        text = redact.mask_known(" ".join(body.decode("utf-8", "replace").split()))
        return text if len(text) <= EXCERPT_CHARS else text[: EXCERPT_CHARS - 1] + "…"


def attempt_outcome(status: int | None, detail: str = "") -> str:
    """The metrics label of one HTTP attempt: 2xx/4xx/5xx, timeout or connection_error."""
    if status is not None:
        return f"{status // 100}xx"
    return "timeout" if "timed out" in detail or "timeout" in detail else "connection_error"


def _checked_link(value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        url = None
    if (
        url is None
        or url.scheme not in ("http", "https")
        or not url.host
        or len(value) > 2048
        or any(c.isspace() for c in value)
    ):
        raise JobFailed("generator returned an invalid cloudinary_link", "generator_bad_output")
    return value


def _text_field(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) and value.strip() else None


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or content_type.endswith("+json")
