"""worker/observability/redact.py: a secret is masked in every form it can travel in."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

import pytest

from worker.observability.redact import MASK, Redactor
from worker.settings import Settings

# Characters that change under each encoding: + / = (URL, base64), " \ and non-ASCII (JSON).
TOKEN = 'r8_tok+en/With=Sym"bo\\ls-é-0123456789'


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


ENCODINGS = {
    "raw": TOKEN,
    "url-encoded (quote)": quote(TOKEN, safe=""),
    "url-encoded (quote, / kept)": quote(TOKEN),
    "url-encoded (quote_plus)": quote_plus(TOKEN),
    "url-encoded, lower-case hex": re.sub(
        r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(TOKEN, safe="")
    ),
    "json-escaped": json.dumps(TOKEN)[1:-1],
    "json-escaped, non-ASCII kept": json.dumps(TOKEN, ensure_ascii=False)[1:-1],
    "base64": b64(TOKEN),
    "base64url": base64.urlsafe_b64encode(TOKEN.encode()).decode(),
    "base64 inside a longer base64 (offset 1)": b64("x" + TOKEN + "yz"),
    "base64 inside a longer base64 (offset 2)": b64("xy" + TOKEN + "z"),
    "base64 inside a longer base64 (offset 3)": b64("xyz" + TOKEN),
}


@pytest.mark.parametrize("form", list(ENCODINGS))
def test_every_encoding_of_a_registered_secret_is_masked(form: str) -> None:
    """Finding 6: a generator echoing the token URL-encoded, JSON-escaped or in base64."""
    redactor = Redactor([TOKEN])
    encoded = ENCODINGS[form]
    text = f"upstream said: Authorization=Bearer%20{encoded}; done"
    masked = redactor.mask_known(text)
    assert encoded not in masked, masked
    assert MASK in masked
    assert masked.startswith("upstream said: ") and masked.endswith("; done")


def test_a_url_encoded_bearer_token_is_masked_by_shape_too() -> None:
    # A token the worker does not know (another service's), echoed URL-encoded.
    assert Redactor()("echo: Authorization: Bearer%20abcdef0123456789xyz") == (
        f"echo: Authorization: Bearer%20{MASK}"
    )


def test_basic_credentials_are_masked_by_shape() -> None:
    assert Redactor()(f"sent Authorization: Basic {b64('user:pass-word-123')}") == (
        f"sent Authorization: Basic {MASK}"
    )


def test_cloudinary_key_and_secret_are_masked_as_basic_credentials() -> None:
    api_key, api_secret = "test-api-key", "placeholder-Not_a-secret9"  # assembled, not literal
    settings = Settings(
        _env_file=None,
        supabase_url="http://127.0.0.1:9",
        supabase_service_role_key="service-role-key-0123456789",
        cloudinary_url=f"cloudinary://{api_key}:{api_secret}@demo-cloud",
    )
    redactor = Redactor(settings.secrets())
    credentials = b64(f"{api_key}:{api_secret}")
    masked = redactor.mask_known(f"the upload API answered 401 to Basic {credentials}")
    assert credentials not in masked and api_secret not in masked


def test_short_or_empty_values_are_not_registered() -> None:
    redactor = Redactor(["", "abc"])
    assert redactor.mask_known("abc and YWJj") == "abc and YWJj"


def test_masking_is_not_fooled_by_overlapping_secrets() -> None:
    redactor = Redactor(["secret-one-1234", "one-1234"])
    assert redactor.mask_known("x secret-one-1234 y one-1234") == f"x {MASK} y {MASK}"
