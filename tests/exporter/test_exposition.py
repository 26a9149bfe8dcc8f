"""The /metrics renderer and body cache: shared sections patched on change, per-state bodies,
gzip only when accepted."""

from __future__ import annotations

import dataclasses
import gzip

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from exporter.app import REFRESHER, create_app
from exporter.collector import SnapshotCollector
from exporter.database import create_reader_engine
from exporter.exposition import (
    PROMETHEUS_ACCEPT,
    PROMETHEUS_ACCEPT_ENCODING,
    CatalogRenderer,
    MetricsCache,
    negotiate,
)
from exporter.pacing import Pacer
from exporter.refresh import RefreshState
from exporter.settings import ExporterSettings
from scheduler_core import models
from scheduler_core.db import create_db_engine
from scheduler_core.store.snapshot import Snapshot, TaskSnapshot, read_snapshot
from tests.exporter.conftest import with_client
from tests.exporter.factories import FULL_ALERTS, NOW, FakeClock

OPENMETRICS_ACCEPT = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


@pytest.fixture
def snapshot(seeded_sqlite: str) -> Snapshot:
    engine = create_reader_engine(seeded_sqlite)
    try:
        return read_snapshot(engine, NOW)
    finally:
        engine.dispose()


def _state(snapshot: Snapshot, generation: int) -> RefreshState:
    return RefreshState(
        snapshot=snapshot, up=True, last_success_at=NOW, last_duration_seconds=0.5,
        generation=generation,
    )  # fmt: skip


def _reference(state: RefreshState, *, openmetrics: bool) -> str:
    registry = CollectorRegistry()
    registry.register(SnapshotCollector(lambda: state, version="1"))
    if openmetrics:
        return generate_openmetrics(registry).decode().removesuffix("# EOF\n")
    return generate_latest(registry).decode()


def _changed(task: TaskSnapshot) -> TaskSnapshot:
    return dataclasses.replace(
        task,
        consecutive_failures=task.consecutive_failures + 4,
        runs_total={**task.runs_total, "success": task.runs_total["success"] + 10},
    )


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_changed_tasks_are_patched_into_the_sections(snapshot, openmetrics):
    """After some tasks change in place, the patched output equals prometheus_client's
    rendering of the new snapshot, and the unchanged families keep their very section."""
    renderer = CatalogRenderer(version="1")
    first = _state(snapshot, 1)
    assert renderer.render(first, openmetrics=openmetrics) == _reference(
        first, openmetrics=openmetrics
    )
    before = dict(renderer.prepare(first))
    tasks = list(snapshot.tasks)
    tasks[0], tasks[-1] = _changed(tasks[0]), _changed(tasks[-1])
    later = _state(dataclasses.replace(snapshot, tasks=tuple(tasks)), 2)
    assert renderer.render(later, openmetrics=openmetrics) == _reference(
        later, openmetrics=openmetrics
    )
    after = renderer.prepare(later)
    assert after["scheduler_task_info"] is before["scheduler_task_info"]
    assert (
        after["scheduler_task_consecutive_failures"]
        is not before["scheduler_task_consecutive_failures"]
    )


@pytest.mark.parametrize("openmetrics", [False, True], ids=["text", "openmetrics"])
def test_an_alerts_policy_set_and_removed_patches_its_sections(snapshot, openmetrics):
    """A task gaining a full alerts block (and alerting-task losing its own) renders as
    prometheus_client does; only the alerts families and the alarm family are rewritten."""
    renderer = CatalogRenderer(version="1")
    first = _state(snapshot, 1)
    renderer.render(first, openmetrics=openmetrics)
    before = dict(renderer.prepare(first))
    tasks = {task.name: task for task in snapshot.tasks}
    tasks["ok-task"] = dataclasses.replace(
        tasks["ok-task"], alert_policy=FULL_ALERTS, deadline_missed=False
    )
    tasks["alerting-task"] = dataclasses.replace(
        tasks["alerting-task"], alert_policy=None, deadline_missed=None
    )
    later = _state(dataclasses.replace(snapshot, tasks=tuple(tasks.values())), 2)
    rendered = renderer.render(later, openmetrics=openmetrics)
    assert rendered == _reference(later, openmetrics=openmetrics)
    assert 'scheduler_task_deadline_missed{task="ok-task"} 0.0\n' in rendered
    assert 'scheduler_alarm_open{kind="slow",task="ok-task"} 0.0\n' in rendered
    # Its alarms stay open until the scheduler closes them: still shown, as 1.
    assert 'scheduler_alarm_open{kind="too_fast",task="alerting-task"} 1.0\n' in rendered
    assert 'scheduler_alarm_open{kind="slow",task="alerting-task"}' not in rendered
    after = renderer.prepare(later)
    changed = {name for name in after if after[name] is not before[name]}
    assert changed == {
        "scheduler_task_alert_threshold", "scheduler_task_alert_policy_info",
        "scheduler_task_deadline_missed", "scheduler_alarm_open",
    }  # fmt: skip


