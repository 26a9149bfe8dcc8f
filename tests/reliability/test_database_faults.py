"""Database faults: PostgreSQL stopped for 20 s under load, SQLite locked by another writer."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine, upgrade_schema
from scheduler_core.models import task_runs
from scheduler_core.runtime import EngineSettings, Scheduler
from scheduler_core.store import Store
from tests.reliability.conftest import account_ticks, fetch_runs, wait_for, write_config
from tests.support.pgserver import PostgresServer

pytestmark = [pytest.mark.reliability]
SECOND = timedelta(seconds=1)
OUTAGE = 20.0


@pytest.fixture
def own_pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, so stopping it disturbs no other test."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def exporter_up(base: str) -> float | None:
    _, text = http_get(f"{base}/metrics")
    for line in text.splitlines():
        if line.startswith("scheduler_exporter_up "):
            return float(line.split()[1])
    return None


def first_success_after(engine: sa.Engine, moment: datetime) -> datetime | None:
    with engine.connect() as conn:
        value = conn.execute(
            sa.select(sa.func.min(task_runs.c.finished_at)).where(
                task_runs.c.status == "success", task_runs.c.started_at > moment
            )
        ).scalar()
    return value


@pytest.mark.postgres
def test_postgres_outage_backs_off_resumes_and_runs_nothing_twice(
    own_pg: PostgresServer, tmp_path: Path, scheduler_processes, figures
) -> None:
    """PostgreSQL stopped for 20 s with runs in flight: the schedulers neither crash nor spin,
    resume when it is back, record the runs that finished meanwhile and run no tick twice;
    the exporter reports scheduler_exporter_up 0, keeps answering, then recovers."""
    from exporter.server import ExporterServer
    from exporter.settings import ExporterSettings

    url = own_pg.url(own_pg.create_database())
    engine = create_db_engine(url)
    upgrade_schema(engine)
    quick = [f"quick-{i}" for i in range(5)]
    config = write_config(
        tmp_path / "tasks.yaml",
        [f"{{name: {n}, callable: 'os:getpid', every: 1s}}" for n in quick]
        + [
            "{name: long, callable: 'time:sleep', args: [3], every: 2s, overlap: allow, max_concurrency: 3}"
        ],
    )
    flags = ("--lease", "30s", "--heartbeat-interval", "1s")
    procs = [
        scheduler_processes(config, url, i, *flags, log_level="INFO") for i in ("node-a", "node-b")
    ]
    exporter = ExporterServer(
        settings=ExporterSettings(port=0, refresh_interval=1.0, statement_timeout=2.0),
        database_url=url,
    ).start()
    try:
        base = exporter.url
        wait_for(lambda: exporter_up(base) == 1.0, timeout=20)
        wait_for(lambda: first_success_after(engine, datetime.now(UTC) - SECOND), timeout=20)
        time.sleep(3)
        with engine.connect() as conn:
            in_flight = set(
                conn.execute(
                    sa.select(task_runs.c.id).where(task_runs.c.status == "running")
                ).scalars()
            )
        engine.dispose()  # its pooled connections would die with the server anyway
        cpu_before = [p.cpu_seconds() for p in procs]
        own_pg.pause()
        down_at, down_wall = time.monotonic(), datetime.now(UTC)
        wait_for(lambda: exporter_up(base) == 0.0, timeout=15)
        exporter_down_after = time.monotonic() - down_at
        health_status, _ = http_get(f"{base}/health")
        status_code, status_body = http_get(f"{base}/api/v1/status")
        time.sleep(max(0.0, down_at + OUTAGE - time.monotonic()))
        cpu_during = [p.cpu_seconds() - c for p, c in zip(procs, cpu_before, strict=True)]
        alive_during = [p.alive() for p in procs]
        own_pg.restart()
        up_at, up_wall = time.monotonic(), datetime.now(UTC)
        wait_for(lambda: first_success_after(engine, up_wall), timeout=30, interval=0.1)
        resumed_after = time.monotonic() - up_at
        wait_for(lambda: exporter_up(base) == 1.0, timeout=20)
        exporter_recovered_after = time.monotonic() - up_at
        time.sleep(5)  # schedule normally for a while after the outage
        codes = [p.stop() for p in procs]
        _, metrics_text = http_get(f"{base}/metrics")
        rows = fetch_runs(engine)
    finally:
        exporter.stop()
        engine.dispose()
    outputs = "\n".join(p.output() for p in procs)
    assert alive_during == [True, True] and codes == [0, 0], outputs
    # No busy loop: a few hundred ms of CPU in 20 s (a spinning loop would burn ~20 s).
    assert max(cpu_during) < 3.0, cpu_during
    assert "database error, retrying in" in outputs, outputs
    # Rate-limited: one line per 30 s per process, not one per attempt.
    assert outputs.count("database error, retrying in") <= 2 * len(procs), outputs
    assert own_pg.password not in outputs + metrics_text + status_body
    assert "Traceback" not in outputs, outputs
    assert health_status == 200 and status_code in (200, 503)
    by_id = {r.id: r for r in rows}
    # Runs in flight when the database went away finished during the outage; their outcome
    # was held in memory and written once it was back.
    finished_in_outage = [
        i for i in in_flight if down_wall < by_id[i].finished_at.replace(tzinfo=UTC) < up_wall
    ]
    assert in_flight and all(by_id[i].status == "success" for i in in_flight), [
        (by_id[i].status, by_id[i].error_message) for i in in_flight
    ]
    assert finished_in_outage
    assert not [r for r in rows if r.status == "running"]
    account = account_ticks(rows, SECOND, set(quick))
    assert not account.duplicates and not account.lost and not account.off_grid, (
        account.as_figures(),
        account.lost[:5],
    )
    figures.update(
        outage_s=OUTAGE,
        runs_in_flight_at_outage=len(in_flight),
        of_which_finished_during_outage=len(finished_in_outage),
        scheduler_cpu_during_outage_s=[round(c, 2) for c in cpu_during],
        db_error_log_lines=outputs.count("database error, retrying in"),
        first_run_after_restart_s=round(resumed_after, 2),
        exporter_up_0_after_s=round(exporter_down_after, 2),
        exporter_up_1_after_restart_s=round(exporter_recovered_after, 2),
        **account.as_figures(),
    )


def test_sqlite_locked_by_another_writer_is_retried_with_backoff(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, figures
) -> None:
    """Another process holding SQLite's write lock (BEGIN IMMEDIATE) makes the scheduler log
    one clear line and back off; it resumes when the lock is released, with no tick lost or
    run twice."""
    engine = create_db_engine(sqlite_url)
    definitions = parse_task_document(
        {"tasks": [{"name": "tick", "callable": "os:getpid", "every": "1s"}]}, source="test"
    )
    Store(engine).sync_tasks(definitions, now=datetime.now(UTC))
    scheduler = Scheduler(
        engine=engine,
        settings=EngineSettings(
            instance_id="solo", health_listen=None, poll_interval=0.2, drain_grace=2
        ),
    )
    thread = threading.Thread(target=scheduler.run, name="scheduler-under-test")
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        with caplog.at_level(logging.ERROR, logger="scheduler_core.runtime"):
            thread.start()
            wait_for(lambda: first_success_after(engine, datetime.now(UTC) - SECOND), timeout=15)
            holder.execute("BEGIN IMMEDIATE")
            locked_at = time.monotonic()
            time.sleep(7)  # longer than the 5 s busy timeout: the scheduler must give up once
            alive_while_locked = thread.is_alive()
            holder.execute("COMMIT")
            released_wall, released_at = datetime.now(UTC), time.monotonic()
            wait_for(lambda: first_success_after(engine, released_wall), timeout=15, interval=0.1)
            resumed_after = time.monotonic() - released_at
            time.sleep(2)
    finally:
        holder.close()
        scheduler.request_stop()
        thread.join(timeout=30)
    rows = fetch_runs(engine)
    engine.dispose()
    lines = [r.getMessage() for r in caplog.records if "database error" in r.getMessage()]
    assert alive_while_locked and not thread.is_alive()
    assert lines and "retrying in 0.5s" in lines[0] and "database is locked" in lines[0], lines
    account = account_ticks(rows, SECOND, {"tick"})
    assert not account.duplicates and not account.lost, account.as_figures()
    figures.update(
        lock_held_s=round(released_at - locked_at, 1),
        log_line=lines[0],
        first_run_after_release_s=round(resumed_after, 2),
        **account.as_figures(),
    )
