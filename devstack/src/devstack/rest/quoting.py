"""Quoting for the few places where text is written into SQL instead of sent as a parameter.

Kept in one place so that every identifier and literal the stand-in splices is quoted the
same way.
"""

from __future__ import annotations


def ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(value: str) -> str:
    # Only used in the simple-query prelude and for JSON path keys; standard_conforming_strings
    # is on in every supported Postgres, so doubling quotes is the whole escaping.
    return "'" + value.replace("'", "''") + "'"
