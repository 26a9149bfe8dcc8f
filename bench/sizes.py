"""How big each benchmark is: the issue's sizes, a quicker cut, and a smoke size for CI."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FULL", "QUICK", "SMOKE", "Sizes"]


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
    exporter_tasks: int
    exporter_requests: int
    telemetry_n: int
    telemetry_repeats: int
    #: Concurrency of every contender: schedctl's max_running and the peers' pool size.
    workers: int = 64


FULL = Sizes(
    burst_n=500,
    burst_repeats=3,
    steady_tasks=10_000,
    steady_every=10.0,
    steady_seconds=60.0,
    steady_warmup=10.0,
    scale_small=1_000,
    scale_large=100_000,
    scale_due_per_second=100.0,
    scale_seconds=30.0,
    scale_warmup=3.0,
    scale_probes=200,
    multi_n=2_000,
    exporter_tasks=10_000,
    exporter_requests=200,
    telemetry_n=500,
    telemetry_repeats=3,
)

QUICK = Sizes(
    burst_n=200,
    burst_repeats=1,
    steady_tasks=1_000,
    steady_every=10.0,
    steady_seconds=20.0,
    steady_warmup=5.0,
    scale_small=1_000,
    scale_large=10_000,
    scale_due_per_second=100.0,
    scale_seconds=10.0,
    scale_warmup=3.0,
    scale_probes=200,
    multi_n=500,
    exporter_tasks=1_000,
    exporter_requests=50,
    telemetry_n=200,
    telemetry_repeats=2,
)

#: For the CI smoke test: every code path, tiny numbers, correctness only.
SMOKE = Sizes(
    burst_n=20,
    burst_repeats=1,
    steady_tasks=20,
    steady_every=1.0,
    steady_seconds=3.0,
    steady_warmup=1.0,
    scale_small=50,
    scale_large=200,
    scale_due_per_second=20.0,
    scale_seconds=1.5,
    scale_warmup=0.5,
    scale_probes=10,
    multi_n=60,
    exporter_tasks=30,
    exporter_requests=5,
    telemetry_n=20,
    telemetry_repeats=1,
    workers=8,
)
