"""Task files: read a YAML task file into validated definitions.

Errors about the file as a whole (it cannot be read, it is not YAML) name the file; errors
in its tasks come from :func:`scheduler_core.config.parse_task_document`, every one at once.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from scheduler_core.config import parse_task_document
from scheduler_core.errors import ConfigError, ConfigIssue
from scheduler_core.gc_pause import gc_paused
from scheduler_core.task_yaml import TaskFileLoader
from scheduler_core.tasks import TaskDefinition

__all__ = ["load_task_file"]


def _file_error(source: str, field: str, value: object, message: str) -> ConfigError:
    """An error about the whole file (not one task): it cannot be read or parsed."""
    issue = ConfigIssue(source=source, task=None, field=field, value=value, message=message)
    return ConfigError([issue])


def load_task_file(path: str | Path, *, check_callables: bool = True) -> list[TaskDefinition]:
    """Read and validate a task file; ConfigError lists every problem with file, task and field."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise _file_error(source, "<file>", source, f"cannot read: {exc}") from None
    with gc_paused():
        try:
            document = yaml.load(text, Loader=TaskFileLoader)  # safe_load's results, faster
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise _file_error(source, "<yaml>", None, f"invalid YAML{where}: {problem}") from None
        return parse_task_document(document, source=source, check_callables=check_callables)
