"""What a run says, bounded: its output (a command's file, a callable's prints and log
lines) as head + tail with the count of bytes dropped between them. Its return value as
JSON is ``runtime.results``.

- ``output_from_file``: a command's output file, read from disk at both ends only.
- ``OutputBuffer``: the same bound for text written piece by piece (prints, log lines).
- ``capturing()`` / ``start_capture``: while active, log records made in this thread or
  asyncio task (and the asyncio tasks it starts) are written, formatted, to its buffer,
  and so is what it writes to ``sys.stdout`` / ``sys.stderr`` (``runtime.streams``), in
  the order made; concurrent runs in other threads or tasks each have their own. See
  ``start_capture`` for the logging levels.

The run's identity (``RunContext``, ``current_run``, ``running_as``, ``run_environment``)
lives in ``runtime.run_context``; it is re-exported here.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import copy
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from scheduler_core.runtime.run_context import (
    RunContext,
    current_run,
    run_environment,
    running_as,
)
from scheduler_core.runtime.streams import (
    SETTLE_CHARS,
    SETTLE_WRITES,
    RunStream,
    ensure_stream_capture,
)

CaptureToken = contextvars.Token["LogCapture | None"]

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "LOG_FORMAT",
    "CaptureToken",
    "CapturedOutput",
    "LogCapture",
    "OutputBuffer",
    "RunContext",
    "RunLogCapture",
    "capturing",
    "check_output_limit",
    "current_run",
    "end_capture",
    "install_log_capture",
    "output_from_file",
    "run_environment",
    "running_as",
    "start_capture",
]

#: Bytes of output (and of a result's JSON) a run keeps by default: half head, half tail.
DEFAULT_OUTPUT_LIMIT = 65536
#: How a captured log record reads (``asctime`` in UTC: ``2026-03-01T12:00:00.123Z``).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class CapturedOutput:
    """Output kept within a limit: all of it, or its head, a marker line
    ``\\n[... N bytes dropped ...]\\n`` and its tail. ``total_bytes`` is what was written
    (UTF-8), ``dropped_bytes`` what ``text`` leaves out."""

    text: str
    total_bytes: int
    dropped_bytes: int


def check_output_limit(limit: int) -> None:
    """Refuse a negative output limit, naming it."""
    if limit < 0:
        raise ValueError(f"an output limit cannot be negative, got {limit!r}")


def _whole_head(data: bytes) -> bytes:
    """``data`` without an incomplete UTF-8 character cut at its end."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 == 0x80:  # a continuation byte: look further back for the lead
            continue
        needed = 2 if byte >= 0xC0 else 1
        needed = 3 if byte >= 0xE0 else needed
        needed = 4 if byte >= 0xF0 else needed
        return data[:-back] if needed > back else data
    return data


def _whole_tail(data: bytes) -> bytes:
    """``data`` without the rest of a UTF-8 character cut at its start."""
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return data[skip:]


def _captured(head: bytes, tail: bytes, total: int) -> CapturedOutput:
    """Head and tail of ``total`` bytes as text (both ends, when bytes lie between them)."""
    if len(head) + len(tail) >= total:  # nothing between them: one piece
        return CapturedOutput((head + tail).decode("utf-8", "replace"), total, 0)
    head, tail = _whole_head(head), _whole_tail(tail)
    dropped = total - len(head) - len(tail)
    text = (
        head.decode("utf-8", "replace")
        + f"\n[... {dropped} bytes dropped ...]\n"
        + tail.decode("utf-8", "replace")
    )
    return CapturedOutput(text, total, dropped)


def output_from_file(f: BinaryIO, limit: int) -> CapturedOutput:
    """The file's first ``limit // 2`` and last ``limit - limit // 2`` bytes (all of it if
    it is no longer than ``limit``), read from disk, decoded as UTF-8 (invalid bytes
    replaced; a character cut at either end is left out and counted as dropped)."""
    check_output_limit(limit)
    size = f.seek(0, os.SEEK_END)
    if size <= limit:
        f.seek(0)
        data = f.read(size)
        return _captured(data, b"", len(data))
    head_size = limit // 2
    tail_size = limit - head_size
    f.seek(0)
    head = f.read(head_size)
    f.seek(size - tail_size)
    tail = f.read(tail_size)
    return _captured(head, tail, size)


