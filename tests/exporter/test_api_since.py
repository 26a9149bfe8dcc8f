"""``/api/v1/tasks/{name}/runs?since=`` takes what ``schedctl runs --since`` takes (a duration
back from now or an ISO time, one parser) and both keep the same runs: those that started since
then, and rows that never started (missed, skipped) recorded since then."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from multidict import MultiDict

from exporter.api import parse_runs_query
from exporter.errors import ApiError
from scheduler_core import models
from scheduler_core.cli import build_parser
from scheduler_core.db import create_db_engine
from scheduler_core.durations import parse_since
from scheduler_core.store import Store
from tests.exporter.factories import NOW, insert, run_row, running_run_row, schedule_row
from tests.exporter.test_app import api_calls


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2d", NOW - timedelta(days=2)),
        ("90m", NOW - timedelta(minutes=90)),
        ("3600", NOW - timedelta(hours=1)),
        ("2026-02-28T12:00:00Z", datetime(2026, 2, 28, 12, tzinfo=UTC)),
        ("2026-02-28T12:00:00", datetime(2026, 2, 28, 12, tzinfo=UTC)),
        ("2026-02-28T13:00:00+01:00", datetime(2026, 2, 28, 12, tzinfo=UTC)),
    ],
)
def test_since_is_a_duration_or_an_iso_time_like_the_cli(raw: str, expected: datetime) -> None:
    query = parse_runs_query("ok-task", MultiDict({"since": raw}), now=NOW)
    assert query.since == expected == parse_since(raw, now=NOW)
    assert query.since.tzinfo is not None and query.since.utcoffset() == timedelta(0)


def test_since_defaults_to_the_wall_clock() -> None:
    before = datetime.now(UTC)
    since = parse_runs_query("ok-task", MultiDict({"since": "1h"})).since
    assert since is not None
    assert before - timedelta(hours=1) <= since <= datetime.now(UTC) - timedelta(hours=1)


@pytest.mark.parametrize("raw", ["yesterday", "-5m", "2d ago", "0s", ""])
def test_bad_since_is_a_400_naming_the_parameter_and_the_value(raw: str) -> None:
    with pytest.raises(ApiError) as caught:
        parse_runs_query("ok-task", MultiDict({"since": raw}), now=NOW)
    assert caught.value.status == 400
    assert "'since'" in caught.value.message and repr(raw) in caught.value.message


def test_bad_since_over_http(seeded_sqlite, clock) -> None:
    [(status, body, _)] = api_calls(
        seeded_sqlite, clock, [("/api/v1/tasks/ok-task/runs", {"since": "last week"}, None)]
    )
    assert status == 400 and body["error"]["code"] == "invalid_parameter"
    assert "'since'" in body["error"]["message"] and "'last week'" in body["error"]["message"]


def test_api_and_cli_keep_the_same_runs_since(sqlite_url, clock, capsys) -> None:
    """Relative to the wall clock: runs started 3 h and 30 min ago, one running for 1 min, a
    skipped tick recorded 4 h ago, and a run of missed ticks recorded 5 min ago whose first tick
    is 2 days old. ``since=2h`` keeps the 30 min run, the running one and the missed row.
    The exporter reads durations from its own (injected) clock, here set to the wall clock."""
    now = datetime.now(UTC)
    clock.now = now
    writer = create_db_engine(sqlite_url)
    try:
        insert(writer, models.schedules, [schedule_row("job", now=now)])
        missed_first = now - timedelta(days=2)
        rows = {
            "old": run_row("job", scheduled_for=now - timedelta(hours=3)),
            "recent": run_row("job", scheduled_for=now - timedelta(minutes=30)),
            "skipped-long-ago": run_row(
                "job",
                scheduled_for=now - timedelta(hours=4),
                status="skipped",
                started_at=None,
                finished_at=now - timedelta(hours=4),
                duration_seconds=None,
            ),
            "missed-recorded-now": run_row(
                "job",
                scheduled_for=missed_first,
                status="missed",
                started_at=None,
                finished_at=now - timedelta(minutes=5),
                duration_seconds=None,
                missed_count=500,
                missed_first_at=missed_first,
                missed_last_at=now - timedelta(minutes=10),
            ),
            "running": running_run_row(
                "job",
                scheduled_for=now - timedelta(minutes=1),
                started_at=now - timedelta(minutes=1),
            ),
        }
        insert(writer, models.task_runs, [{**row, "trace_id": name} for name, row in rows.items()])
        ids = {r["trace_id"]: r["id"] for r in Store(writer).list_runs(task="job", limit=100)}
        expected = sorted(
            (ids[name] for name in ("recent", "missed-recorded-now", "running")), reverse=True
        )
        store_ids = [
            r["id"] for r in Store(writer).list_runs(task="job", since=now - timedelta(hours=2))
        ]
    finally:
        writer.dispose()

    [(status, body, _)] = api_calls(
        sqlite_url, clock, [("/api/v1/tasks/job/runs", {"since": "2h"}, None)]
    )
    assert status == 200, body
    api_ids = [r["id"] for r in body["runs"]]

    args = build_parser().parse_args(
        ["runs", "--task", "job", "--since", "2h", "--json", "--database-url", sqlite_url]
    )
    assert args.func(args) == 0
    cli_ids = [r["id"] for r in json.loads(capsys.readouterr().out)]

    assert api_ids == cli_ids == store_ids == expected
