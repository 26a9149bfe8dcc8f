"""Two versions of the scheduler under the steady load at the same time: a change's effect
on CPU, measured so that the machine's drift cancels out.

    git worktree add /tmp/before HEAD~1
    python -m bench.ab_steady /tmp/before .                  # 3 pairs, 30 s windows
    python -m bench.ab_steady /tmp/before . --pairs 5 -- --set look_ahead=1.0
                                                             # after --: profile_steady args

Each side runs ``python -m bench.profile_steady`` from its own tree (a checkout of this
repository), on its own throwaway PostgreSQL, while the other side runs. Why side by
side: on a shared host the machine's speed drifts within minutes. In session 7 the same
code measured 22.9, 26.0 and 24.6 % of a core in consecutive runs, so a change worth a
point cannot be seen run after run. Both sides of a pair see the same drift. They also
slow each other a little (two loads on two cores), so compare the two sides of a pair,
not the figures with a run of the benchmark alone.

Prints one JSON object per side and pair, then the mean of (after - before) per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

SIDES = ("before", "after")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab_steady")
    parser.add_argument("before", type=Path, help="tree of the version before the change")
    parser.add_argument("after", type=Path, help="tree of the version after the change")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=8.0)
    parser.add_argument("extra", nargs="*", help="more profile_steady arguments (after --)")
    parser.add_argument(
        "--after-args",
        default="",
        help="profile_steady arguments of the after side only (one string): compares two "
        "workloads on one tree, e.g. --after-args '--callable bench.jobs:say_1kb'",
    )
    # Intermixed: the trees, options and the extra arguments after ``--`` in any order.
    args = parser.parse_intermixed_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    for side, tree in trees.items():
        if not (tree / "bench" / "profile_steady.py").is_file():
            parser.error(f"{side} tree {str(tree)!r} has no bench/profile_steady.py")
    if args.pairs < 1:
        parser.error(f"--pairs must be at least 1, got {args.pairs}")
    command = [
        sys.executable,
        "-m",
        "bench.profile_steady",
        "--seconds",
        str(args.seconds),
        "--warmup",
        str(args.warmup),
        *args.extra,
    ]
    pairs: list[dict[str, dict[str, Any]]] = []
    for i in range(args.pairs):
        print(f"[ab] pair {i + 1} of {args.pairs}", file=sys.stderr, flush=True)
        pair = _pair(command, trees, shlex.split(args.after_args))
        for side in SIDES:
            print(json.dumps({"pair": i + 1, "side": side, **pair[side]}), flush=True)
        pairs.append(pair)
    print(json.dumps({"mean_after_minus_before": _differences(pairs)}), flush=True)
    return 0


def _pair(
    command: list[str], trees: dict[str, Path], after_args: list[str]
) -> dict[str, dict[str, Any]]:
    """Both sides at once; each side's figures (or the error that stopped it)."""
    procs = {
        side: subprocess.Popen(
            command + (after_args if side == "after" else []),
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for side, tree in trees.items()
    }
    out: dict[str, dict[str, Any]] = {}
    for side, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"the {side} side failed (exit {proc.returncode}): {stderr[-2000:]}")
        out[side] = _figures(json.loads(stdout))
    return out


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "scheduler_cpu": result["scheduler_cpu_percent_of_one_core"],
        "postgres_cpu": result["postgres_cpu_percent_of_one_core"],
        "p99_start_delay_ms": result["start_delay_row"]["p99_ms"],
        "runs": result["start_delay_row"]["count"],
    }
    for role, percent in result["scheduler_cpu_percent_by_thread"].items():
        figures[f"cpu_{role}"] = percent
    return figures


def _differences(pairs: list[dict[str, dict[str, Any]]]) -> dict[str, float]:
    """Per figure both sides report, the mean over pairs of after minus before."""
    shared = set(pairs[0]["before"]) & set(pairs[0]["after"])
    return {
        name: round(statistics.mean(p["after"][name] - p["before"][name] for p in pairs), 2)
        for name in sorted(shared)
        if all(name in p["before"] and name in p["after"] for p in pairs)
    }


if __name__ == "__main__":
    raise SystemExit(main())
