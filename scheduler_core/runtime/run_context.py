"""Who a run is: the run a callable is executing (``current_run()``), and the environment a
command gets that says the same (``run_environment``), including the W3C trace context of
the run's span so a command's own logs and spans join the run's trace."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import NamedTuple

from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "RunContext",
    "RunToken",
    "current_run",
    "enter_run",
    "leave_run",
    "run_environment",
    "running_as",
]


class RunContext(NamedTuple):
    """The run being executed: its id in ``scheduler_task_runs``, its task, the tick it
    runs for, its attempt (1 for the first) and what started it (``schedule``, ``manual``
    or ``retry``). A tuple, not a dataclass: one is made per run, ~0.3 us instead of ~1.5."""

    run_id: int
    task: str
    scheduled_for: datetime
    attempt: int
    trigger: str


_CURRENT: contextvars.ContextVar[RunContext | None] = contextvars.ContextVar(
    "schedctl_current_run", default=None
)
#: Only the W3C trace context (traceparent, tracestate), whatever propagators the process
#: configured: other formats' keys (b3, baggage) are not part of the run's environment.
_W3C = TraceContextTextMapPropagator()


def current_run() -> RunContext | None:
    """The run this code executes in (a task's callable, in its thread or asyncio task,
    and the asyncio tasks it starts), or None outside a run."""
    return _CURRENT.get()


RunToken = contextvars.Token["RunContext | None"]


def enter_run(ctx: RunContext) -> RunToken:
    """Make ``ctx`` the current run until :func:`leave_run` (the run path's ``running_as``)."""
    return _CURRENT.set(ctx)


def leave_run(token: RunToken) -> None:
    _CURRENT.reset(token)


@contextlib.contextmanager
def running_as(ctx: RunContext) -> Iterator[None]:
    """Make ``ctx`` the current run for the code inside (this thread or asyncio task)."""
    token = _CURRENT.set(ctx)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def run_environment(ctx: RunContext) -> dict[str, str]:
    """The variables a command of run ``ctx`` gets: ``SCHEDCTL_RUN_ID``, ``SCHEDCTL_TASK``,
    ``SCHEDCTL_SCHEDULED_FOR`` (ISO 8601, UTC), ``SCHEDCTL_ATTEMPT``, and, when a valid span
    is current (the run's), its ``TRACEPARENT`` / ``TRACESTATE`` (the OpenTelemetry
    environment-variable carrier: the W3C header names, upper-cased)."""
    scheduled = ctx.scheduled_for
    if scheduled.tzinfo is None:  # the store's times are UTC
        scheduled = scheduled.replace(tzinfo=UTC)
    env = {
        "SCHEDCTL_RUN_ID": str(ctx.run_id),
        "SCHEDCTL_TASK": ctx.task,
        "SCHEDCTL_SCHEDULED_FOR": scheduled.astimezone(UTC).isoformat(),
        "SCHEDCTL_ATTEMPT": str(ctx.attempt),
    }
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)  # nothing without a valid current span
    env.update((key.upper(), value) for key, value in carrier.items() if value)
    return env
