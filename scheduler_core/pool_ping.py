"""Test a pooled connection before use only when it sat idle: pre-ping without its round trip
on a busy pool.

SQLAlchemy's ``pool_pre_ping`` sends a ping on every checkout, so a connection the server
dropped (a restart, a failover, an idle timeout) is replaced before a statement fails on it.
Under load that is one extra round trip per transaction, on a connection returned to the
pool a few milliseconds earlier: on the exporter's admin API at 200 creates a second the
ping was a fifth of the time spent in a create. :func:`ping_when_idle` pings only
connections that were checked in longer than ``idle_seconds`` ago, with the dialect's own
ping; a failed ping makes the pool replace the connection (SQLAlchemy's documented
"pessimistic" checkout hook, ``DisconnectionError``). What it gives up: a connection dropped
within ``idle_seconds`` of its last use fails its next statement instead, and SQLAlchemy
then invalidates the pool, so the statements after it get fresh connections.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

__all__ = ["ping_when_idle"]

#: Key in a pool record's ``info`` holding the monotonic time of its last check-in.
_CHECKED_IN_AT = "schedctl_checked_in_at"


def ping_when_idle(
    engine: sa.Engine, idle_seconds: float, *, clock: Callable[[], float] = time.monotonic
) -> None:
    """Ping a connection of ``engine``'s pool at checkout when it was idle longer than
    ``idle_seconds`` (by ``clock``); a new connection and a recently used one go unpinged.
    Meant for an engine created without ``pool_pre_ping``."""
    if idle_seconds < 0:
        raise ValueError(f"idle_seconds: must be >= 0, got {idle_seconds!r}")
    dialect = engine.dialect

    def checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN_AT] = clock()

    def checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop(_CHECKED_IN_AT, None)
        if since is None or clock() - since <= idle_seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            # The pool invalidates this connection and checks out another (3 attempts).
            raise sa.exc.DisconnectionError(f"idle connection failed its ping: {exc}") from exc

    sa.event.listen(engine, "checkin", checked_in)
    sa.event.listen(engine, "checkout", checked_out)
