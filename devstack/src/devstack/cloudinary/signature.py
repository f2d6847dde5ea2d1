"""Signed uploads: the string Cloudinary signs, and the checks it makes before anything else.

Written from Cloudinary's documentation, not from the SDK's code, so that a mistake in how the
SDK (or the worker) signs shows up as the same 401 the real service gives.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

from devstack.cloudinary.errors import UploadRejected

SIGNATURE_MAX_AGE_SECONDS = 3600
# Parameters that travel with the request but are not part of the signed string.
UNSIGNED_PARAMS = frozenset({"file", "api_key", "signature", "resource_type", "cloud_name"})


def string_to_sign(params: dict[str, str]) -> str:
    """Cloudinary's signature_version 2 string, written from its docs (not the SDK's code)."""
    pairs = [
        f"{key}={value}".replace("&", "%26")
        for key, value in params.items()
        if key not in UNSIGNED_PARAMS and value != ""
    ]
    return "&".join(sorted(pairs))


def verify_signature(params: dict[str, str], now: float, api_key: str, api_secret: str) -> None:
    """Check an upload's api_key, timestamp and signature like Cloudinary; raise if wrong."""
    if "signature" not in params:
        raise UploadRejected(400, "Upload preset must be specified when using unsigned upload")
    if not params.get("api_key"):
        raise UploadRejected(401, "Must supply api_key")
    if params["api_key"] != api_key:
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
    expected = hashlib.new(algorithm, (to_sign + api_secret).encode()).hexdigest()
    if not hmac.compare_digest(expected, signature):
        raise UploadRejected(401, f"Invalid Signature {signature}. String to sign - '{to_sign}'.")
