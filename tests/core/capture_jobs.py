"""Callables for the output-capture tests: they log, print, return values and wait for each
other, so that captures of runs in flight at the same time can be told apart."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from typing import Any, TextIO

__all__ = [
    "async_chatter",
    "async_log_until_cancelled",
    "chatter",
    "log_badly",
    "log_exception",
    "log_to_myjob",
    "print_log_print",
    "printer",
]

LINES = 20


def chatter(tag: str, barrier: threading.Barrier) -> dict[str, Any]:
    """Log ``LINES`` lines tagged ``tag``, meeting the other runs at the barrier twice, so
    every run logs while all the others are in flight; return a dict naming the tag."""
    log = logging.getLogger(f"jobs.{tag}")
    barrier.wait()
    for i in range(LINES):
        log.info("<%s> line %d", tag, i)
        if i == LINES // 2:
            barrier.wait()
    log.debug("<%s> debug, below the capture level", tag)
    return {"tag": tag, "lines": LINES}


async def async_chatter(
    tag: str, started: asyncio.Event, count: list[int], runs: int, printed: bool = False
) -> str:
    """Log (or, ``printed``, print: the first half to stdout, the rest to stderr) ``LINES``
    lines tagged ``tag``, yielding to the loop between them once all ``runs`` runs have
    started; half of them from a task this run starts itself."""
    log = logging.getLogger(f"jobs.{tag}")
    count[0] += 1
    if count[0] == runs:
        started.set()
    await started.wait()

    def say(i: int, stream: TextIO) -> None:
        if printed:
            print(f"<{tag}> line {i}", file=stream)
        else:
            log.info("<%s> line %d", tag, i)

    async def child() -> None:
        for i in range(LINES // 2, LINES):
            say(i, sys.stderr)
            await asyncio.sleep(0)

    for i in range(LINES // 2):
        say(i, sys.stdout)
        await asyncio.sleep(0)
    await asyncio.create_task(child())
    return tag


async def async_log_until_cancelled(tag: str) -> None:
    """Log one line, then wait for ever (until a timeout or a cancel stops it)."""
    logging.getLogger(f"jobs.{tag}").warning("<%s> before the wait", tag)
    await asyncio.sleep(3600)


def log_to_myjob() -> str:
    """Log at INFO to a logger nobody configured."""
    logging.getLogger("myjob").info("x")
    return "done"


def log_badly() -> str:
    """Log a record whose arguments do not fit its format, then go on."""
    logging.getLogger("jobs.bad").info("%d rows", "not a number")
    logging.getLogger("jobs.bad").info("after the bad record")
    return "went on"


def log_exception() -> None:
    """Log an exception with its traceback."""
    try:
        raise ValueError("the disk is full")
    except ValueError:
        logging.getLogger("jobs.exc").exception("copy failed")


def printer(tag: str, barrier: threading.Barrier) -> dict[str, Any]:
    """Print ``LINES`` lines tagged ``tag``, every third to stderr and every fourth in two
    writes, meeting the other runs at the barrier twice (as ``chatter``)."""
    barrier.wait()
    for i in range(LINES):
        if i % 4 == 3:
            sys.stdout.write(f"<{tag}> line ")
            sys.stdout.write(f"{i}\n")
        else:
            print(f"<{tag}> line {i}", file=sys.stderr if i % 3 == 0 else sys.stdout)
        if i == LINES // 2:
            barrier.wait()
    return {"tag": tag, "lines": LINES}


def print_log_print() -> None:
    """Print, log, print to stderr, log: the output keeps this order."""
    print("first, printed")
    logging.getLogger("jobs.order").warning("second, logged")
    print("third, on stderr", file=sys.stderr, flush=True)
    sys.stderr.writelines(["fourth, ", "in pieces\n"])
