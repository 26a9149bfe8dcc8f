"""Builds the schedctl Grafana dashboards (classic JSON model) from plain dicts.

`python -m dashboards.build` rewrites the committed JSON files next to this module;
`python -m dashboards.build --check` exits 1 if they differ from what this code builds.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from scheduler_core import states

__all__ = [
    "DASHBOARD_FILES",
    "HEARTBEAT_STALE_SECONDS",
    "LATE_GRACE_SECONDS",
    "all_queries",
    "badge_conditions",
    "build_all",
    "build_overview",
    "build_task",
    "late_flag_expr",
    "main",
    "render",
    "status_expr",
    "substitute",
]

Json = dict[str, Any]

SCHEMA_VERSION = 39
OVERVIEW_UID = "schedctl-overview"
TASK_UID = "schedctl-task"
DASHBOARD_FILES = {
    OVERVIEW_UID: "schedctl-overview.json",
    TASK_UID: "schedctl-task.json",
}
TAGS = ["schedctl"]

# Mirrors schedctl:threshold:late_grace_seconds and schedctl:threshold:heartbeat_stale_seconds
# in alerts/schedctl-rules.yml (a test keeps them equal). The dashboards use the numbers rather
# than the recorded series so that they also work on a Prometheus without the schedctl rules.
# The late grace is the state rule's (scheduler_core.states), written as a whole number.
LATE_GRACE_SECONDS = int(states.LATE_GRACE_SECONDS)
assert LATE_GRACE_SECONDS == states.LATE_GRACE_SECONDS, "the late grace must be whole seconds"
HEARTBEAT_STALE_SECONDS = 120

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
DEFAULT_EXPORTER_URL = "http://127.0.0.1:9464"

# Status badge colours; names are Grafana's palette.
STATUS_COLORS = {
    "ok": "green",
    "failing": "red",
    "running": "blue",
    "stuck": "dark-red",
    "paused": "purple",
    "disabled": "text",
    "late": "orange",
}


def _selector(selector: str, *matchers: str) -> str:
    """``selector`` (``""`` or ``{...}``) with ``matchers`` added."""
    inner = [selector[1:-1]] if selector else []
    parts = [part for part in (*inner, *matchers) if part]
    return "{" + ", ".join(parts) + "}" if parts else ""


def badge_conditions(selector: str = "") -> dict[states.Badge, str]:
    """Per badge, the PromQL that is true of a task on its own (one series per task, labels
    ``task`` only), before precedence: the state rule of scheduler_core.states in PromQL.

    ``late`` here is only "overdue by more than the grace"; disabled, paused and running tasks
    are excluded by precedence (and stuck implies running), exactly as states.is_late's own
    guards are redundant under states.BADGES. ``ok`` matches every task.
    """
    s = selector
    failed = _selector(s, f'status=~"{"|".join(sorted(states.FAILED_STATUSES))}"')
    conditions: dict[states.Badge, str] = {
        "disabled": f"max by (task) (scheduler_task_enabled{s}) == 0",
        "paused": f"max by (task) (scheduler_task_paused{s}) > 0",
        "stuck": f"max by (task) (scheduler_task_stuck{s}) > 0",
        "running": f"max by (task) (scheduler_task_running{s}) > 0",
        "failing": (
            f"(max by (task) (scheduler_task_consecutive_failures{s}) > 0)"
            f" and on (task) (max by (task) (scheduler_task_last_status{failed}) == 1)"
        ),
        "late": (
            f"time() - (max by (task) (scheduler_task_next_run_timestamp_seconds{s}) > 0)"
            f" > {LATE_GRACE_SECONDS}"
        ),
        "ok": f"max by (task) (scheduler_task_info{s})",
    }
    assert tuple(conditions) == states.BADGES, "one condition per badge, in precedence order"
    return conditions


def status_expr(selector: str = "") -> str:
    """PromQL giving each task one series whose `state` label is its status badge.

    One condition per badge (:func:`badge_conditions`), first match wins, in the precedence of
    scheduler_core.states.BADGES: disabled, paused, stuck, running, failing, late, ok. Every
    raw series is aggregated ``max by (task)``, so exporter replicas give one series per task.
    """
    conditions = badge_conditions(selector)
    return "\n  or on (task)\n".join(
        f'label_replace({conditions[badge]}, "state", "{badge}", "", "")' for badge in states.BADGES
    )


def late_flag_expr(selector: str = "") -> str:
    """PromQL for the tasks whose ``late`` flag is set (states.is_late): overdue by more than
    the grace while enabled, not paused and not running, whatever their badge."""
    conditions = badge_conditions(selector)
    excluded = "".join(
        f"\n  unless on (task) ({conditions[badge]})" for badge in ("disabled", "paused", "running")
    )
    return f"{conditions['late']}{excluded}"


# ----------------------------------------------------------------------------------------------
# Building blocks


def _target(
    expr: str,
    ref_id: str,
    *,
    legend: str | None = None,
    instant: bool = False,
    table: bool = False,
) -> Json:
    target: Json = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "format": "table" if table else "time_series",
        "instant": instant,
        "range": not instant,
        "refId": ref_id,
    }
    if legend is not None:
        target["legendFormat"] = legend
    return target


def _thresholds(*steps: tuple[float | None, str]) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"value": value, "color": color} for value, color in steps],
    }


def _status_mappings() -> list[Json]:
    return [
        {
            "type": "value",
            "options": {
                state: {"text": state, "color": color, "index": index}
                for index, (state, color) in enumerate(STATUS_COLORS.items())
            },
        }
    ]


def _link(title: str, url: str, tooltip: str) -> Json:
    """A panel or data link; Grafana reads `title`, `url` and `targetBlank` of it."""
    return {
        "title": title,
        "type": "link",
        "icon": "external link",
        "tooltip": tooltip,
        "url": url,
        "tags": [],
        "asDropdown": False,
        "targetBlank": True,
        "includeVars": False,
        "keepTime": False,
    }


class _Layout:
    """Hands out panel ids and grid positions, filling 24-column rows left to right."""

    def __init__(self) -> None:
        self._next_id = 1
        self._x = 0
        self._y = 0
        self._row_height = 0

    def next_id(self) -> int:
        panel_id = self._next_id
        self._next_id += 1
        return panel_id

    def place(self, width: int, height: int) -> Json:
        if self._x + width > 24:
            self._x = 0
            self._y += self._row_height
            self._row_height = 0
        pos = {"h": height, "w": width, "x": self._x, "y": self._y}
        self._x += width
        self._row_height = max(self._row_height, height)
        return pos


def _panel(
    layout: _Layout,
    *,
    kind: str,
    title: str,
    description: str,
    targets: list[Json],
    unit: str,
    size: tuple[int, int],
    options: Json,
    custom: Json | None = None,
    thresholds: Json | None = None,
    mappings: list[Json] | None = None,
    color: Json | None = None,
    overrides: list[Json] | None = None,
    transformations: list[Json] | None = None,
    links: list[Json] | None = None,
    field_links: list[Json] | None = None,
    no_value: str | None = None,
    decimals: int | None = None,
) -> Json:
    defaults: Json = {
        "unit": unit,
        "color": color or {"mode": "thresholds"},
        "thresholds": thresholds or _thresholds((None, "green")),
        "mappings": mappings or [],
    }
    if custom is not None:
        defaults["custom"] = custom
    if field_links:
        defaults["links"] = field_links
    if no_value is not None:
        defaults["noValue"] = no_value
    if decimals is not None:
        defaults["decimals"] = decimals
    panel: Json = {
        "id": layout.next_id(),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": layout.place(*size),
        "targets": targets,
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options,
    }
    if transformations:
        panel["transformations"] = transformations
    if links:
        panel["links"] = links
    return panel


def _timeseries_panel(
    layout: _Layout, *, bars: bool = False, color: Json | None = None, **fields: Any
) -> Json:
    """A time-series panel with the dashboards' common options and legend (lines or bars)."""
    return _panel(
        layout,
        kind="timeseries",
        options=_timeseries_options(),
        custom=_timeseries_custom(bars=True) if bars else _timeseries_custom(),
        color=color or {"mode": "palette-classic"},
        **fields,
    )


