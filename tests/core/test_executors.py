"""The worker pool: jobs run now or at their time, in time order and never early, an
earlier start wakes a pool waiting for later ones, a long job never holds back the next
start while a worker is free, starts due together fan out over the pool, nothing starts
after ``discard_waiting`` or ``shutdown``, and the threads carry their names at the OS
level (what `top -H` and the steady benchmark's per-thread CPU split read)."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import pytest

from scheduler_core.runtime.workers import WorkerPool


def _os_name(native_id: int) -> str:
    with open(f"/proc/self/task/{native_id}/comm") as comm:
        return comm.read().strip()


def test_an_earlier_start_wakes_a_pool_waiting_for_later_ones() -> None:
    started: list[tuple[str, float]] = []
    done = threading.Event()

    def start(label: str) -> None:
        started.append((label, time.monotonic()))
        done.set()

    pool = WorkerPool(4, "schedctl-run")
    try:
        now = time.monotonic()
        # Both sleepers now wait for a minute.
        pool.submit_at([(now + 60.0, start, "late"), (now + 61.0, start, "later")])
        time.sleep(0.05)  # let them fall asleep on the late entries (nothing to inject here)
        pool.submit_at([(time.monotonic() + 0.05, start, "early")])
        assert done.wait(5.0), "the earlier start did not wake the pool"
        label, at = started[0]
        assert label == "early"
        assert at - now < 5.0
        assert len(pool) == 2  # the late ones still wait
    finally:
        pool.shutdown()


@pytest.mark.parametrize("size", [1, 8])
def test_a_batch_given_out_of_order_starts_in_time_order_never_early(size: int) -> None:
    started: list[tuple[int, float, float]] = []
    all_done = threading.Event()
    count = 20

    def start(i: int, due: float) -> None:
        started.append((i, due, time.monotonic()))
        if len(started) == count:
            all_done.set()

    pool = WorkerPool(size, "schedctl-run")
    try:
        base = time.monotonic() + 0.1
        entries = [(base + 0.01 * i, start, i, base + 0.01 * i) for i in reversed(range(count))]
        pool.submit_at(entries)
        assert all_done.wait(10.0), f"only {len(started)} of {count} started"
    finally:
        pool.shutdown()
    assert [i for i, _due, _at in started] == list(range(count))
    assert all(at >= due for _i, due, at in started), "a run started before its time"


def test_a_long_job_does_not_hold_back_the_next_start() -> None:
    """The worker that took the first start is busy for seconds; the next start, 50 ms
    later, still begins on time on another worker."""
    release = threading.Event()
    second_started = threading.Event()

    def long_job() -> None:
        release.wait(10.0)

    pool = WorkerPool(4, "schedctl-run")
    try:
        now = time.monotonic()
        pool.submit_at(
            [
                (now + 0.05, long_job),
                (now + 0.10, second_started.set),
                (now + 0.15, lambda: None),
                (now + 0.20, second_started.set),
            ]
        )
        assert second_started.wait(5.0), "the second start waited for the first job"
        assert not release.is_set()  # still inside the first job
        late = time.monotonic() - (now + 0.10)
        assert late < 2.0, f"the second start began {late:.3f} s late"
    finally:
        release.set()
        pool.shutdown()


def test_earlier_starts_given_while_both_workers_wait_for_later_ones_run_on_time() -> None:
    """Two workers, both asleep on starts seconds away; two earlier starts arrive. The first
    runs a long job; the second still starts at its time on the other worker, which gives
    up its later start for it (and the later ones still run, at their time)."""
    release = threading.Event()
    second = threading.Event()
    later: list[float] = []
    both_later = threading.Event()

    def record_later(due: float) -> None:
        later.append(time.monotonic() - due)
        if len(later) == 2:
            both_later.set()

    pool = WorkerPool(2, "schedctl-run")
    try:
        base = time.monotonic()
        pool.submit_at(
            [(base + 3.0, record_later, base + 3.0), (base + 3.5, record_later, base + 3.5)]
        )
        time.sleep(0.05)  # both workers asleep on those (nothing to inject here)
        pool.submit_at([(base + 0.2, lambda: release.wait(10.0)), (base + 0.4, second.set)])
        assert second.wait(2.0), "the second early start waited for a later one"
        assert not release.is_set()
        release.set()
        assert both_later.wait(10.0)
    finally:
        release.set()
        pool.shutdown()
    assert all(late >= 0 for late in later), "a later start began before its time"


def _one_busy_two_asleep(release: threading.Event) -> WorkerPool:
    """Three workers: one busy until ``release``, two asleep on starts seconds away."""
    busy = threading.Event()
    pool = WorkerPool(3, "schedctl-run")
    pool.submit(lambda: (busy.set(), release.wait(10.0)))
    assert busy.wait(5.0)
    base = time.monotonic()
    pool.submit_at([(base + 3.0, lambda: None), (base + 3.5, lambda: None)])
    time.sleep(0.05)  # both free workers asleep on those (nothing to inject here)
    return pool


def test_a_start_due_with_no_worker_idle_takes_a_sleeper_waiting_for_a_later_one() -> None:
    """Three workers: one busy, two asleep on starts seconds away. Two starts due at the
    same instant arrive; the first runs a long job, and the second starts at once on the
    remaining sleeper instead of waiting for that sleeper's own, later time."""
    release = threading.Event()
    second = threading.Event()
    pool = _one_busy_two_asleep(release)
    try:
        at = time.monotonic() + 0.2
        pool.submit_at([(at, lambda: release.wait(10.0)), (at, second.set)])
        assert second.wait(2.0), "a start due now waited for a sleeper's later start"
        assert not release.is_set()
    finally:
        release.set()
        pool.shutdown()


