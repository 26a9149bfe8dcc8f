"""scheduler_core.pool_ping: pooled connections are pinged before use only after sitting idle,
and an idle connection the server dropped is replaced instead of failing the statement."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine
from scheduler_core.pool_ping import ping_when_idle
from tests.support.pgserver import PostgresServer

IDLE = 1.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def engine(pg_url: str, clock: FakeClock) -> Iterator[sa.Engine]:
    engine = create_db_engine(pg_url, pre_ping=False, pool_size=1)
    ping_when_idle(engine, IDLE, clock=clock)
    yield engine
    engine.dispose()


@pytest.fixture
def pings(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The connections the dialect was asked to ping."""
    seen: list[Any] = []
    real = engine.dialect.do_ping

    def counting(dbapi_connection: Any) -> bool:
        seen.append(dbapi_connection)
        return real(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting)
    return seen


def backend_pid(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one())


def test_a_new_or_recently_used_connection_is_not_pinged(
    engine: sa.Engine, clock: FakeClock, pings: list[Any]
) -> None:
    first = backend_pid(engine)  # a new connection: just connected, no ping
    clock.now += IDLE  # back in the pool exactly IDLE ago: still recent
    assert backend_pid(engine) == first
    assert pings == []


def test_a_connection_idle_longer_than_the_limit_is_pinged(
    engine: sa.Engine, clock: FakeClock, pings: list[Any]
) -> None:
    first = backend_pid(engine)
    clock.now += IDLE + 0.01
    assert backend_pid(engine) == first
    assert len(pings) == 1
    assert backend_pid(engine) == first  # used just now: no second ping
    assert len(pings) == 1


def test_an_idle_connection_the_server_dropped_is_replaced(
    engine: sa.Engine, clock: FakeClock, pg_server: PostgresServer, pings: list[Any]
) -> None:
    first = backend_pid(engine)
    with pg_server.admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    clock.now += IDLE + 0.01
    with engine.connect() as conn:  # would fail on the dropped connection without the ping
        assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one() != first
    assert len(pings) == 1


def test_without_the_ping_a_dropped_connection_fails_its_statement(
    engine: sa.Engine, pg_server: PostgresServer, pings: list[Any]
) -> None:
    """What the idle limit gives up, shown: a connection dropped soon after its last use
    fails once, then the pool hands out a fresh one."""
    first = backend_pid(engine)
    with pg_server.admin() as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (first,))
    with pytest.raises(sa.exc.OperationalError), engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    assert backend_pid(engine) != first
    assert pings == []


def test_a_negative_idle_limit_is_refused_by_name(pg_url: str) -> None:
    engine = create_db_engine(pg_url, pre_ping=False)
    try:
        with pytest.raises(ValueError, match=r"idle_seconds: must be >= 0, got -1"):
            ping_when_idle(engine, -1)
    finally:
        engine.dispose()
