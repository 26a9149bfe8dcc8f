"""Fixtures for the PgBouncer suite: one transaction-pooling bouncer for the session in front
of the session's PostgreSQL, and fresh databases reached through it."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.core.test_cli import schedctl
from tests.support.pgbouncer import PgBouncer, find_pgbouncer
from tests.support.pgserver import PostgresServer


@pytest.fixture(scope="session")
def pg_bouncer(pg_server: PostgresServer) -> Iterator[PgBouncer]:
    """PgBouncer 1.18-style ``pool_mode = transaction`` in front of ``pg_server``."""
    if find_pgbouncer() is None:
        pytest.fail("pgbouncer is required (apt-get install pgbouncer)")
    bouncer = PgBouncer(pg_server).start()
    try:
        yield bouncer
    finally:
        bouncer.stop()


@pytest.fixture
def bouncer_db(pg_server: PostgresServer, pg_bouncer: PgBouncer) -> Iterator[str]:
    """The name of a fresh, empty database; fails the test if it leaves a client connection
    open on the bouncer."""
    name = pg_server.create_database()
    yield name
    deadline = time.monotonic() + 3.0
    leaked = pg_bouncer.client_count(name)
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = pg_bouncer.client_count(name)
    with contextlib.suppress(psycopg.Error):  # never used through the bouncer
        pg_bouncer.admin(f"KILL {name}")  # its pooled server connections, too
    pg_server.drop_database(name)
    assert leaked == 0, f"{leaked} client connection(s) left open on the bouncer by the test"


@pytest.fixture
def bouncer_url(bouncer_db: str, pg_bouncer: PgBouncer) -> str:
    """A fresh database migrated through the bouncer by ``schedctl db upgrade``: its URL
    there, with ``?pool_mode=transaction``."""
    url = pg_bouncer.url(bouncer_db)
    upgraded = schedctl("db", "upgrade", "--database-url", url, timeout=120)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    return url
