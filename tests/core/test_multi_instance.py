"""Several real `schedctl scheduler` processes on one PostgreSQL: no tick runs twice or is lost,
and a killed instance's runs are marked abandoned while the survivors keep every schedule."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine
from scheduler_core.models import instances, task_runs

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
SCHEDCTL = [sys.executable, "-m", "scheduler_core.cli"]
TICK = timedelta(seconds=1)


def start_instances(
    config: Path, url: str, ids: list[str], *extra: str
) -> list[subprocess.Popen[str]]:
    procs = []
    for instance_id in ids:
        procs.append(
            subprocess.Popen(
                [
                    *SCHEDCTL,
                    "scheduler",
                    "--config",
                    str(config),
                    "--database-url",
                    url,
                    "--instance-id",
                    instance_id,
                    "--health-listen",
                    "off",
                    "--poll-interval",
                    "200ms",
                    "--log-level",
                    "WARNING",
                    *extra,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def stop_all(procs: list[subprocess.Popen[str]]) -> str:
    output = []
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        output.append(proc.stdout.read() if proc.stdout else "")
    return "\n".join(output)


def run_instances(
    config: Path, url: str, ids: list[str], seconds: float, *extra: str
) -> tuple[list[sa.Row], str]:
    """Run ``ids`` as scheduler processes for ``seconds``, stop them (each must exit 0),
    and return every run row and what the processes printed."""
    procs = start_instances(config, url, ids, *extra)
    try:
        time.sleep(seconds)
    finally:
        output = stop_all(procs)
    assert all(p.returncode == 0 for p in procs), output
    engine = create_db_engine(url)
    try:
        rows = fetch_runs(engine)
    finally:
        engine.dispose()
    assert rows, output
    return rows, output


def fetch_runs(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(task_runs).order_by(task_runs.c.id)))


def assert_contiguous(ticks: list, *, task: str) -> None:
    ordered = sorted(ticks)
    gaps = [(a, b) for a, b in itertools.pairwise(ordered) if b - a != TICK]
    assert not gaps, f"{task}: ticks not run exactly once, gaps/dupes at {gaps[:3]}"


def test_three_instances_run_every_tick_exactly_once(pg_url: str, tmp_path: Path) -> None:
    """3 processes, 20 tasks every 1s, 30 s: no duplicate tick, no lost tick, complete rows."""
    config = tmp_path / "tasks.yaml"
    config.write_text(
        "tasks:\n"
        + "".join(
            f"  - {{name: job-{i:02d}, callable: 'os:getpid', every: 1s}}\n" for i in range(20)
        )
    )
    # The scenario itself is 30 s of real scheduling.
    rows, output = run_instances(config, pg_url, ["node-a", "node-b", "node-c"], 30)
    statuses = {r.status for r in rows}
    assert statuses <= {"success"}, f"unexpected statuses {statuses}\n{output}"
    per_task: dict[str, list] = defaultdict(list)
    seen: set[tuple[str, object]] = set()
    for r in rows:
        key = (r.task_name, r.scheduled_for)
        assert key not in seen, f"tick ran twice: {key}"
        seen.add(key)
        per_task[r.task_name].append(r.scheduled_for)
        assert r.started_at and r.finished_at and r.duration_seconds is not None and r.instance_id
    assert len(per_task) == 20
    for task, ticks in per_task.items():
        assert len(ticks) >= 25, f"{task}: only {len(ticks)} runs in 30 s"
        assert_contiguous(ticks, task=task)
    # All three were live members (an instance claims up to its capacity; with no-op tasks
    # one may take every tick, which is fine: the others take over when it is full or dies).
    engine = create_db_engine(pg_url)
    try:
        with engine.connect() as conn:
            states = dict(conn.execute(sa.select(instances.c.instance_id, instances.c.state)).all())
    finally:
        engine.dispose()
    assert states == {"node-a": "stopped", "node-b": "stopped", "node-c": "stopped"}


def test_killed_instance_runs_become_abandoned_and_survivors_continue(
    pg_url: str, tmp_path: Path
) -> None:
    """kill -9 of an instance mid-run: its running rows become abandoned after the lease;
    the survivors keep every schedule running."""
    config = tmp_path / "tasks.yaml"
    config.write_text(
        "tasks:\n"
        + "".join(
            f"  - {{name: job-{i:02d}, callable: 'os:getpid', every: 1s}}\n" for i in range(20)
        )
        + "  - {name: long, callable: 'time:sleep', args: [4], every: 1s, overlap: allow, max_concurrency: 12}\n"
    )
    procs = start_instances(
        config,
        pg_url,
        ["node-a", "node-b", "node-c"],
        "--lease",
        "3s",
        "--heartbeat-interval",
        "1s",
    )
    engine = create_db_engine(pg_url)
    try:
        victim_id = None
        deadline = time.monotonic() + 20
        while victim_id is None and time.monotonic() < deadline:
            time.sleep(0.5)
            with engine.connect() as conn:
                owner = conn.execute(
                    sa.select(task_runs.c.instance_id)
                    .where(task_runs.c.status == "running", task_runs.c.task_name == "long")
                    .limit(1)
                ).scalar()
            if owner and time.monotonic() > deadline - 14:
                victim_id = owner
        assert victim_id is not None, "no run in flight to kill"
        with engine.connect() as conn:
            victim_pid = conn.execute(
                sa.select(instances.c.pid).where(instances.c.instance_id == victim_id)
            ).scalar_one()
            in_flight = {
                r.id
                for r in conn.execute(
                    sa.select(task_runs.c.id).where(
                        task_runs.c.status == "running", task_runs.c.instance_id == victim_id
                    )
                )
            }
        victim = next(p for p in procs if p.pid == victim_pid)
        os.kill(victim_pid, signal.SIGKILL)
        victim.wait(timeout=10)
        killed_at = time.monotonic()
        time.sleep(12)  # lease (3 s) + heartbeat + 8 s of survivors scheduling alone
        survivors = [p for p in procs if p is not victim]
        output = stop_all(survivors)
        assert all(p.returncode == 0 for p in survivors), output
        rows = fetch_runs(engine)
    finally:
        engine.dispose()
    by_id = {r.id: r for r in rows}
    assert in_flight and all(by_id[i].status == "abandoned" for i in in_flight)
    assert all(r.status != "running" for r in rows)
    abandoned_at = min(by_id[i].finished_at for i in in_flight)
    # Survivors: after the kill, every 1 s task kept running on every tick.
    for i in range(20):
        ticks = [
            r.scheduled_for
            for r in rows
            if r.task_name == f"job-{i:02d}" and r.scheduled_for > abandoned_at
        ]
        assert len(ticks) >= 5, f"job-{i:02d} stopped after the kill"
        assert_contiguous(ticks, task=f"job-{i:02d}")
        assert {
            r.instance_id
            for r in rows
            if r.task_name == f"job-{i:02d}" and r.scheduled_for > abandoned_at
        } <= {"node-a", "node-b", "node-c"} - {victim_id}
    assert time.monotonic() - killed_at < 60
