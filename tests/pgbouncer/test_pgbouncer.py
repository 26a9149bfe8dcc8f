"""schedctl behind PgBouncer in transaction pooling mode (``?pool_mode=transaction``): the
session settings hold in every transaction on every pooled server session, nothing is
prepared on the server, and the CLI, the exporter and several schedulers work through it."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import sqlalchemy as sa

from scheduler_core.db import create_db_engine, head_revision
from scheduler_core.models import instances, schedules
from scheduler_core.store import Store
from scheduler_core.task_files import load_task_file
from tests.core.test_cli import schedctl
from tests.core.test_multi_instance import assert_contiguous, run_instances
from tests.support.pgbouncer import PgBouncer
from tests.support.pgserver import PostgresServer
from tests.support.prometheus import free_port, http_get, wait_until

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
SETTINGS = (
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "statement_timeout",
    "TimeZone",
    "transaction_read_only",
)
#: Set on the database, so every server session PgBouncer opens starts with them: what
#: schedctl's transactions see instead proves the settings are schedctl's, per transaction.
DATABASE_DEFAULTS = {
    "lock_timeout": "1234ms",
    "idle_in_transaction_session_timeout": "4321ms",
    "statement_timeout": "9876ms",
    "TimeZone": "Asia/Tokyo",
}
PLAIN = {**DATABASE_DEFAULTS, "transaction_read_only": "off"}
WRITER = {**PLAIN, "lock_timeout": "10s", "idle_in_transaction_session_timeout": "10s"}
WRITER["TimeZone"] = "UTC"
READER = {**WRITER, "statement_timeout": "5s", "transaction_read_only": "on"}
BROKEN_BY_POOLING = ("unsupported startup parameter", "prepared statement")
TASKS = "tasks:\n  - {name: nightly, callable: 'os:getpid', cron: '0 3 * * *'}\n"


def _show(conn: sa.Connection | psycopg.Connection[Any]) -> tuple[dict[str, str], int]:
    """The settings in effect in ``conn``'s transaction, and the server session's pid."""
    run: Any = conn.exec_driver_sql if isinstance(conn, sa.Connection) else conn.execute
    values = {name: str(run(f"SHOW {name}").fetchone()[0]) for name in SETTINGS}
    return values, int(run("SELECT pg_backend_pid()").fetchone()[0])


def _set_database_defaults(server: PostgresServer, dbname: str) -> None:
    with server.admin() as conn:
        for name, value in DATABASE_DEFAULTS.items():
            conn.execute(f"ALTER DATABASE {dbname} SET {name} = '{value}'")


def _concurrent_transactions(engine: sa.Engine, expected: dict[str, str], write: bool) -> set[int]:
    """Three transactions open at once (three server sessions), three times over: reads in
    ``connect()``'s autobegun transactions, or writes in ``begin()`` blocks; every one sees
    ``expected``. Returns the server sessions' pids."""
    pids = set()
    for _round in range(3):
        with contextlib.ExitStack() as stack:
            for _ in range(3):
                if write:
                    conn = stack.enter_context(engine.begin())
                    conn.exec_driver_sql("INSERT INTO marks VALUES (pg_backend_pid())")
                else:
                    conn = stack.enter_context(engine.connect())
                settings, pid = _show(conn)
                assert settings == expected, f"server session {pid}"
                pids.add(pid)
    return pids


