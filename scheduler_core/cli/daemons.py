"""The long-running commands: ``schedctl scheduler``, ``schedctl demo`` (scheduler and
exporter in one process) and ``schedctl exporter`` (the sidecar, started here and only here
from ``scheduler_core``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from scheduler_core.cli.common import UsageError, database_url, open_engine
from scheduler_core.clock import DatabaseClock
from scheduler_core.config import parse_task_mapping
from scheduler_core.db import redact_url, upgrade_schema
from scheduler_core.decorator import module_source, tasks_of_module
from scheduler_core.gc_pause import freeze_long_lived, gc_paused
from scheduler_core.retention import RetentionPolicy, register_cleanup_task
from scheduler_core.store import Store
from scheduler_core.store.sync import FILE_SOURCE
from scheduler_core.task_files import load_task_file
from scheduler_core.tasks import TaskDefinition

__all__ = ["cmd_demo", "cmd_exporter", "cmd_scheduler"]

log = logging.getLogger("schedctl")
DEMO_CONFIG = Path(__file__).parent.parent / "demo" / "tasks.yaml"


def _settings_from_args(args: argparse.Namespace) -> Any:
    from scheduler_core.runtime import EngineSettings, default_instance_id

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
    #: The options named as the settings they set.
    same = ("poll_interval", "max_running", "heartbeat_interval", "drain_grace", "look_ahead")
    return EngineSettings(
        instance_id=args.instance_id or default_instance_id(),
        instance_lease=args.lease,
        claim_lease=args.lease,
        failure_alarm_threshold=args.failure_threshold,
        health_listen=None if args.health_listen in ("", "off") else args.health_listen,
        **{name: getattr(args, name) for name in same},
    )


def _add_cleanup_task(
    args: argparse.Namespace, engine: sa.Engine, definitions: list[TaskDefinition]
) -> None:
    """Schedule the built-in ``schedctl.cleanup`` task, unless the task file has its own."""
    policy = RetentionPolicy(days=args.retention_days, max_runs_per_task=args.retention_max_runs)
    builtin = register_cleanup_task(engine, policy)
    if not any(d.name == builtin["name"] for d in definitions):
        definitions.append(parse_task_mapping(builtin, defaults={}, source="<built-in>"))


def _sync_sources(
    store: Store, sources: dict[str, tuple[str, list[TaskDefinition]]], now: datetime
) -> list[TaskDefinition]:
    """Sync each source's tasks (a sync touches only its own source's tasks); returns the
    tasks whose expected intervals are left for :func:`_store_intervals_soon`."""
    later: list[TaskDefinition] = []
    for source, (where, definitions) in sources.items():
        result = store.sync_tasks(definitions, now=now, source=source, intervals_later=later)
        log.info(
            "tasks from %s: %d created, %d updated, %d unchanged, %d disabled (no longer there)",
            where,
            len(result.created),
            len(result.updated),
            len(result.unchanged),
            len(result.disabled),
        )
    return later


def _store_intervals_soon(store: Store, definitions: list[TaskDefinition]) -> None:
    """Store the expected intervals a first start with many new cron tasks left NULL, in a
    thread once the scheduler runs: the first claims need none of them (a task's interval
    is for the exporter, and the engine computes its own). A failure leaves them NULL; the
    next start's sync finds them and tries again."""

    def store_them() -> None:
        try:
            sent = store.store_expected_intervals(definitions)
        except Exception as exc:  # a database error: the next start stores them
            log.warning("expected intervals not stored (%s); the next start will", exc)
            return
        log.info("expected intervals of %d task(s) stored", sent)

    threading.Thread(target=store_them, name="schedctl-intervals", daemon=True).start()


# long: start-up order matters (validate, migrate, sync, then run) and reads top to bottom
def _run_scheduler(
    args: argparse.Namespace,
    *,
    config: Path | None,
    migrate: bool,
    extra: Callable[[sa.Engine], Callable[[], None]] | None = None,
) -> int:
    from scheduler_core.runtime import Scheduler, install_signal_handlers
    from scheduler_core.telemetry.otel import configure_otel_from_env, shutdown_otel

    modules = list(getattr(args, "module", []) or [])
    if config is None and not modules:
        raise UsageError("give --config FILE, --module MODULE, or both")
    # Bad tasks are rejected before anything runs. The definitions live as long as the
    # process: frozen (gc_pause) before collections resume, none walks them again.
    with gc_paused():
        sources = {module_source(m): (f"module {m}", tasks_of_module(m)) for m in modules}
        if config is not None:
            definitions = load_task_file(config)
            sources[FILE_SOURCE] = (str(config), definitions)
        freeze_long_lived()
    engine = open_engine(args, check=not migrate, pre_ping=False)
    if migrate:
        upgrade_schema(engine)
    if config is not None and not args.no_cleanup:
        _add_cleanup_task(args, engine, sources[FILE_SOURCE][1])
    configure_otel_from_env()
    settings = _settings_from_args(args)
    scheduler = Scheduler(engine=engine, settings=settings)
    # The engine's own store syncs, so the definitions parsed here are reused at dispatch;
    # what the sync keeps (schedule state, cached definitions) is frozen as it ends.
    with gc_paused():
        intervals_later = _sync_sources(scheduler.store, sources, DatabaseClock(engine).now())
        freeze_long_lived()
    install_signal_handlers(scheduler)
    stop_extra = extra(engine) if extra is not None else None
    if args.duration:
        timer = threading.Timer(args.duration, scheduler.request_stop)
        timer.daemon = True
        timer.start()
    try:
        scheduler.start()
        # What start-up built lives as long as the process: out of every full collection, so
        # that full collections (which pause every run thread) stay short.
        freeze_long_lived()
        if intervals_later:
            _store_intervals_soon(scheduler.store, intervals_later)
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
    busy = scheduler.busy_callable_threads()
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
    config = Path(args.config) if args.config else None
    return _run_scheduler(args, config=config, migrate=args.migrate)


def cmd_demo(args: argparse.Namespace) -> int:
    config = Path(args.config) if args.config else DEMO_CONFIG

    def start_exporter(engine: sa.Engine) -> Callable[[], None]:
        try:
            from exporter.server import ExporterServer
        except ImportError:
            log.info("exporter not available in this build; running the scheduler alone")
            return lambda: None
        server = ExporterServer(database_url=database_url(args), listen=args.exporter_listen)
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
                f"""\
                status page: {base}/
                schedctl demo is running (database: {redact_url(database_url(args))}).
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


def cmd_exporter(args: argparse.Namespace, rest: list[str]) -> int:
    try:
        from exporter.cli import main as exporter_main
    except ImportError:
        raise UsageError("the exporter is not part of this build") from None
    return int(exporter_main(rest))
