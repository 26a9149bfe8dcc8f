"""The Python client on both backends: tasks created, changed and removed at runtime, owned
by the source ``api``, beside task-file tasks that it may drive but not change."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from scheduler_core import Client, TaskConflictError
from scheduler_core.db import create_db_engine
from scheduler_core.errors import ConfigError, TaskLookupError
from scheduler_core.models import audit_events, schedules, task_runs
from scheduler_core.retention import RetentionPolicy, run_cleanup
from scheduler_core.store import Store
from scheduler_core.store.sync import insert_tasks
from scheduler_core.testing import FakeClock, run_cycle
from tests.core import recorded
from tests.core.conftest import T0, tasks

GREET = "tests.core.recorded:greet"


@pytest.fixture
def client(db_engine: sa.Engine, clock: FakeClock) -> Iterator[Client]:
    recorded.reset()
    with Client(engine=db_engine, actor="tester@host", clock=clock) as c:
        yield c


def schedule_row(engine: sa.Engine, name: str) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.select(schedules).where(schedules.c.name == name)).one()


def test_add_task_is_owned_by_api_and_audited(client: Client, db_engine: sa.Engine) -> None:
    assert client.add_task({"name": "a", "callable": GREET, "every": "10m"}) == "a"
    task = client.get_task("a")
    assert task["source"] == "api" and task["definition"]["every"] == 600.0
    assert task["next_run_at"] == T0 + timedelta(minutes=10)
    with db_engine.connect() as conn:
        [audit] = conn.execute(sa.select(audit_events)).all()
    assert (audit.actor, audit.action, audit.task_name) == ("tester@host", "add", "a")


def test_one_create_writes_its_row_and_audit_event_together(
    client: Client, db_engine: sa.Engine
) -> None:
    """One create is its task row and its audit event, or neither (on PostgreSQL a single
    statement): created, both are there with the actor; a name another source owns is a
    conflict naming the owner, and no audit event of it is written."""
    created = client.create_task({"name": "solo", "callable": GREET, "every": "5m"})
    assert created["name"] == "solo" and created["source"] == "api"
    with db_engine.begin() as conn:
        insert_tasks(conn, tasks({"name": "owned", "callable": GREET, "every": "1m"}), now=T0,
                     source="file")  # fmt: skip
    with pytest.raises(TaskConflictError) as caught:
        client.add_task({"name": "owned", "callable": GREET, "every": "2m"})
    assert caught.value.owners == {"owned": "file"}
    with db_engine.connect() as conn:
        audits = conn.execute(sa.select(audit_events.c.actor, audit_events.c.task_name)).all()
    assert [tuple(a) for a in audits] == [("tester@host", "solo")]
    assert schedule_row(db_engine, "owned").schedule_expr == "every 1m"  # unchanged
    assert schedule_row(db_engine, "solo").source == "api"


def test_bad_task_names_the_field_and_value_and_stores_nothing(
    client: Client, db_engine: sa.Engine
) -> None:
    with pytest.raises(ConfigError) as caught:
        client.add_tasks(
            [
                {"name": "ok", "callable": GREET, "every": "1m"},
                {"name": "bad", "callable": GREET, "every": "soon"},
            ]
        )
    [issue] = caught.value.issues
    assert (issue.task, issue.field, issue.value) == ("bad", "every", "soon")
    assert client.list_tasks() == []


def test_add_tasks_is_all_or_nothing_on_a_taken_name(client: Client) -> None:
    client.add_task({"name": "taken", "callable": GREET, "every": "1m"})
    with pytest.raises(TaskConflictError) as caught:
        client.add_tasks(
            [
                {"name": "new", "callable": GREET, "every": "1m"},
                {"name": "taken", "callable": GREET, "every": "5m"},
            ]
        )
    assert caught.value.owners == {"taken": "api"}
    assert [t["name"] for t in client.list_tasks()] == ["taken"]


def many(n: int, *, prefix: str = "bulk", every: str = "5m") -> list[dict[str, object]]:
    """Enough tasks for the COPY path on PostgreSQL (sync._COPY_FROM is 100)."""
    return [{"name": f"{prefix}-{i:03d}", "callable": GREET, "every": every} for i in range(n)]


def test_add_tasks_of_many_writes_every_row_and_audit_event(
    client: Client, db_engine: sa.Engine
) -> None:
    """150 tasks in one call (by COPY on PostgreSQL, as a sync writes them): each row as
    one created alone would be, each with its audit event."""
    client.add_task({"name": "alone", "callable": GREET, "every": "5m"})
    assert len(client.add_tasks(many(150))) == 150
    alone, bulk = schedule_row(db_engine, "alone"), schedule_row(db_engine, "bulk-077")
    differ = {"name", "definition", "definition_hash"}  # the name is part of the definition
    assert {k: v for k, v in bulk._mapping.items() if k not in differ} == {
        k: v for k, v in alone._mapping.items() if k not in differ
    }
    assert json.loads(bulk.definition) == {**json.loads(alone.definition), "name": "bulk-077"}
    with db_engine.connect() as conn:
        actions = conn.execute(sa.select(audit_events.c.task_name, audit_events.c.action)).all()
    assert sorted(tuple(a) for a in actions) == sorted(
        [("alone", "add"), *((f"bulk-{i:03d}", "add") for i in range(150))]
    )


def test_add_tasks_of_many_is_all_or_nothing_on_a_taken_name(
    client: Client, db_engine: sa.Engine
) -> None:
    """One of 150 names is a task file's: nothing of the call is written (its COPY and its
    INSERT both fail), and the conflict names the owner."""
    with db_engine.begin() as conn:
        insert_tasks(conn, tasks({"name": "bulk-099", "command": ["true"], "every": "1h"}),
                     now=T0, source="file")  # fmt: skip
    with pytest.raises(TaskConflictError) as caught:
        client.add_tasks(many(150))
    assert caught.value.owners == {"bulk-099": "file"}
    assert [t["name"] for t in client.list_tasks()] == ["bulk-099"]
    with db_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_events)).scalar() == 0


def test_file_sync_leaves_api_tasks_alone_and_cannot_take_their_names(
    client: Client, db_engine: sa.Engine, clock: FakeClock
) -> None:
    client.add_task({"name": "from-api", "callable": GREET, "every": "1m"})
    store = Store(db_engine, instance_id="inst-a")
    store.sync_tasks(tasks({"name": "from-file", "command": ["true"], "every": "1m"}), now=T0)
    store.sync_tasks([], now=T0)  # the file no longer has any task
    assert schedule_row(db_engine, "from-api").enabled
    assert not schedule_row(db_engine, "from-file").enabled
    with pytest.raises(TaskConflictError, match="'from-api' \\(owned by api\\)"):
        store.sync_tasks(tasks({"name": "from-api", "command": ["true"], "every": "1m"}), now=T0)
    assert schedule_row(db_engine, "from-api").action_kind == "callable"


def test_the_client_drives_but_cannot_change_or_remove_a_file_task(
    client: Client, db_engine: sa.Engine
) -> None:
    Store(db_engine).sync_tasks(tasks({"name": "f", "command": ["true"], "every": "1m"}), now=T0)
    with pytest.raises(TaskConflictError, match="owned by file"):
        client.remove_task("f")
    with pytest.raises(TaskConflictError, match="owned by file"):
        client.update_task("f", every="5m")
    client.pause("f", reason="maintenance")
    client.resume("f")
    client.run_now("f")
    row = schedule_row(db_engine, "f")
    assert row.run_now_requested_at == T0 and row.source == "file"


def test_update_changes_the_schedule_from_the_next_tick_and_keeps_counters(
    client: Client, db_engine: sa.Engine, make_scheduler, clock: FakeClock
) -> None:
    client.add_task({"name": "u", "callable": GREET, "every": "1h"})
    scheduler = make_scheduler()
    clock.advance(3600)
    assert run_cycle(scheduler) == 1
    client.update_task("u", every="10m", kwargs={"who": "new"})
    row = schedule_row(db_engine, "u")
    assert row.next_run_at == clock.now() + timedelta(minutes=10)
    assert row.runs_success_total == 1
    clock.advance(600)
    assert run_cycle(scheduler) == 1
    assert recorded.CALLS[-1] == ((), {"who": "new"})


def test_remove_keeps_history_and_the_task_never_runs_again(
    client: Client, make_scheduler, clock: FakeClock
) -> None:
    client.add_task({"name": "r", "callable": GREET, "every": "1m"})
    scheduler = make_scheduler()
    clock.advance(60)
    assert run_cycle(scheduler) == 1
    client.remove_task("r")
    clock.advance(600)
    assert run_cycle(scheduler) == 0
    assert [run["status"] for run in client.list_runs(task="r")] == ["success"]
    with pytest.raises(TaskLookupError):
        client.get_task("r")
    with pytest.raises(TaskLookupError):
        client.list_runs(task="never-existed")


def test_schedule_once_runs_once_with_its_arguments(
    client: Client, make_scheduler, clock: FakeClock
) -> None:
    at = T0 + timedelta(minutes=5)
    name = client.schedule_once(recorded.greet, at=at, args=[1], kwargs={"to": "ada"})
    other = client.schedule_once(GREET, at=at)
    assert name.startswith("once-") and other.startswith("once-") and name != other
    scheduler = make_scheduler()
    clock.advance(300)
    assert run_cycle(scheduler) == 2
    clock.advance(3600)
    assert run_cycle(scheduler) == 0
    assert sorted(recorded.CALLS, key=repr) == sorted([((1,), {"to": "ada"}), ((), {})], key=repr)


def test_finished_one_time_api_tasks_follow_the_retention_policy(
    client: Client, make_scheduler, clock: FakeClock, db_engine: sa.Engine
) -> None:
    """A one-time api task that has run stays while the retention period lasts, then cleanup
    removes it with its runs; one still to fire, and a task file's, stay."""
    done = client.schedule_once(GREET, at=T0 + timedelta(minutes=1))
    later = client.schedule_once(GREET, at=T0 + timedelta(days=60))
    Store(db_engine).sync_tasks(
        tasks(
            {"name": "file-once", "callable": GREET, "at": (T0 + timedelta(minutes=1)).isoformat()}
        ),
        now=T0,
        disable_missing=False,
    )
    scheduler = make_scheduler()
    clock.advance(60)
    assert run_cycle(scheduler) == 2
    policy = RetentionPolicy(days=30)

    result = run_cleanup(db_engine, policy=policy, now=clock.now() + timedelta(days=29))
    assert result.tasks_retired == 0
    assert len(client.list_runs(task=done)) == 1

    result = run_cleanup(db_engine, policy=policy, now=clock.now() + timedelta(days=31))
    assert result.tasks_retired == 1
    assert sorted(t["name"] for t in client.list_tasks()) == sorted([later, "file-once"])
    with db_engine.connect() as conn:
        runs_left = conn.execute(
            sa.select(sa.func.count()).where(task_runs.c.task_name == done)
        ).scalar_one()
    assert runs_left == 0


