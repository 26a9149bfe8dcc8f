"""Database engines, URL handling (driver choice, password redaction) and schema revisions."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError

from scheduler_core.errors import DatabaseUnavailableError, SchemaVersionError, error_reason

if TYPE_CHECKING:
    from alembic.config import Config

#: The schema revision this version of schedctl needs: the newest migration in
#: ``migrations/versions`` (``tests/test_migrations.py`` checks that it is Alembic's head).
#: A constant, so that checking the schema needs no Alembic: the scheduler and the exporter
#: never import it, nor Mako and Pygments with it (~11 MB of resident memory each).
SCHEMA_HEAD = "0003"
#: Where Alembic stamps the revision (its default table, in the default schema).
_VERSION_TABLE = "alembic_version"

__all__ = [
    "DEFAULT_DATABASE_URL",
    "check_schema",
    "create_db_engine",
    "current_revision",
    "head_revision",
    "normalize_url",
    "redact_url",
    "upgrade_schema",
]

log = logging.getLogger(__name__)

DEFAULT_DATABASE_URL = "sqlite:///schedctl.db"
_MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK_KEY = 0x5C4ED_C71  # arbitrary, fixed: "schedctl migrations"


def normalize_url(url: str | URL) -> URL:
    """Parse ``url`` and pick schedctl's own driver for a plain ``postgresql://`` URL."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError as exc:
        raise ValueError(f"database URL {redact_url(str(url))!r} is not a valid URL") from exc
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", "postgresql+psycopg"):
        raise ValueError(
            f"database URL scheme {parsed.drivername!r} is not supported; "
            "use sqlite:///path/to/file.db or postgresql://user@host/db"
        )
    return parsed


def redact_url(url: str | URL) -> str:
    """Render a URL with its password hidden, for logs and error messages."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except ArgumentError:
        return "<unparseable database URL>"
    return parsed.render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets the exporter and CLI read while the scheduler writes; busy_timeout makes a
    # second writer wait for the lock instead of failing at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin_immediate(conn: Any) -> None:
    # Take the write lock at BEGIN: a deferred transaction that later upgrades to a writer can
    # fail with SQLITE_BUSY without waiting, which busy_timeout cannot help.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _sqlite_begin_deferred(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def _require_file(path: Path) -> None:
    if not path.exists():
        raise sqlite3.OperationalError(f"database file {str(path)!r} does not exist")


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA query_only=ON")


def create_db_engine(
    url: str | URL,
    *,
    pool_size: int = 5,
    echo: bool = False,
    read_only: bool = False,
    statement_timeout: float | None = None,
    pre_ping: bool = True,
) -> Engine:
    """Create an engine for ``url`` with the settings schedctl relies on.

    ``read_only`` (the exporter, ``tasks list``, ``runs``): PostgreSQL sessions get
    ``default_transaction_read_only``; SQLite reads in a deferred ``BEGIN`` (one WAL
    snapshot, no writer blocked) with ``query_only``, and a missing file is an error instead
    of being created. ``statement_timeout`` bounds every PostgreSQL statement. ``pre_ping``
    tests each pooled connection before use (a round trip per transaction); the scheduler
    turns it off because its loop already retries after a dropped connection.
    """
    parsed = normalize_url(url)
    if parsed.drivername.startswith("sqlite"):
        engine = sa.create_engine(parsed, echo=echo, connect_args={"timeout": 30})
        database = parsed.database
        if read_only and database and database != ":memory:" and not database.startswith("file:"):
            # Checked at each connect, not here: a reader may start before the file exists.
            path = Path(database)
            sa.event.listen(engine, "do_connect", lambda *_args: _require_file(path))
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own transaction handling is switched off so BEGIN is ours.
        sa.event.listen(
            engine, "connect", lambda dbapi_conn, _rec: setattr(dbapi_conn, "isolation_level", None)
        )
        if read_only:
            sa.event.listen(engine, "connect", _sqlite_query_only)
            sa.event.listen(engine, "begin", _sqlite_begin_deferred)
        else:
            sa.event.listen(engine, "begin", _sqlite_begin_immediate)
        return engine
    # A process paused inside a transaction (SIGSTOP, a debugger) must not hold row locks
    # that stop other instances' reaper forever; no statement waits on a lock forever.
    # PostgreSQL applies repeated ``-c`` settings in order, so the URL's own ``options``
    # come after these defaults: what the operator wrote wins.
    options = ["-c idle_in_transaction_session_timeout=10000 -c lock_timeout=10000"]
    if statement_timeout is not None:
        options.append(f"-c statement_timeout={max(1, int(statement_timeout * 1000))}")
    options.append(str(parsed.query.get("options", "") or ""))
    if read_only:  # a guarantee, not a default: nothing in the URL turns it off
        options.append("-c default_transaction_read_only=on")
    # Rows read without SQLAlchemy's conversion (``select_rows``) carry the session's time
    # zone: UTC, whatever the server's or the URL's setting (schedctl always sends offsets).
    options.append("-c TimeZone=UTC")
    joined = " ".join(o for o in options if o)
    if joined:
        parsed = parsed.update_query_dict({"options": joined})
    return sa.create_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        connect_args={"connect_timeout": 10, "application_name": "schedctl"},
    )


def _alembic_config(connection: sa.Connection) -> Config:
    from alembic.config import Config  # migrations only: see SCHEMA_HEAD

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The schema revision this version of schedctl needs."""
    return SCHEMA_HEAD


