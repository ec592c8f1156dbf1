"""The sliding window: a client waits for room, a server refuses without counting the refusal."""

from __future__ import annotations

import asyncio

import pytest

from exporter.core.window import KeyedSlidingWindows, SlidingWindow


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def clock_at(now: float) -> Clock:
    return Clock(now)


def test_events_beyond_the_limit_wait_until_the_oldest_leaves_the_window() -> None:
    clock = Clock()
    window = SlidingWindow(2, 10.0, clock=clock)
    assert window.try_acquire() and window.try_acquire()
    assert not window.try_acquire()  # refused, and not counted
    assert window.usage() == 2
    assert window.delay() == 10.0
    clock.now += 4
    assert window.delay() == 6.0
    clock.now += 6
    assert window.delay() == 0.0 and window.try_acquire()


async def test_acquire_waits_for_room() -> None:
    window = SlidingWindow(1, 0.05)
    await window.acquire()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await window.acquire()
    assert loop.time() - started >= 0.04


# --- keyed windows (the simulator keeps one per client IP and endpoint family) ---------------------


def test_limiter_admits_up_to_the_limit_then_refuses():
    clock = Clock()
    limiter = KeyedSlidingWindows(3, 10.0, clock=clock)
    assert [limiter.try_acquire("ip") for _ in range(4)] == [True, True, True, False]
    assert limiter.usage("ip") == 3


def test_window_slides_so_each_admission_expires_window_seconds_after_it_was_made():
    clock = clock_at(0.0)
    limiter = KeyedSlidingWindows(2, 10.0, clock=clock)
    assert limiter.try_acquire("ip")
    clock.now = 4.0
    assert limiter.try_acquire("ip")
    clock.now = 9.999
    assert not limiter.try_acquire("ip")
    clock.now = 10.0  # the first admission (t=0) leaves the window, the second (t=4) stays
    assert limiter.try_acquire("ip")
    assert not limiter.try_acquire("ip")
    clock.now = 14.0
    assert limiter.usage("ip") == 1
    assert limiter.try_acquire("ip")


def test_refused_requests_do_not_extend_the_wait():
    clock = clock_at(0.0)
    limiter = KeyedSlidingWindows(1, 10.0, clock=clock)
    assert limiter.try_acquire("ip")
    for step in range(1, 10):
        clock.now = float(step)
        assert not limiter.try_acquire("ip")
    clock.now = 10.0
    assert limiter.try_acquire("ip")


def test_explicit_now_overrides_the_clock():
    limiter = KeyedSlidingWindows(1, 10.0, clock=lambda: 0.0)
    assert limiter.try_acquire("ip", now=100.0)
    assert not limiter.try_acquire("ip", now=105.0)
    assert limiter.try_acquire("ip", now=110.0)


def test_keys_are_independent():
    limiter = KeyedSlidingWindows(1, 10.0, clock=Clock())
    assert limiter.try_acquire("a")
    assert limiter.try_acquire("b")
    assert not limiter.try_acquire("a")


def test_idle_keys_are_forgotten_so_memory_follows_active_clients():
    clock = clock_at(0.0)
    limiter = KeyedSlidingWindows(5, 10.0, clock=clock)
    for n in range(3000):
        limiter.try_acquire(f"ip-{n}")
    clock.now = 100.0
    for _ in range(2048):
        limiter.try_acquire("active")
    assert limiter.keys() == 1


def test_limiter_rejects_nonsense_limits():
    with pytest.raises(ValueError, match="limit must be >= 1"):
        KeyedSlidingWindows(0, 10.0)
    with pytest.raises(ValueError, match="window > 0"):
        KeyedSlidingWindows(1, 0.0)
