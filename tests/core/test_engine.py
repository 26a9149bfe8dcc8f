"""Engine behaviour with real subprocesses and threads, on both backends."""

from __future__ import annotations

import logging
import os
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine
from scheduler_core.models import schedules, task_runs
from scheduler_core.store import Store
from scheduler_core.tasks import TaskDefinition
from scheduler_core.telemetry import TelemetryWriter
from scheduler_core.testing import run_cycle, wait_for_completions
from tests.core.conftest import failing_with_one_retry, tasks


def all_runs(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(task_runs).order_by(task_runs.c.id)))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes once reaped or defunct.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_failing_telemetry_never_fails_the_task(db_engine, clock, tmp_path, caplog) -> None:
    """With telemetry writes failing, each task runs once with its true outcome; one log line."""
    from scheduler_core.runtime import EngineSettings, Scheduler

    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks(
            {"name": "ok", "command": ["true"], "every": "10s"},
            {"name": "bad", "command": ["false"], "every": "10s"},
        ),
        now=clock.now(),
    )
    broken = create_db_engine(f"sqlite:///{tmp_path}/missing-dir/nope.db")
    telemetry = TelemetryWriter(broken, instance_id="inst-a", log_interval=3600)
    scheduler = Scheduler(
        engine=db_engine,
        settings=EngineSettings(instance_id="inst-a", health_listen=None, drain_grace=1),
        clock=clock,
        telemetry=telemetry,
    )
    scheduler.start()
    try:
        with caplog.at_level(logging.ERROR, logger="scheduler_core.telemetry"):
            for _ in range(3):
                clock.advance(10)
                run_cycle(scheduler)
    finally:
        scheduler.request_stop()
        scheduler.drain()
        broken.dispose()
    rows = all_runs(db_engine)
    by_task = {name: [r.status for r in rows if r.task_name == name] for name in ("ok", "bad")}
    assert by_task == {"ok": ["success"] * 3, "bad": ["failure"] * 3}
    telemetry_errors = [r for r in caplog.records if "telemetry write failed" in r.getMessage()]
    # One line per kind of write (start, finish, alarms, the periodic alarm checks...),
    # never one per run.
    assert 1 <= len(telemetry_errors) <= 5
    assert len({r.getMessage().split("(")[1].split(")")[0] for r in telemetry_errors}) == len(
        telemetry_errors
    )


def test_command_timeout_kills_the_process_group(make_scheduler, clock, db_engine) -> None:
    """A command past its timeout is killed (SIGTERM, then SIGKILL) and recorded `timeout`."""
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks(
            {
                "name": "stubborn",
                # The shell ignores SIGTERM, so only the SIGKILL after the grace stops it.
                "command": ["sh", "-c", "trap '' TERM; sleep 30 & wait"],
                "every": "1h",
                "timeout": "500ms",
                "timeout_grace": "300ms",
            }
        ),
        now=clock.now(),
    )
    scheduler = make_scheduler()
    clock.advance(3600)
    start = time.monotonic()
    run_cycle(scheduler, timeout=10)
    (row,) = all_runs(db_engine)
    assert row.status == "timeout" and "timed out after 0.5s" in row.error_message
    assert time.monotonic() - start < 5
    assert row.pid is not None and not pid_alive(row.pid)


def test_sync_callable_timeout_is_recorded(make_scheduler, clock, db_engine) -> None:
    """A sync callable past its timeout is recorded `timeout` at the deadline (thread left to finish)."""
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks(
            {
                "name": "slow",
                "callable": "time:sleep",
                "args": [1.5],
                "every": "1h",
                "timeout": "200ms",
            }
        ),
        now=clock.now(),
    )
    scheduler = make_scheduler()
    clock.advance(3600)
    scheduler.step()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and all_runs(db_engine)[0].status != "timeout":
        time.sleep(0.05)
        scheduler.step()
    (row,) = all_runs(db_engine)
    assert row.status == "timeout" and "cannot be killed" in row.error_message


