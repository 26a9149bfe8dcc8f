"""``schedctl runs show RUN_ID`` (and ``runs --output``): one run whole, with what it said."""

from __future__ import annotations

import argparse
import json
from typing import Any

from scheduler_core.cli.common import read_store
from scheduler_core.cli.output import fmt_time, print_json
from scheduler_core.durations import format_duration

__all__ = ["show_run"]

_FIELDS = (
    ("task", "task_name"), ("status", "status"), ("trigger", "trigger"), ("attempt", "attempt"),
    ("scheduled for", "scheduled_for"), ("started", "started_at"), ("finished", "finished_at"),
    ("instance", "instance_id"), ("exit code", "exit_code"), ("trace id", "trace_id"),
    ("arguments", "arguments"),
)  # fmt: skip


def show_run(args: argparse.Namespace, run_id: int) -> int:
    """Print run ``run_id``: its fields, error, traceback, result and output (or JSON)."""
    run = read_store(args, lambda store: store.get_run(run_id))
    if args.json:
        print_json(run)
        return 0
    print(f"run {run['id']}")
    for label, key in _FIELDS:
        value = run.get(key)
        if value is not None:
            print(f"  {label + ':':15}{_shown(value)}")
    print(f"  {'duration:':15}{format_duration(run['duration_seconds'])}")
    if run["error_message"]:
        print(f"\nerror: {run['error_message']}")
    if run["error_traceback"]:
        print(f"\n{run['error_traceback'].rstrip()}")
    if run["result"] is not None:
        note = f" ({run['result_note']})" if run["result_note"] else ""
        print(f"\nresult{note}:\n{json.dumps(run['result'], indent=2, sort_keys=True)}")
    if run["output"] is None:
        print("\noutput: none kept")
    else:
        dropped = run["output_dropped_bytes"]
        extent = f"{run['output_bytes']} bytes" + (f", {dropped} dropped" if dropped else "")
        print(f"\noutput ({extent}):\n{run['output'].rstrip()}")
    return 0


def _shown(value: Any) -> str:
    return fmt_time(value) if hasattr(value, "astimezone") else str(value)
