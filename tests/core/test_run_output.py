"""What runs say, kept end to end on both backends: a scheduler runs the tasks, the store
keeps their output and results, ``get_run`` (the API's and the CLI's read) returns them."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
import sqlalchemy as sa

from scheduler_core.models import run_output, schedules, task_runs
from scheduler_core.retention import RetentionPolicy, run_cleanup
from scheduler_core.store import Store
from scheduler_core.testing import FakeClock, run_cycle
from tests.core import recorded
from tests.core.conftest import T0, tasks

PY = "python3"


def run_tasks(
    engine: sa.Engine, make_scheduler, clock: FakeClock, *mappings: dict, timeout: float = 10
) -> Store:
    """Sync ``mappings`` (every 1m), let a minute pass and run them all once."""
    store = Store(engine, instance_id="inst-a")
    store.sync_tasks(tasks(*({"every": "1m", **m} for m in mappings)), now=T0)
    scheduler = make_scheduler()
    clock.advance(60)
    assert run_cycle(scheduler, timeout=timeout) == len(mappings)
    return store


def only_run(store: Store, engine: sa.Engine, task: str) -> dict:
    with engine.connect() as conn:
        [run_id] = conn.execute(
            sa.select(task_runs.c.id).where(task_runs.c.task_name == task)
        ).scalars()
    return store.get_run(run_id)


def test_a_command_writing_200_kb_keeps_its_head_and_tail(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock
) -> None:
    """220,000 bytes of output: the first and last 32 KiB are kept, the rest counted."""
    script = "for i in range(20000): print(f'line {i:05d}')"
    store = run_tasks(
        db_engine, make_scheduler, clock, {"name": "big", "command": [PY, "-c", script]}
    )
    run = only_run(store, db_engine, "big")
    assert run["status"] == "success"
    assert run["output_bytes"] == 220_000
    assert run["output_dropped_bytes"] == 220_000 - 65_536
    output = run["output"]
    assert output.startswith("line 00000\nline 00001\n")
    assert output.endswith("line 19998\nline 19999\n")
    assert f"[... {220_000 - 65_536} bytes dropped ...]" in output
    assert len(output.encode()) < 65_536 + 100


def test_interleaved_stdout_and_stderr_stay_in_order(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock
) -> None:
    """A command alternating between stdout and stderr is kept in the order it wrote."""
    script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done"
    store = run_tasks(
        db_engine, make_scheduler, clock, {"name": "both", "command": ["sh", "-c", script]}
    )
    assert only_run(store, db_engine, "both")["output"] == "out1\nerr1\nout2\nerr2\nout3\nerr3\n"


def test_a_command_killed_at_its_timeout_keeps_what_it_printed(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock
) -> None:
    """Lines printed before the timeout killed the command are kept with its timeout."""
    script = "echo started; echo still going >&2; sleep 30"
    slow = {"name": "slow", "command": ["sh", "-c", script], "timeout": "1s", "timeout_grace": "1s"}
    store = run_tasks(db_engine, make_scheduler, clock, slow, timeout=20)
    run = only_run(store, db_engine, "slow")
    assert run["status"] == "timeout"
    assert run["output"] == "started\nstill going\n"


def test_each_callable_run_keeps_its_own_log_lines_and_result(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Eight callables logging at the same time, in eight worker threads: each run's output
    holds its own ten lines and none of the others'; its dict result is stored."""
    caplog.set_level(logging.INFO)  # pytest's root logger is at WARNING; the CLI's at INFO
    tags = [f"t{i}" for i in range(recorded.CHATTY_RUNS)]
    chatty = (
        {"name": tag, "callable": "tests.core.recorded:chatty", "args": [tag]} for tag in tags
    )
    store = run_tasks(db_engine, make_scheduler, clock, *chatty)
    for tag in tags:
        run = only_run(store, db_engine, tag)
        lines = run["output"].splitlines()
        assert [line.split(": ", 1)[1] for line in lines] == [
            f"<{tag}> line {i}" for i in range(10)
        ]
        assert run["result"] == {"tag": tag, "files_moved": 3, "bytes_moved": 1024.5,
                                 "note": "not a declared key"}  # fmt: skip
        assert run["result_note"] is None


