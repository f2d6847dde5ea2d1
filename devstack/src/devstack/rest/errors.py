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
    status: int,
    body: str | None,
    headers: dict[str, str] | None = None,
    reason: str | None = None,
) -> web.Response:
    all_headers = {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
    return web.Response(
        status=status,
        reason=reason,
        body=None if body is None else body.encode(),
        headers=all_headers,
    )


def _reason_phrase(text: str | None) -> str | None:
    """A status line's reason phrase from a message, when it can be one (printable ASCII)."""
    if text and text.isascii() and text.isprintable():
        return text
    return None


class PgrstError(Exception):
    """An error answered the way PostgREST answers it: ``{"code","details","hint","message"}``.

    ``catalog_miss`` marks errors that a stale catalog could cause (unknown table, column or
    function): the request is compiled once more after reloading the catalog before giving up.
    ``reason``: the status line's reason phrase, when PostgREST sets its own (a ``PTxxx`` code's
    message, a ``PGRST`` raise's ``status_text``). Every answer carries PostgREST's
    ``Proxy-Status: PostgREST; error=<code>`` header.
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
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.hint = details, hint
        self.catalog_miss = catalog_miss
        self.headers = headers or {}
        self.reason = reason

    def response(self) -> web.Response:
        body = {"code": self.code, "details": self.details, "hint": self.hint}
        body["message"] = self.message
        headers = {"Proxy-Status": f"PostgREST; error={self.code}", **self.headers}
        return json_response(self.status, json.dumps(body), headers, _reason_phrase(self.reason))


def parse_error(message: str, details: str | None = None) -> PgrstError:
    return PgrstError(400, "PGRST100", message, details)


class GatewayReject(Exception):
    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def gateway_error(message: str, hint: str) -> web.Response:
    """What Supabase's API gateway (Kong) answers before the request reaches PostgREST."""
    return json_response(401, json.dumps({"message": message, "hint": hint}))


def sqlstate_status(code: str, authed: bool, message: str = "") -> int:
    """PostgREST's HTTP status for a SQLSTATE (``mapSQLtoHTTP`` in PostgREST's Error.hs; the
    table is also in its docs, "Errors"). ``message`` matters for three codes."""
    exact = {
        "23503": 409, "23505": 409, "25006": 405, "53400": 500, "57P01": 503, "P0001": 400,
        "42P01": 404, "42P17": 500,
    }  # fmt: skip
    if code in exact:
        return exact[code]
    if code == "21000":  # cardinality_violation; pg-safeupdate's refusal is the client's fault
        return 400 if message.endswith("requires a WHERE clause") else 500
    if code == "22023":  # invalid_parameter_value; a JWT role that does not exist is a 401
        return 401 if message.startswith("role") and message.endswith("does not exist") else 400
    if code == "42883":  # undefined_function
        return 406 if message.startswith("function xmlagg(") else 404
    if code == "42501":
        return 403 if authed else 401
    if code.startswith("PT"):  # RAISE SQLSTATE 'PT402': that HTTP status, 500 if not a number
        status = int(code[2:]) if code[2:].isdigit() else 0
        return status if 100 <= status <= 599 else 500
    by_class = {
        "08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
        "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
        "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500,
    }  # fmt: skip
    return by_class.get(code[:2], 400)


def from_postgres(exc: asyncpg.PostgresError, authed: bool) -> PgrstError:
    code = exc.sqlstate or "XX000"
    message = exc.args[0] if exc.args else str(exc)
    detail, hint = getattr(exc, "detail", None), getattr(exc, "hint", None)
    if code == "PGRST":
        return _raised_response(message, detail)
    status = sqlstate_status(code, authed, message)
    return PgrstError(
        status,
        code,
        message,
        detail,
        hint,
        # PostgREST: a PTxxx code's message is the status text; a 401 asks for a bearer token.
        reason=message if code.startswith("PT") else None,
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
    )


def _raised_response(message: str, detail: str | None) -> PgrstError:
    """``RAISE SQLSTATE 'PGRST' USING message = '{"code": …, "message": …}', detail =
    '{"status": …, "headers": {…}}'``: the function chooses the whole answer."""
    try:
        body = json.loads(message)
        if not (isinstance(body, dict) and {"code", "message"} <= body.keys()):
            raise ValueError
    except ValueError:
        return PgrstError(
            500,
            "PGRST121",
            "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\" error",
            f"Invalid JSON value for MESSAGE: '{message}'",
            "MESSAGE must be a JSON object with obligatory keys: 'code', 'message' and "
            "optional keys: 'details', 'hint'.",
        )
    try:
        if detail is None:
            raise LookupError
        response = json.loads(detail)
        if not (isinstance(response, dict) and {"status", "headers"} <= response.keys()):
            raise ValueError
        status = int(response["status"])
        headers = {str(k): str(v) for k, v in dict(response["headers"]).items()}
    except (LookupError, ValueError, TypeError):
        return PgrstError(
            500,
            "PGRST121",
            "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\" error",
            "DETAIL is missing in the RAISE statement"
            if detail is None
            else f"Invalid JSON value for DETAIL: '{detail}'",
            "DETAIL must be a JSON object with obligatory keys: 'status', 'headers' and "
            "optional key: 'status_text'.",
        )
    return PgrstError(
        status,
        str(body["code"]),
        str(body["message"]),
        body.get("details"),
        body.get("hint"),
        headers=headers,
        reason=response.get("status_text"),
    )
