"""Multi-instance: one burst shared by 1 and by 3 scheduler processes on one PostgreSQL.

Each tick must run exactly once however many instances compete: duplicates are counted both
as repeated (task, scheduled_for, attempt) rows and as one-shot tasks without exactly one row.

The peer is APScheduler 4.0.0a6: 1 and 3 scheduler processes sharing one SQLAlchemyDataStore
(asyncpg) on a fresh database of the same server, the same N one-shots due at one instant
(``bench/peers/aps4_multi.py``). Each process reports its calls; ``merge_calls`` counts
them across processes. APScheduler 3.11 has no such figure: its job stores cannot be
shared between schedulers (see ``APS3_NOT_APPLICABLE``).
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.burst import seconds_after
from bench.common import (
    REPO,
    CountQuery,
    Databases,
    FinishedCounter,
    last_json_line,
    one_shot_tasks,
    peer_url,
    read_runs,
    run_peer_script,
    summarize_ms,
    sync,
    wait_until,
)
from bench.peers.envs import PeerUnavailableError, peer_python
from bench.processes import RunnerProcess
from bench.sizes import Sizes

APS3_NOT_APPLICABLE = (
    "not applicable: APScheduler 3 cannot share a job store between schedulers (its FAQ: "
    "'How do I share a single job store among one or more worker processes? Short answer: "
    "You can't.'); each scheduler would run every job"
)
APS4 = "apscheduler-4.0.0a6"


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
    all_finished = seconds_after(table.last_finished, due)
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


def merge_calls(
    per_process: Sequence[Sequence[Sequence[Any]]], expected: set[str], due: float
) -> dict[str, Any]:
    """Merge the calls each process recorded ([schedule id, lateness s, end epoch]):
    duplicates are calls beyond one per schedule id, missing are expected ids never called;
    throughput is the expected count over the time from the due instant to the last end."""
    counts = Counter(str(call[0]) for calls in per_process for call in calls)
    ends = [float(call[2]) for calls in per_process for call in calls]
    all_finished = max(ends) - due if ends else None
    return {
        "calls": sum(counts.values()),
        "calls_per_instance": [len(calls) for calls in per_process],
        "duplicates": sum(counts.values()) - len(counts),
        "ids_called_more_than_once": sum(1 for c in counts.values() if c > 1),
        "missing": len(expected - counts.keys()),
        "unexpected_ids": len(counts.keys() - expected),
        "all_finished_s": None if all_finished is None else round(all_finished, 3),
        "throughput_runs_per_s": None
        if not all_finished or all_finished <= 0
        else round(len(expected) / all_finished, 1),
        "start_delay_call": summarize_ms([float(c[1]) for calls in per_process for c in calls]),
    }


def _store_left(url: str) -> CountQuery:
    """Schedules still to fire plus jobs still in the peer's data store (0: every call has
    ended; a fired one-shot schedule stays, next_fire_time NULL, until the store's cleanup)."""
    return CountQuery(
        url,
        "SELECT (SELECT count(*) FROM schedules WHERE next_fire_time IS NOT NULL)"
        " + (SELECT count(*) FROM jobs)",
    )


def _ready(proc: subprocess.Popen[str], timeout: float) -> bool:
    """Whether ``proc`` printed ``ready`` within ``timeout`` seconds."""
    assert proc.stdout is not None
    readable, _, _ = select.select([proc.stdout], [], [], timeout)
    return bool(readable) and proc.stdout.readline().strip() == "ready"


def _launch(python: Path, url: str, workers: int) -> subprocess.Popen[str]:
    """Start one APScheduler 4 scheduler process on database ``url``, its standard streams
    piped as text: it prints ``ready``, then runs until its standard input closes."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BENCH_DB_URL": peer_url(url, driver="asyncpg"),
    }
    return subprocess.Popen(
        [str(python), str(REPO / "bench" / "peers" / "aps4_multi.py"), "--workers", str(workers)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def peer_multi(
    dbs: Databases, n: int, instances: int, *, workers: int, timeout: float = 300.0
) -> dict[str, Any]:
    """APScheduler 4: ``n`` one-shots added by a set-up process, then run by ``instances``
    scheduler processes sharing the data store; their calls merged by ``merge_calls``."""
    try:
        python = peer_python("aps4")
    except PeerUnavailableError as exc:
        return {"skipped": str(exc)}
    url = dbs.new("postgresql", migrated=False)
    # Adding schedules one at a time, then starting the processes (imports, connections).
    lead = 8.0 + n * 0.006 + instances * 2.0
    due = time.time() + lead
    procs: list[subprocess.Popen[str]] = []
    left = _store_left(url)
    try:
        setup = run_peer_script(
            python,
            "aps4_multi.py",
            url,
            driver="asyncpg",
            args=["--add", str(n), "--due", str(due)],
            timeout=lead + 120,
        )
        if "error" in setup:
            return setup
        procs = [_launch(python, url, workers) for _ in range(instances)]
        ready = all(_ready(p, 60.0) for p in procs)
        overran = time.time() > due - 0.5
        complete = ready and wait_until(
            lambda: left() == 0, timeout=max(0.0, due - time.time()) + timeout, interval=0.05
        )
        outputs = [last_json_line(*p.communicate(timeout=120), p.returncode) for p in procs]
    finally:
        left.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        dbs.drop(url)
    errors = [o["error"] for o in outputs if "error" in o]
    merged = merge_calls(
        [o.get("calls", []) for o in outputs], {f"multi-{i:06d}" for i in range(n)}, due
    )
    return {
        "instances": instances,
        "n": n,
        "complete": complete,
        "setup_s": round(setup["setup_s"], 2),
        "setup_overran_due_time": overran,
        **merged,
        "cpu_s_per_instance": [round(o.get("cpu_s", 0.0), 2) for o in outputs],
        "peak_rss_mib_per_instance": [round(o.get("peak_rss_kib", 0) / 1024, 1) for o in outputs],
        "errors": errors,
    }


def peers_run(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    one = peer_multi(dbs, sizes.multi_n, 1, workers=sizes.workers)
    if "skipped" in one:
        return {"apscheduler-3.11": {"skipped": APS3_NOT_APPLICABLE}, APS4: one}
    three = peer_multi(dbs, sizes.multi_n, 3, workers=sizes.workers)
    return {
        "apscheduler-3.11": {"skipped": APS3_NOT_APPLICABLE},
        APS4: {"one_instance": one, "three_instances": three},
    }


def run(dbs: Databases, sizes: Sizes, *, peers: bool = True) -> dict[str, Any]:
    one = burst_with_instances(dbs, sizes.multi_n, 1, workers=sizes.workers)
    three = burst_with_instances(dbs, sizes.multi_n, 3, workers=sizes.workers)
    t1, t3 = one["throughput_runs_per_s"], three["throughput_runs_per_s"]
    duplicates = one["duplicates"] + three["duplicates"]
    not_once = one["runs"]["tasks_not_exactly_once"] + three["runs"]["tasks_not_exactly_once"]
    out: dict[str, Any] = {
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
    if peers:
        out["peers"] = peers_run(dbs, sizes)
    return out
