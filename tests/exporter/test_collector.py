"""The collector and the fast renderer: catalog values for tasks in every state, no I/O."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.catalog import CATALOG, TASK_METRICS, task_samples
from exporter.collector import SnapshotCollector
from exporter.exposition import CatalogRenderer
from exporter.refresh import RefreshState
from scheduler_core.alert_policy import AlertPolicy
from scheduler_core.histograms import DURATION_BUCKETS, START_DELAY_BUCKETS
from scheduler_core.store.snapshot import ALARM_KINDS, OUTCOMES, Snapshot, read_snapshot
from tests.exporter.factories import (
    FULL_ALERTS,
    NOW,
    StatementCounter,
    delay_histogram,
    duration_histogram,
    task_snapshot,
)


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


def _alerts(task: str = "job", **overrides: object) -> dict[str, list]:
    """The alerts-block families and the alarm family of one directly built task."""
    samples = task_samples(task_snapshot(task, **overrides))
    families = (
        "scheduler_task_alert_threshold",
        "scheduler_task_alert_policy_info",
        "scheduler_task_deadline_missed",
        "scheduler_alarm_open",
    )
    return {f: [(dict(labels), v) for _, labels, v in samples[f]] for f in families}


def test_a_full_alerts_policy_gives_its_thresholds_severity_deadline_and_alarm_series():
    """Every threshold kind in its unit (sorted by kind), the severity, the deadline flag, and
    a series for each alarm kind the policy can open, 1 while open and 0 while closed."""
    got = _alerts(
        alert_policy=FULL_ALERTS, deadline_missed=True, open_alarms=frozenset({"deadline_missed"})
    )
    assert got["scheduler_task_alert_threshold"] == [
        ({"task": "job", "kind": kind}, value)
        for kind, value in (
            ("consecutive_failures", 2.0),
            ("late_seconds", 600.0),
            ("max_duration_seconds", 1800.0),
            ("min_duration_seconds", 2.0),
            ("no_success_seconds", 86400.0),
            ("slower_than_usual_factor", 3.0),
        )
    ]
    assert got["scheduler_task_alert_policy_info"] == [({"task": "job", "severity": "critical"}, 1)]
    assert got["scheduler_task_deadline_missed"] == [({"task": "job"}, 1.0)]
    alarms = {labels["kind"]: v for labels, v in got["scheduler_alarm_open"]}
    assert list(alarms) == [*ALARM_KINDS, "too_fast", "slow", "deadline_missed"]
    closed = dict.fromkeys((*ALARM_KINDS, "too_fast", "slow"), 0.0)
    assert alarms == {**closed, "deadline_missed": 1.0}


@pytest.mark.parametrize(
    ("policy", "kinds"),
    [
        (AlertPolicy(min_duration=1.0), ["too_fast"]),
        (AlertPolicy(max_duration=60.0), ["slow"]),
        (AlertPolicy(slower_than_usual=2.0), ["slow"]),
        (AlertPolicy(failures=1, late_after=60.0, severity="info"), []),
    ],
    ids=["min_duration", "max_duration", "slower_than_usual", "no-policy-kinds"],
)
def test_a_policy_alarm_kind_has_a_series_only_where_the_policy_can_open_it(policy, kinds):
    """too_fast needs min_duration, slow max_duration or slower_than_usual, deadline_missed a
    deadline; a policy without a deadline has no deadline series, one without severity no
    info series."""
    got = _alerts(alert_policy=policy)
    assert [labels["kind"] for labels, _ in got["scheduler_alarm_open"]] == [*ALARM_KINDS, *kinds]
    assert got["scheduler_task_deadline_missed"] == []
    severity = [labels.get("severity") for labels, _ in got["scheduler_task_alert_policy_info"]]
    assert severity == ([policy.severity] if policy.severity else [])
    assert [labels["kind"] for labels, _ in got["scheduler_task_alert_threshold"]] == sorted(
        policy.thresholds()
    )


def test_a_task_without_a_policy_has_no_alerts_series_but_keeps_other_open_alarms():
    """No alerts block: no threshold, info or deadline series and only the always-on alarm
    kinds, plus any other kind still open (a policy alarm left from a removed policy)."""
    got = _alerts(open_alarms=frozenset({"slow", "stuck"}))
    assert got["scheduler_task_alert_threshold"] == []
    assert got["scheduler_task_alert_policy_info"] == []
    assert got["scheduler_task_deadline_missed"] == []
    alarms = {labels["kind"]: v for labels, v in got["scheduler_alarm_open"]}
    assert alarms == {**dict.fromkeys(ALARM_KINDS, 0.0), "stuck": 1.0, "slow": 1.0}
    policy_got = _alerts(
        alert_policy=AlertPolicy(min_duration=1.0), open_alarms=frozenset({"slow", "odd"})
    )
    kinds = [(labels["kind"], v) for labels, v in policy_got["scheduler_alarm_open"]]
    assert kinds[len(ALARM_KINDS) :] == [("too_fast", 0.0), ("odd", 1.0), ("slow", 1.0)]


def test_deadline_met_is_zero_and_every_family_is_declared():
    """A deadline not missed reports 0; task_samples yields exactly the TASK_METRICS families."""
    samples = task_samples(task_snapshot(alert_policy=FULL_ALERTS, deadline_missed=False))
    assert set(samples) == set(TASK_METRICS)
    assert samples["scheduler_task_deadline_missed"] == [
        ("scheduler_task_deadline_missed", (("task", "job"),), 0.0)
    ]


def test_the_seeded_alerts_task_is_read_from_sql(registry):
    """The alerts block stored with alerting-task reaches /metrics: its thresholds, severity,
    missed deadline and its open policy alarms (too_fast, deadline_missed; slow closed)."""
    task = "alerting-task"
    assert value(registry, "scheduler_task_alert_threshold", task=task, kind="late_seconds") == 600
    assert value(registry, "scheduler_task_alert_policy_info", task=task, severity="critical") == 1
    assert value(registry, "scheduler_task_deadline_missed", task=task) == 1
    for kind, expected in (("too_fast", 1), ("slow", 0), ("deadline_missed", 1)):
        assert value(registry, "scheduler_alarm_open", task=task, kind=kind) == expected, kind
    assert value(registry, "scheduler_alarm_open", task="ok-task", kind="slow") is None
    assert (
        value(registry, "scheduler_task_alert_threshold", task="ok-task", kind="late_seconds")
        is None
    )


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_fast_renderer_matches_prometheus_client_with_alerts_policies(state, openmetrics):
    """Tasks with alerts policies (full, partial, deadline met) render byte for byte as
    prometheus_client renders them, also when a policy changes between two states."""
    snapshot = state.snapshot
    assert isinstance(snapshot, Snapshot)
    full = task_snapshot(
        "zz-full", alert_policy=FULL_ALERTS, deadline_missed=False, open_alarms=frozenset({"slow"})
    )
    partial = task_snapshot("zz-min", alert_policy=AlertPolicy(min_duration=0.5))
    dropped = dataclasses.replace(full, alert_policy=None, deadline_missed=None)
    reference = generate_openmetrics if openmetrics else generate_latest
    renderer = CatalogRenderer(version="9.9.9")
    line = 'scheduler_task_alert_threshold{kind="late_seconds",task="zz-full"} 600.0'
    for generation, last in enumerate(((full, partial), (dropped, partial)), start=1):
        tasks = (*snapshot.tasks, *last)
        later = dataclasses.replace(
            state, snapshot=dataclasses.replace(snapshot, tasks=tasks), generation=generation
        )
        registry = CollectorRegistry()
        registry.register(SnapshotCollector(lambda s=later: s, version="9.9.9"))
        expected = reference(registry).decode().removesuffix("# EOF\n")
        assert renderer.render(later, openmetrics=openmetrics) == expected
        assert (line in expected) is (generation == 1)


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
