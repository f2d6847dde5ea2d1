"""The worker's HTTP plumbing: the pooled client of its hot paths, and reading answers safely.

The client is httpx's ``AsyncClient`` API (what supabase-py takes, and what the rest of the code
is written against) running on aiohttp's connection pool through ``httpx-aiohttp``, from one of
httpx's maintainers. httpcore's own pool re-scans every connection and queued request on each
request: at WORKER_CONCURRENCY=128 that scan was most of the worker's CPU (measured with
cProfile in scripts/bench.py). The safe downloader keeps plain httpx: it checks the peer address
of the connection it read from, which only httpcore exposes.

The readers below take a *streamed* response (``client.stream(...)``), so that a body is never
held in full before its size is known: a remote server decides how much it sends.
"""

from __future__ import annotations

from typing import Any

import httpx
from httpx_aiohttp import HttpxAiohttpClient

# Worth another try besides every 5xx: 408 Request Timeout, 425 Too Early, 429 Too Many Requests.
TRANSIENT_STATUSES = frozenset({408, 425, 429})


def pooled_client(*, connections: int, **kwargs: Any) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` keeping up to ``connections`` connections open for reuse."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return HttpxAiohttpClient(limits=limits, **kwargs)


def really_timed_out(exc: httpx.TimeoutException) -> bool:
    """httpx-aiohttp reports every aiohttp connection error (refused, unresolvable host) as
    ``ConnectTimeout``; the aiohttp exception it wraps says what really happened."""
    import aiohttp

    cause = exc.__cause__
    return not (
        isinstance(cause, aiohttp.ClientConnectionError)
        and not isinstance(cause, aiohttp.ServerTimeoutError | aiohttp.SocketTimeoutError)
    )


def is_transient(status: int) -> bool:
    """Whether an HTTP status says "try again later" rather than "no"."""
    return status >= 500 or status in TRANSIENT_STATUSES


def media_type(response: httpx.Response) -> str:
    """The Content-Type without parameters, lower-cased ("" when absent)."""
    return response.headers.get("content-type", "").split(";", 1)[0].strip().lower()


class BodyTooLarge(Exception):
    """A response body over the reader's limit. ``size`` is the declared ``Content-Length``, or
    None when the body was cut off while streaming (no length sent, or a wrong one)."""

    def __init__(self, size: int | None, limit: int) -> None:
        super().__init__(f"response body over {limit} bytes")
        self.size = size
        self.limit = limit


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed response, refusing more than ``limit`` bytes (``BodyTooLarge``).

    ``Content-Length`` is checked first (no download at all), then the bytes are counted as
    they arrive, for servers that send no length or a wrong one.
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared), limit)
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > limit:
            raise BodyTooLarge(None, limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def read_start(response: httpx.Response, limit: int) -> bytes:
    """The first ``limit`` bytes of a streamed body (an error page: enough to classify and
    quote it); the rest is never read."""
    chunks: list[bytes] = []
    received = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        received += len(chunk)
        if received >= limit:
            break
    return b"".join(chunks)[:limit]
