"""The admin API over a real exporter: every route's success, bad body (the field named), 401,
403 (the read token on a write), 404 with the API off, 409 across sources, 415, and the
audit row with its actor and request id."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from exporter.database import create_admin_engine
from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine, upgrade_schema
from scheduler_core.models import audit_events, schedules
from scheduler_core.store import Store
from tests.support.pgserver import PostgresServer

READ = "read-token-0123456789"
ADMIN = "admin-token-0123456789"
GREET = "tests.core.recorded:greet"


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    token: str | None = ADMIN,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Reply:
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            return Reply(response.status, json.loads(raw) if raw else None, dict(response.headers))
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return Reply(exc.code, json.loads(raw) if raw else None, dict(exc.headers))


@pytest.fixture
def engine(db_url: str) -> Iterator[sa.Engine]:
    engine = create_db_engine(db_url)
    upgrade_schema(engine)
    file_tasks = parse_task_document(
        {"tasks": [{"name": "from-file", "command": ["true"], "every": "1h"}]}, source="t"
    )
    Store(engine).sync_tasks(file_tasks, now=datetime.now(UTC))
    yield engine
    engine.dispose()


@pytest.fixture
def base(engine: sa.Engine, db_url: str) -> Iterator[str]:
    settings = ExporterSettings(port=0, token=READ, admin_token=ADMIN)
    with ExporterServer(settings=settings, database_url=db_url, background_refresh=False) as server:
        yield server.url


def audits(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(audit_events).order_by(audit_events.c.id)))


TASK = {"name": "api-task", "callable": GREET, "every": "10m"}


def test_create_read_update_delete(base: str, engine: sa.Engine) -> None:
    created = call(base, "POST", "/api/v1/tasks", TASK, headers={"X-Schedctl-Actor": "alice"})
    assert created.status == 201, created.body
    assert created.body["source"] == "api" and created.body["definition"]["every"] == 600.0
    rid = created.headers["X-Request-Id"]
    [audit] = audits(engine)
    assert audit.action == "add" and audit.actor.startswith("api:alice@")
    assert json.loads(audit.details)["request_id"] == rid
    read = call(base, "GET", "/api/v1/tasks/api-task", token=READ)
    assert read.status == 200 and read.body["name"] == "api-task"
    assert read.body == created.body  # the create answers from the row it wrote: the same
    patched = call(base, "PATCH", "/api/v1/tasks/api-task", {"every": "5m", "kwargs": {"a": 1}})
    assert patched.status == 200 and patched.body["definition"]["every"] == 300.0
    assert patched.body["definition"]["kwargs"] == {"a": 1}
    deleted = call(base, "DELETE", "/api/v1/tasks/api-task")
    assert deleted.status == 204
    assert call(base, "GET", "/api/v1/tasks/api-task").status == 404
    assert [a.action for a in audits(engine)] == ["add", "update", "remove"]


def test_bad_bodies_name_the_field(base: str, engine: sa.Engine) -> None:
    bad = call(base, "POST", "/api/v1/tasks", {**TASK, "every": "sometimes"})
    assert bad.status == 400 and bad.body["error"]["code"] == "invalid_task"
    [issue] = bad.body["error"]["issues"]
    assert (issue["field"], issue["value"]) == ("every", "sometimes")
    assert call(base, "POST", "/api/v1/tasks", b"{not json").status == 400
    assert call(base, "POST", "/api/v1/tasks", [1, 2]).status == 400
    call(base, "POST", "/api/v1/tasks", TASK)
    renamed = call(base, "PATCH", "/api/v1/tasks/api-task", {"callable": "x:y"})
    assert renamed.status == 400 and "callable" in renamed.body["error"]["message"]
    pause = call(base, "POST", "/api/v1/tasks/api-task/pause", {})
    assert pause.status == 400 and "reason" in pause.body["error"]["message"]
    run_now = call(base, "POST", "/api/v1/tasks/api-task/run-now", {"args": "x"})
    assert run_now.status == 400 and "args" in run_now.body["error"]["message"]
    cancel = call(base, "POST", "/api/v1/runs/1/cancel", {"reason": ""})
    assert cancel.status == 400 and "reason" in cancel.body["error"]["message"]
    stop = call(base, "POST", "/api/v1/emergency-stop", {})
    assert stop.status == 400 and "reason" in stop.body["error"]["message"]
    huge = call(base, "POST", "/api/v1/tasks", {**TASK, "description": "x" * 100_000})
    assert huge.status == 413
    assert len(audits(engine)) == 1  # only the one good create


def test_controls_and_runs(base: str, engine: sa.Engine) -> None:
    call(base, "POST", "/api/v1/tasks", TASK)
    ran = call(base, "POST", "/api/v1/tasks/api-task/run-now", {"kwargs": {"dry_run": True}})
    assert ran.status == 202
    with engine.connect() as conn:
        row = conn.execute(sa.select(schedules).where(schedules.c.name == "api-task")).one()
    assert row.run_now_requested_at is not None
    assert json.loads(row.run_now_overrides)["kwargs"] == {"dry_run": True}
    assert call(base, "POST", "/api/v1/tasks/from-file/run-now").status == 202  # no body
    paused = call(base, "POST", "/api/v1/tasks/from-file/pause", {"reason": "maintenance"})
    assert paused.status == 200 and paused.body["paused"]
    assert call(base, "POST", "/api/v1/tasks/from-file/resume").status == 200
    assert call(base, "GET", "/api/v1/runs/999", token=READ).status == 404
    assert call(base, "POST", "/api/v1/runs/999/cancel", {"reason": "x"}).status == 404
    stopped = call(base, "POST", "/api/v1/emergency-stop", {"reason": "incident 42"})
    assert stopped.status == 200 and stopped.body == {"paused": 2, "cancelled": 0}
    actions = [a.action for a in audits(engine)]
    assert actions[:5] == ["add", "run-now", "run-now", "pause", "resume"]
    assert all(a.actor.startswith("api:admin@") for a in audits(engine))


def test_get_run_returns_the_row(base: str, engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO scheduler_task_runs (task_name, scheduled_for, attempt, trigger,"
                " status, cancel_requested) VALUES ('from-file', :t, 1, 'schedule', 'missed', false)"
            ),
            {"t": datetime.now(UTC)},
        )
        run_id = conn.execute(sa.text("SELECT max(id) FROM scheduler_task_runs")).scalar_one()
    got = call(base, "GET", f"/api/v1/runs/{run_id}", token=READ)
    assert got.status == 200 and got.body["task"] == "from-file"
    cancel = call(base, "POST", f"/api/v1/runs/{run_id}/cancel", {"reason": "x"})
    assert cancel.status == 202 and cancel.body["status"] == "missed"


def test_ownership_conflicts_are_409(base: str) -> None:
    taken = call(base, "POST", "/api/v1/tasks", {**TASK, "name": "from-file"})
    assert taken.status == 409 and taken.body["error"]["owners"] == {"from-file": "file"}
    assert call(base, "DELETE", "/api/v1/tasks/from-file").status == 409
    assert call(base, "PATCH", "/api/v1/tasks/from-file", {"every": "5m"}).status == 409
    call(base, "POST", "/api/v1/tasks", TASK)
    assert call(base, "POST", "/api/v1/tasks", TASK).status == 409


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/tasks", TASK),
        ("PATCH", "/api/v1/tasks/from-file", {"every": "5m"}),
        ("DELETE", "/api/v1/tasks/from-file", None),
        ("POST", "/api/v1/tasks/from-file/run-now", None),
        ("POST", "/api/v1/tasks/from-file/pause", {"reason": "r"}),
        ("POST", "/api/v1/tasks/from-file/resume", None),
        ("POST", "/api/v1/runs/1/cancel", {"reason": "r"}),
        ("POST", "/api/v1/emergency-stop", {"reason": "r"}),
    ],
)
def test_writes_need_the_admin_token(base: str, engine: sa.Engine, method, path, body) -> None:
    assert call(base, method, path, body, token=None).status == 401
    assert call(base, method, path, body, token="wrong-token-0123456789").status == 401
    forbidden = call(base, method, path, body, token=READ)
    assert forbidden.status == 403 and "read token" in forbidden.body["error"]["message"]
    if body is not None:
        as_form = call(base, method, path, b"reason=r", content_type="text/plain")
        assert as_form.status == 415
    assert audits(engine) == []


def test_reads_need_a_token(base: str) -> None:
    assert call(base, "GET", "/api/v1/tasks/from-file", token=None).status == 401
    assert call(base, "GET", "/api/v1/tasks/from-file", token=ADMIN).status == 200


def test_api_off_answers_404(engine: sa.Engine, db_url: str) -> None:
    settings = ExporterSettings(port=0, token=READ)
    with ExporterServer(settings=settings, database_url=db_url, background_refresh=False) as server:
        for method, path, body in [
            ("POST", "/api/v1/tasks", TASK),
            ("POST", "/api/v1/tasks/from-file/pause", {"reason": "r"}),
            ("POST", "/api/v1/emergency-stop", {"reason": "r"}),
            ("GET", "/api/v1/runs/1", None),
            ("GET", "/api/v1/tasks/from-file", None),
        ]:
            assert call(server.url, method, path, body, token=READ).status in (404, 405), path
        assert server.admin_engine is None


def test_admin_token_must_differ_and_be_long() -> None:
    with pytest.raises(ValueError, match="differ"):
        ExporterSettings(token=ADMIN, admin_token=ADMIN)
    with pytest.raises(ValueError, match="16 characters"):
        ExporterSettings(admin_token="short")


def test_the_admin_engine_does_not_ping_a_connection_just_used(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The admin API's writer skips the ping of every checkout (a round trip per create):
    only connections idle for a while are pinged (tests/core/test_pool_ping.py)."""
    engine = create_admin_engine(db_url)
    pinged: list[object] = []
    monkeypatch.setattr(engine.dialect, "do_ping", pinged.append)
    try:
        for _ in range(3):
            with engine.connect() as conn:
                assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
        assert pinged == []
    finally:
        engine.dispose()


def test_a_dropped_database_connection_answers_503_then_the_next_write_succeeds(
    pg_url: str, pg_server: PostgresServer
) -> None:
    """A connection the server dropped soon after its last use is not pinged (the admin
    engine pings only idle ones): that one write answers 503 naming the cause, password
    scrubbed, and the pool hands the next write a fresh connection."""
    settings = ExporterSettings(port=0, token=READ, admin_token=ADMIN)
    with ExporterServer(settings=settings, database_url=pg_url, background_refresh=False) as srv:
        assert call(srv.url, "POST", "/api/v1/tasks", TASK).status == 201
        dbname = sa.make_url(pg_url).database
        with pg_server.admin() as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (dbname,),
            )
        second = {**TASK, "name": "api-task-2"}
        failed = call(srv.url, "POST", "/api/v1/tasks", second)
        assert failed.status == 503, failed.body
        assert failed.body["error"]["code"] == "unavailable"
        assert failed.body["error"]["message"].startswith("the database is unavailable: ")
        password = sa.make_url(pg_url).password
        assert password and password not in json.dumps(failed.body)
        assert call(srv.url, "POST", "/api/v1/tasks", second).status == 201
        assert call(srv.url, "GET", "/api/v1/tasks/api-task-2").status == 200
