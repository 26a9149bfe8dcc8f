"""Persisted counters seen through the exporter never go down across a real scheduler
restart (same instance id, leftovers reaped), an exporter restart and a history cleanup."""

from __future__ import annotations

import sqlalchemy as sa

from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core.retention import RetentionPolicy, run_cleanup
from scheduler_core.store import Store
from scheduler_core.testing import run_cycle, running_scheduler
from tests.core.conftest import tasks
from tests.exporter.test_prometheus import _counters_and_buckets


def scrape(db_url: str, clock) -> dict:
    with ExporterServer(
        settings=ExporterSettings(port=0),
        database_url=db_url,
        clock=clock.now,
        background_refresh=False,
    ) as server:
        server.refresh_now()
        return _counters_and_buckets(server.url)


def run_scheduler(db_engine: sa.Engine, clock, cycles: int) -> None:
    with running_scheduler(db_engine, clock, instance_id="node-1", drain_grace=1) as scheduler:
        for _ in range(cycles):
            clock.advance(10)
            run_cycle(scheduler)


def test_counters_never_decrease_across_scheduler_restart_and_cleanup(
    db_url, db_engine, clock
) -> None:
    """Every counter and histogram bucket after restart + cleanup is >= its value before."""
    Store(db_engine, instance_id="node-1").sync_tasks(
        tasks(
            {"name": "ok", "callable": "os:getpid", "every": "10s"},
            {"name": "bad", "command": ["false"], "every": "10s"},
        ),
        now=clock.now(),
    )
    run_scheduler(db_engine, clock, cycles=3)
    before = scrape(db_url, clock)
    assert before, "no counters exported"
    run_scheduler(db_engine, clock, cycles=2)  # the same instance id comes back
    run_cleanup(db_engine, policy=RetentionPolicy(days=1, max_runs_per_task=1), now=clock.now())
    after = scrape(db_url, clock)
    lowered = {k: (v, after.get(k)) for k, v in before.items() if after.get(k, -1) < v}
    assert not lowered, f"counters went down: {lowered}"
    grew = [k for k, v in before.items() if after[k] > v]
    assert grew, "the second scheduler life recorded nothing"
    with db_engine.connect() as conn:
        from scheduler_core.models import task_runs

        left = conn.execute(sa.select(sa.func.count()).select_from(task_runs)).scalar_one()
    assert left <= 2  # history really was cleaned while the counters stayed
