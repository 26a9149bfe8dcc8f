"""Schedules at runtime (issue 18): adding 10,000 schedules, creating tasks over HTTP at a fixed
rate, and starting a scheduler with a 10,000-task file.

``adds``: on one fresh PostgreSQL database each, schedctl's ``Client.add_tasks`` creates N
``every:`` tasks in one call (repeated, the median reported), APScheduler 4.0.0a6 calls
``add_schedule`` N times (SQLAlchemyDataStore on asyncpg, ``Scheduler`` and
``AsyncScheduler``: the faster one is compared) and APScheduler 3.11 calls ``add_job`` N
times (SQLAlchemyJobStore on psycopg); each peer in its own environment
(``bench/peers/aps{3,4}_adds.py``), each timing only its calls. As context:
``Client.add_task`` one task at a time (per-add latency), and ``add_tasks`` on SQLite.

``http``: a real exporter process (``schedctl exporter --enable-admin-api``, loopback) over
PostgreSQL; an open-loop client (one aiohttp session, keep-alive) POSTs one task a request
to ``/api/v1/tasks`` at a fixed rate for a fixed time. Send times are scheduled in advance
and each latency runs from its request's *intended* send time to its reply, so a slow
reply delays no measurement (no coordinated omission). Before the window, some requests
one at a time give a create's latency with nothing queued. Every created task is counted
in the database afterwards.

``startup``: a generated task file of N cron tasks (varied minute, hour, day and weekday
fields, a few time zones, commands and callables, retries and timeouts, as a real file
has). (a) ``schedctl validate FILE`` as a process, wall time. (b) ``schedctl scheduler
--config FILE``: from launching the process to its first claim. The first claim is
observed without hooks: before the launch an ``api`` task (untouched by the file's sync)
gets a run-now request, so it is due at once; the first pass claims it, and its run row's
``started_at`` is the claim time (the real start replaces it when the run is written,
within milliseconds, since the run is due at once). Measured on an empty database (the
sync creates every task: a first deployment) and again on the same database (every task
unchanged: a restart), on SQLite and PostgreSQL. The scheduler's log lines (their own
timestamps) split the time: the sync's line, the instance's registration. With each claim,
the CPU seconds the scheduler process had used when it was seen (``cpu_at_claim_s``): on a
shared machine the wall time waits for other work, its CPU time much less. Before the
launches the tree's packages are compiled to bytecode, as an installed package ships them
(this machine's PYTHONDONTWRITEBYTECODE=1 would have each launch compile them again; the
JSON's ``bytecode`` says so). Alone:
``python -m bench.runtime_adds [--repeats N] [--backend sqlite|postgresql]``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import yaml

from bench.common import (
    REPO,
    Databases,
    children_cpu_seconds,
    cpu_seconds,
    machine_cpu_percent,
    machine_cpu_ticks,
    percentile,
    reader_engine,
    run_peer_script,
    summarize_ms,
)
from bench.peers.envs import PeerUnavailableError, peer_python
from bench.processes import precompile_tree, stop_process
from bench.sizes import FULL, Sizes
from exporter.exposition import PROMETHEUS_ACCEPT, PROMETHEUS_ACCEPT_ENCODING
from scheduler_core.client import Client
from scheduler_core.gc_pause import gc_paused

#: name: (environment, script, PostgreSQL driver, the variants' extra arguments)
PEERS: dict[str, tuple[str, str, str, list[list[str]]]] = {
    "apscheduler-4.0.0a6": (
        "aps4",
        "aps4_adds.py",
        "asyncpg",
        [["--api", "sync"], ["--api", "async"]],
    ),
    "apscheduler-3.11": ("aps3", "aps3_adds.py", "psycopg", [[]]),
}
#: How much faster than each peer ``add_tasks`` must be (issue 18).
ADD_TARGETS = {"apscheduler-4.0.0a6": 10.0, "apscheduler-3.11": 3.0}
HTTP_P99_TARGET_MS = 25.0
VALIDATE_TARGET_S = 2.0
FIRST_CLAIM_TARGET_S = 3.0

ADMIN_TOKEN = "bench-admin-token-0123456789"
PROBE_TASK = "startup-probe"
#: The open-loop client's connection cap: far above what 200 requests/s at tens of ms need.
MAX_CONNECTIONS = 64
#: The chart's ServiceMonitor scrape interval, and when the first scrape of a window comes.
SCRAPE_INTERVAL_S = 30.0
SCRAPE_FIRST_S = 5.0
REQUEST_TIMEOUT_S = 30.0


# ---------------------------------------------------------------------- adds
def every_mappings(n: int, prefix: str = "adds") -> list[dict[str, Any]]:
    """``n`` task mappings as an application would send them: a callable, every minute-ish."""
    return [
        {"name": f"{prefix}-{i:06d}", "callable": "bench.jobs:noop", "every": f"{60 + i % 7}s"}
        for i in range(n)
    ]


def count_rows(url: str, prefix: str) -> int:
    """Schedule rows of tasks named ``prefix-*``."""
    engine = reader_engine(url)
    try:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.text("SELECT count(*) FROM scheduler_schedules WHERE name LIKE :p"),
                    {"p": f"{prefix}-%"},
                ).scalar_one()
            )
    finally:
        engine.dispose()


def schedctl_add_tasks(url: str, n: int) -> dict[str, Any]:
    """``Client.add_tasks`` with ``n`` mappings in one call (the client opened beforehand)."""
    mappings = every_mappings(n)
    with Client(url) as client:
        client.clock.now()  # the clock's first database read happens before the timing
        started = time.perf_counter()
        names = client.add_tasks(mappings)
        seconds = time.perf_counter() - started
    rows = count_rows(url, "adds")
    return {"n": n, "seconds": round(seconds, 4), "returned": len(names), "rows": rows}


def schedctl_add_one_by_one(url: str, n: int) -> dict[str, Any]:
    """``Client.add_task`` ``n`` times, one task a call: each call's latency."""
    mappings = every_mappings(n, prefix="one")
    latencies: list[float] = []
    with Client(url) as client:
        client.clock.now()
        started = time.perf_counter()
        for mapping in mappings:
            before = time.perf_counter()
            client.add_task(mapping)
            latencies.append(time.perf_counter() - before)
        seconds = time.perf_counter() - started
    return {
        "n": n,
        "seconds": round(seconds, 3),
        "latency": summarize_ms(latencies),
        "rows": count_rows(url, "one"),
    }


