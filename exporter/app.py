"""The exporter's aiohttp application: /metrics, /health, /ready, the JSON API and the status
page (``/``, :mod:`exporter.ui`).

Dependencies come in through :func:`create_app`; nothing here reads configuration. Handlers
never touch SQL on the event loop: the snapshot is refreshed in a worker thread, and run
history is queried in a small thread pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import sqlalchemy as sa
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client.registry import Collector

from exporter.admin import add_admin_routes, is_write
from exporter.api import fetch_run, fetch_runs, json_response, parse_runs_query, status_document
from exporter.collector import exporter_version
from exporter.database import describe_db_error
from exporter.errors import ApiError, error_response
from exporter.exposition import (
    PROMETHEUS_ACCEPT,
    PROMETHEUS_ACCEPT_ENCODING,
    CatalogRenderer,
    MetricsCache,
    negotiate,
)
from exporter.pacing import Pacer
from exporter.refresh import Clock, Refresher, RefreshState, utc_now
from exporter.settings import ExporterSettings
from exporter.ui import UiContext, add_ui_routes, is_ui_path
from scheduler_core.client import Client
from scheduler_core.errors import RunLookupError

__all__ = ["REFRESHER", "create_app"]

log = logging.getLogger(__name__)

REFRESHER = web.AppKey("refresher", Refresher)
_CACHE = web.AppKey("metrics_cache", MetricsCache)
_SETTINGS = web.AppKey("settings", ExporterSettings)
_ENGINE = web.AppKey("engine", sa.Engine)
_RENDER_POOL = web.AppKey("render_pool", ThreadPoolExecutor)
_API_POOL = web.AppKey("api_pool", ThreadPoolExecutor)

#: Work nobody waits for (a background refresh's read, rendering ahead of scrapes) holds the
#: GIL at most this share of the time, in slices of this many seconds (exporter.pacing).
_AHEAD_SHARE = 0.25
_AHEAD_SLICE = 0.002
#: A paced read sleeps at most this share of a refresh interval in all, the render after it
#: at most half an interval: both end well before the next refresh starts.
_READ_BUDGET_SHARE = 0.25
_RENDER_BUDGET_SHARE = 0.5

#: Paths a probe must reach without credentials.
_OPEN_PATHS = frozenset({"/health", "/ready"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(
    *,
    settings: ExporterSettings,
    engine: sa.Engine,
    registry: Collector | None = None,
    clock: Clock = utc_now,
    background_refresh: bool = True,
    admin_engine: sa.Engine | None = None,
) -> web.Application:
    """Build the exporter app.

    ``engine`` is only read from (see :func:`exporter.database.create_reader_engine`).
    ``admin_engine`` (a writer) serves the admin API, on when ``settings.admin_token`` is set.
    ``registry`` holds extra collectors served after the catalog (process metrics, say); the
    catalog itself is rendered from the snapshot, so it must not contain a SnapshotCollector.
    With ``background_refresh`` off, nothing refreshes until ``app[REFRESHER].refresh_once()``
    is awaited (tests drive time that way).
    """
    render_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="schedctl-exporter-render")
    api_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="schedctl-exporter-api")
    cache = _metrics_cache(settings, registry)

    async def render_ahead(state: RefreshState) -> None:
        await asyncio.get_running_loop().run_in_executor(render_pool, cache.warm, state)

    refresher = Refresher(
        engine=engine, settings=settings, clock=clock, before_publish=render_ahead,
        pacer=lambda: _ahead_pacer(settings, budget_share=_READ_BUDGET_SHARE),
    )  # fmt: skip
    app = web.Application(
        middlewares=[_error_middleware, _auth_middleware(settings.token, settings.admin_token)],
        client_max_size=settings.max_body_bytes,
    )
    app[REFRESHER] = refresher
    app[_CACHE] = cache
    app[_SETTINGS] = settings
    app[_ENGINE] = engine
    app[_RENDER_POOL] = render_pool
    app[_API_POOL] = api_pool
    _add_routes(app, admin_engine if settings.admin_token is not None else None)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Startup only schedules the first refresh: with the database down the exporter
        # still comes up at once and serves up=0.
        task = asyncio.create_task(refresher.run_forever()) if background_refresh else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await refresher.aclose()
        render_pool.shutdown(wait=False, cancel_futures=True)
        api_pool.shutdown(wait=False, cancel_futures=True)

    app.cleanup_ctx.append(lifecycle)
    return app


def _metrics_cache(settings: ExporterSettings, registry: Collector | None) -> MetricsCache:
    """The /metrics bodies, rendered ahead of scrapes at a paced share of the CPU."""
    return MetricsCache(
        renderer=CatalogRenderer(version=exporter_version()),
        registry=registry,
        pacer=lambda: _ahead_pacer(settings, budget_share=_RENDER_BUDGET_SHARE),
        # Prometheus's first scrape finds its body ready: rendered there and then, the body
        # of a few thousand tasks held the GIL for 0.1-0.5 s that the admin API waited for.
        expected=[negotiate(PROMETHEUS_ACCEPT, PROMETHEUS_ACCEPT_ENCODING)],
    )


def _ahead_pacer(settings: ExporterSettings, *, budget_share: float) -> Pacer:
    """A pacer for work done ahead of need, sleeping ``budget_share`` of an interval at most."""
    return Pacer(
        share=_AHEAD_SHARE,
        slice_seconds=_AHEAD_SLICE,
        budget=settings.refresh_interval * budget_share,
    )


def _add_routes(app: web.Application, admin_engine: sa.Engine | None) -> None:
    """The read routes and the status page; the admin routes too when the admin API is on
    (``admin_engine``)."""
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/api/v1/status", _status)
    # Task names may hold any character (braces, slashes): match the whole segment run.
    app.router.add_get("/api/v1/tasks/{name:.+}/runs", _runs)
    app.router.add_get(r"/api/v1/runs/{run_id:\d+}", _run)
    app.router.add_get(r"/api/v1/runs/{run_id:\d+}/output", _run_output)
    client = None
    if app[_SETTINGS].admin_token is not None:
        if admin_engine is None:
            raise ValueError("the admin API needs admin_engine= (a database writer)")
        client = Client(engine=admin_engine, actor="api", check=False)
        add_admin_routes(app, client, app[_API_POOL])
    context = UiContext(
        settings=app[_SETTINGS], refresher=app[REFRESHER], engine=app[_ENGINE],
        pool=app[_API_POOL], client=client, secret=_password(app),
    )  # fmt: skip
    add_ui_routes(app, context)


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error, including aiohttp's own 404/405, leaves as the one JSON envelope."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, code=exc.code, extra=exc.extra)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason, headers=_passthrough_headers(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unexpected error serving %s", request.path)
        return error_response(500, "internal error; see the exporter log")


def _passthrough_headers(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}


def _auth_middleware(token: str | None, admin_token: str | None) -> Middleware:
    """Reads need the read token (when set) or the admin token; writes need the admin token
    (the read token there: 403). Without an admin API there are no write routes (404).
    The status page's paths check access themselves (sessions; exporter.ui.access)."""
    read = f"Bearer {token}".encode() if token else None
    admin = f"Bearer {admin_token}".encode() if admin_token else None

    def matches(given: bytes, expected: bytes | None) -> bool:
        return expected is not None and hmac.compare_digest(given, expected)

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in _OPEN_PATHS or is_ui_path(request.path):
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if admin is not None and is_write(request):
            if matches(given, admin):
                return await handler(request)
            if matches(given, read):
                return error_response(
                    403, "the read token cannot change anything: use the admin token"
                )
            return _unauthorized("the admin token is required")
        if read is None or matches(given, read) or matches(given, admin):
            return await handler(request)
        return _unauthorized("a bearer token is required")

    return auth


