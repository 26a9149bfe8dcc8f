"""The ``schedctl`` argument parser: every command, its flags and an example each.

Each command's function is named, ``module:function`` under ``scheduler_core.cli``, and
imported when the command runs (:class:`LazyCommand`), and the parser of ``schedctl
validate`` can be built alone: checking a task file imports no database module.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from scheduler_core.cli.common import (
    duration_seconds,
    env_default,
    json_arg,
    listen_address,
    positive_int,
    since_arg,
)

__all__ = ["EXAMPLES", "LazyCommand", "VersionAction", "build_parser"]


EXAMPLES = {
    "scheduler": "schedctl scheduler --config tasks.yaml --database-url postgresql://sched@db/sched",
    "demo": "schedctl demo    # SQLite file ./schedctl.db, example tasks, exporter on :9464",
    "validate": "schedctl validate examples/tasks.yaml",
    "tasks": "schedctl tasks list --json",
    "runs": "schedctl runs --task nightly-backup --status failure --since 2d\n"
    "  schedctl runs --task nightly-backup --last --output\n  schedctl runs show 4711",
    "db": "schedctl db upgrade --database-url postgresql://sched@db/sched",
    "pause": 'schedctl pause nightly-backup --reason "storage migration, see OPS-123"',
    "resume": "schedctl resume nightly-backup",
    "run-now": "schedctl run-now nightly-backup",
    "cancel": "schedctl cancel 4711 --reason 'wrong input file'",
    "emergency-stop": 'schedctl emergency-stop --reason "payments provider incident"',
    "cleanup": "schedctl cleanup --days 14",
    "stats": "schedctl stats nightly-backup",
    "audit": "schedctl audit --task nightly-backup",
    "exporter": "schedctl exporter --database-url sqlite:///schedctl.db --listen 127.0.0.1:9464",
}


class LazyCommand:
    """A command's function, ``"admin:cmd_pause"`` for ``scheduler_core.cli.admin.cmd_pause``,
    imported on the first call: a command imports only its own module's dependencies."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        module, _, function = ref.partition(":")
        self.module = f"scheduler_core.cli.{module}"
        self.function = function

    def resolve(self) -> Callable[[argparse.Namespace], int]:
        """The function itself (imports its module)."""
        func: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(self.module), self.function
        )
        return func

    def __call__(self, args: argparse.Namespace) -> int:
        return int(self.resolve()(args))

    def __repr__(self) -> str:
        return f"LazyCommand({self.ref!r})"


class VersionAction(argparse.Action):
    """``--version``, as argparse's own, with the version read only when asked: reading it
    imports ``importlib.metadata`` (~40 ms), which ``validate`` does not need."""

    def __init__(
        self,
        option_strings: Sequence[str],
        dest: str = argparse.SUPPRESS,
        default: str = argparse.SUPPRESS,
        help: str = "show program's version number and exit",  # argparse's words
    ) -> None:
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        from scheduler_core.version import __version__

        print(f"schedctl {__version__}")
        parser.exit()


def _add_db(parser: argparse.ArgumentParser) -> None:
    from scheduler_core.db import DEFAULT_DATABASE_URL  # SQLAlchemy: not for validate alone

    parser.add_argument(
        "--database-url",
        help=f"SQLAlchemy URL (env SCHEDCTL_DATABASE_URL; default {DEFAULT_DATABASE_URL})",
    )