def peer_adds(dbs: Databases, peer: str, n: int) -> dict[str, Any]:
    """Each variant of ``peer`` adding ``n`` schedules, each on a fresh PostgreSQL database."""
    env_name, script, driver, variants = PEERS[peer]
    try:
        python = peer_python(env_name)
    except PeerUnavailableError as exc:
        return {"skipped": str(exc)}
    out: dict[str, Any] = {}
    for extra in variants:
        url = dbs.new("postgresql", migrated=False)
        try:
            raw = run_peer_script(
                python, script, url, driver=driver, args=["--n", str(n), *extra], timeout=1800
            )
        finally:
            dbs.drop(url)
        if "error" in raw:
            out[raw.get("api", " ".join(extra) or "default")] = raw
            continue
        latencies = raw.pop("latencies_s")
        raw["seconds"] = round(raw["seconds"], 3)
        raw["latency"] = summarize_ms(latencies)
        out[raw["api"]] = raw
    return out


def adds(dbs: Databases, sizes: Sizes, *, peers: bool) -> dict[str, Any]:
    """Line 1 of issue 18: ``add_tasks`` of N tasks vs N peer calls, on PostgreSQL."""
    n = sizes.adds_n
    samples: list[dict[str, Any]] = []
    for _ in range(sizes.adds_repeats):
        url = dbs.new("postgresql")
        try:
            samples.append(schedctl_add_tasks(url, n))
        finally:
            dbs.drop(url)
    seconds = [s["seconds"] for s in samples]
    median = statistics.median(seconds)
    out: dict[str, Any] = {
        "n": n,
        "schedctl_add_tasks_postgresql": {
            "seconds_median": median,
            "seconds_samples": seconds,
            "all_rows_stored": all(s["rows"] == n and s["returned"] == n for s in samples),
        },
    }
    url = dbs.new("sqlite")
    try:
        out["schedctl_add_tasks_sqlite"] = schedctl_add_tasks(url, n)
    finally:
        dbs.drop(url)
    for backend in ("postgresql", "sqlite"):
        url = dbs.new(backend)
        try:
            out[f"schedctl_add_task_one_by_one_{backend}"] = schedctl_add_one_by_one(
                url, sizes.adds_one_by_one
            )
        finally:
            dbs.drop(url)
    if not peers:
        return out
    targets: list[dict[str, Any]] = []
    out["peers"] = {}
    for peer, factor in ADD_TARGETS.items():
        measured = peer_adds(dbs, peer, n)
        out["peers"][peer] = measured
        timed = [v for v in measured.values() if isinstance(v, dict) and "seconds" in v]
        if not timed:
            targets.append({"target": f"add {n}: >= {factor:g}x faster than {peer}", "met": None,
                            "measured": "peer not measured"})  # fmt: skip
            continue
        fastest = min(timed, key=lambda v: v["seconds"])
        ratio = round(fastest["seconds"] / median, 2) if median > 0 else None
        targets.append(
            {
                "target": f"add {n} schedules: >= {factor:g}x faster than {peer}",
                "measured": f"schedctl {median:.3f} s (median) vs {fastest['api']} "
                f"{fastest['seconds']:.3f} s: x{ratio}",
                "ratio": ratio,
                "peer_rows_stored": fastest.get("rows"),
                "met": ratio is not None and ratio >= factor,
            }
        )
    out["targets"] = targets
    return out


