"""What the health rows and alarms say equals what the run rows say: review findings of the
"numbers you can trust" issue, each pinned by a test that failed before its fix."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from scheduler_core.models import task_health, task_runs
from scheduler_core.store import Store
from scheduler_core.testing import run_cycle, wait_for_completions
from tests.core.conftest import failing_with_one_retry, tasks


def health_rows(engine: sa.Engine, task: str) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(task_health)
                .where(task_health.c.task_name == task)
                .order_by(task_health.c.instance_id)
            )
        )


def runs_of(engine: sa.Engine, task: str) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(task_runs).where(task_runs.c.task_name == task).order_by(task_runs.c.id)
            )
        )


def test_a_short_runs_start_reaches_the_health_row(make_scheduler, clock, db_engine) -> None:
    """Each run's real start is the health row's last start, also for runs that finish
    before their start would be written on its own (their start is folded into the finish)."""
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks({"name": "quick", "callable": "os:getpid", "every": "1h"}), now=clock.now()
    )
    scheduler = make_scheduler()
    for _ in range(3):
        clock.advance(3600)
        assert run_cycle(scheduler) == 1
        runs = runs_of(db_engine, "quick")
        (health,) = health_rows(db_engine, "quick")
        assert health.last_started_at == runs[-1].started_at
        assert health.last_finished_at == runs[-1].finished_at
    assert len({r.started_at for r in runs}) == 3


def test_health_stops_saying_running_when_the_outcome_is_rejected(
    make_scheduler, clock, db_engine
) -> None:
    """A run reaped as abandoned by another instance finishes here later: its outcome is
    rejected, and this instance's health row no longer says the task is running."""
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks({"name": "slow", "command": ["sleep", "0.3"], "every": "1h"}), now=clock.now()
    )
    scheduler = make_scheduler()
    clock.advance(3600)
    assert scheduler.step() == 1
    scheduler.telemetry.write_starts(older_than=0)
    assert [r.is_running for r in health_rows(db_engine, "slow")] == [True]
    with db_engine.begin() as conn:  # as a survivor's reaper would
        conn.execute(
            task_runs.update()
            .where(task_runs.c.task_name == "slow")
            .values(status="abandoned", finished_at=clock.now())
        )
    wait_for_completions(scheduler, 1)
    scheduler.step()
    assert scheduler.running_count == 0
    assert [r.status for r in runs_of(db_engine, "slow")] == ["abandoned"]
    assert [r.is_running for r in health_rows(db_engine, "slow")] == [False]


def test_rejoining_after_the_instance_row_was_removed_keeps_live_runs(
    make_scheduler, clock, db_engine
) -> None:
    """An admin on another host removed this instance's row: the next heartbeat registers
    it again without marking its own live runs abandoned, and their outcomes are kept."""
    from scheduler_core.models import instances

    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks({"name": "live", "command": ["sleep", "0.5"], "every": "1h"}), now=clock.now()
    )
    scheduler = make_scheduler()
    clock.advance(3600)
    assert scheduler.step() == 1
    with db_engine.begin() as conn:
        conn.execute(instances.delete().where(instances.c.instance_id == "inst-a"))
    scheduler.heartbeat()
    with db_engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(instances.c.state).where(instances.c.instance_id == "inst-a")
            ).scalar_one()
            == "running"
        )
    assert [r.status for r in runs_of(db_engine, "live")] == ["running"]
    wait_for_completions(scheduler, 1)
    scheduler.step()
    assert [r.status for r in runs_of(db_engine, "live")] == ["success"]


def test_heartbeats_are_timed_by_the_injected_monotonic_clock(db_engine, clock) -> None:
    """The engine times its heartbeats with the same monotonic clock as its lease: a test
    (or a paused process) that moves that clock past the interval gets a heartbeat."""
    from scheduler_core.models import instances
    from scheduler_core.runtime import EngineSettings, Scheduler

    mono = [1000.0]
    settings = EngineSettings(instance_id="inst-m", health_listen=None, heartbeat_interval=5)
    scheduler = Scheduler(
        engine=db_engine, settings=settings, clock=clock, monotonic=lambda: mono[0]
    )
    scheduler.start()
    try:
        scheduler.step()  # the first pass heartbeats

        def beat() -> object:
            with db_engine.connect() as conn:
                return conn.execute(
                    sa.select(instances.c.last_heartbeat_at).where(
                        instances.c.instance_id == "inst-m"
                    )
                ).scalar_one()

        first = beat()
        clock.advance(1)
        scheduler.step()
        assert beat() == first  # 0 s of monotonic time passed: no heartbeat due
        clock.advance(1)
        mono[0] += 6
        scheduler.step()
        assert beat() == first + timedelta(seconds=2)
    finally:
        scheduler.request_stop()
        scheduler.drain()


