"""Rendering ``/metrics``: the catalog straight from the snapshot, plus any extra collectors.

prometheus_client renders about 60,000 samples a second here, and 10,000 tasks make 700,000
samples (49 MB), so the catalog is rendered by this module instead, into one byte section per
task family that both formats share. A task's lines are formatted again only when the task
changed (the snapshot reader reuses unchanged task objects); bodies are cached per state and
variant and sent as slices of the sections. The output is byte-for-byte what
``generate_latest`` makes of :class:`exporter.collector.SnapshotCollector` (a test pins this).
"""

from __future__ import annotations

import math
import threading
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeAlias, cast

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_float_to_go

from exporter.catalog import (
    CATALOG,
    TASK_METRICS,
    Labels,
    MetricSpec,
    Sample,
    global_samples,
    task_samples,
)
from exporter.pacing import Pace, Pacer
from exporter.refresh import RefreshState
from scheduler_core.store.snapshot import TaskSnapshot

#: prometheus_client's own float formatting (untyped upstream), so our output matches its.
_go_float = cast(Callable[[float], str], _untyped_float_to_go)

#: Anything the transport accepts; memoryviews let sections be sent without copies.
Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "PROMETHEUS_ACCEPT",
    "PROMETHEUS_ACCEPT_ENCODING",
    "Body",
    "CatalogRenderer",
    "MetricsCache",
    "Variant",
    "negotiate",
]

#: Largest buffer handed to the transport at once (bounds its copy of unsent bytes).
_PIECE = 1 << 20

#: What Prometheus (2.x and later) sends with every scrape: OpenMetrics preferred, gzip.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
PROMETHEUS_ACCEPT_ENCODING = "gzip"

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


def _labels(labels: Labels) -> str:
    """``{k="v",...}`` in key order, or nothing for no labels."""
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in sorted(labels)) + "}"


#: The label block of ``{task=..., key=value}`` split around the task name, per (key, value):
#: bucket bounds, outcomes, statuses, alarm kinds; bounded, as result keys come from users.
_AROUND_TASK: dict[tuple[str, str], tuple[str, str]] = {}
_AROUND_TASK_MAX = 4096


def _around_task(pair: tuple[str, str]) -> tuple[str, str]:
    around = _AROUND_TASK.get(pair)
    if around is None:
        if len(_AROUND_TASK) >= _AROUND_TASK_MAX:
            _AROUND_TASK.clear()
        key, value = pair
        text = f'{key}="{_label_value(value)}"'
        # Keys in sorted order, as _labels writes them.
        around = (f'{{{text},task="', '"}') if key < "task" else ('{task="', f'",{text}}}')
        _AROUND_TASK[pair] = around
    return around


def _value(value: float) -> str:
    """``value`` as prometheus_client writes it; the values nearly every task has (0 and 1:
    counts, flags, empty buckets) without the general formatting."""
    if value == 0.0:
        return "0.0" if math.copysign(1.0, value) > 0 else "-0.0"
    if value == 1.0:
        return "1.0"
    return _go_float(value)


def _line(sample: Sample) -> str:
    name, labels, value = sample
    return f"{name}{_labels(labels)} {_value(value)}\n"


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


