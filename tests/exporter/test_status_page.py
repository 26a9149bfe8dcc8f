"""The status page without a browser: escaping, the table's order/filter/pages, sessions, and
the HTTP contract of its routes (headers, access, sign-in, CSRF, form limits, the database
down) on the exporter's app over the every-state database."""

from __future__ import annotations

import os
import re
from html import unescape
from pathlib import Path
from typing import Any

import pytest

from exporter.api import status_document
from exporter.app import REFRESHER, create_app
from exporter.cli import build_parser, settings_from_args
from exporter.database import create_reader_engine
from exporter.settings import ExporterSettings
from exporter.ui.forms import MAX_FORM_BYTES
from exporter.ui.listing import PAGE_SIZE, ListingQuery, TaskOrder, parse_listing_query
from exporter.ui.markup import Markup, escape, html, join
from exporter.ui.sessions import ANONYMOUS_IDLE, SessionStore
from scheduler_core.db import create_db_engine
from scheduler_core.store.snapshot import Snapshot
from tests.exporter.conftest import with_client
from tests.exporter.factories import NOW, FakeClock, schedule_row, task_snapshot

READ = "read-token-for-page-tests"
ADMIN = "admin-token-for-page-tests-0123456789"
ROW = re.compile(r'<tr data-task="([^"]*)" data-badge="([^"]*)">')


# ------------------------------------------------------------------------- markup
def test_values_are_escaped_unless_already_markup() -> None:
    bad = "<img src=x onerror=alert(1)> & \"'"
    out = html("<td title='{t}'>{v}</td>", t=bad, v=bad)
    assert "<img" not in out and "&lt;img src=x onerror=alert(1)&gt; &amp; &quot;&#x27;" in out
    assert html("<p>{x}</p>", x=Markup("<b>ok</b>")) == "<p><b>ok</b></p>"
    assert join(["<i>", Markup("<b>")]) == "&lt;i&gt;<b>"
    assert escape(None) == ""


# ------------------------------------------------------------------------- listing
def _snapshot(**badges: str) -> Snapshot:
    tasks = tuple(task_snapshot(name, badge=badge) for name, badge in sorted(badges.items()))
    return Snapshot(taken_at=NOW, tasks=tasks, instances=())


def test_failing_and_stuck_tasks_sort_first_then_by_name() -> None:
    snapshot = _snapshot(a="ok", b="paused", c="failing", d="stuck", e="late", f="disabled",
                         g="running", h="failing")  # fmt: skip
    names = [t.name for t in TaskOrder().ordered(snapshot)]
    assert names == ["d", "c", "h", "e", "g", "a", "b", "f"]


def test_the_filter_and_the_pages() -> None:
    snapshot = _snapshot(**{f"Job-{i:03d}": "ok" for i in range(250)}, other="failing")
    order = TaskOrder()
    first = order.page(snapshot, ListingQuery())
    assert (first.matching, first.pages, len(first.tasks)) == (251, 3, PAGE_SIZE)
    assert first.tasks[0].name == "other"
    last = order.page(snapshot, ListingQuery(page=99))  # beyond the end: the last page
    assert (last.page, len(last.tasks), last.first) == (3, 51, 200)
    named = order.page(snapshot, ListingQuery(name="job-01"))  # case-insensitive part
    assert [t.name for t in named.tasks] == [f"Job-{i:03d}" for i in range(10, 20)]
    assert [t.name for t in order.page(snapshot, ListingQuery(badge="failing")).tasks] == ["other"]
    assert order.ordered(snapshot) is order.ordered(snapshot)  # once per snapshot


def test_a_hand_edited_query_falls_back_to_the_defaults() -> None:
    assert parse_listing_query({"badge": "nope", "page": "x", "q": "  a "}) == ListingQuery(
        name="a"
    )
    assert parse_listing_query({"badge": "late", "page": "-3"}) == ListingQuery(badge="late")