class _HeadTail:
    """Bytes kept within ``limit``: the first ``limit // 2``, and the last
    ``limit - limit // 2`` in a deque of chunks trimmed at the front (each write costs
    O(its length), whatever was written before); ``total`` counts every byte added."""

    __slots__ = ("head", "head_room", "tail", "tail_budget", "tail_size", "total")

    def __init__(self, limit: int) -> None:
        self.head = bytearray()
        self.head_room = limit // 2
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_budget = limit - limit // 2
        self.tail_size = 0
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        if self.head_room:
            taken = data[: self.head_room]
            self.head += taken
            self.head_room -= len(taken)
            data = data[len(taken) :]
            if not data:
                return
        budget = self.tail_budget
        if len(data) >= budget:  # it replaces the whole tail
            self.tail.clear()
            data = data[len(data) - budget :]
            self.tail_size = 0
            if not data:
                return
        self.tail.append(data)
        self.tail_size += len(data)
        excess = self.tail_size - budget
        while excess > 0:
            first = self.tail[0]
            if len(first) <= excess:
                self.tail.popleft()
                cut = len(first)
            else:
                self.tail[0] = first[excess:]
                cut = excess
            self.tail_size -= cut
            excess -= cut


def _utf8(text: str) -> tuple[str, int]:
    """``text`` as UTF-8 can hold it (a lone surrogate becomes ``?``) and its size there."""
    if text.isascii():
        return text, len(text)
    try:
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError:
        data = text.encode("utf-8", "replace")
        return data.decode("utf-8"), len(data)


#: Taken to size and move what was written (``OutputBuffer.settle``): rare and short, so
#: one lock for all buffers costs no run a lock of its own.
_LOCK = threading.Lock()


class OutputBuffer:
    """Text written piece by piece, kept within ``limit`` UTF-8 bytes: the first
    ``limit // 2`` bytes and the last ``limit - limit // 2``, with the count of those
    dropped between them (as ``output_from_file`` keeps a file). Thread-safe.

    A write appends the text to ``pending`` (``list.append`` is atomic: no lock), the whole
    cost of a write in the common case; ``runtime.streams`` appends a print there itself,
    without a call. Every ``SETTLE_WRITES`` writes, at a write over ``SETTLE_CHARS``
    characters and for the value, the pending pieces are settled under a lock: joined,
    sized, and kept as text while the whole is within ``limit`` (most runs say far less),
    else as head and tail bytes (``_HeadTail``). Settling takes pieces from the front of
    ``pending`` and appends only ever go to its end, so none is lost."""

    __slots__ = ("_kept", "_limit", "_spilled", "_total", "pending")

    def __init__(self, limit: int) -> None:
        if limit < 0:
            check_output_limit(limit)
        self._limit = limit
        #: Written, not settled yet.
        self.pending: list[str] = []
        self._kept: list[str] | None = None  # settled text, while the whole fits the limit
        self._total = 0  # settled bytes, UTF-8
        self._spilled: _HeadTail | None = None

    def write(self, text: str) -> None:
        pending = self.pending
        pending.append(text)
        if len(text) > SETTLE_CHARS or len(pending) >= SETTLE_WRITES:
            self.settle()

    def settle(self) -> None:
        """Size the pending pieces and keep them (as text, or as head and tail)."""
        if self.pending:
            with _LOCK:
                self._settle()

    def _settle(self) -> None:
        """``settle``, under ``_LOCK``."""
        pending = self.pending
        count = len(pending)
        if not count:
            return
        chunk = "".join(pending[:count])
        del pending[:count]  # what was appended since stays, at the front now
        text, size = _utf8(chunk)
        self._total += size
        spilled = self._spilled
        if spilled is None:
            kept = self._kept
            if kept is None:
                kept = self._kept = []
            kept.append(text)
            if self._total <= self._limit:
                return
            spilled = self._spilled = _HeadTail(self._limit)
            self._kept = None
            spilled.add("".join(kept).encode("utf-8"))
        else:
            spilled.add(text.encode("utf-8"))

    def value(self) -> CapturedOutput:
        """What was written so far, head and tail (see ``CapturedOutput``)."""
        if not self.pending and not self._total:
            return _NOTHING  # nothing written (or only ""): the common case, without the lock
        with _LOCK:  # settled and read at once: one lock a run
            self._settle()
            spilled, total = self._spilled, self._total
            if spilled is None:
                kept = self._kept
                return CapturedOutput("".join(kept), total, 0) if kept and total else _NOTHING
            head, tail = bytes(spilled.head), b"".join(spilled.tail)
        return _captured(head, tail, total)


