"""The status page's HTTP hardening: the headers every page carries, HTML and redirect
responses, and the same-origin check of form posts.

The Content-Security-Policy allows scripts and styles from this exporter only (the page has no
inline script or style at all), fetches to this exporter only (the auto-refresh), no frames
around the page and forms posting nowhere else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Final
from urllib.parse import urlsplit

from aiohttp import web

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "SECURITY_HEADERS",
    "html_response",
    "redirect",
    "safe_next",
    "same_origin",
    "secured",
]

CONTENT_SECURITY_POLICY: Final[str] = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
SECURITY_HEADERS: Final[dict[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def secured(handler: Handler) -> Handler:
    """``handler`` whose every response carries :data:`SECURITY_HEADERS`."""

    @wraps(handler)
    async def wrapped(request: web.Request) -> web.StreamResponse:
        response = await handler(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return wrapped


def html_response(text: str, *, status: int = 200) -> web.Response:
    """A page: HTML in UTF-8, never cached (it shows live state and per-session tokens)."""
    return web.Response(
        text=text,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def redirect(location: str) -> web.Response:
    """``303 See Other`` to a path of this exporter (after a post, or to the sign-in form)."""
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def safe_next(target: str | None) -> str:
    """``target`` when it is a path of this site (``/...``), else ``/``: a sign-in never
    sends anyone to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return "/"
    return target


def same_origin(request: web.Request) -> bool:
    """False when the post says it comes from another site (``Origin`` or, without it,
    ``Referer`` naming another host); True when it names this host or says nothing."""
    claimed = request.headers.get("Origin") or request.headers.get("Referer")
    if not claimed or claimed == "null":
        return claimed != "null"
    return urlsplit(claimed).netloc == request.host