def _unauthorized(why: str) -> web.Response:
    return error_response(
        401,
        f"{why}: send 'Authorization: Bearer <token>'",
        headers={"WWW-Authenticate": 'Bearer realm="schedctl-exporter"'},
    )


async def _metrics(request: web.Request) -> web.StreamResponse:
    app = request.app
    state = app[REFRESHER].state
    variant, encoder = negotiate(
        request.headers.get("Accept", ""), request.headers.get("Accept-Encoding", "")
    )
    cache = app[_CACHE]
    body = cache.get(state.generation, variant)
    if body is None:
        cache.hurry()  # the render thread may be busy rendering ahead, at a leisurely pace
        body = await asyncio.get_running_loop().run_in_executor(
            app[_RENDER_POOL], cache.build, state, variant, encoder
        )
    headers = {"Content-Type": variant.content_type, "Vary": "Accept, Accept-Encoding"}
    if variant.gzip:
        headers["Content-Encoding"] = "gzip"
    # Sent piece by piece from the shared render: a 50 MB body is never copied per scrape.
    response = web.StreamResponse(headers=headers)
    response.content_length = body.size
    await response.prepare(request)
    for piece in body.pieces:
        await response.write(piece)
    await response.write_eof()
    return response


async def _health(_request: web.Request) -> web.Response:
    # Liveness only: the process serves requests. A database outage is reported by /ready
    # and scheduler_exporter_up; restarting the exporter would not fix the database.
    return web.json_response({"status": "healthy"})


