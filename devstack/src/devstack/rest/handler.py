"""The ``/rest/v1`` HTTP routes: who is asking, one transaction per request, errors as PostgREST.

How a request is served:

1. the fault switches (``fail_*``/``hang_*``, :mod:`devstack.rest.faults`) get the first say;
2. the API key (checked like Supabase's gateway does) and the bearer JWT pick the role and the
   claims; the result is cached per token pair, with the ``begin; set_config(...)`` prelude;
3. the URL, headers and body compile into one SQL statement against a cached catalog
   (:mod:`devstack.rest.statements`);
4. one transaction in three round trips: the prelude (one simple query), the statement
   (prepared and cached by asyncpg), ``commit``.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
from aiohttp import web

from devstack.keys import Keys
from devstack.rest.catalog import Catalog
from devstack.rest.errors import GatewayReject, PgrstError, from_postgres, gateway_error
from devstack.rest.faults import FaultSwitches
from devstack.rest.quoting import literal
from devstack.rest.statements import Plan, compile_rpc, compile_table


@dataclass
class _Auth:
    role: str
    authed: bool  # PostgREST answers 42501 with 403 when authenticated, 401 for anon
    begin_read_only: str
    begin_read_write: str
    expires_at: float


class RestApi(FaultSwitches):
    """The ``/rest/v1`` routes of a Supabase project, plus fault switches for tests."""

    def __init__(
        self, pool: asyncpg.Pool, keys: Keys, *, schemas: tuple[str, ...] = ("public",)
    ) -> None:
        super().__init__()
        self.pool = pool
        self.keys = keys
        self.catalog = Catalog(pool, schemas)
        self.request_count = 0
        # PostgREST's db-max-rows (Supabase: Settings > API > "Max rows", 1000 on hosted
        # projects): a hard limit on the rows one read returns, from a table, a view or a
        # function. None (PostgREST's default): no limit. See statements._read_plan.
        self.max_rows: int | None = None
        # Client (address, port) pairs seen: how many connections clients opened.
        self.peers: set[tuple[str, int]] = set()
        self._auth_cache: dict[tuple[str, str], _Auth] = {}

    # -- interface ---------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        return [
            web.route("*", "/rest/v1/rpc/{fn}", self._handle_rpc),
            web.route("*", "/rest/v1/{table}", self._handle_table),
        ]

    # -- auth --------------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> _Auth:
        apikey = request.headers.get("apikey") or request.query.get("apikey") or ""
        authorization = request.headers.get("Authorization", "")
        cache_key = (apikey, authorization)
        auth = self._auth_cache.get(cache_key)
        if auth is not None and auth.expires_at > time.time():
            return auth

        if not apikey:
            raise GatewayReject(
                "No API key found in request",
                "No `apikey` request header or url param was found.",
            )
        key_claims = self.keys.verify(apikey)
        if key_claims is None:
            raise GatewayReject(
                "Invalid API key", "Double check your Supabase `anon` or `service_role` API key."
            )
        claims = key_claims
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            token = token.strip()
            verified = self.keys.verify(token)
            if verified is None:
                raise self._jwt_error(token)
            claims = verified

        auth = self._auth_for(claims)
        auth.expires_at = min(auth.expires_at, float(key_claims.get("exp", float("inf"))))
        if len(self._auth_cache) > 10_000:
            self._auth_cache.clear()
        self._auth_cache[cache_key] = auth
        return auth

    def _auth_for(self, claims: dict[str, Any]) -> _Auth:
        role = claims["role"]
        settings = ", ".join(
            f"set_config({literal(name)}, {literal(value)}, true)"
            for name, value in (
                ("role", role),
                ("request.jwt.claims", json.dumps(claims)),
                ("request.jwt.claim.sub", str(claims.get("sub", ""))),
                ("request.jwt.claim.role", role),
            )
        )
        return _Auth(
            role=role,
            authed=role != "anon",
            begin_read_only=f"begin isolation level read committed read only; select {settings}",
            begin_read_write=f"begin isolation level read committed; select {settings}",
            expires_at=float(claims.get("exp", float("inf"))),
        )

    def _jwt_error(self, token: str) -> PgrstError:
        code, message = "PGRST301", "JWSError JWSInvalidSignature"
        try:
            jwt.decode(
                token, self.keys.jwt_secret, algorithms=["HS256"], options={"verify_aud": False}
            )
            message = "JWT role is not one of anon, authenticated, service_role"
        except jwt.ExpiredSignatureError:
            code, message = "PGRST303", "JWT expired"
        except jwt.DecodeError:
            message = "JWSError (CompactDecodeError Invalid number of parts)"
        except jwt.PyJWTError:
            pass
        challenge = f'Bearer error="invalid_token", error_description="{message}"'
        return PgrstError(401, code, message, headers={"WWW-Authenticate": challenge})

    # -- request handling --------------------------------------------------------------------

    async def _handle_table(self, request: web.Request) -> web.Response:
        return await self._handle(
            request, functools.partial(compile_table, self.catalog, max_rows=self.max_rows)
        )

    async def _handle_rpc(self, request: web.Request) -> web.Response:
        return await self._handle(
            request, functools.partial(compile_rpc, self.catalog, max_rows=self.max_rows)
        )

    async def _handle(
        self,
        request: web.Request,
        compile_: Callable[[web.Request, bytes], Plan],
    ) -> web.Response:
        self.request_count += 1
        if request.transport is not None and (peer := request.transport.get_extra_info("peername")):
            self.peers.add(peer[:2])
        if (faulted := await self._fault(request)) is not None:
            return faulted
        if self._closing.is_set():
            return web.Response(status=503)
        try:
            auth = self._authenticate(request)
            body = await request.read() if request.can_read_body else b""
            if self.catalog.stale:
                await self.catalog.reload(self.catalog.generation)
            generation = self.catalog.generation
            try:
                plan = compile_(request, body)
            except PgrstError as exc:
                if not exc.catalog_miss:
                    raise
                await self.catalog.reload(generation)
                plan = compile_(request, body)
            return await self._execute(auth, plan)
        except GatewayReject as exc:
            return gateway_error(exc.message, exc.hint)
        except PgrstError as exc:
            return exc.response()
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError) as exc:
            return PgrstError(
                503, "PGRST001", "Database client error. Retrying the connection.", str(exc)
            ).response()

    async def _execute(self, auth: _Auth, plan: Plan) -> web.Response:
        for last_try in (False, True):
            try:
                return await self._transaction(auth, plan)
            except asyncpg.InvalidCachedStatementError as exc:
                # A table changed shape under asyncpg's statement cache. asyncpg has dropped
                # the statement, so the second try prepares it afresh.
                self.catalog.stale = True
                if last_try:
                    raise from_postgres(exc, auth.authed) from None
            except asyncpg.PostgresError as exc:
                if exc.sqlstate in ("42P01", "42703", "42883"):
                    self.catalog.stale = True
                raise from_postgres(exc, auth.authed) from None
        raise AssertionError("unreachable")

    async def _transaction(self, auth: _Auth, plan: Plan) -> web.Response:
        async with self.pool.acquire() as conn:
            try:
                await conn.execute(
                    auth.begin_read_only if plan.read_only else auth.begin_read_write
                )
                row = await conn.fetchrow(plan.sql, *plan.params)
                response = plan.respond(row)
                await conn.execute("commit")
                return response
            except BaseException:
                # Never commit after an error, ours (from respond()) or the database's. If the
                # rollback cannot run (cancelled, connection lost), the pool's reset rolls back.
                with contextlib.suppress(Exception):
                    await conn.execute("rollback")
                raise