# ---------------------------------------------------------------------- processes
def schedctl_command() -> list[str]:
    """The ``schedctl`` console script of this environment (``-m scheduler_core.cli`` else)."""
    script = Path(sys.executable).parent / "schedctl"
    if script.exists():
        return [str(script)]
    found = shutil.which("schedctl")
    return [found] if found else [sys.executable, "-m", "scheduler_core.cli"]


def child_env() -> dict[str, str]:
    """The environment of the schedctl processes: ``bench.jobs`` importable, no stray
    ``SCHEDCTL_*`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEDCTL_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------------- http
def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def summarize_latency_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max/mean in milliseconds of durations given in seconds."""

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "count": len(seconds),
        "p50_ms": ms(percentile(seconds, 0.50)),
        "p95_ms": ms(percentile(seconds, 0.95)),
        "p99_ms": ms(percentile(seconds, 0.99)),
        "max_ms": ms(max(seconds) if seconds else None),
        "mean_ms": ms(statistics.fmean(seconds) if seconds else None),
    }


async def open_loop(
    base: str,
    *,
    rate: float,
    seconds: float,
    prefix: str,
    sequential: int,
    scraping: bool = True,
) -> dict[str, Any]:
    """POST one task a request to ``base``/api/v1/tasks at ``rate`` requests a second for
    ``seconds``: request ``i`` is due at ``start + i / rate`` whatever the replies before it
    did, and its latency runs from that intended time to its complete reply. First
    ``sequential`` requests one at a time (other names, not in the window): the latency of a
    create with nothing queued. With ``scraping``, /metrics is scraped meanwhile as
    Prometheus would."""
    import aiohttp

    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=MAX_CONNECTIONS, keepalive_timeout=120)
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    endpoint = base + "/api/v1/tasks"
    loop = asyncio.get_running_loop()
    statuses: dict[str, int] = {}
    errors: dict[str, int] = {}
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []  # (intended send, seconds into the window; latency)
    send_lags: list[float] = []
    in_flight = 0
    max_in_flight = 0

    def body(name: str) -> bytes:
        task = {"name": name, "callable": "bench.jobs:noop", "every": "60s"}
        return json.dumps(task).encode()

    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:

        async def post(data: bytes) -> int:
            async with session.post(endpoint, data=data) as resp:
                await resp.read()
                return resp.status

        # One request at a time first (other names, outside the window): opens a connection
        # and gives the service time of a create with nothing queued (closed loop).
        alone: list[float] = []
        for i in range(sequential):
            before = loop.time()
            status = await post(body(f"{prefix}seq-{i:06d}"))
            alone.append(loop.time() - before)
            if status != 201:
                key = f"sequential request answered {status}"
                errors[key] = errors.get(key, 0) + 1

        async def one(data: bytes, intended: float) -> None:
            nonlocal in_flight, max_in_flight
            send_lags.append(loop.time() - intended)
            in_flight += 1
            max_in_flight = max(max_in_flight, in_flight)
            try:
                status = await post(data)
                statuses[str(status)] = statuses.get(str(status), 0) + 1
            except Exception as exc:  # a failed request is counted, never hidden
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            finally:
                in_flight -= 1
            latencies.append(loop.time() - intended)
            timeline.append((intended, loop.time() - intended))

        scrapes: list[float] = []
        # As Prometheus asks (OpenMetrics, gzip), with the admin token as its bearer.
        scrape_headers = {
            "Accept": PROMETHEUS_ACCEPT,
            "Accept-Encoding": PROMETHEUS_ACCEPT_ENCODING,
        }

        async def scrape() -> None:
            """Prometheus's part: /metrics every SCRAPE_INTERVAL_S (the chart's
            ServiceMonitor), the first a few seconds into the window. The exporter renders
            the tasks created since its last refresh ahead of scrapes, paced so that the
            creates keep most of the GIL (exporter.pacing), and gzips the body per refresh."""
            await asyncio.sleep(SCRAPE_FIRST_S)
            while True:
                before = loop.time()
                async with session.get(base + "/metrics", headers=scrape_headers) as resp:
                    await resp.read()
                scrapes.append(loop.time() - before)
                await asyncio.sleep(SCRAPE_INTERVAL_S)

        n = round(rate * seconds)
        bodies = [body(f"{prefix}-{i:06d}") for i in range(n)]
        scraper = asyncio.create_task(scrape()) if scraping else None
        cpu_before = time.process_time()
        # No collection in this process during the window: a full one of the load
        # generator stalled its loop for 60-70 ms once a run (send_lag max), and the
        # server was charged with it. Collected here, so no collection is owed.
        gc.collect()
        with gc_paused():
            start = loop.time() + 0.05
            pending: list[asyncio.Task[None]] = []
            for i in range(n):
                intended = start + i / rate
                delay = intended - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                pending.append(asyncio.create_task(one(bodies[i], intended)))
            await asyncio.gather(*pending)
            elapsed = loop.time() - start
        if scraper is not None:
            scraper.cancel()
        client_cpu = time.process_time() - cpu_before
    return {
        "sequential_one_at_a_time": summarize_latency_ms(alone),
        "requests": n,
        "elapsed_s": round(elapsed, 2),
        "completed_per_s": round(n / elapsed, 1) if elapsed > 0 else None,
        "status_counts": statuses,
        "errors": errors,
        "latency_from_intended_send": summarize_latency_ms(latencies),
        "send_lag": summarize_latency_ms(send_lags),
        "max_in_flight": max_in_flight,
        "slowest_seconds": slowest_seconds(timeline, start),
        "scrapes_s": [round(x, 3) for x in scrapes],
        "client_cpu_percent": round(100 * client_cpu / elapsed, 1) if elapsed > 0 else None,
    }


