"""``schedctl tasks list`` shows the badge of ``/api/v1/status`` (both from scheduler_core.states
over the same inputs), and its last status is the most recently finished run across instances."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from scheduler_core import models
from scheduler_core.cli import build_parser
from scheduler_core.db import create_db_engine
from scheduler_core.store import Store
from scheduler_core.store.snapshot import read_snapshot
from tests.exporter.factories import NOW, health_row, insert, schedule_row, seed_every_state


def test_last_status_is_the_most_recently_finished_row_across_instances(
    db_engine: sa.Engine,
) -> None:
    """Two instances' health rows for one task: the newer finish wins whichever row is read
    first (rows come back in insertion order here, so each order is tried)."""
    insert(
        db_engine,
        models.schedules,
        [
            schedule_row("newer-read-first", consecutive_failures=0),
            schedule_row("newer-read-last", consecutive_failures=2),
        ],
    )
    newer = {"last_finished_at": NOW - timedelta(minutes=1), "last_duration_seconds": 1.0}
    older = {"last_finished_at": NOW - timedelta(hours=1), "last_duration_seconds": 9.0}
    insert(
        db_engine,
        models.task_health,
        [
            health_row("newer-read-first", "inst-b", last_status="success", **newer),
            health_row(
                "newer-read-first",
                "inst-a",
                last_status="failure",
                last_error_message="old",
                **older,
            ),
            health_row("newer-read-last", "inst-a", last_status="success", **older),
            health_row(
                "newer-read-last",
                "inst-b",
                last_status="timeout",
                last_error_message="new",
                **newer,
            ),
        ],
    )
    tasks = {t["name"]: t for t in Store(db_engine).list_tasks(now=NOW)}
    first, last = tasks["newer-read-first"], tasks["newer-read-last"]
    assert (first["last_status"], first["last_duration_seconds"], first["last_error_message"]) == (
        "success",
        1.0,
        None,
    )
    assert (last["last_status"], last["last_duration_seconds"], last["last_error_message"]) == (
        "timeout",
        1.0,
        "new",
    )
    assert (first["badge"], last["badge"]) == ("ok", "failing")
    snapshot = read_snapshot(db_engine, NOW).tasks_by_name
    assert snapshot["newer-read-first"].last_status == "success"
    assert snapshot["newer-read-last"].last_status == "timeout"


def test_list_tasks_badge_is_the_status_api_badge(db_engine: sa.Engine) -> None:
    """Every task of the every-state fixture, plus a paused task with a stuck run and a
    disabled paused one: list_tasks and the exporter snapshot give the same badge."""
    expected = seed_every_state(db_engine)
    insert(
        db_engine,
        models.schedules,
        [
            schedule_row("paused-stuck", paused=True, max_runtime_seconds=60.0),
            schedule_row("disabled-paused", enabled=False, paused=True),
        ],
    )
    insert(
        db_engine,
        models.task_runs,
        [
            {
                "task_name": "paused-stuck",
                "scheduled_for": NOW - timedelta(hours=1),
                "attempt": 1,
                "trigger": "schedule",
                "status": "running",
                "started_at": NOW - timedelta(hours=1),
                "instance_id": "node-a:1",
                "cancel_requested": False,
            }
        ],
    )
    listed = {t["name"]: t["badge"] for t in Store(db_engine).list_tasks(now=NOW)}
    served = {t.name: t.badge for t in read_snapshot(db_engine, NOW).tasks}
    assert listed == served
    assert {name: listed[name] for name in expected} == {
        name: e.badge for name, e in expected.items()
    }
    assert (listed["paused-stuck"], listed["disabled-paused"]) == ("paused", "disabled")


@pytest.mark.parametrize("late_grace", [60.0, 900.0])
def test_list_tasks_late_grace_is_the_exporters(db_engine: sa.Engine, late_grace: float) -> None:
    """A task 10 minutes overdue is late with a 60 s grace, not with 900 s, in both readers;
    without a grace both use states.LATE_GRACE_SECONDS (300 s): late."""
    insert(
        db_engine, models.schedules, [schedule_row("due", next_run_at=NOW - timedelta(minutes=10))]
    )
    [listed] = Store(db_engine).list_tasks(now=NOW, late_grace=late_grace)
    [served] = read_snapshot(db_engine, NOW, late_grace=late_grace).tasks
    assert listed["badge"] == served.badge == ("late" if late_grace < 600 else "ok")
    [default] = Store(db_engine).list_tasks(now=NOW)
    assert default["badge"] == read_snapshot(db_engine, NOW).tasks[0].badge == "late"


def test_tasks_list_status_column_is_the_badge(
    sqlite_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The STATUS column of ``schedctl tasks list`` is the snapshot's badge for every task
    (stuck-task used to show ``running``, late-task its last status)."""
    engine = create_db_engine(sqlite_url)
    now = datetime.now(UTC)
    try:
        seed_every_state(engine, now=now)
        served = {t.name: t.badge for t in read_snapshot(engine, now).tasks}
    finally:
        engine.dispose()
    args = build_parser().parse_args(["tasks", "list", "--database-url", sqlite_url])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    status_at = header.index("STATUS")
    shown = {}
    for line in lines[2:]:
        name = line.split()[0]
        shown[name] = line[status_at:].split()[0]
    assert shown == served
    assert "paused (maintenance)" in "\n".join(lines)
