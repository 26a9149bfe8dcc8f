"""Reading many rows: ``stream_rows`` gives what ``select_rows`` gives, and on PostgreSQL the
driver holds only a batch of them at a time (a server-side cursor in the caller's
transaction)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from psycopg.pq import TransactionStatus

from scheduler_core.db import create_db_engine, select_rows, stream_rows

ROWS = 2_500  # more than two batches
BATCH = 1_000  # scheduler_core.db's batch of rows

_numbers = sa.Table(
    "test_numbers",
    sa.MetaData(),
    sa.Column("n", sa.Integer, primary_key=True),
    sa.Column("label", sa.Text),
)


def _engine_with_numbers(url: str) -> sa.Engine:
    engine = create_db_engine(url)
    _numbers.create(engine)
    with engine.begin() as conn:
        conn.execute(_numbers.insert(), [{"n": i, "label": f"row {i}"} for i in range(ROWS)])
    return engine


def test_stream_rows_gives_every_row_as_select_rows_does(db_url: str) -> None:
    engine = _engine_with_numbers(db_url)
    query = sa.select(_numbers.c.n, _numbers.c.label).order_by(_numbers.c.n.desc())
    try:
        with engine.connect() as conn:
            streamed = [tuple(row) for row in stream_rows(conn, query)]
            selected = [tuple(row) for row in select_rows(conn, query)]
    finally:
        engine.dispose()
    assert streamed == selected == [(i, f"row {i}") for i in reversed(range(ROWS))]


@pytest.mark.postgres
def test_on_postgresql_the_driver_holds_one_batch_at_a_time(pg_url: str) -> None:
    """After the first row the statement is still under way (libpq hands rows over as they
    are asked for) and the driver holds one batch of them, not the whole result."""
    cursors: list[psycopg.Cursor[Any]] = []

    class Recorded(psycopg.Cursor[Any]):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            cursors.append(self)

    engine = _engine_with_numbers(pg_url)
    try:
        with engine.connect() as conn:
            conn.connection.driver_connection.cursor_factory = Recorded
            rows = stream_rows(conn, sa.select(_numbers.c.n).order_by(_numbers.c.n))
            first = next(rows)
            status = conn.connection.driver_connection.info.transaction_status
            held = cursors[-1].pgresult.ntuples if cursors[-1].pgresult else None
            rest = list(rows)
            after = conn.connection.driver_connection.info.transaction_status
    finally:
        engine.dispose()
    assert first[0] == 0 and [r[0] for r in rest] == list(range(1, ROWS))
    assert status == TransactionStatus.ACTIVE and held == BATCH
    assert after == TransactionStatus.INTRANS  # in the caller's transaction, not committed


@pytest.mark.postgres
def test_a_driver_error_is_sqlalchemys_and_a_lost_connection_is_invalidated(
    pg_url: str,
) -> None:
    """As for a statement SQLAlchemy runs: the refresh's error handling and the pool see
    the same exceptions and drop a connection the server has closed."""
    engine = _engine_with_numbers(pg_url)
    killer = create_db_engine(pg_url)
    query = sa.select(_numbers.c.n)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET statement_timeout = '1ms'")
            slow = sa.select(_numbers.c.n, sa.func.pg_sleep(0.01))
            with pytest.raises(sa.exc.OperationalError, match="statement timeout"):
                list(stream_rows(conn, slow))
            assert not conn.invalidated
        with engine.connect() as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with killer.connect() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            with pytest.raises(sa.exc.DBAPIError) as lost:
                list(stream_rows(conn, query))
            assert lost.value.connection_invalidated and conn.invalidated
    finally:
        engine.dispose()
        killer.dispose()
