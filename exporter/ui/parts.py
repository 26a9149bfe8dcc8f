"""Small pieces every status page uses: links to task and run pages and to the Grafana
dashboards, and the badge of a task's state."""

from __future__ import annotations

from typing import Final

from exporter.ui.markup import Markup, html, path_part, query_string

__all__ = [
    "OVERVIEW_UID",
    "TASK_UID",
    "badge",
    "grafana_overview_url",
    "grafana_task_url",
    "run_href",
    "task_href",
]

#: The uids of the two shipped dashboards (dashboards/schedctl-*.json).
OVERVIEW_UID: Final[str] = "schedctl-overview"
TASK_UID: Final[str] = "schedctl-task"


def task_href(name: str) -> str:
    """The task page of ``name`` (any character of the name is encoded)."""
    return f"/ui/tasks/{path_part(name)}"


def run_href(run_id: int) -> str:
    """The run page of run ``run_id``."""
    return f"/ui/runs/{run_id}"


def grafana_overview_url(grafana_url: str) -> str:
    return f"{grafana_url}/d/{OVERVIEW_UID}"


def grafana_task_url(grafana_url: str, task: str | None) -> str:
    """The schedctl-task dashboard, showing ``task`` when given."""
    return f"{grafana_url}/d/{TASK_UID}" + query_string({"var-task": task})


def badge(name: str) -> Markup:
    """A task's badge, named as ``/api/v1/status`` names it."""
    return html('<span class="badge b-{b}" data-badge="{b}">{b}</span>', b=name)
