"""Clock skew: an instance whose wall clock runs 30 s ahead fires nothing early or twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from scheduler_core.clock import DatabaseClock, SystemClock
from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine
from scheduler_core.runtime import EngineSettings, Scheduler
from scheduler_core.store import Store
from tests.reliability import jobs
from tests.reliability.conftest import account_ticks, fetch_runs

pytestmark = [pytest.mark.reliability, pytest.mark.postgres]
SKEW = timedelta(seconds=30)
SECOND = timedelta(seconds=1)


class AheadClock:
    """This host's wall clock, wrong by a fixed amount (a host whose NTP is broken)."""

    def __init__(self, skew: timedelta) -> None:
        self.skew = skew
        self._system = SystemClock()

    def now(self) -> datetime:
        return self._system.now() + self.skew


def test_instance_30s_ahead_fires_nothing_early_or_twice(pg_url: str, figures) -> None:
    """Two instances, one with its wall clock 30 s ahead: leases and due times use the
    database clock, so no tick runs before its time (by the true clock) or more than once."""
    names = [f"job-{i}" for i in range(5)]
    definitions = parse_task_document(
        {
            "tasks": [
                {"name": n, "callable": "tests.reliability.jobs:record", "args": [n], "every": "1s"}
                for n in names
            ]
        },
        source="test",
    )
    engines = [create_db_engine(pg_url) for _ in range(2)]
    Store(engines[0]).sync_tasks(definitions, now=datetime.now(UTC))
    fast_clock = DatabaseClock(engines[1], local=AheadClock(SKEW))
    schedulers = [
        Scheduler(
            engine=engine,
            settings=EngineSettings(
                instance_id=instance_id, health_listen=None, poll_interval=0.2, drain_grace=2
            ),
            clock=clock,
        )
        for engine, instance_id, clock in (
            (engines[0], "true-clock", DatabaseClock(engines[0])),
            (engines[1], "ahead-30s", fast_clock),
        )
    ]
    jobs.reset()
    threads = [threading.Thread(target=s.run, name=s.settings.instance_id) for s in schedulers]
    try:
        for thread in threads:
            thread.start()
        time.sleep(10)
    finally:
        for s in schedulers:
            s.request_stop()
        for thread in threads:
            thread.join(timeout=30)
    observed_at = datetime.now(UTC)
    rows = fetch_runs(engines[0])
    for engine in engines:
        engine.dispose()
    executions = Counter(label for label, _ in jobs.EXECUTIONS)
    successes = Counter(r.task_name for r in rows if r.status == "success")
    by_instance = Counter(r.instance_id for r in rows if r.status == "success")
    early = [
        (r.task_name, r.scheduled_for, r.started_at)
        for r in rows
        if r.scheduled_for.replace(tzinfo=UTC) > observed_at
        or r.started_at.replace(tzinfo=UTC) > observed_at
    ]
    # Matched per task in order: the k-th execution (true wall clock) is not before the k-th tick.
    too_soon = []
    for name in names:
        ran = sorted(t for label, t in jobs.EXECUTIONS if label == name)
        ticks = sorted(
            r.scheduled_for for r in rows if r.task_name == name and r.status == "success"
        )
        too_soon += [
            (name, tick, at)
            for at, tick in zip(ran, ticks, strict=False)
            if at < tick.replace(tzinfo=UTC).timestamp() - 0.01
        ]
    account = account_ticks(rows, SECOND, set(names))
    offset = fast_clock.offset.total_seconds()
    assert abs(offset + SKEW.total_seconds()) < 1.0, offset
    assert by_instance["ahead-30s"] > 0, by_instance  # the skewed instance took part
    assert not early and not too_soon, (early[:5], too_soon[:5])
    assert executions == successes, (executions, successes)
    assert not account.duplicates and not account.lost, account.as_figures()
    figures.update(
        measured_offset_s=round(offset, 3),
        runs_by_instance=dict(by_instance),
        early_runs=len(early),
        executions=sum(executions.values()),
        **account.as_figures(),
    )
