"""Capture of what a run leaves (issue 19), without a database: bounded output (a file's or
written piece by piece), a callable's log lines kept apart from those of runs in other
threads and asyncio tasks, its return value as bounded JSON, and the run's identity
(``current_run``, the command environment with the W3C trace context)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

import scheduler_core
from scheduler_core.runtime.capture import (
    CapturedOutput,
    OutputBuffer,
    capturing,
    install_log_capture,
    output_from_file,
)
from scheduler_core.runtime.results import result_json
from scheduler_core.runtime.run_context import (
    RunContext,
    current_run,
    run_environment,
    running_as,
)
from scheduler_core.runtime.runners import (
    ActionResult,
    RunHandle,
    run_async_callable,
    run_callable,
)
from scheduler_core.runtime.streams import RunStream
from scheduler_core.tasks import CallableAction
from tests.core import capture_jobs
from tests.core.conftest import T0, tasks

JOBS = "tests.core.capture_jobs"


def handle() -> RunHandle:
    definition = tasks({"name": "t", "callable": f"{JOBS}:chatter", "every": "1m"})[0]
    return RunHandle(
        run_id=1, task_name="t", definition=definition, deadline=None,
        scheduled_for=T0, attempt=1, started_at=T0,
    )  # fmt: skip


@pytest.fixture(autouse=True)
def jobs_logged_at_debug() -> Iterator[None]:
    """The test callables' loggers (``jobs.*``) make records from DEBUG up, as a
    configured application's would (pytest leaves the root logger at WARNING)."""
    logger = logging.getLogger("jobs")
    logger.setLevel(logging.DEBUG)
    yield
    logger.setLevel(logging.NOTSET)


@contextlib.contextmanager
def unconfigured_logging() -> Iterator[logging.Logger]:
    """Logging as a fresh interpreter has it (root at WARNING, no handlers), for the
    block; pytest's own handlers and level are put back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    root.setLevel(logging.WARNING)
    try:
        yield root
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


def tags_in(text: str) -> set[str]:
    return {part.split(">", 1)[0] for part in text.split("<")[1:]}


# ------------------------------------------------------------------ bounded output
def test_a_file_within_the_limit_is_kept_whole() -> None:
    """A file no longer than the limit comes back whole, nothing dropped."""
    data = "héllo\nwörld\n".encode()
    out = output_from_file(io.BytesIO(data), 64)
    assert out == CapturedOutput("héllo\nwörld\n", len(data), 0)


def test_a_long_file_keeps_its_head_and_tail_with_the_dropped_count() -> None:
    """Over the limit, the first limit//2 and last limit - limit//2 bytes are kept around a
    marker line naming how many bytes lie between them."""
    data = b"".join(b"line %05d\n" % i for i in range(20_000))
    out = output_from_file(io.BytesIO(data), 1001)
    assert out.total_bytes == len(data)
    assert out.dropped_bytes == len(data) - 1001
    marker = f"\n[... {len(data) - 1001} bytes dropped ...]\n"
    assert out.text == data[:500].decode() + marker + data[-501:].decode()


def test_a_character_cut_at_either_end_is_left_out_and_counted() -> None:
    """A multibyte character the limit cuts in two is dropped whole (and counted), not
    turned into replacement characters."""
    data = ("é" * 100).encode()  # 200 bytes, two per character
    out = output_from_file(io.BytesIO(data), 11)  # head 5 bytes, tail 6 bytes
    assert out.text == "éé" + "\n[... 190 bytes dropped ...]\n" + "ééé"
    assert out.dropped_bytes == 190
    assert "\ufffd" not in out.text


def test_a_negative_limit_is_refused() -> None:
    """A negative limit is a ValueError, not an empty capture."""
    with pytest.raises(ValueError, match="negative"):
        OutputBuffer(-1)


@settings(max_examples=200, deadline=None)
@given(
    pieces=st.lists(st.text(alphabet="ab\né€😀", max_size=40), max_size=30),
    limit=st.integers(min_value=0, max_value=120),
)
def test_a_buffer_keeps_what_the_same_bytes_in_a_file_would_keep(
    pieces: list[str], limit: int
) -> None:
    """Written piece by piece, a buffer keeps exactly the head, tail and dropped count a
    file holding the same bytes gives, whatever the pieces' sizes."""
    buffer = OutputBuffer(limit)
    for piece in pieces:
        buffer.write(piece)
    data = "".join(pieces).encode()
    assert buffer.value() == output_from_file(io.BytesIO(data), limit)


