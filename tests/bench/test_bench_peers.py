"""The peers' pure parts: the multi benchmark's merge of the calls APScheduler 4's processes
report, and the report's peer columns. No database, no peer environment."""

from __future__ import annotations

from bench import report
from bench.multi import merge_calls


def test_merge_counts_duplicates_across_processes_and_missing_ids() -> None:
    """A schedule called by two processes is a duplicate; an id never called is missing."""
    due = 1000.0
    first = [["multi-000000", 0.010, 1000.5], ["multi-000001", 0.020, 1001.0]]
    second = [["multi-000001", 0.030, 1001.5], ["multi-000001", 0.040, 1002.0]]
    expected = {"multi-000000", "multi-000001", "multi-000002", "multi-000003"}

    merged = merge_calls([first, second], expected, due)

    assert merged["calls"] == 4
    assert merged["calls_per_instance"] == [2, 2]
    assert merged["duplicates"] == 2  # multi-000001 ran three times: two beyond one
    assert merged["ids_called_more_than_once"] == 1
    assert merged["missing"] == 2
    assert merged["unexpected_ids"] == 0
    assert merged["all_finished_s"] == 2.0
    assert merged["throughput_runs_per_s"] == 2.0  # 4 expected over 2 s
    assert merged["start_delay_call"]["count"] == 4
    assert merged["start_delay_call"]["max_ms"] == 40.0


def test_merge_of_exactly_once_calls_has_no_duplicates() -> None:
    calls = [[[f"multi-{i:06d}", 0.001, 10.0 + i] for i in range(3)], []]
    merged = merge_calls(calls, {f"multi-{i:06d}" for i in range(3)}, 9.0)
    assert (merged["duplicates"], merged["missing"], merged["calls_per_instance"]) == (0, 0, [3, 0])
    assert merged["throughput_runs_per_s"] == 1.0  # 3 over the 3 s to the last end


def test_merge_without_any_call_has_no_throughput() -> None:
    merged = merge_calls([[], [], []], {"multi-000000"}, 0.0)
    assert merged["all_finished_s"] is None
    assert merged["throughput_runs_per_s"] is None
    assert merged["missing"] == 1


def test_report_shows_the_multi_peers_beside_schedctl_and_renders_old_json() -> None:
    """The multi table gains a column a peer, with why a peer has no figure; JSON written
    before the peers existed renders no peer table."""
    ours = {
        "throughput_runs_per_s": 2000.0,
        "all_finished_s": 1.0,
        "duplicates": 0,
        "runs": {"tasks_not_exactly_once": 0},
        "start_delay_row": {"p99_ms": 900.0},
    }
    theirs = {
        "throughput_runs_per_s": 75.5,
        "all_finished_s": 26.5,
        "duplicates": 3,
        "missing": 0,
        "start_delay_call": {"p99_ms": 26000.0},
    }
    result = {
        "one_instance": ours,
        "three_instances": ours,
        "peers": {
            "apscheduler-3.11": {"skipped": "not applicable: no shared job store"},
            "apscheduler-4.0.0a6": {"one_instance": theirs, "three_instances": theirs},
        },
    }
    rows = report._multi_peers(result)
    assert "| figure | schedctl | apscheduler-3.11 | apscheduler-4.0.0a6 |" in rows
    assert (
        "| 3 processes: duplicates / not run exactly once (peer: missing) | 0 / 0 | — | 3 / 0 |"
    ) in rows
    assert "- apscheduler-3.11: not applicable: no shared job store" in rows
    assert "| 1 process: throughput (runs/s; all finished) | 2000 (1 s) " in "\n".join(rows)
    del result["peers"]
    assert report._multi_peers(result) == []
