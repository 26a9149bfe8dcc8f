"""A command keeps what it wrote (issue 19), whatever its outcome: stdout and stderr in the
order written, the head and tail within the limit with the count dropped, what it wrote
before a timeout or a cancel stopped it; a failure's message is as before; the run's
variables (``extra_env``, e.g. ``run_environment``) reach it."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime

from opentelemetry.sdk.trace import TracerProvider

from scheduler_core.runtime.run_context import RunContext, run_environment
from scheduler_core.runtime.runners import RunHandle, run_command
from scheduler_core.tasks import CommandAction
from tests.core.conftest import T0, tasks


def handle() -> RunHandle:
    definition = tasks({"name": "t", "command": ["true"], "every": "1m"})[0]
    return RunHandle(
        run_id=1, task_name="t", definition=definition, deadline=None,
        scheduled_for=T0, attempt=1, started_at=T0,
    )  # fmt: skip


def sh(script: str, **env: str) -> CommandAction:
    return CommandAction(argv=("sh", "-c", script), env=env)


def test_a_command_writing_200_kb_keeps_head_and_tail_with_the_dropped_count() -> None:
    """200 KB of output keep their first and last 32 KiB around the count of the bytes
    between them; the total is the whole output's size."""
    line = "line %06d of the backup log\n"
    expected = "".join(line % i for i in range(200_000 // len(line % 0) + 1)).encode()
    script = f"import sys\nfor i in range({200_000 // len(line % 0) + 1}): sys.stdout.write({line!r} % i)"
    result = run_command(
        CommandAction(argv=(sys.executable, "-c", script)), handle(), timeout=30, grace=1
    )
    assert result.status == "success"
    out = result.output
    assert out is not None
    assert out.total_bytes == len(expected) >= 200_000
    assert out.dropped_bytes == len(expected) - 65536
    marker = f"\n[... {len(expected) - 65536} bytes dropped ...]\n"
    assert out.text == expected[:32768].decode() + marker + expected[-32768:].decode()


def test_a_smaller_limit_is_kept() -> None:
    """``output_limit`` bounds what is kept."""
    result = run_command(sh("seq 1 1000"), handle(), timeout=10, grace=1, output_limit=10)
    assert result.output is not None
    assert result.output.text.startswith("1\n2\n3\n[... ")
    assert result.output.text.endswith(" bytes dropped ...]\n1000\n")


def test_interleaved_stdout_and_stderr_stay_in_order() -> None:
    """Lines written alternately to stdout and stderr come back in the order written."""
    script = "for i in 1 2 3 4 5; do echo out$i; echo err$i >&2; done"
    result = run_command(sh(script), handle(), timeout=10, grace=1)
    assert result.status == "success"
    assert result.output is not None
    expected = "".join(f"out{i}\nerr{i}\n" for i in range(1, 6))
    assert result.output.text == expected
    assert (result.output.total_bytes, result.output.dropped_bytes) == (len(expected), 0)


def test_a_command_killed_at_its_timeout_keeps_its_earlier_lines() -> None:
    """A command stopped at its timeout still has what it printed before (both streams)."""
    script = "echo started; echo 'warming up' >&2; sleep 30; echo never"
    result = run_command(sh(script), handle(), timeout=0.5, grace=1)
    assert result.status == "timeout"
    assert result.output is not None
    assert result.output.text == "started\nwarming up\n"


def test_a_cancelled_command_keeps_its_earlier_lines() -> None:
    """A command cancelled while it runs still has what it printed before."""
    run = handle()
    cancel = threading.Timer(0.5, lambda: setattr(run, "cancel_requested", True))
    cancel.start()
    try:
        result = run_command(sh("echo working; sleep 30"), run, timeout=None, grace=1)
    finally:
        cancel.cancel()
    assert result.status == "cancelled"
    assert result.output is not None
    assert result.output.text == "working\n"


def test_a_failure_keeps_its_message_and_its_output() -> None:
    """A failed command's message ends with its output's tail, as before, and the output
    is kept as well."""
    result = run_command(sh("echo 'disk full' >&2; exit 3"), handle(), timeout=10, grace=1)
    assert result.status == "failure"
    assert result.error_message == "command failed with exit code 3: disk full"
    assert result.output is not None
    assert result.output.text == "disk full\n"


def test_a_failure_message_keeps_the_last_4000_bytes_whatever_the_limit() -> None:
    """The failure message's tail is still the output's last 4,000 bytes, even with a
    smaller output limit."""
    script = "i=0; while [ $i -lt 1000 ]; do echo line$i; i=$((i+1)); done; exit 1"
    result = run_command(sh(script), handle(), timeout=10, grace=1, output_limit=100)
    assert result.error_message is not None
    tail = result.error_message.removeprefix("command failed with exit code 1: ")
    assert tail.endswith("line999")
    assert 3990 <= len(tail) <= 4000
    assert result.output is not None and len(result.output.text.encode()) < 200


def test_a_silent_command_keeps_an_empty_output() -> None:
    """A command that prints nothing has an empty output (not None)."""
    result = run_command(sh("true"), handle(), timeout=10, grace=1)
    assert result.output is not None
    assert (result.output.text, result.output.total_bytes) == ("", 0)


def test_a_command_that_cannot_start_has_no_output() -> None:
    """A command that never started has no output."""
    action = CommandAction(argv=("/nonexistent/schedctl-test",))
    result = run_command(action, handle(), timeout=10, grace=1)
    assert result.status == "failure"
    assert result.output is None


def test_the_run_variables_reach_the_command_and_win_over_its_env() -> None:
    """``extra_env`` is in the command's environment, over a configured variable of the
    same name, and the run's span arrives as TRACEPARENT."""
    ctx = RunContext(
        run_id=7, task="sync", scheduled_for=datetime(2026, 3, 1, 12, 0, tzinfo=UTC),
        attempt=1, trigger="schedule",
    )  # fmt: skip
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("schedctl.run sync") as span:
        extra = run_environment(ctx)
    script = 'echo "$SCHEDCTL_RUN_ID $SCHEDCTL_TASK $SCHEDCTL_SCHEDULED_FOR $SCHEDCTL_ATTEMPT $TRACEPARENT"'
    action = sh(script, SCHEDCTL_TASK="configured")
    result = run_command(action, handle(), timeout=10, grace=1, extra_env=extra)
    assert result.output is not None
    run_id, task, scheduled_for, attempt, traceparent = result.output.text.split()
    assert (run_id, task, scheduled_for, attempt) == ("7", "sync", "2026-03-01T12:00:00+00:00", "1")
    assert traceparent.split("-")[1] == format(span.get_span_context().trace_id, "032x")
