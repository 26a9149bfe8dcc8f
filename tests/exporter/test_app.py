"""The aiohttp app: /metrics negotiation and promtool, /health, /ready, DB outages, JSON API."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Gauge

from exporter.api import status_document
from exporter.app import REFRESHER, create_app
from exporter.database import create_reader_engine
from exporter.refresh import RefreshState
from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core import models
from scheduler_core.alert_policy import AlertPolicy
from scheduler_core.db import create_db_engine
from scheduler_core.store.snapshot import Snapshot
from tests.exporter.conftest import with_client
from tests.exporter.factories import (
    FULL_ALERTS,
    NOW,
    FakeClock,
    insert,
    run_row,
    seed_every_state,
    task_snapshot,
)
from tests.support.pgserver import PostgresServer
from tests.support.prometheus import free_port, wait_until

TOKEN = "t0ken-for-tests"
OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def make_app(url, clock, **settings):
    engine = create_reader_engine(url)
    app = create_app(
        settings=ExporterSettings(port=0, **settings),
        engine=engine,
        registry=settings.pop("registry", None) if "registry" in settings else None,
        clock=clock,
        background_refresh=False,
    )
    return app, engine


def test_promtool_accepts_the_metrics_of_every_state(seeded_sqlite, clock):
    """`promtool check metrics` prints nothing for /metrics of a database with every state."""
    app, engine = make_app(seeded_sqlite, clock)

    async def scenario(client):
        await app[REFRESHER].refresh_once()
        response = await client.get("/metrics")
        assert response.status == 200
        return await response.read()

    try:
        body = with_client(app, scenario)
    finally:
        engine.dispose()
    assert b'scheduler_task_stuck{task="stuck-task"} 1.0' in body
    # The alerts-block families, from alerting-task (every field of an alerts: block set).
    for line in (
        b'scheduler_task_alert_threshold{kind="slower_than_usual_factor",task="alerting-task"} 3.0',
        b'scheduler_task_alert_policy_info{severity="critical",task="alerting-task"} 1.0',
        b'scheduler_task_deadline_missed{task="alerting-task"} 1.0',
        b'scheduler_alarm_open{kind="too_fast",task="alerting-task"} 1.0',
        b'scheduler_alarm_open{kind="slow",task="alerting-task"} 0.0',
    ):
        assert line in body, line
    result = subprocess.run(
        ["/usr/bin/promtool", "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")


def test_content_negotiation_and_gzip(seeded_sqlite, clock):
    """Prometheus text by default, OpenMetrics when asked, gzip when accepted; extra collectors
    follow the catalog and OpenMetrics ends with a single # EOF."""
    registry = CollectorRegistry()
    Gauge("extra_gauge", "An extra collector.", registry=registry).set(4)
    engine = create_reader_engine(seeded_sqlite)
    app = create_app(
        settings=ExporterSettings(), engine=engine, registry=registry, clock=clock,
        background_refresh=False,
    )  # fmt: skip

    async def scenario(client):
        await app[REFRESHER].refresh_once()
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        om = await client.get(
            "/metrics", headers={"Accept": OPENMETRICS_ACCEPT, "Accept-Encoding": "gzip"}
        )
        return (plain.headers.copy(), await plain.text(), om.headers.copy(), await om.text())

    try:
        plain_headers, plain, om_headers, om = with_client(app, scenario)
    finally:
        engine.dispose()
    assert plain_headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "Content-Encoding" not in plain_headers
    assert "# TYPE scheduler_task_runs_total counter" in plain
    assert plain.endswith("extra_gauge 4.0\n")
    assert om_headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
    assert om_headers["Content-Encoding"] == "gzip"
    assert "# TYPE scheduler_task_runs counter" in om
    assert "# UNIT scheduler_task_run_duration_seconds seconds" in om
    assert om.endswith("extra_gauge 4.0\n# EOF\n") and om.count("# EOF") == 1


def test_health_is_liveness_only(tmp_path, clock):
    """/health answers 200 even when the database cannot be read at all."""
    app, engine = make_app(f"sqlite:///{tmp_path / 'missing.db'}", clock)

    async def scenario(client):
        state = await app[REFRESHER].refresh_once()
        response = await client.get("/health")
        return state, response.status, await response.json()

    try:
        state, status, body = with_client(app, scenario)
    finally:
        engine.dispose()
    assert state.up is False
    assert (status, body) == (200, {"status": "healthy"})


