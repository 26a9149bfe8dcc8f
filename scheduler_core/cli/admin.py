"""The admin commands: db, tasks list, runs, stats, audit, and the controls (pause, resume,
run-now, cancel, emergency-stop, cleanup), each recorded with its actor. (``validate``, which
needs no database, is in ``scheduler_core.cli.validate``.)"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from scheduler_core.cli.common import UsageError, actor, open_engine, read_store
from scheduler_core.cli.output import fmt_time, print_json, table
from scheduler_core.cli.run_show import show_run
from scheduler_core.clock import DatabaseClock
from scheduler_core.db import current_revision, head_revision, redact_url, upgrade_schema
from scheduler_core.durations import format_duration
from scheduler_core.retention import RetentionPolicy, run_cleanup
from scheduler_core.store import Store

__all__ = [
    "cmd_audit",
    "cmd_cancel",
    "cmd_cleanup",
    "cmd_db_current",
    "cmd_db_upgrade",
    "cmd_emergency_stop",
    "cmd_pause",
    "cmd_resume",
    "cmd_runs",
    "cmd_stats",
    "cmd_tasks_list",
]


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    engine = open_engine(args, check=False)
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
    engine = open_engine(args, check=False)
    try:
        print(f"current: {current_revision(engine) or 'none'}  needed: {head_revision()}")
    finally:
        engine.dispose()
    return 0


T = TypeVar("T")

_TASKS_HEADERS = ["TASK", "SCHEDULE", "STATUS", "NEXT RUN", "LAST RUN", "LAST DURATION", "FAILURES"]
_RUNS_HEADERS = [
    "ID", "TASK", "STATUS", "SCHEDULED", "STARTED", "DURATION", "TRY", "INSTANCE", "DETAIL",
]  # fmt: skip


def cmd_tasks_list(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)
    tasks = read_store(args, lambda store: store.list_tasks(now=now))
    if args.json:
        print_json(tasks)
        return 0
    rows = []
    for t in tasks:
        # The badge of /api/v1/status (scheduler_core.states), with the reason of a pause.
        reason = t["pause_reason"] if t["badge"] == "paused" else None
        rows.append([
            t["name"], t["schedule"], t["badge"] + (f" ({reason})" if reason else ""),
            fmt_time(t["next_run_at"], now=now), fmt_time(t["last_started_at"], now=now),
            format_duration(t["last_duration_seconds"]), str(t["consecutive_failures"]),
        ])  # fmt: skip
    print(table(rows, _TASKS_HEADERS))
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    if args.action == "show":
        if args.run_id is None:
            raise UsageError("name the run: schedctl runs show RUN_ID")
        return show_run(args, args.run_id)
    if args.action is not None or args.run_id is not None:
        raise UsageError(f"unknown runs action {args.action!r}: use 'schedctl runs show RUN_ID'")
    filters = {"task": args.task, "status": args.status, "since": args.since}
    limit = 1 if args.last else args.limit
    runs = read_store(
        args,
        lambda store: store.list_runs(
            **filters, instance_id=args.instance, limit=limit, before_id=args.before_id
        ),
    )
    if args.output:
        for run in runs:
            show_run(args, run["id"])
        return 0
    if args.json:
        print_json(runs)
        return 0
    rows = []
    for r in runs:
        detail = r["error_message"] or ""
        if r["status"] == "missed" and r["missed_count"]:
            first, last = fmt_time(r["missed_first_at"]), fmt_time(r["missed_last_at"])
            detail = f"{r['missed_count']} tick(s) {first} .. {last}"
        rows.append([
            str(r["id"]), r["task_name"], r["status"], fmt_time(r["scheduled_for"]),
            fmt_time(r["started_at"]), format_duration(r["duration_seconds"]), str(r["attempt"]),
            r["instance_id"] or "-", detail,
        ])  # fmt: skip
    print(table(rows, _RUNS_HEADERS))
    if len(runs) == limit and not args.last:
        print(f"\nmore: schedctl runs --before-id {runs[-1]['id']} (plus the same filters)")
    return 0


def _control(args: argparse.Namespace, action: Callable[[Store, datetime], str]) -> int:
    engine = open_engine(args)
    try:
        store = Store(engine, instance_id=actor())
        print(action(store, DatabaseClock(engine).now()))
    finally:
        engine.dispose()
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    def act(store: Store, now: datetime) -> str:
        store.pause(args.task, reason=args.reason, by=actor(), now=now)
        return f"paused {args.task}: {args.reason}"

    return _control(args, act)


def cmd_resume(args: argparse.Namespace) -> int:
    def act(store: Store, now: datetime) -> str:
        if args.all:
            resumed, still = store.resume_all(by=actor(), now=now)
            tail = f"; {still} task(s) paused for other reasons stay paused" if still else ""
            return f"resumed {resumed} task(s) paused by emergency-stop{tail}"
        if not args.task:
            raise UsageError("name a TASK to resume, or use --all after an emergency stop")
        store.resume(args.task, now=now, by=actor())
        return f"resumed {args.task}"

    return _control(args, act)


def cmd_cancel(args: argparse.Namespace) -> int:
    def act(store: Store, now: datetime) -> str:
        reason = f"cancelled by {actor()}" + (f": {args.reason}" if args.reason else "")
        status = store.request_cancel(args.run_id, reason=reason, by=actor(), now=now)
        if status != "running":
            return f"run {args.run_id} is not running (status {status}); nothing to cancel"
        return f"cancel requested for run {args.run_id}; its instance stops it within one heartbeat"

    return _control(args, act)


def cmd_emergency_stop(args: argparse.Namespace) -> int:
    def act(store: Store, now: datetime) -> str:
        paused, cancelled = store.emergency_stop(reason=args.reason, by=actor(), now=now)
        return (
            f"EMERGENCY STOP: {paused} task(s) paused, {cancelled} running run(s) flagged for "
            "cancellation (owners act within one heartbeat). Undo with: schedctl resume --all"
        )

    return _control(args, act)


def cmd_stats(args: argparse.Namespace) -> int:
    stats = read_store(args, lambda store: store.stats(args.task))
    if args.json:
        print_json(stats)
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
            fmt_time(s["last_success_at"]),
            fmt_time(s["last_failure_at"]),
        ]
        for s in stats
    ]
    headers = ["TASK", "TOTAL", "OK", "FAILED", "CANCELLED", "MISSED", "SUCCESS", "AVG", "P95"]
    print(table(rows, [*headers, "LAST SUCCESS", "LAST FAILURE"]))
    totals = [
        [s["task"], key, f"{value:g}"] for s in stats for key, value in s["result_totals"].items()
    ]
    if totals:
        print("\nresult totals (result_metrics, summed over every run):")
        print(table(totals, ["TASK", "KEY", "TOTAL"]))
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    events = read_store(args, lambda store: store.audit_log(task=args.task, limit=args.limit))
    if args.json:
        print_json(events)
        return 0
    rows = [
        [
            fmt_time(e["at"]),
            e["actor"],
            e["action"],
            e["task_name"] or "-",
            str(e["run_id"] or "-"),
            e["reason"] or "",
        ]
        for e in events
    ]
    print(table(rows, ["WHEN", "WHO", "ACTION", "TASK", "RUN", "WHY"]))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    try:
        policy = RetentionPolicy(
            days=args.days, max_runs_per_task=args.max_runs, batch_size=args.batch_size
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    engine = open_engine(args)
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
        Store(engine).audit(
            now=clock.now(),
            actor=actor(),
            action="cleanup",
            details={
                "runs_deleted": result.runs_deleted,
                "tasks_retired": result.tasks_retired,
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
        f"{result.audit_deleted} audit row(s) deleted, {result.tasks_retired} finished one-time "
        f"api task(s) removed in {result.batches} batch(es); counters unchanged"
    )
    return 0
