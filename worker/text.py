"""Text from elsewhere (remote bodies, rows, library messages) made safe to keep and to show.

A generator's or a service's words end up in job rows, logs and the operators' terminals. In a
terminal, control characters are instructions: ESC sequences clear the screen, move the cursor,
retitle the window or plant hyperlinks; bidirectional overrides reorder what is displayed; CR and
LF forge log lines. So:

* ``one_line`` is for stored text (``error_message``): controls dropped, whitespace collapsed;
* ``escape_controls`` is for text shown (log sinks, the ``status``/``replay`` renderer): each
  control character written as its escape (``\\x1b``), seen but never obeyed;
* ``printable`` applies ``escape_controls`` to every string of a document about to be shown.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

# C0 controls (tab, LF and CR included), DEL, C1 controls, and the invisible marks, embeddings,
# overrides and isolates that reorder bidirectional text.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# An SGR sequence (colours, bold): what a colourising log sink writes itself.
_SGR = re.compile(r"\x1b\[[0-9;]*m")


def one_line(text: str) -> str:
    """``text`` as one clean line: whitespace collapsed to single spaces, every other control
    character dropped."""
    text = " ".join(text.split())  # every kind of whitespace, LF, CR, NEL and tab included
    return CONTROL_CHARACTERS.sub("", text)


def _escape(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def escape_controls(text: str, keep: str = "", *, keep_colours: bool = False) -> str:
    """Every control character of ``text`` written as its escape (``\\x1b``, ``\\n``,
    ``\\u202e``), except those in ``keep``. ``keep_colours`` leaves SGR colour sequences alone
    (a sink that colours its own output to a terminal)."""
    if not CONTROL_CHARACTERS.search(text):
        return text
    if keep_colours:
        pieces = _SGR.split(text)
        colours = _SGR.findall(text)
        escaped = [escape_controls(piece, keep) for piece in pieces]
        return "".join(p + c for p, c in zip(escaped, [*colours, ""], strict=True))
    return _controls_but(keep).sub(_escape, text)


@functools.cache
def _controls_but(keep: str) -> re.Pattern[str]:
    if not keep:
        return CONTROL_CHARACTERS
    return re.compile(rf"(?![{re.escape(keep)}]){CONTROL_CHARACTERS.pattern}")


def printable(value: Any) -> Any:
    """``value`` with every string in it (in dicts, lists, tuples and dataclass fields) passed
    through ``escape_controls``: a document from the database, ready to be shown."""
    if isinstance(value, str):
        return escape_controls(value)
    if isinstance(value, dict):
        return {key: printable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(printable(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {
            f.name: printable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if isinstance(getattr(value, f.name), str | dict | list | tuple)
        }
        return dataclasses.replace(value, **changes)
    return value
