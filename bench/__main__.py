"""``python -m bench run [--quick] [--only NAME] [--out PATH]``: run the benchmarks, print JSON."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import (
    burst,
    exporter_bench,
    multi,
    once,
    runtime_adds,
    scale,
    status_page,
    steady,
    telemetry_overhead,
)
from bench.common import REPO, Databases, load_average, machine_info
from bench.sizes import FULL, QUICK, Sizes

BENCHMARKS: dict[str, Callable[[Databases, Sizes, bool], dict[str, Any]]] = {
    "burst": lambda dbs, sizes, peers: burst.run(dbs, sizes, peers=peers),
    "steady": lambda dbs, sizes, peers: steady.run(dbs, sizes, peers=peers),
    "scale": lambda dbs, sizes, peers: scale.run(dbs, sizes, peers=peers),
    "multi": lambda dbs, sizes, peers: multi.run(dbs, sizes, peers=peers),
    "exporter": lambda dbs, sizes, _peers: exporter_bench.run(dbs, sizes),
    "telemetry": lambda dbs, sizes, _peers: telemetry_overhead.run(dbs, sizes),
    "once": lambda dbs, sizes, _peers: once.run(dbs, sizes),
    "adds": lambda dbs, sizes, peers: runtime_adds.run(dbs, sizes, peers=peers),
    "status_page": lambda dbs, sizes, _peers: status_page.run(dbs, sizes),
}


def run_benchmarks(
    names: list[str], sizes: Sizes, *, peers: bool = True, label: str = "custom"
) -> dict[str, Any]:
    """Run ``names`` on one throwaway PostgreSQL (and SQLite files); return the results."""
    dbs = Databases().start()
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "sizes": label,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "git_commit": _git_commit(),
        "scheduler_core_uncommitted_at_start": _core_dirty(),
        "machine": machine_info(dbs.pg_version),
        "postgresql_settings": "throwaway initdb, fsync=off, synchronous_commit=off, "
        "full_page_writes=off, shared_buffers=128MB (tests/support/pgserver.py), same for peers",
        "benchmarks": {},
    }
    try:
        for name in names:
            entry: dict[str, Any] = {"load_average_before": load_average()}
            started = time.monotonic()
            try:
                entry["result"] = BENCHMARKS[name](dbs, sizes, peers)
            except Exception as exc:  # one broken benchmark must not hide the others
                entry["result"] = {"error": f"{type(exc).__name__}: {exc}"}
                entry["traceback"] = traceback.format_exc()
            entry["seconds"] = round(time.monotonic() - started, 1)
            entry["load_average_after"] = load_average()
            results["benchmarks"][name] = entry
            print(f"[bench] {name} done in {entry['seconds']}s", file=sys.stderr, flush=True)
    finally:
        dbs.stop()
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    # The tree may change under a long run (others commit while it runs): record it at the end.
    results["git_commit_at_end"] = _git_commit()
    results["scheduler_core_uncommitted_at_end"] = _core_dirty()
    return results


def _git(*args: str) -> str:
    """The stripped standard output of ``git args`` run in the repository."""
    out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def _git_commit() -> str | None:
    try:
        commit = _git("rev-parse", "HEAD")
    except OSError:
        return None
    dirty = _git("status", "--porcelain", "scheduler_core", "bench")
    return commit + (" (+uncommitted changes)" if dirty else "") or None


def _core_dirty() -> bool:
    """True when scheduler_core/ or exporter/ differ from the commit (the run is not of it)."""
    return bool(_git("status", "--porcelain", "scheduler_core", "exporter"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the benchmarks and print JSON")
    p.add_argument("--quick", action="store_true", help="smaller sizes (minutes, not tens)")
    p.add_argument("--only", choices=sorted(BENCHMARKS), action="append", help="repeatable")
    p.add_argument("--no-peers", action="store_true", help="skip the APScheduler peers")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "results.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = args.only or list(BENCHMARKS)
    sizes, label = (QUICK, "quick") if args.quick else (FULL, "full")
    results = run_benchmarks(names, sizes, peers=not args.no_peers, label=label)
    text = json.dumps(results, indent=2, default=str)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
