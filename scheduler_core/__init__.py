"""schedctl's scheduler core: persistent schedules, safe claiming and run telemetry in SQL.

The public API: :class:`Client` (tasks and runs from any process), :func:`task` (a function
that declares its schedule), :class:`Scheduler` (a scheduler inside this process),
:func:`current_run` (inside a task's callable: which run this is, a :class:`RunContext`)
and the errors they raise.

The API is imported on first use (PEP 562): importing a submodule, as ``schedctl validate``
does with ``scheduler_core.task_files``, runs this file first, and ``Client`` alone would
bring SQLAlchemy, the store and OpenTelemetry with it (~0.5 s).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scheduler_core.errors import (
    ConfigError,
    ConfigIssue,
    DatabaseUnavailableError,
    RunLookupError,
    SchemaVersionError,
    TaskConflictError,
    TaskLookupError,
)

if TYPE_CHECKING:
    from scheduler_core.client import Client
    from scheduler_core.decorator import task
    from scheduler_core.embedded import Scheduler
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

#: The names imported on first use, and the module each comes from.
_LAZY = {
    "Client": "scheduler_core.client",
    "task": "scheduler_core.decorator",
    "Scheduler": "scheduler_core.embedded",
    "RunContext": "scheduler_core.runtime.run_context",
    "current_run": "scheduler_core.runtime.run_context",
    "__version__": "scheduler_core.version",
}


def __getattr__(name: str) -> Any:
    """``scheduler_core.Client`` and the rest of :data:`_LAZY`: imported now, then cached."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
