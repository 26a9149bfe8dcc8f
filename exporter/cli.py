"""``schedctl exporter``: parse flags and environment, then serve the exporter until stopped."""

from __future__ import annotations

import argparse
import gc
import ipaddress
import logging
import os
import sys
from collections.abc import Mapping

from aiohttp import web

from exporter.app import create_app
from exporter.database import create_admin_engine, create_reader_engine
from exporter.settings import DEFAULT_LISTEN, ExporterSettings
from scheduler_core.db import DEFAULT_DATABASE_URL, redact_url
from scheduler_core.durations import parse_duration
from scheduler_core.gc_pause import freeze_long_lived
from scheduler_core.liveness import parse_listen
from scheduler_core.states import LATE_GRACE_SECONDS

__all__ = ["add_arguments", "build_parser", "main", "run", "settings_from_args"]

log = logging.getLogger("exporter")

ENV_DATABASE_URL = "SCHEDCTL_DATABASE_URL"
ENV_TOKEN = "SCHEDCTL_EXPORTER_TOKEN"
ENV_ADMIN_TOKEN = "SCHEDCTL_ADMIN_TOKEN"
ENV_LISTEN = "SCHEDCTL_EXPORTER_LISTEN"
ENV_GRAFANA_URL = "SCHEDCTL_GRAFANA_URL"