def test_settings_hold_in_every_transaction_on_every_pooled_session(
    pg_server: PostgresServer, pg_bouncer: PgBouncer, bouncer_db: str
) -> None:
    _set_database_defaults(pg_server, bouncer_db)
    url = pg_bouncer.url(bouncer_db)
    with pg_bouncer.connect(bouncer_db) as plain:
        assert _show(plain)[0] == PLAIN  # what a session without schedctl's settings has
        plain.execute("CREATE TABLE marks (pid int)")
        plain.commit()
    writer = create_db_engine(url)
    reader = create_db_engine(url, read_only=True, statement_timeout=5)
    try:
        written = _concurrent_transactions(writer, WRITER, write=True)
        writer_reads = _concurrent_transactions(writer, WRITER, write=False)
        read_from = _concurrent_transactions(reader, READER, write=False)
    finally:
        writer.dispose()
        reader.dispose()
    assert len(written) >= 3 and len(read_from) >= 3, "expected several server sessions"
    # The reader's transactions ran on server sessions the writer's had used: the pooler
    # shares them, and each transaction still had its own engine's settings.
    assert read_from & (written | writer_reads)
    # Transaction-local: nothing stayed behind on the pooled server sessions.
    with contextlib.ExitStack() as stack:
        plains = [stack.enter_context(pg_bouncer.connect(bouncer_db)) for _ in range(3)]
        seen = [_show(conn) for conn in plains]
    assert all(settings == PLAIN for settings, _pid in seen), seen
    assert {pid for _settings, pid in seen} & (written | read_from)


def test_read_only_engine_cannot_write_through_the_bouncer(
    pg_bouncer: PgBouncer, bouncer_db: str
) -> None:
    reader = create_db_engine(pg_bouncer.url(bouncer_db), read_only=True)
    try:
        with reader.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="read-only"):
            conn.exec_driver_sql("CREATE TABLE nope (x int)")
        with pytest.raises(sa.exc.DBAPIError, match="read-only"), reader.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE nope (x int)")
        with reader.connect() as conn, pytest.raises(sa.exc.DBAPIError, match="before any query"):
            conn.exec_driver_sql("SET transaction_read_only = off")
    finally:
        reader.dispose()


def test_url_options_apply_per_transaction_but_cannot_lift_the_guarantees(
    pg_bouncer: PgBouncer, bouncer_db: str
) -> None:
    """The URL's own ``-c`` settings become transaction-local too (PgBouncer would refuse
    them at startup) and still win over the defaults; UTC and read-only still win over them."""
    options = (
        "-c lock_timeout=2500 -c TimeZone=Asia/Tokyo --search-path=pg_catalog "
        "-c transaction_read_only=off -c default_transaction_read_only=off"
    )
    url = pg_bouncer.url(bouncer_db, query=f"pool_mode=transaction&options={quote(options)}")
    for read_only in (False, True):
        engine = create_db_engine(url, read_only=read_only)
        try:
            with engine.connect() as conn:
                settings, _pid = _show(conn)
                assert settings["lock_timeout"] == "2500ms"
                assert settings["TimeZone"] == "UTC"
                assert settings["transaction_read_only"] == ("on" if read_only else "off")
                assert conn.exec_driver_sql("SHOW search_path").scalar_one() == "pg_catalog"
        finally:
            engine.dispose()


def test_no_statement_is_prepared_on_the_server(bouncer_url: str) -> None:
    """Two clients take turns on the same server session, running one query 12 times each:
    psycopg's automatic preparation (after 5) would collide on ``_pg3_0`` ("already exists"
    or "does not exist"); with it off, nothing is ever prepared."""
    engine = create_db_engine(bouncer_url)
    query = sa.select(sa.func.count()).where(schedules.c.name == sa.bindparam("name"))
    pids: dict[int, set[int]] = defaultdict(set)
    try:
        with engine.connect() as first, engine.connect() as second:
            for i in range(12):
                for n, conn in enumerate((first, second)):
                    assert conn.execute(query, {"name": f"job-{i}"}).scalar_one() == 0
                    prepared = "SELECT count(*) FROM pg_prepared_statements"
                    assert conn.exec_driver_sql(prepared).scalar_one() == 0
                    pids[n].add(_show(conn)[1])
                    conn.commit()
            for conn in (first, second):
                assert conn.connection.dbapi_connection.prepare_threshold is None  # type: ignore[union-attr]
    finally:
        engine.dispose()
    assert pids[0] & pids[1], "the two clients never shared a server session"


