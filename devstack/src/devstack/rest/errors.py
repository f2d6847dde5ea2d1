"""Errors, answered with the status and JSON body PostgREST (or Supabase's gateway) would send.

Clients branch on these codes and statuses (supabase-py raises ``APIError`` from the body), so
they are copied from PostgREST rather than invented.
"""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from aiohttp import web

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


def json_response(
    status: int, body: str | None, headers: dict[str, str] | None = None
) -> web.Response:
    all_headers = {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
    return web.Response(
        status=status, body=None if body is None else body.encode(), headers=all_headers
    )


class PgrstError(Exception):
    """An error answered the way PostgREST answers it: ``{"code","details","hint","message"}``.

    ``catalog_miss`` marks errors that a stale catalog could cause (unknown table, column or
    function): the request is compiled once more after reloading the catalog before giving up.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        hint: str | None = None,
        *,
        catalog_miss: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.hint = details, hint
        self.catalog_miss = catalog_miss
        self.headers = headers or {}

    def response(self) -> web.Response:
        body = {"code": self.code, "details": self.details, "hint": self.hint}
        body["message"] = self.message
        return json_response(self.status, json.dumps(body), self.headers)


def parse_error(message: str, details: str | None = None) -> PgrstError:
    return PgrstError(400, "PGRST100", message, details)


class GatewayReject(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def gateway_error(message: str, hint: str) -> web.Response:
    """What Supabase's API gateway (Kong) answers before the request reaches PostgREST."""
    return json_response(401, json.dumps({"message": message, "hint": hint}))


def sqlstate_status(code: str, authed: bool) -> int:
    """PostgREST's HTTP status for a SQLSTATE (``pgErrorStatus`` in PostgREST's Error.hs)."""
    exact = {
        "23503": 409, "23505": 409, "25006": 405, "21000": 500, "53400": 500, "57P01": 503,
        "P0001": 400, "42883": 404, "42P01": 404, "42P17": 500,
    }  # fmt: skip
    if code in exact:
        return exact[code]
    if code == "42501":
        return 403 if authed else 401
    if code.startswith("PT") and code[2:].isdigit():
        return int(code[2:])
    by_class = {
        "08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
        "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
        "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500,
    }  # fmt: skip
    return by_class.get(code[:2], 400)


def from_postgres(exc: asyncpg.PostgresError, authed: bool) -> PgrstError:
    code = exc.sqlstate or "XX000"
    return PgrstError(
        sqlstate_status(code, authed),
        code,
        exc.args[0] if exc.args else str(exc),
        getattr(exc, "detail", None),
        getattr(exc, "hint", None),
    )
