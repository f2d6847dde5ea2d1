"""The worker's one module that talks to Cloudinary: upload a job's image, build thumbnail URLs.

Design, and why:

* **Requests go out with httpx, signed and addressed by the SDK.** ``cloudinary`` 1.46.3 has no
  asyncio API; its uploader is blocking urllib3 with no default timeout, and it reports failures
  as exception classes that drop the HTTP status and blur timeouts into "Unexpected error".
  Posting the form ourselves keeps the event loop free without a thread pool, lets a shutdown
  cancel an upload, and gives exact statuses for retry decisions. The SDK still does everything
  Cloudinary-specific: ``build_upload_params``, ``sign_request`` (signature v2),
  ``cloudinary_api_url`` and ``CloudinaryImage.build_url``.
* **No global SDK config.** ``CLOUDINARY_URL`` is parsed here, the way the SDK parses it (query
  options become config keys), with ``true``/``false`` turned into booleans (the SDK keeps the
  string ``"false"``, which is truthy). Every SDK call gets its options explicitly, so what the
  SDK read from the environment at import time never matters.
* **One asset per job.** ``public_id = "<CLOUDINARY_FOLDER>/<job_id>"`` (the folder is written
  into the id and no ``folder`` parameter is sent, so fixed and dynamic folder accounts behave
  alike), ``overwrite`` and ``invalidate`` on: a re-run replaces the asset and purges CDN copies.
* **Context is encoded here**, not by the SDK, which escapes neither backslashes nor keys: a value
  ending in ``\\`` would swallow the next pair's ``|``. ``\\``, ``|`` and ``=`` are
  backslash-escaped; empty values are left out (the SDK would send ``None``); values are cut to
  the API's 1024 characters.
* **Delivery host.** Thumbnails are ``https://res.cloudinary.com/<cloud>/...`` unless
  ``CLOUDINARY_URL`` carries the SDK's own delivery options (``cname``, ``secure_distribution``,
  ``private_cdn``, ``secure``, ...). The devstack's stand-in sets ``cname=HOST:PORT&secure=false``
  so thumbnails resolve against it; real accounts set none of them.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import cloudinary.utils
import httpx
from cloudinary import CloudinaryImage
from loguru import logger
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from worker.errors import JobFailed, TransientError
from worker.http import pooled_client, really_timed_out
from worker.jobs import Job
from worker.observability import metrics
from worker.settings import MissingSetting, Settings

CONTEXT_VALUE_MAX_CHARS = 1024
# The API refuses control characters in context values, except newlines.
_CONTROL_CHARS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_CONTEXT_SPECIAL = re.compile(r"([\\|=])")

# Magic bytes of the formats Cloudinary accepts that a generator may plausibly return.
_IMAGE_SIGNATURES: tuple[tuple[bytes, int, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0, "png", "image/png"),
    (b"\xff\xd8\xff", 0, "jpg", "image/jpeg"),
    (b"GIF8", 0, "gif", "image/gif"),
    (b"WEBP", 8, "webp", "image/webp"),
    (b"BM", 0, "bmp", "image/bmp"),
    (b"II*\x00", 0, "tiff", "image/tiff"),
    (b"MM\x00*", 0, "tiff", "image/tiff"),
    (b"ftypavif", 4, "avif", "image/avif"),
    (b"ftypheic", 4, "heic", "image/heic"),
)
_IMAGE_EXTENSIONS = frozenset(
    {"png", "jpg", "jpeg", "gif", "webp", "bmp", "tif", "tiff", "avif", "heic", "svg", "ico", "jxl"}
)
_VERSION_SEGMENT = re.compile(r"^v\d+$")
_TRANSFORMATION_SEGMENT = re.compile(r"^(?:[a-z]{1,3}_[^,]+|\$\w+_[^,]+)(?:,[a-z$][^,]*_[^,]+)*$")
_SHARED_CDN_HOST = re.compile(r"^res(?:-\d+)?\.cloudinary\.com$")
_PRIVATE_CDN_HOST = re.compile(r"^([a-z0-9_-]+)-res(?:-\d+)?\.cloudinary\.com$")


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


@dataclass(frozen=True)
class CloudinaryAccount:
    """``CLOUDINARY_URL`` parsed the SDK's way; ``repr`` never shows the secret."""

    cloud_name: str
    api_key: str
    api_secret: str = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)  # query options (and private CDN path)

    @classmethod
    def from_url(cls, url: str) -> CloudinaryAccount:
        parts = urlsplit(url.strip())
        if parts.scheme != "cloudinary" or not (parts.hostname and parts.username):
            raise ValueError("CLOUDINARY_URL must look like cloudinary://KEY:SECRET@CLOUD")
        if not parts.password:
            raise ValueError("CLOUDINARY_URL has no API secret (cloudinary://KEY:SECRET@CLOUD)")
        options: dict[str, Any] = {
            key: {"true": True, "false": False}.get(value.lower(), value)
            for key, value in parse_qsl(parts.query)
        }
        if parts.path.strip("/"):  # cloudinary://K:S@cloud/cdn.example.com: a private CDN
            options.setdefault("private_cdn", True)
            options.setdefault("secure_distribution", parts.path.strip("/"))
        return cls(parts.hostname, parts.username, parts.password, options)

    def api_url(self) -> str:
        return cloudinary.utils.cloudinary_api_url(
            "upload",
            cloud_name=self.cloud_name,
            upload_prefix=self.options.get("upload_prefix"),
            resource_type="image",
        )

    def signing_options(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "api_secret": self.api_secret,
            "signature_algorithm": self.options.get("signature_algorithm", "sha1"),
            "signature_version": int(self.options.get("signature_version", 2)),
        }

    def delivery_options(self, **overrides: Any) -> dict[str, Any]:
        """Every option ``cloudinary_url`` would otherwise read from the SDK's global config."""
        opts = self.options
        delivery = {
            "cloud_name": self.cloud_name,
            # The SDK's default (None) means http://; thumbnails are https unless told otherwise.
            "secure": opts.get("secure", True),
            "private_cdn": opts.get("private_cdn", False),
            "secure_distribution": opts.get("secure_distribution"),
            "cname": opts.get("cname"),
            "cdn_subdomain": opts.get("cdn_subdomain", False),
            "secure_cdn_subdomain": opts.get("secure_cdn_subdomain"),
            "sign_url": opts.get("sign_url", False),  # for accounts with strict transformations
            "api_secret": self.api_secret,
            "signature_algorithm": opts.get("signature_algorithm", "sha1"),
            "long_url_signature": opts.get("long_url_signature", False),
            "auth_token": False,
            "force_version": True,
            "shorten": False,
            "use_root_path": False,
        }
        return delivery | overrides

    def delivery_hosts(self) -> set[str]:
        """Hosts other than Cloudinary's own that serve this account (a CNAME, the stand-in)."""
        return {
            str(host).lower()
            for host in (self.options.get("cname"), self.options.get("secure_distribution"))
            if host
        }


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
        self._cloudinary_url = settings.cloudinary_url.get_secret_value()
        self._account = CloudinaryAccount.from_url(self._cloudinary_url)
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
        extension, content_type = _check_image(image, self._max_image_bytes)
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
                        (f"{job.id}.{extension}", image, content_type),
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
            thumbnail_url=self._thumbnail(
                body["public_id"], version, fmt, self._account.delivery_options()
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
        public_id, version, fmt, delivery = self._parse_delivery_url(image_url)
        return self._thumbnail(public_id, version, fmt, delivery)

    # -- internals -------------------------------------------------------------------------------

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
            body = response.json()
        except ValueError:
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        message = self._redact(str(error.get("message", "")) if isinstance(error, dict) else "")
        log_line = "Cloudinary upload attempt {}/{}: HTTP {} in {} ms ({} bytes){}"
        detail = f": {message[:300]}" if message else ""

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

    def _thumbnail(
        self,
        public_id: str,
        version: int | None,
        fmt: str | None,
        delivery: CloudinaryAccount | dict[str, Any],
    ) -> str:
        options = (
            delivery.delivery_options() if isinstance(delivery, CloudinaryAccount) else delivery
        )
        size = self._thumbnail_size
        return CloudinaryImage(public_id, version=version, format=fmt).build_url(
            width=size, height=size, crop="fill", **options
        )

    def _parse_delivery_url(
        self, image_url: str
    ) -> tuple[str, int | None, str | None, dict[str, Any]]:
        """``<host>[/<cloud>]/image/upload/[<transformations>/][v<version>/]<public_id>[.ext]``."""

        def not_cloudinary(why: str) -> JobFailed:
            return JobFailed(
                f"The generator's cloudinary_link {image_url[:200]!r} {why}", "cloudinary_link"
            )

        parts = urlsplit(image_url.strip())
        host = parts.netloc.lower()
        segments = [unquote(s) for s in parts.path.split("/")[1:]]
        account = self._account
        if parts.scheme not in ("http", "https") or not host:
            raise not_cloudinary("is not an http(s) URL")
        if _SHARED_CDN_HOST.match(host):
            cloud = segments.pop(0) if segments else ""
            delivery = account.delivery_options(
                cloud_name=cloud, secure=True, private_cdn=False, cname=None,
                secure_distribution=None, sign_url=False,
            )  # fmt: skip
        elif match := _PRIVATE_CDN_HOST.match(host):
            delivery = account.delivery_options(
                cloud_name=match.group(1), secure=True, private_cdn=True, cname=None,
                secure_distribution=f"{match.group(1)}-res.cloudinary.com", sign_url=False,
            )  # fmt: skip
        elif host in account.delivery_hosts():
            delivery = account.delivery_options()
            if not delivery["private_cdn"]:
                delivery["cloud_name"] = segments.pop(0) if segments else ""
        else:
            raise not_cloudinary("is not a Cloudinary delivery URL")
        if not delivery["cloud_name"] or segments[:2] != ["image", "upload"] or len(segments) < 3:
            raise not_cloudinary("is not a Cloudinary URL of an uploaded image")

        rest = segments[2:]
        versions = [i for i, s in enumerate(rest[:-1]) if _VERSION_SEGMENT.match(s)]
        if versions:
            version: int | None = int(rest[versions[0]][1:])
            rest = rest[versions[0] + 1 :]
        else:
            # Without a version, leading segments that read as transformations are dropped.
            version = None
            while len(rest) > 1 and _TRANSFORMATION_SEGMENT.match(rest[0]):
                rest = rest[1:]
        path = "/".join(rest)
        stem, dot, extension = path.rpartition(".")
        if dot and stem and extension.lower() in _IMAGE_EXTENSIONS:
            return stem, version, extension.lower(), delivery
        return path, version, None, delivery

    def _redact(self, text: str) -> str:
        for secret in (self._cloudinary_url, self._account.api_secret):
            text = text.replace(secret, "[redacted]")
        return text


# -- helpers -------------------------------------------------------------------------------------


def job_context(job: Job) -> dict[str, str]:
    """The job's Cloudinary context metadata: empty values left out, each cut to the API limit."""
    raw = {
        "prompt": job.prompt,
        "model": job.model,
        "aspect_ratio": job.aspect_ratio,
        "job_id": job.id,
        "user_id": job.user_id,
    }
    context = {}
    for key, value in raw.items():
        if value is None or not str(value).strip():
            continue
        value = _CONTROL_CHARS.sub(" ", str(value))
        if len(value) > CONTEXT_VALUE_MAX_CHARS:
            value = value[: CONTEXT_VALUE_MAX_CHARS - 1] + "…"
        context[key] = value
    return context


def encode_context(context: dict[str, str]) -> str:
    """``k=v|k2=v2`` with ``\\``, ``|`` and ``=`` backslash-escaped in keys and values."""
    return "|".join(f"{_escape(key)}={_escape(value)}" for key, value in context.items())


def _escape(text: str) -> str:
    return _CONTEXT_SPECIAL.sub(r"\\\1", text)


def _check_image(image: bytes, max_bytes: int) -> tuple[str, str]:
    """(extension, content type) of validated image bytes, or ``JobFailed``."""
    if not image:
        raise JobFailed("The generator returned an empty image", "upload")
    if len(image) > max_bytes:
        raise JobFailed(
            f"The image is {len(image)} bytes, more than MAX_IMAGE_BYTES ({max_bytes})", "upload"
        )
    for magic, offset, extension, content_type in _IMAGE_SIGNATURES:
        if image[offset : offset + len(magic)] == magic:
            if extension == "webp" and not image.startswith(b"RIFF"):
                continue
            return extension, content_type
    raise JobFailed("The generated data is not an image Cloudinary accepts", "upload")


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
