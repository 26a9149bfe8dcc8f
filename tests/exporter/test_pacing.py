"""Pacing of the work done ahead of scrapes: sleeps to keep a share, a budget, hurry()."""

from __future__ import annotations

import threading
import time

import pytest

from exporter.pacing import Pacer


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_a_slice_of_work_is_followed_by_a_sleep_that_keeps_the_share():
    """At a share of one half, 5 ms of work is followed by at least 5 ms of sleep."""
    pacer = Pacer(share=0.5, slice_seconds=0.001, budget=1.0)
    _busy(0.005)
    started = time.perf_counter()
    pacer()
    assert pacer.slept >= 0.005
    assert time.perf_counter() - started >= 0.005


def test_work_shorter_than_a_slice_never_sleeps():
    pacer = Pacer(share=0.1, slice_seconds=10.0, budget=1.0)
    for _ in range(100):
        pacer()
    assert pacer.slept == 0.0


def test_the_budget_caps_the_time_slept_in_all():
    pacer = Pacer(share=0.1, slice_seconds=0.001, budget=0.003)
    for _ in range(5):
        _busy(0.002)
        pacer()
    assert pacer.slept == pytest.approx(0.003)


def test_hurry_ends_the_sleep_under_way_and_every_later_one():
    """A scrape waiting for the render thread must not wait for its sleeps."""
    pacer = Pacer(share=0.001, slice_seconds=0.001, budget=60.0)
    _busy(0.005)  # a sleep of ~5 s is due
    done = threading.Event()

    def paced() -> None:
        pacer()
        done.set()

    thread = threading.Thread(target=paced)
    started = time.perf_counter()
    thread.start()
    time.sleep(0.05)
    pacer.hurry()
    assert done.wait(2.0)
    thread.join()
    assert time.perf_counter() - started < 2.0
    slept = pacer.slept
    _busy(0.005)
    pacer()
    assert pacer.slept == slept


@pytest.mark.parametrize("share", [0.0, -0.5, 1.5])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="share"):
        Pacer(share=share, slice_seconds=0.001, budget=1.0)