class CatalogRenderer:
    """Renders the catalog for a state, one shared byte section per task family.

    A section holds the lines of every task for one family, with the offset where each task's
    lines start; a task object the snapshot reader reused (so unchanged) has its bytes copied
    from the previous section instead of being formatted again, and when no task changed the
    sections are reused as they are. Text format and OpenMetrics differ only in the family
    headers, so both are served from the same sections (one copy of the body in memory).
    """

    def __init__(self, *, version: str) -> None:
        self.version = version
        self._lock = threading.Lock()
        self._tasks: tuple[TaskSnapshot, ...] = ()
        self._sections: dict[str, bytearray] = {name: bytearray() for name in TASK_METRICS}
        self._offsets: dict[str, array[int]] = {name: array("Q", [0]) for name in TASK_METRICS}

    def prepare(self, state: RefreshState, *, pace: Pace | None = None) -> dict[str, bytearray]:
        """Bring the task sections up to date with ``state`` (the expensive part of a render)
        and return them; the returned sections are never modified afterwards. ``pace`` is
        called between units of the work (see :mod:`exporter.pacing`)."""
        tasks = state.snapshot.tasks if state.snapshot else ()
        with self._lock:
            old_tasks = self._tasks
            if len(tasks) != len(old_tasks) or any(
                new is not old for new, old in zip(tasks, old_tasks, strict=True)
            ):
                self._rebuild(tasks, pace or _no_pace)
            return self._sections

    def _rebuild(self, tasks: tuple[TaskSnapshot, ...], pace: Pace) -> None:
        old_tasks = self._tasks
        if len(tasks) == len(old_tasks) and all(
            new.name == old.name for new, old in zip(tasks, old_tasks, strict=True)
        ):
            self._patch(tasks, pace)
        else:
            self._rebuild_all(tasks, pace)

    def _patch(self, tasks: tuple[TaskSnapshot, ...], pace: Pace) -> None:
        """Same tasks in the same order, some changed: rewrite only the sections whose lines
        changed, so an old and a new copy of the whole body never coexist for long."""
        old_tasks = self._tasks
        fresh: dict[int, dict[str, bytes]] = {}
        for i, task in enumerate(tasks):
            if task is not old_tasks[i]:
                fresh[i] = _task_lines(task)
                pace()
        sections, offsets = dict(self._sections), dict(self._offsets)
        for name in TASK_METRICS:
            pace()
            old_section, old_off = self._sections[name], self._offsets[name]
            view = memoryview(old_section)
            if all(lines[name] == view[old_off[i] : old_off[i + 1]] for i, lines in fresh.items()):
                view.release()
                continue
            section, new_off = bytearray(), array("Q", [0])
            copied_from = 0  # first task whose old lines are not yet copied
            for i in sorted(fresh):
                _copy_run(section, new_off, view, old_off, copied_from, i)
                section += fresh[i][name]
                new_off.append(len(section))
                copied_from = i + 1
            _copy_run(section, new_off, view, old_off, copied_from, len(tasks))
            view.release()
            sections[name], offsets[name] = section, new_off
        self._tasks, self._sections, self._offsets = tasks, sections, offsets

    def _rebuild_all(self, tasks: tuple[TaskSnapshot, ...], pace: Pace) -> None:
        """Tasks added, removed or first seen: build every section, copying reused tasks."""
        old_position = {task.name: i for i, task in enumerate(self._tasks)}
        old_tasks = self._tasks
        old_views = {name: memoryview(section) for name, section in self._sections.items()}
        old_offsets = self._offsets
        sections = {name: bytearray() for name in TASK_METRICS}
        offsets = {name: array("Q", [0]) for name in TASK_METRICS}

        # Runs of consecutive unchanged tasks are copied with one slice per family.
        def copy_run(first: int, stop: int) -> None:
            if first >= 0:
                for name in TASK_METRICS:
                    _copy_run(
                        sections[name], offsets[name], old_views[name], old_offsets[name],
                        first, stop,
                    )  # fmt: skip
                pace()

        run_start = run_end = -1
        for task in tasks:
            j = old_position.get(task.name, -1)
            if j >= 0 and old_tasks[j] is task:
                if j == run_end:
                    run_end += 1
                    continue
                copy_run(run_start, run_end)
                run_start, run_end = j, j + 1
                continue
            copy_run(run_start, run_end)
            run_start = run_end = -1
            for name, lines in _task_lines(task).items():
                section = sections[name]
                section += lines
                offsets[name].append(len(section))
            pace()
        copy_run(run_start, run_end)
        for view in old_views.values():
            view.release()
        self._tasks, self._sections, self._offsets = tasks, sections, offsets

    def pieces(self, state: RefreshState, *, openmetrics: bool) -> list[Buffer]:
        """The catalog as buffers to send in order (OpenMetrics without its ``# EOF``)."""
        sections = self.prepare(state)
        rest: dict[str, list[str]] = {}
        for family, sample in global_samples(state, self.version):
            rest.setdefault(family, []).append(_line(sample))
        headers = _HEADERS[openmetrics]
        out: list[Buffer] = []
        pending: list[str] = []
        for spec in CATALOG:
            pending.append(headers[spec.name])
            section = sections.get(spec.name)
            if section:
                out.append("".join(pending).encode())
                pending = []
                view = memoryview(section)
                out.extend(view[i : i + _PIECE] for i in range(0, len(section), _PIECE))
            pending.extend(rest.get(spec.name, ()))
        out.append("".join(pending).encode())
        return out

    def render(self, state: RefreshState, *, openmetrics: bool) -> str:
        """The catalog in text format (OpenMetrics without its closing ``# EOF``)."""
        return b"".join(self.pieces(state, openmetrics=openmetrics)).decode()


def _copy_run(
    section: bytearray,
    offsets: array[int],
    old: memoryview,
    old_offsets: array[int],
    start: int,
    stop: int,
) -> None:
    """Append the old lines of tasks ``start`` to ``stop`` (exclusive) and their end offsets."""
    if start >= stop:
        return
    shift = len(section) - old_offsets[start]
    section += old[old_offsets[start] : old_offsets[stop]]
    if shift == 0:  # the run stays where it was (tasks added after it): copy the offsets too
        offsets.extend(old_offsets[start + 1 : stop + 1])
    else:
        offsets.extend(old_offsets[k] + shift for k in range(start + 1, stop + 1))


def _no_pace() -> None:
    """Work that someone waits for runs flat out."""


