"""The frame around every status page: head, navigation, who is signed in, how old the data
is and whether the database is reachable, one-time messages, and the auto-refresh hooks.

Regions marked ``data-live`` are what the auto-refresh (static/app.js) swaps for their newer
version every :data:`REFRESH_SECONDS`; everything else (a filter being typed, a form) stays
as the visitor left it, and so does the scroll position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from aiohttp import web

from exporter.refresh import RefreshState
from exporter.ui.access import Viewer
from exporter.ui.context import UiContext
from exporter.ui.markup import Markup, html, join, query_string
from exporter.ui.parts import grafana_overview_url, grafana_task_url
from exporter.ui.static import asset_url
from exporter.ui.timefmt import absolute, age

__all__ = ["REFRESH_HEADER", "REFRESH_SECONDS", "Frame", "frame_for", "page"]

#: Seconds between two automatic refreshes of a page.
REFRESH_SECONDS: Final[int] = 5
#: Sent by the auto-refresh's requests (static/app.js): one-time messages are not used up.
REFRESH_HEADER: Final[str] = "X-Schedctl-Refresh"


@dataclass(frozen=True, kw_only=True)
class Frame:
    """What the frame shows around a page's content."""

    viewer: Viewer
    state: RefreshState
    now: datetime
    grafana_url: str | None
    #: This page's path and query (where a sign-in comes back to).
    here: str
    flashes: Sequence[str] = ()
    #: The task the page is about (its Grafana dashboard is linked).
    task: str | None = None


def frame_for(
    request: web.Request, ctx: UiContext, viewer: Viewer, *, task: str | None = None
) -> Frame:
    """The frame of a page answering ``request``: the current refresh state, as of now."""
    flashes: list[str] = []
    if viewer.session is not None and REFRESH_HEADER not in request.headers:
        flashes = viewer.session.take_flashes()
    return Frame(
        viewer=viewer, state=ctx.refresher.state, now=ctx.refresher.clock(),
        grafana_url=ctx.settings.grafana_url, here=request.path_qs, flashes=flashes, task=task,
    )  # fmt: skip


def _nav(frame: Frame) -> Markup:
    links = [
        html('<a href="/">Tasks</a>'),
        html('<a href="/metrics">/metrics</a>'),
        html('<a href="/api/v1/status">JSON status</a>'),
    ]
    if frame.grafana_url:
        links.append(
            html('<a href="{u}" rel="noopener">Grafana overview</a>',
                 u=grafana_overview_url(frame.grafana_url))
        )  # fmt: skip
        links.append(
            html('<a href="{u}" rel="noopener">Grafana task dashboard</a>',
                 u=grafana_task_url(frame.grafana_url, frame.task))
        )  # fmt: skip
    return html('<nav aria-label="main">{links}</nav>', links=join(links))


def _who(frame: Frame) -> Markup:
    viewer = frame.viewer
    parts: list[Markup] = []
    session = viewer.session
    if viewer.signed_in and session is not None:
        parts.append(
            html('<span class="who">signed in as <b>{who}</b> ({role})</span>',
                 who=session.who or "admin", role=session.role)
        )  # fmt: skip
        parts.append(
            html(
                '<form method="post" action="/ui/sign-out" class="inline" id="sign-out">'
                '<input type="hidden" name="csrf" value="{csrf}">'
                '<button type="submit" class="link">Sign out</button></form>',
                csrf=session.csrf,
            )
        )
    if viewer.may_act:
        parts.append(
            html('<a class="button danger small" href="/ui/confirm/emergency-stop">'
                 "Emergency stop\u2026</a>")
        )  # fmt: skip
    if viewer.can_sign_in:
        target = "/ui/sign-in" + query_string({"next": frame.here})
        parts.append(html('<a href="{t}" id="sign-in-link">Sign in</a>', t=target))
    return html('<div class="account">{parts}</div>', parts=join(parts))


def _freshness(frame: Frame) -> Markup:
    state, now = frame.state, frame.now
    data_age = state.snapshot_age(now)
    taken = state.snapshot.taken_at if state.snapshot is not None else None
    if data_age is None:
        text = html("no data yet")
    else:
        text = html(
            'data from <b id="data-age">{age}</b> ago <small>({at})</small>',
            age=age(data_age), at=absolute(taken),
        )  # fmt: skip
    health = "database reachable" if state.up else "database UNREACHABLE"
    return html(
        '<div id="freshness" class="freshness {cls}" data-live>{text} \u00b7 {health}</div>',
        cls="up" if state.up else "down", text=text, health=health,
    )  # fmt: skip


def _banner(frame: Frame) -> Markup:
    state = frame.state
    if state.up:
        return html('<div id="db-banner" data-live></div>')
    error = state.last_error or "first refresh pending"
    if state.snapshot is None:
        said = html("No data has been read yet: {e}", e=error)
    else:
        data_age = state.snapshot_age(frame.now) or 0.0
        said = html(
            "The database is unreachable: {e}. Showing the last data read, {age} ago; "
            "it refreshes by itself when the database is back.",
            e=error, age=age(data_age),
        )  # fmt: skip
    return html(
        '<div id="db-banner" data-live><div class="banner down" role="alert">{s}</div></div>',
        s=said,
    )


def _flashes(flashes: Sequence[str]) -> Markup:
    items = join(html('<div class="flash" role="status">{m}</div>', m=m) for m in flashes)
    return html('<div id="flashes">{items}</div>', items=items)


def page(title: str, content: Markup, frame: Frame, *, refresh: bool = True) -> str:
    """A whole page: ``content`` in the frame; auto-refreshing unless ``refresh`` is off."""
    return html(
        "<!doctype html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<title>{title} \u00b7 schedctl</title>"
        '<link rel="stylesheet" href="{css}"><link rel="icon" href="{icon}" type="image/svg+xml">'
        '<script src="{js}" defer></script></head>'
        '<body data-refresh-seconds="{seconds}">'
        '<header class="top"><a class="brand" href="/">schedctl</a>{nav}{who}</header>'
        "{freshness}{banner}{flashes}<main>{content}</main>"
        '<footer><span>{refresh_note}</span> <span id="refresh-status" role="status"></span>'
        "</footer></body></html>",
        title=title, css=asset_url("app.css"), icon=asset_url("favicon.svg"),
        js=asset_url("app.js"), seconds=REFRESH_SECONDS if refresh else 0, nav=_nav(frame),
        who=_who(frame), freshness=_freshness(frame), banner=_banner(frame),
        flashes=_flashes(frame.flashes), content=content,
        refresh_note=f"Refreshes every {REFRESH_SECONDS} s." if refresh else "",
    )  # fmt: skip
