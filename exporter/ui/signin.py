"""Signing in to and out of the status page.

The form takes a token: the admin token (with the admin API on) signs in an admin who may
act; the read token a reader. The token is posted, compared in constant time and never kept
or shown; the session that results is a new one (the anonymous session that showed the form
is ended), sent as an HttpOnly, SameSite=Strict cookie. Signing out ends the session on the
server: its id is refused from then on, whatever the browser keeps.
"""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web

from exporter.ui.access import (
    SESSION_COOKIE,
    Viewer,
    clean_name,
    clear_session_cookie,
    role_of_token,
    set_session_cookie,
    viewer_of,
)
from exporter.ui.context import UiContext, ui_context
from exporter.ui.forms import FormError, read_form
from exporter.ui.layout import frame_for, page
from exporter.ui.markup import html
from exporter.ui.messages import render_message
from exporter.ui.security import html_response, redirect, safe_next, same_origin
from exporter.ui.sessions import Session

__all__ = ["refuse", "sign_in", "sign_in_form", "sign_out"]

#: Seconds a refused sign-in waits before answering (slows guessing down).
_REFUSAL_DELAY: Final[float] = 0.25


def refuse(request: web.Request, ctx: UiContext, status: int, why: str) -> web.Response:
    """A page saying why a post was refused."""
    frame = frame_for(request, ctx, viewer_of(request, ctx))
    return html_response(render_message("Refused", why, frame), status=status)


async def posted_form(request: web.Request, ctx: UiContext) -> dict[str, str] | web.Response:
    """The fields of a POSTed form, or the refusal to send when it came from another site or
    is too large or not a form: the checks every form post of the page goes through."""
    if not same_origin(request):
        return refuse(request, ctx, 403, "This form was sent from another site.")
    try:
        return await read_form(request)
    except FormError as exc:
        return refuse(request, ctx, exc.status, exc.message)


async def _session_post(
    request: web.Request, ctx: UiContext, refusal: str
) -> tuple[dict[str, str], Session] | web.Response:
    """A form posted by the holder of a session (its cookie and its CSRF token), with that
    session; else the refusal (``refusal`` when the session or its token does not match)."""
    form = await posted_form(request, ctx)
    if isinstance(form, web.Response):
        return form
    session = ctx.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None or not session.csrf_matches(form.get("csrf")):
        return refuse(request, ctx, 403, refusal)
    return form, session


def _form_page(
    request: web.Request, ctx: UiContext, viewer: Viewer, csrf: str, target: str, problem: str
) -> str:
    wants = "the admin token (to act) or the read token" if ctx.actions_enabled else "the token"
    if ctx.actions_enabled and ctx.settings.token is None:
        wants = "the admin token"
    alert = html('<p class="banner warn" id="sign-in-problem">{p}</p>', p=problem)
    content = html(
        "<h1>Sign in</h1>{alert}"
        '<form method="post" action="/ui/sign-in" class="stack" id="sign-in-form">'
        '<input type="hidden" name="csrf" value="{csrf}">'
        '<input type="hidden" name="next" value="{next}">'
        '<label>Token <input type="password" name="token" id="sign-in-token" required '
        'autocomplete="current-password" maxlength="512"></label>'
        '<p class="small">Give {wants} of this exporter.</p>'
        '<label>Your name, for the audit log <input type="text" name="who" id="sign-in-who" '
        'maxlength="64" autocomplete="username" placeholder="e.g. alice"></label>'
        '<button type="submit" id="sign-in-submit">Sign in</button></form>',
        alert=alert if problem else "", csrf=csrf, next=target, wants=wants,
    )  # fmt: skip
    return page("Sign in", content, frame_for(request, ctx, viewer), refresh=False)


async def sign_in_form(request: web.Request) -> web.StreamResponse:
    """``GET /ui/sign-in``: the form (an anonymous session carries its CSRF token)."""
    ctx = ui_context(request)
    viewer = viewer_of(request, ctx)
    target = safe_next(request.query.get("next"))
    if not viewer.can_sign_in:
        return redirect(target)
    session = viewer.session or ctx.sessions.new("anonymous")
    response = html_response(_form_page(request, ctx, viewer, session.csrf, target, ""))
    if viewer.session is None:
        set_session_cookie(request, response, session)
    return response


async def sign_in(request: web.Request) -> web.StreamResponse:
    """``POST /ui/sign-in``: check the token, start a new session, go where the visitor was."""
    ctx = ui_context(request)
    posted = await _session_post(
        request, ctx, "The sign-in form expired or was not ours: reload it."
    )
    if isinstance(posted, web.Response):
        return posted
    form, old = posted
    target = safe_next(form.get("next"))
    role = role_of_token(ctx, form.get("token", ""))
    if role is None:
        await asyncio.sleep(_REFUSAL_DELAY)
        viewer = viewer_of(request, ctx)
        text = _form_page(request, ctx, viewer, old.csrf, target, "That token is not accepted.")
        return html_response(text, status=401)
    ctx.sessions.end(old.id)
    session = ctx.sessions.new(role, clean_name(form.get("who")) or role)
    response = redirect(target)
    set_session_cookie(request, response, session)
    return response


async def sign_out(request: web.Request) -> web.StreamResponse:
    """``POST /ui/sign-out``: end the session on the server and forget the cookie."""
    ctx = ui_context(request)
    posted = await _session_post(request, ctx, "The CSRF token of this form is missing or wrong.")
    if isinstance(posted, web.Response):
        return posted
    ctx.sessions.end(posted[1].id)
    response = redirect("/")
    clear_session_cookie(response)
    return response
