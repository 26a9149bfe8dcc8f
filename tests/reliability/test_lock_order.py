"""Deadlocks under control actions (PostgreSQL, real processes).

Finalize locks a batch's run rows (the fence), then their schedule rows (failure state,
retries, tallies); dispatch with ``overlap: replace`` locks schedule rows (the claim) and
then the running rows it flags for replacement; ``schedctl emergency-stop`` updates every
schedule row, then every running row. Taken in opposite orders by concurrent transactions,
these deadlock: PostgreSQL aborts one of them (``deadlock detected``), so a scheduler pass
backs off or an admin command fails.

Reproduces the report: "the scheduler logged `database error, retrying in 0.5s:
OperationalError: deadlock detected` in 5 of 7 such runs, and once `schedctl emergency-stop`
itself exited non-zero". Written against 68f6a1c, where the forced interleavings fail every
time and the load test about every other run; acceptance tests for the lock-order fix.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine
from scheduler_core.store import RunOutcome, Store
from tests.reliability.conftest import SCHEDCTL, T0, SchedulerProcess, wait_for, write_config
from tests.support.pgserver import PostgresServer

pytestmark = [pytest.mark.postgres, pytest.mark.reliability]

REPLACING = 40
RETRYING = 10
INSTANCES = 3
#: Seconds of control rounds (emergency-stop / cancel / resume --all) under load.
SCENARIO_S = 24.0


def _deadlocks(server: PostgresServer, dbname: str) -> int:
    """``pg_stat_database.deadlocks`` of ``dbname`` (a fresh stats snapshot)."""
    with server.admin() as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = %s", (dbname,)
        ).fetchone()
        return int(row[0]) if row and row[0] is not None else 0


def _server_log_deadlocks(server: PostgresServer, offset: int) -> list[str]:
    """The deadlock reports (ERROR + DETAIL + STATEMENT lines) the server logged after
    ``offset`` bytes of its log."""
    log = server.tmp / "server.log"
    if not log.exists():
        return []
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    reports, current = [], None
    for line in text.splitlines():
        if "deadlock detected" in line:
            current = [line]
            reports.append(current)
        elif current is not None and (
            line.startswith(("\t", " ")) or re.search(r"\b(DETAIL|HINT|CONTEXT|STATEMENT):", line)
        ):
            current.append(line)
        else:
            current = None
    return ["\n".join(r) for r in reports]


@pytest.mark.slow
def test_control_actions_under_replace_and_retry_load_never_deadlock(
    pg_server: PostgresServer,
    pg_url: str,
    scheduler_processes: Callable[..., SchedulerProcess],
    tmp_path: Path,
    figures: dict[str, Any],
) -> None:
    """3 instances; 40 `overlap: replace` tasks every 1s whose runs last 1.05 s (each ends just
    as its next tick is dispatched: with 1.5 s the collisions were rarer), 10 tasks that
    always fail with 2 quick retries; ~24 s of emergency-stop / cancel / resume --all rounds
    from the CLI. No deadlock: none in any scheduler's output, none counted by PostgreSQL
    for the database, and every CLI command exits 0."""
    dbname = sa.engine.make_url(pg_url).database
    assert dbname
    config = write_config(
        tmp_path / "tasks.yaml",
        [
            f"{{name: rep-{i:02d}, command: [sleep, '1.05'], every: 1s, overlap: replace}}"
            for i in range(REPLACING)
        ]
        + [
            f"{{name: retry-{i:02d}, callable: 'tests.reliability.jobs:fail_with', "
            f"args: [boom], every: 1s, retries: {{max: 2, delay: 200ms}}}}"
            for i in range(RETRYING)
        ],
    )
    log = pg_server.tmp / "server.log"
    log_offset = log.stat().st_size if log.exists() else 0
    deadlocks_before = _deadlocks(pg_server, dbname)
    flags = ("--heartbeat-interval", "1s", "--drain-grace", "3s", "--no-cleanup")
    procs = [scheduler_processes(config, pg_url, f"node-{n}", *flags) for n in "abc"[:INSTANCES]]
    engine = create_db_engine(pg_url)
    commands: list[tuple[list[str], int, str]] = []

    def cli(*args: str) -> None:
        argv = [*SCHEDCTL, *args, "--database-url", pg_url]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=20, env={**os.environ}
            )
            commands.append((list(args), done.returncode, done.stdout + done.stderr))
        except subprocess.TimeoutExpired as exc:
            commands.append((list(args), -1, f"timed out after 20 s: {exc}"))

    def running_ids(limit: int) -> list[int]:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text(
                        "SELECT id FROM scheduler_task_runs WHERE status = 'running' "
                        "ORDER BY random() LIMIT :n"
                    ),
                    {"n": limit},
                ).scalars()
            )

    rounds = 0
    cancels = 0
    try:
        # Load first: runs in flight on every instance before the first control action.
        wait_for(lambda: len(running_ids(50)) >= 20, timeout=15)
        began = time.monotonic()

        def cancel_loop() -> None:
            nonlocal cancels
            while time.monotonic() - began < SCENARIO_S and cancels < 200:
                ids = running_ids(1)
                if not ids:
                    time.sleep(0.1)
                    continue
                cancels += 1
                cli("cancel", str(ids[0]), "--reason", "x")

        canceller = threading.Thread(target=cancel_loop, name="cancel-loop", daemon=True)
        canceller.start()
        while time.monotonic() - began < SCENARIO_S and rounds < 100:
            rounds += 1
            cli("emergency-stop", "--reason", f"round {rounds}")
            time.sleep(0.2)
            cli("resume", "--all")
            time.sleep(0.6)  # let the schedules claim, replace and retry again
        canceller.join(timeout=30)
    finally:
        engine.dispose()
        exit_codes = {p.instance_id: p.stop(timeout=20) for p in procs}
    outputs = {p.instance_id: p.output() for p in procs}
    # The backends flush their statistics when their session ends: give them a moment.
    deadlocks_after = _deadlocks(pg_server, dbname)
    deadline = time.monotonic() + 3.0
    while deadlocks_after == deadlocks_before and time.monotonic() < deadline:
        time.sleep(0.25)
        deadlocks_after = _deadlocks(pg_server, dbname)
    reports = _server_log_deadlocks(pg_server, log_offset)
    engine = create_db_engine(pg_url)
    try:
        with engine.connect() as conn:
            statuses = dict(
                conn.execute(
                    sa.text("SELECT status, count(*) FROM scheduler_task_runs GROUP BY status")
                ).all()
            )
    finally:
        engine.dispose()

    in_output = {
        name: [line for line in out.splitlines() if "deadlock detected" in line]
        for name, out in outputs.items()
    }
    failed = [(args, rc, out.strip()[-600:]) for args, rc, out in commands if rc != 0]
    figures.update(
        rounds=rounds,
        cancels=cancels,
        cli_commands=len(commands),
        cli_failures=len(failed),
        scheduler_deadlock_lines={k: len(v) for k, v in in_output.items()},
        pg_deadlocks=deadlocks_after - deadlocks_before,
        server_log_reports=len(reports),
        statuses=statuses,
    )
    print(
        f"\n{rounds} control rounds, {len(commands)} CLI commands ({len(failed)} failed); "
        f"pg_stat_database.deadlocks {deadlocks_before} -> {deadlocks_after}; "
        f"'deadlock detected' lines per instance {figures['scheduler_deadlock_lines']}; "
        f"runs {statuses}"
    )
    for args, rc, out in failed:
        print(f"--- schedctl {' '.join(args)} exited {rc}:\n{out}")
    for report in reports[:6]:
        print(f"--- server log:\n{report}")

    assert all(rc == 0 for rc in exit_codes.values()), (exit_codes, outputs)
    assert rounds >= 5, f"only {rounds} control rounds in {SCENARIO_S:g} s"
    assert not any(in_output.values()), f"schedulers hit deadlocks: {in_output}"
    assert not failed, f"{len(failed)} of {len(commands)} CLI command(s) failed: {failed[:3]}"
    assert deadlocks_after == deadlocks_before, (
        f"PostgreSQL counted {deadlocks_after - deadlocks_before} deadlock(s) in {dbname}"
    )


# ------------------------------------------------------------------ one interleaving at a time
def _lock_waiters(engine: sa.Engine, dbname: str) -> int:
    """Backends of ``dbname`` waiting for a heavyweight lock (a row or transaction lock)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = :db AND wait_event_type = 'Lock'"
                ),
                {"db": dbname},
            ).scalar_one()
        )