def current_revision(engine: Engine) -> str | None:
    """The schema revision the database is at (None when it was never migrated)."""
    try:
        with engine.connect() as conn:
            return _stamped_revision(conn)
    except sa.exc.OperationalError as exc:
        raise DatabaseUnavailableError(
            f"cannot reach database {redact_url(engine.url)}: {error_reason(exc)}"
        ) from None


def _stamped_revision(conn: sa.Connection) -> str | None:
    """The revision in Alembic's version table, read as Alembic reads it (None when there is
    no table or no row); several rows (branches schedctl never makes) come back joined, so
    the schema check refuses them by name."""
    if not sa.inspect(conn).has_table(_VERSION_TABLE):
        return None
    found = conn.execute(sa.text(f"SELECT version_num FROM {_VERSION_TABLE}")).scalars().all()
    return ", ".join(sorted(found)) or None


def check_schema(engine: Engine) -> None:
    """Raise SchemaVersionError unless the database is exactly at the head revision."""
    found = current_revision(engine)
    needed = head_revision()
    if found != needed:
        raise SchemaVersionError(found=found, needed=needed)


def upgrade_schema(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Migrate the database to ``revision``; return (revision before, revision after)."""
    from alembic import command  # migrations only: see SCHEMA_HEAD

    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several pods may run `db upgrade` at once (one init container each): the first
            # migrates, the others wait here and then find nothing left to do.
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
            )
        before = _stamped_revision(conn)
        command.upgrade(_alembic_config(conn), revision)
    after = current_revision(engine)
    assert after is not None
    return before, after


def select_rows(conn: sa.Connection, stmt: sa.Select[Any] | sa.Update) -> Iterator[Any]:
    """The rows of ``stmt``, fetched in batches. On PostgreSQL they come as the driver
    returns them: timestamps are already aware datetimes (sessions are in UTC, see
    ``create_db_engine``), and skipping SQLAlchemy's per-value result processing is most of
    the cost of reading thousands of rows (the exporter's refresh, the scheduler's claim)."""
    if conn.dialect.name != "postgresql":
        return _batches(conn.execute(stmt))
    compiled = stmt.compile(dialect=conn.dialect)
    return _batches(conn.exec_driver_sql(str(compiled), dict(compiled.params)))


def driver_rows(result: sa.CursorResult[Any]) -> Iterator[Any]:
    """The rows of a driver-level result (``exec_driver_sql``), fetched in batches."""
    return _batches(result)


def _batches(result: sa.CursorResult[Any]) -> Iterator[Any]:
    """Far cheaper than one driver fetch per row, and never more than a batch of rows
    converted to Python objects at once."""
    for batch in result.partitions(_BATCH_ROWS):
        yield from batch


_BATCH_ROWS = 1000