def _stat_options(*, text_mode: str = "auto", color_mode: str = "value", fields: str = "") -> Json:
    return {
        "reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": fields},
        "orientation": "auto",
        "textMode": text_mode,
        "colorMode": color_mode,
        "graphMode": "none",
        "justifyMode": "auto",
        "wideLayout": True,
        "showPercentChange": False,
        "percentChangeColorMode": "standard",
    }


def _timeseries_options() -> Json:
    return {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _timeseries_custom(*, bars: bool = False) -> Json:
    return {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if bars else "none", "group": "A"},
        "axisPlacement": "auto",
    }


def _table_options(sort_by: str) -> Json:
    return {
        "frameIndex": 0,
        "showHeader": True,
        "cellHeight": "sm",
        "sortBy": [{"displayName": sort_by, "desc": False}],
    }


def _table_custom() -> Json:
    return {"align": "auto", "inspect": False, "filterable": True}


def _colored_cell_override(column: str) -> Json:
    return {
        # byNames rather than byName: its options are an object, as the schema requires.
        "matcher": {"id": "byNames", "options": {"mode": "include", "names": [column]}},
        "properties": [
            {
                "id": "custom.cellOptions",
                "value": {"type": "color-background", "mode": "basic", "applyToRow": False},
            }
        ],
    }


