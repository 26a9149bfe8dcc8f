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
from scheduler_core.alert_policy import MIN_RUNS_FOR_USUAL, THRESHOLD_KINDS

__all__ = [
    "CONSECUTIVE_FAILURES",
    "DASHBOARD_FILES",
    "HEARTBEAT_STALE_SECONDS",
    "LATE_GRACE_SECONDS",
    "NO_SUCCESS_INTERVALS",
    "NO_SUCCESS_SLACK_SECONDS",
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
# The global thresholds a task's alerts: block overrides (schedctl:threshold:consecutive_failures,
# :no_success_intervals and :no_success_slack_seconds), for the overview's thresholds table.
CONSECUTIVE_FAILURES = 3
NO_SUCCESS_INTERVALS = 2
NO_SUCCESS_SLACK_SECONDS = 120

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


def _instant(
    expr: str, ref_id: str = "A", *, legend: str | None = None, table: bool = False
) -> Json:
    """An instant query: the panel shows the latest value only."""
    return _target(expr, ref_id, legend=legend, instant=True, table=table)


def _by_task(metric: str, selector: str = "") -> str:
    """PromQL: ``metric`` one series per task (exporter replicas deduplicated with max)."""
    return f"max by (task) ({metric}{selector})"


def _timestamp_ms(metric: str, selector: str = "") -> str:
    """PromQL: a per-task epoch-seconds ``metric`` in milliseconds, absent while it is 0."""
    return f"({_by_task(metric, selector)} > 0) * 1000"


def _organize(
    *, exclude: list[str], index: list[str] | None = None, rename: dict[str, str] | None = None
) -> Json:
    """The `organize` transformation: hide ``exclude``, order by ``index``, ``rename``."""
    options: Json = {"excludeByName": dict.fromkeys(exclude, True)}
    if index is not None:
        options["indexByName"] = {name: position for position, name in enumerate(index)}
    if rename is not None:
        options["renameByName"] = rename
    return {"id": "organize", "options": options}


def _merge() -> Json:
    """The `merge` transformation: one table of several queries' frames, joined on labels."""
    return {"id": "merge", "options": {}}


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
    layout: _Layout,
    *,
    bars: bool = False,
    steps: bool = False,
    color: Json | None = None,
    **fields: Any,
) -> Json:
    """A half-width time-series panel with the dashboards' common options and legend (lines,
    step lines or bars)."""
    return _panel(
        layout,
        kind="timeseries",
        size=(12, 8),
        options=_timeseries_options(),
        custom=_timeseries_custom(bars=bars, steps=steps),
        color=color or {"mode": "palette-classic"},
        **fields,
    )


def _stat_panel(layout: _Layout, *, options: Json | None = None, **fields: Any) -> Json:
    """A small stat panel (4 x 4), by default showing the last value in its threshold colour."""
    return _panel(layout, kind="stat", size=(4, 4), options=options or _stat_options(), **fields)


def _text_stat(layout: _Layout, *, options: Json, **fields: Any) -> Json:
    """A stat panel showing a label or a mapped value rather than a number."""
    return _stat_panel(layout, unit="none", options=options, **fields)


def _table_panel(
    layout: _Layout, *, sort_by: str, size: tuple[int, int] = (12, 8), **fields: Any
) -> Json:
    """A table panel sorted by column ``sort_by``, with the dashboards' common cell options."""
    return _panel(
        layout,
        kind="table",
        size=size,
        options=_table_options(sort_by),
        custom=_table_custom(),
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


def _timeseries_custom(*, bars: bool = False, steps: bool = False) -> Json:
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if bars else "none", "group": "A"},
        "axisPlacement": "auto",
    }
    if steps:
        custom["lineInterpolation"] = "stepAfter"
    return custom


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

#: What the overview's count of tasks with each alarming badge counts; the panel is titled
#: after the badge and turns the badge's colour when the count is not zero.
BADGE_COUNT_DESCRIPTIONS: dict[states.Badge, str] = {
    "failing": "Tasks whose last run failed or timed out, with consecutive failures > 0.",
    "stuck": "Tasks with a run older than their max_runtime.",
    "late": f"Tasks due more than {LATE_GRACE_SECONDS} s ago that are enabled and neither"
    " running nor paused.",
    "paused": "Tasks paused with `schedctl pause TASK --reason`; they do not run and do not page.",
}