# ------------------------------------------------------------------------- sessions
def test_sessions_expire_and_end() -> None:
    now = [0.0]
    store = SessionStore(idle=100.0, lifetime=1000.0, clock=lambda: now[0])
    admin = store.new("admin", "alice")
    anonymous = store.new("anonymous")
    assert admin.id != anonymous.id and admin.csrf != admin.id and len(admin.id) >= 40
    assert admin.csrf_matches(admin.csrf) and not admin.csrf_matches(anonymous.csrf)
    assert not admin.csrf_matches(None)
    now[0] = 99.0
    assert store.get(admin.id) is admin and store.get(anonymous.id) is anonymous
    now[0] = 100.0 + ANONYMOUS_IDLE  # both were last used at 99 s
    assert store.get(anonymous.id) is None and store.get(admin.id) is None
    kept = store.new("read", "r")
    for _ in range(16):  # used every 60 s, never idle: alive for its 1000 s lifetime
        now[0] += 60.0
        assert store.get(kept.id) is kept
    now[0] += 60.0  # 1020 s after sign-in
    assert store.get(kept.id) is None
    ended = store.new("admin", "b")
    store.end(ended.id)
    assert store.get(ended.id) is None


def test_the_session_store_is_bounded() -> None:
    store = SessionStore(max_sessions=3)
    sessions = [store.new("anonymous") for _ in range(3)]
    admin = store.new("admin", "a")
    assert len(store) == 3 and store.get(admin.id) is admin
    assert store.get(sessions[0].id) is None  # the oldest anonymous one made room


# ------------------------------------------------------------------------- the app
def make_app(url: str, clock: FakeClock, **settings: Any) -> tuple[Any, Any, Any]:
    engine = create_reader_engine(url)
    admin_engine = create_db_engine(url) if settings.get("admin_token") else None
    app = create_app(
        settings=ExporterSettings(port=0, **settings), engine=engine, clock=clock,
        background_refresh=False, admin_engine=admin_engine,
    )  # fmt: skip
    return app, engine, admin_engine


def serve(url: str, scenario: Any, **settings: Any) -> Any:
    clock = FakeClock(NOW)
    app, engine, admin_engine = make_app(url, clock, **settings)

    async def run(client: Any) -> Any:
        await app[REFRESHER].refresh_once()
        return await scenario(client, app, clock)

    try:
        return with_client(app, run)
    finally:
        engine.dispose()
        if admin_engine is not None:
            admin_engine.dispose()


def test_the_tasks_page_shows_every_badge_of_the_api_with_strict_headers(seeded_sqlite) -> None:
    async def scenario(client, app, clock):
        page = await client.get("/")
        body = await page.text()
        state = app[REFRESHER].state
        return page.status, dict(page.headers), body, status_document(state, clock())

    status, headers, body, document = serve(
        seeded_sqlite, scenario, grafana_url="https://grafana.example.com"
    )
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe" not in csp
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    shown = {unescape(name): badge for name, badge in ROW.findall(body)}
    assert shown == {t["name"]: t["badge"] for t in document["tasks"]}
    assert list(shown)[:2] == ["stuck-task", "failing-task"]
    assert "<script>" not in body and " on" + "error=" not in body  # no inline script at all
    assert 'href="https://grafana.example.com/d/schedctl-overview"' in body
    assert 'href="https://grafana.example.com/d/schedctl-task"' in body
    assert 'href="/metrics"' in body
    assert 'data-instance="node-b:2"' in body and "10 s ago" in body  # heartbeat age


def test_no_grafana_link_without_a_grafana_url(seeded_sqlite) -> None:
    async def scenario(client, _app, _clock):
        return await (await client.get("/ui/tasks/alerting-task")).text()

    body = serve(seeded_sqlite, scenario)
    assert "grafana" not in body.lower()
    assert "06:00 Europe/Berlin" in body and "missed" in body  # the alert thresholds


