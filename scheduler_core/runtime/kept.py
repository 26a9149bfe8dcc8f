"""What a run keeps of what it said: its task's output policy applied to how it ended.

Its output (a command's, or a callable's prints and log lines) and its result (a callable's return
value, as JSON) are kept when ``keep_output`` says so, redacted first (the default patterns,
the task's ``redact`` and the secrets this process knows, such as the database password);
the numeric values of the task's ``result_metrics`` keys are taken whatever it keeps, for
the totals. A NUL character in the output (which PostgreSQL's text cannot hold) is kept as
U+FFFD. Runs in the worker that ran the task, never on the scheduler's loop.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from scheduler_core.redaction import Redactor
from scheduler_core.runtime.results import result_json
from scheduler_core.runtime.runners import ActionResult
from scheduler_core.tasks import TaskDefinition

__all__ = ["kept_of", "redactor_for", "result_values"]


_NOTHING_KEPT: Mapping[str, Any] = MappingProxyType({})


@functools.lru_cache(maxsize=256)
def redactor_for(patterns: tuple[str, ...], secrets: tuple[str, ...]) -> Redactor:
    """The redactor of a task's ``redact`` patterns and this process's secrets (compiled
    once per distinct pair: tasks share a handful)."""
    return Redactor.of(patterns, secrets=secrets)


def result_values(result: object, keys: Sequence[str]) -> dict[str, float]:
    """The finite numbers under ``keys`` of a mapping ``result`` (booleans are not numbers)."""
    if not keys or not isinstance(result, Mapping):
        return {}
    values: dict[str, float] = {}
    for key in keys:
        value = result.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if math.isfinite(number):
                values[key] = number
    return values


def kept_of(
    definition: TaskDefinition, result: ActionResult, *, secrets: tuple[str, ...] = ()
) -> Mapping[str, Any]:
    """The ``RunOutcome`` fields ``result`` keeps under ``definition``'s output policy:
    ``output``, ``output_bytes``, ``output_dropped_bytes``, ``result``, ``result_note`` and
    ``result_values`` (each only when there is something)."""
    policy = definition.policies.output
    captured = result.output
    if result.result is None and (captured is None or not captured.total_bytes):
        return _NOTHING_KEPT  # the common case: a silent run, nothing to look at
    kept: dict[str, Any] = {}
    values = result_values(result.result, policy.result_metrics)
    if values:
        kept["result_values"] = values
    if not policy.keeps(result.status):
        return kept
    redactor = redactor_for(policy.redact, secrets)
    if captured is not None and captured.total_bytes > 0:
        said = captured.text
        if "\x00" in said:  # PostgreSQL's text cannot hold NUL
            said = said.replace("\x00", "\ufffd")
        kept["output"] = redactor.redact(said)
        kept["output_bytes"] = captured.total_bytes
        kept["output_dropped_bytes"] = captured.dropped_bytes
    if result.result is not None:
        text, note = result_json(result.result, limit=policy.output_limit)
        if text is not None:
            text = redactor.redact(text)
            try:
                json.loads(text)
            except ValueError:  # a custom pattern cut through the JSON: keep it as text
                text, note = json.dumps(text), "redacted; stored as text"
            kept["result"], kept["result_note"] = text, note
    return kept
