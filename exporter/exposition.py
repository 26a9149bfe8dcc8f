"""Rendering ``/metrics``: the catalog straight from the snapshot, plus any extra collectors.

prometheus_client renders about 60,000 samples a second here, and 10,000 tasks make 700,000
samples, so the catalog is rendered by this module instead: the lines of each task are kept
until that task changes (the snapshot reader reuses unchanged task objects), and whole bodies
are cached per state and encoding. The output is byte-for-byte what ``generate_latest`` makes
of :class:`exporter.collector.SnapshotCollector` (a test pins this).
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_to_go

from exporter.catalog import CATALOG, TASK_METRICS, MetricSpec, Sample, global_samples, task_samples
from exporter.refresh import RefreshState
from exporter.snapshot import TaskSnapshot

#: prometheus_client's own float formatting (untyped upstream), so our output matches its.
_go_float = cast(Callable[[float], str], _untyped_float_to_go)

__all__ = ["CatalogRenderer", "MetricsCache", "Variant", "negotiate"]

#: A variant still requested this recently (seconds) is rendered ahead, at every refresh.
_WARM_WINDOW = 300.0


@dataclass(frozen=True)
class Variant:
    """One way to answer a scrape: the content type chosen by negotiation and gzip or not."""

    content_type: str
    gzip: bool

    @property
    def openmetrics(self) -> bool:
        return self.content_type.startswith("application/openmetrics-text")


def negotiate(accept: str, accept_encoding: str) -> tuple[Variant, Callable[[Collector], bytes]]:
    """The variant for these request headers and prometheus_client's encoder for it."""
    encoder, content_type = choose_encoder(accept)
    wants_gzip = "gzip" in (accept_encoding or "").lower()
    return Variant(content_type, wants_gzip), encoder


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _line(sample: Sample) -> str:
    name, labels, value = sample
    if labels:
        pairs = ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels))
        return f"{name}{{{pairs}}} {_go_float(value)}\n"
    return f"{name} {_go_float(value)}\n"


def _header(spec: MetricSpec, *, openmetrics: bool) -> str:
    doc = spec.help.replace("\\", r"\\").replace("\n", r"\n")
    if not openmetrics:
        return f"# HELP {spec.name} {doc}\n# TYPE {spec.name} {spec.kind}\n"
    doc = doc.replace('"', r"\"")
    name = spec.name.removesuffix("_total") if spec.kind == "counter" else spec.name
    unit = f"# UNIT {name} {spec.unit}\n" if spec.unit else ""
    return f"# HELP {name} {doc}\n# TYPE {name} {spec.kind}\n{unit}"


_HEADERS = {
    om: {spec.name: _header(spec, openmetrics=om) for spec in CATALOG} for om in (False, True)
}


def _metric_key(task: TaskSnapshot) -> tuple[object, ...]:
    """Every field the metrics of a task depend on (not e.g. its heartbeat or error text)."""
    return (
        task.schedule, task.action_kind, task.timezone, task.enabled, task.paused,
        task.next_run_at, task.last_started_at, task.last_finished_at, task.last_success_at,
        task.last_duration_seconds, task.last_status, task.running, task.consecutive_failures,
        task.stuck, task.max_runtime_seconds, task.expected_interval_seconds,
        tuple(task.runs_total.items()), task.missed_runs_total, task.duration, task.start_delay,
        task.open_alarms,
    )  # fmt: skip


