"""A throwaway PgBouncer for tests: transaction pooling in front of a ``PostgresServer``."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.support.pgserver import PostgresServer
from tests.support.prometheus import ManagedProcess, free_port

__all__ = ["PgBouncer", "find_pgbouncer"]

#: Debian installs the binary in /usr/sbin, which is not on every user's PATH.
_SEARCH_PATH = f"{os.environ.get('PATH', '')}{os.pathsep}/usr/sbin{os.pathsep}/usr/local/sbin"


def find_pgbouncer() -> str | None:
    """The ``pgbouncer`` binary (``SCHEDCTL_PGBOUNCER`` overrides), or None."""
    return os.environ.get("SCHEDCTL_PGBOUNCER") or shutil.which("pgbouncer", path=_SEARCH_PATH)


class PgBouncer(ManagedProcess):
    """``pool_mode = transaction`` on a loopback port in front of ``server``; ``start()``,
    ``stop()``, and ``url(db)`` for a SQLAlchemy URL through it.

    Like a production setup it keeps PgBouncer's default ``ignore_startup_parameters``
    (none), so a client sending startup ``options`` is refused. Clients authenticate with
    SCRAM against the ``schedctl`` role's password (PgBouncer's user list); PgBouncer itself
    logs in to the server over its trust authentication. It runs in the foreground (its log
    is ``log_path``), as the ``postgres`` OS user when the tests run as root (PgBouncer
    refuses to run as root).
    """

    user = "schedctl"

    def __init__(self, server: PostgresServer, *, pool_size: int = 20) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError("pgbouncer not found (apt-get install pgbouncer)")
        super().__init__("pgbouncer", ready_url="")
        self.binary = binary
        self.server = server
        self.pool_size = pool_size
        self.port = free_port()

    def _write_config(self) -> Path:
        userlist = self.tmp / "userlist.txt"
        userlist.write_text(f'"{self.user}" "{self.server.password}"\n')
        userlist.chmod(0o600)
        config = self.tmp / "pgbouncer.ini"
        config.write_text(
            "[databases]\n"
            f"* = host=127.0.0.1 port={self.server.port}\n"
            "\n[pgbouncer]\n"
            "listen_addr = 127.0.0.1\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {userlist}\n"
            f"admin_users = {self.user}\n"
            "pool_mode = transaction\n"
            f"default_pool_size = {self.pool_size}\n"
            "max_client_conn = 1000\n"
            "log_connections = 0\n"
            "log_disconnections = 0\n"
        )
        return config

    def start(self) -> PgBouncer:
        """Start it and wait until it accepts connections (SIGTERM, ``stop()``, ends it at
        once: PgBouncer's immediate shutdown)."""
        config = self._write_config()
        as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            for path in (self.tmp, *self.tmp.iterdir()):
                shutil.chown(path, "postgres", "postgres")
            as_user = {"user": "postgres", "group": "postgres", "extra_groups": []}
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [self.binary, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
                **as_user,
            )
        deadline = time.monotonic() + self.start_timeout
        while self._process.poll() is None and time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1),
            ):
                return self
            time.sleep(0.05)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"pgbouncer did not start listening on {self.port}:\n{tail}")

    def url(self, dbname: str, *, query: str = "pool_mode=transaction") -> str:
        """A URL through the bouncer, with the password (clients must give it)."""
        base = f"postgresql://{self.user}:{self.server.password}@127.0.0.1:{self.port}/{dbname}"
        return f"{base}?{query}" if query else base

    def connect(self, dbname: str, **kwargs: Any) -> psycopg.Connection:
        """A plain psycopg connection through the bouncer (no schedctl settings)."""
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.server.password,
            dbname=dbname,
            **kwargs,
        )

    def admin(self, command: str) -> list[dict[str, Any]]:
        """Run a console command (``SHOW CLIENTS``, ``KILL db``...); its rows as dicts.

        The console speaks only the simple query protocol: a client-side cursor with no
        parameters sends the command as one plain query."""
        with psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.server.password,
            dbname="pgbouncer",
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
        ) as conn:
            cursor = conn.execute(command)
            if cursor.description is None:
                return []
            names = [column.name for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def client_count(self, dbname: str) -> int:
        """Client connections the bouncer holds for ``dbname`` (to detect leaks)."""
        return sum(1 for row in self.admin("SHOW CLIENTS") if row["database"] == dbname)
