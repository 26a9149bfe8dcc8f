"""The start timer (DelayedStarts) and the worker pool: runs start at their time, in time
order, an earlier start wakes a sleeping timer, nothing starts after close, and the threads
carry their names at the OS level (what `top -H` and the steady benchmark's per-thread CPU
split read)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import pytest

from scheduler_core.executors import DelayedStarts, WorkerPool


def _os_name(native_id: int) -> str:
    with open(f"/proc/self/task/{native_id}/comm") as comm:
        return comm.read().strip()


def test_an_earlier_start_wakes_a_timer_asleep_until_a_later_one() -> None:
    started: list[tuple[str, float]] = []
    done = threading.Event()

    def start(label: str) -> None:
        started.append((label, time.monotonic()))
        done.set()

    timer = DelayedStarts(start)
    try:
        now = time.monotonic()
        timer.add(now + 60.0, "late")  # the timer now sleeps for a minute
        time.sleep(0.05)  # let it fall asleep on the late entry (nothing to inject here)
        timer.add(time.monotonic() + 0.05, "early")
        assert done.wait(5.0), "the earlier start did not wake the timer"
        label, at = started[0]
        assert label == "early"
        assert at - now < 5.0
        assert len(timer) == 1  # the late one still waits
    finally:
        timer.close()


def test_a_batch_given_out_of_order_starts_in_time_order_never_early() -> None:
    started: list[tuple[int, float, float]] = []
    all_done = threading.Event()
    count = 20

    def start(i: int, due: float) -> None:
        started.append((i, due, time.monotonic()))
        if len(started) == count:
            all_done.set()

    timer = DelayedStarts(start)
    try:
        base = time.monotonic() + 0.1
        entries = [(base + 0.01 * i, i, base + 0.01 * i) for i in reversed(range(count))]
        timer.add_many(entries)
        assert all_done.wait(10.0), f"only {len(started)} of {count} started"
    finally:
        timer.close()
    assert [i for i, _due, _at in started] == list(range(count))
    assert all(at >= due for _i, due, at in started), "a run started before its time"


def test_nothing_starts_after_close() -> None:
    started: list[str] = []
    timer = DelayedStarts(started.append)
    timer.add(time.monotonic() + 0.2, "pending")
    timer.close()
    timer.add(time.monotonic(), "after close")
    time.sleep(0.4)  # past the pending entry's time: it must not have started
    assert started == []
    assert len(timer) == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names threads via /proc")
def test_workers_and_the_timer_carry_their_names_at_the_os_level() -> None:
    seen: dict[str, int] = {}
    ready = threading.Event()

    def record(label: str) -> None:
        seen[label] = threading.get_native_id()
        if len(seen) == 2:
            ready.set()

    pool = WorkerPool(1, "schedctl-run")
    timer = DelayedStarts(record)
    try:
        pool.submit(record, "worker")
        timer.add(time.monotonic(), "timer")
        assert ready.wait(5.0)
        assert _os_name(seen["worker"]) == "schedctl-run_0"
        assert _os_name(seen["timer"]) == "schedctl-starts"
    finally:
        timer.close()
        pool.shutdown()


def test_a_job_goes_to_the_worker_that_went_idle_last() -> None:
    """One short job after another runs on the same thread (hot caches), not round robin."""
    pool = WorkerPool(8, "schedctl-run")
    names: list[str] = []
    try:
        for _ in range(5):
            done = threading.Event()
            pool.submit(lambda d=done: (names.append(threading.current_thread().name), d.set()))
            assert done.wait(5.0)
            time.sleep(0.01)  # the worker puts itself back on the idle stack after the job
    finally:
        pool.shutdown()
    assert len(set(names)) == 1, names


def _blocking_jobs() -> tuple[
    Callable[[int], None], list[int], threading.Event, dict[int, threading.Event]
]:
    """A job that records its number; job 0 holds its worker until ``release`` is set.
    ``events[i]`` is set when job i finished, ``events[-1]`` when job 0 began."""
    release = threading.Event()
    ran: list[int] = []
    events = {i: threading.Event() for i in (-1, 0, 1, 2, 3)}

    def job(i: int) -> None:
        if i == 0:
            events[-1].set()
            release.wait(5.0)
        ran.append(i)
        events[i].set()

    return job, ran, release, events


def test_jobs_wait_for_a_free_worker_and_run_in_order() -> None:
    pool = WorkerPool(1, "schedctl-run")
    job, ran, release, events = _blocking_jobs()
    try:
        pool.submit(job, 0)
        assert events[-1].wait(5.0)  # the only worker is busy with 0
        for i in (1, 2, 3):
            pool.submit(job, i)
        release.set()
        assert events[3].wait(5.0)
    finally:
        release.set()
        pool.shutdown()
    assert ran == [0, 1, 2, 3]


def test_shutdown_drops_waiting_jobs_and_later_ones() -> None:
    pool = WorkerPool(1, "schedctl-run")
    job, ran, release, events = _blocking_jobs()
    try:
        pool.submit(job, 0)
        assert events[-1].wait(5.0)
        pool.submit(job, 1)  # waits behind 0
    finally:
        pool.shutdown()  # while 0 runs: 1 is dropped
        release.set()
    assert events[0].wait(5.0)
    pool.submit(job, 2)  # after shutdown: dropped too
    assert not events[1].wait(0.2)
    assert ran == [0]