def test_a_database_outage_is_said_plainly(sqlite_url, tmp_path: Path) -> None:
    from tests.exporter.factories import seed_every_state

    writer = create_db_engine(sqlite_url)
    seed_every_state(writer)
    writer.dispose()
    path = Path(sqlite_url.removeprefix("sqlite:///"))

    clock = FakeClock(NOW)
    app, engine, _ = make_app(sqlite_url, clock)

    async def scenario(client):
        assert (await app[REFRESHER].refresh_once()).up
        path.rename(tmp_path / "moved.db")
        engine.dispose()  # no pooled connection keeps the old file open
        clock.advance(42)
        state = await app[REFRESHER].refresh_once()
        body = await (await client.get("/")).text()
        return state, body

    try:
        state, body = with_client(app, scenario)
    finally:
        engine.dispose()
    assert state.up is False
    assert "database UNREACHABLE" in body
    assert "The database is unreachable" in body and "42 s ago" in body
    assert 'data-task="ok-task"' in body  # the last good data is still shown


def test_no_data_yet_is_explained(sqlite_url) -> None:
    os.remove(sqlite_url.removeprefix("sqlite:///"))
    clock = FakeClock(NOW)
    app, engine, _ = make_app(sqlite_url, clock)

    async def scenario(client):
        await app[REFRESHER].refresh_once()
        return await (await client.get("/")).text()

    try:
        body = with_client(app, scenario)
    finally:
        engine.dispose()
    assert "No data yet" in body and "no data yet" in body


def test_with_a_read_token_the_page_needs_a_session_or_the_bearer(seeded_sqlite) -> None:
    async def scenario(client, _app, _clock):
        anonymous = await client.get("/ui/tasks/ok-task?runs=1", allow_redirects=False)
        bearer = await client.get("/", headers={"Authorization": f"Bearer {READ}"})
        wrong = await client.get("/", headers={"Authorization": "Bearer nope"},
                                 allow_redirects=False)  # fmt: skip
        api = await client.get("/api/v1/status")
        return anonymous, bearer.status, wrong.status, api.status

    anonymous, bearer, wrong, api = serve(seeded_sqlite, scenario, token=READ)
    assert anonymous.status == 303
    assert anonymous.headers["Location"] == "/ui/sign-in?next=%2Fui%2Ftasks%2Fok-task%3Fruns%3D1"
    assert (bearer, wrong, api) == (200, 303, 401)


async def _sign_in_form(client: Any) -> tuple[str, str]:
    form = await client.get("/ui/sign-in")
    body = await form.text()
    csrf = re.search(r'name="csrf" value="([^"]+)"', body)
    assert csrf is not None
    return client.session.cookie_jar.filter_cookies(client.make_url("/"))[
        "schedctl_session"
    ].value, csrf.group(1)


def test_signing_in_checks_the_token_and_the_csrf_and_starts_a_new_session(
    seeded_sqlite,
) -> None:
    async def scenario(client, _app, _clock):
        anonymous, csrf = await _sign_in_form(client)
        post = client.post
        no_csrf = await post("/ui/sign-in", data={"token": ADMIN}, allow_redirects=False)
        wrong = await post("/ui/sign-in", data={"token": "guess", "csrf": csrf},
                           allow_redirects=False)  # fmt: skip
        good = await post("/ui/sign-in", data={"token": ADMIN, "csrf": csrf, "who": "al<i>ce",
                                                "next": "//evil.example/"},
                          allow_redirects=False)  # fmt: skip
        signed = good.cookies["schedctl_session"]
        page = await client.get("/")
        return anonymous, no_csrf.status, wrong.status, good, signed, await page.text()

    anonymous, no_csrf, wrong, good, signed, page = serve(
        seeded_sqlite, scenario, token=READ, admin_token=ADMIN
    )
    assert (no_csrf, wrong, good.status) == (403, 401, 303)
    assert good.headers["Location"] == "/"  # never to another site
    assert signed.value != anonymous
    assert signed["httponly"] and signed["samesite"] == "Strict" and signed["path"] == "/"
    assert "signed in as <b>alice</b> (admin)" in page
    assert ADMIN not in page


