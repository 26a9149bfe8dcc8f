"""The status page's actions, on only with the admin API: run now, pause (a reason is
required), resume, cancel a run, emergency stop.

Each is two steps: ``GET /ui/confirm/{action}`` shows what will happen and asks for the
reason; ``POST /ui/actions/{action}`` does it. The post must come from this site, from a
session signed in with the admin token, with that session's CSRF token and a small
URL-encoded body. The work goes through the admin API's :class:`scheduler_core.Client` as
``ui:<who>@<address>``, so ``schedctl audit`` names the person and the address; right after
it the exporter re-reads its snapshot, so the page that follows shows the change.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web

from exporter.ui.access import actor_of, viewer_of
from exporter.ui.context import UiContext, ui_context
from exporter.ui.layout import frame_for, page
from exporter.ui.markup import Markup, html
from exporter.ui.messages import render_message
from exporter.ui.pages import sign_in_redirect
from exporter.ui.parts import run_href, task_href
from exporter.ui.reads import DATABASE_ERRORS
from exporter.ui.security import html_response, redirect
from exporter.ui.signin import posted_form, refuse
from scheduler_core.client import Client
from scheduler_core.errors import ConfigError, RunLookupError, TaskLookupError
from scheduler_core.store.controls import audit_context

__all__ = ["ACTIONS", "Action", "confirm_page", "do_action"]

#: Longest reason accepted (characters).
MAX_REASON: Final[int] = 500


@dataclass(frozen=True, kw_only=True)
class Action:
    """One action: what it acts on, whether it needs a reason, how the page words it."""

    name: str
    #: ``task``, ``run`` or ``all`` (emergency stop).
    target: str
    needs_reason: bool
    title: str
    explain: str
    danger: bool = False


ACTIONS: Final[Mapping[str, Action]] = {
    a.name: a
    for a in (
        Action(name="run-now", target="task", needs_reason=False, title="Run now",
               explain="One extra run starts as soon as a scheduler polls."),
        Action(name="pause", target="task", needs_reason=True, title="Pause",
               explain="No new run starts until it is resumed; a run in flight goes on."),
        Action(name="resume", target="task", needs_reason=False, title="Resume",
               explain="Its schedule applies again from its next tick."),
        Action(name="cancel", target="run", needs_reason=True, title="Cancel run",
               explain="The run's scheduler is asked to stop it.", danger=True),
        Action(name="emergency-stop", target="all", needs_reason=True, title="Emergency stop",
               explain="Every task is paused and every run in flight is cancelled.",
               danger=True),
    )
}  # fmt: skip


def _target_field(action: Action, params: Mapping[str, str]) -> tuple[str, str] | None:
    """(field, value) naming what ``action`` acts on, None when missing or malformed."""
    if action.target == "all":
        return ("", "")
    key = "task" if action.target == "task" else "run"
    value = params.get(key, "")
    if not value or (key == "run" and not value.isdigit()):
        return None
    return key, value


def _confirm_content(action: Action, target: tuple[str, str], csrf: str) -> Markup:
    key, value = target
    what = {"task": html("task <b>{v}</b>", v=value), "run": html("run <b>#{v}</b>", v=value)}
    about = what.get(key, html("<b>every task</b>"))
    hidden = html('<input type="hidden" name="{k}" value="{v}">', k=key, v=value) if key else ""
    reason = Markup("")
    if action.needs_reason:
        reason = html(
            '<label>Reason (required, shown in the audit log) <textarea name="reason" '
            'id="action-reason" required maxlength="{n}" rows="3"></textarea></label>',
            n=MAX_REASON,
        )
    back = task_href(value) if key == "task" else run_href(int(value)) if key == "run" else "/"
    return html(
        "<h1>{title}?</h1><p>{title} {about}. {explain}</p>"
        '<form method="post" action="/ui/actions/{name}" class="stack" id="confirm-form">'
        '<input type="hidden" name="csrf" value="{csrf}">{hidden}{reason}'
        '<div class="actions"><button type="submit" id="confirm-submit" class="{cls}">'
        '{title}</button> <a href="{back}" id="confirm-back">Do not</a></div></form>',
        title=action.title, about=about, explain=action.explain, name=action.name, csrf=csrf,
        hidden=hidden, reason=reason, cls="danger" if action.danger else "", back=back,
    )  # fmt: skip


async def confirm_page(request: web.Request) -> web.StreamResponse:
    """``GET /ui/confirm/{action}?task=|run=``: what the action will do, and its form."""
    ctx = ui_context(request)
    viewer = viewer_of(request, ctx)
    if not viewer.may_act or viewer.session is None:
        return sign_in_redirect(request)
    action = ACTIONS.get(request.match_info["action"])
    target = _target_field(action, request.query) if action is not None else None
    frame = frame_for(request, ctx, viewer)
    if action is None or target is None:
        text = render_message("Unknown action", "There is no such action or target.", frame)
        return html_response(text, status=404)
    content = _confirm_content(action, target, viewer.session.csrf)
    return html_response(page(action.title, content, frame, refresh=False))


Work = Callable[[Client], Any]
Describe = Callable[[Any], str]


def _work(action: Action, form: Mapping[str, str]) -> tuple[Work, Describe, str]:
    """What ``action`` calls on the client, what to say about its result, where to go next."""
    task, run, reason = form.get("task", ""), form.get("run", "0"), form.get("reason", "").strip()
    if action.name == "run-now":
        return (lambda c: c.run_now(task)), lambda _: f"Run requested for {task}.", task_href(task)
    if action.name == "pause":
        return (
            (lambda c: c.pause(task, reason)),
            lambda _: f"Paused {task}: {reason}",
            task_href(task),
        )
    if action.name == "resume":
        return (lambda c: c.resume(task)), lambda _: f"Resumed {task}.", task_href(task)
    if action.name == "cancel":
        run_id = int(run)
        return (
            (lambda c: c.cancel(run_id, reason)),
            (lambda status: f"Cancel requested for run #{run_id} ({status})."),
            run_href(run_id),
        )
    return (
        (lambda c: c.emergency_stop(reason)),
        (lambda done: f"Emergency stop: {done[0]} task(s) paused, {done[1]} run(s) cancelled."),
        "/",
    )


def _check(request: web.Request, ctx: UiContext, form: Mapping[str, str]) -> str | None:
    """Why this post may not act (None when it may)."""
    viewer = viewer_of(request, ctx)
    if not viewer.may_act or viewer.session is None:
        return "Sign in with the admin token to act."
    if not viewer.session.csrf_matches(form.get("csrf")):
        return "The CSRF token of this form is missing or wrong: reload the page."
    return None


async def do_action(request: web.Request) -> web.StreamResponse:
    """``POST /ui/actions/{action}``: do it through the admin client, then show the result."""
    ctx = ui_context(request)
    action = ACTIONS.get(request.match_info["action"])
    if action is None or ctx.client is None:
        return refuse(request, ctx, 404, "There is no such action.")
    form = await posted_form(request, ctx)
    if isinstance(form, web.Response):
        return form
    why = _check(request, ctx, form)
    if why is not None:
        return refuse(request, ctx, 403, why)
    if _target_field(action, form) is None:
        return refuse(request, ctx, 400, "The form does not say what to act on.")
    reason = form.get("reason", "").strip()
    if action.needs_reason and not reason:
        return refuse(request, ctx, 400, "A reason is required.")
    if len(reason) > MAX_REASON:
        return refuse(request, ctx, 400, f"The reason is longer than {MAX_REASON} characters.")
    session = viewer_of(request, ctx).session
    assert session is not None  # _check made sure
    client = ctx.client.as_actor(actor_of(request, session))
    work, describe, then = _work(action, form)
    request_id = uuid.uuid4().hex

    def call() -> Any:
        with audit_context(request_id=request_id):
            return work(client)

    try:
        result = await asyncio.get_running_loop().run_in_executor(ctx.pool, call)
    except (TaskLookupError, RunLookupError) as exc:
        return refuse(request, ctx, 404, str(exc))
    except (ConfigError, ValueError) as exc:
        return refuse(request, ctx, 400, str(exc))
    except DATABASE_ERRORS:
        return refuse(request, ctx, 503, "The database cannot be written now; try again.")
    session.flashes.append(describe(result))
    await ctx.refresher.refresh_once()
    return redirect(then)