def test_ready_follows_the_last_successful_refresh(seeded_sqlite):
    """/ready is 503 before the first refresh, 200 after it, and 503 once the last success is
    older than three refresh intervals (15 s here) by the injected clock."""
    clock = FakeClock(NOW)
    app, engine = make_app(seeded_sqlite, clock, refresh_interval=5.0)

    async def ready(client):
        response = await client.get("/ready")
        return response.status, (await response.json())["status"]

    async def scenario(client):
        seen = [await ready(client)]
        await app[REFRESHER].refresh_once()
        seen.append(await ready(client))
        clock.advance(15)
        seen.append(await ready(client))
        clock.advance(0.5)
        seen.append(await ready(client))
        await app[REFRESHER].refresh_once()
        seen.append(await ready(client))
        return seen

    try:
        seen = with_client(app, scenario)
    finally:
        engine.dispose()
    assert seen == [
        (503, "not_ready"), (200, "ready"), (200, "ready"), (503, "stale"), (200, "ready"),
    ]  # fmt: skip


@pytest.mark.postgres
def test_database_outage_keeps_serving_the_last_snapshot_without_leaking(
    pg_server: PostgresServer, caplog
):
    """With the PostgreSQL database gone, up drops to 0, the last snapshot is still served fast,
    the outage is explained, and the password appears in no response and no log line."""
    from tests.conftest import TEMPLATE_DB

    name = pg_server.create_database(template=TEMPLATE_DB)
    url = pg_server.url(name)
    writer = create_db_engine(url)
    seed_every_state(writer)
    writer.dispose()
    clock = FakeClock(NOW)
    app, engine = make_app(url, clock, token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bodies: list[str] = []

    async def get(client, path, **kwargs):
        response = await client.get(path, headers=auth, **kwargs)
        text = await response.text()
        bodies.append(text)
        return response.status, text

    async def scenario(client):
        refresher = app[REFRESHER]
        assert (await refresher.refresh_once()).up
        await get(client, "/api/v1/tasks/ok-task/runs")
        pg_server.drop_database(name)
        clock.advance(5)
        state = await refresher.refresh_once()
        started = time.perf_counter()
        metrics = await get(client, "/metrics")
        scrape_seconds = time.perf_counter() - started
        status = await get(client, "/api/v1/status")
        ready = await get(client, "/ready")
        runs = await get(client, "/api/v1/tasks/ok-task/runs")
        await get(client, "/api/v1/tasks/nope/runs", params={"limit": "0"})
        return state, metrics, scrape_seconds, status, ready, runs

    caplog.set_level(logging.DEBUG)
    try:
        state, metrics, scrape_seconds, status, ready, runs = with_client(app, scenario)
    finally:
        engine.dispose()
    assert state.up is False and state.snapshot is not None and state.last_error
    assert metrics[0] == 200
    assert "scheduler_exporter_up 0.0" in metrics[1]
    assert 'scheduler_task_stuck{task="stuck-task"} 1.0' in metrics[1]
    last_refresh = re.search(
        r"^scheduler_exporter_last_refresh_timestamp_seconds (\S+)$", metrics[1], re.M
    )
    assert last_refresh is not None and float(last_refresh.group(1)) == NOW.timestamp()
    assert scrape_seconds < 1.0
    document = json.loads(status[1])
    assert document["database_up"] is False and document["last_error"]
    assert document["snapshot_age_seconds"] == 5.0
    assert ready[0] == 200  # 5 s old: still within three refresh intervals
    assert runs[0] == 503 and json.loads(runs[1])["error"]["code"] == "database_unavailable"
    assert any("cannot read database" in r.getMessage() for r in caplog.records)
    everything = "\n".join(bodies) + "\n".join(r.getMessage() for r in caplog.records)
    assert PostgresServer.password not in everything


def test_starting_with_the_database_down_does_not_hang():
    """An exporter pointed at a closed port starts at once, answers /metrics with up 0 and
    /ready with 503, and keeps answering fast."""
    url = f"postgresql://schedctl:{PostgresServer.password}@127.0.0.1:{free_port()}/nothing"
    settings = ExporterSettings(port=0, refresh_interval=0.2)
    started = time.perf_counter()
    with ExporterServer(settings=settings, database_url=url) as server:
        startup = time.perf_counter() - started
        wait_until(lambda: server.state.last_attempt_at, timeout=20, what="a first refresh")
        from tests.support.prometheus import http_get

        t0 = time.perf_counter()
        body = http_get(f"{server.url}/metrics").decode()
        scrape = time.perf_counter() - t0
        with pytest.raises(Exception) as ready:
            http_get(f"{server.url}/ready")
    assert startup < 5.0
    assert scrape < 1.0
    assert "scheduler_exporter_up 0.0" in body
    assert "task=" not in body
    assert getattr(ready.value, "code", None) == 503
    assert PostgresServer.password not in body


# --- JSON API ---------------------------------------------------------------------------


@pytest.fixture
def api_db(seeded_sqlite):
    """The every-state database plus 7 runs of ok-task on two instances and 2 of another task."""
    writer = create_db_engine(seeded_sqlite)
    base = NOW - timedelta(hours=2)
    rows = [
        run_row(
            "ok-task",
            scheduled_for=base + timedelta(minutes=10 * i),
            status="failure" if i % 3 == 0 else "success",
            instance_id="node-a:1" if i % 2 else "node-b:2",
        )
        for i in range(7)
    ]
    rows += [run_row("late-task", scheduled_for=base + timedelta(minutes=i)) for i in range(2)]
    insert(writer, models.task_runs, rows)
    with writer.connect() as conn:
        ids = conn.execute(
            sa.select(models.task_runs.c.id)
            .where(models.task_runs.c.task_name == "ok-task")
            .order_by(models.task_runs.c.id.desc())
        ).scalars().all()  # fmt: skip
    writer.dispose()
    return seeded_sqlite, list(ids)


def api_calls(url, clock, calls, *, token=None, refresh=True):
    """Run GET requests (path, params, headers) against a fresh app; return (status, json)."""
    app, engine = make_app(url, clock, token=token)

    async def scenario(client):
        if refresh:
            await app[REFRESHER].refresh_once()
        out = []
        for path, params, headers in calls:
            response = await client.get(path, params=params or {}, headers=headers or {})
            out.append((response.status, json.loads(await response.text()), response.headers))
        return out

    try:
        return with_client(app, scenario)
    finally:
        engine.dispose()


def test_token_is_required_when_configured(api_db, clock):
    """With a token, /metrics and /api answer 401 (envelope, WWW-Authenticate) without it or
    with a wrong one; probes stay open; the right token works."""
    url, _ = api_db
    good = {"Authorization": f"Bearer {TOKEN}"}
    results = api_calls(
        url,
        clock,
        [
            ("/api/v1/status", None, None),
            ("/api/v1/status", None, {"Authorization": "Bearer wrong"}),
            ("/api/v1/tasks/ok-task/runs", None, {"Authorization": TOKEN}),
            ("/api/v1/status", None, good),
            ("/health", None, None),
            ("/ready", None, None),
        ],
        token=TOKEN,
    )
    for status, body, headers in results[:3]:
        assert status == 401
        assert body["error"]["code"] == "unauthorized"
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert [r[0] for r in results[3:]] == [200, 200, 200]


def test_metrics_needs_the_token_too(api_db, clock):
    """/metrics is behind the token as well (a scrape config must send it)."""
    url, _ = api_db
    app, engine = make_app(url, clock, token=TOKEN)

    async def scenario(client):
        denied = await client.get("/metrics")
        allowed = await client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        return denied.status, allowed.status

    try:
        assert with_client(app, scenario) == (401, 200)
    finally:
        engine.dispose()


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"before_id": "-3"}, "before_id"),
        ({"offset": "x"}, "offset"),
        ({"offset": "2", "before_id": "9"}, "offset"),
        ({"status": "exploded"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"instance_id": ""}, "instance_id"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_query_parameter_is_a_400_naming_it(api_db, clock, params, parameter):
    """Each invalid query parameter gets a 400 envelope whose message names that parameter."""
    url, _ = api_db
    [(status, body, _)] = api_calls(url, clock, [("/api/v1/tasks/ok-task/runs", params, None)])
    assert status == 400
    assert body["error"]["code"] == "invalid_parameter"
    assert f"'{parameter}'" in body["error"]["message"]


def test_unknown_task_and_unknown_path_are_404_envelopes(api_db, clock):
    """An unknown task and an unknown route both answer with the JSON error envelope."""
    url, _ = api_db
    results = api_calls(
        url, clock, [("/api/v1/tasks/no-such-task/runs", None, None), ("/api/v2/x", None, None)]
    )
    assert results[0][0] == 404
    assert results[0][1] == {
        "error": {"code": "unknown_task", "message": "no task named 'no-such-task'"}
    }
    assert results[1][0] == 404 and results[1][1]["error"]["code"] == "not_found"


def test_runs_are_paginated_newest_first(api_db, clock):
    """Cursor pages (before_id) and offset pages both walk all runs newest first, once each."""
    url, ids = api_db
    path = "/api/v1/tasks/ok-task/runs"
    [(_, page1, _)] = api_calls(url, clock, [(path, {"limit": "3"}, None)])
    assert [r["id"] for r in page1["runs"]] == ids[:3]
    assert page1["next_before_id"] == ids[2] and page1["next_offset"] == 3
    results = api_calls(
        url,
        clock,
        [
            (path, {"limit": "3", "before_id": str(ids[2])}, None),
            (path, {"limit": "3", "before_id": str(ids[5])}, None),
            (path, {"limit": "3", "offset": "3"}, None),
            (path, {"limit": "3", "offset": "6"}, None),
            (path, None, None),
        ],
    )
    (_, page2, _), (_, page3, _), (_, off2, _), (_, off3, _), (_, default, _) = results
    assert [r["id"] for r in page2["runs"]] == ids[3:6]
    assert [r["id"] for r in page3["runs"]] == ids[6:]
    assert page3["next_before_id"] is None and page3["next_offset"] is None
    assert [r["id"] for r in off2["runs"]] == ids[3:6]
    assert [r["id"] for r in off3["runs"]] == ids[6:] and off3["next_offset"] is None
    assert default["limit"] == 50 and len(default["runs"]) == len(ids)
    assert all(r["task"] == "ok-task" for r in default["runs"])


def test_runs_filters(api_db, clock):
    """status, instance_id and since each narrow the history to matching runs."""
    url, _ = api_db
    path = "/api/v1/tasks/ok-task/runs"
    since = (NOW - timedelta(hours=2) + timedelta(minutes=35)).isoformat()
    results = api_calls(
        url,
        clock,
        [
            (path, {"status": "failure"}, None),
            (path, {"instance_id": "node-a:1"}, None),
            (path, {"since": since}, None),
            (path, {"since": since.replace("+00:00", "Z"), "status": "success"}, None),
        ],
    )
    failures, on_a, recent, recent_ok = (r[1]["runs"] for r in results)
    assert failures and all(r["status"] == "failure" for r in failures)
    assert len(failures) == 3  # i = 0, 3, 6
    assert on_a and all(r["instance_id"] == "node-a:1" for r in on_a)
    assert all(r["started_at"] >= since for r in recent)
    assert len(recent) == 4  # i = 3..6, plus the seeded run at NOW - 62 s
    assert all(r["status"] == "success" for r in recent_ok) and len(recent_ok) == 3


def test_status_reports_instances_counts_and_badges(api_db, clock):
    """/api/v1/status lists instances, task counts by badge, the stuck tasks and every task
    with its badge."""
    url, _ = api_db
    [(status, body, _)] = api_calls(url, clock, [("/api/v1/status", None, None)])
    assert status == 200
    assert body["database_up"] is True
    assert body["task_count"] == 9
    assert body["task_counts"] == {
        "disabled": 1, "paused": 1, "stuck": 1, "running": 1, "failing": 1, "late": 1, "ok": 3,
    }  # fmt: skip
    assert body["any_stuck"] is True and body["stuck_tasks"] == ["stuck-task"]
    badges = {t["name"]: t["badge"] for t in body["tasks"]}
    assert badges["failing-task"] == "failing" and badges["paused-task"] == "paused"
    paused = next(t for t in body["tasks"] if t["name"] == "paused-task")
    assert paused["pause_reason"] == "maintenance"
    assert {i["instance_id"]: i["running_runs"] for i in body["instances"]} == {
        "node-a:1": 2,
        "node-b:2": 0,
    }


def test_status_tasks_carry_their_alerts_block_and_deadline(api_db, clock):
    """Each task document has ``alerts`` (the alerts: block, durations in seconds; {} without
    one) and ``deadline_missed`` (null without a deadline)."""
    url, _ = api_db
    [(status, body, _)] = api_calls(url, clock, [("/api/v1/status", None, None)])
    assert status == 200
    tasks = {t["name"]: t for t in body["tasks"]}
    alerting = tasks["alerting-task"]
    assert alerting["alerts"] == {
        "failures": 2, "late_after": 600.0, "no_success_for": 86400.0, "max_duration": 1800.0,
        "min_duration": 2.0, "slower_than_usual": 3.0,
        "deadline": {"at": "06:00:00", "timezone": "Europe/Berlin"}, "severity": "critical",
    }  # fmt: skip
    assert alerting["alerts"] == json.loads(json.dumps(FULL_ALERTS.to_dict()))
    assert alerting["deadline_missed"] is True
    assert alerting["open_alarms"] == ["deadline_missed", "too_fast"]
    assert (tasks["ok-task"]["alerts"], tasks["ok-task"]["deadline_missed"]) == ({}, None)


def test_task_document_alerts_from_a_snapshot():
    """Built from snapshots directly: a partial policy gives only its fields, a deadline not
    missed is false, and the document stays plain JSON."""
    tasks = (
        task_snapshot("a", alert_policy=AlertPolicy(max_duration=60.0, severity="info")),
        task_snapshot("b", alert_policy=FULL_ALERTS, deadline_missed=False),
        task_snapshot("c"),
    )
    state = RefreshState(
        snapshot=Snapshot(taken_at=NOW, tasks=tasks, instances=()), up=True, last_success_at=NOW
    )
    documents = json.loads(json.dumps(status_document(state, NOW)))["tasks"]
    assert [(d["alerts"], d["deadline_missed"]) for d in documents] == [
        ({"max_duration": 60.0, "severity": "info"}, None),
        (FULL_ALERTS.to_dict() | {"deadline": {"at": "06:00:00", "timezone": "Europe/Berlin"}},
         False),
        ({}, None),
    ]  # fmt: skip


def test_status_before_any_snapshot_is_a_503_envelope(api_db, clock):
    """Before the first successful read, /api/v1/status answers 503 with the envelope."""
    url, _ = api_db
    [(status, body, _)] = api_calls(url, clock, [("/api/v1/status", None, None)], refresh=False)
    assert status == 503 and body["error"]["code"] == "no_snapshot"


@pytest.mark.postgres
def test_statement_timeout_bounds_a_blocked_refresh(pg_url, clock):
    """A refresh blocked by a lock fails after the statement timeout (up 0, reason given) and
    the next refresh after the lock is released succeeds."""
    writer = create_db_engine(pg_url)
    seed_every_state(writer)
    engine = create_reader_engine(pg_url, statement_timeout=0.5)
    app = create_app(
        settings=ExporterSettings(statement_timeout=0.5), engine=engine, clock=clock,
        background_refresh=False,
    )  # fmt: skip

    async def scenario(client):
        refresher = app[REFRESHER]
        assert (await refresher.refresh_once()).up
        with writer.connect() as locker:
            locker.exec_driver_sql("LOCK TABLE scheduler_schedules IN ACCESS EXCLUSIVE MODE")
            started = time.perf_counter()
            blocked = await refresher.refresh_once()
            waited = time.perf_counter() - started
            metrics = await (await client.get("/metrics")).text()
            locker.rollback()
        return blocked, waited, metrics, await refresher.refresh_once()

    try:
        blocked, waited, metrics, recovered = with_client(app, scenario)
    finally:
        engine.dispose()
        writer.dispose()
    assert blocked.up is False and "statement timeout" in (blocked.last_error or "")
    assert waited < 5
    assert "scheduler_exporter_up 0.0" in metrics
    assert recovered.up is True


def test_concurrent_refreshes_share_one_read(seeded_sqlite, clock):
    """Two refresh requests at once result in one SQL read and one new state."""
    from tests.exporter.factories import StatementCounter

    app, engine = make_app(seeded_sqlite, clock)

    async def scenario(_client):
        refresher = app[REFRESHER]
        await refresher.refresh_once()
        with StatementCounter(engine) as counter:
            first, second = await asyncio.gather(refresher.refresh_once(), refresher.refresh_once())
        return first, second, len(counter.statements)

    try:
        first, second, statements = with_client(app, scenario)
    finally:
        engine.dispose()
    assert first is second and first.generation == 2
    assert statements == 6


def test_server_takes_a_listen_string_like_the_demo(seeded_sqlite):
    """ExporterServer(database_url=..., listen="host:port") serves there and stops cleanly."""
    from tests.support.prometheus import http_get

    server = ExporterServer(database_url=seeded_sqlite, listen="127.0.0.1:0")
    with server:
        assert server.url.startswith("http://127.0.0.1:") and server.port
        assert json.loads(http_get(f"{server.url}/health")) == {"status": "healthy"}
        state = wait_until(lambda: server.state.snapshot and server.state, timeout=30,
                           what="the first refresh")  # fmt: skip
        assert state.up
    with pytest.raises(OSError):
        http_get(f"{server.url}/health", timeout=2)
