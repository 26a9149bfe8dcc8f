"""Load: many tasks every second on three instances sharing PostgreSQL, for a bounded time.

Scaled in time to fit CI on a 2-core machine: SCHEDCTL_LOAD_TASKS (default 1000) tasks for
SCHEDCTL_LOAD_SECONDS (default 40) seconds. The issue's full run (1,000 tasks for 2 minutes)
is the same test with SCHEDCTL_LOAD_SECONDS=120.
"""

from __future__ import annotations

import os
import statistics
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine
from scheduler_core.models import task_runs
from tests.reliability.conftest import account_ticks, fetch_runs, wait_for, write_config

pytestmark = [pytest.mark.reliability, pytest.mark.postgres]
SECOND = timedelta(seconds=1)
TASKS = int(os.environ.get("SCHEDCTL_LOAD_TASKS", "1000"))
SECONDS = float(os.environ.get("SCHEDCTL_LOAD_SECONDS", "40"))
WARM_UP = 10.0


def count_runs(url: str) -> int:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(task_runs)).scalar_one())
    finally:
        engine.dispose()


def test_many_tasks_every_second_on_three_instances(
    pg_url: str, tmp_path: Path, scheduler_processes, figures
) -> None:
    """TASKS tasks every second, 3 instances: every tick is run once or counted as missed by
    the misfire policy (none lost, none twice) and no instance's memory keeps growing."""
    names = [f"load-{i:04d}" for i in range(TASKS)]
    config = write_config(
        tmp_path / "tasks.yaml",
        [f"{{name: {n}, callable: 'os:getpid', every: 1s}}" for n in names],
    )
    began = time.monotonic()
    # All three start together with a new task file: their first syncs serialise on an
    # advisory lock (see test_concurrent_first_sync_of_a_task_file_does_not_fail).
    procs = [scheduler_processes(config, pg_url, i) for i in ("node-a", "node-b", "node-c")]
    wait_for(lambda: count_runs(pg_url) > 0, timeout=30)
    time.sleep(WARM_UP)  # imports, first claims and pools settle before the baseline
    rss_start = [p.rss_kib() for p in procs]
    cpu_start = [p.cpu_seconds() for p in procs]
    time.sleep(max(0.0, began + SECONDS - time.monotonic()))
    rss_end = [p.rss_kib() for p in procs]
    cpu_used = [p.cpu_seconds() - c for p, c in zip(procs, cpu_start, strict=True)]
    codes = [p.stop() for p in procs]
    outputs = "\n".join(p.output() for p in procs)
    assert codes == [0, 0, 0], outputs
    rows = fetch_runs(pg_url)
    account = account_ticks(rows, SECOND, set(names))
    assert not account.duplicates and not account.lost and not account.off_grid, (
        account.as_figures(),
        account.lost[:5],
    )
    assert not [r for r in rows if r.status == "running"]
    assert account.ticks >= TASKS * (SECONDS - 5), account.as_figures()
    delays = sorted(
        (r.started_at - r.scheduled_for).total_seconds() for r in rows if r.status == "success"
    )
    # Flat memory: after warm-up an instance may grow a little (allocator, caches of task
    # definitions), not in proportion to the runs it executed.
    growth = [(e - s) / 1024 for s, e in zip(rss_start, rss_end, strict=True)]
    assert max(growth) < 25, growth
    figures.update(
        tasks=TASKS,
        seconds=SECONDS,
        instances=3,
        runs_per_second=round(account.statuses["success"] / SECONDS, 1),
        start_delay_p50_s=round(statistics.median(delays), 3),
        start_delay_p99_s=round(delays[int(len(delays) * 0.99)], 3),
        start_delay_max_s=round(delays[-1], 3),
        rss_mib_after_warm_up=[round(v / 1024, 1) for v in rss_start],
        rss_mib_end=[round(v / 1024, 1) for v in rss_end],
        cpu_s_after_warm_up=[round(c, 1) for c in cpu_used],
        **account.as_figures(),
    )