def test_cli_db_upgrade_tasks_list_and_pause_through_the_bouncer(
    pg_bouncer: PgBouncer, bouncer_db: str, tmp_path: Path
) -> None:
    url = pg_bouncer.url(bouncer_db)
    shown = (
        f"postgresql+psycopg://schedctl:***@127.0.0.1:{pg_bouncer.port}/{bouncer_db}"
        "?pool_mode=transaction"
    )
    upgraded = schedctl("db", "upgrade", "--database-url", url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"database {shown} upgraded: empty -> {head_revision()}"
    env = {"SCHEDCTL_DATABASE_URL": url}
    again = schedctl("db", "upgrade", env=env)
    assert again.stdout.strip() == f"database {shown} already at revision {head_revision()}"
    config = tmp_path / "tasks.yaml"
    config.write_text(TASKS)
    engine = create_db_engine(url)
    try:  # the sync takes an advisory transaction lock and sets SET LOCAL: fine when pooled
        Store(engine).sync_tasks(load_task_file(config), now=datetime.now(UTC))
    finally:
        engine.dispose()
    paused = schedctl("pause", "nightly", "--reason", "behind the bouncer", env=env)
    listed = schedctl("tasks", "list", "--json", env=env)
    assert paused.returncode == 0 and listed.returncode == 0, paused.stderr + listed.stderr
    tasks = {t["name"]: t for t in json.loads(listed.stdout)}
    assert tasks["nightly"]["paused"] and tasks["nightly"]["pause_reason"] == "behind the bouncer"
    for result in (upgraded, again, paused, listed):
        assert pg_bouncer.server.password not in result.stdout + result.stderr


def test_exporter_process_reads_through_the_bouncer(
    pg_bouncer: PgBouncer, bouncer_url: str, tmp_path: Path
) -> None:
    config = tmp_path / "tasks.yaml"
    config.write_text(TASKS)
    engine = create_db_engine(bouncer_url)
    try:
        Store(engine).sync_tasks(load_task_file(config), now=datetime.now(UTC))
    finally:
        engine.dispose()
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter.cli", "--database-url", bouncer_url,
         "--listen", f"127.0.0.1:{port}", "--refresh-interval", "0.2s"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_until(
            lambda: "scheduler_exporter_up 1.0" in http_get(metrics_url).decode(),
            timeout=60,
            what="a successful refresh through the bouncer",
        )
        time.sleep(3)  # ~15 more refreshes, each the same queries
        metrics = http_get(metrics_url).decode()
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "scheduler_exporter_up 1.0" in metrics
    assert 'scheduler_task_paused{task="nightly"} 0.0' in metrics
    assert pg_bouncer.server.password not in output
    assert not [text for text in BROKEN_BY_POOLING if text in output], output


@pytest.mark.slow
def test_three_instances_through_the_bouncer_run_every_tick_exactly_once(
    bouncer_url: str, tmp_path: Path
) -> None:
    """The scenario of tests/core/test_multi_instance.py, through the bouncer, for 20 s."""
    config = tmp_path / "tasks.yaml"
    lines = [f"  - {{name: job-{i:02d}, callable: 'os:getpid', every: 1s}}\n" for i in range(20)]
    config.write_text("tasks:\n" + "".join(lines))
    rows, output = run_instances(config, bouncer_url, ["node-a", "node-b", "node-c"], 20)
    assert not [text for text in BROKEN_BY_POOLING if text in output], output
    engine = create_db_engine(bouncer_url)
    try:
        with engine.connect() as conn:
            states = dict(conn.execute(sa.select(instances.c.instance_id, instances.c.state)).all())
    finally:
        engine.dispose()
    assert {r.status for r in rows} == {"success"}, output
    keys = [(r.task_name, r.scheduled_for) for r in rows]
    assert len(keys) == len(set(keys)), "a tick ran twice"
    assert all(r.started_at and r.finished_at and r.instance_id for r in rows)
    per_task: dict[str, list[Any]] = defaultdict(list)
    for task, tick in keys:
        per_task[task].append(tick)
    assert len(per_task) == 20
    for task, ticks in per_task.items():
        assert len(ticks) >= 15, f"{task}: only {len(ticks)} runs in 20 s"
        assert_contiguous(ticks, task=task)
    assert states == {"node-a": "stopped", "node-b": "stopped", "node-c": "stopped"}
