"""The Cloudinary stand-in's server: the Upload API, its fault switches and the admin routes.

One asset per public_id, versions and ``existing``/``overwritten`` answers as the real service
gives them; every request is recorded so that tests can count attempts and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
import string
import time
import uuid
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from aiohttp import web
from PIL import Image, UnidentifiedImageError

from devstack.cloudinary.assets import Outcome, RequestRecord, StoredAsset, UploadRecord
from devstack.cloudinary.delivery import Delivery
from devstack.cloudinary.errors import UploadRejected, error_response
from devstack.cloudinary.forms import file_bytes, parse_context, public_id_of, read_form, split_form
from devstack.cloudinary.images import inspect_image
from devstack.cloudinary.signature import verify_signature
from devstack.serve import serve

MAX_FILE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class _Fault:
    kind: Literal["fail", "hang"]
    status: int = 500
    message: str = ""


class CloudinaryStandIn(Delivery):
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
            form = await read_form(request)
        except ValueError as exc:
            return error_response(400, str(exc))
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
            return error_response(fault.status, fault.message)

        try:
            body = await self._accept_upload(request, form, received_at)
        except UploadRejected as e:
            record(e.status)
            return error_response(e.status, e.message)
        record(200)
        return web.json_response(body, headers={"X-Request-Id": uuid.uuid4().hex})

    async def _accept_upload(
        self, request: web.Request, form: Any, received_at: float
    ) -> dict[str, Any]:
        if request.match_info["cloud"] != self.cloud_name:
            raise UploadRejected(401, f"Invalid cloud_name {request.match_info['cloud']}")
        if request.match_info["resource_type"] not in ("image", "auto"):
            raise UploadRejected(400, "The stand-in only stores images")
        params, upload = split_form(form)
        verify_signature(params, received_at, self.api_key, self.api_secret)

        data, filename = file_bytes(upload)
        if len(data) > self.max_file_bytes:
            raise UploadRejected(
                400, f"File size too large. Got {len(data)}. Maximum is {self.max_file_bytes}."
            )
        try:
            fmt, width, height = await asyncio.to_thread(inspect_image, data)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise UploadRejected(400, "Invalid image file") from None

        try:
            context = parse_context(params.get("context", ""))
        except ValueError as e:
            raise UploadRejected(400, f"Invalid context - {e}") from None
        public_id = public_id_of(params)
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


async def _json_body(request: web.Request) -> dict[str, Any]:
    with contextlib.suppress(ValueError):
        body = await request.json()
        if isinstance(body, dict):
            return body
    return {}
