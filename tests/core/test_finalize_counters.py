"""Finalize adds each batch to the persisted counters and histogram buckets in SQL: exact
per outcome and per bucket on both backends, and nothing lost between concurrent finalizers."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine
from scheduler_core.histograms import DURATION_BUCKETS, START_DELAY_BUCKETS, HistogramCounts
from scheduler_core.models import DURATION_HISTOGRAM, START_DELAY_HISTOGRAM, schedules
from scheduler_core.store import DispatchedRun, RunOutcome, Store
from tests.core.conftest import T0, tasks

LEASE = timedelta(seconds=30)
#: Several runs of one task may be in flight (and finish in one batch).
OVERLAPPING = {"command": ["true"], "every": "1m", "overlap": "allow", "max_concurrency": 100}


def dispatch_at(store: Store, now: datetime) -> list[DispatchedRun]:
    return store.dispatch_claimed(
        store.claim_due_schedules(now=now, limit=100, lease=LEASE), now=now
    )


def ended(run: DispatchedRun, status: str, *, delay: timedelta, duration: timedelta) -> RunOutcome:
    """``run`` started ``delay`` after its tick and ended ``duration`` later as ``status``."""
    started = run.scheduled_for + delay
    outcome = RunOutcome.of(run, status, started + duration)
    outcome.started_at = started
    return outcome


def schedule_rows(engine: sa.Engine) -> dict[str, sa.RowMapping]:
    with engine.connect() as conn:
        return {r.name: r._mapping for r in conn.execute(sa.select(schedules))}


def test_mixed_batch_adds_exact_counters_and_buckets(store: Store, db_engine: sa.Engine) -> None:
    """One batch of mixed outcomes over two tasks adds each outcome's count, each observation
    to its bucket (a value on a bound in that bound's bucket), the sums, the last success and
    failure times and the consecutive failures; skipped runs observe nothing."""
    store.sync_tasks(tasks({"name": "a", **OVERLAPPING}, {"name": "b", **OVERLAPPING}), now=T0)
    batch: list[RunOutcome] = []
    plan = {  # per tick: (status, start delay, duration) of a, then of b
        1: (("success", 0.25, 0.3), ("success", 0.0, 0.005)),
        2: (("failure", 0.001, 2.0), ("cancelled", 0.3, 100.0)),
        3: (("timeout", 400.0, 5.0), ("skipped", 0.0, 0.0)),
        4: (("success", 0.02, 30000.0), ("failure", 2.5, 0.5)),
    }
    for minute, outcomes in plan.items():
        runs = sorted(dispatch_at(store, T0 + timedelta(minutes=minute)), key=lambda r: r.task_name)
        for run, (status, delay, duration) in zip(runs, outcomes, strict=True):
            batch.append(
                ended(
                    run,
                    status,
                    delay=timedelta(seconds=delay),
                    duration=timedelta(seconds=duration),
                )
            )
    result = store.finalize_runs(batch, now=T0 + timedelta(hours=9))
    assert len(result.accepted) == 8 and result.consecutive_failures == {"a": 0, "b": 1}

    rows = schedule_rows(db_engine)
    a, b = rows["a"], rows["b"]
    assert (a["runs_success_total"], a["runs_failure_total"], a["runs_timeout_total"]) == (2, 1, 1)
    assert (b["runs_success_total"], b["runs_cancelled_total"], b["runs_skipped_total"]) == (
        1,
        1,
        1,
    )
    assert b["runs_failure_total"] == 1 and a["runs_skipped_total"] == 0
    assert a["consecutive_failures"] == 0 and b["consecutive_failures"] == 1
    by_name = {o.task_name + str(o.scheduled_for): o for o in batch}
    a4 = by_name["a" + str(T0 + timedelta(minutes=4))]
    a3 = by_name["a" + str(T0 + timedelta(minutes=3))]
    assert a["last_success_at"] == a4.finished_at and a["last_failure_at"] == a3.finished_at

    expect_a = HistogramCounts.empty(DURATION_BUCKETS).observe([0.3, 2.0, 5.0, 30000.0])
    expect_b = HistogramCounts.empty(DURATION_BUCKETS).observe([0.005, 100.0, 0.5])
    got_a, got_b = DURATION_HISTOGRAM.read(a), DURATION_HISTOGRAM.read(b)
    assert got_a.buckets == expect_a.buckets and got_b.buckets == expect_b.buckets
    assert got_a.sum == pytest.approx(30007.3) and got_b.sum == pytest.approx(100.505)
    # Exactly on a bound: 5.0 s is in le=5 (not le=10), 0.005 s in le=0.005.
    assert a[DURATION_HISTOGRAM.buckets[DURATION_BUCKETS.index(5)]] == 1
    assert b[DURATION_HISTOGRAM.buckets[0]] == 1
    assert a[DURATION_HISTOGRAM.buckets[-1]] == 1  # 30000 s: +Inf

    delays_a = START_DELAY_HISTOGRAM.read(a)
    assert delays_a.buckets == (
        HistogramCounts.empty(START_DELAY_BUCKETS).observe([0.25, 0.001, 400.0, 0.02]).buckets
    )
    assert a[START_DELAY_HISTOGRAM.buckets[START_DELAY_BUCKETS.index(0.25)]] == 1
    assert a[START_DELAY_HISTOGRAM.buckets[0]] == 1  # 0.001 s: le=0.001
    assert delays_a.sum == pytest.approx(400.271)
    assert START_DELAY_HISTOGRAM.read(b).count == 3  # the skipped run has no start delay


def test_second_batch_adds_to_the_first(store: Store, db_engine: sa.Engine) -> None:
    """Counters and buckets keep what earlier batches stored: a later batch adds to them."""
    store.sync_tasks(tasks({"name": "a", **OVERLAPPING}), now=T0)
    for minute in (1, 2):
        (run,) = dispatch_at(store, T0 + timedelta(minutes=minute))
        outcome = ended(run, "success", delay=timedelta(0), duration=timedelta(seconds=0.7))
        store.finalize_runs([outcome], now=outcome.finished_at)
    row = schedule_rows(db_engine)["a"]
    assert row["runs_success_total"] == 2
    hist = DURATION_HISTOGRAM.read(row)
    assert hist.count == 2 and hist.sum == pytest.approx(1.4)
    assert row[DURATION_HISTOGRAM.buckets[DURATION_BUCKETS.index(1)]] == 2


@pytest.mark.postgres
def test_concurrent_finalizers_lose_no_increment(pg_url: str) -> None:
    """Two instances finalizing runs of the same tasks at the same time: every run is counted
    once in its outcome counter, its bucket and the sum."""
    engine = create_db_engine(pg_url, pool_size=4)
    try:
        stores = [Store(engine, instance_id="inst-a"), Store(engine, instance_id="inst-b")]
        names = ["t1", "t2", "t3"]
        stores[0].sync_tasks(tasks(*({"name": n, **OVERLAPPING} for n in names)), now=T0)
        batches: list[list[list[RunOutcome]]] = [[], []]
        for minute in range(1, 21):
            which = minute % 2
            runs = dispatch_at(stores[which], T0 + timedelta(minutes=minute))
            assert len(runs) == len(names)
            batches[which].append(
                [
                    ended(run, "success", delay=timedelta(0), duration=timedelta(seconds=0.2))
                    for run in runs
                ]
            )
        start = threading.Barrier(2)
        errors: list[BaseException] = []

        def finalize(which: int) -> None:
            try:
                start.wait(timeout=10)
                for batch in batches[which]:
                    stores[which].finalize_runs(batch, now=T0 + timedelta(hours=1))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        threads = [threading.Thread(target=finalize, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors and not any(t.is_alive() for t in threads)
        rows = schedule_rows(engine)
        for name in names:
            hist = DURATION_HISTOGRAM.read(rows[name])
            assert rows[name]["runs_success_total"] == 20
            assert hist.count == 20 and hist.sum == pytest.approx(4.0)
            assert rows[name][DURATION_HISTOGRAM.buckets[DURATION_BUCKETS.index(0.25)]] == 20
            assert START_DELAY_HISTOGRAM.read(rows[name]).count == 20
    finally:
        engine.dispose()
