"""The tasks page (``GET /``): every task with its badge, schedule, next and last run,
failures, pause reason and open alarms; failing and stuck tasks first; a filter by badge and
by name; 100 tasks a page; then the scheduler instances with the age of their heartbeats.

Rendered from the exporter's snapshot alone: no SQL per request, whatever the task count.
"""

from __future__ import annotations

from datetime import datetime

from exporter.refresh import RefreshState
from exporter.ui.layout import Frame, page
from exporter.ui.listing import BADGE_ORDER, Listing, ListingQuery, TaskOrder
from exporter.ui.markup import Markup, html, join, query_string
from exporter.ui.parts import badge, task_href
from exporter.ui.timefmt import absolute, age, duration, time_cell
from scheduler_core.store.snapshot import InstanceSnapshot, Snapshot, TaskSnapshot

__all__ = ["render_tasks_page"]

#: Characters of a last error shown under a task's name (the task page shows it all).
_ERROR_PREVIEW = 160


def _schedule(task: TaskSnapshot) -> Markup:
    zone = "" if task.timezone in ("UTC", "") else task.timezone
    return html(
        '<code>{expr}</code><small>{zone}</small>',
        expr=task.schedule, zone=zone,
    )  # fmt: skip


def _last_run(task: TaskSnapshot, now: datetime) -> Markup:
    when = task.last_finished_at or task.last_started_at
    if when is None:
        return html('<span class="none">never</span>')
    status = task.last_status or ("running" if task.running else "")
    return html(
        '<span class="status s-{status}">{status}</span> {when}',
        status=status, when=time_cell(when, now),
    )  # fmt: skip


def _alarms(task: TaskSnapshot) -> Markup:
    return join(html('<span class="alarm">{a}</span>', a=a) for a in sorted(task.open_alarms))


def _row(task: TaskSnapshot, now: datetime) -> Markup:
    error = Markup("")
    if task.last_error_message and task.badge in ("failing", "stuck", "late", "running"):
        text = task.last_error_message
        preview = text if len(text) <= _ERROR_PREVIEW else text[:_ERROR_PREVIEW] + "\u2026"
        error = html('<div class="error-preview">{e}</div>', e=preview)
    failures = task.consecutive_failures
    return html(
        '<tr data-task="{name}" data-badge="{b}">'
        '<td class="name"><a href="{href}">{name}</a>{error}</td>'
        "<td>{badge}</td><td>{schedule}</td><td>{next}</td><td>{last}</td>"
        '<td class="num">{dur}</td><td class="num{fail_cls}">{failures}</td>'
        '<td class="reason">{reason}</td><td>{alarms}</td></tr>',
        name=task.name, b=task.badge, href=task_href(task.name), error=error,
        badge=badge(task.badge), schedule=_schedule(task),
        next=time_cell(task.next_run_at, now) if task.enabled else html("\u2014"),
        last=_last_run(task, now), dur=duration(task.last_duration_seconds),
        fail_cls=" bad" if failures else "", failures=failures,
        reason=task.pause_reason or "", alarms=_alarms(task),
    )  # fmt: skip


def _filter_form(query: ListingQuery) -> Markup:
    options = join(
        html('<option value="{b}"{sel}>{b}</option>', b=b,
             sel=Markup(" selected") if query.badge == b else Markup(""))
        for b in BADGE_ORDER
    )  # fmt: skip
    return html(
        '<form id="filter" class="filter" method="get" action="/" role="search">'
        '<label>Name <input type="search" name="q" id="filter-name" value="{q}" '
        'placeholder="part of a task name" autocomplete="off" maxlength="200"></label>'
        '<label>Badge <select name="badge" id="filter-badge"><option value="">all</option>'
        "{options}</select></label>"
        '<button type="submit">Filter</button></form>',
        q=query.name, options=options,
    )  # fmt: skip


def _badge_counts(snapshot: Snapshot, query: ListingQuery) -> Markup:
    counts = snapshot.badge_counts
    chips = [
        html('<a class="chip{cur}" href="{href}">all <b>{n}</b></a>',
             cur=" current" if query.badge is None else "",
             href="/" + query_string({"q": query.name}), n=len(snapshot.tasks))
    ]  # fmt: skip
    for b in BADGE_ORDER:
        chips.append(
            html('<a class="chip b-{b}{cur}" href="{href}">{b} <b>{n}</b></a>',
                 b=b, cur=(" current" if query.badge == b else "") + ("" if counts[b] else " zero"),
                 href="/" + query_string({"badge": b, "q": query.name}), n=counts[b])
        )  # fmt: skip
    return html('<div class="chips" aria-label="tasks by badge">{c}</div>', c=join(chips))


