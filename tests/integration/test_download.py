"""ImageDownloader: the SSRF rules, redirects re-checked per hop, size cap, content, deadline.

Addresses outside loopback are only ever *resolved* here, never contacted: every refusal below
happens before a connection is made. Real fetches go to the generator stand-in on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from devstack.generator import GeneratorStandIn
from worker.errors import JobFailed
from worker.pipeline.addresses import IPAddress, UrlPolicy, address_category
from worker.pipeline.download import ImageDownloader
from worker.pipeline.images import sniff_image
from worker.settings import Settings

LOOPBACK = ipaddress.ip_address("127.0.0.1")


@pytest_asyncio.fixture(scope="module")
async def standin() -> AsyncIterator[GeneratorStandIn]:
    server = GeneratorStandIn()
    await server.start("127.0.0.1")
    yield server
    await server.stop()


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "supabase_url": "http://127.0.0.1:9",
        "supabase_service_role_key": "k",
        "allow_insecure_downloads": False,
        "max_image_bytes": 65536,
    }
    values.update(overrides)
    return Settings(**values)


async def fetch(url: str, *, policy: UrlPolicy | None = None, **options: Any) -> bytes:
    settings = make_settings(**options.pop("settings", {}))
    options.setdefault("retry_wait_seconds", 0.01)
    downloader = ImageDownloader(settings, policy=policy, **options)
    try:
        return await downloader.fetch(url)
    finally:
        await downloader.aclose()


async def fetch_fails(url: str, **kwargs: Any) -> JobFailed:
    with pytest.raises(JobFailed) as caught:
        await fetch(url, **kwargs)
    return caught.value


# The stand-in is plain http on loopback: allowed by this policy for the FIRST hop only, so a
# redirect's target is judged by the real rules.
TRUST_STANDIN = UrlPolicy(allow_http=True, trusted_addresses=frozenset({LOOPBACK}))
INSECURE = {"allow_insecure_downloads": True}


# ------------------------------------------------------------------ scheme and address rules


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://127.0.0.1:9/x.png", "image URL must use https"),
        ("ftp://example.com/x.png", "image URL must use https (got ftp scheme)"),
        ("file:///etc/passwd", "image URL must use https (got file scheme)"),
        ("not a url", "image URL must use https (got no scheme)"),
        ("https://user:pw@example.com/x.png", "image URL must not contain a user name or password"),
        ("https://10.0.0.5/x.png", "image URL points to a private address (10.0.0.5)"),
        ("https://192.168.1.20/x.png", "image URL points to a private address (192.168.1.20)"),
        ("https://[fc00::5]/x.png", "image URL points to a private address (fc00::5)"),
        (
            "https://169.254.169.254/latest/meta-data/",
            "image URL points to a cloud metadata address (169.254.169.254)",
        ),
        (
            "https://[fd00:ec2::254]/",
            "image URL points to a cloud metadata address (fd00:ec2::254)",
        ),
        (
            "https://metadata.google.internal/computeMetadata/v1/",
            "image URL points to a cloud metadata address",
        ),
        ("https://127.0.0.1/x.png", "image URL points to a loopback address (127.0.0.1)"),
        ("https://[::1]/x.png", "image URL points to a loopback address (::1)"),
        ("https://0x7f.1/x.png", "image URL points to a loopback address (127.0.0.1)"),
        ("https://2130706433/x.png", "image URL points to a loopback address (127.0.0.1)"),
        ("https://[::ffff:127.0.0.1]/x.png", "image URL points to a loopback address"),
        ("https://[::ffff:10.0.0.1]/x.png", "image URL points to a private address"),
        ("https://100.64.0.1/x.png", "image URL points to a CGNAT address (100.64.0.1)"),
        ("https://169.254.10.1/x.png", "image URL points to a link-local address (169.254.10.1)"),
        ("https://224.0.0.1/x.png", "image URL points to a multicast address (224.0.0.1)"),
        ("https://0.0.0.0/x.png", "image URL points to an unspecified address (0.0.0.0)"),
        ("https://240.0.0.1/x.png", "image URL points to a reserved address (240.0.0.1)"),
    ],
)
async def test_forbidden_urls_are_refused_before_any_connection(url: str, message: str) -> None:
    failed = await fetch_fails(url)
    assert failed.message.startswith(message)
    assert failed.reason == "download"


async def test_localhost_is_refused() -> None:
    failed = await fetch_fails("https://localhost/x.png")
    assert failed.message.startswith("image URL points to a loopback address")


async def test_unresolvable_host_fails_clearly() -> None:
    async def no_such_host(host: str, port: int) -> list[IPAddress]:
        raise OSError("Name or service not known")

    failed = await fetch_fails(
        "https://images.invalid/x.png", policy=UrlPolicy(resolver=no_such_host)
    )
    assert failed.message == "image URL host 'images.invalid' could not be resolved"


@pytest.mark.parametrize(
    ("ip", "problem"),
    [
        # The contract: ALLOW_INSECURE_DOWNLOADS admits plain http and loopback addresses...
        ("127.0.0.1", None),
        ("127.8.8.8", None),
        ("::1", None),
        ("::ffff:127.0.0.1", None),
        # ...and nothing else: not the private network, never metadata or link-local.
        ("10.0.0.5", "a private address"),
        ("172.18.0.3", "a private address"),
        ("fc00::5", "a private address"),
        ("100.64.0.1", "a CGNAT address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("192.0.0.192", "a cloud metadata address"),
        ("169.254.10.10", "a link-local address"),
        ("fe80::1", "a link-local address"),
        ("224.0.0.1", "a multicast address"),
        # A loopback address wrapped in 6to4 or NAT64 is routed away, not to this host.
        ("2002:7f00:1::", "a loopback address"),
        ("64:ff9b::7f00:1", "a loopback address"),
    ],
)
def test_insecure_mode_policy(ip: str, problem: str | None) -> None:
    """Finding 5: the flag allows http and loopback for a local stack, nothing more."""
    # Judged on the policy alone: nothing here may be connected to.
    policy = UrlPolicy.from_settings(make_settings(**INSECURE))
    assert policy.address_problem(ipaddress.ip_address(ip)) == problem


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "http://169.254.169.254/latest/meta-data/",
            "image URL points to a cloud metadata address (169.254.169.254)",
        ),
        (
            "http://100.100.100.200/latest/meta-data/",
            "image URL points to a cloud metadata address (100.100.100.200)",
        ),
        (
            "http://192.0.0.192/latest/",
            "image URL points to a cloud metadata address (192.0.0.192)",
        ),
        ("http://10.0.0.5/x.png", "image URL points to a private address (10.0.0.5)"),
    ],
)
async def test_insecure_mode_still_refuses_metadata_and_private_addresses(
    url: str, message: str
) -> None:
    failed = await fetch_fails(url, settings=INSECURE)
    assert failed.message == message


async def test_insecure_mode_allows_http_on_loopback(standin: GeneratorStandIn) -> None:
    data = await fetch(standin.asset_url("png"), settings=INSECURE)
    assert sniff_image(data) == "png"


@pytest.mark.parametrize(
    ("ip", "category"),
    [
        ("8.8.8.8", None),
        ("2606:4700::1111", None),
        ("10.1.2.3", "a private address"),
        ("172.16.0.1", "a private address"),
        ("::ffff:192.168.0.1", "a private address"),
        ("::ffff:8.8.8.8", None),
        ("127.8.8.8", "a loopback address"),
        ("fe80::1", "a link-local address"),
        ("ff02::1", "a multicast address"),
        ("::", "an unspecified address"),
        ("100.127.255.254", "a CGNAT address"),
        ("192.0.2.1", "a private address"),  # TEST-NET-1: documentation only
        ("169.254.169.254", "a cloud metadata address"),
        # Finding 5: more metadata endpoints, the IETF block, and IPv4 inside IPv6 unwrapped.
        ("192.0.0.192", "a cloud metadata address"),  # Oracle Cloud
        ("100.100.100.200", "a cloud metadata address"),  # Alibaba Cloud
        ("::ffff:100.100.100.200", "a cloud metadata address"),
        ("192.0.0.8", "a reserved address"),  # 192.0.0.0/24: IETF protocol assignments
        ("2002:a9fe:a9fe::", "a cloud metadata address"),  # 6to4 of 169.254.169.254
        ("2002:c000:c0::", "a cloud metadata address"),  # 6to4 of 192.0.0.192
        ("2002:7f00:1::", "a loopback address"),
        ("2002:a00:1::", "a private address"),
        ("2002:808:808::", None),  # 6to4 of a public address
        ("64:ff9b::a9fe:a9fe", "a cloud metadata address"),  # NAT64 (RFC 6052)
        ("64:ff9b::7f00:1", "a loopback address"),
        ("64:ff9b::a00:1", "a private address"),
        ("64:ff9b:1::a00:1", "a private address"),  # local-use NAT64 (RFC 8215)
        ("64:ff9b::808:808", None),  # DNS64 on an IPv6-only network: a public host
    ],
)
def test_address_categories(ip: str, category: str | None) -> None:
    assert address_category(ipaddress.ip_address(ip)) == category


# ------------------------------------------------------------------ redirects, hop by hop


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("https://10.0.0.5/x.png", "image URL redirect points to a private address (10.0.0.5)"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "image URL redirect points to a cloud metadata address (169.254.169.254)",
        ),
        ("https://[::1]:8443/x.png", "image URL redirect points to a loopback address (::1)"),
        ("file:///etc/passwd", "image URL redirect must use https (got file scheme)"),
    ],
)
async def test_every_redirect_hop_is_checked(
    standin: GeneratorStandIn, target: str, message: str
) -> None:
    url = standin.asset_url(f"redirect_to:{target}", job_id="hops")
    before = len(standin.calls_for("hops"))
    failed = await fetch_fails(url, policy=TRUST_STANDIN)
    assert failed.message == message
    hops = standin.calls_for("hops")[before:]
    assert [(c.method, c.status) for c in hops] == [("GET", 302)]  # target never contacted


async def test_allowed_redirects_are_followed(standin: GeneratorStandIn) -> None:
    url = standin.asset_url("redirect:2", job_id="redirects-ok")
    data = await fetch(url, policy=TRUST_STANDIN)
    assert sniff_image(data) == "png"
    assert [c.status for c in standin.calls_for("redirects-ok")] == [302, 302, 200]


async def test_too_many_redirects(standin: GeneratorStandIn) -> None:
    failed = await fetch_fails(standin.asset_url("redirect:10"), policy=TRUST_STANDIN)
    assert failed.message == "image URL redirected more than 5 times"


async def test_dns_rebinding_never_gets_a_request_through(standin: GeneratorStandIn) -> None:
    """Finding 4: the name answers a public address when checked, then loopback (rebinding).
    The connection is made to the address that was vetted, at the moment it was vetted: the
    loopback server never sees a request, not even one blind one."""
    answers = iter([[ipaddress.ip_address("93.184.216.34")]])

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        return next(answers, [LOOPBACK])

    url = standin.asset_url("png", job_id="rebinding").replace("127.0.0.1", "localhost")
    failed = await fetch_fails(url, policy=UrlPolicy(allow_http=True, resolver=rebinding))
    assert standin.calls_for("rebinding") == []
    assert failed.message == "image URL points to a loopback address (127.0.0.1)"


async def test_an_address_that_was_not_vetted_is_never_connected_to(
    standin: GeneratorStandIn,
) -> None:
    """The lookup lies about an address literal (it is never asked when connecting): the
    socket itself refuses the address, and nothing is sent."""

    async def lying_resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.216.34")]

    policy = UrlPolicy(allow_http=True, resolver=lying_resolver)
    failed = await fetch_fails(standin.asset_url("png", job_id="unvetted"), policy=policy)
    assert standin.calls_for("unvetted") == []
    assert failed.message == "image URL points to a loopback address (127.0.0.1)"


# ------------------------------------------------------------------ what is downloaded


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp", "gif"])
async def test_images_are_downloaded(standin: GeneratorStandIn, fmt: str) -> None:
    data = await fetch(standin.asset_url(fmt), policy=TRUST_STANDIN)
    assert sniff_image(data) == fmt


async def test_download_sends_no_credentials(standin: GeneratorStandIn) -> None:
    await fetch(standin.asset_url("png", job_id="no-auth"), policy=TRUST_STANDIN)
    (call,) = standin.calls_for("no-auth")
    assert "Authorization" not in call.headers
    assert call.headers.get("User-Agent") == "image-worker"


async def test_proxy_variables_are_ignored(
    standin: GeneratorStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    data = await fetch(standin.asset_url("png"), policy=TRUST_STANDIN)
    assert sniff_image(data) == "png"


@pytest.mark.parametrize(
    ("asset", "message"),
    [
        ("oversize:200000", "image is 195.3 KB, over the 64 KB limit"),
        ("oversize_chunked:200000", "image is over the 64 KB limit"),
    ],
)
async def test_size_cap(standin: GeneratorStandIn, asset: str, message: str) -> None:
    failed = await fetch_fails(standin.asset_url(asset), policy=TRUST_STANDIN)
    assert (failed.message, failed.reason) == (message, "image_too_large")


@pytest.mark.parametrize(
    ("asset", "message"),
    [
        (
            "html_as_png",
            "downloaded file is not an image (served as image/png, but the bytes are not PNG, "
            "JPEG, WebP or GIF)",
        ),
        ("html", "downloaded file is not an image (text/html)"),
    ],
)
async def test_content_is_checked_by_magic_bytes(
    standin: GeneratorStandIn, asset: str, message: str
) -> None:
    failed = await fetch_fails(standin.asset_url(asset), policy=TRUST_STANDIN)
    assert failed.message == message


@pytest.mark.parametrize("asset", ["dribble:0.1", "slow:5", "hang"])
async def test_overall_deadline(standin: GeneratorStandIn, asset: str) -> None:
    started = time.monotonic()
    failed = await fetch_fails(standin.asset_url(asset), policy=TRUST_STANDIN, deadline_seconds=0.5)
    assert failed.message == "image download timed out after 0.5 s"
    assert time.monotonic() - started < 1.5


async def test_transient_status_is_retried(standin: GeneratorStandIn) -> None:
    data = await fetch(standin.asset_url("status:503:1", job_id="retry"), policy=TRUST_STANDIN)
    assert sniff_image(data) == "png"
    assert [c.status for c in standin.calls_for("retry")] == [503, 200]


async def test_transient_status_forever_fails(standin: GeneratorStandIn) -> None:
    failed = await fetch_fails(standin.asset_url("status:502"), policy=TRUST_STANDIN)
    assert failed.message == "image download failed after 3 attempts (last: HTTP 502)"


async def test_client_error_fails_at_once(standin: GeneratorStandIn) -> None:
    failed = await fetch_fails(standin.asset_url("status:404", job_id="gone"), policy=TRUST_STANDIN)
    assert failed.message == "image download failed: HTTP 404"
    assert len(standin.calls_for("gone")) == 1


# ------------------------------------------------------------------ compressed bodies (finding 3)


@pytest_asyncio.fixture(scope="module")
async def compressing_host() -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """An image host on loopback that gzips whatever the client asked for, as a hostile one
    may: ``/bomb`` is ~200 KB on the wire and 150 MiB once inflated. Records request headers."""
    import gzip

    from aiohttp import web

    seen: list[dict[str, str]] = []
    body = gzip.compress(b"\x89PNG\r\n\x1a\n" + bytes(150 << 20), compresslevel=9)

    async def bomb(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.Response(
            body=body, headers={"Content-Type": "image/png", "Content-Encoding": "gzip"}
        )

    app = web.Application()
    app.router.add_get("/bomb.png", bomb)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_downloads_ask_for_no_compression_and_cap_a_gzip_bomb_while_inflating(
    compressing_host: tuple[str, list[dict[str, str]]],
) -> None:
    import tracemalloc

    base, seen = compressing_host
    tracemalloc.start()
    try:
        failed = await fetch_fails(
            f"{base}/bomb.png", policy=TRUST_STANDIN, settings={"max_image_bytes": 1 << 20}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (failed.message, failed.reason) == ("image is over the 1 MB limit", "image_too_large")
    assert peak < 8 << 20, f"peak {peak / (1 << 20):.1f} MiB for a 1 MiB cap"
    assert seen[-1].get("Accept-Encoding") == "identity"
