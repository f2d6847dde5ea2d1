"""Which URLs the worker may fetch on a remote service's say-so: the address policy (SSRF).

A generator answers with an image URL, and every redirect hop names another; any of them could
point the worker at the cloud metadata service, an internal admin page or a neighbour on the
private network. ``UrlPolicy.check`` is asked before each connection:

* ``https`` only, no ``user:password@`` part;
* the host is resolved and every address must be public: loopback, private (RFC 1918, ULA),
  link-local, CGNAT, multicast, reserved (``192.0.0.0/24`` included), unspecified are refused,
  and so are IPv4 addresses carried inside IPv6 (IPv4-mapped ``::ffff:0:0/96``, 6to4
  ``2002::/16``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``), judged by the IPv4 address
  they carry, and the metadata endpoints (``METADATA_ADDRESSES``, ``METADATA_HOSTS``).

Then the connection itself (``vetted_client``) can only go where the policy says: its resolver
resolves the name once, checks every address and hands the connector only those, so the
address dialled is the address checked (a DNS answer that changes between a check and a
connect, DNS rebinding, never gets a request through); the TLS name and the ``Host`` header
stay the URL's. The socket factory refuses any address the policy does not allow, so no other
path (an address literal, which skips the resolver) reaches an unvetted peer either.

``ALLOW_INSECURE_DOWNLOADS=true`` (a local stack only) allows plain ``http`` and loopback
addresses (``127.0.0.0/8``, ``::1``), and nothing else: private (RFC 1918, ULA, CGNAT),
link-local and metadata addresses stay refused even then. The devstack runs with the flag on
and its generator stand-in answers with private and metadata URLs (``[gen:private_url]``) that
must never be contacted; every local stack of this project lives on loopback.
``UrlPolicy(allow_private=True)`` is the switch should a LAN stack need it (no setting turns it
on).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp import AiohttpTransport

from worker.errors import JobFailed
from worker.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[IPAddress]]]

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OCI, DigitalOcean, OpenStack...
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud (inside CGNAT)
        "192.0.0.192",  # Oracle Cloud's older endpoint
        "169.254.170.2",  # AWS ECS task metadata and credentials
    )
)
CGNAT = ipaddress.ip_network("100.64.0.0/10")
IETF_PROTOCOL_ASSIGNMENTS = ipaddress.ip_network("192.0.0.0/24")  # RFC 6890: never a web host
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (RFC 6052, RFC 8215).
NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))

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


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (IPv4-mapped, 6to4, NAT64), else None: where a
    connection to it really goes."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in prefix for prefix in NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_category(ip: IPAddress) -> str | None:
    """None for a public address, else what it is, phrased for an error message."""
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if (inner := embedded_ipv4(ip)) is not None:
        return address_category(inner)
    if isinstance(ip, ipaddress.IPv4Address) and ip in IETF_PROTOCOL_ASSIGNMENTS:
        return "a reserved address"
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
        # The contract: plain http and loopback addresses, for a local stack only. Private,
        # metadata, link-local and the other special ranges stay refused regardless.
        insecure = settings.allow_insecure_downloads
        return cls(allow_http=insecure, allow_loopback=insecure)

    def address_problem(self, ip: IPAddress) -> str | None:
        if ip in self.trusted_addresses:
            return None
        category = address_category(ip)
        # Only this host's own loopback: one wrapped in 6to4 or NAT64 is routed elsewhere.
        if category == "a loopback address" and self.allow_loopback and _own_loopback(ip):
            return None
        if category in _PRIVATE_CATEGORIES and self.allow_private:
            return None
        return category

    async def vetted_addresses(self, host: str, port: int) -> list[IPAddress]:
        """Every address ``host`` resolves to, once, if the policy allows all of them: raises
        ``RefusedAddress`` (the first one it does not) or ``OSError`` (no answer)."""
        addresses = await self.resolver(host, port)
        if not addresses:
            raise OSError(f"{host} has no address")
        # Every address, not just the first: the connector may use any of them.
        for ip in addresses:
            if problem := self.address_problem(ip):
                raise RefusedAddress(problem, ip)
        return addresses

    async def check(self, url: httpx.URL, what: str) -> None:
        """Raise ``JobFailed`` unless ``url`` may be fetched. ``what`` names it in messages.
        Asked before each request for a clear refusal; ``vetted_client`` enforces the address
        rules again when it connects."""
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
            await self.vetted_addresses(host, url.port or (443 if url.scheme == "https" else 80))
        except RefusedAddress as refused:
            raise refused.job_failed(what) from None
        except (OSError, UnicodeError, ValueError):
            raise JobFailed(
                f"{what} host {_short(host)!r} could not be resolved", "download"
            ) from None


def _own_loopback(ip: IPAddress) -> bool:
    return ip.is_loopback or (
        isinstance(ip, ipaddress.IPv6Address)
        and ip.ipv4_mapped is not None
        and ip.ipv4_mapped.is_loopback
    )


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


class RefusedAddress(OSError):
    """A connection the policy does not allow, refused before it is made. An ``OSError`` so
    that the connector treats it as a failed lookup or connect and gives up on that address."""

    def __init__(self, problem: str, ip: IPAddress) -> None:
        super().__init__(f"refused to connect to {problem} ({ip})")
        self.problem = problem
        self.ip = ip

    def job_failed(self, what: str) -> JobFailed:
        return JobFailed(f"{what} points to {self.problem} ({self.ip})", "download")

    @staticmethod
    def behind(exc: BaseException) -> RefusedAddress | None:
        """The refusal that made a request fail (the HTTP client wraps it), if that is why."""
        seen: BaseException | None = exc
        for _ in range(10):  # a short chain: httpx's error, aiohttp's, ours
            if seen is None or isinstance(seen, RefusedAddress):
                return seen
            seen = getattr(seen, "os_error", None) or seen.__cause__ or seen.__context__
        return None


class _VettedResolver(AbstractResolver):
    """aiohttp's resolver hook (``TCPConnector(resolver=…)``, aiohttp's documented extension
    point): one lookup, checked by the policy, and only those addresses handed to the
    connector. The host name stays the TLS server name and the ``Host`` header."""

    def __init__(self, policy: UrlPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._policy.vetted_addresses(host, port)
        versions = {socket.AF_INET: (4,), socket.AF_INET6: (6,)}.get(family, (4, 6))
        return [
            ResolveResult(
                hostname=host,
                host=str(ip),
                port=port,
                family=socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for ip in addresses
            if ip.version in versions
        ]

    async def close(self) -> None:
        return None


def vetted_client(policy: UrlPolicy, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` (on aiohttp's pool, like ``worker.http.pooled_client``) that can
    only connect to addresses ``policy`` allows, checked when the connection is made. No proxy
    variables (``trust_env=False``), no DNS cache: every new connection is looked up and
    checked afresh."""

    def session() -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            resolver=_VettedResolver(policy),
            use_dns_cache=False,
            socket_factory=lambda addr_info: _vetted_socket(policy, addr_info),
            ssl=httpx.create_ssl_context(),
        )
        return aiohttp.ClientSession(connector=connector, trust_env=False)

    # The session is made on first use, inside the event loop (aiohttp requires one).
    return httpx.AsyncClient(transport=AiohttpTransport(client=session), trust_env=False, **kwargs)


def _vetted_socket(policy: UrlPolicy, addr_info: tuple[Any, ...]) -> socket.socket:
    """The socket for one connection attempt, made only for an address the policy allows: the
    peer is always known and checked, whatever path led to it."""
    family, type_, proto, _, address = addr_info
    try:
        ip = parse_address(str(address[0]))
    except ValueError:
        raise OSError(f"refused to connect to {address[0]!r}: not an IP address") from None
    if problem := policy.address_problem(ip):
        raise RefusedAddress(problem, ip)
    return socket.socket(family=family, type=type_, proto=proto)