def _datasource_variable() -> Json:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
    }


def _dashboard(
    *, uid: str, title: str, description: str, panels: list[Json], variables: list[Json]
) -> Json:
    other = TASK_UID if uid == OVERVIEW_UID else OVERVIEW_UID
    return {
        "id": None,
        "uid": uid,
        "title": title,
        "description": description,
        "tags": TAGS,
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {
                "title": "schedctl dashboards",
                "type": "dashboards",
                "icon": "external link",
                "tooltip": f"Also see {other}",
                "tags": TAGS,
                "asDropdown": True,
                "targetBlank": False,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "panels": panels,
    }


# ----------------------------------------------------------------------------------------------
# schedctl-overview


def build_overview() -> Json:
    """The `schedctl-overview` dashboard: every task's state, the instances, failure rates."""
    layout = _Layout()
    panels: list[Json] = []

    def count_stat(title: str, description: str, expr: str, bad: str) -> Json:
        return _panel(
            layout,
            kind="stat",
            title=title,
            description=description,
            targets=[_target(expr, "A", instant=True)],
            unit="short",
            size=(4, 4),
            options=_stat_options(),
            thresholds=_thresholds((None, "green"), (1, bad)),
            decimals=0,
        )

    panels.append(
        _panel(
            layout,
            kind="stat",
            title="Tasks",
            description="Number of tasks known to the scheduler database.",
            targets=[_target("count(max by (task) (scheduler_task_info))", "A", instant=True)],
            unit="short",
            size=(4, 4),
            options=_stat_options(),
            thresholds=_thresholds((None, "blue")),
            decimals=0,
        )
    )
    panels.append(
        count_stat(
            "Failing tasks",
            "Tasks whose last run failed or timed out, with consecutive failures > 0.",
            f"count(\n  {badge_conditions()['failing']}\n) or vector(0)",
            "red",
        )
    )
    panels.append(
        count_stat(
            "Stuck tasks",
            "Tasks with a run older than their max_runtime.",
            f"count({badge_conditions()['stuck']}) or vector(0)",
            "dark-red",
        )
    )
    panels.append(
        count_stat(
            "Late tasks",
            f"Tasks due more than {LATE_GRACE_SECONDS} s ago that are enabled and neither"
            " running nor paused.",
            f"count(\n  {late_flag_expr()}\n) or vector(0)",
            "orange",
        )
    )
    panels.append(
        count_stat(
            "Paused tasks",
            "Tasks paused with `schedctl pause TASK --reason`; they do not run and do not page.",
            f"count({badge_conditions()['paused']}) or vector(0)",
            "purple",
        )
    )
    panels.append(
        _panel(
            layout,
            kind="stat",
            title="Live scheduler instances",
            description=(
                f"Scheduler instances whose heartbeat is at most {HEARTBEAT_STALE_SECONDS} s old."
                " Zero means no task runs."
            ),
            targets=[
                _target(
                    "count(\n  time()"
                    " - max by (instance_id) (scheduler_instance_last_heartbeat_timestamp_seconds)"
                    f"\n  <= {HEARTBEAT_STALE_SECONDS}\n) or vector(0)",
                    "A",
                    instant=True,
                )
            ],
            unit="short",
            size=(4, 4),
            options=_stat_options(),
            thresholds=_thresholds((None, "red"), (1, "green")),
            decimals=0,
        )
    )

    panels.append(
        _panel(
            layout,
            kind="table",
            title="Tasks",
            description=(
                "One row per task: status badge, next run, last run (start), last duration and"
                " consecutive failures. Click a row to open the schedctl-task dashboard for it."
            ),
            targets=[
                _target(status_expr(), "A", instant=True, table=True),
                _target(
                    "(max by (task) (scheduler_task_next_run_timestamp_seconds) > 0) * 1000",
                    "B",
                    instant=True,
                    table=True,
                ),
                _target(
                    "(max by (task) (scheduler_task_last_start_timestamp_seconds) > 0) * 1000",
                    "C",
                    instant=True,
                    table=True,
                ),
                _target(
                    "max by (task) (scheduler_task_last_duration_seconds)",
                    "D",
                    instant=True,
                    table=True,
                ),
                _target(
                    "max by (task) (scheduler_task_consecutive_failures)",
                    "E",
                    instant=True,
                    table=True,
                ),
            ],
            # Only "last duration" stays numeric: timestamps become time fields and the failure
            # count a string below, because per-column units would need scalar override values.
            unit="s",
            size=(24, 10),
            options=_table_options("task"),
            custom=_table_custom(),
            mappings=_status_mappings(),
            overrides=[_colored_cell_override("status")],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "convertFieldType",
                    "options": {
                        "fields": {},
                        "conversions": [
                            {"targetField": "Value #B", "destinationType": "time"},
                            {"targetField": "Value #C", "destinationType": "time"},
                            {"targetField": "Value #E", "destinationType": "string"},
                        ],
                    },
                },
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #A": True},
                        "indexByName": {
                            "task": 0,
                            "state": 1,
                            "Value #B": 2,
                            "Value #C": 3,
                            "Value #D": 4,
                            "Value #E": 5,
                        },
                        "renameByName": {
                            "state": "status",
                            "Value #B": "next run",
                            "Value #C": "last run",
                            "Value #D": "last duration",
                            "Value #E": "consecutive failures",
                        },
                    },
                },
            ],
            field_links=[
                {
                    **_link(
                        "Open task ${__data.fields.task}",
                        "/d/schedctl-task/schedctl-task?var-task=${__data.fields.task}"
                        "&${datasource:queryparam}&${__url_time_range}",
                        "Task dashboard",
                    ),
                    "targetBlank": False,
                }
            ],
        )
    )

    panels.append(
        _panel(
            layout,
            kind="table",
            title="Scheduler instances",
            description=(
                "Every scheduler instance in the database with its version, state and the age of"
                " its last heartbeat."
            ),
            targets=[
                _target(
                    "max by (instance_id, version, state) (scheduler_instance_info)",
                    "A",
                    instant=True,
                    table=True,
                ),
                _target(
                    "time()"
                    " - max by (instance_id) (scheduler_instance_last_heartbeat_timestamp_seconds)",
                    "B",
                    instant=True,
                    table=True,
                ),
            ],
            unit="s",
            size=(12, 8),
            options=_table_options("instance_id"),
            custom=_table_custom(),
            thresholds=_thresholds((None, "green"), (HEARTBEAT_STALE_SECONDS, "red")),
            overrides=[_colored_cell_override("heartbeat age")],
            transformations=[
                {"id": "merge", "options": {}},
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True, "Value #A": True},
                        "indexByName": {"instance_id": 0, "version": 1, "state": 2, "Value #B": 3},
                        "renameByName": {"Value #B": "heartbeat age"},
                    },
                },
            ],
        )
    )
    panels.append(
        _timeseries_panel(
            layout,
            title="Running runs per instance",
            description="Runs in progress on each scheduler instance.",
            targets=[
                _target(
                    "max by (instance_id) (scheduler_instance_running_runs)",
                    "A",
                    legend="{{instance_id}}",
                )
            ],
            unit="short",
            size=(12, 8),
        )
    )

    panels.append(
        _timeseries_panel(
            layout,
            title="Failure ratio per task",
            description=(
                "Share of each task's runs that ended in failure or timeout. Replicas report the"
                " same persisted counters, so they are deduplicated with max, not summed."
            ),
            targets=[
                _target(
                    "sum by (task) (max by (task, outcome) ("
                    'rate(scheduler_task_runs_total{outcome=~"failure|timeout"}[$__rate_interval])'
                    "))\n/\nsum by (task) (max by (task, outcome) ("
                    "rate(scheduler_task_runs_total[$__rate_interval])))",
                    "A",
                    legend="{{task}}",
                )
            ],
            unit="percentunit",
            size=(12, 8),
        )
    )
    panels.append(
        _timeseries_panel(
            layout,
            title="Runs by outcome",
            description="Finished runs per minute across all tasks, by outcome.",
            targets=[
                _target(
                    "60 * sum by (outcome) (max by (task, outcome) ("
                    "rate(scheduler_task_runs_total[$__rate_interval])))",
                    "A",
                    legend="{{outcome}}",
                )
            ],
            unit="opm",
            size=(12, 8),
            bars=True,
        )
    )

    panels.append(
        _panel(
            layout,
            kind="table",
            title="Open alarms",
            description=(
                "Alarms the scheduler has opened and not yet closed (scheduler_alarm_events):"
                " consecutive failures, stuck or missed runs."
            ),
            targets=[
                _target(
                    "max by (task, kind) (scheduler_alarm_open) == 1",
                    "A",
                    instant=True,
                    table=True,
                )
            ],
            unit="none",
            size=(12, 8),
            options=_table_options("task"),
            custom=_table_custom(),
            no_value="No open alarms",
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True}},
                }
            ],
        )
    )
    panels.append(
        _panel(
            layout,
            kind="table",
            title="Firing Prometheus alerts",
            description=(
                "schedctl alerts (alerts/schedctl-rules.yml) firing in this Prometheus, with their"
                " severity."
            ),
            targets=[
                _target(
                    "max by (alertname, task, instance_id, severity) ("
                    'ALERTS{alertname=~"Scheduler.*", alertstate="firing"})',
                    "A",
                    instant=True,
                    table=True,
                )
            ],
            unit="none",
            size=(12, 8),
            options=_table_options("alertname"),
            custom=_table_custom(),
            no_value="No schedctl alert is firing",
            transformations=[
                {
                    "id": "organize",
                    "options": {"excludeByName": {"Time": True, "Value": True}},
                }
            ],
        )
    )

    return _dashboard(
        uid=OVERVIEW_UID,
        title="schedctl / Overview",
        description="Every schedctl task at a glance, the scheduler instances and open alarms.",
        panels=panels,
        variables=[_datasource_variable()],
    )


