"""The ``[gen:NAME:ARG…]`` token language: which answer a prompt asks the stand-in for.

A prompt picks its own failure, so one running stand-in serves every test at once; the names
and their arguments are listed in the package docstring (:mod:`devstack.generator`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from devstack.generator.images import FORMATS

_TOKEN_RE = re.compile(r"\[gen:([^\]\s]+)\]")

# Answers only /generate gives (they concern the protocol, not the bytes).
GENERATE_ONLY = frozenset(
    {
        "base64",
        "b64_json",
        "datauri",
        "openai",
        "image_url",
        "url",
        "cloudinary_link",
        "redirect303",
        "cold404",
        "stopped",
        "json_no_image",
        "bad_json",
        "bad_base64",
        "base64_not_image",
        "oversize_base64",
        "private_url",
        "metadata_url",
        "redirect_private",
        "echo_auth",
        "tiny",
        "noise",
    }
)
# Answers about the bytes themselves: valid for /generate and for /images assets.
SHARED = frozenset(
    {
        *FORMATS,
        "html_as_png",
        "html",
        "oversize",
        "oversize_chunked",
        "dribble",
        "slow",
        "hang",
        "status",
    }
)
ASSET_ONLY = frozenset({"redirect_to", "redirect"})


class BehaviourError(ValueError):
    """A ``[gen:…]`` token the stand-in cannot follow."""


@dataclass(frozen=True)
class Behaviour:
    name: str
    args: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Behaviour:
        name, _, rest = text.strip().partition(":")
        behaviour = cls(name, tuple(rest.split(":")) if rest else ())
        if name not in GENERATE_ONLY | SHARED | ASSET_ONLY:
            raise BehaviourError(f"stand-in: unknown behaviour {text!r}")
        return behaviour

    @classmethod
    def from_prompt(cls, prompt: str, default: str) -> Behaviour:
        match = _TOKEN_RE.search(prompt)
        return cls.parse(match.group(1) if match else default)

    def number(self, index: int, default: float | None = None) -> float | None:
        if index >= len(self.args) or self.args[index] == "":
            return default
        try:
            return float(self.args[index])
        except ValueError:
            raise BehaviourError(
                f"stand-in: {self} needs a number, not {self.args[index]!r}"
            ) from None

    def whole(self, index: int, default: int | None = None) -> int | None:
        value = self.number(index, default)
        return None if value is None else int(value)

    def rest(self, index: int = 0) -> str:
        """The remaining arguments joined back (for URLs and nested behaviours, which hold ':')."""
        return ":".join(self.args[index:])

    def __str__(self) -> str:
        return ":".join((self.name, *self.args))
