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
SCHEMA_HEAD = "0009"
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


# long: every backend's connection settings in one place, in the order they apply
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

    PostgreSQL settings are sent once per connection, as startup ``options``; with
    ``?pool_mode=transaction`` in the URL (behind PgBouncer in transaction pooling mode,
    which refuses startup options and hands each transaction whichever server session is
    free) they are set at the start of each transaction instead, in one statement, and no
    statement is prepared on the server. ``engine.url`` stays the URL as given.
    """
    parsed = normalize_url(url)
    if parsed.drivername.startswith("sqlite"):
        if POOL_MODE_OPTION in parsed.query:
            raise ValueError(f"database URL option {POOL_MODE_OPTION} is for PostgreSQL only")
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
    pool_mode = _pool_mode(parsed)
    # The engine keeps the URL as given, for the messages that print it: the settings go
    # to the driver through ``connect_args`` (merged over the URL's query by SQLAlchemy, so
    # the URL's own ``options`` are replaced by the combined string, not sent twice).
    connect_args: dict[str, Any] = {"connect_timeout": 10, "application_name": "schedctl"}
    if pool_mode == "transaction":
        settings = _transaction_settings(parsed, read_only, statement_timeout)
        # No server-side prepared statements: psycopg prepares a query after 5 executions,
        # by name, on the server session it has at that moment; behind a transaction pooler
        # later transactions run on other sessions, which other clients share.
        connect_args["prepare_threshold"] = None
    else:
        connect_args["options"] = _startup_options(parsed, read_only, statement_timeout)
    engine = sa.create_engine(
        parsed,
        echo=echo,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        connect_args=connect_args,
    )
    if pool_mode is not None:
        # ``pool_mode`` is ours, not libpq's (psycopg would refuse the keyword); in
        # transaction mode the URL's ``options`` are applied per transaction instead, since
        # a transaction pooler refuses startup options.
        dropped = ("pool_mode", "options") if pool_mode == "transaction" else ("pool_mode",)
        sa.event.listen(engine, "do_connect", _drop_connect_params(dropped))
    if pool_mode == "transaction":
        sa.event.listen(engine, "begin", _apply_per_transaction(settings))
    return engine


#: The URL query option saying how connections reach PostgreSQL (see README, "PgBouncer").
POOL_MODE_OPTION = "pool_mode"
_POOL_MODES = ("session", "transaction")


def _pool_mode(url: URL) -> str | None:
    """The URL's ``pool_mode`` (None when absent): ``session`` (the default: settings are
    sent once per connection, as startup options) or ``transaction`` (a transaction pooler
    such as PgBouncer's ``pool_mode = transaction``: settings are applied per transaction)."""
    value = url.query.get(POOL_MODE_OPTION)
    if value is None:
        return None
    if not isinstance(value, str) or value not in _POOL_MODES:
        raise ValueError(
            f"database URL option {POOL_MODE_OPTION}={value!r} is not supported; "
            f"use {POOL_MODE_OPTION}=transaction behind PgBouncer in transaction pooling mode"
        )
    return value


# A process paused inside a transaction (SIGSTOP, a debugger) must not hold row locks that
# stop other instances' reaper forever; no statement waits on a lock forever. The URL's own
# ``options`` come after these defaults: what the operator wrote wins.
def _default_settings(statement_timeout: float | None) -> list[tuple[str, str]]:
    settings = [("idle_in_transaction_session_timeout", "10000"), ("lock_timeout", "10000")]
    if statement_timeout is not None:
        settings.append(("statement_timeout", str(max(1, int(statement_timeout * 1000)))))
    return settings


# Applied after the URL's ``options``. Read-only is a guarantee, not a default: nothing in
# the URL turns it off. Rows read without SQLAlchemy's conversion (``select_rows``) carry
# the session's time zone: UTC, whatever the server's or the URL's setting (schedctl always
# sends offsets).
def _forced_settings(read_only: bool) -> list[tuple[str, str]]:
    settings = [("default_transaction_read_only", "on")] if read_only else []
    settings.append(("TimeZone", "UTC"))
    return settings


def _startup_options(url: URL, read_only: bool, statement_timeout: float | None) -> str:
    """The libpq ``options`` every session starts with (PostgreSQL applies repeated ``-c``
    settings in order, so a later one wins)."""
    parts = [" ".join(f"-c {n}={v}" for n, v in _default_settings(statement_timeout))]
    parts.append(str(url.query.get("options", "") or ""))
    parts.extend(f"-c {n}={v}" for n, v in _forced_settings(read_only))
    return " ".join(p for p in parts if p)


def _transaction_settings(
    url: URL, read_only: bool, statement_timeout: float | None
) -> list[tuple[str, str]]:
    """The same settings as ``(name, value)`` pairs to set in each transaction, one per name
    (the last one given wins, as with startup options)."""
    user_options = url.query.get("options", "") or ""
    if not isinstance(user_options, str):
        raise ValueError("database URL option 'options' is given more than once")
    forced = _forced_settings(read_only)
    if read_only:  # default_transaction_read_only set inside a transaction is for later ones
        forced.append(("transaction_read_only", "on"))
    merged: dict[str, tuple[str, str]] = {}
    for name, value in [
        *_default_settings(statement_timeout),
        *_parse_options(user_options),
        *forced,
    ]:
        merged.pop(name.lower(), None)
        merged[name.lower()] = (name, value)
    return list(merged.values())


def _parse_options(options: str) -> list[tuple[str, str]]:
    """The ``-c name=value`` / ``--name=value`` settings of a libpq ``options`` string
    (whitespace separates arguments unless escaped with a backslash, as libpq reads it)."""
    words: list[str] = []
    current: list[str] | None = None
    chars = iter(options)
    for char in chars:
        if char.isspace():
            if current is not None:
                words.append("".join(current))
            current = None
            continue
        current = current if current is not None else []
        current.append(next(chars, "") if char == "\\" else char)
    if current is not None:
        words.append("".join(current))
    settings = []
    args = iter(words)
    for word in args:
        if word == "-c":
            setting = next(args, "")
        elif word.startswith(("-c", "--")):
            setting = word[2:]
        else:
            raise ValueError(_options_error(word))
        name, sep, value = setting.partition("=")
        name = name.replace("-", "_")  # as the server reads names on its command line
        if not sep or not name or not all(c.isalnum() or c in "_." for c in name):
            raise ValueError(_options_error(f"{word} {setting}" if word == "-c" else word))
        settings.append((name, value))
    return settings


def _options_error(word: str) -> str:
    return (
        f"database URL option 'options': {word!r} cannot be applied with "
        f"{POOL_MODE_OPTION}=transaction; only '-c name=value' settings can (they are set "
        "at the start of each transaction, since a transaction pooler refuses startup options)"
    )


def _drop_connect_params(names: tuple[str, ...]) -> Any:
    def drop(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        for name in names:
            cparams.pop(name, None)

    return drop


def _apply_per_transaction(settings: list[tuple[str, str]]) -> Any:
    """A ``begin`` listener applying ``settings`` transaction-locally, in one statement.

    ``begin`` fires for ``engine.begin()`` and for a connection's autobegin alike, before the
    transaction's first statement: psycopg sends BEGIN just ahead of this one. The values
    are bound parameters (the URL's ``options`` may hold anything)."""
    sql = "SELECT " + ", ".join("set_config(%s, %s, true)" for _ in settings)
    params = tuple(item for pair in settings for item in pair)

    def apply(conn: sa.Connection) -> None:
        conn.exec_driver_sql(sql, params)

    return apply


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


def stream_rows(conn: sa.Connection, stmt: sa.Select[Any]) -> Iterator[Any]:
    """The rows of ``stmt`` as :func:`select_rows` gives them, but on PostgreSQL the driver
    never holds more than a batch of them: one statement, whose rows libpq hands over
    ``_BATCH_ROWS`` at a time (psycopg's ``Cursor.stream`` in libpq's chunked-rows mode).

    A whole result held by libpq costs ~16 bytes of bookkeeping per cell: 6.6 MiB for 10,000
    schedule rows of 1.4 MiB of data, on top of the exporter's peak RSS at every refresh; and
    it skips SQLAlchemy's result objects, so it is faster too (bench/RESULTS.md, session 16).
    The statement runs in the connection's transaction, begun as SQLAlchemy would, but
    SQLAlchemy's cursor events do not see it. Consume the rows before the connection's next
    statement: psycopg holds the connection's lock until the last row, so a statement sent
    meanwhile from the same thread would wait for ever. A driver error is raised as
    SQLAlchemy's :class:`~sqlalchemy.exc.DBAPIError`, and a connection it shows to be lost is
    invalidated."""
    if conn.dialect.name != "postgresql":
        return _batches(conn.execute(stmt))
    if not conn.in_transaction():
        conn.begin()  # the driver's BEGIN is implicit; SQLAlchemy must know to end it
    compiled = stmt.compile(dialect=conn.dialect)
    return _streamed(conn, str(compiled), dict(compiled.params))


def _streamed(conn: sa.Connection, sql: str, params: dict[str, Any]) -> Iterator[Any]:
    dbapi_error: Any = conn.dialect.loaded_dbapi.Error
    driver = conn.connection.dbapi_connection
    psycopg_connection: Any = conn.connection.driver_connection
    cursor = psycopg_connection.cursor()
    try:
        with cursor:
            yield from cursor.stream(sql, params, size=_BATCH_ROWS)
    except dbapi_error as exc:
        lost = conn.dialect.is_disconnect(exc, driver, cursor)
        if lost:
            conn.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql, params, exc, dbapi_error, connection_invalidated=lost
        ) from exc


def driver_rows(result: sa.CursorResult[Any]) -> Iterator[Any]:
    """The rows of a driver-level result (``exec_driver_sql``), fetched in batches."""
    return _batches(result)


def _batches(result: sa.CursorResult[Any]) -> Iterator[Any]:
    """Far cheaper than one driver fetch per row, and never more than a batch of rows
    converted to Python objects at once."""
    for batch in result.partitions(_BATCH_ROWS):
        yield from batch


_BATCH_ROWS = 1000
