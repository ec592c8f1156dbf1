"""The sliding window: a client waits for room, a server refuses without counting the refusal."""

from __future__ import annotations

import asyncio

import pytest

from exporter.core.window import KeyedSlidingWindows, SlidingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


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


def test_keyed_windows_count_each_key_apart_and_forget_idle_keys() -> None:
    clock = Clock()
    windows = KeyedSlidingWindows(1, 10.0, clock=clock)
    assert windows.try_acquire("a") and windows.try_acquire("b")
    assert not windows.try_acquire("a")
    assert windows.usage("a") == 1 and windows.usage("c") == 0
    clock.now += 10
    for n in range(KeyedSlidingWindows._SWEEP_EVERY):
        windows.try_acquire(("busy", n % 3))
    assert windows.keys() <= 4  # "a" and "b" went idle and were swept; the busy keys stay


def test_keyed_windows_refuse_an_impossible_limit() -> None:
    with pytest.raises(ValueError, match="limit must be >= 1"):
        KeyedSlidingWindows(0, 10.0)
