"""What a run keeps of what it said: the per-task output policy and its task-file fields.

``keep_output`` (``always`` | ``failures`` | ``never``), ``output_limit`` (bytes kept of a run's
output: its head and tail), ``log_level`` (the least level of a callable's log records that
are its output), ``result_metrics`` (the result keys whose numeric values are added up per
task and exported) and ``redact`` (regexes whose matches are hidden before anything is
stored, on top of the defaults in :mod:`scheduler_core.redaction`). Each may be set per task
or in ``defaults:``.

The default is ``keep_output: always``: the question a user asks first is "what did last
night's backup print?", which a failures-only default cannot answer. It stays cheap: a run
that printed, logged and returned nothing writes no output row at all, what is kept is
bounded by ``output_limit`` (64 KiB), and retention deletes it with its run.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "DEFAULT_OUTPUT_LIMIT",
    "KEEP_OUTPUT",
    "LOG_LEVELS",
    "OUTPUT_KEYS",
    "OutputPolicy",
    "parse_output_fields",
]

KEEP_OUTPUT = ("always", "failures", "never")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_OUTPUT_LIMIT = 64 * 1024
OUTPUT_LIMIT_RANGE = (1024, 16 * 1024 * 1024)
#: Keys per task: each is a label value of ``scheduler_task_result_total``.
MAX_RESULT_METRICS = 20
OUTPUT_KEYS = frozenset({"keep_output", "output_limit", "log_level", "result_metrics", "redact"})

_METRIC_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|KB|MB)?", re.IGNORECASE)
_UNITS = {"b": 1, "kib": 1024, "mib": 1024 * 1024, "kb": 1000, "mb": 1000 * 1000}


@dataclass(frozen=True, kw_only=True)
class OutputPolicy:
    """A task's output policy (see the module docstring)."""

    keep_output: str = "always"
    output_limit: int = DEFAULT_OUTPUT_LIMIT
    log_level: str = "INFO"
    result_metrics: tuple[str, ...] = ()
    redact: tuple[str, ...] = ()

    def keeps(self, status: str) -> bool:
        """Whether a run that ended ``status`` keeps its output and result."""
        if self.keep_output == "always":
            return True
        return self.keep_output == "failures" and status != "success"

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults (a task without any keeps its digest)."""
        default = OutputPolicy()
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


def parse_output_fields(
    data: Mapping[str, Any],
) -> tuple[dict[str, Any], list[tuple[str, object, str]]]:
    """The output fields of ``data`` (a task or ``defaults:``), parsed, and the problems found
    as (field, value, message)."""
    values: dict[str, Any] = {}
    issues: list[tuple[str, object, str]] = []
    for key, parse in _PARSERS.items():
        if key not in data:
            continue
        try:
            values[key] = parse(data[key])
        except ValueError as exc:
            issues.append((key, data[key], str(exc)))
    return values, issues


def _keep_output(value: object) -> str:
    if value not in KEEP_OUTPUT:
        raise ValueError(f"must be one of {', '.join(KEEP_OUTPUT)}")
    return str(value)


def _output_limit(value: object) -> int:
    low, high = OUTPUT_LIMIT_RANGE
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        size = int(match.group(1)) * _UNITS[(match.group(2) or "b").lower()]
    if size is None or not low <= size <= high:
        raise ValueError(f"must be a size from {low} bytes to 16MiB, like 65536, '64KiB' or '1MiB'")
    return size


def _log_level(value: object) -> str:
    if not isinstance(value, str) or value.upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return value.upper()


def _result_metrics(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(k, str) for k in value):
        raise ValueError("must be a list of result keys, like [files_moved, bytes_moved]")
    bad = [k for k in value if not _METRIC_KEY.fullmatch(k)]
    if bad:
        raise ValueError(f"{bad[0]!r} is not a key: letters, digits and _, at most 64")
    if len(set(value)) > MAX_RESULT_METRICS:
        raise ValueError(f"at most {MAX_RESULT_METRICS} keys (each is a metric label value)")
    return tuple(dict.fromkeys(value))


def _redact(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ValueError("must be a list of regular expressions")
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"{pattern!r} is not a valid regular expression: {exc}") from None
    return tuple(value)


_PARSERS = {
    "keep_output": _keep_output,
    "output_limit": _output_limit,
    "log_level": _log_level,
    "result_metrics": _result_metrics,
    "redact": _redact,
}