def slowest_seconds(
    timeline: Sequence[tuple[float, float]], start: float, top: int = 5
) -> list[dict[str, float]]:
    """The seconds of the window whose requests waited longest: where the tail comes from
    (say, every refresh interval of the exporter)."""
    worst: dict[int, float] = {}
    for intended, latency in timeline:
        second = int(intended - start)
        worst[second] = max(worst.get(second, 0.0), latency)
    ranked = sorted(worst.items(), key=lambda item: item[1], reverse=True)[:top]
    return [{"second": float(sec), "max_ms": round(1000 * lat, 1)} for sec, lat in ranked]


def http_creates(dbs: Databases, sizes: Sizes) -> dict[str, Any]:
    """Line 2 of issue 18: POST /api/v1/tasks at ``http_rate``/s for ``http_seconds``."""
    url = dbs.new("postgresql")
    try:
        result = _http_creates(url, dbs.postmaster_pid, sizes)
        if "error" not in result:
            result["created_rows"] = count_rows(url, "http")
    finally:
        dbs.drop(url)
    if "error" in result:
        return result
    latency = result["latency_from_intended_send"]
    created = result["status_counts"].get("201", 0)
    p99 = latency["p99_ms"]
    result["all_created"] = (
        created == result["requests"] == result["created_rows"] and not result["errors"]
    )
    result["targets"] = [
        {
            "target": f"POST /api/v1/tasks at {sizes.http_rate:g}/s: p99 <= "
            f"{HTTP_P99_TARGET_MS:g} ms (from the intended send time)",
            "measured": p99,
            "met": p99 is not None and p99 <= HTTP_P99_TARGET_MS,
        }
    ]
    return result