def test_added_and_removed_tasks_render_like_a_fresh_renderer(snapshot):
    """Removing one task and adding another (reusing the rest) renders exactly what a new
    renderer and prometheus_client render for that snapshot."""
    renderer = CatalogRenderer(version="1")
    renderer.render(_state(snapshot, 1), openmetrics=False)
    tasks = list(snapshot.tasks)
    removed = tasks.pop(1)
    tasks.append(dataclasses.replace(removed, name="zz-new-task"))
    later = _state(dataclasses.replace(snapshot, tasks=tuple(tasks)), 2)
    rendered = renderer.render(later, openmetrics=False)
    assert rendered == CatalogRenderer(version="1").render(later, openmetrics=False)
    assert rendered == _reference(later, openmetrics=False)
    assert f'task="{removed.name}"' not in rendered


def test_odd_names_and_values_render_as_prometheus_client_renders_them(snapshot):
    """Label values needing escapes, -0.0, values Go writes with an exponent and fractions
    come out byte for byte as prometheus_client writes them."""
    task = dataclasses.replace(
        snapshot.tasks[0],
        name='we"ird\\na\nme',
        last_duration_seconds=-0.0,
        max_runtime_seconds=123456789.0,
        expected_interval_seconds=0.1,
        result_totals={'k"ey': 1.0, "z\\": -0.0, "big": 1e22, "small": 2.5e-7},
    )
    state = _state(dataclasses.replace(snapshot, tasks=(task, *snapshot.tasks[1:])), 1)
    rendered = CatalogRenderer(version="1").render(state, openmetrics=False)
    assert rendered == _reference(state, openmetrics=False)
    assert 'scheduler_task_last_duration_seconds{task="we\\"ird\\\\na\\nme"} -0.0\n' in rendered


class _CountingPacer(Pacer):
    """Never sleeps; counts the units of work it is called between."""

    calls = 0

    def __init__(self) -> None:
        super().__init__(share=1.0, slice_seconds=0.0, budget=0.0)

    def __call__(self) -> None:
        type(self).calls += 1


def test_warm_renders_the_task_sections_ahead_even_before_any_scrape(snapshot):
    """Before any scrape, warm() still brings the sections up to date (paced), so the first
    scrape formats nothing; a warm of an unchanged snapshot does no work."""
    _CountingPacer.calls = 0
    renderer = CatalogRenderer(version="1")
    cache = MetricsCache(renderer=renderer, registry=None, pacer=_CountingPacer)
    state = _state(snapshot, 1)
    cache.warm(state)
    assert _CountingPacer.calls >= len(snapshot.tasks)
    variant, encoder = negotiate("", "")
    assert cache.get(1, variant) is None  # no body for a variant nobody asked for
    sections = renderer.prepare(state)
    _CountingPacer.calls = 0
    later = _state(snapshot, 2)
    cache.warm(later)
    assert _CountingPacer.calls == 0
    assert renderer.prepare(later) is sections
    body = cache.build(later, variant, encoder).join().decode()
    assert body == _reference(later, openmetrics=False)


