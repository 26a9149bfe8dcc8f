"""Store contract: the same behaviour on SQLite and on a real PostgreSQL.

Every test runs on both backends (the ``db_url`` fixture); time comes from a FakeClock.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa

from scheduler_core.errors import RunLookupError, TaskLookupError
from scheduler_core.models import (
    DURATION_HISTOGRAM,
    START_DELAY_HISTOGRAM,
    alarm_events,
    instances,
    schedules,
    task_health,
    task_runs,
)
from scheduler_core.store import DispatchedRun, RunOutcome, Store
from scheduler_core.testing import run_cycle
from tests.core.conftest import T0, tasks

LEASE = timedelta(seconds=30)


def runs(engine: sa.Engine, task: str | None = None) -> list[sa.Row]:
    stmt = sa.select(task_runs).order_by(task_runs.c.id)
    if task:
        stmt = stmt.where(task_runs.c.task_name == task)
    with engine.connect() as conn:
        return list(conn.execute(stmt))


def schedule_row(engine: sa.Engine, name: str) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.select(schedules).where(schedules.c.name == name)).one()


def outcome(run, status: str, finished, **extra) -> RunOutcome:
    return RunOutcome.of(run, status, finished, **extra)


def dispatch_one_run(store: Store) -> tuple[datetime, DispatchedRun]:
    """Task ``a`` (every minute) synced at T0 on a registered instance, and its first tick
    dispatched: the time of that tick and the run."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    store.register_instance(now=T0, lease=LEASE, hostname="h", pid=1, version="t")
    now = T0 + timedelta(minutes=1)
    (run,) = store.dispatch_claimed(
        store.claim_due_schedules(now=now, limit=1, lease=LEASE), now=now
    )
    return now, run


def test_lease_boundary(store: Store, db_engine: sa.Engine) -> None:
    """A claim is not reclaimable at claimed_until, and is reclaimable just after it."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    due = T0 + timedelta(minutes=1)
    first = store.claim_due_schedules(now=due, limit=10, lease=LEASE)
    assert [c.name for c in first] == ["a"]
    other = Store(db_engine, instance_id="inst-b")
    assert other.claim_due_schedules(now=due + LEASE, limit=10, lease=LEASE) == []
    taken = other.claim_due_schedules(
        now=due + LEASE + timedelta(microseconds=1), limit=10, lease=LEASE
    )
    assert [c.name for c in taken] == ["a"]
    # The first owner's claim was taken over: its dispatch is fenced off and writes nothing.
    assert store.dispatch_claimed(first, now=due + LEASE) == []
    assert runs(db_engine) == []


def test_claims_are_disjoint_and_batched(store: Store, db_engine: sa.Engine) -> None:
    """Two instances claiming at once split the due schedules; none is claimed twice."""
    store.sync_tasks(
        tasks(*({"name": f"t{i}", "command": ["true"], "every": "1m"} for i in range(50))), now=T0
    )
    due = T0 + timedelta(minutes=1)
    a = store.claim_due_schedules(now=due, limit=30, lease=LEASE)
    b = Store(db_engine, instance_id="inst-b").claim_due_schedules(now=due, limit=30, lease=LEASE)
    names_a, names_b = {c.name for c in a}, {c.name for c in b}
    assert len(names_a) == 30 and len(names_b) == 20 and not names_a & names_b


def test_claim_and_dispatch_runs_each_due_tick_once(store: Store, db_engine: sa.Engine) -> None:
    """The engine's path: due ticks become running rows, schedules advance and are left
    unclaimed, and a second pass at the same instant finds nothing."""
    store.sync_tasks(
        tasks(*({"name": f"t{i}", "command": ["true"], "every": "1m"} for i in range(5))), now=T0
    )
    now = T0 + timedelta(minutes=1)
    claimed, dispatched = store.claim_and_dispatch(now=now, limit=3, lease=LEASE)
    assert claimed == 3 and len(dispatched) == 3
    claimed, rest = store.claim_and_dispatch(now=now, limit=10, lease=LEASE)
    assert claimed == 2 and len(rest) == 2
    assert store.claim_and_dispatch(now=now, limit=10, lease=LEASE) == (0, [])
    rows = runs(db_engine)
    assert sorted(r.task_name for r in rows) == [f"t{i}" for i in range(5)]
    assert {(r.status, r.scheduled_for, r.instance_id) for r in rows} == {
        ("running", now, "inst-a")
    }
    for i in range(5):
        sched = schedule_row(db_engine, f"t{i}")
        assert sched.next_run_at == T0 + timedelta(minutes=2)
        assert sched.due_at == T0 + timedelta(minutes=2)
        assert (sched.claimed_by, sched.claimed_until) == (None, None)


def test_a_claimer_reads_definitions_it_has_not_seen_and_keeps_a_bounded_cache(
    db_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instance that did not sync the tasks reads each claimed task's own definition (by
    name), and past the cache limit it drops older ones and reads them again when needed."""
    monkeypatch.setattr("scheduler_core.store.base.DEFINITION_CACHE_LIMIT", 4)
    Store(db_engine, instance_id="syncer").sync_tasks(
        tasks(*({"name": f"t{i}", "command": ["echo", str(i)], "every": "1m"} for i in range(10))),
        now=T0,
    )
    claimer = Store(db_engine, instance_id="inst-b")
    now = T0 + timedelta(minutes=1)
    for _ in range(2):  # the second time, most definitions were dropped and are read again
        claimed, dispatched = claimer.claim_and_dispatch(now=now, limit=20, lease=LEASE)
        assert claimed == 10
        assert {d.task_name: d.definition.action.argv for d in dispatched} == {
            f"t{i}": ("echo", str(i)) for i in range(10)
        }
        assert len(claimer._definitions) <= 4
        with db_engine.begin() as conn:  # let the runs end, so the next ticks are not skipped
            conn.execute(task_runs.update().values(status="success", finished_at=now))
        now += timedelta(minutes=1)


