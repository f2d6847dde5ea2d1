"""How a job's work can fail.

``JobFailed`` ends the job ``failed`` with its message in ``error_message``: one clear sentence,
no secret, no traceback. Anything transient is retried inside the step that saw it; when the
retries run out, that step raises ``JobFailed`` saying so.
"""

from __future__ import annotations

from enum import IntEnum

from worker.text import one_line

MAX_ERROR_CHARS = 500


class JobFailed(Exception):
    """A permanent failure of one job. ``reason`` is a short class name for metrics and logs."""

    def __init__(self, message: str, reason: str) -> None:
        message = one_line(message)  # a remote service's words may carry control characters
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 1] + "…"
        super().__init__(message)
        self.message = message
        self.reason = reason


class TransientError(Exception):
    """A failure worth retrying (timeouts, 5xx, rate limits); never escapes the step's retry loop."""


class ExitCode(IntEnum):
    """Every command's exit code (the contract): 0 success, 1 failure, 2 bad usage or settings."""

    OK = 0
    FAILURE = 1
    USAGE = 2
