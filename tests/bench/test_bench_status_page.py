"""Smoke run of the status page benchmark at a tiny size: every view answers with the rows it
should. Never timings: CI machines vary."""

from __future__ import annotations

import pytest

from bench import status_page
from bench.common import Databases
from bench.sizes import SMOKE

pytestmark = pytest.mark.postgres


def test_the_status_page_benchmark_measures_every_view(dbs: Databases) -> None:
    result = status_page.run(dbs, SMOKE)
    assert "error" not in result, result
    views = result["views"]
    assert set(views) == {"first_page", "failing_only", "name_filter", "deep_page", "task_page"}
    assert all(v["count"] == SMOKE.exporter_requests for v in views.values())
    assert views["first_page"]["task_rows"] == min(100, SMOKE.exporter_tasks)
    # One task in ten fails; the name filter matches one task; a task page has no table rows.
    assert views["failing_only"]["task_rows"] == -(-SMOKE.exporter_tasks // 10)
    assert views["name_filter"]["task_rows"] == 0  # "page-0099" names no task of 30
    assert views["task_page"]["task_rows"] == 0
    assert result["targets"][0]["measured"] == views["first_page"]["p99_ms"]
