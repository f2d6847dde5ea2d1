"""The whole local stack as one async context manager, shared by tests, benchmarks and the demo.

    async with DevStack() as stack:
        stack.env            # what a worker needs: SUPABASE_URL, keys, CLOUDINARY_URL, GENERATOR_URL
        stack.faults ...     # via stack.rest / stack.realtime / stack.cloudinary / stack.generator
        stack.provider_env("replicate")  # GENERATOR_KIND/URL/TOKEN for a hosted-provider stand-in

One aiohttp server plays the Supabase project (``/rest/v1``, ``/realtime/v1/websocket``,
``/auth/v1`` (``stack.auth``; ``stack.create_user(email, password)`` seeds a user) and the
``/admin`` fault switches on one port, like the real gateway, answering CORS as it does); Cloudinary and the generator are
separate servers on their own ports, like the real remote services, and so are the hosted
providers' stand-ins (``stack.replicate``, ``stack.openai``, ``stack.fal``: devstack.providers).
"""

from __future__ import annotations

import contextlib
import os
from typing import Literal

import asyncpg
from aiohttp import web

from devstack.auth import AuthServer, User
from devstack.cloudinary import CloudinaryStandIn
from devstack.cors import cors_middleware
from devstack.generator import GeneratorStandIn
from devstack.keys import Keys
from devstack.postgres import EmbeddedPostgres, bootstrap, create_database, drop_database
from devstack.providers import FalStandIn, OpenAIStandIn, ReplicateStandIn
from devstack.realtime import RealtimeServer
from devstack.rest import RestApi
from devstack.serve import serve

Delivery = Literal["fast", "realistic"]
GeneratorKind = Literal["http", "replicate", "openai", "fal"]


async def _no_reset(connection: asyncpg.Connection) -> None:
    return None


class DevStack:
    def __init__(
        self,
        *,
        database_url: str | None = None,
        server_url: str | None = None,
        delivery: Delivery = "fast",
        host: str = "127.0.0.1",
        port: int = 0,
        cloudinary_port: int = 0,
        generator_port: int = 0,
    ) -> None:
        """``database_url``: use this existing database as is (bootstrapped and migrated).
        ``server_url``: create a fresh database on this existing server (dropped at exit).
        Neither: the server at ``DEVSTACK_DATABASE_URL`` if set (it needs ``wal_level=logical``),
        else an embedded PostgreSQL started for this stack.
        """
        self._database_url = database_url
        self._server_url = server_url or (
            None if database_url else os.environ.get("DEVSTACK_DATABASE_URL")
        )
        self.delivery: Delivery = delivery
        self.host = host
        self._port = port
        self._cloudinary_port = cloudinary_port
        self._generator_port = generator_port
        self.keys = Keys()
        self._embedded: EmbeddedPostgres | None = None
        self._created_db: str | None = None
        self._stack = contextlib.AsyncExitStack()
        self.dsn = ""
        self.url = ""

    async def __aenter__(self) -> DevStack:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        stack = self._stack
        if self._database_url:
            self.dsn = self._database_url
        else:
            server = self._server_url
            if server is None:
                self._embedded = EmbeddedPostgres()
                self._embedded.start()
                stack.callback(self._embedded.stop)
                server = self._embedded.dsn()
            self.dsn = await create_database(server)
            self._created_db = self.dsn.rsplit("/", 1)[1].split("?")[0]
            if self._embedded is None:
                stack.push_async_callback(drop_database, server, self._created_db)
        await bootstrap(self.dsn)

        # Every REST request is one transaction whose settings are transaction-local, so the
        # pool's reset query on release (a fourth round trip per request) buys nothing here.
        self.pool = await asyncpg.create_pool(self.dsn, min_size=2, max_size=50, reset=_no_reset)
        stack.push_async_callback(self.pool.close)

        self.rest = RestApi(self.pool, self.keys)
        self.auth = AuthServer(self.keys)
        stack.push_async_callback(self.rest.close)
        self.realtime = RealtimeServer(self.dsn, self.keys, delivery=self.delivery)
        await self.realtime.start()
        stack.push_async_callback(self.realtime.stop)

        self.cloudinary = CloudinaryStandIn()
        await self.cloudinary.start(self.host, self._cloudinary_port)
        stack.push_async_callback(self.cloudinary.stop)
        self.generator = GeneratorStandIn()
        await self.generator.start(self.host, self._generator_port)
        stack.push_async_callback(self.generator.stop)
        self.replicate = ReplicateStandIn()
        self.openai = OpenAIStandIn()
        self.fal = FalStandIn()
        for provider in (self.replicate, self.openai, self.fal):
            await provider.start(self.host)
            stack.push_async_callback(provider.stop)

        app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[cors_middleware])
        app.add_routes(self.rest.routes())
        app.add_routes(self.auth.routes())
        app.add_routes(self.auth.admin_routes())
        app.add_routes(self.realtime.routes())
        app.add_routes(self.rest.admin_routes())
        app.add_routes(self.realtime.admin_routes())
        app.add_routes(self.cloudinary.admin_routes())
        app.add_routes(self.generator.admin_routes())
        for provider in (self.replicate, self.openai, self.fal):
            app.add_routes(provider.admin_routes())
        app.router.add_get("/admin", self._admin_index)
        runner, self.url = await serve(app, self.host, self._port)
        stack.push_async_callback(runner.cleanup)
        self._app = app

    @property
    def env(self) -> dict[str, str]:
        """The environment a worker needs to run against this stack."""
        return {
            "SUPABASE_URL": self.url,
            "SUPABASE_SERVICE_ROLE_KEY": self.keys.service_role_key,
            "SUPABASE_ANON_KEY": self.keys.anon_key,
            "CLOUDINARY_URL": self.cloudinary.cloudinary_url,
            "GENERATOR_URL": self.generator.url,
            "GENERATOR_TOKEN": self.generator.token,
            "ALLOW_INSECURE_DOWNLOADS": "true",
        }

    def create_user(self, email: str, password: str, **kwargs: object) -> User:
        """A confirmed email/password user of the Auth stand-in (``user.id`` is their uuid)."""
        return self.auth.create_user(email, password, **kwargs)  # type: ignore[arg-type]

    def provider_env(self, kind: GeneratorKind) -> dict[str, str]:
        """``GENERATOR_KIND``, ``GENERATOR_URL`` and ``GENERATOR_TOKEN`` for one generator kind.

        The URL is the stand-in's API base as each provider's own client takes it: Replicate
        ``http://host:port`` (paths ``/v1/…``), OpenAI ``http://host:port/v1``, fal the queue host.
        """
        if kind == "http":
            return {
                "GENERATOR_KIND": "http",
                "GENERATOR_URL": self.generator.url,
                "GENERATOR_TOKEN": self.generator.token,
            }
        provider = {"replicate": self.replicate, "openai": self.openai, "fal": self.fal}[kind]
        url = self.openai.api_base if kind == "openai" else provider.base_url
        return {"GENERATOR_KIND": kind, "GENERATOR_URL": url, "GENERATOR_TOKEN": provider.token}

    def admin_endpoints(self) -> list[str]:
        paths = sorted(
            {
                f"{route.method} {route.resource.canonical}"  # type: ignore[union-attr]
                for route in self._app.router.routes()
                if route.resource is not None
                and route.method != "HEAD"
                and route.resource.canonical.startswith("/admin/")
            }
        )
        return [p.replace(" /", f" {self.url}/", 1) for p in paths]

    async def _admin_index(self, request: web.Request) -> web.Response:
        return web.json_response({"endpoints": self.admin_endpoints()})
