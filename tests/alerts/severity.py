"""The `severity` label of a shipped alert rule: a fixed severity, or the per-task template of
the task alerts, which keeps the severity the task's `alerts:` block sets (joined in from
scheduler_task_alert_policy_info) and falls back to the alert's own default. Shared by the rule
tests and the catalog test of docs/metrics.md."""

from __future__ import annotations

import re

SEVERITIES = ("critical", "warning", "info")
_TEMPLATE = re.compile(
    r"\{\{ if \$labels\.severity \}\}\{\{ \$labels\.severity \}\}"
    r"\{\{ else \}\}(?P<default>\w+)\{\{ end \}\}"
)


def per_task_template(default: str) -> str:
    """The label template of a task alert whose default severity is ``default``."""
    return f"{{{{ if $labels.severity }}}}{{{{ $labels.severity }}}}{{{{ else }}}}{default}{{{{ end }}}}"


def default_severity(label: str) -> str | None:
    """The severity an alert has when no task sets one: ``label`` itself when it is a
    severity, the fallback of the exact per-task template, None for anything else."""
    if label in SEVERITIES:
        return label
    match = _TEMPLATE.fullmatch(label)
    if match and match.group("default") in SEVERITIES:
        return match.group("default")
    return None


def is_per_task(label: str) -> bool:
    """True when ``label`` is the per-task template (with a valid default)."""
    default = default_severity(label)
    return default is not None and label == per_task_template(default)