async def _ready(request: web.Request) -> web.Response:
    app = request.app
    state = app[REFRESHER].state
    stale_after = app[_SETTINGS].stale_after
    age = state.snapshot_age(app[REFRESHER].clock())
    body: dict[str, object] = {
        "database_up": state.up,
        "snapshot_age_seconds": None if age is None else round(age, 3),
        "last_error": state.last_error,
    }
    if age is None:
        return web.json_response({"status": "not_ready", **body}, status=503)
    if age > stale_after:
        return web.json_response({"status": "stale", **body}, status=503)
    return web.json_response({"status": "ready", **body})


def _password(app: web.Application) -> str | None:
    password = app[_ENGINE].url.password
    return str(password) if password else None


async def _status(request: web.Request) -> web.Response:
    app = request.app
    state = app[REFRESHER].state
    if state.snapshot is None:
        raise ApiError(
            503,
            f"no successful database read yet: {state.last_error or 'first refresh pending'}",
            code="no_snapshot",
        )
    now = app[REFRESHER].clock()
    loop = asyncio.get_running_loop()
    # Thousands of tasks take a while to serialise; keep that off the event loop.
    response: web.Response = await loop.run_in_executor(
        app[_API_POOL],
        lambda: json_response(status_document(state, now), scrub=_password(app)),
    )
    return response


async def _read_run(request: web.Request) -> dict[str, Any]:
    """The run the path names, read in the API pool (404 when there is none)."""
    app = request.app
    run_id = int(request.match_info["run_id"])
    engine = app[_ENGINE]
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(
            loop.run_in_executor(app[_API_POOL], fetch_run, engine, run_id),
            timeout=app[_SETTINGS].refresh_timeout,
        )
    except RunLookupError:
        raise ApiError(404, f"no run with id {run_id}", code="unknown_run") from None
    except (sa.exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        raise ApiError(
            503, f"cannot read the run: {describe_db_error(exc, engine.url)}",
            code="database_unavailable",
        ) from None  # fmt: skip


async def _run(request: web.Request) -> web.Response:
    """``GET /api/v1/runs/{id}``: the run's row, output, result, error and traceback."""
    return json_response(await _read_run(request), scrub=_password(request.app))


async def _run_output(request: web.Request) -> web.Response:
    """``GET /api/v1/runs/{id}/output``: what the run said, as text (empty when nothing)."""
    run = await _read_run(request)
    text = run["output"] or ""
    password = _password(request.app)
    if password:
        text = text.replace(password, "***")
    return web.Response(
        text=text,
        content_type="text/plain",
        charset="utf-8",
        headers={
            "X-Schedctl-Output-Bytes": str(run["output_bytes"]),
            "X-Schedctl-Output-Dropped-Bytes": str(run["output_dropped_bytes"]),
        },
    )


async def _runs(request: web.Request) -> web.Response:
    app = request.app
    query = parse_runs_query(request.match_info["name"], request.query, now=app[REFRESHER].clock())
    engine = app[_ENGINE]
    loop = asyncio.get_running_loop()
    try:
        document = await asyncio.wait_for(
            loop.run_in_executor(app[_API_POOL], fetch_runs, engine, query),
            timeout=app[_SETTINGS].refresh_timeout,
        )
    except (sa.exc.SQLAlchemyError, OSError, TimeoutError) as exc:
        raise ApiError(
            503, f"cannot read run history: {describe_db_error(exc, engine.url)}",
            code="database_unavailable",
        ) from None  # fmt: skip
    if document is None:
        raise ApiError(404, f"no task named {query.task!r}", code="unknown_task")
    return json_response(document, scrub=_password(app))
