"""Smoke runs of every schedctl benchmark at a tiny size: they keep working, and what they
measure is correct (every run recorded, no tick run twice). Never timings: CI machines vary."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from bench import (
    burst,
    exporter_bench,
    multi,
    profile_steady,
    scale,
    steady,
    telemetry_overhead,
)
from bench.common import Databases, OverdueCounter, interval_tasks, sync
from bench.sizes import SMOKE
from scheduler_core.db import create_db_engine
from scheduler_core.models import schedules

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_burst_records_every_one_shot_exactly_once(dbs: Databases, backend: str) -> None:
    """A burst of one-shots leaves one successful run row per task, none twice."""
    url = dbs.new(backend)
    try:
        result = burst.schedctl_burst(url, SMOKE.burst_n, workers=SMOKE.workers)
    finally:
        dbs.drop(url)
    assert result["complete"]
    assert result["runs"]["by_status"] == {"success": SMOKE.burst_n}
    assert result["runs"]["duplicate_ticks"] == 0
    assert result["runs"]["tasks_not_exactly_once"] == 0
    assert result["start_delay_call"]["count"] == SMOKE.burst_n


def test_steady_records_every_tick_in_the_window(dbs: Databases) -> None:
    """Interval tasks run every tick of the measured window, each once."""
    result = steady.run(dbs, SMOKE, peers=False)
    assert result["expected_runs_in_window"] > 0
    assert result["missing_runs"] == 0
    assert result["runs"]["duplicate_ticks"] == 0
    assert set(result["runs"]["by_status"]) == {"success"}
    assert "error" not in result["runner"]
    # The CPU split by thread reads the OS thread names the scheduler sets.
    assert "main (loop)" in result["scheduler_cpu_percent_by_thread"]
    # The window opened only once the start-up backlog was worked off.
    assert result["caught_up"] is True
    assert result["catch_up_s"] >= 0 and result["overdue_at_start"] >= 0


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_overdue_counter_counts_schedules_more_than_a_second_late(
    dbs: Databases, backend: str
) -> None:
    """What the steady and scale windows wait for: schedules due over a second ago count,
    a schedule due a moment ago or later does not."""
    url = dbs.new(backend)
    engine = create_db_engine(url)
    counter = OverdueCounter(url)
    try:
        sync(url, interval_tasks(4, 3600.0, prefix="late"))
        now = datetime.now(UTC)
        due = {
            "late-000000": now - timedelta(hours=1),
            "late-000001": now - timedelta(seconds=5),
            "late-000002": now - timedelta(milliseconds=200),
            "late-000003": now + timedelta(hours=1),
        }
        with engine.begin() as conn:
            for name, at in due.items():
                conn.execute(schedules.update().where(schedules.c.name == name).values(due_at=at))
        assert counter() == 2
    finally:
        counter.close()
        engine.dispose()
        dbs.drop(url)


def test_scale_runs_and_explains_the_due_query_on_both_backends(dbs: Databases) -> None:
    """The scale benchmark records runs at both sizes and captures both due-query plans."""
    result = scale.run(dbs, SMOKE, peers=False)
    for backend in ("postgresql", "sqlite"):
        for size in ("small", "large"):
            measured = result[backend][size]
            assert measured["runner_error"] is None
            assert measured["runs_in_window"] > 0
            assert set(measured["plans"]) == {"claim", "next_due"}
            assert measured["empty_poll_claim"]["count"] == SMOKE.scale_probes
            assert measured["caught_up_before_window"] is True
    assert "peers" not in result  # CI never builds the peers' environments


def test_multi_instance_burst_has_no_duplicates(dbs: Databases) -> None:
    """One and three instances sharing a burst each run every one-shot exactly once."""
    result = multi.run(dbs, SMOKE, peers=False)
    for key in ("one_instance", "three_instances"):
        measured = result[key]
        assert measured["complete"]
        assert measured["errors"] == []
        assert measured["duplicates"] == 0
        assert measured["runs"]["tasks_not_exactly_once"] == 0
        assert measured["runs"]["by_status"] == {"success": SMOKE.multi_n}
    assert len(result["three_instances"]["runs"]["per_instance"]) >= 1
    assert "peers" not in result


def test_exporter_benchmark_scrapes_every_task(dbs: Databases) -> None:
    """The exporter answers every scrape with series for the stored tasks, plain and as
    Prometheus asks (OpenMetrics, gzip: the same series, checked inside the benchmark)."""
    if exporter_bench.importable() is not None:
        pytest.skip(str(exporter_bench.importable()))
    result = exporter_bench.run(dbs, SMOKE)
    assert "error" not in result, result
    assert result["requests"] == SMOKE.exporter_requests
    assert result["series"] >= SMOKE.exporter_tasks
    assert result["payload_bytes"] > 0
    assert 0 < result["gzip_payload_bytes"] < result["payload_bytes"]


def test_telemetry_on_and_off_both_record_every_run(dbs: Databases) -> None:
    """Switching telemetry off never drops a run row."""
    result = telemetry_overhead.run(dbs, SMOKE)
    for backend in ("postgresql", "sqlite"):
        assert result[backend]["all_runs_recorded"]


def test_profile_steady_splits_the_cpu_by_thread(capsys: pytest.CaptureFixture[str]) -> None:
    """The profiling tool behind RESULTS.md's steady steps runs and names the loop thread;
    with every run printing 1 KB, its prints are the runs' output (its own stdout is its
    JSON alone), and the workers' profile shows the job."""
    assert (
        profile_steady.main(
            [
                "--tasks",
                "50",
                "--every",
                "1",
                "--warmup",
                "1",
                "--seconds",
                "1",
                "--profile",
                "tottime",
                "--callable",
                "bench.jobs:print_1kb",
                "--task-field",
                "keep_output=always",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["runs_per_second"] == 50.0
    assert "loop" in result["scheduler_cpu_percent_by_thread"]
    assert result["caught_up"] is True
    assert "function calls" in captured.err  # the loop thread's profile
    workers = captured.err.split("worker threads (", 1)[1]
    assert "bench/jobs.py" in workers and "(print_1kb)" in workers