def test_admin_commands_retry_a_conflict_instead_of_failing(monkeypatch) -> None:
    """A transaction aborted by a deadlock (40P01) or serialization failure (40001) runs
    again; any other database error is raised at once."""
    from scheduler_core.retrying import retry_conflicts

    class Orig(Exception):
        def __init__(self, sqlstate: str) -> None:
            super().__init__(f"sqlstate {sqlstate}")
            self.sqlstate = sqlstate

    def failing(sqlstates: list[str]):
        calls: list[int] = []

        @retry_conflicts(attempts=3, sleep=lambda _s: None)
        def work() -> str:
            calls.append(1)
            if len(calls) <= len(sqlstates):
                raise sa.exc.OperationalError("UPDATE ...", {}, Orig(sqlstates[len(calls) - 1]))
            return "done"

        return work, calls

    work, calls = failing(["40P01", "40001"])
    assert work() == "done" and len(calls) == 3
    work, calls = failing(["40P01", "40P01", "40P01"])
    with __import__("pytest").raises(sa.exc.OperationalError):
        work()
    assert len(calls) == 3
    work, calls = failing(["23505"])
    with __import__("pytest").raises(sa.exc.OperationalError):
        work()
    assert len(calls) == 1


def test_missed_ticks_open_an_alarm_that_closes_after_the_next_success(
    make_scheduler, clock, db_engine
) -> None:
    """The contract's `missed` alarm kind: opened when a gap of ticks is recorded missed,
    closed at the first heartbeat after the task succeeded again."""
    from scheduler_core.models import alarm_events

    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks(
            {
                "name": "gappy",
                "callable": "os:getpid",
                "every": "1m",
                "misfire": "run_once",
                "misfire_grace": "30s",
            }
        ),
        now=clock.now(),
    )

    def alarms() -> list[tuple[str, str, bool]]:
        with db_engine.connect() as conn:
            return [
                (r.task_name, r.kind, r.closed_at is None)
                for r in conn.execute(sa.select(alarm_events).order_by(alarm_events.c.id))
            ]

    scheduler = make_scheduler()
    clock.advance(30 * 60)  # 30 ticks fell while no instance ran: missed, then one run
    assert run_cycle(scheduler) == 1
    assert alarms() == [("gappy", "missed", True)]
    scheduler.heartbeat()  # the run succeeded after the alarm opened
    assert alarms() == [("gappy", "missed", False)]
    assert sorted(r.status for r in runs_of(db_engine, "gappy")) == ["missed", "success"]


def test_each_failed_tick_keeps_its_retry_while_another_is_pending(
    make_scheduler, clock, db_engine
) -> None:
    """A tick that fails while an earlier tick's retry is still pending gets its own retry
    (queued behind the first), instead of counting as a final failure with no retry."""
    from scheduler_core.models import schedules

    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks(failing_with_one_retry("flaky", every="1m", delay="90s")),
        now=clock.now(),
    )
    t0 = clock.now()

    def row() -> sa.Row:
        with db_engine.connect() as conn:
            return conn.execute(sa.select(schedules).where(schedules.c.name == "flaky")).one()

    scheduler = make_scheduler()
    clock.advance(60)
    assert run_cycle(scheduler) == 1  # tick 1 fails: its retry is due at 150 s
    clock.advance(60)
    assert run_cycle(scheduler) == 1  # tick 2 fails while tick 1's retry is pending
    stored = row()
    assert stored.consecutive_failures == 0
    assert (stored.retry_at, stored.retry_scheduled_for, stored.retry_attempt) == (
        t0 + timedelta(seconds=150),
        t0 + timedelta(seconds=60),
        2,
    )
    assert stored.retries_queued is not None
    clock.advance(30)
    assert run_cycle(scheduler) == 1  # tick 1's retry
    stored = row()
    assert (stored.retry_at, stored.retry_scheduled_for, stored.retry_attempt) == (
        t0 + timedelta(seconds=210),
        t0 + timedelta(seconds=120),
        2,
    )
    assert stored.retries_queued is None
    assert stored.consecutive_failures == 1  # tick 1's final failure
    assert [(r.scheduled_for - t0, r.attempt, r.trigger) for r in runs_of(db_engine, "flaky")] == [
        (timedelta(seconds=60), 1, "schedule"),
        (timedelta(seconds=120), 1, "schedule"),
        (timedelta(seconds=60), 2, "retry"),
    ]
