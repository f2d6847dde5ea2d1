"""The HTTP client the worker uses for its hot paths (database API, generator, Cloudinary).

It is httpx's ``AsyncClient`` API (what supabase-py takes, and what the rest of the code is
written against) running on aiohttp's connection pool through ``httpx-aiohttp``, from one of
httpx's maintainers. httpcore's own pool re-scans every connection and queued request on each
request: at WORKER_CONCURRENCY=128 that scan was most of the worker's CPU (measured with
cProfile in scripts/bench.py). The safe downloader keeps plain httpx: it checks the peer address
of the connection it read from, which only httpcore exposes.
"""

from __future__ import annotations

from typing import Any

import httpx
from httpx_aiohttp import HttpxAiohttpClient


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
