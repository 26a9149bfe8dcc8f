"""The status page's own stylesheet, script and icon, served from this package (no build step,
nothing fetched from elsewhere). Each URL carries a hash of the file, so a new version is
never hidden by a cached old one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from typing import Final

from aiohttp import web

__all__ = ["ASSETS", "STATIC_PREFIX", "asset_url", "serve_asset"]

STATIC_PREFIX: Final[str] = "/ui/static/"
#: Served files and their content types; nothing else is served from the folder.
ASSETS: Final[dict[str, str]] = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


@dataclass(frozen=True)
class _Asset:
    body: bytes
    content_type: str
    version: str


@cache
def _asset(name: str) -> _Asset:
    body = files("exporter.ui").joinpath("static", name).read_bytes()
    return _Asset(body, ASSETS[name], hashlib.sha256(body).hexdigest()[:12])


def asset_url(name: str) -> str:
    """The URL of asset ``name``, versioned by its content."""
    return f"{STATIC_PREFIX}{name}?v={_asset(name).version}"


async def serve_asset(request: web.Request) -> web.Response:
    """``GET /ui/static/{name}``: one of :data:`ASSETS` (404 for any other name)."""
    name = request.match_info["name"]
    if name not in ASSETS:
        raise web.HTTPNotFound()
    asset = _asset(name)
    return web.Response(
        body=asset.body,
        content_type=asset.content_type,
        charset="utf-8" if asset.content_type.startswith("text/") else None,
        headers={"Cache-Control": "public, max-age=86400"},
    )