def _task_lines(task: TaskSnapshot) -> dict[str, bytes]:
    """The lines of ``task`` per family, as :func:`_line` writes them. Nearly every label set
    is the task alone or the task and one other label, so the task name is escaped once and
    the rest of those blocks comes from :data:`_AROUND_TASK`."""
    own = ("task", task.name)
    name = _label_value(task.name)
    alone = f'{{task="{name}"}}'
    out: dict[str, bytes] = {}
    for family, samples in task_samples(task).items():
        lines = []
        for metric, labels, value in samples:
            if labels[:1] != (own,):
                block = _labels(labels)
            elif len(labels) == 1:
                block = alone
            elif len(labels) == 2:
                before, after = _around_task(labels[1])
                block = before + name + after
            else:
                block = _labels(labels)
            lines.append(f"{metric}{block} {_value(value)}\n")
        out[family] = "".join(lines).encode()
    return out


@dataclass(frozen=True)
class Body:
    """A rendered ``/metrics`` response body: buffers to send in order, and their total size."""

    pieces: tuple[Buffer, ...]
    size: int

    @classmethod
    def of(cls, pieces: Iterable[Buffer]) -> Body:
        kept = tuple(p for p in pieces if len(memoryview(p)))
        return cls(kept, sum(memoryview(p).nbytes for p in kept))

    def join(self) -> bytes:
        return b"".join(self.pieces)


class MetricsCache:
    """Rendered ``/metrics`` bodies for the current state, per variant.

    Call :meth:`warm` with each new state before publishing it (off the event loop), so a
    scrape only ever renders a variant nobody asked for in the last few minutes. Uncompressed
    bodies only reference the renderer's shared sections; gzip bodies are compressed once
    per state. ``pacer`` makes the :class:`~exporter.pacing.Pacer` of each warm (None: the
    work ahead runs flat out).
    """

    def __init__(
        self,
        *,
        renderer: CatalogRenderer,
        registry: Collector | None,
        pacer: Callable[[], Pacer] | None = None,
        expected: Sequence[tuple[Variant, Callable[[Collector], bytes]]] = (),
    ) -> None:
        """``expected`` variants are rendered ahead from the start, as if just requested (the
        first scrape then finds its body ready instead of rendering it while it waits)."""
        self._renderer = renderer
        self._registry = registry
        self._pacer = pacer
        self._pacing: Pacer | None = None  # the pacer of the warm under way
        self._lock = threading.Lock()
        self._generation = -1
        self._bodies: dict[Variant, Body] = {}
        self._requested: dict[Variant, tuple[Callable[[Collector], bytes], float]] = {
            variant: (encoder, time.monotonic()) for variant, encoder in expected
        }

    def get(self, generation: int, variant: Variant) -> Body | None:
        with self._lock:
            return self._bodies.get(variant) if generation == self._generation else None

    def build(
        self, state: RefreshState, variant: Variant, encoder: Callable[[Collector], bytes]
    ) -> Body:
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
        """Bring the task sections up to date with ``state``, render every recently requested
        variant for it and drop older bodies; paced, as nobody waits for this work."""
        cutoff = time.monotonic() - _WARM_WINDOW
        with self._lock:
            for variant in [v for v, (_, seen) in self._requested.items() if seen < cutoff]:
                del self._requested[variant]
            wanted = {v: enc for v, (enc, _) in self._requested.items()}
        pace = self._pacing = self._pacer() if self._pacer is not None else None
        # Even while nobody scrapes, so that the first scrape finds the sections ready instead
        # of rendering every new task at once (~0.1 ms a task, GIL time that the admin API's
        # writes would wait for); paced, the handlers barely notice it.
        self._renderer.prepare(state, pace=pace)
        if not wanted:
            return
        bodies = {v: self._render(state, v, enc, pace) for v, enc in wanted.items()}
        with self._lock:
            if state.generation > self._generation:
                self._generation, self._bodies = state.generation, bodies

    def hurry(self) -> None:
        """A scrape waits for the render thread: finish the warm under way (if any) flat out."""
        pacing = self._pacing
        if pacing is not None:
            pacing.hurry()

    def _render(
        self,
        state: RefreshState,
        variant: Variant,
        encoder: Callable[[Collector], bytes],
        pace: Pace | None = None,
    ) -> Body:
        pieces = self._renderer.pieces(state, openmetrics=variant.openmetrics)
        if self._registry is not None:
            # Ends with "# EOF" in OpenMetrics, which then closes the whole body.
            pieces.append(encoder(self._registry))
        elif variant.openmetrics:
            pieces.append(b"# EOF\n")
        if not variant.gzip:
            return Body.of(pieces)
        compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        out = []
        for piece in pieces:
            out.append(compressor.compress(piece))
            if pace is not None:
                pace()
        out.append(compressor.flush())
        return Body.of(out)  # sent piece by piece: joining would hold the body twice
