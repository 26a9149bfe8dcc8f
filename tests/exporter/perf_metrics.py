"""Latency of /metrics with 10,000 tasks (not a test: run it and read the JSON it prints).

    .venv/bin/python -m tests.exporter.perf_metrics [--tasks 10000] [--scrapes 200]

Seeds a SQLite file, serves it with an in-process exporter refreshing every 5 s (so some
scrapes overlap a refresh), and times sequential scrapes as Prometheus sends them
(OpenMetrics + gzip) and as curl does (plain text, no compression).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from exporter.exposition import PROMETHEUS_ACCEPT, PROMETHEUS_ACCEPT_ENCODING
from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core.db import create_db_engine, upgrade_schema
from tests.exporter.factories import NOW, FakeClock, StatementCounter, seed_many

PROMETHEUS_HEADERS = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": PROMETHEUS_ACCEPT_ENCODING}
CURL_HEADERS = {"Accept": "*/*"}


def scrape(url: str, headers: dict[str, str]) -> tuple[float, float, int]:
    """(seconds to the response headers, seconds to the last byte, body size)."""
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as r:
        first = time.perf_counter() - started
        size = len(r.read())
    return first, time.perf_counter() - started, size


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _refresh_every_5s(server: ExporterServer, stop: threading.Event) -> None:
    while not stop.wait(5):
        server.refresh_now(300)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--scrapes", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'perf.db'}"
        engine = create_db_engine(url)
        upgrade_schema(engine)
        seed_many(engine, args.tasks)
        engine.dispose()
        settings = ExporterSettings(port=0, refresh_interval=5.0)
        server = ExporterServer(
            settings=settings, database_url=url, clock=FakeClock(NOW), background_refresh=False
        )
        with server:
            t0 = time.perf_counter()
            server.refresh_now(timeout=300)
            cold = time.perf_counter() - t0
            t0 = time.perf_counter()
            with StatementCounter(server.engine) as counter:
                state = server.refresh_now(timeout=300)
            warm = time.perf_counter() - t0
            report: dict[str, object] = {
                "tasks": args.tasks,
                "first_refresh_seconds": round(cold, 3),
                "refresh_seconds": round(warm, 3),
                "sql_read_seconds": round(state.last_duration_seconds or 0, 3),
                "statements_per_refresh": len(counter.statements),
            }
            for overlap in (False, True):
                # With overlap, a refresh runs every 5 s during the scrapes, as in production.
                stop = threading.Event()
                refresher = threading.Thread(target=_refresh_every_5s, args=(server, stop))
                if overlap:
                    refresher.start()
                for label, headers in (("prometheus", PROMETHEUS_HEADERS), ("curl", CURL_HEADERS)):
                    scrape(f"{server.url}/metrics", headers)  # the first request renders a variant
                    firsts, totals, size = [], [], 0
                    # During refreshes, scrape for 16 s (three refreshes) with short pauses.
                    deadline = time.monotonic() + 16
                    while len(totals) < args.scrapes or (overlap and time.monotonic() < deadline):
                        first, total, size = scrape(f"{server.url}/metrics", headers)
                        firsts.append(first)
                        totals.append(total)
                        if overlap:
                            time.sleep(0.02)
                    key = f"{label}{'_during_refreshes' if overlap else ''}"
                    report[key] = {
                        "bytes": size,
                        "scrapes": len(totals),
                        "headers_p99_ms": round(percentile(firsts, 0.99) * 1000, 1),
                        "p50_ms": round(statistics.median(totals) * 1000, 1),
                        "p99_ms": round(percentile(totals, 0.99) * 1000, 1),
                        "max_ms": round(max(totals) * 1000, 1),
                    }
                stop.set()
                if overlap:
                    refresher.join()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
