"""Status page: how fast the exporter serves ``GET /`` (the tasks page) at many tasks.

The database holds ``exporter_tasks`` schedules (10,000 at full size) with a health row each
on two instances, one task in ten failing; the exporter runs as its own process
(``exporter.cli``, refreshing its snapshot every 2 s, so requests meet refreshes and the
re-sort of each new snapshot) and the pages are fetched sequentially over loopback, end to
end (connect, request, whole body). Target: the first page in at most 300 ms at p99.
The filtered views, a deep page and a task page (which reads its definition and runs from
SQL) are measured too, without a target.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.common import REPO, Databases, interval_tasks, rss_mib, summarize_ms, sync
from bench.processes import stop_process
from bench.sizes import Sizes
from scheduler_core.db import create_db_engine
from scheduler_core.models import instances, schedules, task_health

INSTANCES = ("bench-page-a", "bench-page-b")
REFRESH_INTERVAL = "2s"
PREFIX = "page"
TARGET_P99_MS = 300.0
_ROW = re.compile(rb'<tr data-task="')


def _populate(url: str, n: int) -> None:
    sync(url, interval_tasks(n, 60.0, prefix=PREFIX))
    now = datetime.now(UTC)
    engine = create_db_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                instances.insert(),
                [
                    {"instance_id": inst, "hostname": "bench", "pid": 1, "started_at": now,
                     "last_heartbeat_at": now, "lease_seconds": 30.0, "state": "running",
                     "version": "bench", "running_runs": 0}
                    for inst in INSTANCES
                ],
            )  # fmt: skip
            rows = [
                {
                    "task_name": f"{PREFIX}-{i:06d}", "instance_id": inst, "enabled": True,
                    "schedule_type": "every", "schedule_payload": '{"every": 60.0}',
                    "last_started_at": now - timedelta(seconds=1), "last_finished_at": now,
                    "last_duration_seconds": 0.01,
                    "last_status": "success" if i % 10 else "failure", "is_running": False,
                    "consecutive_failures": 0 if i % 10 else 1,
                    "last_error_message": None if i % 10 else "RuntimeError: <bench> & co",
                    "last_heartbeat_at": now, "max_runtime_seconds": 300.0, "updated_at": now,
                }
                for inst in INSTANCES
                for i in range(n)
            ]  # fmt: skip
            for start in range(0, len(rows), 1000):
                conn.execute(task_health.insert(), rows[start : start + 1000])
            # Failing: failures in a row on the schedule row and a failed last run (above).
            conn.execute(
                schedules.update()
                .where(schedules.c.name.like(f"{PREFIX}-%0"))
                .values(consecutive_failures=1, last_failure_at=now)
            )
    finally:
        engine.dispose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _fetch(url: str) -> tuple[int, bytes, float]:
    """(status, body, seconds) of one GET, timed from before connecting to the last byte."""
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read()
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        body, status = exc.read(), int(exc.code)
    return status, body, time.perf_counter() - started


def _start_exporter(url: str, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SCHEDCTL_DATABASE_URL=url, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from exporter.cli import main; sys.exit(main(sys.argv[1:]))",
         "--listen", f"127.0.0.1:{port}", "--refresh-interval", REFRESH_INTERVAL],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_ready(base: str, proc: subprocess.Popen[bytes]) -> str | None:
    """None once /ready answers 200; else why not (within 120 s)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if _fetch(base + "/ready")[0] == 200:
                return None
        except OSError:
            pass
        time.sleep(0.2)
    err = proc.stderr.read().decode(errors="replace")[-1500:] if proc.poll() is not None else ""
    return f"exporter not ready within 120 s {err}".strip()


def _measure(base: str, paths: dict[str, str], requests: int) -> dict[str, Any]:
    """Each view ``requests`` times (round robin, so each meets refreshes alike)."""
    seconds: dict[str, list[float]] = {view: [] for view in paths}
    rows: dict[str, int] = {}
    sizes: dict[str, int] = {}
    for _ in range(3):  # warm-up: connections, first render of the snapshot's order
        for path in paths.values():
            _fetch(base + path)
    for _ in range(requests):
        for view, path in paths.items():
            status, body, took = _fetch(base + path)
            if status != 200:
                raise RuntimeError(f"{path} answered {status}")
            seconds[view].append(took)
            rows[view], sizes[view] = len(_ROW.findall(body)), len(body)
    return {
        view: {**summarize_ms(seconds[view]), "task_rows": rows[view], "bytes": sizes[view]}
        for view in paths
    }


def run(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    n = sizes.exporter_tasks
    url = dbs.new("postgresql")
    proc: subprocess.Popen[bytes] | None = None
    try:
        _populate(url, n)
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        proc = _start_exporter(url, port)
        why = _wait_ready(base, proc)
        if why is not None:
            return {"error": why}
        paths = {
            "first_page": "/",
            "failing_only": "/?badge=failing",
            "name_filter": f"/?q={PREFIX}-0099",
            "deep_page": f"/?page={max(1, n // 200)}",
            "task_page": f"/ui/tasks/{PREFIX}-{n // 2:06d}",
        }
        views = _measure(base, paths, sizes.exporter_requests)
        rss = rss_mib(proc.pid)
    finally:
        if proc is not None:
            stop_process(proc, timeout=30)
        dbs.drop(url)
    p99 = views["first_page"]["p99_ms"]
    return {
        "tasks": n,
        "instances": len(INSTANCES),
        "refresh_interval": REFRESH_INTERVAL,
        "requests_per_view": sizes.exporter_requests,
        "views": views,
        "exporter_peak_rss_mib": rss["peak_rss_mib"],
        "targets": [
            {
                "target": f"GET / (first page of {n} tasks) p99 <= {TARGET_P99_MS:g} ms",
                "measured": p99,
                "met": p99 is not None and p99 <= TARGET_P99_MS,
            }
        ],
    }
