"""The handlers of the status page's read views: the tasks page, a task page, a run page.

Each checks who may read (:mod:`exporter.ui.access`), then renders in the exporter's API
pool: the tasks page from the snapshot only, the task and run pages with the few SQL reads
of :mod:`exporter.ui.reads` (bounded by the refresh timeout).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from exporter.database import describe_db_error
from exporter.ui.access import viewer_of
from exporter.ui.context import UiContext, ui_context
from exporter.ui.layout import frame_for
from exporter.ui.listing import parse_listing_query
from exporter.ui.markup import query_string
from exporter.ui.messages import render_message
from exporter.ui.reads import DATABASE_ERRORS, TaskDetails, read_run, read_task_details
from exporter.ui.run_page import render_run_page, render_unknown_run
from exporter.ui.security import html_response, redirect
from exporter.ui.task_page import render_task_page, render_unknown_task
from exporter.ui.tasks_page import render_tasks_page
from scheduler_core.errors import RunLookupError

__all__ = ["blocking", "run_page", "sign_in_redirect", "task_page", "tasks_page"]

T = TypeVar("T")


async def blocking(ctx: UiContext, work: Callable[[], T]) -> T:
    """``work()`` in the API pool, within the refresh timeout (TimeoutError beyond it)."""
    future = asyncio.get_running_loop().run_in_executor(ctx.pool, work)
    return await asyncio.wait_for(future, timeout=ctx.settings.refresh_timeout)


def sign_in_redirect(request: web.Request) -> web.Response:
    """To the sign-in form, coming back here afterwards."""
    return redirect("/ui/sign-in" + query_string({"next": request.path_qs}))


async def tasks_page(request: web.Request) -> web.StreamResponse:
    """``GET /``: the tasks page."""
    ctx = ui_context(request)
    viewer = viewer_of(request, ctx)
    if not viewer.may_read:
        return sign_in_redirect(request)
    frame = frame_for(request, ctx, viewer)
    query = parse_listing_query(request.query)
    text = await blocking(ctx, lambda: render_tasks_page(frame.state, query, ctx.order, frame))
    return html_response(text)


def _runs_page(request: web.Request) -> int:
    try:
        return max(1, min(int(request.query.get("runs", "1")), 100_000))
    except ValueError:
        return 1


async def task_page(request: web.Request) -> web.StreamResponse:
    """``GET /ui/tasks/{name}``: one task."""
    ctx = ui_context(request)
    viewer = viewer_of(request, ctx)
    if not viewer.may_read:
        return sign_in_redirect(request)
    name = request.match_info["name"]
    frame = frame_for(request, ctx, viewer, task=name)
    snapshot = frame.state.snapshot
    task = snapshot.tasks_by_name.get(name) if snapshot is not None else None
    if task is None:
        return html_response(render_unknown_task(name, frame), status=404)
    runs_page = _runs_page(request)

    def render() -> str:
        details = read_task_details(ctx.engine, name, runs_page)
        return render_task_page(task, details, frame, may_act=viewer.may_act)

    try:
        return html_response(await blocking(ctx, render))
    except TimeoutError:
        details = TaskDetails(runs_page=runs_page, problem="the database did not answer in time")
        return html_response(render_task_page(task, details, frame, may_act=viewer.may_act))


async def run_page(request: web.Request) -> web.StreamResponse:
    """``GET /ui/runs/{id}``: one run with its output."""
    ctx = ui_context(request)
    viewer = viewer_of(request, ctx)
    if not viewer.may_read:
        return sign_in_redirect(request)
    run_id = int(request.match_info["run_id"])
    frame = frame_for(request, ctx, viewer)
    try:
        run = await blocking(ctx, lambda: read_run(ctx.engine, run_id))
    except RunLookupError:
        return html_response(render_unknown_run(run_id, frame), status=404)
    except DATABASE_ERRORS as exc:
        why = describe_db_error(exc, ctx.engine.url)
        text = render_message("Run unavailable", f"The database cannot be read: {why}.", frame)
        return html_response(text, status=503)
    frame = dataclasses.replace(frame, task=run["task_name"])
    text = render_run_page(
        run, frame, scrub=ctx.scrub, may_act=viewer.may_act,
        raw_link=ctx.settings.token is None,
    )  # fmt: skip
    return html_response(text)
