"""``schedctl tasks add / remove / show`` and ``run-now`` with arguments: the runtime task
commands, over :class:`scheduler_core.Client` (the same code as the Python client)."""

from __future__ import annotations

import argparse
import json

from scheduler_core.cli.common import UsageError, actor, database_url
from scheduler_core.cli.output import fmt_time, print_json, table
from scheduler_core.client import Client
from scheduler_core.durations import format_duration
from scheduler_core.task_files import load_task_file

__all__ = ["cmd_run_now", "cmd_tasks_add", "cmd_tasks_remove", "cmd_tasks_show"]


def _client(args: argparse.Namespace) -> Client:
    try:
        return Client(database_url(args), actor=actor())
    except ValueError as exc:
        raise UsageError(f"--database-url: {exc}") from None


def cmd_tasks_add(args: argparse.Namespace) -> int:
    definitions = load_task_file(args.file, check_callables=False)
    with _client(args) as client:
        names = client.add_tasks(definitions)
    print(f"added {len(names)} task(s) from {args.file} (source api): {', '.join(names[:20])}")
    return 0


def cmd_tasks_remove(args: argparse.Namespace) -> int:
    with _client(args) as client:
        client.remove_task(args.name)
    print(f"removed {args.name}; its run history stays")
    return 0


def cmd_tasks_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        task = client.get_task(args.name)
        runs = client.list_runs(task=args.name, limit=args.runs)
    if args.json:
        print_json({**task, "recent_runs": runs})
        return 0
    print(f"{task['name']}  [{task['badge']}]  source {task['source']}")
    print(f"  schedule: {task['schedule']}   next run: {fmt_time(task['next_run_at'])}")
    if task["paused"]:
        print(f"  paused by {task['paused_by']}: {task['pause_reason']}")
    print("  definition: " + json.dumps(task["definition"], sort_keys=True, default=str))
    rows = [
        [str(r["id"]), r["status"], fmt_time(r["started_at"]),
         format_duration(r["duration_seconds"]), str(r["attempt"]), (r["error_message"] or "")[:80]]
        for r in runs
    ]  # fmt: skip
    headers = ["ID", "STATUS", "STARTED", "DURATION", "TRY", "ERROR"]
    print(table(rows, headers) if rows else "  no runs yet")
    return 0


def cmd_run_now(args: argparse.Namespace) -> int:
    if args.args is not None and not isinstance(args.args, list):
        raise UsageError(f"--args must be a JSON list, got {json.dumps(args.args)}")
    if args.kwargs is not None and not isinstance(args.kwargs, dict):
        raise UsageError(f"--kwargs must be a JSON object, got {json.dumps(args.kwargs)}")
    with _client(args) as client:
        client.run_now(args.task, args=args.args, kwargs=args.kwargs)
    given = " with the given arguments" if args.args is not None or args.kwargs is not None else ""
    print(f"{args.task} will run once{given} at the next poll of any scheduler instance")
    return 0
