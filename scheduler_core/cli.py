"""The ``schedctl`` command line: the scheduler daemon, the demo and the admin commands.

Why over 900 lines: parser, daemons and admin commands are still one module; splitting them
into a package is the restructure issue's (#17) work.

Configuration is read here and only here (flags, then ``SCHEDCTL_*`` variables, then
defaults); everything below takes keyword arguments. Exit codes: 0 ok, 1 runtime or
database error, 2 bad input (usage, config, unknown task or run), 3 the scheduler lost its
lease and stopped itself (a supervisor should restart it).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from scheduler_core import __version__
from scheduler_core.clock import DatabaseClock
from scheduler_core.config import load_task_file
from scheduler_core.db import (
    DEFAULT_DATABASE_URL,
    check_schema,
    create_db_engine,
    redact_url,
    upgrade_schema,
)
from scheduler_core.durations import SINCE_FORMS, format_duration, parse_duration, parse_since
from scheduler_core.errors import (
    ConfigError,
    DatabaseUnavailableError,
    RunLookupError,
    SchemaVersionError,
    TaskLookupError,
    error_reason,
)
from scheduler_core.health import parse_listen
from scheduler_core.logs import configure_logging
from scheduler_core.models import RUN_STATUSES
from scheduler_core.store import Store

__all__ = ["main"]

log = logging.getLogger("schedctl")
DEMO_CONFIG = Path(__file__).parent / "demo" / "tasks.yaml"


class UsageError(Exception):
    """Bad command-line input (exit 2)."""


# ---------------------------------------------------------------------------- helpers
def _env_default(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def _database_url(args: argparse.Namespace) -> str:
    return str(args.database_url or _env_default("SCHEDCTL_DATABASE_URL") or DEFAULT_DATABASE_URL)


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except Exception:
        return None


def _engine(
    args: argparse.Namespace, *, check: bool = True, read_only: bool = False, pre_ping: bool = True
) -> sa.Engine:
    url = _database_url(args)
    try:
        engine = create_db_engine(url, read_only=read_only, pre_ping=pre_ping)
    except ValueError as exc:
        raise UsageError(f"--database-url: {exc}") from None
    if check:
        check_schema(engine)
    return engine


def _fmt_time(value: datetime | None, *, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    text = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
    if now is not None:
        delta = (value - now).total_seconds()
        rel = format_duration(abs(delta))
        text += f" ({'in ' + rel if delta >= 0 else rel + ' ago'})"
    return text


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [len(h) for h in headers]
    clean = [[str(c).replace("\n", " ") for c in row] for row in rows]
    for row in clean:
        for i, cell in enumerate(row):
            widths[i] = min(max(widths[i], len(cell)), 60)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c[:60].ljust(widths[i]) for i, c in enumerate(cells)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in clean)
    return "\n".join(out)


def _json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


def _print_json(data: object) -> None:
    print(json.dumps(data, default=_json_default, indent=2, ensure_ascii=False))


def _parse_since(value: str) -> datetime:
    """``--since``: :func:`parse_since` as of the wall clock."""
    try:
        return parse_since(value, now=datetime.now(UTC))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid --since {value!r}: use {SINCE_FORMS}") from None


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return number


def _duration_seconds(value: str) -> float:
    try:
        return parse_duration(value, allow_zero=True).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _listen(value: str) -> str:
    try:
        parse_listen(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


# ---------------------------------------------------------------------------- commands
def cmd_validate(args: argparse.Namespace) -> int:
    definitions = load_task_file(args.config)
    print(f"{args.config}: {len(definitions)} task(s) OK")
    for d in definitions:
        print(f"  {d.name}: {d.action.kind}, {d.schedule.describe()}")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    engine = _engine(args, check=False)
    try:
        before, after = upgrade_schema(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"database {redact_url(engine.url)} already at revision {after}")
    else:
        print(f"database {redact_url(engine.url)} upgraded: {before or 'empty'} -> {after}")
    return 0


def cmd_db_current(args: argparse.Namespace) -> int:
    from scheduler_core.db import current_revision, head_revision

    engine = _engine(args, check=False)
    try:
        print(f"current: {current_revision(engine) or 'none'}  needed: {head_revision()}")
    finally:
        engine.dispose()
    return 0


def _settings_from_args(args: argparse.Namespace) -> Any:
    from scheduler_core.engine import EngineSettings, default_instance_id

    if args.heartbeat_interval >= args.lease:
        raise UsageError(
            f"--heartbeat-interval ({args.heartbeat_interval:g}s) must be shorter than --lease "
            f"({args.lease:g}s), or the instance would lose its lease between heartbeats"
        )
    if args.heartbeat_interval <= 0:
        raise UsageError(f"--heartbeat-interval must be positive, got {args.heartbeat_interval:g}s")
    if args.look_ahead >= args.lease:
        raise UsageError(
            f"--look-ahead ({args.look_ahead:g}s) must be shorter than --lease ({args.lease:g}s)"
        )
    return EngineSettings(
        instance_id=args.instance_id or default_instance_id(),
        poll_interval=args.poll_interval,
        max_running=args.max_running,
        heartbeat_interval=args.heartbeat_interval,
        instance_lease=args.lease,
        claim_lease=args.lease,
        drain_grace=args.drain_grace,
        look_ahead=args.look_ahead,
        failure_alarm_threshold=args.failure_threshold,
        health_listen=None if args.health_listen in ("", "off") else args.health_listen,
    )


def _run_scheduler(
    args: argparse.Namespace,
    *,
    config: Path,
    migrate: bool,
    extra: Callable[[sa.Engine], Callable[[], None]] | None = None,
) -> int:
    from scheduler_core.engine import Scheduler, install_signal_handlers
    from scheduler_core.otel import configure_otel_from_env, shutdown_otel

    definitions = load_task_file(config)  # a bad config is rejected before anything runs
    engine = _engine(args, check=not migrate, pre_ping=False)
    if migrate:
        upgrade_schema(engine)
    if not args.no_cleanup:
        from scheduler_core.config import parse_task_mapping
        from scheduler_core.retention import RetentionPolicy, register_cleanup_task

        policy = RetentionPolicy(
            days=args.retention_days, max_runs_per_task=args.retention_max_runs
        )
        builtin = register_cleanup_task(engine, policy)
        if not any(d.name == builtin["name"] for d in definitions):
            definitions.append(parse_task_mapping(builtin, defaults={}, source="<built-in>"))
    configure_otel_from_env()
    settings = _settings_from_args(args)
    scheduler = Scheduler(engine=engine, settings=settings)
    # The engine's own store syncs, so the definitions parsed here are reused at dispatch.
    result = scheduler.store.sync_tasks(definitions, now=DatabaseClock(engine).now())
    log.info(
        "tasks from %s: %d created, %d updated, %d unchanged, %d disabled (no longer in the file)",
        config,
        len(result.created),
        len(result.updated),
        len(result.unchanged),
        len(result.disabled),
    )
    install_signal_handlers(scheduler)
    stop_extra = extra(engine) if extra is not None else None
    if args.duration:
        timer = threading.Timer(args.duration, scheduler.request_stop)
        timer.daemon = True
        timer.start()
    try:
        scheduler.start()
        if scheduler.health is not None and scheduler.health.url:
            log.info("liveness endpoint: %s", scheduler.health.url)
        scheduler.run()
    finally:
        if stop_extra is not None:
            stop_extra()
        shutdown_otel()
        engine.dispose()
    if scheduler.lease_lost:
        log.error("scheduler stopped itself: %s", scheduler.stop_reason)
    busy = scheduler.busy_worker_threads()
    if busy:
        # Their runs are already recorded `cancelled`; threads cannot be killed, and the
        # interpreter would wait for them at exit, so leave now.
        log.warning("exiting with %d callable thread(s) still running (recorded cancelled)", busy)
        logging.shutdown()
        sys.stdout.flush()
        os._exit(3 if scheduler.lease_lost else 0)
    # Exit 3: the instance lost its lease and fenced itself off (let the supervisor restart it).
    return 3 if scheduler.lease_lost else 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    return _run_scheduler(args, config=Path(args.config), migrate=args.migrate)


def cmd_demo(args: argparse.Namespace) -> int:
    config = Path(args.config) if args.config else DEMO_CONFIG

    def start_exporter(engine: sa.Engine) -> Callable[[], None]:
        try:
            from exporter.server import ExporterServer
        except ImportError:
            log.info("exporter not available in this build; running the scheduler alone")
            return lambda: None
        server = ExporterServer(database_url=_database_url(args), listen=args.exporter_listen)
        try:
            server.start()
        except OSError as exc:
            log.error(
                "exporter not started: cannot listen on %s (%s); the scheduler runs without it",
                args.exporter_listen,
                exc.strerror or exc,
            )
            return lambda: None
        base = server.url.rstrip("/")
        print(
            textwrap.dedent(
                f"""
                schedctl demo is running (database: {redact_url(_database_url(args))}).
                  metrics:      {base}/metrics
                  status (JSON): {base}/api/v1/status
                  exporter ready: {base}/ready
                  scheduler health: http://{args.health_listen}/health
                Try in another shell:  schedctl tasks list   |   schedctl runs --limit 20
                Stop with Ctrl-C.
                """
            ),
            flush=True,
        )
        return server.stop

    return _run_scheduler(args, config=config, migrate=True, extra=start_exporter)


def cmd_tasks_list(args: argparse.Namespace) -> int:
    engine = _engine(args, read_only=True)
    now = datetime.now(UTC)
    try:
        tasks = Store(engine).list_tasks(now=now)
    finally:
        engine.dispose()
    if args.json:
        _print_json(tasks)
        return 0
    rows = []
    for t in tasks:
        # The badge of /api/v1/status (scheduler_core.states), with the reason of a pause.
        reason = t["pause_reason"] if t["badge"] == "paused" else None
        rows.append(
            [
                t["name"],
                t["schedule"],
                t["badge"] + (f" ({reason})" if reason else ""),
                _fmt_time(t["next_run_at"], now=now),
                _fmt_time(t["last_started_at"], now=now),
                format_duration(t["last_duration_seconds"]),
                str(t["consecutive_failures"]),
            ]
        )
    print(
        _table(
            rows,
            ["TASK", "SCHEDULE", "STATUS", "NEXT RUN", "LAST RUN", "LAST DURATION", "FAILURES"],
        )
    )
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    engine = _engine(args, read_only=True)
    try:
        runs = Store(engine).list_runs(
            task=args.task,
            status=args.status,
            since=args.since,
            instance_id=args.instance,
            limit=args.limit,
            before_id=args.before_id,
        )
    finally:
        engine.dispose()
    if args.json:
        _print_json(runs)
        return 0
    rows = []
    for r in runs:
        detail = r["error_message"] or ""
        if r["status"] == "missed" and r["missed_count"]:
            first, last = _fmt_time(r["missed_first_at"]), _fmt_time(r["missed_last_at"])
            detail = f"{r['missed_count']} tick(s) {first} .. {last}"
        rows.append(
            [
                str(r["id"]),
                r["task_name"],
                r["status"],
                _fmt_time(r["scheduled_for"]),
                _fmt_time(r["started_at"]),
                format_duration(r["duration_seconds"]),
                str(r["attempt"]),
                r["instance_id"] or "-",
                detail,
            ]
        )
    print(
        _table(
            rows,
            [
                "ID",
                "TASK",
                "STATUS",
                "SCHEDULED",
                "STARTED",
                "DURATION",
                "TRY",
                "INSTANCE",
                "DETAIL",
            ],
        )
    )
    if len(runs) == args.limit:
        print(f"\nmore: schedctl runs --before-id {runs[-1]['id']} (plus the same filters)")
    return 0


def _control(args: argparse.Namespace, action: Callable[[Store, datetime], str]) -> int:
    engine = _engine(args)
    try:
        store = Store(engine, instance_id=_actor())
        print(action(store, DatabaseClock(engine).now()))
    finally:
        engine.dispose()
    return 0


def _actor() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except Exception:
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def cmd_pause(args: argparse.Namespace) -> int:
    def act(store: Store, now: datetime) -> str:
        store.pause(args.task, reason=args.reason, by=_actor(), now=now)
        return f"paused {args.task}: {args.reason}"

    return _control(args, act)


def cmd_resume(args: argparse.Namespace) -> int:
    def act(store: Store, now: datetime) -> str:
        if args.all:
            resumed, still = store.resume_all(by=_actor(), now=now)
            tail = f"; {still} task(s) paused for other reasons stay paused" if still else ""
            return f"resumed {resumed} task(s) paused by emergency-stop{tail}"
        if not args.task:
            raise UsageError("name a TASK to resume, or use --all after an emergency stop")
        store.resume(args.task, now=now, by=_actor())
        return f"resumed {args.task}"

    return _control(args, act)


def cmd_run_now(args: argparse.Namespace) -> int:
    def act(store: Store, now: datetime) -> str:
        store.run_now(args.task, now=now, by=_actor())
        return f"{args.task} will run once at the next poll of any scheduler instance"

    return _control(args, act)


def cmd_cancel(args: argparse.Namespace) -> int:
    def act(store: Store, now: datetime) -> str:
        reason = f"cancelled by {_actor()}" + (f": {args.reason}" if args.reason else "")
        status = store.request_cancel(args.run_id, reason=reason, by=_actor(), now=now)
        if status != "running":
            return f"run {args.run_id} is not running (status {status}); nothing to cancel"
        return f"cancel requested for run {args.run_id}; its instance stops it within one heartbeat"

    return _control(args, act)


def cmd_emergency_stop(args: argparse.Namespace) -> int:
    def act(store: Store, now: datetime) -> str:
        paused, cancelled = store.emergency_stop(reason=args.reason, by=_actor(), now=now)
        return (
            f"EMERGENCY STOP: {paused} task(s) paused, {cancelled} running run(s) flagged for "
            "cancellation (owners act within one heartbeat). Undo with: schedctl resume --all"
        )

    return _control(args, act)


def cmd_stats(args: argparse.Namespace) -> int:
    engine = _engine(args, read_only=True)
    try:
        stats = Store(engine).stats(args.task)
    finally:
        engine.dispose()
    if args.json:
        _print_json(stats)
        return 0
    rows = [
        [
            s["task"],
            str(s["total"]),
            str(s["succeeded"]),
            str(s["failed"]),
            str(s["cancelled"]),
            str(s["missed"]),
            "-" if s["success_rate"] is None else f"{s['success_rate']:.1%}",
            format_duration(s["avg_duration_seconds"]),
            format_duration(s["p95_duration_seconds"]),
            _fmt_time(s["last_success_at"]),
            _fmt_time(s["last_failure_at"]),
        ]
        for s in stats
    ]
    headers = ["TASK", "TOTAL", "OK", "FAILED", "CANCELLED", "MISSED", "SUCCESS", "AVG", "P95"]
    print(_table(rows, [*headers, "LAST SUCCESS", "LAST FAILURE"]))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    engine = _engine(args, read_only=True)
    try:
        events = Store(engine).audit_log(task=args.task, limit=args.limit)
    finally:
        engine.dispose()
    if args.json:
        _print_json(events)
        return 0
    rows = [
        [
            _fmt_time(e["at"]),
            e["actor"],
            e["action"],
            e["task_name"] or "-",
            str(e["run_id"] or "-"),
            e["reason"] or "",
        ]
        for e in events
    ]
    print(_table(rows, ["WHEN", "WHO", "ACTION", "TASK", "RUN", "WHY"]))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    from scheduler_core.retention import RetentionPolicy, run_cleanup

    try:
        policy = RetentionPolicy(
            days=args.days, max_runs_per_task=args.max_runs, batch_size=args.batch_size
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    engine = _engine(args)
    interactive = sys.stderr.isatty()
    last_print = 0.0

    def progress(done: int, total: int) -> None:
        nonlocal last_print
        now = time.monotonic()
        if now - last_print < (0.2 if interactive else 2.0) and done < total:
            return
        last_print = now
        pct = f" ({done / total:.0%})" if total else ""
        end = "\r" if interactive else "\n"
        print(
            f"cleanup: deleted {done} of ~{total} run row(s){pct}",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    try:
        clock = DatabaseClock(engine)
        result = run_cleanup(engine, policy=policy, now=clock.now(), progress=progress)
        with engine.begin() as conn:
            Store(engine)._audit(
                conn,
                now=clock.now(),
                actor=_actor(),
                action="cleanup",
                details={
                    "runs_deleted": result.runs_deleted,
                    "days": args.days,
                    "max_runs": args.max_runs,
                },
            )
    finally:
        engine.dispose()
    if interactive:
        print(file=sys.stderr)
    print(
        f"cleanup done: {result.runs_deleted} run row(s), {result.alarms_deleted} closed alarm(s), "
        f"{result.audit_deleted} audit row(s) deleted in {result.batches} batch(es); "
        "counters unchanged"
    )
    return 0


def cmd_exporter(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        from exporter.cli import main as exporter_main
    except ImportError:
        raise UsageError("the exporter is not part of this build") from None
    return int(exporter_main(rest))


# ---------------------------------------------------------------------------- parser
EXAMPLES = {
    "scheduler": "schedctl scheduler --config tasks.yaml --database-url postgresql://sched@db/sched",
    "demo": "schedctl demo    # SQLite file ./schedctl.db, example tasks, exporter on :9464",
    "validate": "schedctl validate examples/tasks.yaml",
    "tasks": "schedctl tasks list --json",
    "runs": "schedctl runs --task nightly-backup --status failure --since 2d",
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


def _add_db(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        help=f"SQLAlchemy URL (env SCHEDCTL_DATABASE_URL; default {DEFAULT_DATABASE_URL})",
    )


def _add_admin_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every admin command shares: the database, and quiet logging by default."""
    parser.add_argument("--log-level", default="WARNING")
    _add_db(parser)