def test_one_time_definitions_are_kept_apart_in_a_small_cache(
    db_engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One-time definitions (each used by one dispatch and its finalize) go to their own
    small cache, so they never crowd out the recurring ones nor pile up; a finalize whose
    one-time definition was dropped reads it again by name."""
    monkeypatch.setattr("scheduler_core.store.base.ONE_TIME_CACHE_LIMIT", 4)
    at = (T0 + timedelta(minutes=1)).isoformat()
    Store(db_engine, instance_id="syncer").sync_tasks(
        tasks(
            *({"name": f"once{i}", "command": ["echo", str(i)], "at": at} for i in range(10)),
            {"name": "every", "command": ["echo", "every"], "every": "1m"},
        ),
        now=T0,
    )
    claimer = Store(db_engine, instance_id="inst-b")
    now = T0 + timedelta(minutes=1)
    claimed, dispatched = claimer.claim_and_dispatch(now=now, limit=20, lease=LEASE)
    assert claimed == 11
    by_task = {d.task_name: d.definition for d in dispatched}
    assert {name: d.action.argv for name, d in by_task.items()} == {
        **{f"once{i}": ("echo", str(i)) for i in range(10)},
        "every": ("echo", "every"),
    }
    assert {name for name, d in by_task.items() if d.one_time} == {f"once{i}" for i in range(10)}
    assert list(claimer._definitions.values()) == [by_task["every"]]
    assert len(claimer._one_time) <= 4
    result = claimer.finalize_runs([outcome(d, "success", now) for d in dispatched], now=now)
    assert not result.rejected
    assert {(r.task_name, r.status) for r in runs(db_engine)} == {
        (name, "success") for name in by_task
    }
    assert len(claimer._one_time) <= 4


def test_claim_and_dispatch_skips_schedules_another_instance_leased(
    store: Store, db_engine: sa.Engine
) -> None:
    """A schedule under another instance's live lease is left to it; after the lease it is
    taken, and the first owner's late dispatch is fenced off."""
    store.sync_tasks(
        tasks(*({"name": n, "command": ["true"], "every": "1m"} for n in ("a", "b"))), now=T0
    )
    due = T0 + timedelta(minutes=1)
    other = Store(db_engine, instance_id="inst-b")
    leased = other.claim_due_schedules(now=due, limit=1, lease=LEASE)
    assert [c.name for c in leased] == ["a"] or [c.name for c in leased] == ["b"]
    claimed, dispatched = store.claim_and_dispatch(now=due, limit=10, lease=LEASE)
    assert claimed == 1 and {r.task_name for r in dispatched} == {"a", "b"} - {leased[0].name}
    later = due + LEASE + timedelta(microseconds=1)
    claimed, dispatched = store.claim_and_dispatch(now=later, limit=10, lease=LEASE)
    assert [r.task_name for r in dispatched] == [leased[0].name]
    assert other.dispatch_claimed(leased, now=later) == []
    assert len(runs(db_engine)) == 2


@pytest.mark.postgres
def test_concurrent_claim_and_dispatch_split_the_work(pg_url: str) -> None:
    """Four instances dispatching 400 due schedules at once on PostgreSQL: every schedule
    runs exactly once (rows locked with SKIP LOCKED in one transaction each)."""
    import threading

    from scheduler_core.db import create_db_engine

    engine = create_db_engine(pg_url, pool_size=8)
    try:
        Store(engine, instance_id="setup").sync_tasks(
            tasks(*({"name": f"t{i}", "command": ["true"], "every": "1m"} for i in range(400))),
            now=T0,
        )
        due = T0 + timedelta(minutes=1)
        got: dict[str, list[str]] = {}
        gate = threading.Barrier(4)

        def instance(instance_id: str) -> None:
            mine = Store(engine, instance_id=instance_id)
            gate.wait(10)
            names: list[str] = []
            while True:
                claimed, dispatched = mine.claim_and_dispatch(now=due, limit=25, lease=LEASE)
                names += [r.task_name for r in dispatched]
                if claimed == 0:
                    break
            got[instance_id] = names

        threads = [threading.Thread(target=instance, args=(f"i{n}",)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        every = [name for names in got.values() for name in names]
        assert sorted(every) == sorted(f"t{i}" for i in range(400))
        assert len(runs(engine)) == 400
    finally:
        engine.dispose()


def test_finished_unrecorded_runs_do_not_count_as_running(
    store: Store, db_engine: sa.Engine
) -> None:
    """overlap=skip: a tick due after the previous run finished, but before its outcome is
    written, runs (the engine passes the finished-but-unrecorded count); without it, skipped."""
    store.sync_tasks(
        tasks({"name": "a", "command": ["true"], "every": "1m", "overlap": "skip"}), now=T0
    )
    first = T0 + timedelta(minutes=1)
    store.claim_and_dispatch(now=first, limit=1, lease=LEASE)
    second = T0 + timedelta(minutes=2)
    _, dispatched = store.claim_and_dispatch(
        now=second, limit=1, lease=LEASE, finished_unrecorded={"a": 1}
    )
    assert len(dispatched) == 1
    third = T0 + timedelta(minutes=3)
    _, dispatched = store.claim_and_dispatch(now=third, limit=1, lease=LEASE)
    assert dispatched == []
    assert [r.status for r in runs(db_engine)] == ["running", "running", "skipped"]


def test_dispatch_inserts_runs_and_advances(store: Store, db_engine: sa.Engine) -> None:
    """Dispatch writes one running row per tick with instance and start, and moves next_run_at."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    now = T0 + timedelta(minutes=1, seconds=0.25)
    dispatched = store.dispatch_claimed(
        store.claim_due_schedules(now=now, limit=10, lease=LEASE), now=now
    )
    assert len(dispatched) == 1
    (row,) = runs(db_engine)
    assert (row.status, row.instance_id, row.started_at, row.attempt) == (
        "running",
        "inst-a",
        now,
        1,
    )
    assert row.scheduled_for == T0 + timedelta(minutes=1)
    sched = schedule_row(db_engine, "a")
    assert sched.next_run_at == T0 + timedelta(minutes=2) and sched.claimed_by is None


def test_a_tick_can_never_run_twice(store: Store, db_engine: sa.Engine) -> None:
    """Re-dispatching the same tick (a claim replayed) inserts no second run row."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    now = T0 + timedelta(minutes=1)
    claimed = store.claim_due_schedules(now=now, limit=10, lease=LEASE)
    assert len(store.dispatch_claimed(claimed, now=now)) == 1
    with db_engine.begin() as conn:  # force the schedule back as if the advance was lost
        conn.execute(
            schedules.update().values(
                next_run_at=now, due_at=now, claimed_by=None, claimed_until=None
            )
        )
    again = store.claim_due_schedules(now=now, limit=10, lease=LEASE)
    assert store.dispatch_claimed(again, now=now) == []
    assert len(runs(db_engine)) == 1


def test_finalize_is_fenced_against_abandoned_runs(store: Store, db_engine: sa.Engine) -> None:
    """A late completion of a run already marked abandoned is rejected, and counted once."""
    now, run = dispatch_one_run(store)
    survivor = Store(db_engine, instance_id="inst-b")
    survivor.register_instance(
        now=now + timedelta(seconds=31), lease=LEASE, hostname="h", pid=2, version="t"
    )
    # inst-a last heartbeat T0; lease 30 s: at T0+31s... it is stale once T0 + 30 s < now.
    reaped = survivor.reap_abandoned(now=now + timedelta(seconds=31))
    assert reaped == [run.run_id]
    result = store.finalize_runs([outcome(run, "success", now + timedelta(seconds=40))], now=now)
    assert result.accepted == [] and len(result.rejected) == 1
    (row,) = runs(db_engine)
    assert row.status == "abandoned" and "heartbeat" in row.error_message
    sched = schedule_row(db_engine, "a")
    assert (sched.runs_abandoned_total, sched.runs_success_total) == (1, 0)


def test_abandon_waits_for_the_lease(store: Store, db_engine: sa.Engine) -> None:
    """An owner that heartbeated within its lease keeps its runs."""
    now, _ = dispatch_one_run(store)
    store.heartbeat(now=now, running_runs=1)
    survivor = Store(db_engine, instance_id="inst-b")
    assert survivor.reap_abandoned(now=now + LEASE) == []
    assert survivor.reap_abandoned(now=now + LEASE + timedelta(seconds=1)) != []


def test_orphan_run_without_instance_row_is_abandoned(store: Store, db_engine: sa.Engine) -> None:
    """A running row whose instance never wrote a heartbeat is reaped after the lease."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    now = T0 + timedelta(minutes=1)
    store.dispatch_claimed(store.claim_due_schedules(now=now, limit=1, lease=LEASE), now=now)
    other = Store(db_engine, instance_id="inst-b")
    assert other.reap_abandoned(now=now + timedelta(seconds=10)) == []
    assert len(other.reap_abandoned(now=now + timedelta(seconds=61))) == 1


def test_restart_with_same_id_reaps_own_leftovers_at_once(
    store: Store, db_engine: sa.Engine
) -> None:
    """Re-registering an instance id marks its own running rows abandoned immediately."""
    now, _ = dispatch_one_run(store)
    reaped = Store(db_engine, instance_id="inst-a").register_instance(
        now=now + timedelta(seconds=1), lease=LEASE, hostname="h", pid=2, version="t"
    )
    assert len(reaped) == 1 and runs(db_engine)[0].status == "abandoned"


def test_failure_alarm_opens_once_and_closes_on_success(
    make_scheduler, clock, db_engine: sa.Engine
) -> None:
    """3 failures open exactly one consecutive_failures alarm; the next success closes it."""
    store = Store(db_engine, instance_id="inst-a")
    store.sync_tasks(
        tasks({"name": "flaky", "command": ["false"], "every": "10s"}), now=clock.now()
    )
    scheduler = make_scheduler()
    for _ in range(4):
        clock.advance(10)
        run_cycle(scheduler)
    with db_engine.connect() as conn:
        alarms = conn.execute(sa.select(alarm_events)).all()
    assert (
        len(alarms) == 1
        and alarms[0].kind == "consecutive_failures"
        and alarms[0].closed_at is None
    )
    assert schedule_row(db_engine, "flaky").consecutive_failures == 4
    store.sync_tasks(tasks({"name": "flaky", "command": ["true"], "every": "10s"}), now=clock.now())
    clock.advance(10)
    run_cycle(scheduler)
    with db_engine.connect() as conn:
        alarms = conn.execute(sa.select(alarm_events)).all()
        health = conn.execute(sa.select(task_health)).one()
    assert len(alarms) == 1 and alarms[0].closed_at is not None
    assert schedule_row(db_engine, "flaky").consecutive_failures == 0
    assert (health.last_status, health.consecutive_failures, health.is_running) == (
        "success",
        0,
        False,
    )


def test_stuck_only_past_max_runtime(store: Store, db_engine: sa.Engine, clock) -> None:
    """A running run opens a stuck alarm only once now - started > max_runtime; it closes after."""
    from scheduler_core.telemetry import TelemetryWriter

    store.sync_tasks(
        tasks({"name": "slow", "command": ["true"], "every": "1h", "max_runtime": "5m"}), now=T0
    )
    telemetry = TelemetryWriter(db_engine, instance_id="inst-a")
    now = T0 + timedelta(hours=1)
    (run,) = store.dispatch_claimed(
        store.claim_due_schedules(now=now, limit=1, lease=LEASE), now=now
    )
    assert telemetry.check_stuck(now=now + timedelta(minutes=5)) == set()
    assert telemetry.check_stuck(now=now + timedelta(minutes=5, seconds=1)) == {"slow"}
    store.finalize_runs([outcome(run, "success", now + timedelta(minutes=6))], now=now)
    assert telemetry.check_stuck(now=now + timedelta(minutes=7)) == set()
    with db_engine.connect() as conn:
        (alarm,) = conn.execute(sa.select(alarm_events)).all()
    assert alarm.kind == "stuck" and alarm.closed_at == now + timedelta(minutes=7)


def test_counters_and_histograms_persist(store: Store, db_engine: sa.Engine) -> None:
    """Finalize increments outcome counters and duration/start-delay buckets exactly."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    now = T0 + timedelta(minutes=1, seconds=0.02)
    (run,) = store.dispatch_claimed(
        store.claim_due_schedules(now=now, limit=1, lease=LEASE), now=now
    )
    store.finalize_runs([outcome(run, "success", now + timedelta(seconds=3))], now=now)
    row = schedule_row(db_engine, "a")
    assert row.runs_success_total == 1 and row.last_success_at == now + timedelta(seconds=3)
    hist = DURATION_HISTOGRAM.read(row._mapping)
    assert hist.count == 1 and hist.sum == pytest.approx(3.0)
    assert dict(hist.cumulative())[5] == 1 and dict(hist.cumulative())[2.5] == 0
    assert START_DELAY_HISTOGRAM.read(row._mapping).count == 1


def test_sync_keeps_counters_and_disables_removed_tasks(store: Store, db_engine: sa.Engine) -> None:
    """Editing a task keeps its counters; a task gone from the file is disabled, not deleted."""
    store.sync_tasks(
        tasks(
            {"name": "a", "command": ["true"], "every": "1m"},
            {"name": "b", "command": ["true"], "every": "1m"},
        ),
        now=T0,
    )
    with db_engine.begin() as conn:
        conn.execute(schedules.update().where(schedules.c.name == "a").values(runs_success_total=7))
    result = store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "2m"}), now=T0)
    assert result.updated == ["a"] and result.disabled == ["b"]
    a, b = schedule_row(db_engine, "a"), schedule_row(db_engine, "b")
    assert a.runs_success_total == 7 and a.schedule_expr == "every 2m"
    assert not b.enabled and b.due_at is None


