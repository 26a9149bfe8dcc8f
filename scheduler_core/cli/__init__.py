"""The ``schedctl`` command line: the scheduler daemon, the demo and the admin commands.

Configuration is read here and only here (flags, then ``SCHEDCTL_*`` variables, then
defaults); everything below takes keyword arguments. Exit codes: 0 ok, 1 runtime or
database error, 2 bad input (usage, config, unknown task or run), 3 the scheduler lost its
lease and stopped itself (a supervisor should restart it).

``parser`` builds the commands, ``daemons`` runs the long-lived ones, ``validate`` checks a
task file, ``admin`` and ``tasks_cmds`` the rest, ``output`` prints, ``common`` holds what
they share. A command's module is imported when it runs, and SQLAlchemy only by the commands
that use a database: ``schedctl validate`` starts in a fraction of the time.
"""

from __future__ import annotations

import argparse
import os
import sys

from scheduler_core.cli.common import UsageError, env_default, url_password
from scheduler_core.cli.parser import build_parser
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
        from scheduler_core.cli.daemons import cmd_exporter

        try:
            return cmd_exporter(argparse.Namespace(), argv[1:])
        except UsageError as exc:
            print(f"schedctl: error: {exc}", file=sys.stderr)
            return 2
    # validate needs no database: its parser alone (same usage, help and errors) spares the
    # import of SQLAlchemy that the other commands' flags need.
    parser = build_parser(validate_only=argv[:1] == ["validate"])
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
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed early: not an error worth a traceback.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        status = _database_error(exc, args)
        if status is None:
            raise
        return status


def _database_error(exc: Exception, args: argparse.Namespace) -> int | None:
    """Exit status 1 and a one-line message for SQLAlchemy's integrity and operational
    errors; None for anything else. SQLAlchemy not imported means not its error: the
    commands without a database (validate) never import it."""
    if "sqlalchemy.exc" not in sys.modules:
        return None
    import sqlalchemy.exc as sa_exc  # already imported: a dictionary look-up

    if isinstance(exc, sa_exc.IntegrityError):
        print(
            "schedctl: error: the database refused the change (another instance may have made "
            f"it at the same moment; retry): {error_reason(exc)}",
            file=sys.stderr,
        )
        return 1
    if isinstance(exc, sa_exc.OperationalError):
        from scheduler_core.cli.common import database_url
        from scheduler_core.db import redact_url

        print(
            f"schedctl: error: cannot use database {redact_url(database_url(args))}: "
            f"{error_reason(exc)}",
            file=sys.stderr,
        )
        return 1
    return None
