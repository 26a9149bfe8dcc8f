"""The ``@task`` decorator: a function that declares its own schedule, collected per module.

    from scheduler_core import task

    @task(every="5m", retries=2, timeout="1m")
    def refresh_cache() -> None: ...

The keywords are the task file's keys (``every``/``cron``/``at``, ``retries``, ``timeout``,
``overlap``, ...) and are checked by the task file's validator when the module is imported,
so a mistake fails the import with the field and the value named. ``schedctl scheduler
--module myapp.jobs`` (or ``Scheduler.from_url(..., modules=[...])``) imports the module and
syncs its tasks as the source ``module:myapp.jobs``: a later sync of that module touches only
those tasks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from scheduler_core.config import parse_task_mapping
from scheduler_core.tasks import TaskDefinition

__all__ = ["module_source", "task", "tasks_of_module", "tasks_of_modules"]

F = TypeVar("F", bound=Callable[..., Any])

#: module name -> task name -> the task's mapping in the task-file format.
_DECLARED: dict[str, dict[str, dict[str, Any]]] = {}


def module_source(module: str) -> str:
    """The source name of the tasks a module declares with ``@task``."""
    return f"module:{module}"


def task(name: str | None = None, **fields: Any) -> Callable[[F], F]:
    """Declare the decorated module-level function a task; it stays callable as before.

    ``name`` defaults to the function's name. ``fields`` are task-file keys; ``callable``
    is set from the function and may not be given.
    """
    if "callable" in fields or "command" in fields:
        raise TypeError("@task sets the callable itself; do not pass 'callable' or 'command'")
    # Checked now, where the mistake is: the same validator as a task file's.
    probe = {"name": name or "decorated", "callable": "module:function", **fields}
    parse_task_mapping(probe, defaults={}, source="@task", check_callables=False)

    def declare(func: F) -> F:
        qualname = func.__qualname__
        if "<locals>" in qualname:
            raise TypeError(f"@task needs a module-level function, not {qualname!r}")
        module = func.__module__
        mapping = {"name": name or func.__name__, "callable": f"{module}:{qualname}", **fields}
        _DECLARED.setdefault(module, {})[mapping["name"]] = mapping
        return func

    return declare


def tasks_of_module(module: str, *, check_callables: bool = True) -> list[TaskDefinition]:
    """Import ``module`` and return the tasks it declares with ``@task`` (maybe none)."""
    importlib.import_module(module)
    mappings = _DECLARED.get(module, {})
    source = module_source(module)
    return [
        parse_task_mapping(m, defaults={}, source=source, check_callables=check_callables)
        for m in mappings.values()
    ]


def tasks_of_modules(modules: Sequence[str]) -> dict[str, list[TaskDefinition]]:
    """:func:`tasks_of_module` of each, keyed by its source name."""
    return {module_source(m): tasks_of_module(m) for m in modules}
