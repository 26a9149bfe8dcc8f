"""Task definitions: an action, a schedule and the policies that govern each run.

Definitions are frozen values; they reach the database as canonical JSON so every instance
(and the exporter) sees the same definition, and an edit is detected by its digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from scheduler_core.alert_policy import AlertPolicy
from scheduler_core.output_policy import OutputPolicy
from scheduler_core.schedules import AtSchedule, CronSchedule, IntervalSchedule, Schedule

__all__ = [
    "CallableAction",
    "CommandAction",
    "Policies",
    "RetryPolicy",
    "TaskDefinition",
    "registered_callables",
    "resolve_callable",
]

Overlap = Literal["skip", "allow", "replace"]
Misfire = Literal["skip", "run_once", "run_all"]
OVERLAP_POLICIES: tuple[str, ...] = ("skip", "allow", "replace")
MISFIRE_POLICIES: tuple[str, ...] = ("skip", "run_once", "run_all")
BACKOFF_KINDS: tuple[str, ...] = ("fixed", "exponential")

_REGISTRY: dict[str, Callable[..., Any]] = {}


def registered_callables() -> Mapping[str, Callable[..., Any]]:
    """Callables registered in this process with ``register_callable`` (a ``@task``
    decorator that registers a function with its schedule is the runtime-schedules issue's)."""
    return dict(_REGISTRY)


def register_callable(name: str, func: Callable[..., Any]) -> None:
    _REGISTRY[name] = func


#: Import paths already resolved: a scheduler resolves the same few callables at every run.
#: Failures are not kept, so a module that appears later (a deploy) is found then.
_RESOLVED: dict[str, Callable[..., Any]] = {}
#: ``inspect.iscoroutinefunction`` per callable (a few microseconds, asked for every run).
_IS_ASYNC: dict[Any, bool] = {}


def resolve_callable(ref: str) -> Callable[..., Any]:
    """Find ``module:function`` (or a name registered in-process); ValueError naming ``ref``."""
    if ref in _REGISTRY:
        return _REGISTRY[ref]
    found = _RESOLVED.get(ref)
    if found is None:
        found = _import_callable(ref)
        _RESOLVED[ref] = found
    return found


def _import_callable(ref: str) -> Callable[..., Any]:
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"callable {ref!r} must look like 'package.module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import module {module_name!r} for callable {ref!r}: {exc}"
        ) from None
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise ValueError(f"{ref!r} is not callable")
    return target  # type: ignore[no-any-return]


@dataclass(frozen=True, kw_only=True)
class CallableAction:
    """Call a Python function (sync or async) by import path or registered name."""

    ref: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    kind: str = field(default="callable", init=False)

    def resolve(self) -> Callable[..., Any]:
        return resolve_callable(self.ref)

    def is_async(self) -> bool:
        """Whether the callable is a coroutine function (asked once per run: memoised)."""
        func = self.resolve()
        try:
            found = _IS_ASYNC.get(func)
        except TypeError:  # an unhashable callable object
            return inspect.iscoroutinefunction(func)
        if found is None:
            found = _IS_ASYNC[func] = inspect.iscoroutinefunction(func)
        return found

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"callable": self.ref}
        if self.args:
            out["args"] = list(self.args)
        if self.kwargs:
            out["kwargs"] = dict(self.kwargs)
        return out


@dataclass(frozen=True, kw_only=True)
class CommandAction:
    """Run a command (argv list) as a subprocess with only the configured environment."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    inherit_env: bool = False
    kind: str = field(default="command", init=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command": list(self.argv)}
        if self.env:
            out["env"] = dict(self.env)
        if self.cwd:
            out["cwd"] = self.cwd
        if self.inherit_env:
            out["inherit_env"] = True
        return out


Action = CallableAction | CommandAction


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """How a failed run is retried: up to ``max`` more attempts after the first."""

    max: int = 0
    backoff: Literal["fixed", "exponential"] = "exponential"
    delay: float = 30.0
    max_delay: float = 3600.0
    jitter: float = 0.0

    def delay_before(self, attempt: int, *, rand: float = 0.5) -> float:
        """Seconds to wait before ``attempt`` (2 is the first retry); ``rand`` in [0, 1)."""
        base = self.delay if self.backoff == "fixed" else self.delay * 2 ** max(0, attempt - 2)
        return min(self.max_delay, base) + self.jitter * rand


@dataclass(frozen=True, kw_only=True)
class Policies:
    """Per-task run policies; the task file's ``defaults`` section sets the same fields."""

    timezone: str = "UTC"
    max_runtime: float | None = None
    timeout: float | None = None
    retries: RetryPolicy = field(default_factory=RetryPolicy)
    overlap: Overlap = "skip"
    max_concurrency: int = 1
    misfire: Misfire = "run_once"
    misfire_grace: float = 30.0
    catchup_window: float | None = None
    enabled: bool = True
    timeout_grace: float = 10.0
    output: OutputPolicy = field(default_factory=OutputPolicy)
    #: The task's ``alerts:`` block over its file's defaults (scheduler_core.alert_policy).
    alerts: AlertPolicy = field(default_factory=AlertPolicy)


