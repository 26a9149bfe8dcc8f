"""A scheduler inside an application's own process, the way APScheduler's
``BackgroundScheduler`` runs: one call builds it, ``start()`` runs it on background
threads, ``stop()`` drains it.

    from scheduler_core import Scheduler

    scheduler = Scheduler.from_url("sqlite:///schedctl.db", modules=["myapp.jobs"])
    scheduler.start()
    ...
    scheduler.stop()

It is a full instance: it claims from the same tables as ``schedctl scheduler`` processes
and works beside them. Tasks given as ``tasks=`` (task-file mappings or definitions) are
synced as the source ``embedded``; each module's ``@task`` functions as ``module:<name>``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Self

from scheduler_core.client import Client
from scheduler_core.clock import DatabaseClock
from scheduler_core.config import parse_task_document
from scheduler_core.db import DEFAULT_DATABASE_URL, check_schema, create_db_engine, upgrade_schema
from scheduler_core.decorator import tasks_of_modules
from scheduler_core.runtime import EngineSettings, default_instance_id
from scheduler_core.runtime import Scheduler as SchedulerLoop
from scheduler_core.tasks import TaskDefinition

__all__ = ["EMBEDDED_SOURCE", "Scheduler"]

#: The source of the tasks given to :meth:`Scheduler.from_url` as ``tasks=``.
EMBEDDED_SOURCE = "embedded"


class Scheduler:
    """One scheduler instance running in this process on background threads."""

    def __init__(self, loop: SchedulerLoop, *, owns_engine: bool = False) -> None:
        self.loop = loop
        self.engine = loop.engine
        self._owns_engine = owns_engine
        self._thread: threading.Thread | None = None

    @classmethod
    def from_url(
        cls,
        url: str = DEFAULT_DATABASE_URL,
        *,
        modules: Sequence[str] = (),
        tasks: Iterable[Mapping[str, Any] | TaskDefinition] = (),
        migrate: bool = True,
        instance_id: str | None = None,
        **settings: Any,
    ) -> Scheduler:
        """A scheduler on ``url`` (migrated first unless ``migrate=False``) with the tasks of
        ``modules`` and ``tasks`` synced; ``settings`` are :class:`EngineSettings` fields."""
        definitions = _definitions(tasks)
        by_source = tasks_of_modules(modules)
        engine = create_db_engine(url)
        try:
            if migrate:
                upgrade_schema(engine)
            else:
                check_schema(engine)
            options = {"health_listen": None, **settings}
            engine_settings = EngineSettings(
                instance_id=instance_id or default_instance_id(), **options
            )
            loop = SchedulerLoop(engine=engine, settings=engine_settings)
            now = DatabaseClock(engine).now()
            if definitions:
                loop.store.sync_tasks(definitions, now=now, source=EMBEDDED_SOURCE)
            for source, found in by_source.items():
                loop.store.sync_tasks(found, now=now, source=source)
        except BaseException:
            engine.dispose()
            raise
        return cls(loop, owns_engine=True)

    def start(self) -> Self:
        """Register the instance and schedule on a background thread; returns at once."""
        if self._thread is None:
            self.loop.start()
            self._thread = threading.Thread(target=self.loop.run, name="schedctl-loop", daemon=True)
            self._thread.start()
        return self

    def stop(self, *, drain: bool = True, timeout: float | None = None) -> None:
        """Stop claiming; with ``drain`` wait up to ``drain_grace`` for runs in flight, else
        cancel them now. Safe to call twice."""
        if not drain:
            self.loop.settings = dataclasses.replace(self.loop.settings, drain_grace=0.0)
        self.loop.request_stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._owns_engine:
            self.engine.dispose()

    def client(self, *, actor: str | None = None) -> Client:
        """A :class:`Client` on this scheduler's database (close it when done)."""
        return Client(engine=self.engine, actor=actor)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _definitions(tasks: Iterable[Mapping[str, Any] | TaskDefinition]) -> list[TaskDefinition]:
    items = list(tasks)
    mappings = [t.to_dict() if isinstance(t, TaskDefinition) else dict(t) for t in items]
    return parse_task_document({"tasks": mappings}, source=EMBEDDED_SOURCE) if mappings else []
