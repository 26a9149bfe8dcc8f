"""Rate-limited error logging: a repeated failure is logged once per interval."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitedLogger"]


class RateLimitedLogger:
    """Logs a repeated failure once per interval, with how many were suppressed."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def error(self, key: str, message: str) -> bool:
        """Log ``message`` unless ``key`` was logged within the interval; True when logged."""
        now = self._monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._interval:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            suppressed = self._suppressed.pop(key, 0)
            self._last[key] = now
        suffix = f" ({suppressed} similar error(s) suppressed)" if suppressed else ""
        self._logger.error("%s%s", message, suffix)
        return True
