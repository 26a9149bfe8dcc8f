"""The cyclic garbage collector kept off work that allocates or keeps many live objects.

Reading a 10,000-task file builds ~100,000 YAML nodes, dicts and definitions, none of them
garbage yet: each collection the allocations trigger walks them all again, for nothing
(0.55 of 0.9 s of ``yaml.load`` on such a file). Reference counting still frees what is
dropped; the collector runs once the work is done (``gc_paused``).

A scheduler process keeps what it built at start-up (modules, the engine, the synced
definitions) for its whole life, yet each full collection walks it all while every thread
waits: 60-180 ms on the 2-core VM, late starts of every run due meanwhile (issue 18).
``freeze_long_lived`` leaves those objects out of later collections. The exporter does the
same once its app is built: there a full collection under 200 admin-API creates a second
held the GIL 75 ms with start-up's objects in it, 15 ms without.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["freeze_long_lived", "gc_paused"]


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause automatic collections inside the block (nested blocks are fine)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def freeze_long_lived() -> None:
    """Leave every object alive now out of later collections (``gc.freeze``).

    For a process that runs the scheduler or the exporter, once it started: what is alive
    then lives as long as the process. Such objects that become garbage are still freed by
    reference counting; only a cycle among them would stay (start-up state is not dropped).
    No collection first: with a 10,000-task file it held the GIL as the first claim ran (the
    claim came 0.34-0.41 s after the sync with it, 0.19-0.20 s without), to free start-up's
    few cycles, which now stay for the process's life instead.
    """
    gc.freeze()
