"""Safe download of an image URL returned by a generator.

The URL comes from a remote service, so it is treated as hostile (SSRF): it could point the
worker at the cloud metadata service, at an internal admin page, or at an endless stream.
Rules, checked on the first URL and again on EVERY redirect hop (at most ``MAX_REDIRECTS``):

* ``https`` only, no ``user:password@`` part;
* the host is resolved and every address must be public: loopback, private (RFC 1918, ULA),
  link-local, CGNAT, multicast, reserved, unspecified and IPv4-mapped forms of those are
  refused, and so are the metadata endpoints (169.254.169.254, fd00:ec2::254,
  metadata.google.internal);
* the address the connection actually reached is checked again before the body is read, so a
  DNS answer that changes between our lookup and httpx's (DNS rebinding) is caught too;
* ``Content-Length`` over ``MAX_IMAGE_BYTES`` is refused before reading, and the body is counted
  while streaming (servers may send no length, or lie);
* the bytes must be PNG, JPEG, WebP or GIF by their magic numbers;
* the whole download, all hops and retries included, has one deadline (``asyncio.timeout``):
  httpx's timeouts are per socket read, and a server sending a byte a second never trips them.

``ALLOW_INSECURE_DOWNLOADS=true`` (local stacks only) allows plain ``http`` and loopback
addresses. Private (RFC 1918, ULA, CGNAT) addresses stay refused even then, on purpose: the
devstack runs with the flag on and its generator stand-in can answer with private and metadata
URLs (``[gen:private_url]``) that must never be contacted; every local stack of this project
lives on loopback. ``UrlPolicy(allow_private=True)`` is the switch should a LAN stack need it.

The downloader has its OWN httpx client: no generator token, no custom headers (httpx forwards
custom headers across origins on redirects), and ``trust_env=False`` so proxy variables cannot
reroute it. Connection errors, 408, 429 and 5xx are retried twice, briefly, within the deadline;
everything else fails the job at once with a ``JobFailed`` (reason ``download``, or
``image_too_large``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
from loguru import logger
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from worker.errors import JobFailed, TransientError
from worker.pipeline.images import human_size, sniff_image, too_large
from worker.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

MAX_REDIRECTS = 5
DEFAULT_DEADLINE_SECONDS = 60.0
DOWNLOAD_ATTEMPTS = 3
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
TRANSIENT_STATUSES = frozenset({408, 425, 429})

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")

_PRIVATE_CATEGORIES = frozenset({"a private address", "a CGNAT address"})


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, as the OS would connect (odd spellings such as
    ``0x7f.1`` or ``2130706433`` come back normalised, here 127.0.0.1)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # Drop an IPv6 zone ("fe80::1%eth0") before parsing; the address itself is what matters.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def address_category(ip: IPAddress) -> str | None:
    """None for a public address, else what it is, phrased for an error message."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return address_category(ip.ipv4_mapped)
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_unspecified:
        return "an unspecified address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in CGNAT:
        return "a CGNAT address"
    if ip.is_reserved:  # before is_private, which also covers 240.0.0.0/4
        return "a reserved address"
    if ip.is_private:
        return "a private address"
    if not ip.is_global:
        return "a reserved address"
    return None


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs the downloader may fetch. Built from settings in production; tests inject
    one to exercise a rule in isolation (e.g. trust the loopback stand-in for the first hop and
    watch the redirect hop be refused)."""

    allow_http: bool = False
    allow_loopback: bool = False
    allow_private: bool = False  # RFC 1918, ULA and CGNAT addresses
    trusted_addresses: frozenset[IPAddress] = frozenset()  # exempt from the address rules
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> UrlPolicy:
        # The contract: plain http and loopback/private addresses, for a local stack only.
        # Metadata, link-local and the other special ranges stay refused regardless.
        insecure = settings.allow_insecure_downloads
        return cls(allow_http=insecure, allow_loopback=insecure, allow_private=insecure)

    def address_problem(self, ip: IPAddress) -> str | None:
        if ip in self.trusted_addresses:
            return None
        category = address_category(ip)
        if category == "a loopback address" and self.allow_loopback:
            return None
        if category in _PRIVATE_CATEGORIES and self.allow_private:
            return None
        return category

    async def check(self, url: httpx.URL, what: str) -> None:
        """Raise ``JobFailed`` unless ``url`` may be fetched. ``what`` names it in messages."""
        if url.scheme not in ("http", "https"):
            raise JobFailed(f"{what} must use https (got {url.scheme or 'no'} scheme)", "download")
        if url.scheme == "http" and not self.allow_http:
            raise JobFailed(f"{what} must use https", "download")
        if url.userinfo:
            raise JobFailed(f"{what} must not contain a user name or password", "download")
        host = url.host.rstrip(".").lower()
        if not host:
            raise JobFailed(f"{what} has no host", "download")
        if host in METADATA_HOSTS:
            raise JobFailed(f"{what} points to a cloud metadata address", "download")
        try:
            addresses = await self.resolver(
                host, url.port or (443 if url.scheme == "https" else 80)
            )
        except (OSError, UnicodeError, ValueError):
            raise JobFailed(
                f"{what} host {_short(host)!r} could not be resolved", "download"
            ) from None
        if not addresses:
            raise JobFailed(f"{what} host {_short(host)!r} could not be resolved", "download")
        # Every address, not just the first: the OS (or a retry) may connect to any of them.
        for ip in addresses:
            if problem := self.address_problem(ip):
                raise JobFailed(f"{what} points to {problem} ({ip})", "download")


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
        self._client = httpx.AsyncClient(
            follow_redirects=False,  # each hop is checked by hand
            trust_env=False,
            timeout=httpx.Timeout(min(30.0, deadline_seconds), connect=min(10.0, deadline_seconds)),
            headers={"User-Agent": "image-worker", "Accept": "image/*"},
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
            await self._policy.check(current, what)
            try:
                async with self._client.stream("GET", current) as response:
                    self._check_peer(response, what)
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

    def _check_peer(self, response: httpx.Response, what: str) -> None:
        """Refuse if the connection reached a forbidden address after all (DNS rebinding)."""
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if not peer:
            return
        try:
            ip = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
        except ValueError:
            return
        if problem := self._policy.address_problem(ip):
            raise JobFailed(f"{what} connected to {problem} ({ip})", "download")

    async def _read_image(self, response: httpx.Response) -> bytes:
        status = response.status_code
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise TransientError(f"HTTP {status}")
        if not 200 <= status < 300:
            raise JobFailed(f"image download failed: HTTP {status}", "download")
        data = await read_capped(response, self._max_bytes)
        if sniff_image(data) is None:
            content_type = media_type(response) or "no content type"
            if content_type.startswith("image/"):
                detail = f"served as {content_type}, but the bytes are not PNG, JPEG, WebP or GIF"
            else:
                detail = content_type
            raise JobFailed(f"downloaded file is not an image ({detail})", "download")
        return data


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed response, refusing more than ``limit`` bytes.

    ``Content-Length`` is checked first (no download at all), then the bytes are counted as
    they arrive, for servers that send no length or a wrong one.
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > limit:
            raise too_large(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(response: httpx.Response) -> str:
    """The Content-Type without parameters, lower-cased ("" when absent)."""
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
