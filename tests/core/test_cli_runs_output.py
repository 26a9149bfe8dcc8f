"""``schedctl runs show RUN_ID``, ``runs --task T --last --output`` and the result totals of
``schedctl stats``: what runs said, as a user reads it from any host."""

from __future__ import annotations

import json

import sqlalchemy as sa

from scheduler_core.db import create_db_engine
from scheduler_core.models import task_runs
from scheduler_core.store import Store
from scheduler_core.testing import FakeClock, run_cycle, running_scheduler
from tests.core.conftest import T0, tasks
from tests.core.test_cli import schedctl


def test_runs_show_last_output_and_stats_totals(sqlite_url: str) -> None:
    """A run's output, result and totals read back through the CLI."""
    engine = create_db_engine(sqlite_url)
    try:
        Store(engine, instance_id="inst-a").sync_tasks(
            tasks(
                {"name": "say", "command": ["sh", "-c", "echo hello; echo world >&2"],
                 "every": "1m"},
                {"name": "sync", "callable": "tests.core.recorded:moved", "args": [7],
                 "every": "1m", "result_metrics": ["files_moved"]},
            ),
            now=T0,
        )  # fmt: skip
        clock = FakeClock(T0)
        with running_scheduler(engine, clock, instance_id="inst-a") as scheduler:
            clock.advance(60)
            assert run_cycle(scheduler) == 2
        with engine.connect() as conn:
            ids = dict(conn.execute(sa.select(task_runs.c.task_name, task_runs.c.id)).all())
    finally:
        engine.dispose()
    shown = schedctl("runs", "show", str(ids["say"]), "--database-url", sqlite_url)
    assert shown.returncode == 0, shown.stderr
    assert "status:        success" in shown.stdout
    assert "output (12 bytes):\nhello\nworld" in shown.stdout
    as_json = json.loads(
        schedctl("runs", "show", str(ids["sync"]), "--json", "--database-url", sqlite_url).stdout
    )
    assert as_json["result"] == {"files_moved": 7, "bytes_moved": 700}
    last = schedctl("runs", "--task", "say", "--last", "--output", "--database-url", sqlite_url)
    assert last.returncode == 0 and "hello\nworld" in last.stdout
    stats = schedctl("stats", "--database-url", sqlite_url)
    assert "result totals" in stats.stdout
    assert any(line.split() == ["sync", "files_moved", "7"] for line in stats.stdout.splitlines())
    missing = schedctl("runs", "show", "999999", "--database-url", sqlite_url)
    assert missing.returncode == 2 and "999999" in missing.stderr
