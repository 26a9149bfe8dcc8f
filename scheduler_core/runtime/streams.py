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
    ``pending`` directly when that list exists and the print is small (``SETTLE_CHARS``,
    ``SETTLE_WRITES``), else given to ``write``. ``writer`` is the stream's memo of the
    frame that wrote last to it and whether that frame is a log handler's (None at first).
    """

    writer: tuple[object, bool] | None
    pending: list[str] | None

    def write(self, text: str) -> None: ...


#: ``logging.Handler.handle``: a write made under it is a log handler's copy of a record,
#: not something the run printed.
_HANDLE_CODE = logging.Handler.handle.__code__
#: How many frames above the writer ``Handler.handle`` is looked for: 1 is a handler's
#: ``emit`` writing itself (``StreamHandler``), 2 and 3 an ``emit`` writing through helpers.
_HANDLER_DEPTH = 3
_getframe = sys._getframe


def _under_log_handler(writer: FrameType) -> bool:
    """Whether ``writer`` (the frame calling ``write``) runs under ``Handler.handle``, up
    to ``_HANDLER_DEPTH`` frames above it: its frames above never change, so a run's
    capture keeps the answer for the frame that wrote last."""
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

    __slots__ = ("_active", "target")

    def __init__(self, target: Any, active: Callable[[], Sink | None]) -> None:
        self.target = target
        self._active = active

    def write(self, text: str) -> int:
        capture = self._active()
        if capture is not None:
            # Inside a run, unless a logging handler writes (see the module docstring).
            writer = _getframe(1)
            memo = capture.writer  # one frame writes many times: print's text, its "\n"
            if memo is not None and memo[0] is writer:
                logs = memo[1]
            else:
                logs = _under_log_handler(writer)
                capture.writer = (writer, logs)  # one tuple: threads may share a capture
            if not logs:
                pending = capture.pending
                if (
                    pending is not None
                    and type(text) is str
                    and len(text) <= SETTLE_CHARS
                    and len(pending) < SETTLE_WRITES - 1
                ):
                    pending.append(text)  # ``OutputBuffer.write``'s common case, inlined
                elif isinstance(text, str):
                    capture.write(text)
                else:
                    raise TypeError(f"write() argument must be str, not {type(text).__name__}")
                return len(text)
        target = self.target
        return len(text) if target is None else int(target.write(text))

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        target = self.target
        if target is not None:
            target.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)

    def __repr__(self) -> str:
        return f"<RunStream of {self.target!r}>"


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
