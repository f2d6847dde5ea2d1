"""Keeps secrets out of logs, job rows and error messages.

Known secret values (service-role key, Cloudinary secret, generator token) are replaced wherever
they appear; so are the shapes secrets travel in even when the value is not known to us: an
``apikey=`` query parameter, a bearer token, a JWT, credentials inside a URL.

There is one redactor, ``redact``, and one mask, ``MASK``. The worker registers its settings'
secrets at start; a module holding a secret of its own registers it too (``redact.add``), so
that whatever it says is masked the same way everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "[REDACTED]"

_PATTERNS = [
    re.compile(r"(?i)(apikey=)[^&\s'\"]+"),
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)((?:api_secret|signature|access_token|token)[\"']?\s*[:=]\s*[\"']?)[^&\s'\",}]+"
    ),
    re.compile(r"(cloudinary://[^:/@\s]+:)[^@\s]+(@)"),
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+(@)"),
    # A JWT: three base64url segments, the first starting with the encoded '{"'.
    re.compile(r"()\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),
]


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        merged = set(self._secrets) | {s for s in secrets if s and len(s) >= 4}
        # Longest first, so a secret that contains another is masked whole.
        self._secrets = sorted(merged, key=len, reverse=True)

    def mask_known(self, text: str) -> str:
        """Only the registered secret values masked, not the shapes: for a remote server's words
        quoted in an error message, which stay readable ("invalid bearer token") and are
        redacted in full where they leave the process (log sinks, job rows)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def __call__(self, text: str) -> str:
        text = self.mask_known(text)
        for pattern in _PATTERNS:
            text = pattern.sub(_mask_match, text)
        return text


def _mask_match(match: re.Match[str]) -> str:
    groups = match.groups()
    prefix = groups[0] if groups else ""
    suffix = groups[1] if len(groups) > 1 else ""
    return f"{prefix}{MASK}{suffix}"


# The process-wide redactor; the worker adds its settings' secrets at start.
redact = Redactor()
