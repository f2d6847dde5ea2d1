"""Which URLs the worker may fetch on a remote service's say-so: the address policy (SSRF).

A generator answers with an image URL, and every redirect hop names another; any of them could
point the worker at the cloud metadata service, an internal admin page or a neighbour on the
private network. ``UrlPolicy.check`` is asked before each connection:

* ``https`` only, no ``user:password@`` part;
* the host is resolved and every address must be public: loopback, private (RFC 1918, ULA),
  link-local, CGNAT, multicast, reserved, unspecified and IPv4-mapped forms of those are
  refused, and so are the metadata endpoints (169.254.169.254, fd00:ec2::254,
  metadata.google.internal).

``UrlPolicy.address_problem`` is also what the downloader asks about the address a connection
really reached (DNS rebinding).

``ALLOW_INSECURE_DOWNLOADS=true`` (local stacks only) allows plain ``http`` and loopback
addresses. Private (RFC 1918, ULA, CGNAT) addresses stay refused even then, on purpose: the
devstack runs with the flag on and its generator stand-in can answer with private and metadata
URLs (``[gen:private_url]``) that must never be contacted; every local stack of this project
lives on loopback. ``UrlPolicy(allow_private=True)`` is the switch should a LAN stack need it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from worker.errors import JobFailed
from worker.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset(
    {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")

_PRIVATE_CATEGORIES = frozenset({"a private address", "a CGNAT address"})


def parse_address(text: str) -> IPAddress:
    """An address as a socket reports it; an IPv6 zone ("fe80::1%eth0") is dropped first, the
    address itself is what matters. ``ValueError`` if it is not an IP address."""
    return ipaddress.ip_address(text.split("%", 1)[0])


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` resolves to, as the OS would connect (odd spellings such as
    ``0x7f.1`` or ``2130706433`` come back normalised, here 127.0.0.1)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [parse_address(str(info[4][0])) for info in infos]


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


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
