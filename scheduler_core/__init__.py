"""schedctl's scheduler core: persistent schedules, safe claiming and run telemetry in SQL.

The public API: :class:`Client` (tasks and runs from any process), :func:`task` (a function
that declares its schedule), :class:`Scheduler` (a scheduler inside this process),
:func:`current_run` (inside a task's callable: which run this is, a :class:`RunContext`)
and the errors they raise.
"""

from __future__ import annotations

from scheduler_core.client import Client
from scheduler_core.decorator import task
from scheduler_core.embedded import Scheduler
from scheduler_core.errors import (
    ConfigError,
    ConfigIssue,
    DatabaseUnavailableError,
    RunLookupError,
    SchemaVersionError,
    TaskConflictError,
    TaskLookupError,
)
from scheduler_core.runtime.run_context import RunContext, current_run
from scheduler_core.version import __version__

__all__ = [
    "Client",
    "ConfigError",
    "ConfigIssue",
    "DatabaseUnavailableError",
    "RunContext",
    "RunLookupError",
    "Scheduler",
    "SchemaVersionError",
    "TaskConflictError",
    "TaskLookupError",
    "__version__",
    "current_run",
    "task",
]