@pytest.mark.parametrize("contender", ["emergency-stop", "replace-dispatch"])
def test_finalize_racing_a_control_action_or_replace_does_not_deadlock(
    pg_server: PostgresServer, pg_url: str, contender: str
) -> None:
    """The interleaving the load test hits by chance, forced: a ``schedctl cancel`` of run R
    (task t) holds R's row for a moment; meanwhile the owner's finalize of R waits for R,
    then emergency-stop (or another instance dispatching t's next tick with overlap=replace)
    takes t's schedule row and also waits for R. When the cancel commits, finalize gets R
    first and asks for t's schedule row: with finalize taking run rows before schedule rows
    and the contender the other way round, PostgreSQL aborts one of them. Both must
    complete, and PostgreSQL must count no deadlock."""
    dbname = sa.engine.make_url(pg_url).database
    assert dbname
    engine = create_db_engine(pg_url)
    try:
        definitions = parse_task_document(
            {
                "tasks": [
                    {"name": "t", "command": ["sleep", "5"], "every": "1s", "overlap": "replace"}
                ]
            },
            source="test",
        )
        owner = Store(engine, instance_id="inst-a")
        owner.sync_tasks(definitions, now=T0)
        first = T0 + timedelta(seconds=1)
        _, (run,) = owner.claim_and_dispatch(now=first, limit=10, lease=timedelta(seconds=30))
        deadlocks_before = _deadlocks(pg_server, dbname)
        errors: dict[str, BaseException] = {}

        def finalize() -> None:
            outcome = RunOutcome(
                run_id=run.run_id, task_name="t", status="success",
                scheduled_for=run.scheduled_for, attempt=run.attempt, started_at=first,
                finished_at=first + timedelta(seconds=0.9),
            )  # fmt: skip
            try:
                owner.finalize_runs([outcome], now=first + timedelta(seconds=0.95))
            except BaseException as exc:  # reported by the test
                errors["finalize"] = exc

        def contend() -> None:
            due = first + timedelta(seconds=1, milliseconds=50)
            try:
                if contender == "emergency-stop":
                    Store(engine, instance_id="cli").emergency_stop(reason="x", by="test", now=due)
                else:
                    Store(engine, instance_id="inst-b").claim_and_dispatch(
                        now=due, limit=10, lease=timedelta(seconds=30)
                    )
            except BaseException as exc:  # reported by the test
                errors[contender] = exc

        with engine.connect() as cancel:  # `schedctl cancel R`, caught mid-transaction
            cancel.execute(
                sa.text(
                    "UPDATE scheduler_task_runs SET cancel_requested = true, "
                    "cancel_reason = 'x' WHERE id = :id"
                ),
                {"id": run.run_id},
            )
            finalizer = threading.Thread(target=finalize, name="finalize", daemon=True)
            finalizer.start()
            wait_for(lambda: _lock_waiters(engine, dbname) >= 1, timeout=10, interval=0.02)
            contender_thread = threading.Thread(target=contend, name=contender, daemon=True)
            contender_thread.start()
            # The contender waits too (for R) — unless it does not need R's row at all.
            wait_for(
                lambda: not contender_thread.is_alive() or _lock_waiters(engine, dbname) >= 2,
                timeout=10,
                interval=0.02,
            )
            cancel.commit()
        # PostgreSQL looks for deadlocks after deadlock_timeout (1 s) of waiting.
        finalizer.join(timeout=15)
        contender_thread.join(timeout=15)
        assert not finalizer.is_alive() and not contender_thread.is_alive(), "still blocked"
    finally:
        engine.dispose()
    deadlocks_after = _deadlocks(pg_server, dbname)
    deadline = time.monotonic() + 1.5
    while deadlocks_after == deadlocks_before and time.monotonic() < deadline:
        time.sleep(0.25)
        deadlocks_after = _deadlocks(pg_server, dbname)
    print(f"\n{contender}: errors {errors!r}; deadlocks {deadlocks_before} -> {deadlocks_after}")
    assert not errors, f"finalize racing {contender} failed: {errors!r}"
    assert deadlocks_after == deadlocks_before, (
        f"PostgreSQL counted {deadlocks_after - deadlocks_before} deadlock(s)"
    )