class UsageError(ValueError):
    """A flag or environment value is unusable; the CLI exits with status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the exporter's flags to ``parser`` (a ``schedctl exporter`` subparser, say)."""
    parser.add_argument(
        "--database-url",
        help=f"database to read (env {ENV_DATABASE_URL}; default {DEFAULT_DATABASE_URL})",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address to serve on (env {ENV_LISTEN}; default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--token",
        help=f"bearer token required for /metrics and /api (env {ENV_TOKEN})",
    )
    parser.add_argument(
        "--enable-admin-api",
        action="store_true",
        help="serve the admin API (create, change, run, pause tasks); needs --admin-token",
    )
    parser.add_argument(
        "--admin-token",
        help=f"bearer token of the admin API, not the read token (env {ENV_ADMIN_TOKEN})",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="allow listening on a non-loopback address without a token",
    )
    parser.add_argument(
        "--grafana-url",
        metavar="URL",
        help="Grafana with the schedctl dashboards; the status page at / links to them "
        f"(env {ENV_GRAFANA_URL}; e.g. https://grafana.example.com)",
    )
    parser.add_argument(
        "--refresh-interval",
        default="5s",
        help="time between two database reads (default 5s)",
    )
    parser.add_argument(
        "--late-grace",
        default=f"{LATE_GRACE_SECONDS:g}s",
        help=f"how overdue a tick must be to count as late (default {LATE_GRACE_SECONDS:g}s, "
        "as the alert)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="schedctl exporter",
        description="Serve schedctl's SQL state as Prometheus metrics, health endpoints and a "
        "read-only JSON API.",
        epilog=(
            "Example:\n"
            "  schedctl exporter --database-url sqlite:///schedctl.db --listen 127.0.0.1:9464\n"
            '  schedctl exporter --listen 0.0.0.0:9464 --token "$TOKEN"  # token: off loopback'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def settings_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> tuple[ExporterSettings, str]:
    """The settings and database URL from flags, then environment, then defaults."""
    listen = args.listen or environ.get(ENV_LISTEN) or DEFAULT_LISTEN
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise UsageError(f"--listen: {exc}") from None
    token = args.token or environ.get(ENV_TOKEN) or None
    if token is None and not is_loopback(host) and not args.allow_unauthenticated:
        raise UsageError(
            f"refusing to serve on non-loopback address {host!r} without authentication: "
            f"set --token (or {ENV_TOKEN}), or pass --allow-unauthenticated"
        )
    try:
        refresh = parse_duration(args.refresh_interval).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--refresh-interval: {exc}") from None
    try:
        grace = parse_duration(args.late_grace, allow_zero=True).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--late-grace: {exc}") from None
    admin_token = args.admin_token or environ.get(ENV_ADMIN_TOKEN) or None
    if args.enable_admin_api and admin_token is None:
        raise UsageError(f"--enable-admin-api needs --admin-token (or {ENV_ADMIN_TOKEN})")
    grafana = (args.grafana_url or environ.get(ENV_GRAFANA_URL) or "").rstrip("/") or None
    if grafana is not None and not grafana.startswith(("http://", "https://")):
        raise UsageError(f"--grafana-url: an http(s) URL is required, got {grafana!r}")
    settings = ExporterSettings(
        host=host, port=port, token=token, refresh_interval=refresh, late_grace=grace,
        admin_token=admin_token if args.enable_admin_api else None, grafana_url=grafana,
    )  # fmt: skip
    url = args.database_url or environ.get(ENV_DATABASE_URL) or DEFAULT_DATABASE_URL
    return settings, url


#: gen0 / gen1 / gen2 thresholds (Python's defaults: 700 / 10 / 10).
_GC_THRESHOLD = (10_000, 10, 1_000)
#: Seconds a thread may hold the GIL while another waits (Python's default is 0.005).
#: 5 ms -> 0.5 ms took the plain-text /metrics p99 at 10,000 tasks x 2 instances from 366
#: to 91 ms (session 5); 0.5 -> 0.1 ms from 101-104 to 65-80 ms (session 7, refresh time
#: unchanged at ~480 ms).
_GIL_SWITCH_INTERVAL = 0.0001


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; 0 on a clean stop, 2 on a usage error, 1 if serving fails."""
    try:
        settings, url = settings_from_args(args)
        engine = create_reader_engine(url, statement_timeout=settings.statement_timeout)
        admin_engine = create_admin_engine(url) if settings.admin_token else None
    except ValueError as exc:  # UsageError, a bad duration or an unusable database URL
        print(f"schedctl exporter: error: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    # The refresh thread turns 10,000 rows into a snapshot while scrapes stream 50 MB bodies;
    # with the default 5 ms GIL switch interval every socket wakeup of the event loop can
    # wait that long behind it, which added up to a 300+ ms /metrics tail.
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL)
    # Each refresh allocates and drops ~10^5 objects per 10,000 tasks; with the default
    # thresholds that triggers full (oldest-generation) collections over the whole heap,
    # pauses that land on whatever scrape is being served. Collect young objects often
    # (a gen0 of 10,000, a gen1 every 10 of those: a few ms each), the old generation
    # rarely (the snapshots hold no reference cycles to reclaim). A gen0 of 50,000 with a
    # gen1 every 20 made each gen1 walk up to 10^6 young objects: under 200 admin-API
    # creates a second that cost the exporter 65 % of a core against 46-55 %, and the
    # creates' p99 114-119 ms against 19-76 ms (bench/RESULTS.md, session 13).
    gc.set_threshold(_GC_THRESHOLD[0], _GC_THRESHOLD[1], _GC_THRESHOLD[2])
    app = create_app(settings=settings, engine=engine, admin_engine=admin_engine)
    # What start-up built (modules, the app, its engines) lives as long as the process: out
    # of every full collection, which then walks only what the snapshots hold. Under 200
    # admin-API creates a second a full collection held the GIL 75 ms with it, 15 without.
    freeze_long_lived()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    auth = "bearer token required" if settings.token else "no authentication"
    if settings.admin_token:
        auth += "; admin API on (admin token required for writes)"
    log.info(
        "schedctl exporter serving the status page on http://%s:%d/ and /metrics (%s), "
        "reading %s",
        host, settings.port, auth, redact_url(url),
    )  # fmt: skip
    try:
        web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    except OSError as exc:
        print(f"schedctl exporter: error: cannot listen on {host}:{settings.port}: {exc.strerror}",
              file=sys.stderr)  # fmt: skip
        return 1
    finally:
        engine.dispose()
        if admin_engine is not None:
            admin_engine.dispose()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (argparse's own errors and --help included)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