#: PromQL: seconds since each scheduler instance's last heartbeat.
HEARTBEAT_AGE = (
    "time() - max by (instance_id) (scheduler_instance_last_heartbeat_timestamp_seconds)"
)


def _count_stat(layout: _Layout, title: str, description: str, expr: str, thresholds: Json) -> Json:
    """A stat panel showing a whole count, coloured by ``thresholds``."""
    return _stat_panel(
        layout,
        title=title,
        description=description,
        targets=[_instant(expr)],
        unit="short",
        thresholds=thresholds,
        decimals=0,
    )


def _badge_count_expr(badge: states.Badge) -> str:
    """PromQL counting the tasks with ``badge`` (0 rather than nothing when there is none);
    for ``late`` the flag, whatever the badge. A condition joining series goes on its own line."""
    condition = late_flag_expr() if badge == "late" else badge_conditions()[badge]
    inner = f"\n  {condition}\n" if " on (task) " in condition else condition
    return f"count({inner}) or vector(0)"


def _overview_counts(layout: _Layout) -> list[Json]:
    """The overview's top row: tasks, tasks by alarming badge, live scheduler instances."""
    live = f"count(\n  {HEARTBEAT_AGE}\n  <= {HEARTBEAT_STALE_SECONDS}\n) or vector(0)"
    return [
        _count_stat(
            layout,
            "Tasks",
            "Number of tasks known to the scheduler database.",
            "count(max by (task) (scheduler_task_info))",
            _thresholds((None, "blue")),
        ),
        *(
            _count_stat(
                layout,
                f"{badge.capitalize()} tasks",
                description,
                _badge_count_expr(badge),
                _thresholds((None, "green"), (1, STATUS_COLORS[badge])),
            )
            for badge, description in BADGE_COUNT_DESCRIPTIONS.items()
        ),
        _count_stat(
            layout,
            "Live scheduler instances",
            f"Scheduler instances whose heartbeat is at most {HEARTBEAT_STALE_SECONDS} s old."
            " Zero means no task runs.",
            live,
            _thresholds((None, "red"), (1, "green")),
        ),
    ]


def _alert_threshold(key: str, selector: str = "") -> str:
    """PromQL: per task, the threshold its alerts: block sets for the field ``key`` (a key of
    scheduler_core.alert_policy.THRESHOLD_KINDS); no series where the task sets none."""
    return _by_task(
        "scheduler_task_alert_threshold", _selector(selector, f'kind="{THRESHOLD_KINDS[key]}"')
    )


#: The overview's thresholds table: (alerts: field, column title) per threshold kind.
THRESHOLD_COLUMNS: tuple[tuple[str, str], ...] = (
    ("failures", "failures"),
    ("late_after", "late after (s)"),
    ("no_success_for", "no success for (s)"),
    ("min_duration", "min duration (s)"),
    ("max_duration", "max duration (s)"),
    ("slower_than_usual", "slower than usual (x median)"),
)
assert {key for key, _ in THRESHOLD_COLUMNS} == set(THRESHOLD_KINDS), "a column per kind"


def _overview_thresholds_table(layout: _Layout) -> Json:
    """One row per task: the alert thresholds its alerts: block sets, "default" elsewhere."""
    # Query A lists every task; "Value #X" is the threshold of query X, absent (null, shown
    # as "default") where the task sets none; "severity" is the policy info's label.
    refs = "BCDEFG"
    values = {
        f"Value #{ref}": title for ref, (_, title) in zip(refs, THRESHOLD_COLUMNS, strict=True)
    }
    return _table_panel(
        layout,
        sort_by="task",
        size=(24, 8),
        title="Alert thresholds per task",
        description=(
            "The thresholds each task's alerts: block sets (scheduler_task_alert_threshold,"
            ' durations in seconds) and the severity it gives its alerts. "default" means the'
            " task sets none and the global value applies (the schedctl:threshold:* rules in"
            f" alerts/schedctl-rules.yml): {CONSECUTIVE_FAILURES} failures in a row, late after"
            f" {LATE_GRACE_SECONDS} s, no success for {NO_SUCCESS_INTERVALS} expected intervals"
            f" plus {NO_SUCCESS_SLACK_SECONDS} s, no duration check, each alert's own severity."
            " A threshold column shows once some task sets it."
        ),
        targets=[
            _instant(_by_task("scheduler_task_info"), table=True),
            *(
                _instant(_alert_threshold(key), ref, table=True)
                for ref, (key, _) in zip(refs, THRESHOLD_COLUMNS, strict=True)
            ),
            _instant("max by (task, severity) (scheduler_task_alert_policy_info)", "H", table=True),
        ],
        unit="none",
        # Strings (task names, severities) are never null, so only empty cells say "default".
        mappings=[
            {
                "type": "special",
                "options": {"match": "null", "result": {"text": "default", "index": 0}},
            }
        ],
        transformations=[
            _merge(),
            _organize(
                exclude=["Time", "Value #A", "Value #H"],
                index=["task", *values, "severity"],
                rename=values,
            ),
        ],
    )