_NOTHING = CapturedOutput("", 0, 0)


# ---------------------------------------------------------------------- run capture
class LogCapture(OutputBuffer):
    """One run's capture: its log records of ``level`` and up and what it printed
    (``sys.stdout`` and ``sys.stderr``, see ``runtime.streams``), in the order made, kept
    within ``limit`` bytes (an ``OutputBuffer``)."""

    __slots__ = ("level", "limit", "printer")

    def __init__(self, level: int, limit: int) -> None:
        if limit < 0:
            check_output_limit(limit)
        self.level, self.limit = level, limit
        # OutputBuffer's fields, set here: calling its __init__ cost a run ~0.2 us.
        self._limit, self.pending, self._kept, self._total, self._spilled = (
            limit,
            [],
            None,
            0,
            None,
        )
        #: ``runtime.streams``' memo: the frame that printed last (not a log handler's).
        self.printer: object | None = None


#: The capture of the current thread or asyncio task (asyncio tasks copy it at creation).
_ACTIVE: contextvars.ContextVar[LogCapture | None] = contextvars.ContextVar(
    "schedctl_log_capture", default=None
)
#: Set while a record is formatted: a record made meanwhile (an argument's ``__str__``
#: that logs) is not captured, instead of recursing.
_FORMATTING: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "schedctl_log_capture_formatting", default=False
)


_STAMP = threading.local()


