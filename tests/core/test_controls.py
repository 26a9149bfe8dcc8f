"""Run control on both backends: overlap, concurrency, misfire, emergency stop, retention,
stats and the audit trail. Time comes from a FakeClock."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from scheduler_core.histograms import DURATION_BUCKETS, HistogramCounts
from scheduler_core.models import DURATION_HISTOGRAM, audit_events, schedules, task_runs
from scheduler_core.retention import RetentionPolicy, run_cleanup
from scheduler_core.store import RunOutcome, Store
from scheduler_core.tasks import TaskDefinition
from tests.core.conftest import T0, tasks

LEASE = timedelta(seconds=30)


def dispatch_at(store: Store, now, limit: int = 100):
    return store.dispatch_claimed(
        store.claim_due_schedules(now=now, limit=limit, lease=LEASE), now=now
    )


def statuses(engine: sa.Engine, task: str) -> list[str]:
    with engine.connect() as conn:
        return [
            r.status
            for r in conn.execute(
                sa.select(task_runs.c.status)
                .where(task_runs.c.task_name == task)
                .order_by(task_runs.c.id)
            )
        ]


def sched(engine: sa.Engine, name: str) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.select(schedules).where(schedules.c.name == name)).one()


def finish(store: Store, run, status: str, seconds: float) -> None:
    store.finalize_runs(
        [RunOutcome.of(run, status, run.started_at + timedelta(seconds=seconds))],
        now=run.started_at + timedelta(seconds=seconds),
    )


def sleepers(prefix: str, count: int, *, every: str) -> list[TaskDefinition]:
    """``count`` tasks ``<prefix>0``... that each sleep 0.3 s, every ``every``."""
    return tasks(
        *(
            {"name": f"{prefix}{i}", "callable": "time:sleep", "args": [0.3], "every": every}
            for i in range(count)
        )
    )


@pytest.mark.parametrize(
    ("policy", "extra", "runs", "missed"),
    [
        ("run_once", {}, 1, 119),
        ("skip", {}, 0, 120),
        ("run_all", {"catchup_window": "10m"}, 10, 110),
    ],
)
def test_two_hours_downtime_through_the_store(
    store: Store, db_engine, policy, extra, runs, missed
) -> None:
    """2 h of downtime for `every: 1m`: runs and the persisted missed counter per policy; the gap is in history."""
    store.sync_tasks(
        tasks(
            {
                "name": "m",
                "command": ["true"],
                "every": "1m",
                "misfire": policy,
                "misfire_grace": "30s",
                **extra,
            }
        ),
        now=T0,
    )
    dispatched = dispatch_at(store, T0 + timedelta(minutes=120, seconds=45))
    assert len(dispatched) == runs
    row = sched(db_engine, "m")
    assert row.missed_runs_total == missed
    with db_engine.connect() as conn:
        gap = conn.execute(sa.select(task_runs).where(task_runs.c.status == "missed")).one()
    assert gap.missed_count == missed and gap.missed_first_at == T0 + timedelta(minutes=1)


def test_overlap_allow_respects_max_concurrency(store: Store, db_engine) -> None:
    """overlap=allow starts overlapping runs up to max_concurrency (across instances), then skips."""
    store.sync_tasks(
        tasks(
            {
                "name": "a",
                "command": ["true"],
                "every": "1m",
                "overlap": "allow",
                "max_concurrency": 2,
            }
        ),
        now=T0,
    )
    other = Store(db_engine, instance_id="inst-b")
    assert len(dispatch_at(store, T0 + timedelta(minutes=1))) == 1
    assert len(dispatch_at(other, T0 + timedelta(minutes=2))) == 1
    assert dispatch_at(store, T0 + timedelta(minutes=3)) == []
    assert statuses(db_engine, "a") == ["running", "running", "skipped"]


def test_overlap_replace_cancels_the_running_one(store: Store, db_engine) -> None:
    """overlap=replace flags the running run for cancellation and starts the new one."""
    store.sync_tasks(
        tasks({"name": "a", "command": ["true"], "every": "1m", "overlap": "replace"}), now=T0
    )
    store.register_instance(now=T0, lease=LEASE, hostname="h", pid=1, version="t")
    (first,) = dispatch_at(store, T0 + timedelta(minutes=1))
    (second,) = dispatch_at(store, T0 + timedelta(minutes=2))
    assert store.heartbeat(now=T0 + timedelta(minutes=2), running_runs=2) == [
        (first.run_id, "replaced by a newer run (overlap=replace)")
    ]
    assert second.run_id != first.run_id


def test_max_running_per_instance(make_scheduler, clock, db_engine) -> None:
    """An instance never has more than max_running runs in flight; the rest wait for capacity."""
    Store(db_engine, instance_id="inst-a").sync_tasks(sleepers("s", 5, every="1m"), now=clock.now())
    scheduler = make_scheduler(max_running=2, claim_ahead=1)
    clock.advance(60)
    assert scheduler.step() == 2
    assert scheduler.running_count == 2


def test_claim_ahead_queues_but_never_executes_more_than_max_running(
    make_scheduler, clock, db_engine
) -> None:
    """With claim_ahead, extra runs are claimed and queued; at most max_running execute at once,
    and a queued run records when it really started, not when it was claimed."""
    Store(db_engine, instance_id="inst-a").sync_tasks(sleepers("q", 4, every="1h"), now=clock.now())
    scheduler = make_scheduler(max_running=2, claim_ahead=2)
    claimed_at = clock.advance(3600)
    assert scheduler.step() == 4
    deadline = time.monotonic() + 5
    while scheduler.busy_callable_threads() < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # both workers are inside their callables (started at claimed_at)
    clock.advance(5)  # the two queued runs start after this
    peak = 0
    while scheduler.running_count and time.monotonic() < deadline:
        peak = max(peak, scheduler.busy_callable_threads())
        scheduler.step()
        time.sleep(0.01)
    assert 1 <= peak <= 2
    with db_engine.connect() as conn:
        starts = sorted(
            r.started_at
            for r in conn.execute(sa.select(task_runs).where(task_runs.c.status == "success"))
        )
    assert starts == [
        claimed_at,
        claimed_at,
        claimed_at + timedelta(seconds=5),
        claimed_at + timedelta(seconds=5),
    ]


def test_emergency_stop_and_resume_all(store: Store, db_engine) -> None:
    """Emergency stop pauses all and flags running runs; resume --all undoes only its own pauses."""
    store.sync_tasks(
        tasks(*({"name": n, "command": ["true"], "every": "1m"} for n in ("a", "b", "c"))), now=T0
    )
    store.register_instance(now=T0, lease=LEASE, hostname="h", pid=1, version="t")
    running = dispatch_at(store, T0 + timedelta(minutes=1))
    store.pause("c", reason="already broken", by="alice", now=T0 + timedelta(minutes=1))
    paused, flagged = store.emergency_stop(
        reason="db incident", by="bob", now=T0 + timedelta(minutes=1, seconds=5)
    )
    assert (paused, flagged) == (2, 3)
    assert dispatch_at(store, T0 + timedelta(minutes=5)) == []
    cancels = store.heartbeat(now=T0 + timedelta(minutes=1, seconds=6), running_runs=3)
    assert {run_id for run_id, _ in cancels} == {r.run_id for r in running}
    assert all("emergency stop by bob: db incident" in reason for _, reason in cancels)
    resumed, still = store.resume_all(by="bob", now=T0 + timedelta(minutes=10))
    assert (resumed, still) == (2, 1)
    assert sched(db_engine, "c").pause_reason == "already broken"
    with db_engine.connect() as conn:
        actions = [
            r.action for r in conn.execute(sa.select(audit_events).order_by(audit_events.c.id))
        ]
    assert actions == ["pause", "emergency-stop", "resume", "resume", "resume-all"]


def test_pause_needs_a_reason(store: Store) -> None:
    """A pause without a reason is refused (someone at 3 a.m. needs to know why)."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    with pytest.raises(ValueError, match="reason"):
        store.pause("a", reason="  ", by="x", now=T0)


