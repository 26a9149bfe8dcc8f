"""`schedctl exporter` flags: defaults, environment, the loopback-without-token refusal, and a
real process that starts with its database down and never logs the password."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from exporter.cli import build_parser, main, settings_from_args
from tests.support.pgserver import PostgresServer
from tests.support.prometheus import free_port, http_get, wait_until

REPO = Path(__file__).resolve().parents[2]


def settings(argv: list[str], environ: dict[str, str] | None = None):
    return settings_from_args(build_parser().parse_args(argv), environ or {})


def test_empty_host_means_loopback():
    """`--listen :9464` serves on 127.0.0.1, like the scheduler's own health address."""
    s, _ = settings(["--listen", ":9464"])
    assert (s.host, s.port) == ("127.0.0.1", 9464)


def test_defaults():
    """Without flags or environment: loopback 9464, SQLite ./schedctl.db, 5 s, 60 s grace."""
    s, url = settings([])
    assert (s.host, s.port, s.token) == ("127.0.0.1", 9464, None)
    assert (s.refresh_interval, s.late_grace) == (5.0, 300.0)
    assert url == "sqlite:///schedctl.db"


def test_environment_fills_in_and_flags_win():
    """SCHEDCTL_DATABASE_URL and SCHEDCTL_EXPORTER_TOKEN apply unless a flag overrides them."""
    env = {"SCHEDCTL_DATABASE_URL": "sqlite:///env.db", "SCHEDCTL_EXPORTER_TOKEN": "from-env"}
    s, url = settings(["--refresh-interval", "2s", "--late-grace", "0"], env)
    assert (url, s.token, s.refresh_interval, s.late_grace) == (
        "sqlite:///env.db", "from-env", 2.0, 0.0,
    )  # fmt: skip
    s, url = settings(["--database-url", "sqlite:///flag.db", "--token", "flag"], env)
    assert (url, s.token) == ("sqlite:///flag.db", "flag")


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "192.0.2.7:80", "myhost:9464"])
def test_refuses_non_loopback_without_token(listen, capsys):
    """Listening beyond loopback without a token exits 2 with an error naming the way out."""
    assert main(["--listen", listen, "--database-url", "sqlite:///x.db"]) == 2
    err = capsys.readouterr().err
    assert "refusing to serve on non-loopback address" in err
    assert "--token" in err and "--allow-unauthenticated" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--listen", "0.0.0.0:9464", "--token", "t"],
        ["--listen", "0.0.0.0:9464", "--allow-unauthenticated"],
        ["--listen", "[::1]:9464"],
        ["--listen", "localhost:9464"],
    ],
)
def test_accepted_listen_addresses(argv):
    """A token, --allow-unauthenticated or a loopback address makes the listen address valid."""
    s, _ = settings(argv)
    assert s.port == 9464


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--listen", "9464"], "--listen"),
        (["--listen", "127.0.0.1:99999"], "--listen"),
        (["--refresh-interval", "soon"], "--refresh-interval"),
        (["--late-grace=-5s"], "--late-grace"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--database-url", "mysql://u@h/db"], "not supported"),
    ],
)
def test_bad_values_exit_2(argv, message, capsys):
    """Unusable flag values exit 2 with a message naming the problem."""
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_real_process_starts_with_database_down_and_hides_the_password():
    """`python -m exporter.cli` against an unreachable PostgreSQL serves /health and
    /metrics (up 0) at once, stops cleanly on SIGTERM, and never prints the password."""
    port = free_port()
    url = f"postgresql://schedctl:{PostgresServer.password}@127.0.0.1:{free_port()}/gone"
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "--database-url", url,
         "--listen", f"127.0.0.1:{port}", "--refresh-interval", "0.2s"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_get(f"{base}/health"), timeout=30, what="the exporter process")
        metrics = wait_until(
            lambda: (
                (body := http_get(f"{base}/metrics").decode())
                and "scheduler_exporter_refresh_duration_seconds " in body
                and body
            ),
            timeout=30,
            what="a failed refresh",
        )
        assert "scheduler_exporter_up 0.0" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    text = output.decode()
    assert process.returncode == 0
    assert "cannot read database postgresql+psycopg://schedctl:***@" in text
    assert PostgresServer.password not in text


def test_admin_api_is_off_unless_enabled_with_a_token():
    """--enable-admin-api needs an admin token (flag or SCHEDCTL_ADMIN_TOKEN); a token alone
    does not switch the API on."""
    token = "admin-token-0123456789"
    s, _ = settings(["--admin-token", token])
    assert s.admin_token is None
    s, _ = settings(["--enable-admin-api"], {"SCHEDCTL_ADMIN_TOKEN": token})
    assert s.admin_token == token
    with pytest.raises(ValueError, match="needs --admin-token"):
        settings(["--enable-admin-api"])
    assert main(["--enable-admin-api"]) == 2
