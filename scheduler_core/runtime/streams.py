"""What a callable prints: ``sys.stdout`` and ``sys.stderr`` replaced, once, by proxies that
send the text written inside a run's capture to that run, and everything else on to the
stream they replaced, unchanged.

Which run a write belongs to is the capture of the thread or asyncio task that writes
(``runtime.capture`` keeps it in a context variable): runs in other worker threads or on
the event loop never see each other's prints, and writes outside any run (the scheduler's
own, another library's, a test's) reach the real stream as before.

Writes made by a ``logging`` handler (a ``StreamHandler`` on ``sys.stderr``, Python's
last-resort handler) go to the real stream even inside a run: the run already has the
record itself (``runtime.capture`` sees every record as it is made), and the handler's
copy is the application's log output, which stays where its configuration sends it.

``sys.stdout`` replaced again after the proxy was installed (pytest's ``capsys``, an
application's own redirection) is wrapped again at the next run's start
(:func:`ensure_stream_capture`): the new stream gets its own proxy, and the old proxy
still leads to the stream it was made for, so whoever puts the old one back loses nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any, Protocol

__all__ = ["SETTLE_CHARS", "SETTLE_WRITES", "RunStream", "Sink", "ensure_stream_capture"]


#: A sink settles (sizes and bounds) what it was given at a write of more characters than
#: this, or once this many writes are pending: what it holds unsized stays small.
SETTLE_CHARS = 4096
SETTLE_WRITES = 256


class Sink(Protocol):
    """Where a run's prints go (its capture, an ``OutputBuffer``). A print is appended to
    ``pending`` directly when it is small and the list short (``SETTLE_CHARS``,
    ``SETTLE_WRITES``) and it comes from ``printer``, else given to ``write``. ``printer``
    is the stream's memo: the frame that wrote last to the sink and is not a log handler's
    (None at first)."""

    printer: object | None
    pending: list[str]

    def write(self, text: str) -> None: ...


#: ``logging.Handler.handle``: a write made under it is a log handler's copy of a record,
#: not something the run printed.
_HANDLE_CODE = logging.Handler.handle.__code__
#: How many frames above the writer ``Handler.handle`` is looked for: 1 is a handler's
#: ``emit`` writing itself (``StreamHandler``), 2 and 3 an ``emit`` writing through helpers.
_HANDLER_DEPTH = 3
_getframe = sys._getframe
#: ``pending`` takes a print itself while shorter than this; the write that fills it to
#: ``SETTLE_WRITES`` goes through ``Sink.write``, which settles.
_ROOM = SETTLE_WRITES - 1


def _under_log_handler(writer: FrameType) -> bool:
    """Whether ``writer`` (the frame calling ``write``) runs under ``Handler.handle``, up
    to ``_HANDLER_DEPTH`` frames above it: its frames above never change, so a run's
    capture remembers the frame that printed last (``Sink.printer``)."""
    frame = writer.f_back
    for _ in range(_HANDLER_DEPTH):
        if frame is None:
            return False
        if frame.f_code is _HANDLE_CODE:
            return True
        frame = frame.f_back
    return False


class RunStream:
    """A text stream in place of ``sys.stdout`` or ``sys.stderr``: ``write`` inside a run's
    capture goes to the capture; anywhere else to ``target``, the stream it replaced (None
    when there was none: the text is then dropped, as ``print`` drops it). Every other
    attribute (``encoding``, ``fileno``, ``isatty``, ``buffer``...) is the target's, so
    writes to ``sys.stdout.buffer`` (bytes) go to the real stream even in a run.
    """

    __slots__ = ("target", "write")

    def __init__(self, target: Any, active: Callable[[], Sink | None]) -> None:
        self.target = target
        #: An attribute holding a closure, not a method: ``print`` looks ``write`` up at
        #: each write, and the closure finds ``active`` in its cell, where a method would
        #: read it from ``self``, an attribute lookup the interpreter cannot specialise on
        #: a class with ``__getattr__`` (12 % of capturing a run that prints 8 lines).
        self.write: Callable[[str], int] = _writer(self, active)

    def writelines(self, lines: Iterable[str]) -> None:
        write = self.write
        for line in lines:
            write(line)

    def flush(self) -> None:
        target = self.target
        if target is not None:
            target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def __repr__(self) -> str:
        return f"<RunStream of {self.target!r}>"


def _writer(stream: RunStream, active: Callable[[], Sink | None]) -> Callable[[str], int]:
    """``stream.write``: to the run's capture (``active()``) inside a run, else to
    ``stream.target``."""

    def write(text: str) -> int:
        capture = active()
        if capture is None:
            target = stream.target
            return len(text) if target is None else int(target.write(text))
        # Inside a run. Every print is two writes (its text, its "\n") from one frame, and
        # a run prints from a few: a write from the frame that printed last (not a log
        # handler's, see the module docstring) is appended to the run's pending pieces
        # here, ``OutputBuffer.write``'s common case inlined (this is most of what a
        # printing run costs: each check here is paid twice a print).
        writer = _getframe(1)
        if writer is capture.printer and type(text) is str:
            size = len(text)
            pending = capture.pending
            if size <= SETTLE_CHARS and len(pending) < _ROOM:
                pending.append(text)
                return size
        return _write_in_run(stream, capture, writer, text)

    return write


def _write_in_run(stream: RunStream, capture: Sink, writer: FrameType, text: str) -> int:
    """A write inside a run that ``write`` does not append itself: from another frame than
    the last (a log handler's goes to the stream's target), not text, long, or the one
    that fills ``pending``."""
    if writer is not capture.printer:
        if _under_log_handler(writer):
            target = stream.target
            return len(text) if target is None else int(target.write(text))
        capture.printer = writer  # one attribute: threads sharing a capture may race
    if not isinstance(text, str):
        raise TypeError(f"write() argument must be str, not {type(text).__name__}")
    capture.write(text)
    return len(text)


_LOCK = threading.Lock()


def ensure_stream_capture(active: Callable[[], Sink | None]) -> None:
    """Put a ``RunStream`` (sending a run's writes to ``active()``) in place of
    ``sys.stdout`` and of ``sys.stderr``, unless one is there already. Cheap when both
    are: a run's start calls it (so a stream replaced since is wrapped again)."""
    if type(sys.stdout) is RunStream and type(sys.stderr) is RunStream:
        return
    with _LOCK:
        if type(sys.stdout) is not RunStream:
            sys.stdout = RunStream(sys.stdout, active)
        if type(sys.stderr) is not RunStream:
            sys.stderr = RunStream(sys.stderr, active)
