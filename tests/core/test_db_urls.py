"""Database URLs: what reaches the driver, what error messages show (the URL as given, password
masked, none of schedctl's own settings), and the ``pool_mode`` URL option. No server needed:
the URLs point at a closed loopback port."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine, current_revision, normalize_url, redact_url
from scheduler_core.errors import DatabaseUnavailableError
from tests.core.test_cli import free_port, schedctl
from tests.support.pgserver import PostgresServer

PASSWORD = PostgresServer.password
OURS = ("idle_in_transaction_session_timeout", "lock_timeout", "TimeZone", "read_only")


def _closed_url(query: str = "") -> str:
    url = f"postgresql://schedctl:{PASSWORD}@127.0.0.1:{free_port()}/gone"
    return f"{url}?{query}" if query else url


def _connect_params(url: str, **kwargs: Any) -> dict[str, Any]:
    """The keyword arguments the engine hands psycopg.connect (the connection then fails)."""
    engine = create_db_engine(url, **kwargs)
    seen: dict[str, Any] = {}
    sa.event.listen(engine, "do_connect", lambda _d, _r, _a, cparams: seen.update(cparams))
    try:
        with pytest.raises(sa.exc.OperationalError), engine.connect():
            pass
    finally:
        engine.dispose()
    return seen


def test_startup_options_are_what_they_always_were() -> None:
    params = _connect_params(_closed_url())
    assert params["options"] == (
        "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=10000 -c TimeZone=UTC"
    )
    params = _connect_params(
        _closed_url(f"options={quote('-c lock_timeout=2000')}"), read_only=True, statement_timeout=3
    )
    assert params["options"] == (
        "-c idle_in_transaction_session_timeout=10000 -c lock_timeout=10000 "
        "-c statement_timeout=3000 -c lock_timeout=2000 "
        "-c default_transaction_read_only=on -c TimeZone=UTC"
    )
    assert "prepare_threshold" not in params and "pool_mode" not in params


def test_transaction_mode_sends_no_startup_options_and_prepares_nothing() -> None:
    params = _connect_params(
        _closed_url(f"pool_mode=transaction&options={quote('-c lock_timeout=2000')}")
    )
    assert "options" not in params and "pool_mode" not in params
    assert params["prepare_threshold"] is None
    assert "pool_mode" not in _connect_params(_closed_url("pool_mode=session"))


@pytest.mark.parametrize(
    "query",
    ["", "pool_mode=transaction", f"pool_mode=transaction&options={quote('-c work_mem=8MB')}"],
)
@pytest.mark.parametrize("read_only", [False, True])
def test_unreachable_database_error_shows_the_url_as_given(query: str, read_only: bool) -> None:
    url = _closed_url(query)
    engine = create_db_engine(url, read_only=read_only, statement_timeout=5)
    try:
        assert redact_url(engine.url) == redact_url(normalize_url(url))
        with pytest.raises(DatabaseUnavailableError) as caught:
            current_revision(engine)
    finally:
        engine.dispose()
    message = str(caught.value)
    assert redact_url(normalize_url(url)) in message
    assert "schedctl:***@127.0.0.1" in message
    assert PASSWORD not in message
    assert not [name for name in OURS if name in message], message


def test_cli_error_for_an_unreachable_database_masks_the_password() -> None:
    url = _closed_url("pool_mode=transaction")
    for args in (["tasks", "list"], ["db", "upgrade"]):
        result = schedctl(*args, "--database-url", url)
        assert result.returncode == 1, result.stderr
        assert "?pool_mode=transaction" in result.stderr
        assert "schedctl:***@127.0.0.1" in result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        assert "options" not in result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (_closed_url("pool_mode=statement"), "pool_mode='statement' is not supported"),
        (_closed_url("pool_mode=transaction&pool_mode=session"), "pool_mode="),
        ("sqlite:///x.db?pool_mode=transaction", "pool_mode is for PostgreSQL only"),
        (_closed_url(f"pool_mode=transaction&options={quote('-B 100')}"), "option 'options': '-B'"),
        (_closed_url(f"pool_mode=transaction&options={quote('-c work_mem')}"), "'options'"),
        (_closed_url(f"pool_mode=transaction&options={quote('-c')}"), "'options'"),
    ],
)
def test_unusable_pool_mode_urls_are_refused(url: str, message: str) -> None:
    with pytest.raises(ValueError, match="database URL option") as caught:
        create_db_engine(url)
    assert message in str(caught.value)
    assert PASSWORD not in str(caught.value)
