"""``GET /api/v1/runs/{id}`` and ``GET /api/v1/runs/{id}/output``: a run with what it said,
read with the read token, the admin API off, on both backends."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core.config import parse_task_document
from scheduler_core.db import create_db_engine
from scheduler_core.models import run_output, task_runs
from scheduler_core.store import Store

READ = "read-token-0123456789"


def get(url: str, token: str | None = READ) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), dict(exc.headers)


@pytest.fixture
def run_id(db_url: str) -> Iterator[int]:
    engine = create_db_engine(db_url)
    now = datetime.now(UTC)
    task = parse_task_document(
        {"tasks": [{"name": "t", "command": ["true"], "every": "1h"}]}, source="t"
    )
    Store(engine).sync_tasks(task, now=now)
    with engine.begin() as conn:
        run = conn.execute(
            task_runs.insert().returning(task_runs.c.id),
            {"task_name": "t", "scheduled_for": now, "attempt": 1, "trigger": "schedule",
             "status": "failure", "started_at": now, "finished_at": now,
             "error_message": "boom", "error_traceback": "Traceback...\nValueError: boom",
             "cancel_requested": False},
        ).scalar_one()  # fmt: skip
        conn.execute(
            run_output.insert(),
            {"run_id": run, "task_name": "t", "output": "line 1\n<b>line 2</b>\n",
             "output_bytes": 5000, "output_dropped_bytes": 4980, "result": '{"rows": 3}',
             "result_note": None, "created_at": now},
        )  # fmt: skip
    engine.dispose()
    yield run


@pytest.fixture
def base(db_url: str) -> Iterator[str]:
    settings = ExporterSettings(port=0, token=READ)
    with ExporterServer(settings=settings, database_url=db_url, background_refresh=False) as server:
        yield server.url


def test_a_run_with_its_output_result_error_and_traceback(base: str, run_id: int) -> None:
    """The run document carries output, byte counts, result (decoded), error and traceback."""
    status, body, _headers = get(f"{base}/api/v1/runs/{run_id}")
    assert status == 200, body
    run = json.loads(body)
    assert (run["id"], run["task"], run["status"]) == (run_id, "t", "failure")
    assert run["output"] == "line 1\n<b>line 2</b>\n"
    assert (run["output_bytes"], run["output_dropped_bytes"]) == (5000, 4980)
    assert run["result"] == {"rows": 3} and run["result_note"] is None
    assert run["error_message"] == "boom" and run["error_traceback"].endswith("ValueError: boom")


def test_the_output_as_plain_text(base: str, run_id: int) -> None:
    """/output is text/plain (never HTML: nothing in it is interpreted), with the counts."""
    status, body, headers = get(f"{base}/api/v1/runs/{run_id}/output")
    assert status == 200
    assert body == "line 1\n<b>line 2</b>\n"
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert headers["X-Schedctl-Output-Bytes"] == "5000"
    assert headers["X-Schedctl-Output-Dropped-Bytes"] == "4980"


def test_unknown_runs_and_missing_tokens(base: str, run_id: int) -> None:
    """An unknown run is 404 on both routes; without the read token both are 401."""
    for path in (f"/api/v1/runs/{run_id + 1000}", f"/api/v1/runs/{run_id + 1000}/output"):
        status, body, _ = get(base + path)
        assert status == 404 and json.loads(body)["error"]["code"] == "unknown_run"
    for path in (f"/api/v1/runs/{run_id}", f"/api/v1/runs/{run_id}/output"):
        assert get(base + path, token=None)[0] == 401


def test_the_run_history_links_each_run_to_its_output(base: str, run_id: int) -> None:
    """/api/v1/tasks/{name}/runs (where the dashboards' recent-runs links land) gives each
    run's own URL and its output's."""
    status, body, _ = get(f"{base}/api/v1/tasks/t/runs")
    assert status == 200, body
    [run] = json.loads(body)["runs"]
    assert run["url"] == f"/api/v1/runs/{run_id}"
    assert run["output_url"] == f"/api/v1/runs/{run_id}/output"
    assert get(base + run["output_url"])[1] == "line 1\n<b>line 2</b>\n"
