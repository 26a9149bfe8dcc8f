"""The collector and the fast renderer: catalog values for tasks in every state, no I/O."""

from __future__ import annotations

from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.catalog import CATALOG
from exporter.collector import SnapshotCollector
from exporter.exposition import CatalogRenderer
from exporter.refresh import RefreshState
from scheduler_core.histograms import DURATION_BUCKETS, START_DELAY_BUCKETS
from scheduler_core.store.snapshot import OUTCOMES, read_snapshot
from tests.exporter.factories import NOW, StatementCounter, delay_histogram, duration_histogram


@pytest.fixture
def state(seeded, reader) -> RefreshState:
    return RefreshState(
        snapshot=read_snapshot(reader, NOW),
        up=True,
        last_success_at=NOW,
        last_attempt_at=NOW,
        last_duration_seconds=0.25,
        generation=1,
    )


@pytest.fixture
def registry(state) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: state, version="9.9.9"))
    return registry


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_registering_runs_no_query(reader):
    """describe() lists the whole catalog without touching the database."""
    with StatementCounter(reader) as counter:
        registry = CollectorRegistry()
        collector = SnapshotCollector(lambda: RefreshState(), version="1")
        registry.register(collector)
        names = [family.name for family in collector.describe()]
    assert counter.statements == []
    assert len(names) == len(CATALOG)


def test_collect_does_no_io(state, reader):
    """Collecting the catalog from a snapshot sends no SQL, even with the engine disposed."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: state, version="1"))
    reader.dispose()
    with StatementCounter(reader) as counter:
        body = generate_latest(registry)
    assert counter.statements == []
    assert b'scheduler_task_running{task="running-task"} 1.0' in body


def test_task_gauges_for_every_state(registry):
    """Enabled, paused, running, stuck and consecutive failures match each task's state."""
    cases = {
        "ok-task": (1, 0, 0, 0, 0),
        "failing-task": (1, 0, 0, 0, 3),
        "running-task": (1, 0, 1, 0, 0),
        "stuck-task": (1, 0, 1, 1, 0),
        "paused-task": (1, 1, 0, 0, 0),
        "disabled-task": (0, 0, 0, 0, 0),
        "late-task": (1, 0, 0, 0, 0),
    }
    for task, (enabled, paused, running, stuck, failures) in cases.items():
        assert value(registry, "scheduler_task_enabled", task=task) == enabled, task
        assert value(registry, "scheduler_task_paused", task=task) == paused, task
        assert value(registry, "scheduler_task_running", task=task) == running, task
        assert value(registry, "scheduler_task_stuck", task=task) == stuck, task
        assert value(registry, "scheduler_task_consecutive_failures", task=task) == failures, task


def test_info_and_timestamps(registry):
    """Info carries schedule, action kind and timezone; timestamps are Unix seconds and absent
    when the event never happened."""
    assert value(
        registry, "scheduler_task_info", task="failing-task", schedule="30 2 * * *",
        action_kind="command", timezone="Europe/Berlin",
    ) == 1.0  # fmt: skip
    t = NOW.timestamp()
    assert value(registry, "scheduler_task_next_run_timestamp_seconds", task="ok-task") == t + 300
    assert value(registry, "scheduler_task_last_finish_timestamp_seconds", task="ok-task") == t - 60
    assert (
        value(registry, "scheduler_task_last_start_timestamp_seconds", task="ok-task") == t - 61.5
    )
    assert (
        value(registry, "scheduler_task_last_success_timestamp_seconds", task="ok-task") == t - 60
    )
    assert value(registry, "scheduler_task_last_duration_seconds", task="ok-task") == 1.5
    assert value(registry, "scheduler_task_max_runtime_seconds", task="stuck-task") == 60.0
    assert value(registry, "scheduler_task_expected_interval_seconds", task="failing-task") == 86400
    for absent in (
        ("scheduler_task_next_run_timestamp_seconds", "disabled-task"),
        ("scheduler_task_last_start_timestamp_seconds", "disabled-task"),
        ("scheduler_task_last_success_timestamp_seconds", "stuck-task"),
        ("scheduler_task_last_duration_seconds", "stuck-task"),
        ("scheduler_task_max_runtime_seconds", "late-task"),
        ("scheduler_task_expected_interval_seconds", "once-task"),
    ):
        assert value(registry, absent[0], task=absent[1]) is None, absent


def test_last_status_is_one_hot(registry):
    """The last status has one series per outcome with exactly one 1, or all 0 if none ran."""
    for task, status in (("ok-task", "success"), ("failing-task", "timeout"), ("stuck-task", None)):
        values = {
            o: value(registry, "scheduler_task_last_status", task=task, status=o) for o in OUTCOMES
        }
        assert values == {o: 1.0 if o == status else 0.0 for o in OUTCOMES}, task


def test_counters_come_from_the_persisted_columns(registry):
    """runs_total per outcome and missed_runs_total equal the schedule row's counters."""
    assert value(registry, "scheduler_task_runs_total", task="ok-task", outcome="success") == 7
    assert value(registry, "scheduler_task_runs_total", task="ok-task", outcome="failure") == 1
    assert value(registry, "scheduler_task_runs_total", task="failing-task", outcome="timeout") == 1
    assert value(registry, "scheduler_task_runs_total", task="paused-task", outcome="skipped") == 5
    assert value(registry, "scheduler_task_runs_total", task="stuck-task", outcome="abandoned") == 1
    assert value(registry, "scheduler_task_missed_runs_total", task="late-task") == 3
    assert value(registry, "scheduler_task_missed_runs_total", task="ok-task") == 2


