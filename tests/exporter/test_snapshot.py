"""The snapshot read: derived states per task, a fixed statement count, and read-only access."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from exporter.database import create_reader_engine
from scheduler_core import models
from scheduler_core.db import create_db_engine, upgrade_schema
from scheduler_core.states import badge_of, is_failing
from scheduler_core.store.snapshot import SnapshotReader, read_snapshot
from tests.exporter.factories import NOW, Expected, StatementCounter, seed_many


def test_every_task_gets_its_badge_and_derived_states(seeded: dict[str, Expected], reader):
    """Each seeded task reads back with the badge, running count, stuck flag and last status
    the model semantics give it, on SQLite and on PostgreSQL."""
    snapshot = read_snapshot(reader, NOW)
    tasks = snapshot.tasks_by_name
    assert sorted(tasks) == sorted(seeded)
    for name, expected in seeded.items():
        task = tasks[name]
        assert task.badge == expected.badge, name
        assert task.running == expected.running, name
        assert task.stuck is expected.stuck, name
        assert task.consecutive_failures == expected.consecutive_failures, name
        assert task.last_status == expected.last_status, name
    assert snapshot.badge_counts == {
        "disabled": 1, "paused": 1, "stuck": 1, "running": 1, "failing": 1, "late": 1, "ok": 3,
    }  # fmt: skip


def test_latest_values_across_instances_win(seeded, reader):
    """For a task run on two instances, the last start/finish and the status, duration and
    error of the run that finished last are reported."""
    task = read_snapshot(reader, NOW).tasks_by_name["ok-task"]
    assert task.last_finished_at == NOW - timedelta(minutes=1)
    assert task.last_started_at == NOW - timedelta(minutes=1, seconds=1.5)
    assert task.last_status == "success"
    assert task.last_duration_seconds == 1.5
    assert task.last_error_message is None


def test_instances_count_their_in_flight_runs(seeded, reader):
    """Instance rows carry state, version and the number of running runs they own."""
    instances = {i.instance_id: i for i in read_snapshot(reader, NOW).instances}
    assert instances["node-a:1"].running_runs == 2
    assert instances["node-b:2"].running_runs == 0
    assert instances["node-b:2"].state == "draining"
    assert instances["node-b:2"].version == "0.0.9"


def test_late_needs_the_grace_to_pass(seeded, reader):
    """A task 10 minutes overdue is late with a 60 s grace but not with a 15 minute one."""
    assert read_snapshot(reader, NOW, late_grace=60).tasks_by_name["late-task"].badge == "late"
    relaxed = read_snapshot(reader, NOW, late_grace=900).tasks_by_name["late-task"]
    assert relaxed.late is False
    assert relaxed.badge == "ok"


def test_stuck_follows_the_clock(seeded, reader):
    """A running run becomes stuck only once it has run longer than max_runtime."""
    before = NOW - timedelta(minutes=19, seconds=1)  # the run is then 59 s old; max is 60 s
    assert read_snapshot(reader, before).tasks_by_name["stuck-task"].stuck is False
    assert read_snapshot(reader, NOW).tasks_by_name["stuck-task"].stuck is True


@pytest.mark.parametrize(
    ("kwargs", "badge"),
    [
        ({"enabled": False, "paused": True, "stuck": True}, "disabled"),
        ({"paused": True, "stuck": True}, "paused"),
        (
            {"stuck": True, "running": 1, "consecutive_failures": 2, "last_status": "failure"},
            "stuck",
        ),
        ({"running": 1, "consecutive_failures": 2, "last_status": "failure"}, "running"),
        ({"consecutive_failures": 2, "last_status": "timeout", "late": True}, "failing"),
        ({"consecutive_failures": 2, "last_status": "success", "late": True}, "late"),
        ({}, "ok"),
    ],
)
def test_badge_precedence(kwargs, badge):
    """Badges follow disabled > paused > stuck > running > failing > late > ok."""
    base = {
        "enabled": True, "paused": False, "stuck": False, "running": 0,
        "consecutive_failures": 0, "last_status": None, "late": False,
    }  # fmt: skip
    flags = {**base, **kwargs}
    failing = is_failing(
        consecutive_failures=flags.pop("consecutive_failures"), last_status=flags.pop("last_status")
    )
    assert badge_of(**flags, failing=failing) == badge


def _steady_refresh_statements(url: str, tasks: int) -> list[str]:
    writer = create_db_engine(url)
    seed_many(writer, tasks)
    writer.dispose()
    engine = create_reader_engine(url)
    try:
        reader = SnapshotReader()
        reader.read(engine, NOW)  # the first connect runs dialect set-up queries; skip them
        with StatementCounter(engine) as counter:
            snapshot = reader.read(engine, NOW + timedelta(seconds=5))
        assert len(snapshot.tasks) == tasks
        return counter.statements
    finally:
        engine.dispose()


def test_statement_count_is_independent_of_task_count(tmp_path, sqlite_url):
    """One refresh issues the same SQL statements for 10 tasks as for 10,000 tasks."""
    small_url = sqlite_url
    big_url = f"sqlite:///{tmp_path / 'big.db'}"
    big_engine = create_db_engine(big_url)
    upgrade_schema(big_engine)
    big_engine.dispose()
    small = _steady_refresh_statements(small_url, 10)
    big = _steady_refresh_statements(big_url, 10_000)
    assert small == big
    assert len(small) == 6  # a deferred BEGIN and five SELECTs


@pytest.mark.postgres
def test_statement_count_is_independent_of_task_count_on_postgresql(pg_server):
    """On PostgreSQL too, 10 and 10,000 tasks cost the same statements per refresh."""
    from tests.conftest import TEMPLATE_DB

    names = [pg_server.create_database(template=TEMPLATE_DB) for _ in range(2)]
    try:
        small = _steady_refresh_statements(pg_server.url(names[0]), 10)
        big = _steady_refresh_statements(pg_server.url(names[1]), 10_000)
    finally:
        for name in names:
            pg_server.drop_database(name)
    assert small == big
    assert len(small) == 5


def test_reader_reuses_unchanged_tasks(seeded_sqlite):
    """A second read returns the very same task objects for tasks whose rows did not change,
    and a new object for a task that did."""
    engine = create_reader_engine(seeded_sqlite)
    writer = create_db_engine(seeded_sqlite)
    try:
        reader = SnapshotReader()
        first = reader.read(engine, NOW).tasks_by_name
        with writer.begin() as conn:
            conn.execute(
                models.schedules.update()
                .where(models.schedules.c.name == "ok-task")
                .values(runs_success_total=8)
            )
        second = reader.read(engine, NOW).tasks_by_name
        assert second["ok-task"] is not first["ok-task"]
        assert second["ok-task"].runs_total["success"] == 8
        assert second["paused-task"] is first["paused-task"]
    finally:
        engine.dispose()
        writer.dispose()


def test_a_reused_task_still_follows_the_clock(seeded_sqlite):
    """With unchanged rows, one reader re-derives stuck and late from the clock: a run that
    passes max_runtime between two reads becomes stuck, an overdue task becomes late."""
    engine = create_reader_engine(seeded_sqlite)
    try:
        reader = SnapshotReader(late_grace=60)
        earlier = NOW - timedelta(minutes=19, seconds=1)
        first = reader.read(engine, earlier).tasks_by_name
        second = reader.read(engine, NOW).tasks_by_name
        assert (first["stuck-task"].stuck, second["stuck-task"].stuck) == (False, True)
        assert second["stuck-task"].badge == "stuck"
        assert second["late-task"].late is True and second["late-task"].badge == "late"
        third = reader.read(engine, NOW).tasks_by_name
        assert third["stuck-task"] is second["stuck-task"]
    finally:
        engine.dispose()


def test_reader_engine_cannot_write(db_url, seeded):
    """The exporter's engine refuses writes on both backends (the exporter never writes)."""
    engine = create_reader_engine(db_url)
    try:
        with pytest.raises(sa.exc.DBAPIError), engine.begin() as conn:
            conn.execute(models.schedules.update().values(paused=True))
    finally:
        engine.dispose()


