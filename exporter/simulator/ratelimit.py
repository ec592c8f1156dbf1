"""WhiteBIT's REST rate limits: sliding windows per client IP and endpoint family.

WhiteBIT counts REST requests per IP address (docs/protocol.md#rest-rate-limits) and rejects,
rather than queues, a request over the limit with HTTP 429. No rate-limit headers are documented, so none are sent.
The simulator models each limit as a sliding window (as JKorf's client does): a request is
admitted when fewer than ``limit`` requests were admitted from that IP for that family in the
last ``window`` seconds. Rejected requests are not counted, so a client that backs off recovers
as soon as its oldest admitted request leaves the window.

Tests also need WhiteBIT to throttle on cue: :meth:`RateLimits.force` makes the next N requests
of a family answer 429 whatever their IP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from exporter.core.window import KeyedSlidingWindows
from exporter.whitebit.ratelimit import family_for as private_family_for

# (limit, window seconds) per endpoint family, as docs/protocol.md#rest-rate-limits lists them.
DEFAULT_LIMITS: dict[str, tuple[int, float]] = {
    "default": (10_000, 10.0),
    "main-account": (1_000, 10.0),
    "main-account/history": (200, 10.0),
    "main-account/codes/apply": (60, 1.0),  # the previous docs site
    "trade-account": (12_000, 10.0),
    "collateral-account": (12_000, 10.0),
    # The current docs; earlier ones said 1,000 / 10 s (docs/protocol.md#rest-rate-limits).
    "orders": (12_000, 10.0),
    "profile/websocket_token": (10, 60.0),
    "sub-account/balances": (1_000, 10.0),
    "public": (20_000, 10.0),
    # Markets and ticker 2,000 / 10 s, the order book 600 / 10 s, within the public limit.
    "public/markets": (2_000, 10.0),
    "public/ticker": (2_000, 10.0),
    "public/orderbook": (600, 10.0),
}

_V4 = "/api/v4/"


def family_for(path: str) -> str:
    """The rate-limit family of a request path (a key of :data:`DEFAULT_LIMITS`).

    Private paths fall into the families the exporter's own limiter uses; the public endpoints,
    which the exporter never calls, add their own.
    """
    if path.startswith(_V4):
        rest = path[len(_V4) :]
        if rest in ("main-account/codes/apply", "public/markets", "public/ticker"):
            return rest
        if rest.startswith("public/orderbook/"):
            return "public/orderbook"
        if rest.startswith("public/"):
            return "public"
    return private_family_for(path)


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
            family: KeyedSlidingWindows(limit, window, clock=clock) for family, (limit, window) in merged.items()
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