# ----------------------------------------------------------------------------------------------
# schedctl-task


def build_task() -> Json:
    """The `schedctl-task` dashboard: one task's state and history, chosen by `$task`."""
    layout = _Layout()
    sel = '{task="$task"}'
    runs_api = "${exporter_url}/api/v1/tasks/${task}/runs"
    api_links = [
        _link(
            "Recent runs and last error (JSON API)",
            runs_api,
            "The exporter's read-only JSON API: run history with error messages",
        )
    ]
    panels: list[Json] = []

    def timestamp_stat(title: str, description: str, metric: str) -> Json:
        return _panel(
            layout,
            kind="stat",
            title=title,
            description=description,
            targets=[_target(f"(max by (task) ({metric}{sel}) > 0) * 1000", "A", instant=True)],
            unit="dateTimeFromNow",
            size=(4, 4),
            options=_stat_options(),
            thresholds=_thresholds((None, "text")),
            no_value="never",
        )

    panels.append(
        _panel(
            layout,
            kind="stat",
            title="Status",
            description=(
                "Status badge: ok, failing, running, stuck, paused, disabled or late"
                f" (due more than {LATE_GRACE_SECONDS} s ago)."
            ),
            targets=[_target(status_expr(sel), "A", instant=True, table=True)],
            unit="none",
            size=(4, 4),
            options=_stat_options(color_mode="background", fields="/^state$/"),
            mappings=_status_mappings(),
        )
    )
    panels.append(
        _panel(
            layout,
            kind="stat",
            title="Last status",
            description=(
                "Outcome of the last finished run. The error text is not a metric label (labels"
                " stay bounded): the panel link opens the run history with its errors."
            ),
            targets=[
                _target(
                    f"max by (status) (scheduler_task_last_status{sel}) == 1",
                    "A",
                    instant=True,
                    legend="{{status}}",
                )
            ],
            unit="none",
            size=(4, 4),
            options=_stat_options(text_mode="name", color_mode="none"),
            links=api_links,
        )
    )
    panels.append(
        _panel(
            layout,
            kind="stat",
            title="Consecutive failures",
            description="Runs that failed or timed out in a row; one success resets it.",
            targets=[
                _target(
                    f"max by (task) (scheduler_task_consecutive_failures{sel})", "A", instant=True
                )
            ],
            unit="short",
            size=(4, 4),
            options=_stat_options(),
            thresholds=_thresholds((None, "green"), (1, "orange"), (3, "red")),
            decimals=0,
        )
    )
    panels.append(
        timestamp_stat(
            "Next run", "When the task is due next.", "scheduler_task_next_run_timestamp_seconds"
        )
    )
    panels.append(
        timestamp_stat(
            "Last run", "When the last run started.", "scheduler_task_last_start_timestamp_seconds"
        )
    )
    panels.append(
        _panel(
            layout,
            kind="stat",
            title="Last duration",
            description="Duration of the last finished run.",
            targets=[
                _target(
                    f"max by (task) (scheduler_task_last_duration_seconds{sel})", "A", instant=True
                )
            ],
            unit="s",
            size=(4, 4),
            options=_stat_options(),
            thresholds=_thresholds((None, "text")),
        )
    )

    def quantiles(metric: str) -> list[Json]:
        return [
            _target(
                f"histogram_quantile({q}, max by (le) (rate({metric}{sel}[$__rate_interval])))",
                ref,
                legend=f"p{round(q * 100)}",
            )
            for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
        ]

    panels.append(
        _timeseries_panel(
            layout,
            title="Run duration percentiles",
            description=(
                "p50 / p90 / p99 of run durations from the persisted histogram, and the task's"
                " max_runtime (runs beyond it are stuck)."
            ),
            targets=[
                *quantiles("scheduler_task_run_duration_seconds_bucket"),
                _target(
                    f"max by (task) (scheduler_task_max_runtime_seconds{sel})",
                    "D",
                    legend="max_runtime",
                ),
            ],
            unit="s",
            size=(12, 8),
        )
    )
    panels.append(
        _timeseries_panel(
            layout,
            title="Start delay percentiles",
            description=(
                "p50 / p90 / p99 of the delay between a run's scheduled time and its start."
            ),
            targets=quantiles("scheduler_task_start_delay_seconds_bucket"),
            unit="s",
            size=(12, 8),
        )
    )
    panels.append(
        _timeseries_panel(
            layout,
            title="Runs by outcome",
            description="Finished runs per minute by outcome (success, failure, timeout, ...).",
            targets=[
                _target(
                    "60 * max by (outcome) ("
                    f"rate(scheduler_task_runs_total{sel}[$__rate_interval]))",
                    "A",
                    legend="{{outcome}}",
                )
            ],
            unit="opm",
            size=(12, 8),
            bars=True,
        )
    )
    panels.append(
        _timeseries_panel(
            layout,
            title="Missed runs",
            description="Scheduled ticks per minute that were missed (scheduler down or busy).",
            targets=[
                _target(
                    "60 * max by (task) ("
                    f"rate(scheduler_task_missed_runs_total{sel}[$__rate_interval]))",
                    "A",
                    legend="missed",
                )
            ],
            unit="opm",
            size=(12, 8),
            bars=True,
            color={"mode": "fixed", "fixedColor": "orange"},
        )
    )
    panels.append(
        _panel(
            layout,
            kind="table",
            title="Recent runs by outcome",
            description=(
                "Runs in the selected time range by outcome. The panel link opens the individual"
                " runs, with error messages, in the exporter's JSON API."
            ),
            targets=[
                _target(
                    f"max by (outcome) (increase(scheduler_task_runs_total{sel}[$__range]))",
                    "A",
                    instant=True,
                    table=True,
                )
            ],
            unit="short",
            size=(12, 8),
            options=_table_options("outcome"),
            custom=_table_custom(),
            decimals=0,
            links=api_links,
            transformations=[
                {
                    "id": "organize",
                    "options": {
                        "excludeByName": {"Time": True},
                        "renameByName": {"Value": "runs"},
                    },
                }
            ],
        )
    )
    panels.append(
        _panel(
            layout,
            kind="timeseries",
            title="Running",
            description="1 while a run of the task is in progress, and whether it is stuck.",
            targets=[
                _target(f"max by (task) (scheduler_task_running{sel})", "A", legend="running"),
                _target(f"max by (task) (scheduler_task_stuck{sel})", "B", legend="stuck"),
            ],
            unit="bool",
            size=(12, 8),
            options=_timeseries_options(),
            custom={**_timeseries_custom(), "lineInterpolation": "stepAfter"},
            color={"mode": "palette-classic"},
        )
    )

    task_variable: Json = {
        "name": "task",
        "label": "Task",
        "type": "query",
        "datasource": DATASOURCE,
        "query": "label_values(scheduler_task_info, task)",
        "refresh": 2,
        "sort": 1,
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "options": [],
        "regex": "",
        "skipUrlSync": False,
    }
    exporter_variable: Json = {
        "name": "exporter_url",
        "label": "Exporter URL",
        "description": "Base URL of the schedctl exporter's JSON API, for the run-history links.",
        "type": "textbox",
        "query": DEFAULT_EXPORTER_URL,
        "current": {"text": DEFAULT_EXPORTER_URL, "value": DEFAULT_EXPORTER_URL},
        "options": [
            {"text": DEFAULT_EXPORTER_URL, "value": DEFAULT_EXPORTER_URL, "selected": True}
        ],
        "hide": 0,
        "skipUrlSync": False,
    }
    return _dashboard(
        uid=TASK_UID,
        title="schedctl / Task",
        description="One schedctl task in depth: state, durations, start delays, outcomes, runs.",
        panels=panels,
        variables=[_datasource_variable(), task_variable, exporter_variable],
    )


