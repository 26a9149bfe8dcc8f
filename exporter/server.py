"""Run the exporter inside another process: its own event loop in a background thread.

Used by ``schedctl demo`` and by tests that need a real HTTP endpoint next to other work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading

import sqlalchemy as sa
from aiohttp import web
from prometheus_client.registry import Collector

from exporter.app import REFRESHER, create_app
from exporter.database import create_admin_engine, create_reader_engine
from exporter.refresh import Clock, RefreshState, utc_now
from exporter.settings import ExporterSettings
from scheduler_core.liveness import parse_listen

__all__ = ["ExporterServer"]

_START_TIMEOUT = 30.0


class ExporterServer:
    """``start()`` serves the exporter on ``settings.host:settings.port`` (0 picks a free port);
    ``listen="host:port"`` overrides those two.

    Give ``engine`` to share one, or ``database_url`` to have the server create (and on
    ``stop()`` dispose) a read-only engine of its own. ``start()`` raises OSError when the
    address is taken.
    """

    def __init__(
        self,
        *,
        settings: ExporterSettings | None = None,
        listen: str | None = None,
        engine: sa.Engine | None = None,
        database_url: str | None = None,
        registry: Collector | None = None,
        clock: Clock = utc_now,
        background_refresh: bool = True,
        admin_engine: sa.Engine | None = None,
    ) -> None:
        if (engine is None) == (database_url is None):
            raise ValueError("give exactly one of engine= and database_url=")
        settings = settings or ExporterSettings()
        if listen is not None:
            host, port = parse_listen(listen)
            settings = dataclasses.replace(settings, host=host, port=port)
        self._owns_engine = engine is None
        self.engine = engine or create_reader_engine(
            str(database_url), statement_timeout=settings.statement_timeout
        )
        self.settings = settings
        #: The admin API's writer engine (None while it is off).
        self.admin_engine: sa.Engine | None = None
        if settings.admin_token is not None:
            self.admin_engine = admin_engine or create_admin_engine(
                database_url or self.engine.url.render_as_string(hide_password=False)
            )
        self._owns_admin_engine = admin_engine is None
        self._app = create_app(
            admin_engine=self.admin_engine,
            settings=settings,
            engine=self.engine,
            registry=registry,
            clock=clock,
            background_refresh=background_refresh,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:9464`` (IPv6 hosts in brackets)."""
        if self.port is None:
            raise RuntimeError("the exporter server is not started")
        host = self.settings.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def start(self) -> ExporterServer:
        """Start serving; returns once the socket listens (the first refresh may still run)."""
        if self._thread is not None:
            raise RuntimeError("the exporter server is already started")
        self._thread = threading.Thread(target=self._serve, name="schedctl-exporter", daemon=True)
        self._thread.start()
        if not self._started.wait(_START_TIMEOUT):
            raise RuntimeError(f"the exporter did not start within {_START_TIMEOUT:g}s")
        if self._error is not None:
            self._thread.join()
            self._thread = None
            raise self._error
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self._app, access_log=None)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.settings.host, self.settings.port)
            loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
        except BaseException as exc:
            self._error = exc
            loop.run_until_complete(runner.cleanup())
            loop.close()
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    def refresh_now(self, timeout: float = 30.0) -> RefreshState:
        """Run one refresh on the server's loop and wait for it (tests use this, not sleeps)."""
        if self._loop is None or not self._started.is_set():
            raise RuntimeError("the exporter server is not started")
        future = asyncio.run_coroutine_threadsafe(self._app[REFRESHER].refresh_once(), self._loop)
        return future.result(timeout)

    @property
    def state(self) -> RefreshState:
        return self._app[REFRESHER].state

    def stop(self) -> None:
        """Stop serving and wait for the thread; safe to call twice."""
        if self._thread is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(_START_TIMEOUT)
        self._thread = None
        if self._owns_engine:
            self.engine.dispose()
        if self.admin_engine is not None and self._owns_admin_engine:
            self.admin_engine.dispose()

    def __enter__(self) -> ExporterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