def test_posts_are_bounded_typed_and_same_origin(seeded_sqlite) -> None:
    async def scenario(client, _app, _clock):
        _, csrf = await _sign_in_form(client)
        big = await client.post("/ui/sign-in", data={"csrf": csrf, "x": "a" * MAX_FORM_BYTES})
        json_body = await client.post("/ui/sign-in", json={"csrf": csrf})
        foreign = await client.post(
            "/ui/sign-in", data={"csrf": csrf, "token": ADMIN},
            headers={"Origin": "https://evil.example"}, allow_redirects=False,
        )  # fmt: skip
        return big.status, json_body.status, foreign.status

    assert serve(seeded_sqlite, scenario, admin_token=ADMIN) == (413, 415, 403)


def test_without_the_admin_api_there_is_no_action_route(seeded_sqlite) -> None:
    async def scenario(client, _app, _clock):
        confirm = await client.get("/ui/confirm/pause?task=ok-task")
        act = await client.post("/ui/actions/pause", data={"task": "ok-task", "reason": "x"})
        sign_in = await client.get("/ui/sign-in", allow_redirects=False)
        return confirm.status, act.status, sign_in.status

    # Nothing to sign in to either: the page is open and read-only.
    assert serve(seeded_sqlite, scenario) == (404, 404, 303)


def test_actions_need_an_admin_session(seeded_sqlite) -> None:
    async def scenario(client, _app, _clock):
        confirm = await client.get("/ui/confirm/pause?task=ok-task", allow_redirects=False)
        act = await client.post("/ui/actions/pause", data={"task": "ok-task", "reason": "x"})
        return confirm.status, act.status

    assert serve(seeded_sqlite, scenario, admin_token=ADMIN) == (303, 403)


def test_the_assets_are_ours_only(seeded_sqlite) -> None:
    async def scenario(client, _app, _clock):
        js = await client.get("/ui/static/app.js")
        other = await client.get("/ui/static/..%2Fcontext.py")
        return (
            js.status,
            js.headers["Content-Type"],
            js.headers["X-Content-Type-Options"],
            (other.status),
        )

    assert serve(seeded_sqlite, scenario) == (
        200, "text/javascript; charset=utf-8", "nosniff", 404,
    )  # fmt: skip


def test_a_run_page_escapes_and_masks(sqlite_url) -> None:
    from tests.exporter.factories import insert, run_row

    writer = create_db_engine(sqlite_url)
    from scheduler_core import models

    insert(writer, models.schedules, [schedule_row("t")])
    insert(writer, models.task_runs, [run_row("t", scheduled_for=NOW, status="failure",
                                              error_message="<b>bad</b>")])  # fmt: skip
    writer.dispose()

    async def scenario(client, _app, _clock):
        found = await client.get("/ui/runs/1")
        missing = await client.get("/ui/runs/99")
        return found.status, await found.text(), missing.status

    status, body, missing = serve(sqlite_url, scenario)
    assert (status, missing) == (200, 404)
    assert "&lt;b&gt;bad&lt;/b&gt;" in body and "<b>bad</b>" not in body


