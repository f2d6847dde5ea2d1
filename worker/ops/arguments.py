"""Parsing the operator commands' arguments: durations and job ids (``ValueError`` on bad input)."""

from __future__ import annotations

import re
import uuid

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s)", re.IGNORECASE)
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """``90s``, ``10m``, ``2h``, ``1d``, ``1h30m`` or plain seconds → seconds."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        compact = text.replace(" ", "")
        parts = list(_DURATION_PART.finditer(compact))
        if not parts or "".join(p.group(0) for p in parts) != compact:
            raise ValueError(
                f"{text!r} is not a duration (examples: 90s, 10m, 2h, 1h30m)"
            ) from None
        seconds = sum(float(p.group(1)) * _UNIT_SECONDS[p.group(2).lower()] for p in parts)
    if seconds <= 0:
        raise ValueError("the duration must be positive")
    return seconds


def parse_job_id(text: str) -> str:
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        raise ValueError(f"{text!r} is not a job id (a UUID)") from None