def test_retry_is_persisted_and_counts_failure_once(make_scheduler, clock, db_engine) -> None:
    """A failed attempt schedules a retry in SQL; only the tick's final failure counts."""
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks(failing_with_one_retry("r", every="1h", delay="10s")),
        now=clock.now(),
    )
    scheduler = make_scheduler()
    clock.advance(3600)
    run_cycle(scheduler)
    with db_engine.connect() as conn:
        row = conn.execute(sa.select(schedules).where(schedules.c.name == "r")).one()
    assert row.retry_attempt == 2 and row.retry_at == clock.now() + __import__(
        "datetime"
    ).timedelta(seconds=10)
    assert row.consecutive_failures == 0
    clock.advance(10)
    run_cycle(scheduler)
    rows = all_runs(db_engine)
    assert [(r.attempt, r.trigger, r.status) for r in rows] == [
        (1, "schedule", "failure"),
        (2, "retry", "failure"),
    ]
    assert rows[0].scheduled_for == rows[1].scheduled_for
    with db_engine.connect() as conn:
        row = conn.execute(sa.select(schedules).where(schedules.c.name == "r")).one()
    assert row.consecutive_failures == 1 and row.retry_at is None and row.runs_failure_total == 2


def test_cancel_from_another_process_kills_command(make_scheduler, clock, db_engine) -> None:
    """A cancel flagged in SQL (as by `schedctl cancel` on another host) kills the command."""
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks({"name": "long", "command": ["sleep", "600"], "every": "1h", "timeout_grace": "1s"}),
        now=clock.now(),
    )
    scheduler = make_scheduler(heartbeat_interval=0.2)
    clock.advance(3600)
    scheduler.step()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and all_runs(db_engine)[0].pid is None:
        time.sleep(0.05)
        pid = next(iter(scheduler._running.values())).pid
        if pid:
            break
    run_id = all_runs(db_engine)[0].id
    assert (
        Store(db_engine, instance_id="admin").request_cancel(run_id, reason="ops said so")
        == "running"
    )
    start = time.monotonic()
    while time.monotonic() - start < 5 and all_runs(db_engine)[0].status == "running":
        time.sleep(0.1)
        scheduler.step()
    (row,) = all_runs(db_engine)
    assert row.status == "cancelled" and row.error_message == "ops said so"
    assert pid and not pid_alive(pid)
    assert time.monotonic() - start < 0.2 + 1 + 1.5  # heartbeat + grace, with slack for the poll


def test_async_callable_runs_on_the_event_loop(make_scheduler, clock, db_engine) -> None:
    """An async callable is awaited and recorded like any other run."""
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks({"name": "a", "callable": "asyncio:sleep", "args": [0.01], "every": "1m"}),
        now=clock.now(),
    )
    scheduler = make_scheduler()
    clock.advance(60)
    run_cycle(scheduler)
    assert [r.status for r in all_runs(db_engine)] == ["success"]


def _every_hour(*names: str) -> list[TaskDefinition]:
    return tasks(
        *({"name": n, "callable": "time:sleep", "args": [0], "every": "1h"} for n in names)
    )


def test_pass_that_stopped_at_its_limit_is_followed_after_the_minimum_pause(
    make_scheduler, clock, db_engine
) -> None:
    """Three ticks due and a batch of two: the pass stops at its limit, so the next pass
    comes ``min_step_interval`` after it, not at the caught-up cadence; the next pass
    claims the third tick, is caught up, and the one after starts a cadence after it."""
    Store(db_engine, instance_id="inst-a").sync_tasks(_every_hour("a", "b", "c"), now=clock.now())
    scheduler = make_scheduler(
        batch_size=2, look_ahead=0.5, caught_up_interval=0.25, min_step_interval=0.02
    )
    clock.advance(3600)
    assert scheduler.step() == 2
    assert scheduler._pause(began=100.0, now=100.01) == 0.02
    wait_for_completions(scheduler, 2)
    assert scheduler.step() == 1
    assert scheduler._pause(began=100.0, now=100.05) == pytest.approx(0.2)
    # A caught-up pass that took longer than the cadence: the minimum pause still applies.
    assert scheduler._pause(began=100.0, now=100.4) == 0.02


