"""bench.ab_steady: the summary is the mean of after minus before per figure both sides
report, and a tree that is not a checkout of this repository is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import ab_steady
from bench.common import REPO


def test_the_summary_is_the_mean_difference_of_each_figure_both_sides_report() -> None:
    pairs = [
        {
            "before": {"scheduler_cpu": 27.0, "cpu_schedctl-starts": 5.0, "runs": 100},
            "after": {"scheduler_cpu": 25.0, "runs": 100},
        },
        {
            "before": {"scheduler_cpu": 29.0, "cpu_schedctl-starts": 6.0, "runs": 100},
            "after": {"scheduler_cpu": 26.0, "runs": 101},
        },
    ]
    assert ab_steady._differences(pairs) == {"runs": 0.5, "scheduler_cpu": -2.5}


def test_figures_carry_the_cpu_of_each_thread_role() -> None:
    result = {
        "scheduler_cpu_percent_of_one_core": 24.0,
        "postgres_cpu_percent_of_one_core": 22.0,
        "start_delay_row": {"p99_ms": 8.5, "count": 28000},
        "scheduler_cpu_percent_by_thread": {"loop": 13.0, "schedctl-run": 11.0},
    }
    assert ab_steady._figures(result) == {
        "scheduler_cpu": 24.0,
        "postgres_cpu": 22.0,
        "p99_start_delay_ms": 8.5,
        "runs": 28000,
        "cpu_loop": 13.0,
        "cpu_schedctl-run": 11.0,
    }


def test_a_tree_without_the_benchmark_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        ab_steady.main([str(tmp_path), str(REPO)])
    assert stop.value.code == 2
    assert f"before tree '{tmp_path}' has no bench/profile_steady.py" in capsys.readouterr().err
