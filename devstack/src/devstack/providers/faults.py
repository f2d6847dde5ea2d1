"""The hosted-provider stand-ins' fault switches: the ``[gen:…]`` tokens and what they do.

A test makes one job misbehave by putting tokens in its prompt, ``[gen:NAME]`` or
``[gen:NAME:ARG:ARG…]`` (several tokens may follow each other), like the generic generator's.
``inject(fault, times)`` (or ``POST /admin/<provider>/inject {"fault": …, "times": N}``) makes the
next N calls of any prompt misbehave, and ``default_faults`` (``POST /admin/<provider>/default
{"faults": …}``) applies to every creation. Counts ("the first N") are per prompt text, so a job
that is retried sees the fault N times, then the normal answer.

| token | effect |
| --- | --- |
| ``throttle[:S[:N]]`` | 429 on creation naming a wait of S s (default 1) in ``Retry-After`` and in the body, the first N attempts (default 1) |
| ``throttle_date[:S[:N]]`` | the same with ``Retry-After`` as an HTTP date |
| ``throttle_body[:S[:N]]`` | the same without ``Retry-After``: only the body names the wait |
| ``quota`` | OpenAI's other 429, ``insufficient_quota`` (billing: never to be retried), always |
| ``create_error:CODE[:N]`` | the first N creation attempts (default 1; ``always``) answer HTTP CODE |
| ``poll_error:CODE[:N]`` | the first N polls (status/get) of each handle answer HTTP CODE |
| ``queue:S`` | the generation waits S s before it starts (``starting`` / ``IN_QUEUE``) |
| ``run:S`` | the generation takes S s once started (``processing`` / ``IN_PROGRESS``; OpenAI: the call) |
| ``fail[:TEXT]`` | the generation fails with TEXT (each provider has its own default text) |
| ``nsfw`` | the provider's own safety outcome (see each provider) |
| ``expire[:S]`` | S s (default 0) after creation the handle is gone: its URLs answer 404 |
| ``data_removed`` | Replicate: once done, ``output`` is null and ``data_removed`` true (the 1-hour deletion) |
| ``early_output`` | Replicate: the files are in ``output`` while ``status`` is still ``processing`` |

An unknown token is answered 400 (``stand-in: unknown fault …``) in the provider's error shape.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

TOKEN_RE = re.compile(r"\[gen:([^\]]+)\]")


class FaultError(ValueError):
    """A ``[gen:…]`` token (or injected fault) the stand-in cannot follow."""


@dataclass(frozen=True)
class Faults:
    throttle: float | None = None  # the wait named (seconds)
    throttle_style: str = "seconds"  # seconds | date | body
    throttle_times: int = 1
    quota: bool = False
    create_error: int | None = None
    create_error_times: int = 1  # 0: always
    poll_error: int | None = None
    poll_error_times: int = 1  # 0: always
    queue: float = 0.0
    run: float = 0.0
    fail: str | None = None  # "" = the provider's default text
    nsfw: bool = False
    expire: float | None = None
    data_removed: bool = False
    early_output: bool = False

    def merged(self, text: str, *, bare: bool = False) -> Faults:
        """These faults with the ``[gen:…]`` tokens of ``text`` (a prompt) applied on top.

        ``bare``: ``text`` may also be tokens without brackets, separated by spaces (the admin
        switches: ``"queue:2 run:1"``).
        """
        tokens = TOKEN_RE.findall(text)
        if bare and not tokens:
            tokens = text.split()
        result = self
        for token in tokens:
            result = result._apply(token)
        return result

    def _apply(self, token: str) -> Faults:
        name, _, rest = token.strip().partition(":")
        args = rest.split(":") if rest else []
        if name in ("throttle", "throttle_date", "throttle_body"):
            style = {"throttle": "seconds", "throttle_date": "date"}.get(name, "body")
            return replace(
                self,
                throttle=_number(token, args, 0, 1.0),
                throttle_style=style,
                throttle_times=_times(token, args, 1),
            )
        if name in ("create_error", "poll_error"):
            if not args:
                raise FaultError(f"stand-in: {token!r} needs an HTTP status")
            code = int(_number(token, args, 0, 0))
            if not 400 <= code <= 599:
                raise FaultError(f"stand-in: {token!r} needs an HTTP error status")
            return replace(self, **{name: code, f"{name}_times": _times(token, args, 1)})
        if name in ("queue", "run", "expire"):
            return replace(self, **{name: _number(token, args, 0, 0.0)})
        if name == "fail":
            return replace(self, fail=rest)
        if name in ("quota", "nsfw", "data_removed", "early_output"):
            return replace(self, **{name: True})
        raise FaultError(f"stand-in: unknown fault {token!r}")

    def throttles(self, attempt: int) -> bool:
        """Whether creation attempt number ``attempt`` (1-based, per prompt) is throttled."""
        return self.throttle is not None and (
            self.throttle_times == 0 or attempt <= self.throttle_times
        )

    def create_error_for(self, attempt: int) -> int | None:
        """The HTTP error creation attempt number ``attempt`` gets, if any."""
        if self.create_error is not None and (
            self.create_error_times == 0 or attempt <= self.create_error_times
        ):
            return self.create_error
        return None

    def overlay(self, top: Faults) -> Faults:
        """These faults with every field that ``top`` sets (differs from the default) taken."""
        default = Faults()
        changed = {
            f.name: getattr(top, f.name)
            for f in fields(top)
            if getattr(top, f.name) != getattr(default, f.name)
        }
        return replace(self, **changed)

    def describe(self) -> str:
        default = Faults()
        changed = {f.name: getattr(self, f.name) for f in fields(self)}
        return " ".join(f"{k}={v}" for k, v in changed.items() if getattr(default, k) != v)


def _number(token: str, args: list[str], index: int, default: float) -> float:
    if index >= len(args) or args[index] == "":
        return default
    try:
        return float(args[index])
    except ValueError:
        raise FaultError(f"stand-in: {token!r} needs a number, not {args[index]!r}") from None


def _times(token: str, args: list[str], index: int) -> int:
    """The count N at ``args[index]``: default 1, ``always`` (or 0) for every call."""
    if index < len(args) and args[index] == "always":
        return 0
    return int(_number(token, args, index, 1))
