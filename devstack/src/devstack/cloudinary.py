"""A local stand-in for Cloudinary's Upload API and image delivery, for tests and the demo.

The real ``cloudinary`` SDK (and the worker) reach it through ``CLOUDINARY_URL``'s
``upload_prefix``; :attr:`CloudinaryStandIn.cloudinary_url` is ready to use::

    cloudinary://KEY:SECRET@devstack?upload_prefix=http://HOST:PORT&cname=HOST:PORT&secure=false

What it checks like the real service (messages copied from it):

* ``POST /v1_1/<cloud>/image/upload`` (and ``auto/upload``), multipart as the SDK sends it;
* the signature: SHA-1 (or SHA-256, told apart by length) over the sorted ``key=value`` pairs
  with ``&`` inside a pair written ``%26`` (signature_version 2), the secret appended; a wrong
  one is a 401 ``Invalid Signature <sig>. String to sign - '<string>'.``; the api_key must match
  and the timestamp be within one hour;
* the file: ``Missing required parameter - file`` when absent, ``Invalid image file`` when Pillow
  cannot read it, ``File size too large. Got N. Maximum is M.`` above ``max_file_bytes``
  (10 MB, the free plan's limit);
* ``context`` parsed like Cloudinary: pairs split on unescaped ``|``, key and value on the first
  unescaped ``=``, a backslash escapes the next character;
* one asset per ``public_id``: ``overwrite`` (default on) replaces it with a new version,
  ``overwrite=0`` on an existing id answers the stored asset with ``existing: true``.

Deliberate differences, so tests know what they are looking at:

* ``folder`` behaves like Cloudinary's *fixed folder mode*: it is prefixed to a ``public_id``
  without a slash (or to a generated id); a ``public_id`` that already has a slash is kept.
* ``url`` and ``secure_url`` are both plain ``http://HOST:PORT/<cloud>/image/upload/v<version>/
  <public_id>.<format>``: the stand-in cannot serve trusted https. That is why its
  ``cloudinary_url`` carries ``cname=HOST:PORT&secure=false``: SDK-built delivery URLs then point
  here (real accounts use neither option and get ``https://res.cloudinary.com/...``).
* Delivery serves the current asset whatever version the URL names, and applies a small subset of
  transformations (``c_fill``, ``c_scale``, ``c_fit``, ``c_limit`` with ``w``/``h``; ``g``, ``q``
  and ``f`` are accepted and ignored) and format conversion by extension. Anything else is a 400
  with an ``X-Cld-Error`` header, as Cloudinary does. There is no CDN, so ``invalidate`` is only
  recorded.
* ``asset_id`` stays the same across overwrites of a public_id.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import io
import re
import secrets
import string
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

from aiohttp import web
from PIL import Image, ImageOps, UnidentifiedImageError

from devstack.serve import serve

MAX_FILE_BYTES = 10 * 1024 * 1024
SIGNATURE_MAX_AGE_SECONDS = 3600
# Parameters that travel with the request but are not part of the signed string.
UNSIGNED_PARAMS = frozenset({"file", "api_key", "signature", "resource_type", "cloud_name"})

Outcome = Literal["created", "overwritten", "existing"]

_FORMATS = {  # URL extension -> (Pillow format, content type)
    "png": ("PNG", "image/png"),
    "jpg": ("JPEG", "image/jpeg"),
    "jpeg": ("JPEG", "image/jpeg"),
    "webp": ("WEBP", "image/webp"),
    "gif": ("GIF", "image/gif"),
    "bmp": ("BMP", "image/bmp"),
    "tiff": ("TIFF", "image/tiff"),
}
_VERSION = re.compile(r"^v\d+$")
_TRANSFORMATION_KEYS = frozenset({"c", "w", "h", "g", "q", "f"})
_CROPS = frozenset({"fill", "scale", "fit", "limit"})


@dataclass(frozen=True)
class UploadRecord:
    """One accepted upload request, as the stand-in understood it."""

    public_id: str
    params: dict[str, str]  # every form field except the file
    context: dict[str, str]
    data: bytes
    received_at: float
    outcome: Outcome
    version: int


@dataclass
class StoredAsset:
    public_id: str
    asset_id: str
    version: int
    version_id: str
    data: bytes
    format: str
    width: int
    height: int
    etag: str
    created_at: str
    context: dict[str, str]
    tags: list[str]
    original_filename: str
    invalidations: int = 0
    # (transformation, extension) -> encoded bytes; dropped when the asset is replaced.
    derived: dict[tuple[str, str], bytes] = field(default_factory=dict, repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class RequestRecord:
    """Every upload request, accepted or not: lets tests count attempts and retries."""

    path: str
    status: int  # 0 for a request that was hung and never answered
    public_id: str | None
    fault: Literal["fail", "hang"] | None
    received_at: float


@dataclass(frozen=True)
class _Fault:
    kind: Literal["fail", "hang"]
    status: int = 500
    message: str = ""


class UploadRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class CloudinaryStandIn:
    def __init__(
        self,
        cloud_name: str = "devstack",
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        max_file_bytes: int = MAX_FILE_BYTES,
    ) -> None:
        self.cloud_name = cloud_name
        self.api_key = api_key or "".join(secrets.choice(string.digits) for _ in range(15))
        self.api_secret = api_secret or secrets.token_urlsafe(20)
        self.max_file_bytes = max_file_bytes
        # Long benchmarks upload gigabytes: they turn this off and keep only the metadata.
        self.keep_data = True
        self.uploads: dict[str, list[UploadRecord]] = {}
        self.assets: dict[str, StoredAsset] = {}
        self.requests: list[RequestRecord] = []
        self.base_url = ""
        self._faults: deque[_Fault] = deque()
        self._stopping = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, host: str, port: int = 0) -> None:
        # Big enough for Cloudinary's own 100 MB request cap, so oversize files get its 400.
        app = web.Application(client_max_size=110 * 1024 * 1024)
        app.router.add_post("/v1_1/{cloud}/{resource_type}/upload", self._upload)
        app.router.add_get("/{cloud}/image/upload/{path:.+}", self._deliver)
        self._runner, self.base_url = await serve(app, host, port)

    async def stop(self) -> None:
        self._stopping.set()  # releases hung requests
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def cloudinary_url(self) -> str:
        netloc = self.base_url.removeprefix("http://")
        return (
            f"cloudinary://{self.api_key}:{self.api_secret}@{self.cloud_name}"
            f"?upload_prefix={self.base_url}&cname={netloc}&secure=false"
        )

    # -- fault switches --------------------------------------------------------------------------

    def fail_next(self, n: int, status: int = 500, message: str = "Injected failure") -> None:
        """The next ``n`` upload requests get a Cloudinary-shaped JSON error with ``status``.

        Faults queue up in the order they are scheduled: ``fail_next(2); hang_next(1)`` fails
        two requests, then hangs the third.
        """
        self._faults.extend(_Fault("fail", status, message) for _ in range(n))

    def hang_next(self, n: int) -> None:
        """The next ``n`` upload requests are read in full and never answered (until stop)."""
        self._faults.extend(_Fault("hang") for _ in range(n))

    def clear_faults(self) -> None:
        self._faults.clear()

    def admin_routes(self) -> list[web.RouteDef]:
        return [
            web.post("/admin/cloudinary/fail", self._admin_fail),
            web.post("/admin/cloudinary/hang", self._admin_hang),
            web.post("/admin/cloudinary/clear", self._admin_clear),
            web.get("/admin/cloudinary/uploads", self._admin_uploads),
        ]

    async def _admin_fail(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        self.fail_next(
            int(body.get("n", 1)),
            int(body.get("status", 500)),
            str(body.get("message", "Injected failure")),
        )
        return web.json_response({"pending_faults": len(self._faults)})

    async def _admin_hang(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        self.hang_next(int(body.get("n", 1)))
        return web.json_response({"pending_faults": len(self._faults)})

    async def _admin_clear(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"pending_faults": 0})

    async def _admin_uploads(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "uploads": {
                    pid: [
                        {
                            "version": r.version,
                            "outcome": r.outcome,
                            "bytes": len(r.data),
                            "context": r.context,
                            "params": r.params,
                            "received_at": r.received_at,
                        }
                        for r in records
                    ]
                    for pid, records in self.uploads.items()
                },
                "assets": {pid: self._response_body(a) for pid, a in self.assets.items()},
                "requests": len(self.requests),
            }
        )

    # -- upload API ------------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        received_at = time.time()
        # Read the whole body first, like a real server would.
        try:
            form = await _read_form(request)
        except ValueError as exc:
            return _error(400, str(exc))
        public_id = next((v for k, v in form if k == "public_id" and isinstance(v, str)), None)

        def record(status: int, fault: Literal["fail", "hang"] | None = None) -> None:
            self.requests.append(RequestRecord(request.path, status, public_id, fault, received_at))

        if self._faults:
            fault = self._faults.popleft()
            if fault.kind == "hang":
                record(0, "hang")
                await self._stopping.wait()
                raise web.HTTPServiceUnavailable()
            record(fault.status, "fail")
            return _error(fault.status, fault.message)

        try:
            body = await self._accept_upload(request, form, received_at)
        except UploadRejected as e:
            record(e.status)
            return _error(e.status, e.message)
        record(200)
        return web.json_response(body, headers={"X-Request-Id": uuid.uuid4().hex})

    async def _accept_upload(
        self, request: web.Request, form: Any, received_at: float
    ) -> dict[str, Any]:
        if request.match_info["cloud"] != self.cloud_name:
            raise UploadRejected(401, f"Invalid cloud_name {request.match_info['cloud']}")
        if request.match_info["resource_type"] not in ("image", "auto"):
            raise UploadRejected(400, "The stand-in only stores images")
        params, upload = _split_form(form)
        self._authenticate(params, received_at)

        data, filename = _file_bytes(upload)
        if len(data) > self.max_file_bytes:
            raise UploadRejected(
                400, f"File size too large. Got {len(data)}. Maximum is {self.max_file_bytes}."
            )
        try:
            fmt, width, height = await asyncio.to_thread(_inspect_image, data)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise UploadRejected(400, "Invalid image file") from None

        try:
            context = parse_context(params.get("context", ""))
        except ValueError as e:
            raise UploadRejected(400, f"Invalid context - {e}") from None
        public_id = _public_id(params)
        existing = self.assets.get(public_id)
        if existing is not None and params.get("overwrite", "1") in ("0", "false"):
            self._record(public_id, params, context, data, received_at, "existing", existing)
            return self._response_body(existing) | {"existing": True}

        now = int(received_at)
        version = max(now, existing.version + 1) if existing else now
        asset = StoredAsset(
            public_id=public_id,
            asset_id=existing.asset_id if existing else uuid.uuid4().hex,
            version=version,
            version_id=uuid.uuid4().hex,
            data=data if self.keep_data else b"",
            format=fmt,
            width=width,
            height=height,
            etag=hashlib.md5(data).hexdigest(),
            created_at=datetime.fromtimestamp(received_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            context=context,
            tags=[t for t in params.get("tags", "").split(",") if t],
            original_filename=filename.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "file",
            invalidations=(existing.invalidations if existing else 0)
            + int(params.get("invalidate") in ("1", "true")),
        )
        self.assets[public_id] = asset
        outcome: Outcome = "overwritten" if existing else "created"
        self._record(public_id, params, context, data, received_at, outcome, asset)
        body = self._response_body(asset) | {"existing": False}
        if existing:
            body["overwritten"] = True
        return body

    def _authenticate(self, params: dict[str, str], now: float) -> None:
        if "signature" not in params:
            raise UploadRejected(400, "Upload preset must be specified when using unsigned upload")
        if not params.get("api_key"):
            raise UploadRejected(401, "Must supply api_key")
        if params["api_key"] != self.api_key:
            raise UploadRejected(401, f"Unknown API key {params['api_key']}")
        timestamp = params.get("timestamp", "")
        if not timestamp.isdigit():
            raise UploadRejected(400, "Missing required parameter - timestamp")
        if abs(now - int(timestamp)) > SIGNATURE_MAX_AGE_SECONDS:
            reported = datetime.fromtimestamp(int(timestamp), UTC).strftime("%Y-%m-%d %H:%M:%S")
            raise UploadRejected(
                401, f"Stale request - reported time is {reported} +0000 which is out of range"
            )
        signature = params["signature"]
        to_sign = string_to_sign(params)
        algorithm = "sha256" if len(signature) == 64 else "sha1"
        expected = hashlib.new(algorithm, (to_sign + self.api_secret).encode()).hexdigest()
        if not hmac.compare_digest(expected, signature):
            raise UploadRejected(
                401, f"Invalid Signature {signature}. String to sign - '{to_sign}'."
            )

    def _record(
        self,
        public_id: str,
        params: dict[str, str],
        context: dict[str, str],
        data: bytes,
        received_at: float,
        outcome: Outcome,
        asset: StoredAsset,
    ) -> None:
        self.uploads.setdefault(public_id, []).append(
            UploadRecord(
                public_id,
                params,
                context,
                data if self.keep_data else b"",
                received_at,
                outcome,
                asset.version,
            )
        )

    def delivery_url(self, asset: StoredAsset) -> str:
        return (
            f"{self.base_url}/{self.cloud_name}/image/upload/"
            f"v{asset.version}/{asset.public_id}.{asset.format}"
        )

    def _response_body(self, asset: StoredAsset) -> dict[str, Any]:
        url = self.delivery_url(asset)
        body: dict[str, Any] = {
            "asset_id": asset.asset_id,
            "public_id": asset.public_id,
            "version": asset.version,
            "version_id": asset.version_id,
            "signature": hashlib.sha1(
                f"public_id={asset.public_id}&version={asset.version}{self.api_secret}".encode()
            ).hexdigest(),
            "width": asset.width,
            "height": asset.height,
            "format": asset.format,
            "resource_type": "image",
            "created_at": asset.created_at,
            "tags": asset.tags,
            "bytes": asset.size,
            "type": "upload",
            "etag": asset.etag,
            "placeholder": False,
            "url": url,
            "secure_url": url,  # plain http: see the module docstring
            "asset_folder": asset.public_id.rpartition("/")[0],
            "display_name": asset.public_id.rpartition("/")[2],
            "original_filename": asset.original_filename,
            "api_key": self.api_key,
        }
        if asset.context:
            body["context"] = {"custom": dict(asset.context)}
        return body

    # -- delivery --------------------------------------------------------------------------------

    async def _deliver(self, request: web.Request) -> web.Response:
        if request.match_info["cloud"] != self.cloud_name:
            return _not_found(request.match_info["path"])
        segments = request.match_info["path"].split("/")
        try:
            transformation, rest = _split_delivery_path(segments)
        except ValueError as e:
            return web.Response(status=400, headers={"X-Cld-Error": str(e)})
        public_id, _, extension = rest.rpartition(".")
        if not public_id or extension.lower() not in _FORMATS:
            public_id, extension = rest, ""
        asset = self.assets.get(public_id)
        if asset is None:
            return _not_found(public_id)
        extension = extension.lower() or asset.format
        key = (transformation, extension)
        if not transformation and _FORMATS[extension][0] == _FORMATS[asset.format][0]:
            asset.derived[key] = asset.data  # the original, byte for byte
        if key not in asset.derived:
            try:
                asset.derived[key] = await asyncio.to_thread(
                    _render, asset.data, transformation, extension
                )
            except ValueError as e:
                return web.Response(status=400, headers={"X-Cld-Error": str(e)})
        return web.Response(
            body=asset.derived[key],
            content_type=_FORMATS[extension][1],
            headers={"ETag": f'"{asset.etag}"', "Cache-Control": "public, max-age=2592000"},
        )


# -- wire-format helpers (module level so tests can use them directly) ---------------------------


def string_to_sign(params: dict[str, str]) -> str:
    """Cloudinary's signature_version 2 string, written from its docs (not the SDK's code)."""
    pairs = [
        f"{key}={value}".replace("&", "%26")
        for key, value in params.items()
        if key not in UNSIGNED_PARAMS and value != ""
    ]
    return "&".join(sorted(pairs))


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
class _FilePart:
    filename: str
    data: bytes


_DISPOSITION_PARAM = re.compile(r'(\w+)\*?=(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


async def _read_form(request: web.Request) -> list[tuple[str, str | _FilePart]]:
    """The upload form as (name, value) pairs; file parts as ``_FilePart``.

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
    fields: list[tuple[str, str | _FilePart]] = []
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
            fields.append((name, _FilePart(filename, content)))
        else:
            fields.append((name, content.decode("utf-8", "replace")))
    return fields


