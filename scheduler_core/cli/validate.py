"""``schedctl validate FILE``: check a task file without a database.

It imports the task file reader and what that needs (YAML, the schedules), nothing of the
database or the exporter; ``tests/core/test_cli_imports.py`` holds it to that.
"""

from __future__ import annotations

import argparse

from scheduler_core.task_files import load_task_file

__all__ = ["cmd_validate"]


def cmd_validate(args: argparse.Namespace) -> int:
    definitions = load_task_file(args.config)
    lines = [f"{args.config}: {len(definitions)} task(s) OK"]
    lines.extend(f"  {d.name}: {d.action.kind}, {d.schedule.describe()}" for d in definitions)
    print("\n".join(lines))
    return 0
