"""PostgreSQL's text output turned into the JSON values the real Realtime server sends.

pgoutput hands over every value as text; the real server's records hold what ``to_jsonb`` would
make of them (numbers, booleans, nested arrays, ISO timestamps), and clients compare on those.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable
from typing import Any

_NUMBER_TYPES = {"int2", "int4", "int8", "float4", "float8", "numeric"}


def render_scalar(text: str, typname: str) -> Any:
    if typname in _NUMBER_TYPES:
        with contextlib.suppress(ValueError):
            return int(text)
        with contextlib.suppress(ValueError):
            number = float(text)
            if math.isfinite(number):
                return number
        return text  # NaN and Infinity are JSON strings in to_jsonb
    if typname == "bool":
        return text == "t"
    if typname in ("json", "jsonb"):
        return json.loads(text)
    if typname in ("timestamp", "timestamptz"):
        if text in ("infinity", "-infinity"):
            return text
        text = text.replace(" ", "T", 1)
        # to_jsonb writes the UTC offset as +HH:MM; the text output says +00.
        if typname == "timestamptz" and len(text) > 3 and text[-3] in "+-":
            text += ":00"
        return text
    return text


def parse_array(text: str) -> list[Any]:
    """PostgreSQL's array text output (``{1,NULL,"a b",{2,3}}``) as nested lists of str/None."""
    if text.startswith("["):  # explicit bounds, e.g. [0:1]={1,2}
        text = text[text.index("=") + 1 :]
    pos = 0

    def parse() -> list[Any]:
        nonlocal pos
        pos += 1  # '{'
        items: list[Any] = []
        if text[pos] == "}":
            pos += 1
            return items
        while True:
            if text[pos] == "{":
                items.append(parse())
            elif text[pos] == '"':
                pos += 1
                chars = []
                while text[pos] != '"':
                    if text[pos] == "\\":
                        pos += 1
                    chars.append(text[pos])
                    pos += 1
                pos += 1
                items.append("".join(chars))
            else:
                end = pos
                while text[end] not in ",}":
                    end += 1
                raw = text[pos:end]
                pos = end
                items.append(None if raw == "NULL" else raw)
            separator = text[pos]
            pos += 1
            if separator == "}":
                return items

    if not text.startswith("{"):
        raise ValueError(text)
    return parse()


def map_nested(items: list[Any], fn: Callable[[str], Any]) -> list[Any]:
    return [
        map_nested(i, fn) if isinstance(i, list) else (None if i is None else fn(i)) for i in items
    ]