def _utc_stamp(created: float) -> str:
    """``2026-03-01T12:00:00.123Z`` of a record's time; the seconds part formatted once a
    second per thread (``strftime`` is most of a line's cost)."""
    second = int(created)
    cache = _STAMP.__dict__
    if cache.get("second") != second:
        cache["second"] = second
        cache["text"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return f"{cache['text']}.{int((created - second) * 1000):03d}Z"


class RunLogCapture(logging.Handler):
    """Writes each log record made inside ``capturing()`` to that capture's buffer,
    formatted with ``LOG_FORMAT``, and ignores every other record. It never raises into
    the code that logged (a record it cannot format leaves a note instead).

    It sees each record as it is made (``install_log_capture`` hooks the log record
    factory), not through a logger's handlers: it must not make ``logging.basicConfig()``
    a no-op or silence Python's last-resort handler, as a handler on the root logger would.
    Its filters (``addFilter``) and formatter (``setFormatter``) apply as on any handler,
    to a copy of the record (fields given with ``extra=`` are not on it yet)."""

    def __init__(self) -> None:
        super().__init__()
        formatter = logging.Formatter(LOG_FORMAT)
        formatter.converter = time.gmtime
        formatter.default_time_format = "%Y-%m-%dT%H:%M:%S"
        formatter.default_msec_format = "%s.%03dZ"
        self.setFormatter(formatter)
        self._default = formatter

    def handle(self, record: logging.LogRecord) -> bool:
        active = _ACTIVE.get()
        return active is not None and self.capture(record, active)

    def capture(self, record: logging.LogRecord, active: LogCapture) -> bool:
        """Write ``record`` to ``active`` if its level is high enough for both."""
        levelno = record.levelno
        if levelno < active.level or levelno < self.level or _FORMATTING.get():
            return False
        token = _FORMATTING.set(True)
        try:
            active.write(self._line(record))
        except Exception as exc:
            with contextlib.suppress(Exception):
                note = f"[schedctl: a log record could not be captured: {exc!r}]\n"
                active.write(note)
        finally:
            _FORMATTING.reset(token)
        return True

    def _line(self, record: logging.LogRecord) -> str:
        """``LOG_FORMAT`` of ``record``. With this handler's own formatter and no filters
        (the default), formatted here directly: ``Formatter.format`` on a copy of the record
        cost ~15 us a line, most of a chatty run's capture. Otherwise as any handler would
        (on a copy: formatting caches fields on the record, and filters may change it, under
        the eyes of the logger's own handlers; not makeLogRecord, which calls the factory)."""
        if self.formatter is self._default and not self.filters:
            stamp, message = _utc_stamp(record.created), record.getMessage()
            if not (record.exc_info or record.exc_text or record.stack_info):  # most lines
                return f"{stamp} {record.levelname} {record.name}: {message}\n"
            line = f"{stamp} {record.levelname} {record.name}: {message}"
            if record.exc_info:
                line += "\n" + self._default.formatException(record.exc_info)
            elif record.exc_text:
                line += "\n" + record.exc_text
            if record.stack_info:
                line += "\n" + record.stack_info
            return line + "\n"
        clone = copy.copy(record)
        if not self.filter(clone):
            return ""
        return self.format(clone) + "\n"

    def emit(self, record: logging.LogRecord) -> None:
        self.handle(record)


class _RootLevel:
    """Lets captures see records that unconfigured logging would not even make.

    A logger makes a record only at or above its effective level, which is the root
    logger's (WARNING) unless logging was configured: ``logging.getLogger("myjob").info``
    makes nothing, before any handler. When a capture starts and the root logger has no
    handlers (logging unconfigured: nothing but Python's last-resort handler sees records,
    and it shows warnings and up only), the root level is lowered to the capture's level,
    once, and left so: restoring it after each run cost ~13 us a run (``setLevel`` clears
    every logger's level cache), a quarter of a worker's time at 1,000 runs/s. Configured
    logging is never changed: then a capture gets what its configuration lets through (the
    scheduler's CLI sets the root to INFO; a logger's own ``setLevel`` raises or lowers it
    for its records)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def enter(self, level: int) -> None:
        root = logging.root
        if root.level > level and not root.handlers:  # cheap check first: the common case
            with self._lock:
                if root.level > level and not root.handlers:
                    root.setLevel(level)


_ROOT_LEVEL = _RootLevel()
_INSTALLED: RunLogCapture | None = None
_INSTALL_LOCK = threading.Lock()


def install_log_capture() -> RunLogCapture:
    """Hook run log capture into logging (once; later calls return the same handler).

    The handler is called by a wrapper around the log record factory in place, so it sees
    every record made, whatever loggers and handlers are configured. Code that later
    replaces the record factory without calling the one it found turns capture off."""
    global _INSTALLED
    with _INSTALL_LOCK:
        if _INSTALLED is not None:
            return _INSTALLED
        handler = RunLogCapture()
        previous = logging.getLogRecordFactory()

        active = _ACTIVE.get
        capture = handler.capture

        def make_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            run = active()
            if run is not None:
                capture(record, run)
            return record

        logging.setLogRecordFactory(make_record)
        _INSTALLED = handler
        return handler


def start_capture(level: int = logging.INFO, limit: int = DEFAULT_OUTPUT_LIMIT) -> CaptureToken:
    """Start capturing the log records of ``level`` and up, and the writes to
    ``sys.stdout`` and ``sys.stderr``, made in this thread or asyncio task (and in asyncio
    tasks started inside) into a new ``LogCapture`` of ``limit`` bytes; :func:`end_capture`
    with the token returns what it got. The run path's form of ``capturing()``: a
    generator context manager cost a few microseconds a run.

    Records and writes of other threads and tasks do not reach it, nor do those of threads
    the code inside starts itself (a new thread does not inherit the context;
    ``asyncio.to_thread`` and ``loop.run_in_executor`` with a copied context do). With
    logging unconfigured, records below WARNING are made once a capture has started (see
    ``_RootLevel``). The stream proxies are installed at the first capture, and again when
    ``sys.stdout`` or ``sys.stderr`` was replaced since (see ``runtime.streams``)."""
    if _INSTALLED is None:
        install_log_capture()
    if type(sys.stdout) is not RunStream or type(sys.stderr) is not RunStream:
        ensure_stream_capture(_ACTIVE.get)
    _ROOT_LEVEL.enter(level)
    return _ACTIVE.set(LogCapture(level, limit))


def end_capture(token: CaptureToken) -> CapturedOutput:
    """Stop the capture ``token`` started; what it captured."""
    capture = _ACTIVE.get()
    _ACTIVE.reset(token)
    return _NOTHING if capture is None else capture.value()


@contextlib.contextmanager
def capturing(level: int = logging.INFO, limit: int = DEFAULT_OUTPUT_LIMIT) -> Iterator[LogCapture]:
    """``start_capture`` / ``end_capture`` around a block; yields the ``LogCapture``."""
    token = start_capture(level, limit)
    try:
        capture = _ACTIVE.get()
        assert capture is not None
        yield capture
    finally:
        _ACTIVE.reset(token)
