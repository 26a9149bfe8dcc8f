"""The `schedctl` command line, run as a real process: drain on SIGTERM, bad input, admin."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine, head_revision
from scheduler_core.models import schedules, task_runs

SCHEDCTL = [sys.executable, "-m", "scheduler_core.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def schedctl(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SCHEDCTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def run_scheduler_for(config: Path, url: str, duration: str, *options: str) -> int:
    """``schedctl scheduler`` on ``config`` for ``duration``, no health server; its exit code."""
    argv = ["scheduler", "--config", str(config), "--database-url", url, "--duration", duration]
    return schedctl(*argv, "--health-listen", "off", *options).returncode


def health(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def run_rows(url: str) -> list[sa.Row]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(sa.select(task_runs).order_by(task_runs.c.id)))
    finally:
        engine.dispose()


@pytest.mark.parametrize("action", ["callable", "command"])
def test_sigterm_drains_and_records_cancelled(db_url: str, tmp_path: Path, action: str) -> None:
    """SIGTERM with a 30 s task running and grace 2 s: /health 503, exit within ~3 s, run cancelled."""
    task = (
        '{name: long, callable: "time:sleep", args: [30], every: 1s}'
        if action == "callable"
        else '{name: long, command: ["sleep", "30"], every: 1s, timeout_grace: 1s}'
    )
    config = tmp_path / "tasks.yaml"
    config.write_text(f"tasks:\n  - {task}\n")
    port = free_port()
    proc = subprocess.Popen(
        [
            *SCHEDCTL,
            "scheduler",
            "--config",
            str(config),
            "--database-url",
            db_url,
            "--drain-grace",
            "2s",
            "--health-listen",
            f"127.0.0.1:{port}",
            "--poll-interval",
            "100ms",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for(lambda: any(r.status == "running" for r in run_rows(db_url)), 20), (
            "task never started"
        )
        assert health(port) == 200
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        saw_503 = wait_for(lambda: health(port) == 503, 2, interval=0.02)
        proc.wait(timeout=10)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.stdout.read() if proc.stdout else ""
    assert saw_503, output
    assert proc.returncode == 0, output
    assert elapsed < 3.5, f"took {elapsed:.1f}s to exit\n{output}"
    rows = run_rows(db_url)
    assert rows and all(r.status != "running" for r in rows)
    assert rows[0].status == "cancelled" and "shut down" in rows[0].error_message


def test_rejected_config_changes_nothing(sqlite_url: str, tmp_path: Path) -> None:
    """A bad config exits 2 naming the problem, and the database is left exactly as it was."""
    good = tmp_path / "good.yaml"
    good.write_text("tasks:\n  - {name: a, command: ['true'], every: 1h}\n")
    assert run_scheduler_for(good, sqlite_url, "0.3s") == 0
    engine = create_db_engine(sqlite_url)
    with engine.connect() as conn:
        before = [tuple(r) for r in conn.execute(sa.select(schedules))]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tasks:\n  - {name: a, command: ['true'], every: 1h}\n  - {name: b, command: ['true'], cron: '99 * * * *'}\n"
    )
    result = schedctl(
        "scheduler", "--config", str(bad), "--database-url", sqlite_url, "--health-listen", "off"
    )
    assert result.returncode == 2
    assert "'b'" in result.stderr and "'cron'" in result.stderr and "99 * * * *" in result.stderr
    with engine.connect() as conn:
        after = [tuple(r) for r in conn.execute(sa.select(schedules))]
    engine.dispose()
    assert before == after


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("tasks:\n  - {name: a, command: ['true'], cron: 'not a cron'}\n", "not a cron"),
        (
            "tasks:\n  - {name: a, command: ['true'], cron: '0 3 * * *', timezone: Nowhere/City}\n",
            "Nowhere/City",
        ),
        ("tasks:\n  - {name: a, command: ['true'], every: -1s}\n", "-1s"),
        (
            "tasks:\n  - {name: a, command: ['true'], every: 1m}\n  - {name: a, command: ['true'], every: 1m}\n",
            "duplicate",
        ),
        ("tasks:\n  - {name: a, callable: 'nosuch.mod:fn', every: 1m}\n", "nosuch.mod:fn"),
    ],
)
def test_validate_rejects_bad_input(tmp_path: Path, yaml_text: str, needle: str) -> None:
    """`schedctl validate` exits non-zero with a message naming the bad input."""
    path = tmp_path / "t.yaml"
    path.write_text(yaml_text)
    result = schedctl("validate", str(path))
    assert result.returncode == 2 and needle in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_database_is_named_without_password(tmp_path: Path) -> None:
    """An unreachable database exits 1, names the host, and never prints the password."""
    port = free_port()
    url = f"postgresql://sched:hunter2-secret@127.0.0.1:{port}/sched"
    result = schedctl("tasks", "list", "--database-url", url, timeout=60)
    assert result.returncode == 1
    assert (
        f"127.0.0.1:{port}" in result.stderr
        and "hunter2-secret" not in result.stderr + result.stdout
    )
    assert "Traceback" not in result.stderr


def run_scheduler_once(tmp_path: Path, url: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """``schedctl scheduler`` with a one-task config, for commands expected to exit at once."""
    config = tmp_path / "t.yaml"
    config.write_text("tasks:\n  - {name: a, command: ['true'], every: 1m}\n")
    return schedctl(
        "scheduler", "--config", str(config), "--database-url", url, "--health-listen", "off",
        *flags,
    )  # fmt: skip


def test_unmigrated_database_is_refused(tmp_path: Path) -> None:
    """The scheduler refuses an un-migrated database, naming found and needed revisions."""
    result = run_scheduler_once(tmp_path, f"sqlite:///{tmp_path}/new.db")
    assert (
        result.returncode == 1
        and "none (database not migrated)" in result.stderr
        and head_revision() in result.stderr
    )


def test_admin_commands_round_trip(sqlite_url: str, tmp_path: Path) -> None:
    """tasks list / pause / resume / run-now / runs work from another process, with --json."""
    config = tmp_path / "t.yaml"
    config.write_text("tasks:\n  - {name: report, command: ['true'], every: 1h}\n")
    assert run_scheduler_for(config, sqlite_url, "0.3s") == 0
    assert (
        schedctl(
            "pause", "report", "--reason", "quarterly close", "--database-url", sqlite_url
        ).returncode
        == 0
    )
    listed = json.loads(schedctl("tasks", "list", "--json", "--database-url", sqlite_url).stdout)
    assert listed[0]["paused"] and listed[0]["pause_reason"] == "quarterly close"
    table = schedctl("tasks", "list", "--database-url", sqlite_url).stdout
    assert "paused (quarterly close)" in table
    assert schedctl("resume", "report", "--database-url", sqlite_url).returncode == 0
    assert schedctl("run-now", "report", "--database-url", sqlite_url).returncode == 0
    assert run_scheduler_for(config, sqlite_url, "1.5s", "--poll-interval", "100ms") == 0
    runs = json.loads(
        schedctl("runs", "--task", "report", "--json", "--database-url", sqlite_url).stdout
    )
    assert [(r["trigger"], r["status"]) for r in runs] == [("manual", "success")]
    missing = schedctl("pause", "nope", "--reason", "x", "--database-url", sqlite_url)
    assert missing.returncode == 2 and "no task named 'nope'" in missing.stderr
    missing_run = schedctl("cancel", "99999", "--database-url", sqlite_url)
    assert missing_run.returncode == 2 and "99999" in missing_run.stderr


ALL_COMMANDS = [
    "scheduler", "demo", "validate", "runs", "pause", "resume", "run-now", "cancel", "tasks list",
    "db upgrade", "db current", "emergency-stop", "cleanup", "stats", "audit", "exporter",
]  # fmt: skip


@pytest.mark.parametrize("command", ALL_COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    """Each command's --help shows an example invocation."""
    result = schedctl(*command.split(), "--help")
    assert result.returncode == 0 and "Example:" in result.stdout and "schedctl " in result.stdout


def test_look_ahead_must_be_shorter_than_the_lease(sqlite_url: str, tmp_path: Path) -> None:
    """A look-ahead as long as the lease is refused before anything starts, naming both."""
    result = run_scheduler_once(tmp_path, sqlite_url, "--lease", "10s", "--look-ahead", "10s")
    assert result.returncode == 2, result.stderr
    assert "--look-ahead (10s) must be shorter than --lease (10s)" in result.stderr
