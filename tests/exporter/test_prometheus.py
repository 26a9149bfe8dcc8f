"""A real Prometheus scrapes real exporters: every catalog metric arrives with its value,
replicas aggregate with max by (task), and restarts never lower a counter."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from exporter.catalog import CATALOG
from exporter.collector import SnapshotCollector
from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core import models
from scheduler_core.db import create_db_engine, upgrade_schema
from tests.exporter.factories import (
    NOW,
    FakeClock,
    exporter_replicas,
    instance_row,
    seed_every_state,
)
from tests.support.prometheus import PrometheusServer, http_get

pytestmark = pytest.mark.prometheus

_TARGET_LABELS = {"job", "instance"}
#: Varies from one refresh to the next, so it is checked for presence, not value.
_VOLATILE = {"scheduler_exporter_refresh_duration_seconds"}


def _key(name: str, labels: dict[str, str]) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset((k, v) for k, v in labels.items() if k not in _TARGET_LABELS)


@pytest.fixture(scope="module")
def shared_db(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('prom') / 'schedctl.db'}"
    engine = create_db_engine(url)
    upgrade_schema(engine)
    seed_every_state(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="module")
def exporters(shared_db) -> Iterator[list[ExporterServer]]:
    """Two exporter replicas on the same database, clocks frozen at the seed's NOW."""
    with exporter_replicas(shared_db, clock=FakeClock(NOW)) as servers:
        yield servers


@pytest.fixture(scope="module")
def prometheus(exporters) -> Iterator[PrometheusServer]:
    targets = [s.url.removeprefix("http://") for s in exporters]
    server = PrometheusServer([{"job_name": "schedctl", "static_configs": [{"targets": targets}]}])
    with server:
        server.wait_for_scrapes(len(targets))
        yield server


def _expected_samples(server: ExporterServer) -> dict[tuple[str, frozenset], float]:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: server.state))
    return {
        _key(sample.name, sample.labels): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def _family_selector(name: str, kind: str) -> str:
    if kind == "histogram":
        return f'{{__name__=~"{name}_(bucket|count|sum)"}}'
    return name


def test_every_catalog_metric_is_queried_back_with_its_value(exporters, prometheus):
    """Querying each catalog family from Prometheus returns exactly the exporter's samples."""
    first = exporters[0]
    instance = first.url.removeprefix("http://")
    expected = _expected_samples(first)
    got: dict[tuple[str, frozenset], float] = {}
    for spec in CATALOG:
        selector = _family_selector(spec.name, spec.kind)
        result = prometheus.query(f'{selector[:-1]},instance="{instance}"}}'
                                  if selector.endswith("}") else
                                  f'{selector}{{instance="{instance}"}}')  # fmt: skip
        assert result, f"{spec.name} is missing in Prometheus"
        for series in result:
            labels = dict(series["metric"])
            got[_key(labels.pop("__name__"), labels)] = float(series["value"][1])
    assert set(got) == set(expected)
    for key, value in expected.items():
        if key[0] in _VOLATILE:
            assert got[key] >= 0
        else:
            assert math.isclose(got[key], value, rel_tol=0, abs_tol=1e-9), key
    assert got[_key("scheduler_task_stuck", {"task": "stuck-task"})] == 1
    assert got[_key("scheduler_exporter_up", {})] == 1


def test_two_replicas_aggregate_with_max_by_task(exporters, prometheus):
    """Both replicas are scraped, and max by (task) yields each task's value once."""
    count = prometheus.query_values(
        'count by (task) (scheduler_task_runs_total{outcome="success"})', "task"
    )
    assert set(count.values()) == {2.0}
    successes = prometheus.query_values(
        'max by (task) (scheduler_task_runs_total{outcome="success"})', "task"
    )
    assert successes["ok-task"] == 7 and successes["running-task"] == 4
    failures = prometheus.query_values(
        "max by (task) (scheduler_task_consecutive_failures)", "task"
    )
    assert failures["failing-task"] == 3
    stuck = prometheus.query_values("max by (task) (scheduler_task_stuck)", "task")
    assert stuck == {name: float(name == "stuck-task") for name in stuck} and len(stuck) == 9
    fleet_total = prometheus.query(
        'sum(max by (task) (scheduler_task_runs_total{outcome="success"}))'
    )
    assert float(fleet_total[0]["value"][1]) == 7 + 1 + 4 + 1
    p50 = prometheus.query_values(
        "histogram_quantile(0.5, max by (task, le) (scheduler_task_run_duration_seconds_bucket))",
        "task",
    )
    assert 2.5 < p50["ok-task"] <= 5.0  # the 4th of 7 durations, 4.0 s, is in (2.5, 5]


def _counters_and_buckets(url: str) -> dict[tuple[str, frozenset], float]:
    text = http_get(f"{url}/metrics").decode()
    return {
        _key(sample.name, sample.labels): sample.value
        for family in text_string_to_metric_families(text)
        if family.type in ("counter", "histogram")
        for sample in family.samples
    }


def test_counters_survive_exporter_and_scheduler_restarts_and_cleanup(sqlite_url):
    """After an exporter restart, a scheduler restart (new instance, old one stopped) and a
    history cleanup, every counter and histogram bucket is the same as before."""
    writer = create_db_engine(sqlite_url)
    seed_every_state(writer)
    settings = ExporterSettings(port=0)
    with ExporterServer(settings=settings, database_url=sqlite_url, clock=FakeClock(NOW),
                        background_refresh=False) as before_server:  # fmt: skip
        before_server.refresh_now()
        before = _counters_and_buckets(before_server.url)
    with writer.begin() as conn:
        conn.execute(models.task_runs.delete().where(models.task_runs.c.status != "running"))
        conn.execute(
            models.instances.update()
            .where(models.instances.c.instance_id == "node-a:1")
            .values(state="stopped")
        )
        conn.execute(
            models.task_health.delete().where(models.task_health.c.instance_id == "node-a:1")
        )
        conn.execute(models.instances.insert(), [instance_row("node-c:7")])
        remaining = conn.execute(sa.select(sa.func.count()).select_from(models.task_runs)).scalar()
    writer.dispose()
    assert remaining == 2  # only the in-flight runs survive the cleanup
    clock = FakeClock(NOW + timedelta(minutes=1))
    with ExporterServer(settings=settings, database_url=sqlite_url, clock=clock,
                        background_refresh=False) as after_server:  # fmt: skip
        after_server.refresh_now()
        after = _counters_and_buckets(after_server.url)
    assert len(before) > 100
    assert set(after) == set(before)
    lower = {key: (before[key], after[key]) for key in before if after[key] < before[key]}
    assert lower == {}
    assert after == before


def test_prometheus_helper_reports_a_failed_start():
    """A Prometheus that rejects its configuration fails start() with its log, not a hang."""
    server = PrometheusServer([{"job_name": "x", "no_such_setting": True}])
    try:
        with pytest.raises(RuntimeError, match="no_such_setting"):
            server.start()
    finally:
        server.stop()