def test_cleanup_deletes_in_batches_and_never_lowers_counters(store: Store, db_engine) -> None:
    """Cleanup removes runs past the age and per-task cap in batches; running rows and counters stay."""
    store.sync_tasks(
        tasks(
            {
                "name": "a",
                "command": ["true"],
                "every": "1m",
                "overlap": "allow",
                "max_concurrency": 100,
            }
        ),
        now=T0,
    )
    store.register_instance(now=T0, lease=LEASE, hostname="h", pid=1, version="t")
    for minute in range(1, 31):
        (run,) = dispatch_at(store, T0 + timedelta(minutes=minute))
        if minute < 30:
            finish(store, run, "success", 1.0)
    before = sched(db_engine, "a")
    seen: list[tuple[int, int]] = []
    result = run_cleanup(
        db_engine,
        policy=RetentionPolicy(days=30, max_runs_per_task=10, batch_size=4),
        now=T0 + timedelta(days=1),
        progress=lambda done, total: seen.append((done, total)),
    )
    assert result.runs_deleted == 19 and result.batches >= 5
    assert seen[-1][0] == 19 and all(d <= t for d, t in seen)
    remaining = statuses(db_engine, "a")
    assert remaining.count("running") == 1 and len(remaining) == 11
    after = sched(db_engine, "a")
    assert after.runs_success_total == before.runs_success_total == 29
    assert DURATION_HISTOGRAM.read(after._mapping) == DURATION_HISTOGRAM.read(before._mapping)
    assert DURATION_HISTOGRAM.read(after._mapping).count == 29
    result = run_cleanup(db_engine, policy=RetentionPolicy(days=1), now=T0 + timedelta(days=3))
    assert statuses(db_engine, "a") == ["running"]


def test_stats_from_persisted_counters(store: Store, db_engine) -> None:
    """stats gives totals, success rate, mean and p95 from counters, exact after cleanup."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    durations = [0.2] * 18 + [20.0, 40.0]
    for i, seconds in enumerate(durations, start=1):
        (run,) = dispatch_at(store, T0 + timedelta(minutes=i))
        finish(store, run, "failure" if i % 10 == 0 else "success", seconds)
    run_cleanup(
        db_engine, policy=RetentionPolicy(days=1, max_runs_per_task=1), now=T0 + timedelta(days=5)
    )
    (s,) = store.stats("a")
    assert (s["total"], s["succeeded"], s["failed"]) == (20, 18, 2)
    assert s["success_rate"] == pytest.approx(0.9)
    assert s["avg_duration_seconds"] == pytest.approx(sum(durations) / 20)
    hist = HistogramCounts.empty(DURATION_BUCKETS).observe(durations)
    assert s["p95_duration_seconds"] == pytest.approx(hist.quantile(0.95))
    assert 10 < s["p95_duration_seconds"] <= 30
    assert s["last_failure_at"] is not None and s["last_success_at"] is not None