class CatalogRenderer:
    """Renders the catalog for a state; keeps each task's lines until the task changes."""

    def __init__(self, *, version: str) -> None:
        self.version = version
        self._lock = threading.Lock()
        self._fragments: dict[str, tuple[tuple[object, ...], dict[str, str]]] = {}

    def _task_fragments(self, tasks: Iterable[TaskSnapshot]) -> list[dict[str, str]]:
        old: dict[str, tuple[tuple[object, ...], dict[str, str]]] = self._fragments
        new: dict[str, tuple[tuple[object, ...], dict[str, str]]] = {}
        out = []
        for task in tasks:
            key = _metric_key(task)
            cached = old.get(task.name)
            if cached is not None and cached[0] == key:
                fragments = cached[1]
            else:
                fragments = {
                    family: "".join(_line(s) for s in samples)
                    for family, samples in task_samples(task).items()
                }
            new[task.name] = (key, fragments)
            out.append(fragments)
        self._fragments = new
        return out

    def prepare(self, state: RefreshState) -> None:
        """Bring the per-task lines up to date with ``state`` (the expensive part of a render)."""
        with self._lock:
            self._task_fragments(state.snapshot.tasks if state.snapshot else ())

    def render(self, state: RefreshState, *, openmetrics: bool) -> str:
        """The catalog in text format (OpenMetrics without its closing ``# EOF``)."""
        with self._lock:
            per_task = self._task_fragments(state.snapshot.tasks if state.snapshot else ())
        rest: dict[str, list[str]] = {}
        for family, sample in global_samples(state, self.version):
            rest.setdefault(family, []).append(_line(sample))
        headers = _HEADERS[openmetrics]
        parts: list[str] = []
        for spec in CATALOG:
            parts.append(headers[spec.name])
            if spec.name in TASK_METRICS:
                parts.extend(fragments[spec.name] for fragments in per_task)
            parts.extend(rest.get(spec.name, ()))
        return "".join(parts)


class MetricsCache:
    """Rendered ``/metrics`` bodies for the current state, per variant.

    Call :meth:`warm` with each new state before publishing it (off the event loop), so a
    scrape only ever renders a variant nobody asked for in the last few minutes.
    """

    def __init__(self, *, renderer: CatalogRenderer, registry: Collector | None) -> None:
        self._renderer = renderer
        self._registry = registry
        self._lock = threading.Lock()
        self._generation = -1
        self._bodies: dict[Variant, bytes] = {}
        self._requested: dict[Variant, tuple[Callable[[Collector], bytes], float]] = {}

    def get(self, generation: int, variant: Variant) -> bytes | None:
        with self._lock:
            return self._bodies.get(variant) if generation == self._generation else None

    def build(
        self, state: RefreshState, variant: Variant, encoder: Callable[[Collector], bytes]
    ) -> bytes:
        """Render (or fetch) the body of ``variant`` for ``state``; remember it was asked for."""
        with self._lock:
            self._requested[variant] = (encoder, time.monotonic())
            if state.generation == self._generation and variant in self._bodies:
                return self._bodies[variant]
        body = self._render(state, variant, encoder)
        with self._lock:
            if state.generation > self._generation:
                self._generation, self._bodies = state.generation, {}
            if state.generation == self._generation:
                self._bodies[variant] = body
        return body

    def warm(self, state: RefreshState) -> None:
        """Render every recently requested variant for ``state`` and drop older bodies."""
        cutoff = time.monotonic() - _WARM_WINDOW
        with self._lock:
            for variant in [v for v, (_, seen) in self._requested.items() if seen < cutoff]:
                del self._requested[variant]
            wanted = {v: enc for v, (enc, _) in self._requested.items()}
        if not wanted:
            self._renderer.prepare(state)  # so even the first scrape of a variant is quick
        bodies = {v: self._render(state, v, enc) for v, enc in wanted.items()}
        with self._lock:
            if state.generation > self._generation:
                self._generation, self._bodies = state.generation, bodies

    def _render(
        self, state: RefreshState, variant: Variant, encoder: Callable[[Collector], bytes]
    ) -> bytes:
        body = self._renderer.render(state, openmetrics=variant.openmetrics).encode()
        if self._registry is not None:
            # Ends with "# EOF" in OpenMetrics, which then closes the whole body.
            body += encoder(self._registry)
        elif variant.openmetrics:
            body += b"# EOF\n"
        return gzip.compress(body, compresslevel=1, mtime=0) if variant.gzip else body
