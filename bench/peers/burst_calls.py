"""What the burst peer scripts share: their arguments, the job they schedule (it records each
call's lateness and end), the wait for every call and the JSON line they print. Standard
library only: it runs in the peers' own environments, imported from the script's directory."""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

DELAYS: list[float] = []
ENDS: list[float] = []
_lock = threading.Lock()


def job(due: float) -> None:
    """The scheduled callable: records how late it was called and when it ended."""
    called = time.time()
    with _lock:
        DELAYS.append(called - due)
        ENDS.append(time.time())


def arguments() -> argparse.Namespace:
    """``--n`` one-shots due ``--lead`` seconds from now on ``--workers``; ``--timeout``."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, required=True)
    parser.add_argument("--lead", type=float, required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=300.0)
    return parser.parse_args()


def setup_overran(due: float) -> bool:
    """Whether the set-up ended too close to (or after) the due instant."""
    return time.time() > due - 0.2


def wait_for_calls(args: argparse.Namespace) -> None:
    """Wait until every one of the ``args.n`` calls has ended, or the lead and timeout pass."""
    deadline = time.monotonic() + args.lead + args.timeout
    while len(ENDS) < args.n and time.monotonic() < deadline:
        time.sleep(0.005)


def print_result(peer: str, setup_s: float, overran: bool, due: float, **extra: Any) -> None:
    """Print the one JSON line of a burst: set-up, calls done, all finished, every delay."""
    print(
        json.dumps(
            {
                "peer": peer,
                "setup_s": setup_s,
                "setup_overran_due_time": overran,
                "done": len(ENDS),
                "all_finished_s": (max(ENDS) - due) if ENDS else None,
                "delays": DELAYS,
                **extra,
            }
        )
    )
