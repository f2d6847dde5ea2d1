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

Where things are: :mod:`~devstack.cloudinary.server` (the Upload API, fault switches, admin
routes), :mod:`~devstack.cloudinary.signature` (signing), :mod:`~devstack.cloudinary.forms`
(reading the upload form and ``context``), :mod:`~devstack.cloudinary.delivery` (serving
images), :mod:`~devstack.cloudinary.images` (Pillow), :mod:`~devstack.cloudinary.assets` (what
is stored and recorded).
"""

from devstack.cloudinary.assets import Outcome, RequestRecord, StoredAsset, UploadRecord
from devstack.cloudinary.errors import UploadRejected
from devstack.cloudinary.forms import parse_context
from devstack.cloudinary.server import MAX_FILE_BYTES, CloudinaryStandIn
from devstack.cloudinary.signature import SIGNATURE_MAX_AGE_SECONDS, UNSIGNED_PARAMS, string_to_sign

__all__ = [
    "MAX_FILE_BYTES",
    "SIGNATURE_MAX_AGE_SECONDS",
    "UNSIGNED_PARAMS",
    "CloudinaryStandIn",
    "Outcome",
    "RequestRecord",
    "StoredAsset",
    "UploadRecord",
    "UploadRejected",
    "parse_context",
    "string_to_sign",
]