def _add_admin_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every admin command shares: the database, and quiet logging by default."""
    parser.add_argument("--log-level", default="WARNING")
    _add_db(parser)


Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def _add_engine_flags(parser: argparse.ArgumentParser, *, health_default: str) -> None:
    """How a scheduler instance runs: identity, liveness, pacing, leases, capacity."""
    parser.add_argument(
        "--instance-id",
        default=env_default("SCHEDCTL_INSTANCE_ID"),
        help="default: hostname:pid (env SCHEDCTL_INSTANCE_ID)",
    )
    parser.add_argument(
        "--health-listen",
        default=env_default("SCHEDCTL_HEALTH_LISTEN", health_default),
        type=lambda v: v if v in ("", "off") else listen_address(v),
        help="liveness endpoint host:port, or 'off' (default %(default)s)",
    )
    for flag, default, text in (
        ("--poll-interval", 1.0, "longest sleep between polls (default 1s)"),
        ("--heartbeat-interval", 5.0, "default 5s"),
        (
            "--lease",
            30.0,
            "lease: runs of an instance silent this long are abandoned (default 30s)",
        ),
        ("--drain-grace", 30.0, "on SIGTERM, wait this long for running tasks (default 30s)"),
        (
            "--look-ahead",
            0.5,
            "claim ticks this long before they are due and start each at its time, so the "
            "claim's database work is not part of the start delay; 0 turns it off (default 500ms)",
        ),
    ):
        parser.add_argument(flag, type=duration_seconds, default=default, help=text)
    parser.add_argument(
        "--max-running",
        type=positive_int,
        default=64,
        help="runs in flight per instance (default 64)",
    )
    parser.add_argument(
        "--failure-threshold",
        type=positive_int,
        default=3,
        help="consecutive failures that open an alarm (default 3)",
    )
    _add_upkeep_flags(parser)


def _add_upkeep_flags(parser: argparse.ArgumentParser) -> None:
    """The built-in cleanup task, a trial duration and the log level of a daemon."""
    parser.add_argument(
        "--retention-days",
        type=float,
        default=30.0,
        help="built-in cleanup keeps this many days of run history (default 30)",
    )
    parser.add_argument(
        "--retention-max-runs",
        type=positive_int,
        default=500,
        help="built-in cleanup keeps at most this many runs per task (default 500)",
    )
    parser.add_argument(
        "--no-cleanup",
        action="store_true",
        help="do not schedule the built-in schedctl.cleanup task",
    )
    parser.add_argument(
        "--duration",
        type=duration_seconds,
        default=None,
        help="stop by itself after this long (for trials)",
    )
    parser.add_argument(
        "--log-level",
        default=env_default("SCHEDCTL_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )


def _group(sub: Subparsers, name: str, text: str, dest: str) -> Subparsers:
    """A command with subcommands (``tasks list``, ``db upgrade``)."""
    parser = sub.add_parser(
        name,
        help=text,
        description=text,
        epilog=f"Example:\n  {EXAMPLES[name]}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser.add_subparsers(dest=dest, metavar="SUBCOMMAND", required=True)


def _command(
    sub: Subparsers,
    name: str,
    text: str,
    func: str | Callable[[argparse.Namespace], int],
    *,
    example: str | None = None,
) -> argparse.ArgumentParser:
    """One command (or subcommand) with its help, its example and the function it runs
    (``module:function``, see :class:`LazyCommand`)."""
    example = example or EXAMPLES.get(name)
    parser = sub.add_parser(
        name,
        help=text,
        description=text,
        epilog=f"Example:\n  {example}" if example else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=LazyCommand(func) if isinstance(func, str) else func)
    return parser


def _add_daemons(sub: Subparsers) -> None:
    p = _command(sub, "scheduler", "run one scheduler instance", "daemons:cmd_scheduler")
    p.add_argument("--config", help="YAML task file (source: file)")
    p.add_argument(
        "--module",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE and sync its @task functions (source module:MODULE); repeatable",
    )
    p.add_argument("--migrate", action="store_true", help="run `db upgrade` first")
    _add_db(p)
    _add_engine_flags(p, health_default="127.0.0.1:8090")

    text = "scheduler + exporter in one process on SQLite, with example tasks"
    p = _command(sub, "demo", text, "daemons:cmd_demo")
    p.add_argument("--config", help="task file (default: the built-in demo tasks)")
    p.add_argument("--exporter-listen", default="127.0.0.1:9464", type=listen_address)
    _add_db(p)
    _add_engine_flags(p, health_default="127.0.0.1:8090")

    text = "the sidecar: /metrics, /health, /ready and the JSON API"
    p = _command(sub, "exporter", text, lambda a: 0)
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, help="exporter options (see schedctl exporter --help)"
    )


def _add_task_changes(tasks: Subparsers) -> None:
    """``tasks add / remove / show``: runtime tasks (scheduler_core.cli.tasks_cmds)."""
    text = "create the tasks of a task file at runtime (source api); all or none"
    p = _command(
        tasks, "add", text, "tasks_cmds:cmd_tasks_add", example="schedctl tasks add extra.yaml"
    )
    p.add_argument("file", help="YAML task file")
    _add_admin_flags(p)
    text = "remove a task created at runtime; its run history stays"
    p = _command(
        tasks,
        "remove",
        text,
        "tasks_cmds:cmd_tasks_remove",
        example="schedctl tasks remove once-3f2a",
    )
    p.add_argument("name")
    _add_admin_flags(p)
    text = "one task: definition, source, state and recent runs"
    p = _command(
        tasks,
        "show",
        text,
        "tasks_cmds:cmd_tasks_show",
        example="schedctl tasks show nightly-report",
    )
    p.add_argument("name")
    p.add_argument("--runs", type=positive_int, default=10, help="recent runs to show")
    p.add_argument("--json", action="store_true")
    _add_admin_flags(p)


def _add_validate(sub: Subparsers) -> None:
    text = "check a task file; report every error with file, task and field"
    p = _command(sub, "validate", text, "validate:cmd_validate")
    p.add_argument("config", help="YAML task file")
    p.add_argument("--log-level", default="WARNING")


def _add_readers(sub: Subparsers) -> None:
    from scheduler_core.models import RUN_STATUSES  # SQLAlchemy: not for validate alone

    _add_validate(sub)
    tasks = _group(sub, "tasks", "task commands", "tasks_command")
    text = "every task: schedule, next run, last run, status, failures"
    p = _command(tasks, "list", text, "admin:cmd_tasks_list", example=EXAMPLES["tasks"])
    p.add_argument("--json", action="store_true")
    _add_admin_flags(p)
    _add_task_changes(tasks)

    text = "run history, newest first; runs show RUN_ID: one run"
    p = _command(sub, "runs", text, "admin:cmd_runs")
    p.add_argument("action", nargs="?", choices=["show"], help="show: one run, whole")
    p.add_argument("run_id", nargs="?", type=positive_int, help="the run to show")
    p.add_argument("--task")
    p.add_argument("--status", choices=RUN_STATUSES)
    p.add_argument("--since", type=since_arg, help="ISO time, or a duration back from now (1h, 2d)")
    p.add_argument("--instance", help="instance id")
    p.add_argument("--limit", type=positive_int, default=50)
    p.add_argument("--before-id", type=positive_int, help="page: runs older than this id")
    p.add_argument("--last", action="store_true", help="only the newest run matching")
    p.add_argument("--output", action="store_true", help="each run whole, with its output")
    p.add_argument("--json", action="store_true")
    _add_admin_flags(p)

    db = _group(sub, "db", "database schema", "db_command")
    for name, func, text in (
        ("upgrade", "admin:cmd_db_upgrade", "migrate the schema to this version's revision"),
        ("current", "admin:cmd_db_current", "show the schema revision"),
    ):
        _add_admin_flags(_command(db, name, text, func, example=EXAMPLES["db"]))

    text = "totals, success rate, average and p95 duration, last success/failure"
    p = _command(sub, "stats", text, "admin:cmd_stats")
    p.add_argument("task", nargs="?")
    p.add_argument("--json", action="store_true")
    _add_admin_flags(p)
    text = "who paused, resumed, ran, cancelled or stopped what, and why"
    p = _command(sub, "audit", text, "admin:cmd_audit")
    p.add_argument("--task")
    p.add_argument("--limit", type=positive_int, default=50)
    p.add_argument("--json", action="store_true")
    _add_admin_flags(p)


def _add_controls(sub: Subparsers) -> None:
    p = _command(sub, "pause", "pause a task (it stops running until resumed)", "admin:cmd_pause")
    p.add_argument("task")
    p.add_argument("--reason", required=True, help="why: shown in `tasks list` and stored")
    _add_admin_flags(p)
    text = "resume a paused task (ticks during the pause are not run)"
    p = _command(sub, "resume", text, "admin:cmd_resume")
    p.add_argument("task", nargs="?")
    p.add_argument("--all", action="store_true", help="resume every task an emergency-stop paused")
    _add_admin_flags(p)
    text = "run a task once at the next poll; its schedule is unchanged"
    p = _command(sub, "run-now", text, "tasks_cmds:cmd_run_now")
    p.add_argument("task")
    p.add_argument(
        "--args", type=json_arg, help="JSON list: the callable's arguments, this run only"
    )
    p.add_argument(
        "--kwargs", type=json_arg, help="JSON object: its keyword arguments, this run only"
    )
    _add_admin_flags(p)
    p = _command(sub, "cancel", "cancel a running run (on any instance)", "admin:cmd_cancel")
    p.add_argument("run_id", type=positive_int)
    p.add_argument("--reason", help="stored with the run and in the audit log")
    _add_admin_flags(p)
    text = "pause every task and cancel every running run"
    p = _command(sub, "emergency-stop", text, "admin:cmd_emergency_stop")
    p.add_argument("--reason", required=True)
    _add_admin_flags(p)
    text = "delete old run history now, in batches (counters are kept)"
    p = _command(sub, "cleanup", text, "admin:cmd_cleanup")
    p.add_argument("--days", type=float, default=30.0, help="keep this many days (default 30)")
    p.add_argument(
        "--max-runs", type=positive_int, default=500, help="keep at most this many per task"
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        help="rows per transaction (default: 300 SQLite, 5000 PostgreSQL)",
    )
    _add_admin_flags(p)


def build_parser(*, validate_only: bool = False) -> argparse.ArgumentParser:
    """The ``schedctl`` parser; each command sets ``func``, the function that runs it.

    ``validate_only``: the ``validate`` command and no other, for ``schedctl validate ...``
    (the same usage, help and errors: none of them lists the other commands), built without
    importing SQLAlchemy, which the other commands' flags need (default URL, run statuses).
    """
    parser = argparse.ArgumentParser(
        prog="schedctl",
        description="A job scheduler whose every run is observable.",
        epilog="Examples:\n  "
        + "\n  ".join(EXAMPLES[k] for k in ("demo", "scheduler", "tasks", "runs")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    if validate_only:
        _add_validate(sub)
        return parser
    _add_daemons(sub)
    _add_readers(sub)
    _add_controls(sub)
    return parser
