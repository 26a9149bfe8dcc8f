"""Exceptions raised by schedctl; each subclasses the builtin it resembles."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "DatabaseUnavailableError",
    "RunLookupError",
    "SchemaVersionError",
    "TaskLookupError",
    "error_reason",
]

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ConfigIssue:
    """One problem found in a task definition: where it is and what is wrong."""

    source: str
    task: str | None
    field: str
    value: object
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.task is not None:
            where += f": task {self.task!r}"
        return f"{where}: field {self.field!r} = {self.value!r}: {self.message}"


class ConfigError(ValueError):
    """A task file or task definition is invalid; carries every issue found, not just the first."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = list(issues)
        lines = "\n".join(f"  - {issue}" for issue in self.issues)
        super().__init__(f"{len(self.issues)} configuration error(s):\n{lines}")


class TaskLookupError(LookupError):
    """No task with this name exists in the database."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"no task named {name!r}")


class TaskConflictError(RuntimeError):
    """Task names owned by another source (or taken already): nothing was written."""

    def __init__(self, owners: Mapping[str, str], *, action: str = "create") -> None:
        self.owners = dict(owners)
        self.action = action
        shown = sorted(self.owners.items())
        listed = ", ".join(f"{name!r} (owned by {owner})" for name, owner in shown[:10])
        more = f" and {len(shown) - 10} more" if len(shown) > 10 else ""
        super().__init__(f"cannot {action} task(s) {listed}{more}")


class RunLookupError(LookupError):
    """No run with this id exists in the database."""

    def __init__(self, run_id: int | str) -> None:
        self.run_id = run_id
        super().__init__(f"no run with id {run_id!r}")


class SchemaVersionError(RuntimeError):
    """The database schema is not at the revision this version of schedctl needs."""

    def __init__(self, *, found: str | None, needed: str) -> None:
        self.found = found
        self.needed = needed
        found_text = found if found is not None else "none (database not migrated)"
        super().__init__(
            f"database schema revision is {found_text}, schedctl needs {needed}; "
            "run `schedctl db upgrade`"
            + (" (or upgrade schedctl: the database is newer)" if found else "")
        )


class DatabaseUnavailableError(ConnectionError):
    """The database could not be reached; the message never contains the password."""


def error_reason(exc: BaseException, *, limit: int = 300) -> str:
    """The first line of the driver's message (not SQLAlchemy's statement dump), for logs."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__