def test_an_expected_variant_is_rendered_ahead_before_its_first_scrape(snapshot):
    """The app expects Prometheus's variant (OpenMetrics, gzip): warm() renders its body
    before anyone asked, and the first scrape gets that body; other variants wait to be
    asked for."""
    prometheus = negotiate(PROMETHEUS_ACCEPT, PROMETHEUS_ACCEPT_ENCODING)
    cache = MetricsCache(
        renderer=CatalogRenderer(version="1"), registry=None, expected=[prometheus]
    )
    state = _state(snapshot, 1)
    cache.warm(state)
    ready = cache.get(1, prometheus[0])
    assert ready is not None and prometheus[0].gzip
    assert gzip.decompress(ready.join()).decode() == _reference(state, openmetrics=True) + "# EOF\n"
    assert cache.build(state, *prometheus) is ready
    assert cache.get(1, negotiate("", "")[0]) is None


def test_gzip_body_decompresses_to_the_plain_body(snapshot):
    """The gzip variant of a state is the plain body of the same state, compressed."""
    cache = MetricsCache(renderer=CatalogRenderer(version="1"), registry=None)
    state = _state(snapshot, 1)
    plain_variant, encoder = negotiate(OPENMETRICS_ACCEPT, "")
    gzip_variant, _ = negotiate(OPENMETRICS_ACCEPT, "gzip, deflate")
    assert not plain_variant.gzip and gzip_variant.gzip
    plain = cache.build(state, plain_variant, encoder)
    packed = cache.build(state, gzip_variant, encoder)
    assert gzip.decompress(packed.join()) == plain.join()
    assert plain.size == len(plain.join()) and plain.join().endswith(b"# EOF\n")


def test_cache_serves_one_body_per_state_and_warms_requested_variants(snapshot):
    """A body is reused within a state, dropped by the next state, and a variant asked for
    before is rendered ahead by warm()."""
    cache = MetricsCache(renderer=CatalogRenderer(version="1"), registry=None)
    variant, encoder = negotiate("", "gzip")
    first = cache.build(_state(snapshot, 1), variant, encoder)
    assert cache.get(1, variant) is first
    assert cache.get(2, variant) is None
    later = _state(dataclasses.replace(snapshot, tasks=(_changed(snapshot.tasks[0]),)), 2)
    cache.warm(later)
    warmed = cache.get(2, variant)
    assert warmed is not None
    assert gzip.decompress(warmed.join()).decode() == _reference(later, openmetrics=False)


def test_metrics_follow_each_refresh_and_gzip_only_when_accepted(seeded_sqlite):
    """A scrape after a refresh sees the new counter value; plain and gzip scrapes carry the
    same text and only the one that accepts gzip gets Content-Encoding: gzip."""
    engine = create_reader_engine(seeded_sqlite)
    app = create_app(
        settings=ExporterSettings(), engine=engine, clock=FakeClock(NOW), background_refresh=False
    )
    line = 'scheduler_task_runs_total{outcome="success",task="ok-task"}'

    async def scenario(client):
        await app[REFRESHER].refresh_once()
        before = await (await client.get("/metrics")).text()
        writer = create_db_engine(seeded_sqlite)
        with writer.begin() as conn:
            conn.execute(
                models.schedules.update()
                .where(models.schedules.c.name == "ok-task")
                .values(runs_success_total=1234)
            )
        writer.dispose()
        await app[REFRESHER].refresh_once()
        plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
        packed = await client.get(
            "/metrics", headers={"Accept-Encoding": "gzip"}, auto_decompress=False
        )
        return (
            before,
            plain.headers.copy(),
            await plain.text(),
            packed.headers.copy(),
            await packed.read(),
        )

    try:
        before, plain_headers, plain, packed_headers, packed = with_client(app, scenario)
    finally:
        engine.dispose()
    assert f"{line} 7.0\n" in before
    assert f"{line} 1234.0\n" in plain
    assert "Content-Encoding" not in plain_headers
    assert packed_headers["Content-Encoding"] == "gzip"
    assert int(plain_headers["Content-Length"]) == len(plain.encode())
    assert gzip.decompress(packed).decode() == plain
