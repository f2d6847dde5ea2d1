"""Throttling: how long a provider asked us to wait, and one gate per replica that honours it.

``retry_after`` reads the wait from an answer, first found wins:

* ``Retry-After-Ms`` (milliseconds; OpenAI sends it besides ``Retry-After``);
* ``Retry-After``: delta-seconds or an HTTP date (RFC 9110 §10.2.3);
* a JSON body's ``retry_after`` (current Replicate 429 bodies);
* the body's words: Replicate "Your rate limit resets in ~30s.", OpenAI "Please try again in
  1.5s." / "in 20ms", fal "Try again in 4 seconds.".

``ThrottleGate``: when the provider refuses a generation request for throttling, every
generation of this replica waits for the gate before its next generation request, instead of
each job discovering the 429 on its own. Polls of running generations do not wait: they are
cheap and not what the provider throttled.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

from worker.http import load_json

# "resets in ~30s", "try again in 1.5s", "try again in 20ms", "Try again in 4 seconds"
_WORDS = re.compile(
    r"(?:resets in|try again in)\s*~?\s*(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|sec|seconds?)\b",
    re.IGNORECASE,
)
MAX_HONOURED = 24 * 3600.0  # a wait longer than a day is a broken header, not a plan


def retry_after(
    headers: Mapping[str, str], body: bytes | str | None = None, *, now: float | None = None
) -> float | None:
    """Seconds the provider asked us to wait, or None if it did not say (see the docstring)."""
    millis = _number(headers.get("retry-after-ms"))
    if millis is not None:
        return _bounded(millis / 1000)
    header = (headers.get("retry-after") or "").strip()
    if header:
        seconds = _number(header)
        if seconds is not None:
            return _bounded(seconds)
        try:
            when = parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            current = now if now is not None else time.time()
            return _bounded(when.timestamp() - current)
    if not body:
        return None
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    try:
        document = load_json(text)  # depth-bounded: a 429 body may nest 100,000 deep
    except ValueError:
        document = None
    if isinstance(document, dict):
        value = document.get("retry_after")
        if isinstance(value, int | float) and not isinstance(value, bool):
            return _bounded(float(value))
    match = _WORDS.search(text[:4096])
    if match:
        amount, unit = float(match.group(1)), match.group(2).lower()
        return _bounded(amount / 1000 if unit.startswith("m") else amount)
    return None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if value == value else None  # NaN is no number


def _bounded(seconds: float) -> float:
    return min(max(seconds, 0.0), MAX_HONOURED)


class ThrottleGate:
    """Closed until a moment the provider named; shared by every generation of one replica."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._until = 0.0

    def close(self, seconds: float) -> None:
        """No generation request for ``seconds`` (a later close only ever extends it)."""
        self._until = max(self._until, self._clock() + seconds)

    @property
    def remaining(self) -> float:
        return max(0.0, self._until - self._clock())

    async def wait(self, cap: float) -> float:
        """Wait until the gate opens, at most ``cap`` seconds in all; returns the wait. Jobs
        let through together are spread over a little jitter (at most a second), so that they
        do not all knock at the very same instant."""
        waited = 0.0
        while (left := self.remaining) > 0 and waited < cap:
            pause = min(left + random.uniform(0, min(1.0, left / 10)), cap - waited)
            await asyncio.sleep(pause)
            waited += pause
        return waited
