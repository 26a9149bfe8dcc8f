"""Who may see the status page and who may act on it.

Reading follows the JSON API's rule: open when no read token is configured; otherwise a
session signed in with the read token or the admin token (or, for scripts, the same
``Authorization: Bearer`` header the API takes). Acting needs the admin API on and a session
signed in with the admin token; every post also carries the session's CSRF token. The session
id travels only in the :data:`SESSION_COOKIE` cookie: HttpOnly, SameSite=Strict, never in a URL.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from typing import Final

from aiohttp import web

from exporter.ui.context import UiContext
from exporter.ui.sessions import Role, Session

__all__ = [
    "SESSION_COOKIE",
    "Viewer",
    "actor_of",
    "clean_name",
    "clear_session_cookie",
    "role_of_token",
    "set_session_cookie",
    "viewer_of",
]

SESSION_COOKIE: Final[str] = "schedctl_session"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.@:+-]")


@dataclass(frozen=True, kw_only=True)
class Viewer:
    """The visitor of one request: their session (if any) and what they may do."""

    session: Session | None
    may_read: bool
    may_act: bool
    #: Whether a sign-in could give more than they have (a token is configured for it).
    can_sign_in: bool

    @property
    def signed_in(self) -> bool:
        return self.session is not None and self.session.role != "anonymous"


def _matches(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def role_of_token(ctx: UiContext, token: str) -> Role | None:
    """The role a token signs in as: ``admin`` (the admin token, admin API on), ``read`` (the
    read token), None for anything else."""
    if ctx.actions_enabled and _matches(token, ctx.settings.admin_token):
        return "admin"
    if _matches(token, ctx.settings.token):
        return "read"
    return None


def _bearer_reads(request: web.Request, ctx: UiContext) -> bool:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Bearer "):
        return False
    token = header.removeprefix("Bearer ")
    return _matches(token, ctx.settings.token) or _matches(token, ctx.settings.admin_token)


def viewer_of(request: web.Request, ctx: UiContext) -> Viewer:
    """Who ``request`` comes from, by its session cookie (or bearer header, read only)."""
    session = ctx.sessions.get(request.cookies.get(SESSION_COOKIE))
    role = session.role if session is not None else "anonymous"
    open_to_all = ctx.settings.token is None
    may_read = open_to_all or role in ("read", "admin") or _bearer_reads(request, ctx)
    may_act = ctx.actions_enabled and role == "admin"
    can_sign_in = not may_act and (ctx.actions_enabled or not may_read)
    return Viewer(session=session, may_read=may_read, may_act=may_act, can_sign_in=can_sign_in)


def clean_name(raw: str | None) -> str:
    """The name a visitor gave at sign-in, reduced to ``[A-Za-z0-9_.@:+-]`` (64 at most)."""
    return _UNSAFE.sub("", raw or "")[:64]


def actor_of(request: web.Request, session: Session) -> str:
    """The audit actor of an action: ``ui:<who>@<address>``."""
    return f"ui:{session.who or 'admin'}@{request.remote or 'unknown'}"


def set_session_cookie(
    request: web.Request, response: web.StreamResponse, session: Session
) -> None:
    """Send ``session``'s id as an HttpOnly, SameSite=Strict cookie (Secure over HTTPS)."""
    response.set_cookie(
        SESSION_COOKIE, session.id, httponly=True, samesite="Strict", path="/",
        secure=request.secure,
    )  # fmt: skip


def clear_session_cookie(response: web.StreamResponse) -> None:
    response.del_cookie(SESSION_COOKIE, path="/")