def test_every_action_goes_through_the_client_and_is_audited_as_the_ui(seeded_sqlite) -> None:
    """Run now, pause, resume, cancel and emergency stop, each from its confirmation page's
    form, land in the audit log as ``ui:<who>@<address>`` with the reason given."""
    from scheduler_core.store import Store

    async def scenario(client, _app, _clock):
        _, csrf = await _sign_in_form(client)
        await client.post("/ui/sign-in", data={"token": ADMIN, "csrf": csrf, "who": "ops"})
        steps = [
            ("run-now", "task=ok-task", {"task": "ok-task"}),
            ("pause", "task=ok-task", {"task": "ok-task", "reason": "nightly upgrade"}),
            ("resume", "task=ok-task", {"task": "ok-task"}),
            ("cancel", "run=3", {"run": "3", "reason": "hung"}),
            ("emergency-stop", "", {"reason": "all hands"}),
        ]
        answers = []
        for action, query, fields in steps:
            confirm = await (await client.get(f"/ui/confirm/{action}?{query}")).text()
            token = re.search(r'name="csrf" value="([^"]+)"', confirm)
            assert token is not None, confirm
            done = await client.post(f"/ui/actions/{action}", data={**fields, "csrf": token.group(1)},
                                     allow_redirects=False)  # fmt: skip
            answers.append((done.status, done.headers.get("Location")))
        flash = await (await client.get("/")).text()
        no_reason = await client.post(
            "/ui/actions/pause", data={"task": "ok-task", "csrf": token.group(1)}
        )
        return answers, flash, no_reason.status

    answers, page, no_reason = serve(seeded_sqlite, scenario, admin_token=ADMIN)
    assert answers == [
        (303, "/ui/tasks/ok-task"), (303, "/ui/tasks/ok-task"), (303, "/ui/tasks/ok-task"),
        (303, "/ui/runs/3"), (303, "/"),
    ]  # fmt: skip
    assert "Emergency stop: " in page and "task(s) paused" in page
    assert no_reason == 400
    engine = create_db_engine(seeded_sqlite)
    try:
        events = Store(engine).audit_log(limit=50)
    finally:
        engine.dispose()
    ours = [(e["action"], e["task_name"], e["run_id"], e["reason"]) for e in events
            if e["actor"] == "ui:ops@127.0.0.1"]  # fmt: skip
    assert [(a, t, r) for a, t, r, _why in ours] == [
        ("emergency-stop", None, None), ("cancel", "running-task", 3), ("resume", "ok-task", None),
        ("pause", "ok-task", None), ("run-now", "ok-task", None),
    ]  # fmt: skip
    reasons = {a: why for a, _t, _r, why in ours}
    assert reasons["pause"] == "nightly upgrade" and reasons["cancel"] == "hung"
    assert reasons["emergency-stop"] == "all hands"
    assert {e["actor"] for e in events} == {"ui:ops@127.0.0.1"}


# ------------------------------------------------------------------------- settings
def test_the_grafana_url_option() -> None:
    args = build_parser().parse_args(["--grafana-url", "https://g.example.com/"])
    settings, _url = settings_from_args(args, environ={})
    assert settings.grafana_url == "https://g.example.com"
    args = build_parser().parse_args([])
    settings, _url = settings_from_args(args, environ={"SCHEDCTL_GRAFANA_URL": "http://g:3000"})
    assert settings.grafana_url == "http://g:3000"
    with pytest.raises(ValueError, match="http"):
        settings_from_args(build_parser().parse_args(["--grafana-url", "g.example.com"]), {})


# ------------------------------------------------------------------------- schedctl demo
@pytest.mark.slow
def test_schedctl_demo_prints_the_page_url_first(tmp_path: Path) -> None:
    """The first line `schedctl demo` prints is the status page's URL, and it serves the page."""
    import subprocess
    import sys
    import urllib.request

    command = [
        sys.executable, "-m", "scheduler_core.cli", "demo", "--duration", "4",
        "--database-url", f"sqlite:///{tmp_path / 'demo.db'}",
        "--exporter-listen", "127.0.0.1:0", "--health-listen", "off", "--drain-grace", "1s",
    ]  # fmt: skip
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as demo:
        assert demo.stdout is not None
        first = demo.stdout.readline()
        match = re.fullmatch(r"status page: (http://127\.0\.0\.1:\d+/)\n", first)
        assert match, first
        with urllib.request.urlopen(match.group(1), timeout=10) as response:
            body = response.read().decode()
        assert response.headers["Content-Type"] == "text/html; charset=utf-8"
        assert "<h1>Tasks</h1>" in body
        rest = demo.stdout.read()
        assert demo.wait(timeout=60) == 0
    assert "/metrics" in rest
