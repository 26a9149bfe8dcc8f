"""The task page (``GET /ui/tasks/{name}``): the task's state from the snapshot (the same
badge as ``/api/v1/status``), its stored definition and source, its policies and alert
thresholds, the last error, and its runs, newest first, 20 a page, each linking to its run
page. With the admin API on and an admin signed in: run now, pause, resume.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from exporter.ui.layout import Frame, page
from exporter.ui.markup import Markup, html, join, path_part, query_string
from exporter.ui.parts import badge, grafana_task_url, run_href, task_href
from exporter.ui.reads import TaskDetails
from exporter.ui.timefmt import duration, time_cell
from scheduler_core.alert_policy import THRESHOLD_KINDS, AlertPolicy
from scheduler_core.store.snapshot import TaskSnapshot

__all__ = ["render_task_page", "render_unknown_task"]

#: Values of these definition keys are not shown (environment variables may hold secrets).
_HIDDEN_VALUES = frozenset({"env"})
_ERROR_PREVIEW = 120


def _pairs(rows: list[tuple[str, Markup | str]], table_id: str) -> Markup:
    body = join(html("<tr><th>{k}</th><td>{v}</td></tr>", k=k, v=v) for k, v in rows)
    return html('<table class="pairs" id="{id}"><tbody>{b}</tbody></table>', id=table_id, b=body)


def _state(task: TaskSnapshot, now: datetime) -> Markup:
    paused = "no"
    if task.paused:
        paused = f"yes, by {task.paused_by or 'unknown'}: {task.pause_reason or '(no reason)'}"
    totals = ", ".join(f"{k} {v}" for k, v in sorted(task.runs_total.items()) if v) or "none yet"
    rows: list[tuple[str, Markup | str]] = [
        ("Badge", badge(task.badge)),
        ("Enabled", "yes" if task.enabled else "no"),
        ("Paused", paused),
        ("Paused at", time_cell(task.paused_at, now)),
        ("Running now", str(task.running) + (" (stuck)" if task.stuck else "")),
        ("Next run", time_cell(task.next_run_at, now)),
        ("Last started", time_cell(task.last_started_at, now)),
        ("Last finished", time_cell(task.last_finished_at, now)),
        ("Last status", task.last_status or "\u2014"),
        ("Last duration", duration(task.last_duration_seconds)),
        ("Last success", time_cell(task.last_success_at, now)),
        ("Last failure", time_cell(task.last_failure_at, now)),
        ("Failures in a row", str(task.consecutive_failures)),
        ("Open alarms", ", ".join(sorted(task.open_alarms)) or "none"),
        ("Runs by outcome", totals),
        ("Missed runs", str(task.missed_runs_total)),
    ]
    return _pairs(rows, "task-state")


def _shown_value(key: str, value: Any) -> str:
    if key in _HIDDEN_VALUES and isinstance(value, Mapping):
        return json.dumps(dict.fromkeys(value, "(hidden)"))
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _definition(task: TaskSnapshot, details: TaskDetails) -> Markup:
    rows: list[tuple[str, Markup | str]] = [
        ("Source", details.source or "\u2014"),
        ("Schedule", f"{task.schedule} ({task.schedule_type}, {task.timezone})"),
        ("Action", task.action_kind),
        ("Max runtime", duration(task.max_runtime_seconds)),
        ("Expected interval", duration(task.expected_interval_seconds)),
    ]
    stored = details.definition or {}
    kept = [
        (key, _shown_value(key, stored[key]))
        for key in sorted(stored)
        if key != "name" and stored[key] not in (None, "", [], {})
    ]
    as_stored = _pairs(kept, "task-stored") if kept else html('<p class="none">Not read.</p>')
    return html(
        "{derived}<h3>As stored (the keys set, policies included)</h3>{stored}",
        derived=_pairs(rows, "task-definition"), stored=as_stored,
    )  # fmt: skip


def _thresholds(policy: AlertPolicy | None, deadline_missed: bool | None) -> Markup:
    if policy is None or policy.is_empty():
        return html(
            '<p class="none" id="task-alerts">No <code>alerts:</code> block: the global '
            "thresholds of the shipped rules apply (alerts/schedctl-rules.yml).</p>"
        )
    rows: list[tuple[str, Markup | str]] = []
    for key in THRESHOLD_KINDS:
        value = getattr(policy, key)
        if value is None:
            continue
        if key == "failures":
            rows.append((key, f"{value} in a row"))
        elif key == "slower_than_usual":
            rows.append((key, f"{value:g}\u00d7 the median duration"))
        else:
            rows.append((key, duration(value)))
    if policy.deadline is not None:
        zone = policy.deadline.timezone or "the task's time zone"
        missed = {None: "", True: " \u2014 missed", False: " \u2014 met"}[deadline_missed]
        rows.append(("deadline", f"{policy.deadline.at.isoformat('minutes')} {zone}{missed}"))
    if policy.severity is not None:
        rows.append(("severity", policy.severity))
    return _pairs(rows, "task-alerts")


def _runs(task: TaskSnapshot, details: TaskDetails, now: datetime) -> Markup:
    def row(run: dict[str, Any]) -> Markup:
        error = run.get("error_message") or ""
        preview = error if len(error) <= _ERROR_PREVIEW else error[:_ERROR_PREVIEW] + "\u2026"
        return html(
            '<tr data-run="{id}"><td><a href="{href}">#{id}</a></td>'
            '<td><span class="status s-{status}">{status}</span></td><td>{trigger}</td>'
            '<td class="num">{attempt}</td><td>{scheduled}</td><td>{started}</td>'
            '<td class="num">{dur}</td><td>{instance}</td><td class="error-cell">{error}</td></tr>',
            id=run["id"], href=run_href(run["id"]), status=run["status"], trigger=run["trigger"],
            attempt=run["attempt"], scheduled=time_cell(run["scheduled_for"], now),
            started=time_cell(run["started_at"], now), dur=duration(run["duration_seconds"]),
            instance=run["instance_id"] or "", error=preview,
        )  # fmt: skip

    base = task_href(task.name)
    links: list[Markup] = []
    if details.runs_page > 1:
        target = base + query_string({"runs": details.runs_page - 1})
        links.append(html('<a rel="prev" id="runs-newer" href="{h}">\u2190 newer</a>', h=target))
    links.append(html("<span>page {p}</span>", p=details.runs_page))
    if details.more_runs:
        target = base + query_string({"runs": details.runs_page + 1})
        links.append(html('<a rel="next" id="runs-older" href="{h}">older \u2192</a>', h=target))
    pager = html('<nav class="pager" aria-label="run pages">{l}</nav>', l=join(links))
    if not details.runs:
        return html('<p class="none" id="no-runs">No runs on this page.</p>{p}', p=pager)
    return html(
        '<table class="grid" id="runs"><thead><tr><th>Run</th><th>Status</th><th>Trigger</th>'
        '<th class="num">Attempt</th><th>Scheduled for</th><th>Started</th>'
        '<th class="num">Duration</th><th>Instance</th><th>Error</th></tr></thead>'
        "<tbody>{rows}</tbody></table>{pager}",
        rows=join(row(r) for r in details.runs), pager=pager,
    )  # fmt: skip


def _actions(task: TaskSnapshot) -> Markup:
    query = "?task=" + path_part(task.name)
    buttons = [html('<a class="button" id="action-run-now" href="/ui/confirm/run-now{q}">'
                    "Run now\u2026</a>", q=query)]  # fmt: skip
    if task.paused:
        buttons.append(html('<a class="button" id="action-resume" href="/ui/confirm/resume{q}">'
                            "Resume\u2026</a>", q=query))  # fmt: skip
    else:
        buttons.append(html('<a class="button" id="action-pause" href="/ui/confirm/pause{q}">'
                            "Pause\u2026</a>", q=query))  # fmt: skip
    return html('<div class="actions">{b}</div>', b=join(buttons))


def render_task_page(
    task: TaskSnapshot, details: TaskDetails, frame: Frame, *, may_act: bool
) -> str:
    """The whole page of ``task``."""
    now = frame.now
    grafana = Markup("")
    if frame.grafana_url:
        grafana = html(' <a class="small" href="{u}" rel="noopener">Grafana dashboard</a>',
                       u=grafana_task_url(frame.grafana_url, task.name))  # fmt: skip
    problem = Markup("")
    if details.problem:
        problem = html('<div class="banner warn" id="task-problem">Not shown: {p}.</div>',
                       p=details.problem)  # fmt: skip
    error = Markup("")
    if task.last_error_message:
        error = html('<h2>Last error</h2><pre class="error" id="last-error">{e}</pre>',
                     e=task.last_error_message)  # fmt: skip
    content = html(
        '<p class="crumbs"><a href="/">Tasks</a> /</p>'
        '<h1 id="task-name">{name}</h1>'
        '<div id="task-live" data-live><div class="headline">{badge}{grafana}{actions}</div>'
        "{problem}{error}<h2>Recent runs</h2>{runs}<div class=\"columns\">"
        "<section><h2>State</h2>{state}</section>"
        "<section><h2>Definition and policies</h2>{definition}"
        "<h2>Alert thresholds</h2>{alerts}</section></div></div>",
        name=task.name, badge=badge(task.badge), grafana=grafana,
        actions=_actions(task) if may_act else Markup(""), problem=problem,
        state=_state(task, now), definition=_definition(task, details),
        alerts=_thresholds(task.alert_policy, task.deadline_missed), error=error,
        runs=_runs(task, details, now),
    )  # fmt: skip
    return page(task.name, content, frame)


def render_unknown_task(name: str, frame: Frame) -> str:
    """The page of a name the snapshot does not hold (yet, or any more)."""
    content = html(
        '<p class="crumbs"><a href="/">Tasks</a> /</p><h1>{name}</h1>'
        '<p class="banner warn" id="unknown-task">No task of this name in the data read '
        "{age}. A task created a moment ago appears after the next refresh.</p>",
        name=name, age="last" if frame.state.snapshot is not None else "yet",
    )  # fmt: skip
    return page(name, content, frame)
