"""The upload of a job's image to Cloudinary: one signed request, retried when worth it.

Design, and why:

* **Requests go out with httpx, signed and addressed by the SDK.** ``cloudinary`` 1.46.3 has no
  asyncio API; its uploader is blocking urllib3 with no default timeout, and it reports failures
  as exception classes that drop the HTTP status and blur timeouts into "Unexpected error".
  Posting the form ourselves keeps the event loop free without a thread pool, lets a shutdown
  cancel an upload, and gives exact statuses for retry decisions. The SDK still does everything
  Cloudinary-specific: ``build_upload_params``, ``sign_request`` (signature v2),
  ``cloudinary_api_url`` and ``CloudinaryImage.build_url``.
* **One asset per job.** ``public_id = "<CLOUDINARY_FOLDER>/<job_id>"`` (the folder is written
  into the id and no ``folder`` parameter is sent, so fixed and dynamic folder accounts behave
  alike), ``overwrite`` and ``invalidate`` on: a re-run replaces the asset and purges CDN copies.
* **Only checked image bytes are sent**: PNG, JPEG, WebP or GIF by their magic bytes
  (``worker.pipeline.images``), within ``MAX_IMAGE_BYTES``.

The account (``CLOUDINARY_URL``) is parsed in ``account``, the context metadata encoded in
``context``, thumbnail URLs built in ``delivery``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import cloudinary.utils
import httpx
from loguru import logger
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from worker.errors import JobFailed, TransientError
from worker.http import load_json, pooled_client, really_timed_out
from worker.jobs import Job
from worker.observability import metrics
from worker.observability.redact import redact
from worker.pipeline.cloudinary.account import CloudinaryAccount
from worker.pipeline.cloudinary.context import encode_context, job_context
from worker.pipeline.cloudinary.delivery import build_thumbnail_url, parse_delivery_url
from worker.pipeline.images import IMAGE_FORMATS, ImageFormat, sniff_image
from worker.settings import MissingSetting, Settings


@dataclass(frozen=True)
class UploadedImage:
    image_url: str  # the upload's secure_url
    thumbnail_url: str  # SDK-built: fill crop, THUMBNAIL_SIZE square, with version and format
    public_id: str
    version: int | None
    width: int | None
    height: int | None
    bytes: int | None
    format: str | None


class _Transient(TransientError):
    def __init__(self, last: str, *, timed_out: bool = False) -> None:
        super().__init__(last)
        self.last = last
        self.timed_out = timed_out


class CloudinaryUploader:
    def __init__(
        self,
        settings: Settings,
        *,
        timeout: float = 60.0,
        attempts: int = 3,
        backoff: float = 2.0,
        max_backoff: float = 20.0,
    ) -> None:
        """``timeout`` bounds each attempt (connect, send, answer); ``backoff`` is the first wait
        between attempts, doubled each time up to ``max_backoff``, plus up to ``backoff`` jitter.
        """
        if settings.cloudinary_url is None:
            raise MissingSetting("CLOUDINARY_URL")
        cloudinary_url = settings.cloudinary_url.get_secret_value()
        self._account = CloudinaryAccount.from_url(cloudinary_url)
        # Cloudinary's error messages are quoted in job rows and logs: never with the secret.
        account = self._account
        redact.add([cloudinary_url, account.api_secret, f"{account.api_key}:{account.api_secret}"])
        self._folder = settings.cloudinary_folder.strip("/")
        self._thumbnail_size = settings.thumbnail_size
        self._max_image_bytes = settings.max_image_bytes
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._max_backoff = max_backoff
        self._api_url = self._account.api_url()
        # One connection per concurrent job; trust_env=False because the SDK ignores proxy env
        # vars too (its only proxy setting is CLOUDINARY_URL's api_proxy).
        self._http = pooled_client(
            connections=settings.worker_concurrency,
            timeout=timeout,
            proxy=self._account.options.get("api_proxy"),
            trust_env=False,
            headers={"User-Agent": f"image-worker {cloudinary.get_user_agent()}"},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    def public_id(self, job_id: str) -> str:
        return f"{self._folder}/{job_id}" if self._folder else job_id

    async def upload(self, job: Job, image: bytes) -> UploadedImage:
        if not isinstance(image, bytes | bytearray | memoryview):
            # A str would be a bug: the SDK reads non-URL strings as *local file paths*.
            raise TypeError(f"upload() takes image bytes, not {type(image).__name__}")
        image = bytes(image)
        image_format = _check_image(image, self._max_image_bytes)
        extension = image_format.extension
        public_id = self.public_id(job.id)
        context = encode_context(job_context(job))
        log = logger.bind(job_id=job.id, public_id=public_id)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._attempts),
            wait=wait_exponential(multiplier=self._backoff, max=self._max_backoff)
            + wait_random(0, self._backoff),
            retry=retry_if_exception_type(_Transient),
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    body = await self._attempt(
                        public_id,
                        context,
                        (f"{job.id}.{extension}", image, image_format.media_type),
                        attempt.retry_state.attempt_number,
                        log,
                    )
        except _Transient as e:
            if e.timed_out:
                message = (
                    f"Cloudinary upload timed out after {self._attempts} attempts "
                    f"({self._timeout:g} s each)"
                )
            else:
                message = (
                    f"Cloudinary upload failed after {self._attempts} attempts (last: {e.last})"
                )
            raise JobFailed(message, "upload") from None

        version = _int_or_none(body.get("version"))
        fmt = body.get("format") or extension
        return UploadedImage(
            image_url=body["secure_url"],
            thumbnail_url=build_thumbnail_url(
                body["public_id"],
                version,
                fmt,
                self._account.delivery_options(),
                self._thumbnail_size,
            ),
            public_id=body["public_id"],
            version=version,
            width=_int_or_none(body.get("width")),
            height=_int_or_none(body.get("height")),
            bytes=_int_or_none(body.get("bytes")),
            format=fmt,
        )

    def thumbnail_url(self, image_url: str) -> str:
        """Thumbnail of an image already on Cloudinary (a generator's ``cloudinary_link``)."""
        image = parse_delivery_url(image_url, self._account)
        return build_thumbnail_url(
            image.public_id, image.version, image.format, image.delivery, self._thumbnail_size
        )

    async def _attempt(
        self,
        public_id: str,
        context: str,
        file: tuple[str, bytes, str],
        number: int,
        log: Any,
    ) -> dict[str, Any]:
        # Signed per attempt: the timestamp must be fresh (Cloudinary allows one hour).
        params = cloudinary.utils.build_upload_params(
            public_id=public_id,
            overwrite=True,
            invalidate=True,
            context=context,
            upload_preset=self._account.options.get("upload_preset"),
        )
        params = cloudinary.utils.sign_request(
            cloudinary.utils.cleanup_params(params), self._account.signing_options()
        )
        size = len(file[1])
        started = time.monotonic()

        def elapsed_ms() -> int:
            return round((time.monotonic() - started) * 1000)

        try:
            # httpx's timeout is per read/write; this one bounds the whole attempt.
            async with asyncio.timeout(self._timeout):
                try:
                    response = await self._http.post(
                        self._api_url, data=params, files={"file": file}
                    )
                except httpx.TimeoutException as exc:
                    if really_timed_out(exc):
                        raise
                    raise httpx.ConnectError(str(exc.__cause__)) from exc
        except (TimeoutError, httpx.TimeoutException):
            metrics.CLOUDINARY_ATTEMPTS.labels("timeout").inc()
            log.warning(
                "Cloudinary upload attempt {}/{}: no answer within {:g} s ({} bytes)",
                number,
                self._attempts,
                self._timeout,
                size,
            )
            raise _Transient("timeout", timed_out=True) from None
        except httpx.TransportError as e:
            metrics.CLOUDINARY_ATTEMPTS.labels("connection_error").inc()
            log.warning(
                "Cloudinary upload attempt {}/{}: {} after {} ms ({} bytes)",
                number,
                self._attempts,
                type(e).__name__,
                elapsed_ms(),
                size,
            )
            raise _Transient(f"connection error: {type(e).__name__}") from None

        status = response.status_code
        metrics.CLOUDINARY_ATTEMPTS.labels(f"{status // 100}xx").inc()
        try:
            body = load_json(response.content)
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        message = redact.mask_known(
            str(error.get("message", "")) if isinstance(error, dict) else ""
        )
        log_line = "Cloudinary upload attempt {}/{}: HTTP {} in {} ms ({} bytes){}"
        detail = f": {message[:300]}" if message else ""

        # Not worker.http's TRANSIENT_STATUSES: Cloudinary rate-limits with 420 as well as 429
        # (the SDK maps both to RateLimited).
        if status in (408, 420, 429) or status >= 500:
            log.warning(log_line, number, self._attempts, status, elapsed_ms(), size, detail)
            raise _Transient(f"HTTP {status}")
        if status >= 400 or error is not None:
            log.error(log_line, number, self._attempts, status, elapsed_ms(), size, detail)
            raise JobFailed(_rejection(status, message), "upload")
        if not (isinstance(body, dict) and body.get("secure_url") and body.get("public_id")):
            log.warning(log_line, number, self._attempts, status, elapsed_ms(), size, "")
            raise _Transient(f"unreadable response, HTTP {status}")
        log.info(log_line, number, self._attempts, status, elapsed_ms(), size, "")
        return body


def _check_image(image: bytes, max_bytes: int) -> ImageFormat:
    """The format of image bytes fit to upload, or ``JobFailed``."""
    if not image:
        raise JobFailed("The generator returned an empty image", "upload")
    if len(image) > max_bytes:
        raise JobFailed(
            f"The image is {len(image)} bytes, more than MAX_IMAGE_BYTES ({max_bytes})", "upload"
        )
    image_format = sniff_image(image)
    if image_format is None:
        raise JobFailed("The generated data is not an image Cloudinary accepts", "upload")
    return IMAGE_FORMATS[image_format]


def _rejection(status: int, message: str) -> str:
    # The signature error quotes the whole signed string (the prompt included): keep the gist.
    message = message.split(" String to sign - ")[0].strip() or "no reason given"
    if not message.endswith((".", "!", "?")):
        message += "."
    if status == 400:
        return f"Cloudinary rejected the image: {message}"
    if status in (401, 403):
        return (
            f"Cloudinary refused the upload (HTTP {status}): {message} "
            "Check the key and secret in CLOUDINARY_URL."
        )
    if status == 404:
        return f"Cloudinary upload failed (HTTP 404): {message} Check the cloud in CLOUDINARY_URL."
    return f"Cloudinary upload failed (HTTP {status}): {message}"


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None
