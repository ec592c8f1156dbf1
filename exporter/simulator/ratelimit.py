"""WhiteBIT's REST rate limits: sliding windows per client IP and endpoint family.

WhiteBIT counts REST requests per IP address (reference 3.1) and rejects, rather than queues, a
request over the limit with HTTP 429. No rate-limit headers are documented, so none are sent.
The simulator models each limit as a sliding window (as JKorf's client does): a request is
admitted when fewer than ``limit`` requests were admitted from that IP for that family in the
last ``window`` seconds. Rejected requests are not counted, so a client that backs off recovers
as soon as its oldest admitted request leaves the window.

Tests also need WhiteBIT to throttle on cue: :meth:`RateLimits.force` makes the next N requests
of a family answer 429 whatever their IP.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable, Mapping

# (limit, window seconds) per endpoint family, as reference 3.1 lists them.
DEFAULT_LIMITS: dict[str, tuple[int, float]] = {
    "default": (10_000, 10.0),
    "main-account": (1_000, 10.0),
    "main-account/history": (200, 10.0),
    "main-account/codes/apply": (60, 1.0),  # old docs
    "trade-account": (12_000, 10.0),
    "collateral-account": (12_000, 10.0),
    # New docs; the old docs said 1,000 / 10 s (reference 8.3). The simulator follows the new docs.
    "orders": (12_000, 10.0),
    "profile/websocket_token": (10, 60.0),
    "sub-account/balances": (1_000, 10.0),
    "public": (20_000, 10.0),
    # Reference 3.1: "markets and ticker 2,000 / 10 s; orderbook 600 / 10 s" within the public limit.
    "public/markets": (2_000, 10.0),
    "public/ticker": (2_000, 10.0),
    "public/orderbook": (600, 10.0),
}

_V4 = "/api/v4/"


def family_for(path: str) -> str:
    """The rate-limit family of a request path (a key of :data:`DEFAULT_LIMITS`)."""
    if not path.startswith(_V4):
        return "default"
    rest = path[len(_V4) :]
    exact = {
        "profile/websocket_token": "profile/websocket_token",
        "main-account/history": "main-account/history",
        "main-account/codes/apply": "main-account/codes/apply",
        "orders": "orders",
        "sub-account/balances": "sub-account/balances",
        "public/markets": "public/markets",
        "public/ticker": "public/ticker",
    }
    if rest in exact:
        return exact[rest]
    for prefix in ("main-account", "trade-account", "collateral-account"):
        if rest.startswith(prefix + "/"):
            return prefix
    if rest.startswith("public/orderbook/"):
        return "public/orderbook"
    if rest.startswith("public/"):
        return "public"
    return "default"


class SlidingWindowLimiter:
    """At most ``limit`` admissions per key in any ``window`` seconds (a sliding log per key)."""

    _SWEEP_EVERY = 1024  # calls between sweeps of idle keys, so memory follows the active keys only

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or window <= 0:
            raise ValueError(f"limit must be >= 1 and window > 0, got {limit}/{window}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._log: dict[Hashable, deque[float]] = {}
        self._calls = 0

    def _expire(self, key: Hashable, now: float) -> deque[float] | None:
        times = self._log.get(key)
        if times is None:
            return None
        horizon = now - self.window
        while times and times[0] <= horizon:
            times.popleft()
        if not times:
            del self._log[key]
            return None
        return times

    def _sweep(self, now: float) -> None:
        for key in list(self._log):
            self._expire(key, now)

    def try_acquire(self, key: Hashable, now: float | None = None) -> bool:
        """Admit one request for ``key`` if the window has room; a refusal is not counted."""
        now = self._clock() if now is None else now
        self._calls += 1
        if self._calls % self._SWEEP_EVERY == 0:
            self._sweep(now)
        times = self._expire(key, now)
        if times is not None and len(times) >= self.limit:
            return False
        self._log.setdefault(key, deque()).append(now)
        return True

    def usage(self, key: Hashable, now: float | None = None) -> int:
        """How many admissions of ``key`` are inside the window now."""
        times = self._expire(key, self._clock() if now is None else now)
        return 0 if times is None else len(times)

    def keys(self) -> int:
        """How many keys hold admissions (after the last sweep); for tests of bounded memory."""
        return len(self._log)


class RateLimits:
    """Every family's limiter, keyed by client IP, plus forced 429s for tests."""

    def __init__(
        self,
        limits: Mapping[str, tuple[int, float]] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        merged = dict(DEFAULT_LIMITS)
        for family, (limit, window) in (limits or {}).items():
            if family not in DEFAULT_LIMITS:
                raise ValueError(f"unknown rate-limit family {family!r}; known: {', '.join(sorted(DEFAULT_LIMITS))}")
            merged[family] = (int(limit), float(window))
        self.limits: dict[str, tuple[int, float]] = merged
        self._clock = clock
        self._limiters = {
            family: SlidingWindowLimiter(limit, window, clock=clock) for family, (limit, window) in merged.items()
        }
        self._forced: dict[str, int] = {}

    @staticmethod
    def resolve(family_or_path: str) -> str:
        """A family name, given either the family or a request path."""
        if family_or_path.startswith("/"):
            return family_for(family_or_path)
        if family_or_path not in DEFAULT_LIMITS:
            raise ValueError(f"unknown rate-limit family {family_or_path!r}")
        return family_or_path

    def force(self, family_or_path: str, count: int) -> None:
        """Make the next ``count`` requests of this family (from any IP) answer 429."""
        if count < 0:
            raise ValueError("count must be >= 0")
        family = self.resolve(family_or_path)
        if count:
            self._forced[family] = self._forced.get(family, 0) + count
        else:
            self._forced.pop(family, None)

    def forced(self, family_or_path: str) -> int:
        """Forced 429s still pending for the family."""
        return self._forced.get(self.resolve(family_or_path), 0)

    def check(self, ip: str, path: str) -> bool:
        """Admit (True) or throttle (False) one request from ``ip`` to ``path``."""
        family = family_for(path)
        pending = self._forced.get(family, 0)
        if pending:
            if pending == 1:
                del self._forced[family]
            else:
                self._forced[family] = pending - 1
            return False
        return self._limiters[family].try_acquire(ip)

    def usage(self, ip: str, family_or_path: str) -> int:
        """Admitted requests from ``ip`` in the family's current window."""
        return self._limiters[self.resolve(family_or_path)].usage(ip)