def test_caught_up_cadence_is_at_most_half_the_look_ahead(make_scheduler, clock, db_engine) -> None:
    """Ticks entering the look-ahead window must be claimed before they are due: the
    cadence of caught-up passes is capped at half the look-ahead, and without look-ahead
    (ticks claimed only once due) passes keep the minimum pause."""
    Store(db_engine, instance_id="inst-a").sync_tasks(_every_hour("a"), now=clock.now())
    short = make_scheduler(look_ahead=0.1, caught_up_interval=0.25, min_step_interval=0.02)
    clock.advance(3600)
    assert short.step() == 1
    assert short._pause(began=100.0, now=100.01) == pytest.approx(0.04)
    short.request_stop()
    short.drain()
    off = make_scheduler("inst-b", look_ahead=0.0, caught_up_interval=0.25)
    assert off.step() == 0  # nothing due: caught up
    assert off._pause(began=100.0, now=100.0) == off.settings.min_step_interval


def test_a_pass_claims_due_runs_before_it_writes_finished_ones(
    make_scheduler, clock, db_engine, monkeypatch
) -> None:
    """A pass with outcomes to write and runs due claims first: the runs it takes start at
    their time while it writes the outcomes (a long finalize does not make them late).
    Both happen in that one pass, and the finished one-time run's schedule is not kept."""
    at = (clock.now() + timedelta(hours=2)).isoformat()
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks(
            {"name": "first", "callable": "time:sleep", "args": [0], "every": "1h"},
            {"name": "once", "callable": "time:sleep", "args": [0], "at": at},
        ),
        now=clock.now(),
    )
    scheduler = make_scheduler()
    order: list[str] = []
    for name in ("claim_and_dispatch", "finalize_runs"):
        method = getattr(scheduler.store, name)

        def spy(*args: object, _name: str = name, _method=method, **kwargs: object) -> object:
            order.append(_name)
            return _method(*args, **kwargs)

        monkeypatch.setattr(scheduler.store, name, spy)
    clock.advance(3600)
    assert scheduler.step() == 1
    wait_for_completions(scheduler, 1)
    order.clear()
    clock.advance(3600)  # the second tick of "first" and the one-time task are due
    scheduler._hurry.set()  # the outcome is to be written now, not deferred
    assert scheduler.step() == 2
    assert order == ["claim_and_dispatch", "finalize_runs"]
    wait_for_completions(scheduler, 2)
    scheduler.step()
    assert sorted((r.task_name, r.status) for r in all_runs(db_engine)) == [
        ("first", "success"),
        ("first", "success"),
        ("once", "success"),
    ]
    # Only the recurring schedule's interval is memoised: one-time ones are each new.
    assert [interval for _schedule, interval in scheduler._intervals.values()] == [3600]


def test_look_ahead_claims_early_and_starts_on_time(make_scheduler, clock, db_engine) -> None:
    """A tick inside the look-ahead window is dispatched at once (its row reads running)
    but its callable starts at the tick, never before it."""
    from scheduler_core.tasks import register_callable

    called: list[float] = []
    register_callable("test.look_ahead", lambda: called.append(time.monotonic()))
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks({"name": "soon", "callable": "test.look_ahead", "every": "1h"}), now=clock.now()
    )
    scheduler = make_scheduler(look_ahead=2.0)
    clock.advance(3600 - 0.6)  # the tick is 0.6 s away
    stepped_at = time.monotonic()
    assert scheduler.step() == 1
    (row,) = all_runs(db_engine)
    assert row.status == "running"
    wait_for_completions(scheduler, 1, timeout=10)
    assert called and called[0] - stepped_at >= 0.55, called[0] - stepped_at


def test_cancel_of_a_run_waiting_for_its_time_never_starts_it(
    make_scheduler, clock, db_engine
) -> None:
    """Cancelling a run that was claimed ahead and waits for its tick records it
    cancelled, and the callable is never called."""
    from scheduler_core.tasks import register_callable

    called: list[float] = []
    register_callable("test.never", lambda: called.append(time.monotonic()))
    Store(db_engine, instance_id="inst-a").sync_tasks(
        tasks({"name": "later", "callable": "test.never", "every": "1h"}), now=clock.now()
    )
    scheduler = make_scheduler(look_ahead=30.0)
    clock.advance(3600 - 20)  # 20 s before the tick
    assert scheduler.step() == 1
    (row,) = all_runs(db_engine)
    assert scheduler.cancel_local(row.id, "operator changed their mind")
    scheduler.step()
    (row,) = all_runs(db_engine)
    assert (row.status, row.error_message) == ("cancelled", "operator changed their mind")
    assert not called
