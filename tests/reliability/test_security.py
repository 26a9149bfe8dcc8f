"""Security: the database password never leaks, error texts are bounded, labels are bounded,
command tasks see only their configured environment, the exporter refuses open listening."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from scheduler_core.config import parse_task_document
from scheduler_core.store import Store
from scheduler_core.testing import FakeClock, run_cycle, running_scheduler
from tests.reliability.conftest import ODD_NAMES, SCHEDCTL, write_config
from tests.support.pgserver import PostgresServer

pytestmark = [pytest.mark.reliability]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PASSWORD = PostgresServer.password


def schedctl(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> str:
    import os

    result = subprocess.run(
        [*SCHEDCTL, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


@pytest.mark.postgres
def test_database_password_never_printed_by_cli_or_scheduler(pg_url: str, tmp_path: Path) -> None:
    """Admin commands (success and failure) and a scheduler at DEBUG level never print the
    database password, whether it comes from --database-url or SCHEDCTL_DATABASE_URL."""
    assert PASSWORD in pg_url
    wrong_db = pg_url.rsplit("/", 1)[0] + "/no_such_database"
    config = write_config(
        tmp_path / "tasks.yaml",
        [
            "{name: ok, callable: 'os:getpid', every: 1s}",
            "{name: bad, command: ['false'], every: 1s}",
        ],
    )
    run_scheduler = [
        "scheduler", "--config", str(config), "--database-url", pg_url,
        "--health-listen", "off", "--duration", "3s", "--log-level", "DEBUG",
    ]  # fmt: skip
    outputs = [
        schedctl("tasks", "list", "--database-url", pg_url),
        schedctl("runs", "--task", "nope", "--database-url", pg_url),
        schedctl("db", "current", "--database-url", pg_url),
        schedctl("tasks", "list", "--database-url", wrong_db),
        schedctl("tasks", "list", env={"SCHEDCTL_DATABASE_URL": wrong_db}),
        schedctl(*run_scheduler),
        schedctl("runs", "--status", "failure", "--json", "--database-url", pg_url),
    ]
    text = "\n".join(outputs)
    assert "no_such_database" in outputs[3]  # the failure is named...
    assert "exit 0" in outputs[5] and "bad" in outputs[6]
    assert PASSWORD not in text  # ...without the password


def test_error_texts_are_truncated(db_engine: sa.Engine) -> None:
    """A 100 kB exception message and a 1 MB command output are stored cut to a bound, with
    the cut marked."""
    clock = FakeClock(T0)
    huge = "x" * 100_000
    definitions = parse_task_document(
        {
            "tasks": [
                {
                    "name": "loud-callable",
                    "callable": "tests.reliability.jobs:fail_with",
                    "args": [huge],
                    "every": "1h",
                },
                {
                    "name": "loud-command",
                    "command": [
                        sys.executable,
                        "-c",
                        "print('y' * 1_000_000); raise SystemExit(3)",
                    ],
                    "every": "1h",
                },
            ]
        },
        source="test",
    )
    Store(db_engine).sync_tasks(definitions, now=clock.now())
    clock.advance(3600)
    with running_scheduler(db_engine, clock, instance_id="loud", drain_grace=5) as scheduler:
        assert run_cycle(scheduler, timeout=30) == 2
    runs = {r["task_name"]: r for r in Store(db_engine).list_runs()}
    callable_run, command_run = runs["loud-callable"], runs["loud-command"]
    assert callable_run["status"] == command_run["status"] == "failure"
    assert len(callable_run["error_message"]) <= 2000 and "more]" in callable_run["error_message"]
    assert len(callable_run["error_traceback"] or "") <= 8000
    assert len(command_run["error_message"]) <= 2000 and command_run["exit_code"] == 3


def test_command_tasks_get_only_the_configured_environment(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A command task sees its configured variables and PATH, never the scheduler's own
    environment (database URL, cloud credentials)."""
    from scheduler_core.db import create_db_engine

    monkeypatch.setenv("SCHEDCTL_DATABASE_URL", f"postgresql://u:{PASSWORD}@db/x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-never-inherited")
    engine = create_db_engine(sqlite_url)
    clock = FakeClock(T0)
    definitions = parse_task_document(
        {
            "tasks": [
                {
                    "name": "print-env",
                    "command": ["sh", "-c", "env; exit 1"],
                    "env": {"CONFIGURED": "yes"},
                    "every": "1h",
                }
            ]
        },
        source="test",
    )
    Store(engine).sync_tasks(definitions, now=clock.now())
    clock.advance(3600)
    with running_scheduler(engine, clock, instance_id="env", drain_grace=5) as scheduler:
        assert run_cycle(scheduler, timeout=30) == 1
    [run] = Store(engine).list_runs(task="print-env")
    engine.dispose()
    seen = run["error_message"]
    assert "CONFIGURED=yes" in seen and "PATH=" in seen
    assert "SCHEDCTL_DATABASE_URL" not in seen and "aws-secret" not in seen
    assert PASSWORD not in seen


def test_exporter_refuses_non_loopback_listen_without_a_token(sqlite_url: str) -> None:
    """`schedctl exporter --listen 0.0.0.0:PORT` without a token exits 2 and says how to fix it,
    before it serves anything."""
    out = schedctl("exporter", "--listen", "0.0.0.0:0", "--database-url", sqlite_url, timeout=30)
    assert out.startswith("exit 2"), out
    assert "--token" in out and "--allow-unauthenticated" in out, out


ALLOWED_LABELS = {
    "task", "schedule", "action_kind", "timezone", "status", "outcome", "kind",
    "instance_id", "version", "state", "le", "badge",
}  # fmt: skip


def test_metric_labels_are_bounded(exporter_with_odd_tasks: str) -> None:
    """Every label of /metrics is one of the bounded names of the design; task labels only
    carry task names, never run ids or error text."""
    import urllib.request

    with urllib.request.urlopen(f"{exporter_with_odd_tasks}/metrics", timeout=10) as response:
        text = response.read().decode()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names |= set(sample.labels)
            if "task" in sample.labels:
                assert sample.labels["task"] in ODD_NAMES, sample
            for value in sample.labels.values():
                assert "RuntimeError" not in value and len(value) <= 300, sample
    assert names <= ALLOWED_LABELS, names - ALLOWED_LABELS
