"""The values the store hands out and takes in: claimed schedules, dispatched runs, run
outcomes and what a sync or a finalize wrote; and the size limits of stored text."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from scheduler_core.tasks import TaskDefinition

__all__ = [
    "ERROR_MESSAGE_LIMIT",
    "HEALTH_ERROR_LIMIT",
    "OUTCOME_COUNTERS",
    "TRACEBACK_LIMIT",
    "ClaimedSchedule",
    "DispatchedRun",
    "FinalizeResult",
    "RunIdentity",
    "RunOutcome",
    "SyncResult",
    "truncate_text",
]

#: A run row's ``error_message``.
ERROR_MESSAGE_LIMIT = 2000
#: A health row's ``last_error_message`` (the run row keeps ``ERROR_MESSAGE_LIMIT``).
HEALTH_ERROR_LIMIT = 500
#: A run row's ``error_traceback``.
TRACEBACK_LIMIT = 8000

#: Each outcome's persisted counter column on the schedule row (they survive cleanup).
OUTCOME_COUNTERS = {
    "success": "runs_success_total",
    "failure": "runs_failure_total",
    "timeout": "runs_timeout_total",
    "cancelled": "runs_cancelled_total",
    "abandoned": "runs_abandoned_total",
    "skipped": "runs_skipped_total",
}


def truncate_text(text: str | None, limit: int) -> str | None:
    """Cut ``text`` to ``limit`` characters, marking the cut. NUL characters (which
    PostgreSQL text cannot hold: one would fail the whole batch's write) become ``\\x00``."""
    if text is None:
        return None
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if len(text) <= limit:
        return text
    return text[: limit - 20] + f"... [{len(text) - limit + 20} more]"


@dataclass(frozen=True, kw_only=True)
class SyncResult:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)  # not frozen: built per run; a frozen __init__ is ~4x slower
class ClaimedSchedule:
    """A schedule row this instance holds the lease on."""

    name: str
    definition_hash: str
    next_run_at: datetime | None
    retry_at: datetime | None
    retry_scheduled_for: datetime | None
    retry_attempt: int | None
    #: Pending retries after ``retry_at``'s (``pending_retries``); None in the common case.
    retries_queued: str | None
    run_now_requested_at: datetime | None
    claimed_until: datetime
    fire_count: int
    consecutive_failures: int
    #: The pending run-now's own arguments (JSON), None for the task's.
    run_now_overrides: str | None = None


@dataclass(slots=True, kw_only=True)  # not frozen: built per run; a frozen __init__ is ~4x slower
class DispatchedRun:
    """A run row inserted as ``running``: the engine must execute and finalize it."""

    run_id: int
    task_name: str
    scheduled_for: datetime
    attempt: int
    trigger: str
    started_at: datetime
    definition: TaskDefinition
    consecutive_failures_at_start: int
    #: When to start it: its tick, retry or run-now time (after ``started_at`` when the
    #: engine claimed it ahead of time; see ``EngineSettings.look_ahead``).
    not_before: datetime | None = None


class RunIdentity(Protocol):
    """Which run: what a dispatched run, a run handle and an outcome have in common."""

    @property
    def run_id(self) -> int: ...
    @property
    def task_name(self) -> str: ...
    @property
    def scheduled_for(self) -> datetime: ...
    @property
    def attempt(self) -> int: ...
    @property
    def started_at(self) -> datetime: ...


@dataclass(slots=True, kw_only=True)  # not frozen: built per run; a frozen __init__ is ~4x slower
class RunOutcome:
    """How a run ended, ready to be written."""

    run_id: int
    task_name: str
    status: str
    scheduled_for: datetime
    attempt: int
    started_at: datetime
    finished_at: datetime
    error_message: str | None = None
    error_traceback: str | None = None
    exit_code: int | None = None
    pid: int | None = None
    thread_name: str | None = None
    trace_id: str | None = None
    #: What the run said, as kept (redacted, bounded; None: nothing to keep).
    output: str | None = None
    output_bytes: int = 0
    output_dropped_bytes: int = 0
    #: Its result as JSON, and a note when it had to be stored as a truncated repr.
    result: str | None = None
    result_note: str | None = None
    #: The numeric values of its task's ``result_metrics`` keys in its result.
    result_values: Mapping[str, float] | None = None

    @property
    def says_something(self) -> bool:
        """Whether the run has output or a result to store."""
        return self.output is not None or self.result is not None

    @property
    def duration_seconds(self) -> float:
        return max(0.0, (self.finished_at - self.started_at).total_seconds())

    @classmethod
    def of(
        cls, run: RunIdentity, status: str, finished_at: datetime, *,
        error_message: str | None = None, error_traceback: str | None = None,
        exit_code: int | None = None, pid: int | None = None, thread_name: str | None = None,
        trace_id: str | None = None, kept: Mapping[str, Any] | None = None,
    ) -> RunOutcome:  # fmt: skip
        """How ``run`` (a dispatched run, or the engine's handle of one) ended; ``kept``:
        what it said, as its output policy keeps it (``runtime.kept.kept_of``)."""
        return cls(
            run_id=run.run_id, task_name=run.task_name, scheduled_for=run.scheduled_for,
            attempt=run.attempt, started_at=run.started_at, status=status,
            finished_at=finished_at, error_message=error_message,
            error_traceback=error_traceback, exit_code=exit_code, pid=pid,
            thread_name=thread_name, trace_id=trace_id, **(kept or {}),
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class FinalizeResult:
    """What a finalize batch wrote: the accepted outcomes and per-task failure counts."""

    accepted: list[RunOutcome]
    rejected: list[RunOutcome]
    consecutive_failures: dict[str, int]
    retries_scheduled: dict[str, datetime]
    #: Tasks whose consecutive failures went from above zero back to zero in this batch.
    recovered: frozenset[str] = frozenset()