def start_schedctl(*args: str) -> tuple[subprocess.Popen[str], _LogLines]:
    """``schedctl *args`` from this tree, its stderr read line by line in the background."""
    proc = subprocess.Popen(
        [*schedctl_command(), *args],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = _LogLines(proc.stderr)
    lines.start()
    return proc, lines


def _http_creates(url: str, postmaster_pid: int | None, sizes: Sizes) -> dict[str, Any]:
    """Start the exporter on ``url``, run the open-loop client against it, stop it."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, log = start_schedctl(
        "exporter",
        *("--database-url", url, "--listen", f"127.0.0.1:{port}"),
        *("--enable-admin-api", "--admin-token", ADMIN_TOKEN),
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _http_status(base + "/ready") == 200:
                break
            time.sleep(0.1)
        else:
            return {"error": f"exporter not ready within 60 s (exit {proc.poll()}): "
                    + " | ".join(log.lines[-5:])}  # fmt: skip
        cpu_before = cpu_seconds(proc.pid)
        pg_before = children_cpu_seconds(postmaster_pid) if postmaster_pid else None
        machine_before = machine_cpu_ticks()
        started = time.monotonic()
        result = asyncio.run(
            open_loop(
                base,
                rate=sizes.http_rate,
                seconds=sizes.http_seconds,
                prefix="http",
                sequential=sizes.http_sequential,
            )
        )
        wall = time.monotonic() - started
        # Steal (other guests on the host) slowed every process here, the load generator too.
        result["machine_cpu_percent"] = machine_cpu_percent(machine_before, machine_cpu_ticks())
        result["exporter_cpu_percent"] = round(100 * (cpu_seconds(proc.pid) - cpu_before) / wall, 1)
        if postmaster_pid and pg_before is not None:
            pg = children_cpu_seconds(postmaster_pid) - pg_before
            result["postgresql_cpu_percent"] = round(100 * pg / wall, 1)
    finally:
        exit_status = stop_process(proc)
        log.join(timeout=10)
    result["exporter_exit"] = exit_status
    result["exporter_errors_logged"] = [
        ln for ln in log.lines if " ERROR " in ln or "Traceback" in ln
    ][-5:]
    result["rate_per_s"] = sizes.http_rate
    result["seconds"] = sizes.http_seconds
    return result


# ---------------------------------------------------------------------- startup
_CRON_SHAPES = (
    "{m} {h} * * *",  # daily
    "{m} * * * *",  # hourly
    "{q}-59/15 * * * *",  # every quarter hour, offset
    "{m} {h} * * 1-5",  # weekdays
    "{m} {h},{h2} * * *",  # twice a day
    "{m} {h} {dom} * *",  # monthly
    "{m} {h} * * {dow}",  # weekly
    "{m} {h1}-{h3} * * *",  # hourly in office hours
)
_TIMEZONES = ("Europe/Berlin", "America/New_York", "Asia/Tokyo")


def task_document(n: int) -> dict[str, Any]:
    """A task file of ``n`` cron tasks with distinct-ish expressions and the keys real files
    use: callables and commands, a few time zones, retries, timeouts, descriptions."""
    rng = random.Random(18)  # the same file every time
    tasks: list[dict[str, Any]] = []
    for i in range(n):
        h = rng.randrange(24)
        fields = {
            "m": rng.randrange(60), "q": rng.randrange(15), "h": h, "h2": (h + 12) % 24,
            "h1": rng.randrange(6, 10), "h3": rng.randrange(16, 20), "dom": rng.randrange(1, 29),
            "dow": rng.randrange(7),
        }  # fmt: skip
        task: dict[str, Any] = {
            "name": f"job-{i:05d}",
            "cron": _CRON_SHAPES[i % len(_CRON_SHAPES)].format(**fields),
        }
        if i % 4 == 3:
            task["command"] = ["sh", "-c", f"echo report {i}"]
            task["timeout"] = "10m"
        else:
            task["callable"] = "bench.jobs:noop"
        if i % 10 == 0:
            task["timezone"] = _TIMEZONES[(i // 10) % len(_TIMEZONES)]
        if i % 5 == 1:
            task["retries"] = {"max": 2, "backoff": "exponential", "delay": "30s"}
        if i % 6 == 2:
            task["overlap"] = "skip"
        if i % 3 == 0:
            task["description"] = f"Generated task {i}: refresh shard {i % 64}"
        tasks.append(task)
    return {"defaults": {"timezone": "UTC", "max_runtime": "30m", "misfire": "run_once"},
            "tasks": tasks}  # fmt: skip


def write_task_file(path: Path, n: int) -> int:
    """Write ``task_document(n)`` as YAML; returns the file's size in bytes."""
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    path.write_text(yaml.dump(task_document(n), Dumper=dumper, sort_keys=False))
    return path.stat().st_size


def timed_command(args: list[str], *, timeout: float = 120.0) -> dict[str, Any]:
    """Run a schedctl command to its end: wall seconds from launch to exit, and its status."""
    started = time.perf_counter()
    proc = subprocess.run(
        [*schedctl_command(), *args],
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout,
        text=True,
    )
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {"seconds": round(seconds, 3), "exit": proc.returncode}
    if proc.returncode != 0:
        out["stderr"] = proc.stderr[-1500:]
    return out


class _LogLines(threading.Thread):
    """Collects a process's stderr lines (the scheduler logs there, with timestamps)."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[str] = []

    def run(self) -> None:
        for line in self.stream:
            self.lines.append(line.rstrip("\n"))

    def stamp(self, needle: str) -> float | None:
        """Unix time of the first line containing ``needle``, from its own timestamp."""
        for line in self.lines:
            if needle in line:
                try:
                    at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                except ValueError:
                    return None
                return at.timestamp()  # the log's local time
        return None


def _probe_run(url: str, after_id: int) -> tuple[int, datetime] | None:
    """The probe task's first run row with an id above ``after_id``: (id, started_at)."""
    engine = reader_engine(url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                sa.text(
                    "SELECT id, started_at FROM scheduler_task_runs "
                    "WHERE task_name = :t AND id > :after ORDER BY id LIMIT 1"
                ),
                {"t": PROBE_TASK, "after": after_id},
            ).first()
    except sa.exc.OperationalError:  # SQLite busy for a moment: ask again
        return None
    finally:
        engine.dispose()
    if row is None or row[1] is None:
        return None
    started = row[1]
    if isinstance(started, str):  # SQLite through a plain engine
        started = datetime.fromisoformat(started)
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return int(row[0]), started


def _instance_started(url: str, instance_id: str) -> datetime | None:
    engine = reader_engine(url)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                sa.text("SELECT started_at FROM scheduler_instances WHERE instance_id = :i"),
                {"i": instance_id},
            ).scalar()
    finally:
        engine.dispose()
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def first_claim(url: str, config: Path, instance_id: str, after_id: int) -> dict[str, Any]:
    """Launch ``schedctl scheduler --config`` on ``url`` (the probe task already due) and
    time its first claim; stop it again. Seconds from the launch to each stage."""
    launched = time.time()
    proc, lines = start_schedctl(
        "scheduler",
        *("--config", str(config), "--database-url", url),
        *("--instance-id", instance_id, "--health-listen", "off", "--log-level", "INFO"),
    )
    found: tuple[int, datetime] | None = None
    cpu_at_claim: float | None = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            found = _probe_run(url, after_id)
            if found is not None:
                cpu_at_claim = _cpu_or_none(proc.pid)
                break
            time.sleep(0.05)
        registered = _instance_started(url, instance_id)
    finally:
        exit_status = stop_process(proc)
        lines.join(timeout=10)
    if found is None:
        return {"error": f"no claim within 120 s (exit {exit_status}): "
                + " | ".join(lines.lines[-5:])}  # fmt: skip
    run_id, claimed_at = found

    def since_launch(at: float | None) -> float | None:
        return None if at is None else round(at - launched, 3)

    return {
        "first_claim_s": since_launch(claimed_at.timestamp()),
        "synced_s": since_launch(lines.stamp("tasks from")),
        "registered_s": since_launch(registered.timestamp() if registered else None),
        "cpu_at_claim_s": cpu_at_claim,
        "sync_log": next((ln.split(": ", 1)[-1] for ln in lines.lines if "tasks from" in ln), None),
        "probe_run_id": run_id,
        "exit": exit_status,
    }