@pytest.mark.parametrize("limit", [4096, 1 << 20])
def test_threads_writing_to_one_buffer_lose_nothing_and_count_exactly(limit: int) -> None:
    """Eight threads writing to one buffer at once (a run's context shared with threads):
    every byte is counted; within the limit every line is there, whole; past it, head and
    tail are whole lines too (each write is one line) and fill the limit."""
    threads, lines = 8, 3000
    buffer = OutputBuffer(limit)

    def write(tag: int) -> None:
        for i in range(lines):
            buffer.write(f"<{tag}> {i:05d}\n")  # 10 bytes

    workers = [threading.Thread(target=write, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out = buffer.value()
    total = threads * lines * 10
    assert out.total_bytes == total
    if total <= limit:
        assert out.dropped_bytes == 0
        expected = sorted(f"<{t}> {i:05d}" for t in range(threads) for i in range(lines))
        assert sorted(out.text.splitlines()) == expected
    else:
        head, tail = out.text.split("\n[... ")[0], out.text.split(" ...]\n")[1]
        assert out.dropped_bytes == total - limit
        assert len(head) == limit // 2 and len(tail) == limit - limit // 2
        assert all(len(line) == 9 for line in head.split("\n")[:-1])
        assert all(len(line) == 9 for line in tail.split("\n")[1:-1])


def test_a_huge_write_keeps_only_the_tail_budget() -> None:
    """One write far over the limit leaves the head and the last bytes, not the write."""
    buffer = OutputBuffer(10)
    buffer.write("abc")
    buffer.write("x" * 100_000 + "END")
    out = buffer.value()
    assert out.text == "abcxx" + "\n[... 99996 bytes dropped ...]\n" + "xxEND"
    assert out.total_bytes == 100_006


# ------------------------------------------------------------------ log capture
def test_a_capture_gets_formatted_records_at_its_level_and_up() -> None:
    """Records of the capture's level and up are written formatted (time in UTC, level,
    logger, message); records below it are not."""
    log = logging.getLogger("jobs.levels")
    with capturing(logging.INFO) as buffer:
        log.debug("hidden")
        log.info("copied %d files", 3)
        log.warning("disk at %d%%", 91)
    lines = buffer.value().text.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("Z INFO jobs.levels: copied 3 files")
    assert lines[1].endswith("Z WARNING jobs.levels: disk at 91%")
    stamp = datetime.strptime(lines[0].split(" ")[0], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert abs(stamp.replace(tzinfo=UTC) - datetime.now(UTC)) < timedelta(minutes=1)


def test_records_outside_any_capture_go_to_no_capture() -> None:
    """A record made after a capture ended, or in a thread that never started one, is
    not written to any buffer."""
    log = logging.getLogger("jobs.outside")
    with capturing(logging.WARNING) as buffer:
        thread = threading.Thread(target=log.warning, args=("<other thread>",))
        thread.start()
        thread.join()
    log.warning("<after>")
    assert buffer.value().text == ""


def test_install_adds_no_handler_so_basic_config_still_works() -> None:
    """Installing capture adds no handler to the root logger, so a later
    ``logging.basicConfig()`` still configures logging, and is idempotent."""
    with unconfigured_logging() as root:
        first = install_log_capture()
        assert install_log_capture() is first
        assert root.handlers == []
        stream = io.StringIO()
        logging.basicConfig(stream=stream)
        logging.getLogger("jobs.app").warning("configured")
        assert "configured" in stream.getvalue()


def test_a_callable_logging_info_is_captured_with_default_logging_config() -> None:
    """With logging unconfigured (root at WARNING, no handlers), ``getLogger("myjob")
    .info("x")`` in a captured callable is in its output; the root level stays lowered (no
    handler shows more for it: the last-resort handler shows warnings and up only)."""
    with unconfigured_logging() as root:
        result = run_callable(CallableAction(ref=f"{JOBS}:log_to_myjob"), handle(), capture=True)
        assert root.level == logging.INFO
    assert result.status == "success"
    assert result.result == "done"
    assert result.output is not None
    assert result.output.text.endswith(" INFO myjob: x\n")


def test_configured_logging_is_left_as_it_is() -> None:
    """When logging is configured (a root handler at WARNING), a capture changes no level:
    the handler still sees no INFO record, and the capture gets what logging lets through."""
    seen: list[logging.LogRecord] = []

    class Recorder(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    handler = Recorder(logging.WARNING)
    with unconfigured_logging() as root:
        root.addHandler(handler)
        with capturing(logging.INFO) as buffer:
            assert root.level == logging.WARNING
            logging.getLogger("myjob").info("not made")
            logging.getLogger("myjob").warning("made")
    assert [r.getMessage() for r in seen] == ["made"]
    assert buffer.value().text.endswith(" WARNING myjob: made\n")


def test_a_record_that_cannot_be_formatted_does_not_reach_the_task() -> None:
    """A record whose arguments do not fit its format leaves a note in the output; the
    callable goes on and succeeds."""
    with unconfigured_logging():  # pytest's own handler raises on a bad record
        result = run_callable(CallableAction(ref=f"{JOBS}:log_badly"), handle(), capture=True)
    assert result.status == "success"
    assert result.result == "went on"
    assert result.output is not None
    text = result.output.text
    assert "[schedctl: a log record could not be captured: TypeError(" in text
    assert text.endswith(" INFO jobs.bad: after the bad record\n")


def test_a_logged_exception_keeps_its_traceback() -> None:
    """``log.exception`` writes the message and the traceback."""
    result = run_callable(CallableAction(ref=f"{JOBS}:log_exception"), handle(), capture=True)
    assert result.output is not None
    text = result.output.text
    assert " ERROR jobs.exc: copy failed\nTraceback (most recent call last):" in text
    assert "ValueError: the disk is full" in text


def test_without_capture_a_callable_keeps_no_output_and_no_result() -> None:
    """The defaults keep today's behaviour: no output, no result."""
    result = run_callable(CallableAction(ref=f"{JOBS}:log_to_myjob"), handle())
    assert (result.status, result.output, result.result) == ("success", None, None)


def eight_thread_runs(job: str, outsider: Callable[[], None]) -> dict[str, ActionResult]:
    """Eight runs of ``job`` (``chatter``, ``printer``) in eight threads at once, captured;
    ``outsider`` is called outside any run while all of them are in flight."""
    runs = 8
    barrier = threading.Barrier(runs + 1, timeout=10)
    results: dict[str, ActionResult] = {}

    def run(tag: str) -> None:
        action = CallableAction(ref=f"{JOBS}:{job}", args=(tag, barrier))
        results[tag] = run_callable(action, handle(), capture=True)

    threads = [threading.Thread(target=run, args=(f"run{i}",)) for i in range(runs)]
    for thread in threads:
        thread.start()
    barrier.wait()  # every run is inside its capture now
    outsider()
    barrier.wait()
    for thread in threads:
        thread.join(10)
    return results


def test_runs_in_eight_threads_each_capture_only_their_own_lines() -> None:
    """Eight callables logging at the same time in eight threads: each output holds all
    of its own lines and none of another run's (nor of a thread outside any run)."""
    outsider = logging.getLogger("jobs.outsider")
    results = eight_thread_runs("chatter", lambda: outsider.warning("<outsider> not a run"))
    assert sorted(results) == [f"run{i}" for i in range(8)]
    for tag, result in results.items():
        assert result.output is not None
        output = result.output.text
        assert tags_in(output) == {tag}, output
        expected = [f"<{tag}> line {i}" for i in range(capture_jobs.LINES)]
        assert [line.split(": ", 1)[1] for line in output.splitlines()] == expected
        assert result.result == {"tag": tag, "lines": capture_jobs.LINES}


def eight_async_runs(printed: bool) -> list[ActionResult]:
    """Eight ``async_chatter`` runs interleaving on one event loop, captured."""
    runs = 8

    async def main() -> list[ActionResult]:
        started, count = asyncio.Event(), [0]
        return await asyncio.gather(
            *(
                run_async_callable(
                    CallableAction(
                        ref=f"{JOBS}:async_chatter",
                        args=(f"run{i}", started, count, runs, printed),
                    ),
                    handle(),
                    None,
                    capture=True,
                )
                for i in range(runs)
            )
        )

    return asyncio.run(main())


def test_runs_as_eight_asyncio_tasks_on_one_loop_each_capture_only_their_own_lines() -> None:
    """Eight async callables interleaving on one event loop, half of each one's lines
    logged from a task it started: each output holds exactly its own lines."""
    for i, result in enumerate(eight_async_runs(printed=False)):
        tag = f"run{i}"
        assert result.status == "success"
        assert result.result == tag
        assert result.output is not None
        output = result.output.text
        assert tags_in(output) == {tag}, output
        assert len(output.splitlines()) == capture_jobs.LINES


def test_an_async_run_that_times_out_keeps_what_it_logged() -> None:
    """An async callable stopped at its timeout still has the lines it logged before."""
    action = CallableAction(ref=f"{JOBS}:async_log_until_cancelled", args=("slow",))
    result = asyncio.run(run_async_callable(action, handle(), 0.1, capture=True))
    assert result.status == "timeout"
    assert result.output is not None
    assert result.output.text.endswith(" WARNING jobs.slow: <slow> before the wait\n")


# ------------------------------------------------------------------ prints
def printed_lines(result: ActionResult) -> list[str]:
    assert result.output is not None
    return result.output.text.splitlines()


def test_runs_in_eight_threads_each_capture_only_their_own_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Eight callables printing (stdout and stderr) at the same time in eight threads:
    each output holds its own lines in order and none of another run's; a print outside
    any run, made meanwhile, reaches the real stream and no run."""

    def outsider() -> None:
        print("<outsider> not a run")
        print("<outsider> on stderr", file=sys.stderr)

    results = eight_thread_runs("printer", outsider)
    assert sorted(results) == [f"run{i}" for i in range(8)]
    for tag, result in results.items():
        expected = [f"<{tag}> line {i}" for i in range(capture_jobs.LINES)]
        assert printed_lines(result) == expected
        assert result.result == {"tag": tag, "lines": capture_jobs.LINES}
    seen = capsys.readouterr()
    assert (seen.out, seen.err) == ("<outsider> not a run\n", "<outsider> on stderr\n")


def test_runs_as_eight_asyncio_tasks_on_one_loop_each_capture_only_their_own_prints(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Eight async callables printing in turn on one event loop, half of each one's lines
    (to stderr) from a task it started: each output holds exactly its own lines, in order."""
    for i, result in enumerate(eight_async_runs(printed=True)):
        tag = f"run{i}"
        assert result.result == tag
        assert printed_lines(result) == [f"<{tag}> line {n}" for n in range(capture_jobs.LINES)]
    assert capsys.readouterr() == ("", "")


def test_prints_and_log_lines_keep_the_order_they_were_made_in(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """stdout, a log record, stderr and ``writelines`` in one output, in order, unmarked;
    nothing of it reaches the real streams."""
    result = run_callable(CallableAction(ref=f"{JOBS}:print_log_print"), handle(), capture=True)
    lines = printed_lines(result)
    assert lines[0] == "first, printed"
    assert lines[1].endswith(" WARNING jobs.order: second, logged")
    assert lines[2:] == ["third, on stderr", "fourth, in pieces"]
    assert capsys.readouterr() == ("", "")


def test_without_capture_prints_reach_the_real_stream(capsys: pytest.CaptureFixture[str]) -> None:
    """A run that captures nothing (``keep_output: never``) prints as any code does."""
    result = run_callable(CallableAction(ref=f"{JOBS}:print_log_print"), handle())
    assert result.output is None
    seen = capsys.readouterr()
    assert seen.out == "first, printed\n"
    assert seen.err.endswith("third, on stderr\nfourth, in pieces\n")


def test_a_stream_replaced_after_install_is_wrapped_again_and_the_old_one_still_works(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An application (or ``capsys``) replacing ``sys.stdout`` after the proxy was
    installed: the next run wraps the new stream, whose writes outside runs reach it; the
    proxy put back afterwards still leads to the stream it was made for."""
    with capturing():
        pass
    installed = sys.stdout
    assert isinstance(installed, RunStream)
    raw = io.BytesIO()
    mine = io.TextIOWrapper(raw, encoding="latin-1", write_through=True)
    monkeypatch.setattr(sys, "stdout", mine)
    with capturing() as capture:
        print("in the run")
        assert isinstance(sys.stdout, RunStream) and sys.stdout.target is mine
        assert sys.stdout.encoding == "latin-1"  # the stream's other attributes are its own
    print("outside, é")
    assert capture.value().text == "in the run\n"
    assert raw.getvalue() == "outside, é\n".encode("latin-1")
    monkeypatch.undo()
    assert sys.stdout is installed
    behind = io.StringIO()
    monkeypatch.setattr(installed, "target", behind)
    print("after the undo")
    assert behind.getvalue() == "after the undo\n"


def test_a_log_handler_on_stderr_writes_to_the_real_stream_not_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ``StreamHandler`` made on the proxied ``sys.stderr``: a record logged in a run is
    in the run's output once (from the record), and the handler's line reaches stderr as
    configured, not the run."""
    with capturing():
        pass
    handler = logging.StreamHandler(sys.stderr)  # the proxy: made after the install
    assert isinstance(handler.stream, RunStream)
    logger = logging.getLogger("jobs.handled")
    logger.addHandler(handler)
    try:
        with capturing() as capture:
            logger.warning("once")
            print("printed")
    finally:
        logger.removeHandler(handler)
    lines = capture.value().text.splitlines()
    assert len(lines) == 2 and lines[0].endswith(" WARNING jobs.handled: once")
    assert lines[1] == "printed"
    assert capsys.readouterr().err == "once\n"


def test_a_run_printing_much_from_several_frames_keeps_it_all_in_order() -> None:
    """Writes past the pending pieces' limit (``SETTLE_WRITES``), over ``SETTLE_CHARS``,
    empty, and from alternating frames (a helper, the run's own frame, ``writelines``):
    each returns its length, and the output is exactly what was written, in order."""
    long = "L" * 10_000

    def helper(i: int) -> int:
        return sys.stdout.write(f"helper {i}\n")

    written: list[str] = []
    with capturing(limit=1 << 22) as capture:
        for i in range(700):
            assert helper(i) == len(f"helper {i}\n")
            assert sys.stdout.write("") == 0
            print(f"own {i}", file=sys.stderr if i % 3 else sys.stdout)
            written += [f"helper {i}\n", f"own {i}\n"]
            if i % 100 == 7:
                assert sys.stdout.write(long) == len(long)
                sys.stderr.writelines(["a\n", "b\n"])
                written += [long, "a\n", "b\n"]
    out = capture.value()
    assert out.text == "".join(written)
    assert (out.total_bytes, out.dropped_bytes) == (len(out.text), 0)


def test_a_run_writing_bytes_to_sys_stdout_gets_a_type_error() -> None:
    """As from a real text stream."""
    with capturing() as capture, pytest.raises(TypeError, match="must be str, not bytes"):
        sys.stdout.write(b"raw")  # type: ignore[arg-type]
    assert capture.value().text == ""


def test_a_lone_surrogate_is_kept_as_utf8_can_hold_it() -> None:
    """Text UTF-8 cannot encode (a lone surrogate) becomes ``?`` and is counted so."""
    buffer = OutputBuffer(100)
    buffer.write("a\ud800b")
    assert buffer.value() == CapturedOutput("a?b", 3, 0)


# ------------------------------------------------------------------ result
def test_a_dict_result_is_its_json() -> None:
    """A JSON-able dict is stored as its JSON, with no note."""
    text, note = result_json({"files_moved": 3, "bytes_moved": 1.5e9, "name": "ß"})
    assert note is None
    assert text is not None
    assert json.loads(text) == {"files_moved": 3, "bytes_moved": 1.5e9, "name": "ß"}


def test_no_result_stores_nothing() -> None:
    """A callable that returns None has no result and no note."""
    assert result_json(None) == (None, None)


def test_a_tuple_becomes_a_list() -> None:
    """Tuples are stored as JSON arrays."""
    assert result_json((1, "a", (2, 3))) == ('[1, "a", [2, 3]]', None)


def test_a_value_json_cannot_hold_is_stored_as_its_repr_with_a_note() -> None:
    """An object JSON cannot hold is stored as a JSON string of its repr, and the note
    says so."""
    text, note = result_json({1, 2})
    assert text is not None
    assert json.loads(text) == "{1, 2}"
    assert note is not None
    assert note.startswith("not JSON (Object of type set is not JSON serializable)")
    assert "repr" in note


def test_nan_is_not_json() -> None:
    """NaN (which strict JSON has no value for) is stored as its repr, with a note."""
    text, note = result_json({"ratio": math.nan})
    assert text is not None and json.loads(text) == "{'ratio': nan}"
    assert note is not None and "not JSON" in note


def test_a_long_repr_is_truncated_within_the_limit() -> None:
    """A repr longer than the limit is cut so the stored JSON string fits, and the note
    says how much was kept."""
    value = {object(): "x" * 10_000}
    text, note = result_json(value, limit=1000)
    assert text is not None
    assert len(text.encode()) <= 1000
    kept = json.loads(text)
    assert repr(value).startswith(kept)
    assert note is not None and f"truncated to {len(kept)} of {len(repr(value))}" in note


def test_a_too_large_result_keeps_the_start_of_its_json_as_a_string() -> None:
    """JSON over the limit is stored as a JSON string of its start, fitting the limit,
    with a note giving its real size."""
    value = {"rows": ["é\n" * 50] * 100}
    full = json.dumps(value, ensure_ascii=False)
    text, note = result_json(value, limit=500)
    assert text is not None
    assert len(text.encode()) <= 500
    assert full.startswith(json.loads(text))
    assert note is not None
    assert note.startswith(f"result is {len(full.encode())} bytes of JSON, over the 500-byte")


@settings(max_examples=100, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.floats() | st.text() | st.integers(),
        lambda children: st.lists(children) | st.dictionaries(st.text(), children),
        max_leaves=20,
    ),
    limit=st.integers(min_value=2, max_value=300),
)
def test_what_is_stored_is_always_valid_json_within_the_limit(value: object, limit: int) -> None:
    """Whatever the value (NaN and infinities included) and limit, the stored text parses
    as JSON and fits the limit."""
    text, _note = result_json(value, limit)
    if value is None:
        assert text is None
        return
    assert text is not None
    json.loads(text)
    assert len(text.encode()) <= limit


# ------------------------------------------------------------------ run identity
CTX = RunContext(
    run_id=42, task="nightly-backup", scheduled_for=datetime(2026, 3, 1, 13, 30, tzinfo=timezone(timedelta(hours=1))),
    attempt=2, trigger="retry",
)  # fmt: skip


def test_current_run_is_the_run_set_for_this_context_only() -> None:
    """``current_run()`` is the context set by ``running_as`` inside it (also in asyncio
    tasks started there), and None outside and in other threads."""
    assert scheduler_core.current_run is current_run
    assert current_run() is None
    seen: list[object] = []
    with running_as(CTX):
        assert current_run() is CTX
        thread = threading.Thread(target=lambda: seen.append(current_run()))
        thread.start()
        thread.join()

        async def child() -> RunContext | None:
            return current_run()

        async def main() -> RunContext | None:
            return await asyncio.create_task(child())

        # asyncio.run copies this context into its main task.
        assert asyncio.run(main()) is CTX
    assert current_run() is None
    assert seen == [None]


def test_the_run_environment_names_the_run() -> None:
    """A command's environment gets the run id, task, tick (ISO 8601, UTC) and attempt,
    and no trace context when no span is current."""
    assert run_environment(CTX) == {
        "SCHEDCTL_RUN_ID": "42",
        "SCHEDCTL_TASK": "nightly-backup",
        "SCHEDCTL_SCHEDULED_FOR": "2026-03-01T12:30:00+00:00",
        "SCHEDCTL_ATTEMPT": "2",
    }


def test_the_run_environment_carries_the_current_span_as_traceparent() -> None:
    """Inside a span of an SDK tracer provider, TRACEPARENT is the W3C traceparent of that
    span (its trace id and span id, sampled)."""
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("schedctl.run") as span:
        env = run_environment(CTX)
    ctx = span.get_span_context()
    assert ctx.trace_flags.sampled
    flags = f"{int(ctx.trace_flags):02x}"  # sampled, and "random trace id" (03) lately
    assert env["TRACEPARENT"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags}"
    assert "TRACESTATE" not in env  # the span has none


def test_the_run_environment_carries_the_tracestate() -> None:
    """A current span context with a trace state gives TRACESTATE too."""
    context = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331,
        is_remote=False, trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
        trace_state=trace.TraceState([("vendor", "v1")]),
    )  # fmt: skip
    with trace.use_span(trace.NonRecordingSpan(context)):
        env = run_environment(CTX)
    assert env["TRACEPARENT"] == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert env["TRACESTATE"] == "vendor=v1"
