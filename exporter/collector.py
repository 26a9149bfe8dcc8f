"""The Prometheus collector: turns the latest snapshot into the metric families of DESIGN.md.

``collect()`` does no I/O: it only reads the current :class:`RefreshState`. ``describe()``
lists the catalog without samples, so registering the collector runs no query.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from exporter.catalog import CATALOG, MetricSpec, global_samples, task_samples
from exporter.refresh import RefreshState

__all__ = ["SnapshotCollector", "empty_family", "exporter_version"]


def exporter_version() -> str:
    """The installed schedctl version, or 0.0.0 when running from an uninstalled tree."""
    try:
        return importlib.metadata.version("schedctl")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def empty_family(spec: MetricSpec) -> Metric:
    """The family of ``spec`` with no samples yet."""
    labels = list(spec.labels)
    if spec.kind == "counter":
        return CounterMetricFamily(spec.name.removesuffix("_total"), spec.help, labels=labels)
    if spec.kind == "histogram":
        return HistogramMetricFamily(spec.name, spec.help, labels=labels, unit=spec.unit)
    return GaugeMetricFamily(spec.name, spec.help, labels=labels, unit=spec.unit)


class SnapshotCollector(Collector):
    """Yields the catalog from ``state_source()``; never blocks, never queries."""

    def __init__(
        self, state_source: Callable[[], RefreshState], *, version: str | None = None
    ) -> None:
        self._state_source = state_source
        self.version = version if version is not None else exporter_version()

    def describe(self) -> Iterator[Metric]:
        for spec in CATALOG:
            yield empty_family(spec)

    def collect(self) -> Iterator[Metric]:
        state = self._state_source()
        families = {spec.name: empty_family(spec) for spec in CATALOG}
        if state.snapshot is not None:
            for task in state.snapshot.tasks:
                for name, samples in task_samples(task).items():
                    family = families[name]
                    for sample_name, labels, value in samples:
                        family.add_sample(sample_name, dict(labels), value)
        for name, (sample_name, labels, value) in global_samples(state, self.version):
            families[name].add_sample(sample_name, dict(labels), value)
        yield from families.values()