def _split_form(form: Any) -> tuple[dict[str, str], Any]:
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


def _file_bytes(upload: Any) -> tuple[bytes, str]:
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


def _inspect_image(data: bytes) -> tuple[str, int, int]:
    with Image.open(io.BytesIO(data)) as img:
        img.load()  # a truncated file fails here, not at delivery
        fmt = (img.format or "").lower()
        if fmt == "jpeg":
            fmt = "jpg"
        if fmt not in _FORMATS:
            raise ValueError(f"unsupported format {fmt}")
        return fmt, img.width, img.height


def _public_id(params: dict[str, str]) -> str:
    public_id = params.get("public_id") or secrets.token_hex(10)
    folder = params.get("folder", "").strip("/")
    if folder and "/" not in public_id:
        public_id = f"{folder}/{public_id}"
    return public_id


def _split_delivery_path(segments: list[str]) -> tuple[str, str]:
    """``[transformation/][v<version>/]public_id.ext`` -> (transformation, "public_id.ext").

    With a version segment everything before it is a transformation (so unsupported ones get a
    400); without one, only leading segments made of known parameters are.
    """
    versions = [i for i, s in enumerate(segments[:-1]) if _VERSION.match(s)]
    if versions:
        transformations, rest = segments[: versions[0]], segments[versions[0] + 1 :]
    else:
        transformations, rest = [], list(segments)
        while len(rest) > 1 and _is_transformation(rest[0]):
            transformations.append(rest.pop(0))
    if len(transformations) > 1:
        raise ValueError("Chained transformations are not supported by the stand-in")
    return (transformations[0] if transformations else ""), "/".join(rest)