def _add_engine_flags(parser: argparse.ArgumentParser, *, health_default: str) -> None:
    parser.add_argument(
        "--instance-id",
        default=_env_default("SCHEDCTL_INSTANCE_ID"),
        help="default: hostname:pid (env SCHEDCTL_INSTANCE_ID)",
    )
    parser.add_argument(
        "--health-listen",
        default=_env_default("SCHEDCTL_HEALTH_LISTEN", health_default),
        type=lambda v: v if v in ("", "off") else _listen(v),
        help="liveness endpoint host:port, or 'off' (default %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=_duration_seconds,
        default=1.0,
        help="longest sleep between polls (default 1s)",
    )
    parser.add_argument(
        "--heartbeat-interval", type=_duration_seconds, default=5.0, help="default 5s"
    )
    parser.add_argument(
        "--lease",
        type=_duration_seconds,
        default=30.0,
        help="lease: runs of an instance silent this long are abandoned (default 30s)",
    )
    parser.add_argument(
        "--drain-grace",
        type=_duration_seconds,
        default=30.0,
        help="on SIGTERM, wait this long for running tasks (default 30s)",
    )
    parser.add_argument(
        "--max-running",
        type=_positive_int,
        default=64,
        help="runs in flight per instance (default 64)",
    )
    parser.add_argument(
        "--look-ahead",
        type=_duration_seconds,
        default=0.5,
        help="claim ticks this long before they are due and start each at its time, so the "
        "claim's database work is not part of the start delay; 0 turns it off (default 500ms)",
    )
    parser.add_argument(
        "--failure-threshold",
        type=_positive_int,
        default=3,
        help="consecutive failures that open an alarm (default 3)",
    )
    parser.add_argument(
        "--retention-days",
        type=float,
        default=30.0,
        help="built-in cleanup keeps this many days of run history (default 30)",
    )
    parser.add_argument(
        "--retention-max-runs",
        type=_positive_int,
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
        type=_duration_seconds,
        default=None,
        help="stop by itself after this long (for trials)",
    )
    parser.add_argument(
        "--log-level",
        default=_env_default("SCHEDCTL_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schedctl",
        description="A job scheduler whose every run is observable.",
        epilog="Examples:\n  "
        + "\n  ".join(EXAMPLES[k] for k in ("demo", "scheduler", "tasks", "runs")),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"schedctl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, help_text: str, func: Callable[..., int]) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"Example:\n  {EXAMPLES[name.split()[0]]}"
            if name.split()[0] in EXAMPLES
            else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    p = add("scheduler", "run one scheduler instance", cmd_scheduler)
    p.add_argument("--config", required=True, help="YAML task file")
    p.add_argument("--migrate", action="store_true", help="run `db upgrade` first")
    _add_db(p)
    _add_engine_flags(p, health_default="127.0.0.1:8090")

    p = add("demo", "scheduler + exporter in one process on SQLite, with example tasks", cmd_demo)
    p.add_argument("--config", help="task file (default: the built-in demo tasks)")
    p.add_argument("--exporter-listen", default="127.0.0.1:9464", type=_listen)
    _add_db(p)
    _add_engine_flags(p, health_default="127.0.0.1:8090")

    p = add(
        "validate", "check a task file; report every error with file, task and field", cmd_validate
    )
    p.add_argument("config", help="YAML task file")
    p.add_argument("--log-level", default="WARNING")

    tasks = sub.add_parser(
        "tasks",
        help="task commands",
        description="task commands",
        epilog=f"Example:\n  {EXAMPLES['tasks']}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tsub = tasks.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND", required=True)
    p = tsub.add_parser(
        "list",
        help="every task: schedule, next run, last run, status, failures",
        description="every task: schedule, next run, last run, status, failures",
        epilog=f"Example:\n  {EXAMPLES['tasks']}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_tasks_list)
    p.add_argument("--json", action="store_true")
    _add_admin_flags(p)

    p = add("runs", "run history, newest first", cmd_runs)
    p.add_argument("--task")
    p.add_argument("--status", choices=RUN_STATUSES)
    p.add_argument(
        "--since", type=_parse_since, help="ISO time, or a duration back from now (1h, 2d)"
    )
    p.add_argument("--instance", help="instance id")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--before-id", type=_positive_int, help="page: runs older than this id")
    p.add_argument("--json", action="store_true")
    _add_admin_flags(p)

    db = sub.add_parser(
        "db",
        help="database schema",
        description="database schema",
        epilog=f"Example:\n  {EXAMPLES['db']}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dsub = db.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    for name, func, text in (
        ("upgrade", cmd_db_upgrade, "migrate the schema to this version's revision"),
        ("current", cmd_db_current, "show the schema revision"),
    ):
        p = dsub.add_parser(
            name,
            help=text,
            description=text,
            epilog=f"Example:\n  {EXAMPLES['db']}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        _add_admin_flags(p)

    p = add("pause", "pause a task (it stops running until resumed)", cmd_pause)
    p.add_argument("task")
    p.add_argument("--reason", required=True, help="why: shown in `tasks list` and stored")
    _add_admin_flags(p)
    p = add("resume", "resume a paused task (ticks during the pause are not run)", cmd_resume)
    p.add_argument("task", nargs="?")
    p.add_argument("--all", action="store_true", help="resume every task an emergency-stop paused")
    _add_admin_flags(p)
    p = add("run-now", "run a task once at the next poll; its schedule is unchanged", cmd_run_now)
    p.add_argument("task")
    _add_admin_flags(p)
    p = add("cancel", "cancel a running run (on any instance)", cmd_cancel)
    p.add_argument("run_id", type=_positive_int)
    p.add_argument("--reason", help="stored with the run and in the audit log")
    _add_admin_flags(p)
    p = add("emergency-stop", "pause every task and cancel every running run", cmd_emergency_stop)
    p.add_argument("--reason", required=True)
    _add_admin_flags(p)
    p = add("cleanup", "delete old run history now, in batches (counters are kept)", cmd_cleanup)
    p.add_argument("--days", type=float, default=30.0, help="keep this many days (default 30)")
    p.add_argument(
        "--max-runs", type=_positive_int, default=500, help="keep at most this many per task"
    )
    p.add_argument(
        "--batch-size",
        type=_positive_int,
        help="rows per transaction (default: 300 SQLite, 5000 PostgreSQL)",
    )
    _add_admin_flags(p)
    p = add(
        "stats", "totals, success rate, average and p95 duration, last success/failure", cmd_stats
    )
    p.add_argument("task", nargs="?")
    p.add_argument("--json", action="store_true")
    _add_admin_flags(p)
    p = add("audit", "who paused, resumed, ran, cancelled or stopped what, and why", cmd_audit)
    p.add_argument("--task")
    p.add_argument("--limit", type=_positive_int, default=50)
    p.add_argument("--json", action="store_true")
    _add_admin_flags(p)

    p = add("exporter", "the sidecar: /metrics, /health, /ready and the JSON API", lambda a: 0)
    p.add_argument(
        "rest", nargs=argparse.REMAINDER, help="exporter options (see schedctl exporter --help)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["exporter"]:
        try:
            return cmd_exporter(argparse.Namespace(), argv[1:])
        except UsageError as exc:
            print(f"schedctl: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    url = getattr(args, "database_url", None) or _env_default("SCHEDCTL_DATABASE_URL") or ""
    configure_logging(
        getattr(args, "log_level", "INFO"), secrets=[p for p in [_password(url)] if p]
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"schedctl: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"schedctl: error: {exc}", file=sys.stderr)
        return 2
    except (TaskLookupError, RunLookupError) as exc:
        print(f"schedctl: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"schedctl: error: {exc}", file=sys.stderr)
        return 2
    except (SchemaVersionError, DatabaseUnavailableError) as exc:
        print(f"schedctl: error: {exc}", file=sys.stderr)
        return 1
    except sa.exc.IntegrityError as exc:
        print(
            "schedctl: error: the database refused the change (another instance may have made "
            f"it at the same moment; retry): {error_reason(exc)}",
            file=sys.stderr,
        )
        return 1
    except sa.exc.OperationalError as exc:
        print(
            f"schedctl: error: cannot use database {redact_url(_database_url(args))}: "
            f"{error_reason(exc)}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    time.tzset() if hasattr(time, "tzset") else None
    sys.exit(main())