# ----------------------------------------------------------------------------------------------
# Public helpers

_BUILDERS: dict[str, Callable[[], Json]] = {OVERVIEW_UID: build_overview, TASK_UID: build_task}


def build_all() -> dict[str, Json]:
    """Every dashboard model by uid."""
    return {uid: build() for uid, build in _BUILDERS.items()}


def render(model: Json) -> str:
    """The exact text committed for a dashboard model."""
    return json.dumps(model, indent=2, ensure_ascii=False) + "\n"


def _iter_panels(panels: list[Json]) -> Iterator[Json]:
    for panel in panels:
        yield panel
        yield from _iter_panels(panel.get("panels", []))


def all_queries() -> list[tuple[str, str, str]]:
    """(dashboard uid, panel title, PromQL expr with Grafana variables) for every panel target."""
    return [
        (uid, panel["title"], target["expr"])
        for uid, model in build_all().items()
        for panel in _iter_panels(model["panels"])
        for target in panel.get("targets", [])
    ]


_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::[\w]+)?\}|\[\[([A-Za-z_]\w*)\]\]|\$([A-Za-z_]\w*)")


def substitute(expr: str, variables: Mapping[str, str]) -> str:
    """Replace Grafana variables (`$task`, `${task}`, `$__rate_interval`, ...) with values.

    Keys are variable names without `$`, e.g. {"task": "backup", "__rate_interval": "1m",
    "__range": "1h"}. Raises KeyError naming the variable when a value is missing, so a query
    is never sent with a variable left in it.
    """

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group is not None)
        if name not in variables:
            raise KeyError(f"no value for Grafana variable ${name} in: {expr}")
        return variables[name]

    return _VARIABLE.sub(replace, expr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.build", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a committed file is not current"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent, help="output directory"
    )
    args = parser.parse_args(argv)
    stale = []
    for uid, model in build_all().items():
        path = args.out / DASHBOARD_FILES[uid]
        text = render(model)
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"{path} is not current: run python -m dashboards.build", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