def test_pause_resume_and_run_now(store: Store, db_engine: sa.Engine) -> None:
    """Paused tasks are not claimed; resume skips the paused ticks; run-now runs once."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    store.pause("a", reason="maintenance", by="ops", now=T0)
    assert schedule_row(db_engine, "a").pause_reason == "maintenance"
    assert store.claim_due_schedules(now=T0 + timedelta(hours=1), limit=5, lease=LEASE) == []
    store.resume("a", now=T0 + timedelta(hours=1))
    row = schedule_row(db_engine, "a")
    assert not row.paused and row.next_run_at == T0 + timedelta(hours=1, minutes=1)
    store.run_now("a", now=T0 + timedelta(hours=1, seconds=5))
    now = T0 + timedelta(hours=1, seconds=6)
    dispatched = store.dispatch_claimed(
        store.claim_due_schedules(now=now, limit=5, lease=LEASE), now=now
    )
    assert [(d.trigger, d.scheduled_for) for d in dispatched] == [
        ("manual", T0 + timedelta(hours=1, seconds=5))
    ]
    assert schedule_row(db_engine, "a").next_run_at == T0 + timedelta(hours=1, minutes=1)
    assert schedule_row(db_engine, "a").missed_runs_total == 0


def test_unknown_task_and_run_raise_lookup_errors(store: Store) -> None:
    """Controls on a missing task or run raise errors naming it."""
    with pytest.raises(TaskLookupError, match="'nope'"):
        store.pause("nope", reason="x", by="y", now=T0)
    with pytest.raises(RunLookupError, match="424242"):
        store.request_cancel(424242, reason="x")


def test_overlap_skip_records_skipped(store: Store, db_engine: sa.Engine) -> None:
    """With overlap=skip a tick due while the previous run is running is stored as skipped."""
    store.sync_tasks(
        tasks({"name": "a", "command": ["true"], "every": "1m", "overlap": "skip"}), now=T0
    )
    for minute in (1, 2):
        now = T0 + timedelta(minutes=minute)
        store.dispatch_claimed(store.claim_due_schedules(now=now, limit=1, lease=LEASE), now=now)
    statuses = [r.status for r in runs(db_engine)]
    assert statuses == ["running", "skipped"]
    assert schedule_row(db_engine, "a").runs_skipped_total == 1


def test_missed_gap_is_one_row(store: Store, db_engine: sa.Engine) -> None:
    """A long gap is stored as one `missed` row with its count and span, and counted."""
    store.sync_tasks(
        tasks(
            {
                "name": "a",
                "command": ["true"],
                "every": "1m",
                "misfire": "skip",
                "misfire_grace": "30s",
            }
        ),
        now=T0,
    )
    now = T0 + timedelta(minutes=120, seconds=45)
    store.dispatch_claimed(store.claim_due_schedules(now=now, limit=1, lease=LEASE), now=now)
    (row,) = runs(db_engine)
    assert (row.status, row.missed_count) == ("missed", 120)
    assert row.missed_first_at == T0 + timedelta(
        minutes=1
    ) and row.missed_last_at == T0 + timedelta(minutes=120)
    assert schedule_row(db_engine, "a").missed_runs_total == 120


def test_instance_heartbeat_returns_cancel_requests(store: Store, db_engine: sa.Engine) -> None:
    """A cancel flagged from another host reaches the owner at its next heartbeat."""
    now, run = dispatch_one_run(store)
    assert Store(db_engine, instance_id="cli").request_cancel(run.run_id, reason="ops") == "running"
    assert store.heartbeat(now=now, running_runs=1) == [(run.run_id, "ops")]
    with db_engine.connect() as conn:
        inst = conn.execute(sa.select(instances)).one()
    assert inst.last_heartbeat_at == now and inst.running_runs == 1


def test_look_ahead_leaves_a_tick_that_would_be_skipped_until_it_is_due(
    store: Store, db_engine: sa.Engine
) -> None:
    """overlap=skip with the previous run in flight: a tick inside the look-ahead window is
    not recorded skipped ahead of time (the run may finish before it); once due, it is."""
    store.sync_tasks(
        tasks({"name": "a", "command": ["true"], "every": "1m", "overlap": "skip"}), now=T0
    )
    store.claim_and_dispatch(now=T0 + timedelta(minutes=1), limit=1, lease=LEASE)
    early = T0 + timedelta(minutes=2) - timedelta(seconds=0.1)
    claimed, dispatched = store.claim_and_dispatch(
        now=early, limit=1, lease=LEASE, look_ahead=timedelta(seconds=0.25)
    )
    assert claimed == 1 and dispatched == []
    sched = schedule_row(db_engine, "a")
    assert sched.next_run_at == T0 + timedelta(minutes=2) and sched.claimed_by is None
    # Not claimed again before the tick: the window's later passes do not spin on it.
    assert sched.claimed_until == T0 + timedelta(minutes=2)
    assert store.claim_and_dispatch(
        now=early + timedelta(seconds=0.05), limit=1, lease=LEASE, look_ahead=timedelta(seconds=1)
    ) == (0, [])
    assert [r.status for r in runs(db_engine)] == ["running"]
    after = T0 + timedelta(minutes=2, microseconds=1)
    store.claim_and_dispatch(now=after, limit=1, lease=LEASE, look_ahead=timedelta(seconds=0.25))
    assert [r.status for r in runs(db_engine)] == ["running", "skipped"]


def test_look_ahead_dispatches_with_the_tick_as_start_time(
    store: Store, db_engine: sa.Engine
) -> None:
    """A tick inside the window is dispatched now, to start at its own time."""
    store.sync_tasks(tasks({"name": "a", "command": ["true"], "every": "1m"}), now=T0)
    now = T0 + timedelta(minutes=1) - timedelta(seconds=0.2)
    _, (run,) = store.claim_and_dispatch(
        now=now, limit=1, lease=LEASE, look_ahead=timedelta(seconds=0.25)
    )
    assert run.scheduled_for == T0 + timedelta(minutes=1) == run.not_before
    assert run.started_at == now
    assert schedule_row(db_engine, "a").next_run_at == T0 + timedelta(minutes=2)