def _pager(listing: Listing, query: ListingQuery) -> Markup:
    def href(number: int) -> str:
        return "/" + query_string({"badge": query.badge, "q": query.name, "page": number})

    shown = len(listing.tasks)
    span = (
        f"{listing.first + 1}\u2013{listing.first + shown} of {listing.matching}"
        if shown else "no task matches"
    )  # fmt: skip
    prev = nxt = Markup("")
    if listing.page > 1:
        prev = html('<a rel="prev" id="page-prev" href="{h}">\u2190 previous</a>',
                    h=href(listing.page - 1))  # fmt: skip
    if listing.page < listing.pages:
        nxt = html('<a rel="next" id="page-next" href="{h}">next \u2192</a>',
                   h=href(listing.page + 1))  # fmt: skip
    return html(
        '<nav class="pager" aria-label="pages">{prev}<span>page {p} of {n} \u00b7 {span}</span>'
        "{nxt}</nav>",
        prev=prev, p=listing.page, n=listing.pages, span=span, nxt=nxt,
    )  # fmt: skip


_TASK_HEAD = Markup(
    "<thead><tr><th>Task</th><th>Badge</th><th>Schedule</th><th>Next run</th>"
    '<th>Last run</th><th class="num">Last duration</th><th class="num">Failures in a row</th>'
    "<th>Pause reason</th><th>Open alarms</th></tr></thead>"
)


def _instances(snapshot: Snapshot, now: datetime) -> Markup:
    def row(i: InstanceSnapshot) -> Markup:
        heartbeat = (now - i.last_heartbeat_at).total_seconds()
        return html(
            '<tr data-instance="{id}"><td>{id}</td><td>{host}</td><td>{state}</td>'
            '<td>{version}</td><td class="num{stale}" title="{at}">{age} ago</td>'
            '<td class="num">{lease}</td><td class="num">{running}</td><td>{started}</td></tr>',
            id=i.instance_id, host=i.hostname or "", state=i.state, version=i.version,
            stale=" bad" if heartbeat > i.lease_seconds else "", at=absolute(i.last_heartbeat_at),
            age=age(heartbeat), lease=duration(i.lease_seconds), running=i.running_runs,
            started=time_cell(i.started_at, now),
        )  # fmt: skip

    if not snapshot.instances:
        return html('<p class="none" id="no-instances">No scheduler instance is registered.</p>')
    return html(
        '<table class="grid" id="instances"><thead><tr><th>Instance</th><th>Host</th>'
        '<th>State</th><th>Version</th><th class="num">Heartbeat</th><th class="num">Lease</th>'
        '<th class="num">Running</th><th>Started</th></tr></thead><tbody>{rows}</tbody></table>',
        rows=join(row(i) for i in snapshot.instances),
    )  # fmt: skip


def _live(snapshot: Snapshot, listing: Listing, query: ListingQuery, now: datetime) -> Markup:
    rows = join(_row(t, now) for t in listing.tasks)
    empty = Markup("")
    if not listing.tasks:
        empty = html('<p class="none" id="no-match">No task matches this filter.</p>')
    return html(
        '<div id="tasks-live" data-live>{chips}{pager}'
        '<table class="grid tasks" id="tasks">{head}<tbody>{rows}</tbody></table>{empty}'
        "{pager}<h2>Scheduler instances</h2>{instances}</div>",
        chips=_badge_counts(snapshot, query), pager=_pager(listing, query), head=_TASK_HEAD,
        rows=rows, empty=empty, instances=_instances(snapshot, now),
    )  # fmt: skip


def render_tasks_page(
    state: RefreshState, query: ListingQuery, order: TaskOrder, frame: Frame
) -> str:
    """The whole tasks page for ``query`` (an explanation instead when no data was read yet)."""
    snapshot = state.snapshot
    if snapshot is None:
        content = html(
            '<h1>Tasks</h1><div id="tasks-live" data-live><p class="none">No data yet: the '
            "exporter has not read the database successfully.</p></div>"
        )
        return page("Tasks", content, frame)
    listing = order.page(snapshot, query)
    content = html(
        "<h1>Tasks</h1>{form}{live}",
        form=_filter_form(query), live=_live(snapshot, listing, query, frame.now),
    )  # fmt: skip
    return page("Tasks", content, frame)