def test_histograms_are_cumulative_from_persisted_buckets(registry):
    """Persisted per-bucket counts become cumulative buckets with matching sum and count."""
    durations = duration_histogram(0.02, 0.3, 0.3, 4.0, 4.0, 40.0, 9000.0)
    for bound, cumulative in durations.cumulative():
        le = "+Inf" if bound == float("inf") else str(float(bound))
        got = value(registry, "scheduler_task_run_duration_seconds_bucket", task="ok-task", le=le)
        assert got == cumulative, le
    assert value(registry, "scheduler_task_run_duration_seconds_count", task="ok-task") == 7
    assert value(
        registry, "scheduler_task_run_duration_seconds_sum", task="ok-task"
    ) == pytest.approx(9048.62)
    assert (
        value(registry, "scheduler_task_start_delay_seconds_bucket", task="ok-task", le="0.25") == 4
    )
    assert value(registry, "scheduler_task_start_delay_seconds_count", task="ok-task") == 7
    assert delay_histogram(100.0).cumulative()[-2] == (300, 1)
    assert len(DURATION_BUCKETS) == 20 and len(START_DELAY_BUCKETS) == 15


def test_alarm_series_exist_for_every_task_and_kind(registry):
    """Open alarms are 1; every task has the three known kinds, closed ones 0."""
    assert (
        value(registry, "scheduler_alarm_open", task="failing-task", kind="consecutive_failures")
        == 1
    )
    assert value(registry, "scheduler_alarm_open", task="stuck-task", kind="stuck") == 1
    assert value(registry, "scheduler_alarm_open", task="late-task", kind="missed") == 0
    assert value(registry, "scheduler_alarm_open", task="ok-task", kind="stuck") == 0


def test_instance_and_exporter_metrics(registry, state):
    """Instances report heartbeat, in-flight runs and info; the exporter reports on itself."""
    t = NOW.timestamp()
    assert value(registry, "scheduler_instance_last_heartbeat_timestamp_seconds",
                 instance_id="node-a:1") == t - 3  # fmt: skip
    assert value(registry, "scheduler_instance_running_runs", instance_id="node-a:1") == 2
    assert value(registry, "scheduler_instance_running_runs", instance_id="node-b:2") == 0
    assert value(registry, "scheduler_instance_info", instance_id="node-b:2", version="0.0.9",
                 state="draining") == 1  # fmt: skip
    assert value(registry, "scheduler_exporter_up") == 1
    assert value(registry, "scheduler_exporter_refresh_duration_seconds") == 0.25
    assert value(registry, "scheduler_exporter_last_refresh_timestamp_seconds") == t
    assert value(registry, "scheduler_exporter_build_info", version="9.9.9") == 1


def test_without_a_snapshot_only_exporter_metrics_are_reported():
    """Before the first successful read the exporter reports up 0 and no task series."""
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: RefreshState(last_error="refused"), version="1"))
    assert registry.get_sample_value("scheduler_exporter_up") == 0
    assert registry.get_sample_value("scheduler_exporter_last_refresh_timestamp_seconds") is None
    assert b"task=" not in generate_latest(registry)


def test_build_info_uses_the_installed_version():
    """Without an explicit version, build_info carries the installed schedctl version."""
    import importlib.metadata

    collector = SnapshotCollector(lambda: RefreshState())
    assert collector.version == importlib.metadata.version("schedctl")


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_fast_renderer_matches_prometheus_client(state, registry, openmetrics):
    """The renderer serving /metrics produces byte-for-byte what prometheus_client renders
    from the collector, in both formats, also after tasks change."""
    renderer = CatalogRenderer(version="9.9.9")
    reference = generate_openmetrics if openmetrics else generate_latest
    expected = reference(registry).decode()
    if openmetrics:
        expected = expected.removesuffix("# EOF\n")
    assert renderer.render(state, openmetrics=openmetrics) == expected
    later = RefreshState(
        snapshot=state.snapshot,
        up=False,
        last_success_at=state.last_success_at,
        last_duration_seconds=1.0,
        last_error="x",
        generation=2,
    )
    registry_later = CollectorRegistry()
    registry_later.register(SnapshotCollector(lambda: later, version="9.9.9"))
    expected_later = reference(registry_later).decode().removesuffix("# EOF\n")
    assert renderer.render(later, openmetrics=openmetrics) == expected_later


def test_label_values_are_escaped_like_prometheus_client(seeded_sqlite):
    """Quotes, backslashes and newlines in a schedule label render as prometheus_client does."""
    from exporter.database import create_reader_engine
    from scheduler_core import models
    from scheduler_core.db import create_db_engine

    writer = create_db_engine(seeded_sqlite)
    with writer.begin() as conn:
        conn.execute(
            models.schedules.update()
            .where(models.schedules.c.name == "ok-task")
            .values(schedule_expr='odd "expr" \\ with\nnewline')
        )
    writer.dispose()
    engine = create_reader_engine(seeded_sqlite)
    snap = read_snapshot(engine, NOW + timedelta(seconds=1))
    engine.dispose()
    state = RefreshState(snapshot=snap, up=True, last_success_at=NOW, generation=1)
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: state, version="1"))
    rendered = CatalogRenderer(version="1").render(state, openmetrics=False)
    assert rendered == generate_latest(registry).decode()
    assert r'schedule="odd \"expr\" \\ with\nnewline"' in rendered
