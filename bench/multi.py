"""Multi-instance: one burst shared by 1 and by 3 scheduler processes on one PostgreSQL.

Each tick must run exactly once however many instances compete: duplicates are counted both
as repeated (task, scheduled_for, attempt) rows and as one-shot tasks without exactly one row.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import (
    Databases,
    FinishedCounter,
    one_shot_tasks,
    read_runs,
    summarize_ms,
    sync,
    wait_until,
)
from bench.processes import RunnerProcess
from bench.sizes import Sizes


def burst_with_instances(
    dbs: Databases, n: int, instances: int, *, workers: int, timeout: float = 300.0
) -> dict[str, Any]:
    url = dbs.new("postgresql")
    runners: list[RunnerProcess] = []
    counter = FinishedCounter(url, "multi")
    try:
        runners = [
            RunnerProcess(url, f"bench-multi-{i}", args=["--max-running", str(workers)])
            for i in range(instances)
        ]
        for r in runners:
            r.launch()
        for r in runners:
            r.wait_ready()
        # Idle instances poll every second (poll_interval), so each sees the burst's due
        # time within a second of the sync and then sleeps exactly until it.
        lead = 2.0 + n * 0.001
        due = datetime.now(UTC) + timedelta(seconds=lead)
        sync(url, one_shot_tasks(n, due, prefix="multi"))
        overran = datetime.now(UTC) > due - timedelta(seconds=1.1)
        time.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()))
        cpu0 = [r.cpu_seconds() for r in runners]
        complete = wait_until(lambda: counter() >= n, timeout=timeout, interval=0.05)
        cpu = [r.cpu_seconds() - c for r, c in zip(runners, cpu0, strict=True)]
        reports = [r.stop() for r in runners]
        runners = []
        table = read_runs(url, prefix="multi", expected_tasks=n)
    finally:
        counter.close()
        for r in runners:
            r.kill()
        dbs.drop(url)
    all_finished = (
        (table.last_finished - due).total_seconds() if table.last_finished is not None else None
    )
    return {
        "instances": instances,
        "n": n,
        "complete": complete,
        "setup_overran_due_time": overran,
        "all_finished_s": None if all_finished is None else round(all_finished, 3),
        "throughput_runs_per_s": None if not all_finished else round(n / all_finished, 1),
        "start_delay_row": summarize_ms(table.start_delays),
        "runs": table.as_dict(),
        "duplicates": table.duplicate_ticks + max(0, table.rows - n),
        "cpu_s_per_instance": [round(c, 2) for c in cpu],
        "rss_mib_per_instance": [r.get("peak_rss_mib") for r in reports],
        "errors": [r["error"] for r in reports if "error" in r],
    }


def run(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    one = burst_with_instances(dbs, sizes.multi_n, 1, workers=sizes.workers)
    three = burst_with_instances(dbs, sizes.multi_n, 3, workers=sizes.workers)
    t1, t3 = one["throughput_runs_per_s"], three["throughput_runs_per_s"]
    duplicates = one["duplicates"] + three["duplicates"]
    not_once = one["runs"]["tasks_not_exactly_once"] + three["runs"]["tasks_not_exactly_once"]
    return {
        "one_instance": one,
        "three_instances": three,
        "targets": [
            {
                "target": "3 instances >= 1 instance throughput",
                "measured": f"{t3} vs {t1} runs/s",
                "met": None if t1 is None or t3 is None else t3 >= t1,
            },
            {
                "target": "0 duplicates (and every one-shot ran exactly once)",
                "measured": f"{duplicates} duplicates, {not_once} tasks not exactly once",
                "met": duplicates == 0 and not_once == 0,
            },
        ],
    }
