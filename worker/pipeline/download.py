"""Safe download of an image URL returned by a generator.

The URL comes from a remote service, so it is treated as hostile (SSRF): it could point the
worker at the cloud metadata service, at an internal admin page, or at an endless stream.
Rules, checked on the first URL and again on EVERY redirect hop (at most ``MAX_REDIRECTS``):

* the URL and the addresses its host resolves to must pass ``UrlPolicy``
  (``worker.pipeline.addresses``: https only, public addresses only, no metadata endpoints);
* the connection is made only to an address the policy vetted as it connects
  (``vetted_client``): a DNS answer that changes between the check and the connection (DNS
  rebinding) is refused before any byte is sent, not noticed afterwards;
* ``Content-Length`` over ``MAX_IMAGE_BYTES`` is refused before reading, and the body is counted
  while streaming (servers may send no length, or lie);
* the bytes must be PNG, JPEG, WebP or GIF by their magic numbers;
* the whole download, all hops and retries included, has one deadline (``asyncio.timeout``):
  httpx's timeouts are per socket read, and a server sending a byte a second never trips them.

The downloader has its OWN httpx client: no generator token, no custom headers (httpx forwards
custom headers across origins on redirects), and ``trust_env=False`` so proxy variables cannot
reroute it. Connection errors, 408, 425, 429 and 5xx are retried twice, briefly, within the deadline;
everything else fails the job at once with a ``JobFailed`` (reason ``download``, or
``image_too_large``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from loguru import logger
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from worker.errors import JobFailed, TransientError
from worker.http import BodyTooLarge, is_transient, media_type, read_capped
from worker.pipeline.addresses import RefusedAddress, UrlPolicy, vetted_client
from worker.pipeline.images import human_size, sniff_image, too_large
from worker.settings import Settings

MAX_REDIRECTS = 5
DEFAULT_DEADLINE_SECONDS = 60.0
DOWNLOAD_ATTEMPTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class ImageDownloader:
    """Fetches image URLs under the rules above. One pooled client, reused across jobs."""

    def __init__(
        self,
        settings: Settings,
        *,
        policy: UrlPolicy | None = None,
        deadline_seconds: float = DEFAULT_DEADLINE_SECONDS,
        retry_wait_seconds: float = 0.5,
    ) -> None:
        self._max_bytes = settings.max_image_bytes
        self._policy = policy or UrlPolicy.from_settings(settings)
        self._deadline = deadline_seconds
        self._retry_wait = retry_wait_seconds
        # Connects only to addresses the policy vetted, when it connects (DNS rebinding).
        self._client = vetted_client(
            self._policy,
            follow_redirects=False,  # each hop is checked by hand
            timeout=httpx.Timeout(min(30.0, deadline_seconds), connect=min(10.0, deadline_seconds)),
            # Images are compressed already; a compressed answer is still inflated in bounded
            # steps and counted (worker.http.iter_decoded), for servers that ignore this.
            headers={
                "User-Agent": "image-worker",
                "Accept": "image/*",
                "Accept-Encoding": "identity",
            },
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(self, url: str) -> bytes:
        """The validated image bytes at ``url``; ``JobFailed`` with a clear sentence otherwise."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._deadline):
                async for attempt in AsyncRetrying(
                    stop=stop_after_attempt(DOWNLOAD_ATTEMPTS),
                    wait=wait_exponential(multiplier=self._retry_wait, max=4 * self._retry_wait),
                    retry=retry_if_exception_type(TransientError),
                    reraise=True,
                ):
                    with attempt:
                        data = await self._fetch_once(url)
        except TimeoutError:
            raise JobFailed(
                f"image download timed out after {self._deadline:g} s", "download"
            ) from None
        except TransientError as exc:
            raise JobFailed(
                f"image download failed after {DOWNLOAD_ATTEMPTS} attempts (last: {exc})",
                "download",
            ) from None
        logger.info(
            "downloaded image: {} in {:.2f}s", human_size(len(data)), time.monotonic() - started
        )
        return data

    async def _fetch_once(self, url: str) -> bytes:
        try:
            current = httpx.URL(url)
        except (httpx.InvalidURL, TypeError):
            raise JobFailed("image URL is not a valid URL", "download") from None
        for hop in range(MAX_REDIRECTS + 1):
            what = "image URL" if hop == 0 else "image URL redirect"
            try:
                async with self.checked_stream("GET", current, what) as response:
                    if response.status_code in REDIRECT_STATUSES:
                        location = response.headers.get("location")
                        if not location:
                            raise JobFailed(
                                f"image download failed: HTTP {response.status_code} "
                                "without a Location",
                                "download",
                            )
                        current = current.join(location)
                        continue
                    return await self._read_image(response)
            except httpx.InvalidURL:
                raise JobFailed(f"{what} is not a valid URL", "download") from None
            except httpx.DecodingError:
                raise JobFailed(
                    "image download failed: the body could not be decoded", "download"
                ) from None
            except httpx.TransportError as exc:
                # Connect/read errors and per-read timeouts: worth another try.
                raise TransientError(type(exc).__name__) from exc
        raise JobFailed(f"image URL redirected more than {MAX_REDIRECTS} times", "download")

    @contextlib.asynccontextmanager
    async def checked_stream(
        self, method: str, url: httpx.URL, what: str, **kwargs: Any
    ) -> AsyncIterator[httpx.Response]:
        """One request to ``url`` under the download rules (the address policy before
        connecting, and again on the very address connected to), on this credential-free
        client, redirects not followed: for a caller that follows hops itself (the generator's
        redirects to another origin). A refused address is ``JobFailed``."""
        await self._policy.check(url, what)
        try:
            async with self._client.stream(method, url, **kwargs) as response:
                yield response
        except httpx.TransportError as exc:
            if (refused := RefusedAddress.behind(exc)) is not None:
                raise refused.job_failed(what) from None
            raise

    async def _read_image(self, response: httpx.Response) -> bytes:
        status = response.status_code
        if is_transient(status):
            raise TransientError(f"HTTP {status}")
        if not 200 <= status < 300:
            raise JobFailed(f"image download failed: HTTP {status}", "download")
        try:
            data = await read_capped(response, self._max_bytes)
        except BodyTooLarge as exc:
            raise too_large(exc.size, self._max_bytes) from None
        if sniff_image(data) is None:
            content_type = media_type(response) or "no content type"
            if content_type.startswith("image/"):
                detail = f"served as {content_type}, but the bytes are not PNG, JPEG, WebP or GIF"
            else:
                detail = content_type
            raise JobFailed(f"downloaded file is not an image ({detail})", "download")
        return data
