"""Shared fixtures: one real PostgreSQL server per test session, a fresh devstack per test."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from devstack.postgres import EmbeddedPostgres
from devstack.stack import DevStack


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """DSN of a PostgreSQL server with wal_level=logical; each stack gets its own database on it."""
    if url := os.environ.get("DEVSTACK_DATABASE_URL"):
        yield url
        return
    with EmbeddedPostgres() as pg:
        yield pg.dsn()


@pytest_asyncio.fixture
async def stack(pg_server: str) -> AsyncIterator[DevStack]:
    async with DevStack(server_url=pg_server) as s:
        yield s


@pytest_asyncio.fixture
async def realistic_stack(pg_server: str) -> AsyncIterator[DevStack]:
    """Realtime delivery with the real server's polling delays (about 100 ms busy, 500 ms idle)."""
    async with DevStack(server_url=pg_server, delivery="realistic") as s:
        yield s
