"""A sliding-window counter: at most ``limit`` events in any ``window`` seconds.

Used on both sides of a limit: a client paces itself with :meth:`SlidingWindow.acquire` (it waits for
room), and the simulator enforces a limit with :meth:`SlidingWindow.try_acquire` (a refusal is not
counted, so a client that backs off recovers as soon as its oldest event leaves the window).
:class:`KeyedSlidingWindows` keeps one window per key (a client IP, a connection) and forgets idle keys.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable


class SlidingWindow:
    """At most ``limit`` events per ``window`` seconds of ``clock``."""

    __slots__ = ("_clock", "_times", "limit", "window")

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._times: deque[float] = deque()

    def _expire(self, now: float) -> None:
        times = self._times
        while times and now - times[0] >= self.window:
            times.popleft()

    def delay(self, now: float | None = None) -> float:
        """Seconds to wait before the next event is allowed (0 when it is now)."""
        now = self._clock() if now is None else now
        self._expire(now)
        if len(self._times) < self.limit:
            return 0.0
        return self._times[0] + self.window - now

    def try_acquire(self, now: float | None = None) -> bool:
        """Count one event if the window has room; a refusal is not counted."""
        now = self._clock() if now is None else now
        if self.delay(now) > 0:
            return False
        self._times.append(now)
        return True

    async def acquire(self) -> None:
        """Wait until the window has room, then count one event."""
        # Not a poll: each sleep lasts exactly until the oldest event leaves the window.
        while (wait := self.delay()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(wait)
        self._times.append(self._clock())

    def usage(self, now: float | None = None) -> int:
        """Events inside the window now."""
        self._expire(self._clock() if now is None else now)
        return len(self._times)


class KeyedSlidingWindows:
    """One :class:`SlidingWindow` per key, created on first use and dropped once idle."""

    _SWEEP_EVERY = 1024  # calls between sweeps of idle keys, so memory follows the active keys only

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0:
            raise ValueError(f"limit must be >= 1 and window > 0, got {limit}/{window}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._windows: dict[Hashable, SlidingWindow] = {}
        self._calls = 0

    def try_acquire(self, key: Hashable, now: float | None = None) -> bool:
        """Count one event for ``key`` if its window has room; a refusal is not counted."""
        now = self._clock() if now is None else now
        self._calls += 1
        if self._calls % self._SWEEP_EVERY == 0:
            self._sweep(now)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = SlidingWindow(self.limit, self.window, clock=self._clock)
        return window.try_acquire(now)

    def usage(self, key: Hashable, now: float | None = None) -> int:
        """Events of ``key`` inside its window now."""
        window = self._windows.get(key)
        return 0 if window is None else window.usage(self._clock() if now is None else now)

    def keys(self) -> int:
        """How many keys hold events (after the last sweep); memory follows this."""
        return len(self._windows)

    def _sweep(self, now: float) -> None:
        for key, window in list(self._windows.items()):
            if window.usage(now) == 0:
                del self._windows[key]
