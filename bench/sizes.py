"""How big each benchmark is: the issue's sizes, a quicker cut, and a smoke size for CI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["FULL", "QUICK", "SIZE_COLUMNS", "SMOKE", "Sizes"]


@dataclass(frozen=True, kw_only=True)
class Sizes:
    burst_n: int
    #: Each contender's burst is repeated this often; the median run is reported.
    burst_repeats: int
    steady_tasks: int
    steady_every: float
    steady_seconds: float
    steady_warmup: float
    scale_small: int
    scale_large: int
    scale_due_per_second: float
    scale_seconds: float
    scale_warmup: float
    scale_probes: int
    multi_n: int
    #: One-time tasks due evenly over ``once_window`` seconds (bench/once.py, part 1).
    once_n: int
    once_window: float
    #: Pending (future) one-time tasks of the small and the large database (part 2), the
    #: tasks due at each of ``pending_due_polls`` due polls, and the empty-poll probes.
    pending_small: int
    pending_large: int
    pending_due: int
    pending_due_polls: int
    pending_probes: int
    exporter_tasks: int
    exporter_requests: int
    telemetry_n: int
    telemetry_repeats: int
    #: Runtime adds (bench/runtime_adds.py): tasks per add_tasks call and per peer, how often
    #: schedctl's call is repeated (median), and add_task calls timed one by one.
    adds_n: int
    adds_repeats: int
    adds_one_by_one: int
    #: HTTP creates: requests per second, seconds, and requests sent one at a time first.
    http_rate: float
    http_seconds: float
    http_sequential: int
    #: Start-up: tasks in the generated file, and how often each start is measured.
    startup_tasks: int
    startup_repeats: int
    #: Concurrency of every contender: schedctl's max_running and the peers' pool size.
    workers: int = 64


#: One row a field, one column a size: FULL (the issue's sizes), QUICK (a quicker cut) and
#: SMOKE (for the CI smoke test: every code path, tiny numbers, correctness only).
SIZE_COLUMNS: dict[str, tuple[Any, Any, Any]] = {
    # name: (FULL, QUICK, SMOKE)
    "burst_n": (500, 200, 20),
    "burst_repeats": (3, 1, 1),
    "steady_tasks": (10_000, 1_000, 20),
    "steady_every": (10.0, 10.0, 1.0),
    "steady_seconds": (60.0, 20.0, 3.0),
    "steady_warmup": (10.0, 5.0, 1.0),
    "scale_small": (1_000, 1_000, 50),
    "scale_large": (100_000, 10_000, 200),
    "scale_due_per_second": (100.0, 100.0, 20.0),
    "scale_seconds": (30.0, 10.0, 1.5),
    "scale_warmup": (3.0, 3.0, 0.5),
    "scale_probes": (200, 200, 10),
    "multi_n": (2_000, 500, 60),
    "once_n": (100_000, 20_000, 50),
    "once_window": (60.0, 12.0, 2.0),
    "pending_small": (1_000, 1_000, 200),
    "pending_large": (1_000_000, 100_000, 2_000),
    "pending_due": (50, 50, 5),
    "pending_due_polls": (20, 20, 3),
    "pending_probes": (200, 200, 10),
    "exporter_tasks": (10_000, 1_000, 30),
    "exporter_requests": (200, 50, 5),
    "telemetry_n": (500, 200, 20),
    "telemetry_repeats": (3, 2, 1),
    "adds_n": (10_000, 2_000, 50),
    "adds_repeats": (3, 1, 1),
    "adds_one_by_one": (1_000, 300, 20),
    "http_rate": (200.0, 200.0, 50.0),
    "http_seconds": (30.0, 5.0, 1.0),
    "http_sequential": (100, 50, 5),
    "startup_tasks": (10_000, 5_000, 50),
    "startup_repeats": (3, 1, 1),
    "workers": (64, 64, 8),
}


def _column(index: int) -> Sizes:
    """The sizes of column ``index`` of :data:`SIZE_COLUMNS`."""
    return Sizes(**{name: values[index] for name, values in SIZE_COLUMNS.items()})


FULL = _column(0)
QUICK = _column(1)
SMOKE = _column(2)