def _is_transformation(segment: str) -> bool:
    parts = [p.partition("_") for p in segment.split(",")]
    return all(sep and key in _TRANSFORMATION_KEYS for key, sep, _ in parts)


def _render(data: bytes, transformation: str, extension: str) -> bytes:
    options = (
        dict(p.partition("_")[::2] for p in transformation.split(",")) if transformation else {}
    )
    unknown = sorted(set(options) - _TRANSFORMATION_KEYS)
    if unknown:
        raise ValueError(f"Invalid transformation - {', '.join(unknown)} not supported here")
    crop = options.get("c", "scale")
    if crop not in _CROPS:
        raise ValueError(f"Invalid transformation - crop mode {crop} is not supported here")
    try:
        width = int(options["w"]) if "w" in options else None
        height = int(options["h"]) if "h" in options else None
    except ValueError:
        raise ValueError("Invalid transformation - w and h must be whole pixels here") from None
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        out: Image.Image = img
        if width or height:
            w = width or round(img.width * height / img.height)  # type: ignore[operator]
            h = height or round(img.height * w / img.width)
            if crop == "fill":
                out = ImageOps.fit(img, (w, h), Image.Resampling.LANCZOS)
            elif crop == "scale":
                out = img.resize((w, h), Image.Resampling.LANCZOS)
            elif crop == "fit" or (crop == "limit" and (img.width > w or img.height > h)):
                out = ImageOps.contain(img, (w, h), Image.Resampling.LANCZOS)
        pillow_format = _FORMATS[extension][0]
        if pillow_format == "JPEG" and out.mode not in ("RGB", "L"):
            out = out.convert("RGB")
        buffer = io.BytesIO()
        out.save(buffer, format=pillow_format)
        return buffer.getvalue()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": {"message": message}}, status=status)


def _not_found(public_id: str) -> web.Response:
    return web.Response(status=404, headers={"X-Cld-Error": f"Resource not found - {public_id}"})


async def _json_body(request: web.Request) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        body = await request.json()
        if isinstance(body, dict):
            return body
    return {}
