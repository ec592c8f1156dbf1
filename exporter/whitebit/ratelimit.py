"""The exporter's own REST rate limiter: WhiteBIT's documented limits, per endpoint family.

WhiteBIT counts REST requests (private and public) per client IP and endpoint family in windows of 10 s (60 s
for the WebSocket token) and answers 429 over the limit (docs/protocol.md#rest-rate-limits); repeated 429s may get the
IP or key restricted. The exporter therefore never sends a request the limit would refuse: every
request first takes a slot from its family's :class:`FamilyLimiter`, and a caller that finds the
family full *waits* for a slot instead of failing. One :class:`RateLimiter` serves the whole process
(all accounts), because the limits belong to the IP, not to a key.

Why no request of ours can be refused, whatever the network does: a slot counts against the window
from the moment it is taken until ``window`` seconds after its *answer* arrived (or the attempt
failed). WhiteBIT counts a request at its arrival, which lies between our send and our answer. So
when WhiteBIT admits request *j*, every earlier request *i* it still counts arrived after
``arrival_j - window`` and was therefore answered after ``send_j - window``: it was still holding
its slot when *j* took one. Our count at send time is at least WhiteBIT's count at arrival time, and
ours was below the limit. Slots are given out first come, first served; once a family's window is
half full, no faster than ``window / limit`` apart, so a saturated family serves its callers evenly
instead of in bursts separated by stalls of a whole window.

A 429 from WhiteBIT (ours are never caused by our own volume, but the IP may be shared, or the key's
nonce state may be confused) closes the whole family for the backoff the caller chose, via
:meth:`RateLimiter.pause`, so every account backs off together instead of each hammering on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator

from exporter.config.schema import DOCUMENTED_LIMITS, RateLimit

_V4 = "/api/v4/"
_EXACT_FAMILIES = (
    "main-account/history",
    "profile/websocket_token",
    "orders",
    "sub-account/balances",
    "public/ticker",
)
_PREFIX_FAMILIES = ("main-account", "trade-account", "collateral-account")


def family_for(path: str) -> str:
    """The rate-limit family of a request path (a key of :data:`DOCUMENTED_LIMITS`); public paths other than the
    ticker fall in ``default``, which is stricter than WhiteBIT's public limit."""
    if not path.startswith(_V4):
        return "default"
    rest = path[len(_V4) :]
    if rest in _EXACT_FAMILIES:
        return rest
    for prefix in _PREFIX_FAMILIES:
        if rest.startswith(prefix + "/"):
            return prefix
    return "default"


class _Slot:
    """One request's claim on its family's window: open while in flight, then held ``window`` s more."""

    __slots__ = ("key", "released")

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.released = False


class FamilyLimiter:
    """The window of one endpoint family: callers ``acquire()`` a slot and ``release()`` it when answered."""

    def __init__(
        self,
        family: str,
        limit: RateLimit,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.family = family
        self.limit = limit
        self._clock = clock
        self._open: dict[Hashable, int] = {}  # slots in flight, by key
        self._in_flight = 0
        # (release time, key), in release order, so the oldest is always first.
        self._released: deque[tuple[float, Hashable]] = deque()
        self._turn = asyncio.Lock()  # first come, first served among waiting callers
        self._release_event = asyncio.Event()
        self._paused_until = 0.0
        self._last_admitted = -math.inf
        # Past half the limit, admissions are paced at the sustainable rate instead of let through in
        # a burst that would then stall every caller (another account's poll too) for a whole window.
        self._pace_from = max(1, limit.limit // 2)
        self._spacing = limit.window / limit.limit

    def _expire(self, now: float) -> None:
        horizon = now - self.limit.window
        released = self._released
        while released and released[0][0] <= horizon:
            released.popleft()

    async def acquire(self, key: Hashable = None) -> _Slot:
        """Wait until the family has room (and is not paused), then take a slot tagged with ``key``."""
        async with self._turn:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    await asyncio.sleep(self._paused_until - now)
                    continue
                self._expire(now)
                counted = self._in_flight + len(self._released)
                if counted < self.limit.limit:
                    wait = self._last_admitted + self._spacing - now
                    if counted >= self._pace_from and wait > 0:
                        await asyncio.sleep(wait)
                        continue
                    self._last_admitted = now
                    slot = _Slot(key)
                    self._open[key] = self._open.get(key, 0) + 1
                    self._in_flight += 1
                    return slot
                self._release_event.clear()
                # Only open slots block: wait for a release. Otherwise the oldest answer ages out
                # at a known time, or an open slot is answered (and ages out later) before that.
                timeout = self._released[0][0] + self.limit.window - now if self._released else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._release_event.wait()

    def release(self, slot: _Slot) -> None:
        """The request's answer arrived (or it failed): its slot now ages out of the window."""
        if slot.released:
            return
        slot.released = True
        self._released.append((self._clock(), slot.key))
        self._in_flight -= 1
        remaining = self._open[slot.key] - 1
        if remaining:
            self._open[slot.key] = remaining
        else:
            del self._open[slot.key]
        self._release_event.set()

    def pause(self, seconds: float) -> None:
        """Admit nothing for ``seconds`` (extends, never shortens, a pause already in force)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    @property
    def paused_until(self) -> float:
        """The clock time before which nothing is admitted (in the past when not paused)."""
        return self._paused_until

    def usage_by_key(self) -> dict[Hashable, int]:
        """:meth:`usage` split by the ``key`` each slot was taken with."""
        self._expire(self._clock())
        counts = dict(self._open)
        for _, key in self._released:
            counts[key] = counts.get(key, 0) + 1
        return counts


class RateLimiter:
    """Every endpoint family's limiter for one IP (the whole exporter process)."""

    def __init__(
        self,
        overrides: Iterable[tuple[str, RateLimit]] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # ``overrides`` come from ``rest.rate_limits``, whose families the config loader has checked.
        limits = {**DOCUMENTED_LIMITS, **dict(overrides)}
        self.limits: dict[str, RateLimit] = limits
        self._families = {family: FamilyLimiter(family, limit, clock=clock) for family, limit in limits.items()}

    def family(self, path: str) -> FamilyLimiter:
        """The limiter that governs requests to ``path``."""
        return self._families[family_for(path)]

    def families(self) -> Iterator[FamilyLimiter]:
        """Every family's limiter."""
        return iter(self._families.values())

    def limit_for(self, path: str) -> RateLimit:
        """The limit in force for ``path``'s family."""
        return self.family(path).limit
