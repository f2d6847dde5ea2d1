"""Keeps secrets out of logs, job rows and error messages.

Known secret values (service-role key, Cloudinary secret, generator token) are replaced wherever
they appear, in every encoding a remote server or a library could echo them in: URL-encoded
(``quote``, ``quote_plus``, either case of hex), JSON-escaped, base64 and base64url (alone, or
anywhere inside a longer base64 text such as ``Basic base64(key:secret)``), and those
encodings of one another. So are the shapes secrets travel in even when the value is not known
to us: an ``apikey=`` query parameter, a bearer token (``Bearer%20…`` too), HTTP Basic
credentials, a JWT, credentials inside a URL.

There is one redactor, ``redact``, and one mask, ``MASK``. The worker registers its settings'
secrets at start; a module holding a secret of its own registers it too (``redact.add``), so
that whatever it says is masked the same way everywhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "[REDACTED]"
# Encoded forms shorter than this are not registered: they would mask ordinary words.
MIN_FORM_CHARS = 8

_PATTERNS = [
    re.compile(r"(?i)(apikey=)[^&\s'\"]+"),
    re.compile(r"(?i)(bearer(?:\s+|%20|\+))[A-Za-z0-9._~+/=%-]+"),
    re.compile(
        r"(?i)((?:api_secret|signature|access_token|token)[\"']?\s*[:=]\s*[\"']?)[^&\s'\",}]+"
    ),
    re.compile(r"(cloudinary://[^:/@\s]+:)[^@\s]+(@)"),
    re.compile(r"(\b[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@\s]+(@)"),
    # A JWT: three base64url segments, the first starting with the encoded '{"'.
    re.compile(r"()\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"),
]


# HTTP Basic credentials: base64 of "user:password" (checked by decoding, so that prose such as
# "basic configuration" stays as it is).
_BASIC = re.compile(r"(?i)(basic(?:\s+|%20|\+))([A-Za-z0-9+/]{6,}={0,2})")


def _text_encodings(text: str) -> set[str]:
    """``text`` as URL and JSON encoders write it."""
    url = {quote(text, safe=""), quote(text), quote_plus(text)}
    url |= {re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), form) for form in url}
    escaped = {json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    return url | escaped


def _base64_forms(secret: str) -> set[str]:
    """The base64 and base64url text of ``secret``: whole, and the part that is the same
    wherever the secret sits inside longer encoded data (three alignments: base64 turns 3
    bytes into 4 characters, so the characters at the edges depend on the neighbours)."""
    data = secret.encode()
    forms = {base64.b64encode(data).decode()}
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode()
        first = -(-8 * offset // 6)  # the first character made of the secret's bits only
        last = 8 * (offset + len(data)) // 6  # one past the last such character
        forms.add(encoded[first:last])
    forms |= {form.translate(str.maketrans("+/", "-_")) for form in forms}
    return forms | {form.rstrip("=") for form in forms}


def encodings(secret: str) -> set[str]:
    """Every form of ``secret`` worth masking: itself, its URL and JSON encodings and those of
    each other (a JSON body in a query string), and its base64 forms."""
    forms = {secret}
    for _ in range(2):
        forms |= {encoded for form in forms for encoded in _text_encodings(form)}
    forms |= _base64_forms(secret)
    return {form for form in forms if form == secret or len(form) >= MIN_FORM_CHARS}


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._forms: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register secret values; every encoding of each (``encodings``) is masked too. For a
        credential pair, register ``"user:password"`` as well: its base64 form is what HTTP
        Basic authentication sends."""
        new = {s for s in secrets if s and len(s) >= 4} - self._secrets
        if not new:
            return
        self._secrets |= new
        forms = {form for secret in self._secrets for form in encodings(secret)}
        # Longest first, so a form that contains another is masked whole.
        self._forms = sorted(forms, key=lambda form: (-len(form), form))

    def mask_known(self, text: str) -> str:
        """Only the registered secret values masked (in all their encodings), not the shapes:
        for a remote server's words quoted in an error message, which stay readable ("invalid
        bearer token") and are redacted in full where they leave the process (log sinks, job
        rows)."""
        for form in self._forms:
            if form in text:  # a substring search is far cheaper than a regex over all forms
                text = text.replace(form, MASK)
        return text

    def __call__(self, text: str) -> str:
        text = self.mask_known(text)
        for pattern in _PATTERNS:
            text = pattern.sub(_mask_match, text)
        return _BASIC.sub(_mask_basic, text)


def _mask_basic(match: re.Match[str]) -> str:
    try:
        decoded = base64.b64decode(match.group(2), validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    return f"{match.group(1)}{MASK}" if b":" in decoded else match.group(0)


def _mask_match(match: re.Match[str]) -> str:
    groups = match.groups()
    prefix = groups[0] if groups else ""
    suffix = groups[1] if len(groups) > 1 else ""
    return f"{prefix}{MASK}{suffix}"


# The process-wide redactor; the worker adds its settings' secrets at start.
redact = Redactor()