def test_jobs_for_now_take_every_sleeper_when_no_worker_is_idle() -> None:
    """Three workers: one busy, two asleep on starts seconds away. Two jobs for now that
    each wait for the other to begin: this passes only if both sleepers take one."""
    release = threading.Event()
    barrier = threading.Barrier(2, timeout=10.0)
    passed: list[str] = []
    pool = _one_busy_two_asleep(release)
    try:
        for _ in range(2):
            pool.submit(lambda: (barrier.wait(), passed.append("ran")))
        deadline = time.monotonic() + 2.5
        while len(passed) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert passed == ["ran", "ran"], "a job for now waited while a sleeper was free"
    finally:
        release.set()
        pool.shutdown()


def test_starts_due_at_one_instant_fan_out_over_the_pool() -> None:
    """Eight jobs due together that each wait for all eight to have begun: this passes only
    if eight workers run them at once."""
    count = 8
    barrier = threading.Barrier(count, timeout=10.0)
    passed: list[str] = []

    def job() -> None:
        barrier.wait()
        passed.append(threading.current_thread().name)

    pool = WorkerPool(count, "schedctl-run")
    try:
        at = time.monotonic() + 0.05
        pool.submit_at([(at, job) for _ in range(count)])
        deadline = time.monotonic() + 10.0
        while len(passed) < count and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pool.shutdown()
    assert len(passed) == count, "the starts did not run side by side"
    assert len(set(passed)) == count


def test_a_job_submitted_while_every_worker_waits_for_a_later_start_runs_now() -> None:
    """Both workers are sleepers waiting for starts seconds away: a job for now takes one
    of them at once, and the timed jobs still start at their time, not before."""
    ran_now = threading.Event()
    timed: list[tuple[float, float]] = []
    both = threading.Event()

    def record(due: float) -> None:
        timed.append((due, time.monotonic()))
        if len(timed) == 2:
            both.set()

    pool = WorkerPool(2, "schedctl-run")
    try:
        base = time.monotonic()
        pool.submit_at([(base + 0.6, record, base + 0.6), (base + 0.7, record, base + 0.7)])
        time.sleep(0.05)  # both workers asleep on those (nothing to inject here)
        pool.submit(ran_now.set)
        assert ran_now.wait(0.4), "the job for now waited for a timed start"
        assert both.wait(5.0)
    finally:
        pool.shutdown()
    assert all(at >= due for due, at in timed), "a timed job started before its time"


def test_nothing_timed_starts_after_discard_waiting_or_shutdown() -> None:
    started: list[str] = []
    pool = WorkerPool(2, "schedctl-run")
    pool.submit_at([(time.monotonic() + 0.2, started.append, "pending")])
    pool.discard_waiting()
    assert len(pool) == 0
    pool.submit_at([(time.monotonic() + 0.2, started.append, "before shutdown")])
    pool.shutdown()
    pool.submit_at([(time.monotonic(), started.append, "after shutdown")])
    time.sleep(0.4)  # past the entries' time: none may have started
    assert started == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names threads via /proc")
def test_workers_carry_their_names_at_the_os_level() -> None:
    seen: dict[str, int] = {}
    ready = threading.Event()

    def record(label: str) -> None:
        seen[label] = threading.get_native_id()
        if len(seen) == 2:
            ready.set()

    pool = WorkerPool(1, "schedctl-run")
    try:
        pool.submit(record, "now")
        pool.submit_at([(time.monotonic(), record, "timed")])
        assert ready.wait(5.0)
        assert _os_name(seen["now"]) == "schedctl-run_0"
        assert _os_name(seen["timed"]) == "schedctl-run_0"
    finally:
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
