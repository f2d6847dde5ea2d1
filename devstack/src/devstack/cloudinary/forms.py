"""Reading an upload request: its form fields, its file, its ``context`` and its public_id.

The form is read by hand because aiohttp's reader was the benchmarks' bottleneck (see
:func:`read_form`); the ``context`` syntax and the ``folder`` rule follow Cloudinary's.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from devstack.cloudinary.errors import UploadRejected


def parse_context(raw: str) -> dict[str, str]:
    """``k=v|k2=v2`` with backslash escapes, as Cloudinary reads it."""
    context: dict[str, str] = {}
    if not raw:
        return context
    pairs: list[list[str]] = [[]]
    chars = iter(raw)
    for ch in chars:
        if ch == "\\":
            # Keep the escape for the key/value split below; a lone trailing backslash is literal.
            pairs[-1].append("\\" + next(chars, "\\"))
        elif ch == "|":
            pairs.append([])
        else:
            pairs[-1].append(ch)
    for tokens in pairs:
        if not tokens:
            continue
        try:
            split = tokens.index("=")  # the first *unescaped* "=" (escaped ones are 2-char tokens)
        except ValueError:
            raise ValueError(f"pair without '=': {_unescape(tokens)!r}") from None
        key, value = _unescape(tokens[:split]), _unescape(tokens[split + 1 :])
        if not key:
            raise ValueError("empty key")
        context[key] = value
    return context


def _unescape(tokens: list[str]) -> str:
    return "".join(t[1:] if len(t) == 2 and t[0] == "\\" else t for t in tokens)


@dataclass(frozen=True)
class FilePart:
    filename: str
    data: bytes


_DISPOSITION_PARAM = re.compile(r'(\w+)\*?=(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


async def read_form(request: web.Request) -> list[tuple[str, str | FilePart]]:
    """The upload form as (name, value) pairs; file parts as ``FilePart``.

    A lean multipart reader: aiohttp's ``request.post()`` spends milliseconds per form field in
    ``parse_content_disposition``, and the SDK sends one field per signed parameter, which made
    this stand-in, not the worker, the bottleneck of the benchmarks.
    """
    body = await request.read()
    if request.content_type == "application/x-www-form-urlencoded":
        return list(parse_qsl(body.decode(), keep_blank_values=True))
    if request.content_type != "multipart/form-data":
        raise ValueError(f"Unsupported Content-Type {request.content_type!r}")
    boundary = (
        request.content_type_params.get("boundary")
        if hasattr(request, "content_type_params")
        else None
    )
    if not boundary:
        header = request.headers.get("Content-Type", "")
        boundary = header.partition("boundary=")[2].strip('"') or None
    if not boundary:
        raise ValueError("multipart body without a boundary")
    fields: list[tuple[str, str | FilePart]] = []
    for segment in body.split(b"--" + boundary.encode())[1:]:
        if segment.startswith(b"--"):
            break
        head, _, content = segment.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        content = content.removesuffix(b"\r\n")
        name = filename = None
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            if key.strip().lower() != "content-disposition":
                continue
            for param, quoted, bare in _DISPOSITION_PARAM.findall(value):
                text = quoted.replace('\\"', '"') if quoted else bare
                if param == "name":
                    name = text
                elif param == "filename":
                    filename = text
        if name is None:
            continue
        if filename is not None:
            fields.append((name, FilePart(filename, content)))
        else:
            fields.append((name, content.decode("utf-8", "replace")))
    return fields


def split_form(form: Any) -> tuple[dict[str, str], Any]:
    """Text fields (``key[]`` lists joined with commas, as they are signed) and the file part."""
    params: dict[str, str] = {}
    lists: dict[str, list[str]] = {}
    upload: Any = None
    for key, value in form:
        if key == "file":
            upload = value
        elif not isinstance(value, str):
            continue
        elif key.endswith("[]"):
            lists.setdefault(key[:-2], []).append(value)
        else:
            params[key] = value
    params.update({key: ",".join(values) for key, values in lists.items()})
    return params, upload


def file_bytes(upload: Any) -> tuple[bytes, str]:
    if upload is None or upload == "":
        raise UploadRejected(400, "Missing required parameter - file")
    if isinstance(upload, str):
        # Only data URIs: the stand-in never fetches remote URLs.
        match = re.fullmatch(r"data:[\w/+.-]*;base64,([A-Za-z0-9+/=\s]+)", upload)
        if match is None:
            raise UploadRejected(400, "Invalid image file")
        try:
            return base64.b64decode(match.group(1)), "file"
        except binascii.Error:
            raise UploadRejected(400, "Invalid image file") from None
    return upload.data, upload.filename or "file"


def public_id_of(params: dict[str, str]) -> str:
    public_id = params.get("public_id") or secrets.token_hex(10)
    folder = params.get("folder", "").strip("/")
    if folder and "/" not in public_id:
        public_id = f"{folder}/{public_id}"
    return public_id