def _overview_tasks_table(layout: _Layout) -> Json:
    """One row per task, each linking to the task dashboard."""
    # Column "Value #X" comes from query X; "state" is the status query's label.
    columns = {
        "B": ("next run", _timestamp_ms("scheduler_task_next_run_timestamp_seconds"), "time"),
        "C": ("last run", _timestamp_ms("scheduler_task_last_start_timestamp_seconds"), "time"),
        "D": ("last duration", _by_task("scheduler_task_last_duration_seconds"), None),
        "E": ("consecutive failures", _by_task("scheduler_task_consecutive_failures"), "string"),
    }
    values = {f"Value #{ref}": column for ref, column in columns.items()}
    return _table_panel(
        layout,
        sort_by="task",
        title="Tasks",
        description=(
            "One row per task: status badge, next run, last run (start), last duration and"
            " consecutive failures. Click a row to open the schedctl-task dashboard for it."
        ),
        targets=[
            _instant(status_expr(), table=True),
            *(_instant(expr, ref, table=True) for ref, (_, expr, _) in columns.items()),
        ],
        # Only "last duration" stays numeric: timestamps become time fields and the failure
        # count a string below, because per-column units would need scalar override values.
        unit="s",
        size=(24, 10),
        mappings=_status_mappings(),
        overrides=[_colored_cell_override("status")],
        transformations=[
            _merge(),
            {
                "id": "convertFieldType",
                "options": {
                    "fields": {},
                    "conversions": [
                        {"targetField": field, "destinationType": kind}
                        for field, (_, _, kind) in values.items()
                        if kind is not None
                    ],
                },
            },
            _organize(
                exclude=["Time", "Value #A"],
                index=["task", "state", *values],
                rename={"state": "status", **{field: c[0] for field, c in values.items()}},
            ),
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


def _overview_instances(layout: _Layout) -> list[Json]:
    """The scheduler instances: a table with their heartbeat age, their running runs."""
    table = _table_panel(
        layout,
        sort_by="instance_id",
        title="Scheduler instances",
        description=(
            "Every scheduler instance in the database with its version, state and the age of"
            " its last heartbeat."
        ),
        targets=[
            _instant("max by (instance_id, version, state) (scheduler_instance_info)", table=True),
            _instant(HEARTBEAT_AGE, "B", table=True),
        ],
        unit="s",
        thresholds=_thresholds((None, "green"), (HEARTBEAT_STALE_SECONDS, "red")),
        overrides=[_colored_cell_override("heartbeat age")],
        transformations=[
            _merge(),
            _organize(
                exclude=["Time", "Value #A"],
                index=["instance_id", "version", "state", "Value #B"],
                rename={"Value #B": "heartbeat age"},
            ),
        ],
    )
    running = _timeseries_panel(
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
    )
    return [table, running]


def _overview_trends(layout: _Layout) -> list[Json]:
    """Failure ratio per task and finished runs by outcome, across all tasks."""
    rate = "rate(scheduler_task_runs_total{selector}[$__rate_interval])"
    failed = rate.format(selector='{outcome=~"failure|timeout"}')
    every = rate.format(selector="")
    return [
        _timeseries_panel(
            layout,
            title="Failure ratio per task",
            description=(
                "Share of each task's runs that ended in failure or timeout. Replicas report the"
                " same persisted counters, so they are deduplicated with max, not summed."
            ),
            targets=[
                _target(
                    f"sum by (task) (max by (task, outcome) ({failed}))\n/\n"
                    f"sum by (task) (max by (task, outcome) ({every}))",
                    "A",
                    legend="{{task}}",
                )
            ],
            unit="percentunit",
        ),
        _timeseries_panel(
            layout,
            title="Runs by outcome",
            description="Finished runs per minute across all tasks, by outcome.",
            targets=[
                _target(
                    f"60 * sum by (outcome) (max by (task, outcome) ({every}))",
                    "A",
                    legend="{{outcome}}",
                )
            ],
            unit="opm",
            bars=True,
        ),
    ]


def _alarm_table(
    layout: _Layout, *, title: str, description: str, expr: str, sort_by: str, no_value: str
) -> Json:
    """A table of what is open or firing now, one row per label set, the value hidden."""
    return _table_panel(
        layout,
        sort_by=sort_by,
        title=title,
        description=description,
        targets=[_instant(expr, table=True)],
        unit="none",
        no_value=no_value,
        transformations=[_organize(exclude=["Time", "Value"])],
    )


def build_overview() -> Json:
    """The `schedctl-overview` dashboard: every task's state, the instances, failure rates."""
    layout = _Layout()
    panels = [
        *_overview_counts(layout),
        _overview_tasks_table(layout),
        *_overview_instances(layout),
        *_overview_trends(layout),
        _alarm_table(
            layout,
            title="Open alarms",
            description=(
                "Alarms the scheduler has opened and not yet closed (scheduler_alarm_events):"
                " consecutive failures, stuck or missed runs, and for tasks with an alerts: block"
                " too fast or slow runs and missed deadlines."
            ),
            expr="max by (task, kind) (scheduler_alarm_open) == 1",
            sort_by="task",
            no_value="No open alarms",
        ),
        _alarm_table(
            layout,
            title="Firing Prometheus alerts",
            description=(
                "schedctl alerts (alerts/schedctl-rules.yml) firing in this Prometheus, with their"
                " severity."
            ),
            expr="max by (alertname, task, instance_id, severity) ("
            'ALERTS{alertname=~"Scheduler.*", alertstate="firing"})',
            sort_by="alertname",
            no_value="No schedctl alert is firing",
        ),
        _overview_thresholds_table(layout),
    ]
    return _dashboard(
        uid=OVERVIEW_UID,
        title="schedctl / Overview",
        description="Every schedctl task at a glance, the scheduler instances and open alarms.",
        panels=panels,
        variables=[_datasource_variable()],
    )


# ----------------------------------------------------------------------------------------------
# schedctl-task

TASK_SELECTOR = '{task="$task"}'


def _runs_api_links() -> list[Json]:
    """The panel link to the task's run history, with errors, in the exporter's JSON API."""
    return [
        _link(
            "Recent runs, errors and output (JSON API)",
            "${exporter_url}/api/v1/tasks/${task}/runs",
            "The exporter's read-only JSON API: run history with error messages; each run's"
            " output_url opens what it printed or logged",
        )
    ]


def _task_value_stat(
    layout: _Layout, title: str, description: str, metric: str, **fields: Any
) -> Json:
    """A stat panel of the task's current value of the gauge ``metric``."""
    return _stat_panel(
        layout,
        title=title,
        description=description,
        targets=[_instant(_by_task(metric, TASK_SELECTOR))],
        **fields,
    )


def _task_state(layout: _Layout) -> list[Json]:
    """The task's status badge, last outcome and consecutive failures."""
    return [
        _text_stat(
            layout,
            title="Status",
            description=(
                "Status badge: ok, failing, running, stuck, paused, disabled or late"
                f" (due more than {LATE_GRACE_SECONDS} s ago)."
            ),
            targets=[_instant(status_expr(TASK_SELECTOR), table=True)],
            options=_stat_options(color_mode="background", fields="/^state$/"),
            mappings=_status_mappings(),
        ),
        _text_stat(
            layout,
            title="Last status",
            description=(
                "Outcome of the last finished run. The error text is not a metric label (labels"
                " stay bounded): the panel link opens the run history with its errors."
            ),
            targets=[
                _instant(
                    f"max by (status) (scheduler_task_last_status{TASK_SELECTOR}) == 1",
                    legend="{{status}}",
                )
            ],
            options=_stat_options(text_mode="name", color_mode="none"),
            links=_runs_api_links(),
        ),
        _task_value_stat(
            layout,
            "Consecutive failures",
            "Runs that failed or timed out in a row; one success resets it.",
            "scheduler_task_consecutive_failures",
            unit="short",
            thresholds=_thresholds((None, "green"), (1, "orange"), (3, "red")),
            decimals=0,
        ),
    ]


def _task_timing(layout: _Layout) -> list[Json]:
    """When the task is due next, when it last ran and for how long."""

    def timestamp_stat(title: str, description: str, metric: str) -> Json:
        return _stat_panel(
            layout,
            title=title,
            description=description,
            targets=[_instant(_timestamp_ms(metric, TASK_SELECTOR))],
            unit="dateTimeFromNow",
            thresholds=_thresholds((None, "text")),
            no_value="never",
        )

    return [
        timestamp_stat(
            "Next run", "When the task is due next.", "scheduler_task_next_run_timestamp_seconds"
        ),
        timestamp_stat(
            "Last run", "When the last run started.", "scheduler_task_last_start_timestamp_seconds"
        ),
        _task_value_stat(
            layout,
            "Last duration",
            "Duration of the last finished run.",
            "scheduler_task_last_duration_seconds",
            unit="s",
            thresholds=_thresholds((None, "text")),
        ),
    ]


def _quantiles(metric: str) -> list[Json]:
    """p50 / p90 / p99 of the task's histogram ``metric`` (its ``_bucket`` series)."""
    rate = f"rate({metric}{TASK_SELECTOR}[$__rate_interval])"
    return [
        _target(
            f"histogram_quantile({q}, max by (le) ({rate}))",
            ref,
            legend=f"p{round(q * 100)}",
        )
        for q, ref in ((0.5, "A"), (0.9, "B"), (0.99, "C"))
    ]


def _percentiles_panel(layout: _Layout, title: str, what: str, metric: str, *extra: Json) -> Json:
    """p50 / p90 / p99 (seconds) of ``what``: the task's histogram ``metric``, and ``extra``."""
    return _timeseries_panel(
        layout,
        title=title,
        description=f"p50 / p90 / p99 of {what}",
        targets=[*_quantiles(metric), *extra],
        unit="s",
    )


def _task_latencies(layout: _Layout) -> list[Json]:
    """Percentiles of the task's run durations and of its start delays."""
    max_runtime = _by_task("scheduler_task_max_runtime_seconds", TASK_SELECTOR)
    return [
        _percentiles_panel(
            layout,
            "Run duration percentiles",
            "run durations from the persisted histogram, and the task's max_runtime"
            " (runs beyond it are stuck).",
            "scheduler_task_run_duration_seconds_bucket",
            _target(max_runtime, "D", legend="max_runtime"),
        ),
        _percentiles_panel(
            layout,
            "Start delay percentiles",
            "the delay between a run's scheduled time and its start.",
            "scheduler_task_start_delay_seconds_bucket",
        ),
    ]


def _task_alerting(layout: _Layout) -> list[Json]:
    """The task's run durations against the bounds of its alerts: block, and its alarms."""
    buckets = f"scheduler_task_run_duration_seconds_bucket{TASK_SELECTOR}"
    # Over every persisted run, as "slower than usual" judges (scheduler_core.alert_policy).
    median = f"histogram_quantile(0.5, max by (le) ({buckets}))"
    all_runs = _selector(TASK_SELECTOR, 'le="+Inf"')
    runs = _by_task("scheduler_task_run_duration_seconds_bucket", all_runs)
    factor = _alert_threshold("slower_than_usual", TASK_SELECTOR)
    usual_bound = f"{median}\n* on () {factor}\nand on () ({runs} >= {MIN_RUNS_FOR_USUAL})"
    return [
        _timeseries_panel(
            layout,
            title="Run duration against its alert thresholds",
            description=(
                "The last finished run's duration, the median of all the task's runs (from the"
                " persisted histogram) and the bounds its alerts: block sets: min_duration (a"
                " faster success is suspicious), max_duration, and slower_than_usual times the"
                f" median, once the task has {MIN_RUNS_FOR_USUAL} runs. A bound the task does"
                " not set is not drawn."
            ),
            targets=[
                _target(
                    _by_task("scheduler_task_last_duration_seconds", TASK_SELECTOR),
                    "A",
                    legend="last run",
                ),
                _target(median, "B", legend="median"),
                _target(
                    _alert_threshold("min_duration", TASK_SELECTOR), "C", legend="min_duration"
                ),
                _target(
                    _alert_threshold("max_duration", TASK_SELECTOR), "D", legend="max_duration"
                ),
                _target(usual_bound, "E", legend="slower_than_usual x median"),
            ],
            unit="s",
        ),
        _timeseries_panel(
            layout,
            title="Alarms",
            description=(
                "1 while the scheduler has an alarm of the kind open for the task: consecutive"
                " failures, stuck, missed, and with an alerts: block too_fast, slow and"
                " deadline_missed."
            ),
            targets=[
                _target(
                    f"max by (kind) (scheduler_alarm_open{TASK_SELECTOR})", "A", legend="{{kind}}"
                )
            ],
            unit="bool",
            steps=True,
        ),
    ]


def _task_runs(layout: _Layout) -> list[Json]:
    """The task's finished runs by outcome, its missed runs, the runs in the time range."""
    runs = f"scheduler_task_runs_total{TASK_SELECTOR}"
    return [
        _timeseries_panel(
            layout,
            title="Runs by outcome",
            description="Finished runs per minute by outcome (success, failure, timeout, ...).",
            targets=[
                _target(
                    f"60 * max by (outcome) (rate({runs}[$__rate_interval]))",
                    "A",
                    legend="{{outcome}}",
                )
            ],
            unit="opm",
            bars=True,
        ),
        _timeseries_panel(
            layout,
            title="Missed runs",
            description="Scheduled ticks per minute that were missed (scheduler down or busy).",
            targets=[
                _target(
                    "60 * max by (task) ("
                    f"rate(scheduler_task_missed_runs_total{TASK_SELECTOR}[$__rate_interval]))",
                    "A",
                    legend="missed",
                )
            ],
            unit="opm",
            bars=True,
            color={"mode": "fixed", "fixedColor": "orange"},
        ),
        _table_panel(
            layout,
            sort_by="outcome",
            title="Recent runs by outcome",
            description=(
                "Runs in the selected time range by outcome. The panel link opens the individual"
                " runs, with error messages, in the exporter's JSON API."
            ),
            targets=[
                _instant(
                    f"max by (outcome) (increase({runs}[$__range]))",
                    table=True,
                )
            ],
            unit="short",
            decimals=0,
            links=_runs_api_links(),
            transformations=[_organize(exclude=["Time"], rename={"Value": "runs"})],
        ),
    ]


def _task_running(layout: _Layout) -> Json:
    """Whether a run of the task is in progress, and whether it is stuck."""
    return _timeseries_panel(
        layout,
        title="Running",
        description="1 while a run of the task is in progress, and whether it is stuck.",
        targets=[
            _target(_by_task("scheduler_task_running", TASK_SELECTOR), "A", legend="running"),
            _target(_by_task("scheduler_task_stuck", TASK_SELECTOR), "B", legend="stuck"),
        ],
        unit="bool",
        steps=True,
    )


def _task_variables() -> list[Json]:
    """The data source, the task (from the scheduler's metrics) and the exporter's URL."""
    task: Json = {
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
    url = {"text": DEFAULT_EXPORTER_URL, "value": DEFAULT_EXPORTER_URL}
    exporter: Json = {
        "name": "exporter_url",
        "label": "Exporter URL",
        "description": "Base URL of the schedctl exporter's JSON API, for the run-history links.",
        "type": "textbox",
        "query": DEFAULT_EXPORTER_URL,
        "current": url,
        "options": [{**url, "selected": True}],
        "hide": 0,
        "skipUrlSync": False,
    }
    return [_datasource_variable(), task, exporter]


def build_task() -> Json:
    """The `schedctl-task` dashboard: one task's state and history, chosen by `$task`."""
    layout = _Layout()
    panels = [
        *_task_state(layout),
        *_task_timing(layout),
        *_task_latencies(layout),
        *_task_alerting(layout),
        *_task_runs(layout),
        _task_running(layout),
    ]
    return _dashboard(
        uid=TASK_UID,
        title="schedctl / Task",
        description=(
            "One schedctl task in depth: state, durations against its alert thresholds, alarms,"
            " start delays, outcomes, runs."
        ),
        panels=panels,
        variables=_task_variables(),
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