@dataclass(frozen=True, kw_only=True)
class TaskDefinition:
    """A named task: exactly one action and one schedule, with its policies."""

    name: str
    action: Action
    schedule: Schedule
    policies: Policies = field(default_factory=Policies)
    start: datetime | None = None
    end: datetime | None = None
    max_runs: int | None = None
    description: str = ""
    source: str = "<python>"

    def with_arguments(
        self, args: Sequence[Any] | None, kwargs: Mapping[str, Any] | None
    ) -> TaskDefinition:
        """This definition calling its callable with ``args`` / ``kwargs`` instead (None keeps
        the task's own); for one run (run-now with arguments)."""
        action = self.action
        if not isinstance(action, CallableAction):
            raise ValueError(
                f"task {self.name!r} runs a command: args and kwargs need a callable task"
            )
        changed = dataclasses.replace(
            action,
            args=action.args if args is None else tuple(args),
            kwargs=action.kwargs if kwargs is None else dict(kwargs),
        )
        return dataclasses.replace(self, action=changed)

    def schedule_dict(self) -> dict[str, Any]:
        sched = self.schedule
        if isinstance(sched, CronSchedule):
            return {"cron": sched.expression, "timezone": sched.timezone}
        if isinstance(sched, IntervalSchedule):
            out: dict[str, Any] = {"every": sched.every}
            if sched.jitter:
                out["jitter"] = sched.jitter
            if sched.anchor.timestamp() != 0:
                out["anchor"] = sched.anchor.isoformat()
            return out
        if isinstance(sched, AtSchedule):
            return {"at": sched.at.isoformat()}
        raise TypeError(f"unknown schedule {sched!r}")

    def to_dict(self) -> dict[str, Any]:
        """The canonical, JSON-ready form stored in ``scheduler_schedules.definition``."""
        p = self.policies
        out: dict[str, Any] = {"name": self.name, **self.action.to_dict(), **self.schedule_dict()}
        out.update(
            {
                "max_runtime": p.max_runtime,
                "timeout": p.timeout,
                "timeout_grace": p.timeout_grace,
                "retries": {
                    "max": p.retries.max,
                    "backoff": p.retries.backoff,
                    "delay": p.retries.delay,
                    "max_delay": p.retries.max_delay,
                    "jitter": p.retries.jitter,
                },
                "overlap": p.overlap,
                "max_concurrency": p.max_concurrency,
                "misfire": p.misfire,
                "misfire_grace": p.misfire_grace,
                "catchup_window": p.catchup_window,
                "enabled": p.enabled,
                "start": self.start.isoformat() if self.start else None,
                "end": self.end.isoformat() if self.end else None,
                "max_runs": self.max_runs,
                "description": self.description,
                **p.output.to_dict(),
            }
        )
        alerts = p.alerts.to_dict()
        if alerts:  # only when set: a task without alerts keeps the digest it had before
            out["alerts"] = alerts
        return out

    def schedule_json(self) -> str:
        """``schedule_dict()`` as JSON (the health row's ``schedule_payload``), made once."""
        cached: str | None = self.__dict__.get("_schedule_json")
        if cached is None:
            cached = json.dumps(self.schedule_dict(), default=str)
            object.__setattr__(self, "_schedule_json", cached)  # frozen value: safe to keep
        return cached

    def to_json(self) -> str:
        cached: str | None = self.__dict__.get("_json")
        if cached is None:
            cached = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), default=str)
            object.__setattr__(self, "_json", cached)  # frozen value: computing it once is safe
        return cached

    def digest(self) -> str:
        cached: str | None = self.__dict__.get("_digest")
        if cached is None:
            cached = hashlib.sha256(self.to_json().encode()).hexdigest()
            object.__setattr__(self, "_digest", cached)
        return cached

    @property
    def one_time(self) -> bool:
        """Its schedule fires once (an ``at:`` task): its definition is used by that run's
        dispatch and finalize, then not again."""
        return isinstance(self.schedule, AtSchedule)

    @property
    def timezone(self) -> str:
        return (
            self.schedule.timezone
            if isinstance(self.schedule, CronSchedule)
            else self.policies.timezone
        )

    def first_fire_after(self, t: datetime) -> datetime | None:
        """The first fire time after ``t`` that respects ``start`` and ``end``."""
        after = t
        if self.start is not None and self.start > after:
            after = self.start - _EPSILON
        nxt = self.schedule.next_after(after)
        if nxt is not None and self.end is not None and nxt > self.end:
            return None
        return nxt


_EPSILON = timedelta(microseconds=1)
