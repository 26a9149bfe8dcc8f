"""Telemetry overhead: the burst with telemetry on and off, alternated, per run.

"Off" swaps in a TelemetryWriter whose methods do nothing: no health upserts, no alarm
checks. Run rows and persisted counters are written either way (they are the record, not
telemetry). Reported per run: wall time to finish the burst and CPU time of this process.
"""

from __future__ import annotations

import statistics
from typing import Any

from bench.burst import schedctl_burst
from bench.common import Databases
from bench.sizes import Sizes

TARGET_MS = 0.3


def run(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    n = sizes.telemetry_n
    out: dict[str, Any] = {"n": n, "repeats": sizes.telemetry_repeats}
    targets = []
    for backend in ("postgresql", "sqlite"):
        samples: dict[bool, list[dict[str, Any]]] = {True: [], False: []}
        for rep in range(sizes.telemetry_repeats):
            # Alternate which goes first so drift on a shared machine hits both alike.
            order = (True, False) if rep % 2 == 0 else (False, True)
            for on in order:
                url = dbs.new(backend)
                try:
                    samples[on].append(
                        schedctl_burst(url, n, workers=sizes.workers, telemetry=on, prefix="telem")
                    )
                finally:
                    dbs.drop(url)

        def median(
            on: bool, key: str, samples: dict[bool, list[dict[str, Any]]] = samples
        ) -> float:
            return float(statistics.median(s[key] for s in samples[on]))

        wall_on = round(median(True, "all_finished_s"), 4)
        wall_off = round(median(False, "all_finished_s"), 4)
        cpu_on = round(median(True, "cpu_ms_per_run"), 4)
        cpu_off = round(median(False, "cpu_ms_per_run"), 4)
        wall_ms = round((wall_on - wall_off) * 1000 / n, 3)
        cpu_ms = round(cpu_on - cpu_off, 3)
        complete = all(
            s["complete"] and s["runs"]["tasks_not_exactly_once"] == 0
            for runs in samples.values()
            for s in runs
        )
        out[backend] = {
            "all_finished_s_on": wall_on,
            "all_finished_s_off": wall_off,
            "cpu_ms_per_run_on": cpu_on,
            "cpu_ms_per_run_off": cpu_off,
            "overhead_wall_ms_per_run": wall_ms,
            "overhead_cpu_ms_per_run": cpu_ms,
            "all_runs_recorded": complete,
            "samples": {
                "on": [s["all_finished_s"] for s in samples[True]],
                "off": [s["all_finished_s"] for s in samples[False]],
            },
        }
        targets.append(
            {
                "target": f"telemetry overhead <= {TARGET_MS} ms per run ({backend}, wall)",
                "measured": wall_ms,
                "met": wall_ms <= TARGET_MS,
            }
        )
        targets.append(
            {
                "target": f"telemetry overhead <= {TARGET_MS} ms per run ({backend}, CPU)",
                "measured": cpu_ms,
                "met": cpu_ms <= TARGET_MS,
            }
        )
    out["targets"] = targets
    return out
