"""One HTTP exchange with a generator's own API, answered as a ``Reply`` with its body read safely.

Every provider's calls go through ``ApiClient.call``: the pooled client (worker/http.py) with the
provider's auth header, redirects never followed (a provider API that redirects is answered as
it is), a size cap on every body, and transport failures turned into ``ProviderTransient``
("timeout" or "connection"). Each exchange is counted (``image_worker_generator_attempts``) and
logged without secrets. The per-attempt deadline is the driver's (``asyncio.timeout``).
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
    load_json,
    media_type,
    pooled_client,
    read_capped,
    read_start,
    really_timed_out,
)
from worker.observability import metrics
from worker.pipeline.generators.base import ProviderTransient, quote
from worker.pipeline.images import too_large
from worker.settings import Settings

ERROR_READ_BYTES = 65536  # an error answer: enough to classify it and quote its reason


@dataclass(frozen=True)
class Reply:
    status: int
    headers: httpx.Headers
    content_type: str
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def document(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return load_json(self.body)
        except ValueError:  # load_json: invalid, too deep (never a RecursionError)
            return None


def outcome_label(status: int | None, detail: str = "") -> str:
    """The metrics label of one HTTP exchange: 2xx/4xx/5xx, timeout or connection_error."""
    if status is not None:
        return f"{status // 100}xx"
    return "timeout" if "timed out" in detail or "timeout" in detail else "connection_error"


def transport_failure(exc: httpx.HTTPError, timeout: float) -> ProviderTransient | JobFailed:
    """What an httpx error means for an attempt."""
    if isinstance(exc, httpx.TimeoutException):
        if really_timed_out(exc):
            return ProviderTransient("timeout", f"timed out ({type(exc).__name__})")
        return ProviderTransient("connection", quote(f"ConnectError: {exc.__cause__}"))
    if isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL):
        return JobFailed(
            f"generator URL is not usable ({type(exc).__name__})", "generator_rejected"
        )
    if isinstance(exc, httpx.DecodingError):
        return JobFailed("generator's answer could not be decoded", "generator_bad_output")
    return ProviderTransient("connection", quote(f"{type(exc).__name__}: {exc}".rstrip(": ")))


class ApiClient:
    """The pooled client of one provider's API (``GENERATOR_URL``'s origin)."""

    def __init__(self, settings: Settings, kind: str, headers: dict[str, str]) -> None:
        self.kind = kind
        self._timeout = settings.generator_timeout_seconds
        self._client = pooled_client(
            connections=settings.worker_concurrency,
            follow_redirects=False,
            headers={"User-Agent": "image-worker", **headers},
            # The per-attempt asyncio deadline bounds an attempt; these only catch a connect
            # that hangs early.
            timeout=httpx.Timeout(self._timeout, connect=min(10.0, self._timeout)),
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def call(
        self,
        method: str,
        url: str | httpx.URL,
        *,
        what: str,
        json_body: Any = None,
        limit: int = 1 << 20,
        quiet: bool = False,
    ) -> Reply:
        """One request; a 2xx body is read up to ``limit`` bytes (over it: the image-size
        failure), any other answer's first ``ERROR_READ_BYTES``. ``quiet``: log at DEBUG
        (polls)."""
        started = time.monotonic()
        status: int | None = None
        content_type = ""
        body = b""
        outcome = ""
        try:
            kwargs = {"json": json_body} if json_body is not None else {}
            async with self._client.stream(method, url, **kwargs) as response:
                status = response.status_code
                content_type = media_type(response)
                if 200 <= status < 300:
                    try:
                        body = await read_capped(response, limit)
                    except BodyTooLarge as exc:
                        outcome = "answer too large"
                        raise too_large(exc.size, limit) from None
                else:
                    body = await read_start(response, ERROR_READ_BYTES)
                headers = response.headers
        except httpx.HTTPError as exc:
            failure = transport_failure(exc, self._timeout)
            outcome = str(failure)
            raise failure from None
        finally:
            metrics.GENERATOR_ATTEMPTS.labels(outcome_label(status, outcome)).inc()
            logger.log(
                "DEBUG" if quiet else "INFO",
                "{} {}: {} {} {} bytes, {:.2f}s{}",
                self.kind,
                what,
                f"HTTP {status}" if status is not None else "no answer",
                content_type or "-",
                len(body),
                time.monotonic() - started,
                f" ({outcome})" if outcome else "",
            )
        return Reply(status, headers, content_type, body)
