"""What `schedctl validate` imports: the task file reader, not the database or the exporter.

Issue 18 wants `schedctl validate` on a 10,000-task file within 2 s, and importing SQLAlchemy,
the store, the client and OpenTelemetry alone took ~0.5 s of that. These tests check the
imports themselves (in a fresh interpreter), not a time: the lazy command modules, the lazy
``scheduler_core`` API, and that the rest of the CLI still finds its functions and maps
SQLAlchemy's errors as before.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler_core.cli import build_parser, main
from scheduler_core.cli.parser import LazyCommand

#: Top-level packages the validate path must not import.
HEAVY = ("sqlalchemy", "alembic", "aiohttp", "prometheus_client", "opentelemetry", "psycopg")
#: schedctl modules it must not import either (each brings some of the above).
DATABASE_MODULES = (
    "scheduler_core.client",
    "scheduler_core.db",
    "scheduler_core.models",
    "scheduler_core.store",
    "scheduler_core.runtime",
    "scheduler_core.cli.admin",
    "scheduler_core.cli.daemons",
    "scheduler_core.cli.tasks_cmds",
    "exporter",
)

TASKS = """\
defaults:
  timezone: UTC
tasks:
  - name: nightly
    cron: "30 2 * * *"
    command: ["true"]
  - name: hourly
    every: 1h
    callable: json:dumps
"""


def imported_after(script: str, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run ``script`` in a fresh interpreter; it prints ``sys.modules``' names as its last line."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDCTL_")}
    code = f"{script}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads(proc.stdout.splitlines()[-1])


def heavy(modules: list[str]) -> list[str]:
    return [
        m
        for m in modules
        if m.split(".")[0] in HEAVY
        or any(m == d or m.startswith(d + ".") for d in DATABASE_MODULES)
    ]


def test_validate_imports_no_database_module(tmp_path: Path) -> None:
    config = tmp_path / "tasks.yaml"
    config.write_text(TASKS)
    script = "import sys\nfrom scheduler_core.cli import main\nassert main(['validate', sys.argv[1]]) == 0"
    proc, modules = imported_after(script, str(config))
    assert f"{config}: 2 task(s) OK" in proc.stdout
    assert "  nightly: command, " in proc.stdout
    assert "scheduler_core.task_files" in modules  # it did validate
    assert "scheduler_core.cli.validate" in modules
    assert heavy(modules) == []


def test_validate_help_and_usage_errors_import_no_database_module() -> None:
    script = (
        "from scheduler_core.cli import main\n"
        "for argv in (['validate', '--help'], ['validate']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass"
    )
    proc, modules = imported_after(script)
    assert "usage: schedctl validate [-h] [--log-level LOG_LEVEL] config" in proc.stdout
    assert "the following arguments are required: config" in proc.stderr
    assert heavy(modules) == []


def test_importing_the_package_imports_no_database_module() -> None:
    _, modules = imported_after("import scheduler_core, scheduler_core.cli")
    assert heavy(modules) == []


def test_package_api_is_imported_on_first_use() -> None:
    script = (
        "import scheduler_core\n"
        "from scheduler_core import Client, RunContext, Scheduler, current_run, task, __version__\n"
        "from scheduler_core.client import Client as C\n"
        "assert Client is C and scheduler_core.Client is C\n"
        "assert set(scheduler_core.__all__) <= set(dir(scheduler_core))\n"
        "assert isinstance(__version__, str) and callable(task) and callable(current_run)"
    )
    _, modules = imported_after(script)
    assert "scheduler_core.client" in modules
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        import scheduler_core

        _ = scheduler_core.nope


#: One valid command line per command (``exporter`` aside: main() hands it to exporter.cli).
COMMAND_LINES = [
    "scheduler", "demo", "validate f.yaml", "tasks list", "tasks add f.yaml", "tasks remove t",
    "tasks show t", "runs", "db upgrade", "db current", "stats", "audit", "pause t --reason r",
    "resume t", "run-now t", "cancel 1", "emergency-stop --reason r", "cleanup",
]  # fmt: skip


@pytest.mark.parametrize("line", COMMAND_LINES)
def test_every_command_names_a_function_that_exists(line: str) -> None:
    """The functions are named by strings now: each must import and exist."""
    func = build_parser().parse_args(line.split()).func
    assert isinstance(func, LazyCommand)
    assert callable(func.resolve())


@pytest.mark.parametrize("argv", [["validate", "--help"], ["validate"], ["validate", "a", "b"]])
def test_validate_alone_parses_and_prints_as_the_full_parser(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """`schedctl validate ...` is parsed by a parser of that command alone: same output."""
    printed = []
    for parser in (build_parser(), build_parser(validate_only=True)):
        with pytest.raises(SystemExit) as exited:
            parser.parse_args(argv)
        out, err = capsys.readouterr()
        printed.append((exited.value.code, out, err))
    assert printed[0] == printed[1]
    full = build_parser().parse_args(["validate", "f.yaml"])
    alone = build_parser(validate_only=True).parse_args(["validate", "f.yaml"])
    assert vars(full).keys() == vars(alone).keys()
    assert repr(full.func) == repr(alone.func)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (sa.exc.IntegrityError("INSERT", {}, Exception("UNIQUE failed")), "refused the change"),
        (sa.exc.OperationalError("SELECT", {}, Exception("disk I/O error")), "cannot use database"),
    ],
)
def test_sqlalchemy_errors_still_exit_1(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    error: sa.exc.DBAPIError,
    message: str,
) -> None:
    import scheduler_core.cli.admin as admin

    def fail(args: argparse.Namespace) -> int:
        raise error

    monkeypatch.setattr(admin, "cmd_stats", fail)
    assert main(["stats", "--database-url", "sqlite:///nowhere.db"]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert str(error.orig) in err
