"""The running scheduler: its loop (``loop``), the lifecycle of its runs (``lifecycle``),
how an action runs (``runners``), what a run leaves (``capture``: output, logs, result),
who a run is (``run_context``), where runs execute (``workers``), its tuning
(``settings``) and its signal handling (``signals``)."""

from __future__ import annotations

from scheduler_core.runtime.loop import Scheduler
from scheduler_core.runtime.settings import EngineSettings, default_instance_id
from scheduler_core.runtime.signals import install_signal_handlers

__all__ = ["EngineSettings", "Scheduler", "default_instance_id", "install_signal_handlers"]
