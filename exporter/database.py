"""The exporter's database engines (read-only, and the admin API's writer) and the scrubbing of
secrets from error text."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from scheduler_core.db import create_db_engine, normalize_url, redact_url
from scheduler_core.pool_ping import ping_when_idle

__all__ = [
    "ADMIN_PING_IDLE_SECONDS",
    "create_admin_engine",
    "create_reader_engine",
    "describe_db_error",
    "display_url",
    "scrub_secret",
]

#: The admin API's pooled connections are pinged before use only after this long unused.
ADMIN_PING_IDLE_SECONDS = 1.0


def create_reader_engine(url: str | URL, *, statement_timeout: float = 10.0) -> Engine:
    """An engine for reading only: bounded statements on PostgreSQL, no write lock on SQLite.

    PostgreSQL sessions get ``statement_timeout`` and ``default_transaction_read_only``, so a
    slow query cannot hold a refresh forever and the exporter cannot write even by mistake.
    SQLite reads run in a deferred ``BEGIN`` (one consistent WAL snapshot, no writer blocked)
    with ``query_only`` on, and a missing database file is an error instead of being created.
    """
    # Sessions are in UTC (create_db_engine): scheduler_core.store.snapshot reads driver rows.
    return create_db_engine(
        normalize_url(url), pool_size=2, read_only=True, statement_timeout=statement_timeout
    )


def create_admin_engine(url: str | URL) -> Engine:
    """The admin API's writer. A connection idle over :data:`ADMIN_PING_IDLE_SECONDS` is
    pinged before use; one back in the pool since is not (see :mod:`scheduler_core.pool_ping`):
    at 200 creates a second the ping of every checkout was a fifth of a create's time."""
    engine = create_db_engine(url, pre_ping=False)
    ping_when_idle(engine, ADMIN_PING_IDLE_SECONDS)
    return engine


def display_url(url: URL) -> str:
    """``url`` for log lines: password hidden, session options (ours) left out."""
    return redact_url(url.difference_update_query(["options"]))


def scrub_secret(text: str, url: str | URL) -> str:
    """``text`` with the password of ``url`` (if any) replaced by ``***``."""
    try:
        password = sa.make_url(url).password if isinstance(url, str) else url.password
    except sa.exc.ArgumentError:
        return text
    if password:
        text = text.replace(str(password), "***")
    return text


def describe_db_error(exc: BaseException, url: str | URL) -> str:
    """One line saying why a database call failed, never containing the password.

    SQLAlchemy's own message would repeat the statement and parameters; the driver's first
    line is what an operator needs (connection refused, timeout, missing table, ...).
    """
    if isinstance(exc, TimeoutError):
        reason = "timed out"
    else:
        orig = getattr(exc, "orig", None)
        lines = str(orig if orig is not None else exc).strip().splitlines()
        reason = lines[0].strip() if lines else ""
        reason = reason or type(exc).__name__
    return scrub_secret(reason, url)
