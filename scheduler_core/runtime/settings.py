"""How one scheduler instance is tuned: ``EngineSettings`` and its id, and the pacing
constants the loop and the run lifecycle share."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

__all__ = ["FINALIZE_DEFER_S", "STARTS_WRITTEN_AFTER_S", "EngineSettings", "default_instance_id"]


def default_instance_id() -> str:
    """``hostname:pid``, or ``SCHEDCTL_INSTANCE_ID`` (the pod name in Kubernetes)."""
    return os.environ.get("SCHEDCTL_INSTANCE_ID") or f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, kw_only=True)
class EngineSettings:
    """Tuning of one scheduler instance; every field has a production default."""

    instance_id: str
    poll_interval: float = 1.0
    #: Most runs claimed in one pass, written in one finalize batch, and waiting for their
    #: time (look-ahead): at 1,000 runs a second a 0.5 s look-ahead holds 500 of them.
    batch_size: int = 1000
    max_running: int = 64
    claim_lease: float = 30.0
    instance_lease: float = 30.0
    heartbeat_interval: float = 5.0
    drain_grace: float = 30.0
    kill_grace: float = 5.0
    failure_alarm_threshold: int = 3
    health_listen: str | None = "127.0.0.1:8090"
    #: Shortest pause between loop passes; batches completions and bounds idle CPU.
    min_step_interval: float = 0.02
    #: Claim up to ``max_running * claim_ahead`` runs: at most ``max_running`` execute at once,
    #: the rest wait in this instance's queue (their rows read ``running``; the real start
    #: time replaces the claim time when they finish). Fewer, larger claim batches.
    claim_ahead: int = 4
    #: Seconds ahead of their time that ticks are claimed and dispatched; each run then
    #: starts at its own time (a worker waits for it), so the claim's database round
    #: trips are not part of its start delay. At most ``batch_size`` runs wait like this.
    #: 0 claims only what is already due.
    look_ahead: float = 0.5
    #: After a caught-up pass (it claimed everything due within the look-ahead) the next one
    #: starts this long after it began: ticks are claimed ahead of their time anyway, so
    #: passes can be further apart, and each pass's fixed cost (its claim, finalize, health
    #: and next-due transactions) is shared by more runs. Capped at half the look-ahead, so
    #: a tick is still claimed at least that long before it is due. After a pass that
    #: stopped at a limit (a burst, a backlog) the next follows ``min_step_interval`` later.
    caught_up_interval: float = 0.25
    #: A due tick that overlap would skip only because of another instance's runs waits up
    #: to this long for their outcomes (an instance writes a finished run's outcome within
    #: ``FINALIZE_DEFER_S`` plus one pass): a run that already finished never skips a tick.
    overlap_settle: float = 1.0


#: A run's start is written to its health row this long after, unless it finished first.
STARTS_WRITTEN_AFTER_S = 1.0
#: Longest an outcome waits to be written while runs are queued for a worker.
FINALIZE_DEFER_S = 0.5
