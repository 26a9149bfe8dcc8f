"""Process faults: kill -9, a paused owner, a crash between claim and dispatch, a restart.

Real ``schedctl scheduler`` processes on the throwaway PostgreSQL where the fault is about
processes; in-process schedulers with a fake clock where the fault is about one boundary.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine
from scheduler_core.models import instances, schedules, task_runs
from scheduler_core.runtime import EngineSettings, Scheduler
from scheduler_core.store import Store
from scheduler_core.store.sync import new_schedule_row
from scheduler_core.testing import FakeClock, wait_for_completions
from tests.reliability.conftest import account_ticks, fetch_runs, wait_for, write_config

pytestmark = [pytest.mark.reliability]
SECOND = timedelta(seconds=1)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def running_of(engine: sa.Engine, instance_id: str, task: str | None = None) -> set[int]:
    stmt = sa.select(task_runs.c.id).where(
        task_runs.c.status == "running", task_runs.c.instance_id == instance_id
    )
    if task is not None:
        stmt = stmt.where(task_runs.c.task_name == task)
    with engine.connect() as conn:
        return set(conn.execute(stmt).scalars())


def statuses(engine: sa.Engine, ids: set[int]) -> dict[int, sa.Row]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(task_runs.c.id, task_runs.c.status, task_runs.c.error_message).where(
                task_runs.c.id.in_(list(ids))
            )
        )
        return {r.id: r for r in rows}


def all_abandoned(engine: sa.Engine, ids: set[int]) -> dict[int, sa.Row] | None:
    rows = statuses(engine, ids)
    return rows if all(r.status == "abandoned" for r in rows.values()) else None


def no_lingering_transactions(url: str) -> str:
    """A paused process must not hold row locks for long (see docs/reliability.md)."""
    return f"{url}?options=-c%20idle_in_transaction_session_timeout%3D2000"


@pytest.mark.postgres
def test_kill_9_of_one_of_three_instances_loses_and_repeats_nothing(
    pg_url: str, tmp_path: Path, scheduler_processes, figures
) -> None:
    """kill -9 of a random instance at random moments (restarted at once or after its lease):
    every tick of every task is recorded exactly once, each killed run as abandoned."""
    seed = int(os.environ.get("SCHEDCTL_RELIABILITY_SEED", "0")) or random.randrange(1, 10**6)
    rng = random.Random(seed)
    names = [f"job-{i:02d}" for i in range(10)]
    config = write_config(
        tmp_path / "tasks.yaml",
        [f"{{name: {n}, callable: 'time:sleep', args: [0.4], every: 1s}}" for n in names],
    )
    # Longer than a restart of the process on a loaded CI machine takes (a few seconds).
    lease = 10.0
    # At most 3 runs in flight per instance: the work spreads over all three.
    flags = ("--lease", f"{lease:g}s", "--heartbeat-interval", "1s", "--max-running", "3")
    url = no_lingering_transactions(pg_url)
    procs = {i: scheduler_processes(config, url, i, *flags) for i in ("node-a", "node-b", "node-c")}
    engine = create_db_engine(pg_url)
    began = time.monotonic()
    kills: list[dict[str, object]] = []
    try:
        for window, restart_at_once in ((4, True), (12, False), (26, True), (33, True)):
            moment = began + window + rng.uniform(0, 3)
            time.sleep(max(0.0, moment - time.monotonic()))
            # A random instance among those with runs in flight: killing an idle one is easy.
            busy = [i for i in sorted(procs) if running_of(engine, i)]
            victim = procs[rng.choice(busy or sorted(procs))]
            victim.kill9()
            killed_at = time.monotonic()
            in_flight = running_of(engine, victim.instance_id)
            if restart_at_once:
                victim.start()
            rows = (
                wait_for(lambda ids=in_flight: all_abandoned(engine, ids), timeout=lease + 15)
                if in_flight
                else {}
            )
            reaped_after = time.monotonic() - killed_at
            if restart_at_once:
                # The restarted instance reaps its own leftovers at registration, before the
                # survivors' lease-based reaper could (the lease is longer than a restart).
                assert all("restarted" in r.error_message for r in rows.values()), rows
            else:
                assert all("past its lease" in r.error_message for r in rows.values()), rows
                # Not before the lease (less the heartbeat interval the victim had used up).
                assert not in_flight or reaped_after > lease - 2
                victim.start()
            kills.append(
                {
                    "instance": victim.instance_id,
                    "at_s": round(killed_at - began, 1),
                    "in_flight": len(in_flight),
                    "restart": "at once" if restart_at_once else "after lease",
                    "abandoned_after_s": round(reaped_after, 2) if in_flight else None,
                }
            )
        time.sleep(max(0.0, began + 44 - time.monotonic()))
        codes = {i: p.stop() for i, p in procs.items()}
        outputs = "\n".join(p.output() for p in procs.values())
        assert codes == dict.fromkeys(procs, 0), outputs
        rows = fetch_runs(engine)
    finally:
        engine.dispose()
    account = account_ticks(rows, SECOND, set(names))
    assert not account.duplicates and not account.lost and not account.off_grid, (
        account.as_figures(),
        account.duplicates[:5],
        account.lost[:5],
    )
    assert not [r for r in rows if r.status == "running"]
    assert account.ticks >= 10 * 35, account.as_figures()
    killed_runs = sum(int(k["in_flight"]) for k in kills)  # type: ignore[call-overload]
    assert killed_runs > 0, kills
    assert account.statuses["abandoned"] == killed_runs
    delays = [
        (r.started_at - r.scheduled_for).total_seconds() for r in rows if r.status == "success"
    ]
    figures.update(
        seed=seed,
        kills=kills,
        max_start_delay_s=round(max(delays), 2),
        **account.as_figures(),
    )


@pytest.mark.postgres
def test_paused_owner_is_fenced_and_stops_itself(
    pg_url: str, tmp_path: Path, scheduler_processes, figures
) -> None:
    """SIGSTOP an owner past its lease, then SIGCONT: its runs stay abandoned (the late
    completion write is rejected), it logs why and exits by itself; the other instance
    keeps every tick."""
    quick = [f"quick-{i}" for i in range(4)]
    config = write_config(
        tmp_path / "tasks.yaml",
        [f"{{name: {n}, callable: 'os:getpid', every: 1s}}" for n in quick]
        + [
            "{name: long, callable: 'time:sleep', args: [4], every: 1s, overlap: allow, max_concurrency: 6}"
        ],
    )
    lease = 3.0
    flags = ("--lease", f"{lease:g}s", "--heartbeat-interval", "1s")
    url = no_lingering_transactions(pg_url)
    procs = {i: scheduler_processes(config, url, i, *flags) for i in ("node-a", "node-b")}
    engine = create_db_engine(pg_url)
    try:

        def owner_of_long() -> tuple[str, set[int]] | None:
            time.sleep(1)  # let both instances settle before choosing
            for instance_id in procs:
                ids = running_of(engine, instance_id, "long")
                if ids:
                    return instance_id, ids
            return None

        victim_id, _ = wait_for(owner_of_long, timeout=20)
        victim = procs[victim_id]
        victim.signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        # A COMMIT the victim sent just before the signal may still land: let it.
        time.sleep(0.3)
        frozen = running_of(engine, victim_id)
        assert frozen
        try:
            wait_for(lambda: all_abandoned(engine, frozen), timeout=lease + 10)
        except AssertionError:
            raise AssertionError(
                f"not all abandoned: {statuses(engine, frozen)}\n{victim.output()}"
            ) from None
        abandoned_after = time.monotonic() - stopped_at
        # Keep it paused until its sleeps are over: on SIGCONT it has finished work to report.
        time.sleep(max(0.0, stopped_at + 2 * lease + 1 - time.monotonic()))
        victim.signal(signal.SIGCONT)
        resumed_at = time.monotonic()
        assert victim.proc is not None
        victim.proc.wait(timeout=30)
        exited_after = time.monotonic() - resumed_at
        survivor = next(p for p in procs.values() if p is not victim)
        time.sleep(3)  # the survivor schedules alone for a few ticks
        assert survivor.alive(), survivor.output()
        assert survivor.stop() == 0, survivor.output()
        final = statuses(engine, frozen)
        with engine.connect() as conn:
            state = conn.execute(
                sa.select(instances.c.state).where(instances.c.instance_id == victim_id)
            ).scalar_one()
        rows = fetch_runs(engine)
    finally:
        engine.dispose()
    output = victim.output()
    assert all(r.status == "abandoned" for r in final.values()), final
    assert "lost its lease" in output and "late completion(s) rejected" in output, output
    assert "Traceback" not in output, output
    assert state == "stopped"
    account = account_ticks(rows, SECOND, set(quick))
    assert not account.duplicates and not account.lost, account.as_figures()
    figures.update(
        lease_s=lease,
        runs_frozen=len(frozen),
        abandoned_after_s=round(abandoned_after, 2),
        owner_exit_after_sigcont_s=round(exited_after, 2),
        owner_exit_code=victim.proc.returncode,
        **account.as_figures(),
    )


# ------------------------------------------------------------------ in-process boundaries
def _definitions(*mappings: dict[str, object]) -> list:
    return parse_task_document({"tasks": list(mappings)}, source="test")


def _scheduler(engine: sa.Engine, clock: FakeClock, instance_id: str) -> Scheduler:
    settings = EngineSettings(
        instance_id=instance_id,
        health_listen=None,
        drain_grace=2,
        kill_grace=1,
        claim_lease=30,
        instance_lease=30,
    )
    scheduler = Scheduler(engine=engine, settings=settings, clock=clock)
    scheduler.start()
    return scheduler


def _stop(*schedulers: Scheduler) -> None:
    for s in schedulers:
        s.request_stop()
        s.drain()


def test_crash_between_claim_and_dispatch_runs_the_tick_once_after_the_lease(
    db_engine: sa.Engine,
) -> None:
    """A claim whose owner died before inserting the run row blocks the tick until the claim
    lease expires (not at its last instant); then the tick runs exactly once, and the dead
    owner's late dispatch writes nothing."""
    clock = FakeClock(T0)
    Store(db_engine).sync_tasks(
        _definitions({"name": "hourly", "callable": "os:getpid", "every": "1h"}), now=clock.now()
    )
    tick = clock.advance(3600)
    ghost = Store(db_engine, instance_id="ghost")
    claimed = ghost.claim_due_schedules(now=tick, limit=10, lease=timedelta(seconds=30))
    assert [c.name for c in claimed] == ["hourly"]  # ... and the ghost "crashes" here
    live = _scheduler(db_engine, clock, "live")
    try:
        assert live.step() == 0
        clock.set(claimed[0].claimed_until)
        assert live.step() == 0, "a lease is not reclaimable at claimed_until itself"
        clock.advance(0.001)
        assert live.step() == 1
        wait_for_completions(live, 1)
        live.step()
        assert ghost.dispatch_claimed(claimed, now=clock.now()) == []
    finally:
        _stop(live)
    rows = fetch_runs(db_engine)
    assert [(r.task_name, r.scheduled_for.replace(tzinfo=UTC), r.status) for r in rows] == [
        ("hourly", tick, "success")
    ]


