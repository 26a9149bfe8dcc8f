"""The ``schedctl`` command line: the scheduler daemon, the demo and the admin commands.

Configuration is read here and only here (flags, then ``SCHEDCTL_*`` variables, then
defaults); everything below takes keyword arguments. Exit codes: 0 ok, 1 runtime or
database error, 2 bad input (usage, config, unknown task or run), 3 the scheduler lost its
lease and stopped itself (a supervisor should restart it).

``parser`` builds the commands, ``daemons`` runs the long-lived ones, ``admin`` the rest,
``output`` prints, ``common`` holds what they share.
"""

from __future__ import annotations

import argparse
import os
import sys

import sqlalchemy as sa

from scheduler_core.cli.common import UsageError, database_url, env_default, url_password
from scheduler_core.cli.daemons import cmd_exporter
from scheduler_core.cli.parser import build_parser
from scheduler_core.db import redact_url
from scheduler_core.errors import (
    ConfigError,
    DatabaseUnavailableError,
    RunLookupError,
    SchemaVersionError,
    TaskConflictError,
    TaskLookupError,
    error_reason,
)
from scheduler_core.logs import configure_logging

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["exporter"]:
        try:
            return cmd_exporter(argparse.Namespace(), argv[1:])
        except UsageError as exc:
            print(f"schedctl: error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    url = getattr(args, "database_url", None) or env_default("SCHEDCTL_DATABASE_URL") or ""
    configure_logging(
        getattr(args, "log_level", "INFO"), secrets=[p for p in [url_password(url)] if p]
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"schedctl: {exc}", file=sys.stderr)
        return 2
    except (ValueError, UsageError, TaskConflictError, TaskLookupError, RunLookupError) as exc:
        print(f"schedctl: error: {exc}", file=sys.stderr)
        return 2
    except (SchemaVersionError, DatabaseUnavailableError) as exc:
        print(f"schedctl: error: {exc}", file=sys.stderr)
        return 1
    except sa.exc.IntegrityError as exc:
        print(
            "schedctl: error: the database refused the change (another instance may have made "
            f"it at the same moment; retry): {error_reason(exc)}",
            file=sys.stderr,
        )
        return 1
    except sa.exc.OperationalError as exc:
        print(
            f"schedctl: error: cannot use database {redact_url(database_url(args))}: "
            f"{error_reason(exc)}",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
