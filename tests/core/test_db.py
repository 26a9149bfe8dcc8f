"""Session settings ``create_db_engine`` puts on every PostgreSQL connection."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine


def _settings(url: str, *, read_only: bool = False) -> dict[str, str]:
    engine = create_db_engine(url, read_only=read_only)
    try:
        with engine.connect() as conn:
            return {
                name: conn.exec_driver_sql(f"SHOW {name}").scalar_one()
                for name in (
                    "idle_in_transaction_session_timeout",
                    "lock_timeout",
                    "default_transaction_read_only",
                )
            }
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_defaults_cut_lingering_transactions_and_lock_waits(pg_url: str) -> None:
    assert _settings(pg_url) == {
        "idle_in_transaction_session_timeout": "10s",
        "lock_timeout": "10s",
        "default_transaction_read_only": "off",
    }


@pytest.mark.postgres
def test_options_in_the_url_win_over_the_defaults(pg_url: str) -> None:
    url = f"{pg_url}?options=-c%20idle_in_transaction_session_timeout%3D2000"
    assert _settings(url)["idle_in_transaction_session_timeout"] == "2s"
    assert _settings(url)["lock_timeout"] == "10s"


@pytest.mark.postgres
def test_read_only_cannot_be_switched_off_from_the_url(pg_url: str) -> None:
    url = f"{pg_url}?options=-c%20default_transaction_read_only%3Doff"
    assert _settings(url, read_only=True)["default_transaction_read_only"] == "on"
    engine = create_db_engine(url, read_only=True)
    try:
        with engine.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="read-only"):
            conn.exec_driver_sql("CREATE TABLE nope (x int)")
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_sessions_are_in_utc_whatever_the_url_asks(pg_url: str) -> None:
    """Driver rows read without SQLAlchemy's conversion must carry UTC, even when the URL
    sets another time zone."""
    url = f"{pg_url}?options=-c%20TimeZone%3DAsia%2FTokyo"
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW TimeZone").scalar_one() == "UTC"
    finally:
        engine.dispose()
