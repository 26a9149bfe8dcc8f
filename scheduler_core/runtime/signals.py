"""SIGTERM and SIGINT start a drain of a scheduler instance."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scheduler_core.runtime.loop import Scheduler

__all__ = ["install_signal_handlers"]

log = logging.getLogger(__name__)


def install_signal_handlers(
    scheduler: Scheduler, register: Callable[..., Any] | None = None
) -> None:
    """SIGTERM and SIGINT start a drain."""
    reg = register or signal.signal

    def handler(signum: int, _frame: Any) -> None:
        log.info("received signal %d: draining", signum)
        scheduler.request_stop()

    reg(signal.SIGTERM, handler)
    reg(signal.SIGINT, handler)
