"""schedctl's sidecar exporter: Prometheus metrics, health endpoints and a read-only JSON API
computed from the scheduler's SQL tables."""

from exporter.app import REFRESHER, create_app
from exporter.collector import SnapshotCollector, exporter_version
from exporter.database import create_reader_engine
from exporter.refresh import Refresher, RefreshState
from exporter.server import ExporterServer
from exporter.settings import ExporterSettings
from scheduler_core.store.snapshot import Snapshot, SnapshotReader, TaskSnapshot, read_snapshot

__all__ = [
    "REFRESHER",
    "ExporterServer",
    "ExporterSettings",
    "RefreshState",
    "Refresher",
    "Snapshot",
    "SnapshotCollector",
    "SnapshotReader",
    "TaskSnapshot",
    "create_app",
    "create_reader_engine",
    "exporter_version",
    "read_snapshot",
]