def test_each_callable_run_keeps_its_own_prints_in_order(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Eight callables printing to stdout and stderr at the same time, in eight worker
    threads: each run's output holds its own lines and log line, in the order made, and
    none of the others'; nothing of it reaches the scheduler's own streams."""
    tags = [f"p{i}" for i in range(recorded.CHATTY_RUNS)]
    printing = (
        {"name": tag, "callable": "tests.core.recorded:printing", "args": [tag]} for tag in tags
    )
    store = run_tasks(db_engine, make_scheduler, clock, *printing)
    for tag in tags:
        lines = only_run(store, db_engine, tag)["output"].splitlines()
        assert lines[5].endswith(f" WARNING tests.printing.{tag}: <{tag}> logged")
        assert lines[:5] + lines[6:] == [f"<{tag}> line {i}" for i in range(10)]
    seen = capsys.readouterr()
    assert "line" not in seen.out + seen.err


def test_keep_output_applies_to_prints(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """A callable's prints follow keep_output as a command's output does: never (its
    prints then reach the scheduler's stdout, as uncaptured code's), failures."""
    ref = "tests.core.recorded:say_then_fail"
    store = run_tasks(
        db_engine, make_scheduler, clock,
        {"name": "quiet", "callable": ref, "args": ["said quietly"], "keep_output": "never"},
        {"name": "bad", "callable": ref, "args": ["said and failed"], "keep_output": "failures"},
        {"name": "ok", "callable": "tests.core.capture_jobs:print_log_print",
         "keep_output": "failures"},
    )  # fmt: skip
    assert only_run(store, db_engine, "quiet")["output"] is None
    assert only_run(store, db_engine, "ok")["output"] is None  # captured, and not kept
    bad = only_run(store, db_engine, "bad")
    assert (bad["status"], bad["output"]) == ("failure", "said and failed\n")
    seen = capsys.readouterr()
    assert (seen.out, "in pieces" in seen.err) == ("said quietly\n", False)


def test_a_nul_character_is_stored_as_a_replacement_character(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock
) -> None:
    """PostgreSQL's text cannot hold NUL: a run printing one is stored with U+FFFD (on
    both backends alike), and its outcome is written."""
    store = run_tasks(
        db_engine, make_scheduler, clock,
        {"name": "nul", "command": ["printf", "a\\000b\\n"]},
        {"name": "nul-failed", "command": ["sh", "-c", "printf 'c\\000d'; exit 3"]},
        {"name": "nul-raised", "callable": "tests.core.recorded:fail_with", "args": ["e\x00f"]},
    )  # fmt: skip
    run = only_run(store, db_engine, "nul")
    assert (run["status"], run["output"]) == ("success", "a\ufffdb\n")
    failed = only_run(store, db_engine, "nul-failed")
    assert failed["error_message"] == "command failed with exit code 3: c\ufffdd"
    raised = only_run(store, db_engine, "nul-raised")
    assert raised["error_message"] == "ValueError: e\ufffdf"
    assert "ValueError: e\ufffdf" in raised["error_traceback"]


def test_result_totals_survive_cleanup_and_a_restart(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock
) -> None:
    """The declared keys' sums live on the schedule row: history cleanup and a new scheduler
    leave them, and the next run adds to them; an undeclared key is never summed."""
    definition = {"name": "sync", "callable": "tests.core.recorded:moved", "args": [5],
                  "every": "1m", "result_metrics": ["files_moved", "bytes_moved"]}  # fmt: skip
    Store(db_engine, instance_id="inst-a").sync_tasks(tasks(definition), now=T0)
    assert totals(db_engine) == {"bytes_moved": 0, "files_moved": 0}
    first = make_scheduler("inst-a")
    for _ in range(2):
        clock.advance(60)
        assert run_cycle(first) == 1
    assert totals(db_engine) == {"bytes_moved": 1000.0, "files_moved": 10.0}
    first.request_stop()
    first.drain()
    run_cleanup(db_engine, policy=RetentionPolicy(days=1, max_runs_per_task=1),
                now=clock.now() + timedelta(days=2))  # fmt: skip
    with db_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(task_runs)).scalar_one() == 0
        assert conn.execute(sa.select(sa.func.count()).select_from(run_output)).scalar_one() == 0
    Store(db_engine, instance_id="inst-b").sync_tasks(tasks(definition), now=clock.now())
    second = make_scheduler("inst-b")
    clock.advance(60)
    assert run_cycle(second) == 1
    assert totals(db_engine) == {"bytes_moved": 1500.0, "files_moved": 15.0}


def totals(engine: sa.Engine) -> dict[str, float]:
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(schedules.c.result_totals).where(schedules.c.name == "sync")
        ).scalar_one()
    return dict(json.loads(stored))


def test_redaction_removes_a_planted_password(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock
) -> None:
    """Passwords in a database URL and in password= / token= forms, and a task's own
    pattern, never reach the stored output."""
    script = (
        "echo connecting to postgresql://app:s3cret-pass@db:5432/app; "
        "echo login password=hunter2 token=abc123xyz; echo customer id CUST-4711"
    )
    leaky = {"name": "leaky", "command": ["sh", "-c", script], "redact": ["CUST-\\d+"]}
    store = run_tasks(db_engine, make_scheduler, clock, leaky)
    output = only_run(store, db_engine, "leaky")["output"]
    for secret in ("s3cret-pass", "hunter2", "abc123xyz", "CUST-4711"):
        assert secret not in output
    assert "postgresql://app:" in output and "@db:5432/app" in output  # the rest stays


def test_keep_output_never_and_failures(
    db_engine: sa.Engine, make_scheduler, clock: FakeClock
) -> None:
    """keep_output: never keeps nothing; failures keeps a failed run's output only."""
    store = run_tasks(
        db_engine, make_scheduler, clock,
        {"name": "quiet", "command": ["echo", "hi"], "keep_output": "never"},
        {"name": "ok", "command": ["echo", "hi"], "keep_output": "failures"},
        {"name": "bad", "command": ["sh", "-c", "echo oops; exit 3"], "keep_output": "failures"},
    )  # fmt: skip
    assert only_run(store, db_engine, "quiet")["output"] is None
    assert only_run(store, db_engine, "ok")["output"] is None
    assert only_run(store, db_engine, "bad")["output"] == "oops\n"
