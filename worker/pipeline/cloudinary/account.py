"""The Cloudinary account the worker uploads to: ``CLOUDINARY_URL`` parsed, and the options each
SDK call needs (where to post, how to sign, how delivery URLs are built).

* **No global SDK config.** ``CLOUDINARY_URL`` is parsed here, the way the SDK parses it (query
  options become config keys), with ``true``/``false`` turned into booleans (the SDK keeps the
  string ``"false"``, which is truthy). Every SDK call gets its options explicitly, so what the
  SDK read from the environment at import time never matters.
* **Delivery host.** Thumbnails are ``https://res.cloudinary.com/<cloud>/...`` unless
  ``CLOUDINARY_URL`` carries the SDK's own delivery options (``cname``, ``secure_distribution``,
  ``private_cdn``, ``secure``, ...). The devstack's stand-in sets ``cname=HOST:PORT&secure=false``
  so thumbnails resolve against it; real accounts set none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import cloudinary.utils


@dataclass(frozen=True)
class CloudinaryAccount:
    """``CLOUDINARY_URL`` parsed the SDK's way; ``repr`` never shows the secret."""

    cloud_name: str
    api_key: str
    api_secret: str = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)  # query options (and private CDN path)

    @classmethod
    def from_url(cls, url: str) -> CloudinaryAccount:
        parts = urlsplit(url.strip())
        if parts.scheme != "cloudinary" or not (parts.hostname and parts.username):
            raise ValueError("CLOUDINARY_URL must look like cloudinary://KEY:SECRET@CLOUD")
        if not parts.password:
            raise ValueError("CLOUDINARY_URL has no API secret (cloudinary://KEY:SECRET@CLOUD)")
        options: dict[str, Any] = {
            key: {"true": True, "false": False}.get(value.lower(), value)
            for key, value in parse_qsl(parts.query)
        }
        if parts.path.strip("/"):  # cloudinary://K:S@cloud/cdn.example.com: a private CDN
            options.setdefault("private_cdn", True)
            options.setdefault("secure_distribution", parts.path.strip("/"))
        return cls(parts.hostname, parts.username, parts.password, options)

    def api_url(self) -> str:
        return cloudinary.utils.cloudinary_api_url(
            "upload",
            cloud_name=self.cloud_name,
            upload_prefix=self.options.get("upload_prefix"),
            resource_type="image",
        )

    def signing_options(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "api_secret": self.api_secret,
            "signature_algorithm": self.options.get("signature_algorithm", "sha1"),
            "signature_version": int(self.options.get("signature_version", 2)),
        }

    def delivery_options(self, **overrides: Any) -> dict[str, Any]:
        """Every option ``cloudinary_url`` would otherwise read from the SDK's global config."""
        opts = self.options
        delivery = {
            "cloud_name": self.cloud_name,
            # The SDK's default (None) means http://; thumbnails are https unless told otherwise.
            "secure": opts.get("secure", True),
            "private_cdn": opts.get("private_cdn", False),
            "secure_distribution": opts.get("secure_distribution"),
            "cname": opts.get("cname"),
            "cdn_subdomain": opts.get("cdn_subdomain", False),
            "secure_cdn_subdomain": opts.get("secure_cdn_subdomain"),
            "sign_url": opts.get("sign_url", False),  # for accounts with strict transformations
            "api_secret": self.api_secret,
            "signature_algorithm": opts.get("signature_algorithm", "sha1"),
            "long_url_signature": opts.get("long_url_signature", False),
            "auth_token": False,
            "force_version": True,
            "shorten": False,
            "use_root_path": False,
        }
        return delivery | overrides

    def delivery_hosts(self) -> set[str]:
        """Hosts other than Cloudinary's own that serve this account (a CNAME, the stand-in)."""
        return {
            str(host).lower()
            for host in (self.options.get("cname"), self.options.get("secure_distribution"))
            if host
        }
