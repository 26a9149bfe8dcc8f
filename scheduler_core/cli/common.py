"""What every ``schedctl`` command shares: configuration from flags and ``SCHEDCTL_*``
variables, the database engine, argument types, and who is acting.

The database modules (SQLAlchemy, the store, the client) are imported by the functions that
use them, not here: the parser and ``schedctl validate`` import this module and never touch
a database.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from scheduler_core.durations import SINCE_FORMS, parse_duration, parse_since

if TYPE_CHECKING:
    import sqlalchemy as sa

    from scheduler_core.store import Store

T = TypeVar("T")

__all__ = [
    "UsageError",
    "actor",
    "database_url",
    "duration_seconds",
    "env_default",
    "json_arg",
    "listen_address",
    "open_engine",
    "positive_int",
    "read_store",
    "since_arg",
    "url_password",
]


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


def env_default(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def database_url(args: argparse.Namespace) -> str:
    from scheduler_core.db import DEFAULT_DATABASE_URL

    return str(args.database_url or env_default("SCHEDCTL_DATABASE_URL") or DEFAULT_DATABASE_URL)


def url_password(url: str) -> str | None:
    if not url:
        return None
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).password
    except Exception:
        return None


def open_engine(
    args: argparse.Namespace, *, check: bool = True, read_only: bool = False, pre_ping: bool = True
) -> sa.Engine:
    from scheduler_core.db import check_schema, create_db_engine

    url = database_url(args)
    try:
        engine = create_db_engine(url, read_only=read_only, pre_ping=pre_ping)
    except ValueError as exc:
        raise UsageError(f"--database-url: {exc}") from None
    if check:
        check_schema(engine)
    return engine


def since_arg(value: str) -> datetime:
    """``--since``: :func:`parse_since` as of the wall clock."""
    try:
        return parse_since(value, now=datetime.now(UTC))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --since {value!r}: use {SINCE_FORMS}") from None


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def duration_seconds(value: str) -> float:
    try:
        return parse_duration(value, allow_zero=True).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def listen_address(value: str) -> str:
    from scheduler_core.liveness import parse_listen  # brings http.server: daemons only

    try:
        parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def json_arg(value: str) -> Any:
    """A JSON command-line value (``--args '[1, 2]'``)."""
    try:
        return json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {value!r} ({exc})") from None


def actor() -> str:
    """Who runs this command: ``user@host`` (the audit events' actor)."""
    from scheduler_core.client import default_actor

    return default_actor()


def read_store(args: argparse.Namespace, query: Callable[[Store], T]) -> T:
    """``query`` on a read-only store for the command's database, then let the engine go."""
    from scheduler_core.store import Store

    engine = open_engine(args, read_only=True)
    try:
        return query(Store(engine))
    finally:
        engine.dispose()
