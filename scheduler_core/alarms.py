"""Alarm events in SQL: opening an alarm of a kind for some tasks, at most one open per
(task, kind). The rules that decide when (failures, stuck runs, missed ticks) live with
their writers; the statement that records them is this one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite

from scheduler_core.models import alarm_events

__all__ = ["open_alarms"]


def open_alarms(
    conn: sa.Connection,
    kind: str,
    details: Mapping[str, Mapping[str, Any] | None],
    *,
    now: datetime,
) -> None:
    """Open a ``kind`` alarm for each task of ``details`` (with its details, JSON), unless
    one is open already. Tasks go in name order, so two writers opening the same alarms
    take the open-alarm unique index in one order."""
    if not details:
        return
    insert = (pg.insert if conn.dialect.name == "postgresql" else sqlite.insert)(alarm_events)
    conn.execute(
        insert.on_conflict_do_nothing(
            index_elements=["task_name", "kind"],
            index_where=alarm_events.c.closed_at.is_(None),
        ),
        [
            {
                "task_name": task,
                "kind": kind,
                "opened_at": now,
                "closed_at": None,
                "details": json.dumps(details[task], default=str) if details[task] else None,
            }
            for task in sorted(details)
        ],
    )
