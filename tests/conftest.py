"""Shared fixtures: a throwaway PostgreSQL for the session and a fresh database per test,
parametrised over SQLite and PostgreSQL for the store contract suite."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine, upgrade_schema
from tests.support.pgserver import PostgresServer, find_pg_bin

TEMPLATE_DB = "schedctl_template"


@pytest.fixture(autouse=True)
def root_logging_restored() -> Iterator[None]:
    """The root logger's handlers and level as they were before the test. A CLI entry point
    run in a test (``configure_logging``) points a handler at that test's captured stderr,
    which pytest closes afterwards; left in place, every later log record fails to write and
    Python prints "--- Logging error ---" to ``sys.stderr``, inside whatever runs then."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole test session, with a migrated template database."""
    if find_pg_bin() is None:
        pytest.fail("PostgreSQL binaries are required (apt-get install postgresql)")
    server = PostgresServer().start()
    with server.admin() as conn:
        conn.execute(f"CREATE DATABASE {TEMPLATE_DB} OWNER schedctl")
    engine = create_db_engine(server.url(TEMPLATE_DB))
    upgrade_schema(engine)
    engine.dispose()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: PostgresServer) -> Iterator[str]:
    """A fresh, migrated PostgreSQL database; fails the test if it leaks a connection."""
    name = pg_server.create_database(template=TEMPLATE_DB)
    yield pg_server.url(name)
    # A backend leaves pg_stat_activity a moment after its client closed the socket: give
    # connections the test did close a short while to go before calling them leaked.
    deadline = time.monotonic() + 3.0
    leaked = pg_server.connection_count(name)
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = pg_server.connection_count(name)
    pg_server.drop_database(name)
    assert leaked == 0, f"{leaked} database connection(s) left open by the test"


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A fresh, migrated SQLite file."""
    url = f"sqlite:///{tmp_path / 'schedctl.db'}"
    engine = create_db_engine(url)
    upgrade_schema(engine)
    engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """A fresh, migrated database on each backend: SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def db_engine(db_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(db_url)
    yield engine
    engine.dispose()