def test_reader_does_not_create_a_missing_sqlite_file(tmp_path):
    """Pointing the exporter at a SQLite path that does not exist fails instead of creating it."""
    path = tmp_path / "missing.db"
    engine = create_reader_engine(f"sqlite:///{path}")
    try:
        with pytest.raises(sa.exc.OperationalError, match="does not exist"):
            read_snapshot(engine, NOW)
    finally:
        engine.dispose()
    assert not path.exists()


@pytest.mark.postgres
def test_postgres_timestamps_read_back_in_utc_whatever_the_session_zone(pg_url):
    """Timestamps read on PostgreSQL are the stored instants in UTC, even when the URL asks
    for another session time zone (the reader fetches them without SQLAlchemy's conversion)."""
    from tests.exporter.conftest import seed_every_state

    writer = create_db_engine(pg_url)
    tokyo = create_reader_engine(f"{pg_url}?options=-c%20TimeZone%3DAsia/Tokyo")
    try:
        seed_every_state(writer)
        tasks = SnapshotReader().read(tokyo, NOW).tasks_by_name
        converted = read_snapshot(writer, NOW).tasks_by_name  # the server's own session zone
    finally:
        tokyo.dispose()
        writer.dispose()
    stamps = [
        value
        for task in tasks.values()
        for value in (task.next_run_at, task.last_started_at, task.last_finished_at)
        if value is not None
    ]
    assert stamps and all(v.utcoffset() == timedelta(0) for v in stamps)
    assert {n: (t.next_run_at, t.last_started_at) for n, t in tasks.items()} == {
        n: (t.next_run_at, t.last_started_at) for n, t in converted.items()
    }
