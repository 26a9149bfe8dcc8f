"""The exporter's settings: one frozen value built by the entry point, passed to everything else."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler_core.states import LATE_GRACE_SECONDS

__all__ = ["DEFAULT_LISTEN", "ExporterSettings"]

DEFAULT_LISTEN = "127.0.0.1:9464"


@dataclass(frozen=True, kw_only=True)
class ExporterSettings:
    """How the exporter listens, authenticates and refreshes its snapshot.

    ``token`` None means no authentication; the CLI refuses that beyond loopback unless told.
    """

    host: str = "127.0.0.1"
    port: int = 9464
    token: str | None = None
    #: The admin API's bearer token; None keeps the admin API off (its routes answer 404).
    admin_token: str | None = None
    #: Largest request body accepted (bytes); larger ones answer 413.
    max_body_bytes: int = 64 * 1024
    #: Seconds between two SQL refreshes of the snapshot.
    refresh_interval: float = 5.0
    #: A task is late once its next tick is this many seconds overdue.
    #: Same grace as the SchedulerTaskLate alert (schedctl:threshold:late_grace_seconds) and the
    #: dashboards, so the JSON badge, the dashboard and the page agree on what "late" means.
    late_grace: float = LATE_GRACE_SECONDS
    #: Upper bound for one SQL statement (PostgreSQL ``statement_timeout``) and, doubled, for a
    #: whole refresh; a refresh that takes longer counts as failed.
    statement_timeout: float = 10.0
    #: Check the schema revision once before the first read (off only for tests of raw tables).
    check_schema: bool = True
    #: Base URL of the Grafana that has the schedctl dashboards; the status page links to them.
    grafana_url: str | None = None

    def __post_init__(self) -> None:
        if self.refresh_interval <= 0:
            raise ValueError(f"refresh_interval must be > 0, got {self.refresh_interval!r}")
        if self.late_grace < 0:
            raise ValueError(f"late_grace must be >= 0, got {self.late_grace!r}")
        if self.statement_timeout <= 0:
            raise ValueError(f"statement_timeout must be > 0, got {self.statement_timeout!r}")
        if self.token is not None and not self.token.strip():
            raise ValueError("token must not be empty")
        if self.admin_token is not None and len(self.admin_token.strip()) < 16:
            raise ValueError("the admin token must be at least 16 characters")
        if self.admin_token is not None and self.admin_token == self.token:
            raise ValueError("the admin token must differ from the read token")
        if self.grafana_url is not None and not self.grafana_url.startswith(
            ("http://", "https://")
        ):
            raise ValueError(f"grafana_url must be an http(s) URL, got {self.grafana_url!r}")

    @property
    def refresh_timeout(self) -> float:
        """Longest a refresh may take before it counts as failed."""
        return 2 * self.statement_timeout

    @property
    def stale_after(self) -> float:
        """Age of the last good snapshot beyond which the exporter is not ready."""
        return 3 * self.refresh_interval
