"""worker/http.py: reading remote bodies safely, whatever the remote server sends."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from worker.http import BodyTooLarge, JsonRefused, load_json, read_capped, read_start

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MiB = 1 << 20


def bomb(inflated: int, encoding: str = "gzip") -> bytes:
    """A body of about ``inflated`` bytes once decoded, a few hundred KB on the wire."""
    data = PNG_MAGIC + bytes(inflated)
    if encoding == "gzip":
        return gzip.compress(data, compresslevel=9)
    return zlib.compress(data, 9)  # "deflate" is the zlib format (RFC 9110 8.4.1.2)


async def _chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def streamed(body: bytes, **headers: str) -> httpx.Response:
    """A response as a client hands it over: headers read, body still to stream."""
    return httpx.Response(200, headers=headers, stream=_Stream(body))


class _Stream(httpx.AsyncByteStream):
    def __init__(self, body: bytes) -> None:
        self._body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in _chunks(self._body):
            yield chunk


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_the_cap_is_counted_while_inflating(encoding: str) -> None:
    """Finding 3: a small compressed body must not inflate past the cap in memory."""
    body = bomb(150 * MiB, encoding)
    assert len(body) < 300_000
    response = streamed(body, **{"content-encoding": encoding, "content-type": "image/png"})
    tracemalloc.start()
    try:
        with pytest.raises(BodyTooLarge):
            await read_capped(response, 2 * MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"peak {peak / MiB:.1f} MiB for a 2 MiB cap"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "identity", None])
async def test_a_compressed_body_under_the_cap_is_read_whole(encoding: str | None) -> None:
    data = PNG_MAGIC + bytes(300_000)
    if encoding == "gzip":
        body = gzip.compress(data)
    elif encoding == "deflate":
        body = zlib.compress(data)
    else:
        body = data
    headers = {"content-encoding": encoding} if encoding else {}
    assert await read_capped(streamed(body, **headers), MiB) == data


async def test_an_unknown_content_encoding_is_passed_through_and_counted() -> None:
    # As httpx does: the bytes stay as sent (an image check then refuses them), still capped.
    assert await read_capped(streamed(b"\x01" * 100, **{"content-encoding": "br"}), MiB) == (
        b"\x01" * 100
    )
    with pytest.raises(BodyTooLarge):
        await read_capped(streamed(b"\x01" * (MiB + 1), **{"content-encoding": "br"}), MiB)


async def test_stacked_codings_are_refused() -> None:
    body = gzip.compress(gzip.compress(b"x" * 1000))
    with pytest.raises(httpx.DecodingError):
        await read_capped(streamed(body, **{"content-encoding": "gzip, gzip"}), MiB)


async def test_raw_deflate_without_the_zlib_wrapper_is_read() -> None:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    data = PNG_MAGIC + bytes(100_000)
    body = compressor.compress(data) + compressor.flush()
    assert await read_capped(streamed(body, **{"content-encoding": "deflate"}), MiB) == data


async def test_a_corrupt_compressed_body_is_a_decoding_error() -> None:
    with pytest.raises(httpx.DecodingError):
        await read_capped(streamed(b"not gzip at all", **{"content-encoding": "gzip"}), MiB)


async def test_the_start_of_a_compressed_error_page_is_read_in_bounded_steps() -> None:
    response = streamed(bomb(150 * MiB), **{"content-encoding": "gzip"})
    tracemalloc.start()
    try:
        start = await read_start(response, 4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert start == (PNG_MAGIC + bytes(4096))[:4096]
    assert peak < 2 * MiB


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "[" * 5_000,  # truncated, as an error page read in part is
    ],
)
def test_deep_json_is_refused_as_a_value_error_never_a_recursion_error(body: bytes | str) -> None:
    """Finding 8: json.loads raises RecursionError on deep nesting, which callers take for a
    crash (and retry: another paid generation). load_json refuses it as a bad answer."""
    with pytest.raises(JsonRefused, match="nested deeper than 64 levels"):
        load_json(body)
    with pytest.raises(ValueError):  # what every caller's `except ValueError` expects
        load_json(body)


def test_json_within_bounds_is_read_and_brackets_in_strings_do_not_count() -> None:
    assert load_json(b"[" * 64 + b"]" * 64) is not None
    assert load_json('{"a": "[[[[{{{{\\"", "b": [1, {"c": null}]}') == {
        "a": '[[[[{{{{"',
        "b": [1, {"c": None}],
    }
    with pytest.raises(JsonRefused, match="over 10 bytes"):
        load_json(b'{"a": 12345678}', max_bytes=10)
    with pytest.raises(JsonRefused, match="invalid JSON"):
        load_json(b"<html>")
