"""The context metadata stored with each upload (``prompt``, ``model``, ``aspect_ratio``,
``job_id``, ``user_id``, as the contract lists), and its encoding for the upload API.

Context is encoded here, not by the SDK, which escapes neither backslashes nor keys: a value
ending in ``\\`` would swallow the next pair's ``|``. ``\\``, ``|`` and ``=`` are
backslash-escaped; empty values are left out (the SDK would send ``None``); values are cut to
the API's 1024 characters.
"""

from __future__ import annotations

import re

from worker.jobs import Job

CONTEXT_VALUE_MAX_CHARS = 1024
# The API refuses control characters in context values, except newlines.
_CONTROL_CHARS = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_CONTEXT_SPECIAL = re.compile(r"([\\|=])")


def job_context(job: Job) -> dict[str, str]:
    """The job's Cloudinary context metadata: empty values left out, each cut to the API limit."""
    raw = {
        "prompt": job.prompt,
        "model": job.model,
        "aspect_ratio": job.aspect_ratio,
        "job_id": job.id,
        "user_id": job.user_id,
    }
    context = {}
    for key, value in raw.items():
        if value is None or not str(value).strip():
            continue
        value = _CONTROL_CHARS.sub(" ", str(value))
        if len(value) > CONTEXT_VALUE_MAX_CHARS:
            value = value[: CONTEXT_VALUE_MAX_CHARS - 1] + "…"
        context[key] = value
    return context


def encode_context(context: dict[str, str]) -> str:
    """``k=v|k2=v2`` with ``\\``, ``|`` and ``=`` backslash-escaped in keys and values."""
    return "|".join(f"{_escape(key)}={_escape(value)}" for key, value in context.items())


def _escape(text: str) -> str:
    return _CONTEXT_SPECIAL.sub(r"\\\1", text)