def test_restart_with_the_same_instance_id_reaps_its_leftovers_at_once(
    db_engine: sa.Engine,
) -> None:
    """An instance restarted under the same id marks the runs its previous life left running
    abandoned at registration, without waiting for a lease; the old life's late completion is
    then rejected."""
    clock = FakeClock(T0)
    Store(db_engine).sync_tasks(
        _definitions({"name": "slow", "callable": "time:sleep", "args": [1.0], "every": "1h"}),
        now=clock.now(),
    )
    clock.advance(3600)
    old_life = _scheduler(db_engine, clock, "node-1")
    assert old_life.step() == 1  # then the process "dies": nothing of it writes any more
    [leftover] = fetch_runs(db_engine)
    assert leftover.status == "running"
    new_life = _scheduler(db_engine, clock, "node-1")  # same id, fake clock not advanced
    try:
        [reaped] = fetch_runs(db_engine)
        assert reaped.status == "abandoned" and "restarted" in reaped.error_message
        wait_for_completions(old_life, 1)
        old_life.step()  # the old life's completion arrives late...
        [after] = fetch_runs(db_engine)
        assert after.status == "abandoned" and after.finished_at == reaped.finished_at
    finally:
        _stop(old_life, new_life)


@pytest.mark.postgres
def test_concurrent_first_sync_of_a_task_file_does_not_fail(pg_url: str) -> None:
    """Two instances syncing the same new task file at once both succeed (the second finds
    the first's rows instead of failing on them)."""
    definitions = _definitions({"name": "shared", "callable": "os:getpid", "every": "1m"})
    first, second = create_db_engine(pg_url), create_db_engine(pg_url)
    errors: list[BaseException] = []

    def sync_second() -> None:
        try:
            Store(second, instance_id="second").sync_tasks(definitions, now=T0)
        except Exception as exc:
            errors.append(exc)

    try:
        with first.connect() as conn:
            # The first instance is inside its sync transaction, its INSERT not committed yet.
            conn.execute(schedules.insert(), new_schedule_row(definitions[0], T0))
            thread = threading.Thread(target=sync_second)
            thread.start()
            wait_for(lambda: waiting_on_a_lock(first), timeout=10, interval=0.05)
            conn.commit()
        thread.join(timeout=10)
    finally:
        first.dispose()
        second.dispose()
    assert not errors, errors


def waiting_on_a_lock(engine: sa.Engine) -> bool:
    """A fresh connection each time: pg_stat_activity is a per-transaction snapshot."""
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )
