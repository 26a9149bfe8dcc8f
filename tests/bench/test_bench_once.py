"""Smoke runs of the one-time-task benchmark (bench/once.py) at the SMOKE size: every
one-time task runs exactly once, and the due queries' plans use the due index. Never
timings: CI machines vary."""

from __future__ import annotations

import json

import pytest

from bench import once, profile_once
from bench.common import Databases
from bench.scale import INDEX
from bench.sizes import SMOKE

pytestmark = pytest.mark.postgres


def test_every_one_time_task_runs_exactly_once(dbs: Databases) -> None:
    """One-time tasks due over a window each leave one successful run row, none twice,
    and none is left due afterwards."""
    result = once.once_run(dbs, SMOKE)
    assert "error" not in result["runner"], result["runner"]
    assert result["complete"]
    assert result["runs"]["by_status"] == {"success": SMOKE.once_n}
    assert result["runs"]["duplicate_ticks"] == 0
    assert result["runs"]["tasks_not_exactly_once"] == 0
    assert result["one_time_schedules_still_due"] == 0
    assert result["start_delay_row"]["count"] == SMOKE.once_n
    assert result["targets"][0]["met"]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_pending_one_time_tasks_probe_uses_the_due_index(dbs: Databases, backend: str) -> None:
    """With pending one-time tasks in the future, both due queries are planned on the due
    index, the empty polls find nothing, and each due poll takes exactly its due group."""
    result = once.pending_run(dbs, SMOKE, backend)
    for size, pending in (("small", SMOKE.pending_small), ("large", SMOKE.pending_large)):
        measured = result[size]
        assert measured["pending"] == pending
        assert set(measured["plans"]) == {"claim", "next_due"}
        assert measured["plans_use_due_at_index"], measured["plans"]
        assert all(INDEX in "\n".join(plan) for plan in measured["plans"].values())
        assert measured["empty_poll_claim"]["count"] == SMOKE.pending_probes
        assert measured["due_poll_claim"]["count"] == SMOKE.pending_due_polls
        assert measured["due_polls_claimed_as_expected"], measured["due_polls_claimed_dispatched"]


def test_profile_once_times_the_schedulers_statements(capsys: pytest.CaptureFixture[str]) -> None:
    """The profiling tool behind a missed part 1 runs every task and names its costliest SQL."""
    argv = ["--tasks", "30", "--window", "0.5", "--lead", "2", "--profile", "tottime"]
    assert profile_once.main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["complete"]
    assert result["runs"]["by_status"] == {"success": 30}
    assert result["runs"]["duplicate_ticks"] == 0
    assert result["top_statements"] and all(s["calls"] > 0 for s in result["top_statements"])
    assert "loop" in result["scheduler_cpu_percent_by_thread"]
    assert "function calls" in captured.err  # the loop thread's profile