def _cpu_or_none(pid: int) -> float | None:
    """The process's CPU seconds so far; None where /proc cannot tell (not Linux, gone)."""
    try:
        return round(cpu_seconds(pid), 3)
    except (OSError, IndexError, ValueError):
        return None


def startup_on(dbs: Databases, backend: str, config: Path, repeats: int) -> dict[str, Any]:
    """First start (every task created) and restart (every task unchanged), ``repeats``
    times each, on fresh ``backend`` databases."""
    first: list[dict[str, Any]] = []
    again: list[dict[str, Any]] = []
    for r in range(repeats):
        url = dbs.new(backend)
        try:
            with Client(url, actor="bench") as client:
                client.add_task({"name": PROBE_TASK, "callable": "bench.jobs:noop", "every": "1h"})
                client.run_now(PROBE_TASK)
                one = first_claim(url, config, f"bench-startup-{backend}-{r}", 0)
                first.append(one)
                if "error" in one:
                    break
                client.run_now(PROBE_TASK)
                two = first_claim(url, config, f"bench-startup-{backend}-{r}", one["probe_run_id"])
                again.append(two)
                if "error" in two:
                    break
        finally:
            dbs.drop(url)
    return {"first_start": _stages(first), "restart": _stages(again)}


def _stages(samples: list[dict[str, Any]]) -> dict[str, Any]:
    errors = [s["error"] for s in samples if "error" in s]
    ok = [s for s in samples if "error" not in s]
    out: dict[str, Any] = {"samples": samples}
    if errors:
        out["errors"] = errors
    for key in ("first_claim_s", "synced_s", "registered_s", "cpu_at_claim_s"):
        values = [s[key] for s in ok if s.get(key) is not None]
        out[f"{key}_median"] = round(statistics.median(values), 3) if values else None
        out[f"{key}_max"] = max(values) if values else None
    return out


