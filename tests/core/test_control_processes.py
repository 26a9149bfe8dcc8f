"""Run control across real processes: cancel from another process, retries across a restart,
and cleanup interleaving with claims. Each runs on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from scheduler_core.db import create_db_engine
from scheduler_core.models import schedules, task_runs
from scheduler_core.retention import RetentionPolicy, run_cleanup
from scheduler_core.store import Store
from scheduler_core.testing import FakeClock
from tests.core.conftest import T0, tasks
from tests.core.test_cli import run_rows, wait_for
from tests.core.test_engine import pid_alive

SCHEDCTL = [sys.executable, "-m", "scheduler_core.cli"]


def task_synced(url: str, name: str) -> bool:
    engine = create_db_engine(url)
    try:
        with engine.connect() as conn:
            return (
                conn.execute(sa.select(schedules.c.name).where(schedules.c.name == name)).first()
                is not None
            )
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def start_scheduler(config: Path, url: str, instance: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*SCHEDCTL, "scheduler", "--config", str(config), "--database-url", url, "--instance-id", instance,
         "--health-listen", "off", "--poll-interval", "100ms", "--heartbeat-interval", "1s", "--no-cleanup"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def stop(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.stdout.read() if proc.stdout else ""


def test_cancel_from_second_process_kills_command_and_sigterm_ignoring_child(
    db_url: str, tmp_path: Path
) -> None:
    """`schedctl cancel` from another process: sleep 600 and a child ignoring SIGTERM are gone
    within heartbeat + grace, and the run reads cancelled."""
    leader, child = tmp_path / "leader.pid", tmp_path / "child.pid"
    script = (
        f"echo $$ > {leader}; (trap '' TERM; exec sleep 600) & echo $! > {child}; sleep 600; wait"
    )
    config = tmp_path / "tasks.yaml"
    config.write_text(
        "tasks:\n"
        f"  - {{name: long, command: ['sh', '-c', \"{script}\"], every: 1h, timeout_grace: 1s}}\n"
    )
    proc = start_scheduler(config, db_url, "owner")
    try:
        assert wait_for(lambda: task_synced(db_url, "long"), 20)
        result = subprocess.run(
            [*SCHEDCTL, "run-now", "long", "--database-url", db_url], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert wait_for(
            lambda: leader.exists() and child.exists() and child.read_text().strip() != "", 20
        )
        leader_pid, child_pid = int(leader.read_text()), int(child.read_text())
        run_id = next(r.id for r in run_rows(db_url) if r.status == "running")
        start = time.monotonic()
        result = subprocess.run(
            [*SCHEDCTL, "cancel", str(run_id), "--reason", "wrong input", "--database-url", db_url],
            capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert wait_for(lambda: not pid_alive(leader_pid) and not pid_alive(child_pid), 10)
        gone_after = time.monotonic() - start
        assert wait_for(
            lambda: next(r for r in run_rows(db_url) if r.id == run_id).status == "cancelled", 10
        )
    finally:
        output = stop(proc)
    run = next(r for r in run_rows(db_url) if r.id == run_id)
    assert run.status == "cancelled" and "wrong input" in run.error_message, output
    assert gone_after < 1 + 1 + 1.5, (
        f"processes gone after {gone_after:.1f}s (heartbeat 1s + grace 1s)"
    )


def test_retry_survives_a_restart_between_attempts(db_url: str, tmp_path: Path) -> None:
    """A failed attempt's retry is kept in SQL: kill -9 the scheduler, restart it, attempt 2 runs."""
    config = tmp_path / "tasks.yaml"
    config.write_text(
        "tasks:\n  - {name: flaky, command: ['false'], every: 1h, retries: {max: 1, backoff: fixed, delay: 4s}}\n"
    )
    first = start_scheduler(config, db_url, "node-1")
    try:
        assert wait_for(lambda: task_synced(db_url, "flaky"), 20)
        subprocess.run(
            [*SCHEDCTL, "run-now", "flaky", "--database-url", db_url],
            check=True,
            capture_output=True,
        )
        assert wait_for(lambda: any(r.status == "failure" for r in run_rows(db_url)), 20)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        stop(first)
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(sa.select(schedules).where(schedules.c.name == "flaky")).one()
    engine.dispose()
    assert row.retry_attempt == 2 and row.retry_at is not None
    second = start_scheduler(config, db_url, "node-1")
    try:
        assert wait_for(
            lambda: len([r for r in run_rows(db_url) if r.status == "failure"]) == 2, 30
        )
    finally:
        output = stop(second)
    runs = run_rows(db_url)
    assert [(r.attempt, r.trigger, r.status) for r in runs] == [
        (1, "manual", "failure"),
        (2, "retry", "failure"),
    ], output
    engine = create_db_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(sa.select(schedules).where(schedules.c.name == "flaky")).one()
    engine.dispose()
    assert row.consecutive_failures == 1 and row.runs_failure_total == 2 and row.retry_at is None


def test_cleanup_of_100k_rows_interleaves_with_claims(db_engine: sa.Engine) -> None:
    """Cleanup deletes 100,000 history rows in batches while claims keep completing between them."""
    store = Store(db_engine, instance_id="inst-a")
    store.sync_tasks(
        tasks(*({"name": f"t{i}", "callable": "os:getpid", "every": "1s"} for i in range(20))),
        now=T0,
    )
    old = T0 - timedelta(days=60)
    batch = [
        {"task_name": f"t{i % 20}", "scheduled_for": old + timedelta(seconds=i), "attempt": 1, "trigger": "schedule",
         "status": "success", "started_at": old, "finished_at": old, "duration_seconds": 0.1,
         "cancel_requested": False, "instance_id": "old"}
        for i in range(100_000)
    ]  # fmt: skip
    with db_engine.begin() as conn:
        for start in range(0, len(batch), 10_000):
            conn.execute(task_runs.insert(), batch[start : start + 10_000])
    clock = FakeClock(T0)
    progress: list[int] = []
    claims_during: list[int] = []
    done = threading.Event()

    def cleanup() -> None:
        try:
            run_cleanup(
                db_engine,
                policy=RetentionPolicy(days=30, batch_size=2000),
                now=T0,
                progress=lambda d, _t: progress.append(d),
            )
        finally:
            done.set()

    worker = threading.Thread(target=cleanup)
    worker.start()
    claimed = 0
    while not done.is_set():
        clock.advance(1)
        before = len(progress)
        claimed_now = store.claim_due_schedules(
            now=clock.now(), limit=50, lease=timedelta(seconds=30)
        )
        store.dispatch_claimed(claimed_now, now=clock.now())
        claimed += len(claimed_now)
        if 0 < before < 50:  # cleanup had started and had batches left
            claims_during.append(len(claimed_now))
    worker.join()
    with db_engine.connect() as conn:
        left = conn.execute(
            sa.select(sa.func.count())
            .select_from(task_runs)
            .where(task_runs.c.instance_id == "old")
        ).scalar()
    assert left == 0 and progress[-1] == 100_000 and len(progress) == 50
    assert claims_during and sum(claims_during) > 0, "no claim completed while cleanup was running"
