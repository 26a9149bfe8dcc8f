"""Fixtures for the exporter tests: seeded databases, read-only engines, an app client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exporter.database import create_reader_engine
from scheduler_core.db import create_db_engine
from tests.exporter.factories import NOW, Expected, FakeClock, seed_every_state

T = TypeVar("T")


@pytest.fixture
def seeded(db_url: str) -> dict[str, Expected]:
    """The every-state fixture written into a fresh database (SQLite and PostgreSQL)."""
    writer = create_db_engine(db_url)
    try:
        return seed_every_state(writer)
    finally:
        writer.dispose()


@pytest.fixture
def seeded_sqlite(sqlite_url: str) -> str:
    """A SQLite database holding the every-state fixture; returns its URL."""
    writer = create_db_engine(sqlite_url)
    try:
        seed_every_state(writer)
    finally:
        writer.dispose()
    return sqlite_url


@pytest.fixture
def reader(db_url: str) -> Iterator[sa.Engine]:
    engine = create_reader_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


def with_client(
    app: web.Application, scenario: Callable[[TestClient[Any, Any]], Awaitable[T]]
) -> T:
    """Serve ``app`` on a loopback port, run ``scenario(client)`` and shut everything down."""

    async def main() -> T:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            return await scenario(client)

    return asyncio.run(main())