def startup(
    dbs: Databases, sizes: Sizes, *, backends: Sequence[str] = ("sqlite", "postgresql")
) -> dict[str, Any]:
    """Line 3 of issue 18: validate and first claim with a ``startup_tasks``-task file, on
    each of ``backends``."""
    n = sizes.startup_tasks
    config = dbs.tmp / f"startup-{n}.yaml"
    size = write_task_file(config, n)
    # The launched processes read this tree's .pyc files, as an installed package's would be
    # (PYTHONDONTWRITEBYTECODE=1 here: they never write them): see precompile_tree.
    bytecode = precompile_tree()
    interpreter = [timed_command(["--version"]) for _ in range(sizes.startup_repeats)]
    validations = [timed_command(["validate", str(config)]) for _ in range(sizes.startup_repeats)]
    validate_s = [v["seconds"] for v in validations if v["exit"] == 0]
    out: dict[str, Any] = {
        "tasks": n,
        "file_bytes": size,
        "bytecode": bytecode,
        "schedctl_version_s": [v["seconds"] for v in interpreter],
        "validate": {
            "samples": validations,
            "seconds_median": round(statistics.median(validate_s), 3) if validate_s else None,
            "seconds_max": max(validate_s) if validate_s else None,
            "all_ok": len(validate_s) == len(validations),
        },
    }
    for backend in backends:
        out[backend] = startup_on(dbs, backend, config, sizes.startup_repeats)
    validate_max = out["validate"]["seconds_max"]
    targets = [
        {
            "target": f"schedctl validate ({n} tasks) <= {VALIDATE_TARGET_S:g} s",
            "measured": f"median {out['validate']['seconds_median']} s, max {validate_max} s",
            "met": validate_max is not None and validate_max <= VALIDATE_TARGET_S,
        }
    ]
    for backend in backends:
        for phase in ("first_start", "restart"):
            measured = out[backend][phase]
            worst = measured.get("first_claim_s_max")
            targets.append(
                {
                    "target": f"{backend} {phase.replace('_', ' ')}: launch to first claim "
                    f"<= {FIRST_CLAIM_TARGET_S:g} s",
                    "measured": f"median {measured.get('first_claim_s_median')} s, max {worst} s",
                    "met": worst is not None
                    and not measured.get("errors")
                    and worst <= FIRST_CLAIM_TARGET_S,
                }
            )
    out["targets"] = targets
    return out


# ---------------------------------------------------------------------- all
def run(dbs: Databases, sizes: Sizes, *, peers: bool = True) -> dict[str, Any]:
    return {
        "adds": adds(dbs, sizes, peers=peers),
        "http": http_creates(dbs, sizes),
        "startup": startup(dbs, sizes),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """The start-up line alone (validate, first start and restart), printed as JSON."""
    parser = argparse.ArgumentParser(prog="python -m bench.runtime_adds", description=main.__doc__)
    parser.add_argument("--repeats", type=int, default=FULL.startup_repeats)
    parser.add_argument("--tasks", type=int, default=FULL.startup_tasks)
    parser.add_argument("--backend", action="append", choices=("sqlite", "postgresql"))
    args = parser.parse_args(argv)
    sizes = dataclasses.replace(FULL, startup_repeats=args.repeats, startup_tasks=args.tasks)
    dbs = Databases().start()
    try:
        result = startup(dbs, sizes, backends=args.backend or ("sqlite", "postgresql"))
    finally:
        dbs.stop()
    result["load_average"] = os.getloadavg()
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
