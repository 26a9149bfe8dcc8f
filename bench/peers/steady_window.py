"""What the steady and scale peer scripts share: their arguments, the calls they record, the
measured window and the JSON line they print. Standard library only: it runs in the peers'
own environments, imported from the script's directory."""

from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from typing import Any

CALLS: list[tuple[float, float]] = []  # (called at, lateness in seconds)
_lock = threading.Lock()


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for name in ("--every", "--lead", "--warmup", "--seconds"):
        parser.add_argument(name, type=float, required=True)
    for name in ("--tasks", "--workers"):
        parser.add_argument(name, type=int, required=True)
    # Empty polls timed before the first tick (the scale scripts; 0 for steady).
    parser.add_argument("--probes", type=int, default=0)
    return parser.parse_args()


def record(called: float, late: float) -> None:
    with _lock:
        CALLS.append((called, late))


def measure(args: argparse.Namespace, origin: float) -> tuple[float, float, float]:
    """Sleep through the warm-up after the first tick, then the window: returns its start
    and end (``time.time()``) and the process CPU seconds spent in it."""
    time.sleep(max(0.0, origin + args.warmup - time.time()))
    cpu0, wall0 = time.process_time(), time.time()
    time.sleep(args.seconds)
    return wall0, time.time(), time.process_time() - cpu0


def report(
    peer: str,
    *,
    setup_s: float,
    overran: bool,
    window: tuple[float, float, float],
    extra: dict[str, Any] | None = None,
) -> None:
    wall0, wall1, cpu = window
    with _lock:
        delays = [late for called, late in CALLS if wall0 <= called < wall1]
    out: dict[str, Any] = {
        "peer": peer,
        "setup_s": setup_s,
        "setup_overran_first_tick": overran,
        "window_s": wall1 - wall0,
        "cpu_s": cpu,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "delays": delays,
        **(extra or {}),
    }
    print(json.dumps(out))
