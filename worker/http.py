"""The worker's HTTP plumbing: the pooled client of its hot paths, and reading answers safely.

The client is httpx's ``AsyncClient`` API (what supabase-py takes, and what the rest of the code
is written against) running on aiohttp's connection pool through ``httpx-aiohttp``, from one of
httpx's maintainers. httpcore's own pool re-scans every connection and queued request on each
request: at WORKER_CONCURRENCY=128 that scan was most of the worker's CPU (measured with
cProfile in scripts/bench.py). The safe downloader runs on an aiohttp pool too, with a resolver that
lets it connect only to addresses it has checked (``worker.pipeline.addresses.vetted_client``).

The readers below take a *streamed* response (``client.stream(...)``), so that a body is never
held in full before its size is known: a remote server decides how much it sends, and how much
its compressed bytes inflate to (``iter_decoded``). ``load_json`` parses a remote body with its
nesting bounded.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import AsyncIterator, Iterator
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


# The content codings the readers inflate, as zlib's ``wbits``. They inflate by hand, at most
# INFLATE_STEP bytes at a time, because httpx inflates each network chunk whole: 200 KB of gzip
# became 143 MB in memory before a 20 MB cap could count it. Other codings are passed through
# undecoded, as httpx does (an image check then refuses them).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
INFLATE_STEP = 64 * 1024


class _Inflater:
    """One content coding undone in bounded steps (``httpx.DecodingError`` on corrupt data)."""

    def __init__(self, coding: str) -> None:
        self._raw_deflate_tried = coding != "deflate"
        self._zlib = zlib.decompressobj(_WBITS[coding])

    def feed(self, data: bytes) -> Iterator[bytes]:
        while not self._zlib.eof:
            try:
                out = self._zlib.decompress(data, INFLATE_STEP)
            except zlib.error as exc:
                if not self._raw_deflate_tried:
                    # "deflate" without its zlib wrapper, which servers send too (httpx reads both).
                    self._raw_deflate_tried = True
                    self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise httpx.DecodingError(f"the body could not be inflated: {exc}") from None
            self._raw_deflate_tried = True
            data = self._zlib.unconsumed_tail
            if out:
                yield out
            if not data and len(out) < INFLATE_STEP:
                return  # everything fed is out; a full step may have more to give

    def finish(self) -> bytes:
        try:
            return self._zlib.flush()
        except zlib.error as exc:
            raise httpx.DecodingError(f"the body could not be inflated: {exc}") from None


async def iter_decoded(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body of a streamed response as httpx would decode it, in pieces of at most
    ``INFLATE_STEP`` bytes however much one network chunk inflates to, so a reader counts (and
    stops) before anything large is held. Use it instead of ``aiter_bytes`` on remote bodies."""
    codings = [
        coding
        for value in response.headers.get_list("content-encoding", split_commas=True)
        if (coding := value.strip().lower()) in _WBITS
    ]
    if len(codings) > 1:  # gzip inside gzip: nothing legitimate sends that
        raise httpx.DecodingError("the body has more than one content coding")
    inflater = _Inflater(codings[0]) if codings else None
    async for chunk in response.aiter_raw():
        if inflater is None:
            for start in range(0, len(chunk), INFLATE_STEP):
                yield chunk[start : start + INFLATE_STEP]
        else:
            for piece in inflater.feed(chunk):
                yield piece
    if inflater is not None and (rest := inflater.finish()):
        yield rest


# How deep a remote JSON document may nest. Real answers (the providers' APIs, the generic
# protocol) nest a handful of levels; Python's parser recurses per level and raises
# RecursionError near 1,000, which would be taken for a crash of the worker and retried (another
# paid generation), and anything walking the document afterwards would recurse as deep.
MAX_JSON_DEPTH = 64
# A JSON string (skipped whole; the unrolled form keeps the scan linear and in C) or a bracket.
_JSON_TOKEN = r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]'
_JSON_TOKENS = re.compile(_JSON_TOKEN, re.DOTALL)
_JSON_TOKENS_BYTES = re.compile(_JSON_TOKEN.encode(), re.DOTALL)


class JsonRefused(ValueError):
    """A remote body that is not JSON the worker will read: invalid, nested deeper than
    ``MAX_JSON_DEPTH``, or larger than its cap. A ``ValueError``, like ``json.loads``'s own, so
    a caller's ``except ValueError`` treats it as the bad answer it is (a permanent failure,
    never a crash to retry)."""


def load_json(
    body: bytes | bytearray | str, *, max_depth: int = MAX_JSON_DEPTH, max_bytes: int | None = None
) -> Any:
    """``json.loads`` for bodies from elsewhere: the nesting depth is checked first (a scan that
    skips strings, in C), so no body can raise ``RecursionError``; ``JsonRefused`` otherwise."""
    if max_bytes is not None and len(body) > max_bytes:
        raise JsonRefused(f"JSON body over {max_bytes} bytes")
    data: bytes | str = body if isinstance(body, str) else bytes(body)
    tokens = _JSON_TOKENS if isinstance(data, str) else _JSON_TOKENS_BYTES
    opening, closing = ("[{", "]}") if isinstance(data, str) else (b"[{", b"]}")
    depth = 0
    for token in tokens.finditer(data):
        bracket = data[token.start() : token.start() + 1]
        if bracket in opening:
            depth += 1
            if depth > max_depth:
                raise JsonRefused(f"JSON nested deeper than {max_depth} levels")
        elif bracket in closing:
            depth -= 1
    try:
        return json.loads(data)
    except RecursionError:  # cannot happen after the scan; kept as the last word
        raise JsonRefused(f"JSON nested deeper than {max_depth} levels") from None
    except ValueError as exc:
        raise JsonRefused(f"invalid JSON: {exc}") from None


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed response, refusing more than ``limit`` bytes (``BodyTooLarge``).

    ``Content-Length`` is checked first (no download at all), then the bytes are counted as
    they arrive, for servers that send no length or a wrong one, and as they are inflated, for
    compressed bodies (``iter_decoded``).
    """
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(int(declared), limit)
    chunks: list[bytes] = []
    received = 0
    async for chunk in iter_decoded(response):
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
    async for chunk in iter_decoded(response):
        chunks.append(chunk)
        received += len(chunk)
        if received >= limit:
            break
    return b"".join(chunks)[:limit]