def test_run_now_overrides_apply_to_that_run_only(
    client: Client, make_scheduler, clock: FakeClock
) -> None:
    client.add_task({"name": "n", "callable": GREET, "args": ["own"], "every": "1h"})
    scheduler = make_scheduler()
    client.run_now("n", kwargs={"dry_run": True})
    assert run_cycle(scheduler) == 1
    clock.advance(3600)
    assert run_cycle(scheduler) == 1
    assert recorded.CALLS == [(("own",), {"dry_run": True}), (("own",), {})]


def test_a_retry_of_a_run_now_with_arguments_keeps_them(
    client: Client, make_scheduler, clock: FakeClock, db_engine: sa.Engine
) -> None:
    """A run-now with its own arguments that fails is retried with the same arguments, and
    the run rows say which arguments each attempt had."""
    client.add_task(
        {
            "name": "r",
            "callable": "tests.core.recorded:greet_then_fail",
            "args": ["own"],
            "every": "1d",
            "retries": {"max": 1, "backoff": "fixed", "delay": "10s"},
        }
    )
    scheduler = make_scheduler()
    client.run_now("r", args=["override"], kwargs={"n": 1})
    assert run_cycle(scheduler) == 1
    clock.advance(10)
    assert run_cycle(scheduler) == 1
    assert recorded.CALLS == [(("override",), {"n": 1})] * 2
    runs = sorted(client.list_runs(task="r"), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status"]) for r in runs] == [(1, "failure"), (2, "failure")]
    assert [json.loads(r["arguments"]) for r in runs] == [
        {"args": ["override"], "kwargs": {"n": 1}}
    ] * 2


def test_run_now_arguments_are_checked(client: Client, db_engine: sa.Engine) -> None:
    Store(db_engine).sync_tasks(tasks({"name": "cmd", "command": ["true"], "every": "1m"}), now=T0)
    with pytest.raises(ValueError, match="runs a command"):
        client.run_now("cmd", args=[1])
    client.add_task({"name": "c", "callable": GREET, "every": "1m"})
    with pytest.raises(ValueError, match="args: must be a list"):
        client.run_now("c", args="not-a-list")  # type: ignore[arg-type]
    assert schedule_row(db_engine, "c").run_now_requested_at is None


@pytest.mark.postgres
def test_a_create_racing_another_create_of_the_name_is_a_conflict(
    pg_url: str, clock: FakeClock
) -> None:
    """Two creates of one name at once: the one that loses gets TaskConflictError naming the
    owner (not the database's unique-key error), and nothing of its batch is stored."""
    engine = create_db_engine(pg_url)
    try:
        with Client(engine=engine, actor="a@host", clock=clock) as client:
            # Another writer's create of "race", not committed yet: the client finds no
            # owner when it checks, then waits on the unique key until that commits.
            with engine.connect() as holder:
                racing = tasks({"name": "race", "callable": GREET, "every": "1m"})
                insert_tasks(holder, racing, now=T0, source="api")
                outcome: list[BaseException | None] = []

                def create() -> None:
                    try:
                        client.add_tasks(
                            [
                                {"name": "other", "callable": GREET, "every": "1m"},
                                {"name": "race", "callable": GREET, "every": "5m"},
                            ]
                        )
                        outcome.append(None)
                    except BaseException as exc:
                        outcome.append(exc)

                thread = threading.Thread(target=create)
                thread.start()
                wait_for_lock_wait(engine)
                holder.commit()
                thread.join(timeout=10)
            [error] = outcome
            assert isinstance(error, TaskConflictError), error
            assert error.owners == {"race": "api"}
            assert [t["name"] for t in client.list_tasks()] == ["race"]
    finally:
        engine.dispose()


def wait_for_lock_wait(engine: sa.Engine, timeout: float = 10.0) -> None:
    """Until some session of this database waits on a lock (bounded)."""
    deadline = time.monotonic() + timeout
    query = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    while time.monotonic() < deadline:
        with engine.connect() as conn:
            if conn.execute(query).scalar_one():
                return
        time.sleep(0.02)
    raise AssertionError("no session waited on the unique key")
