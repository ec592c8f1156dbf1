"""The exporter's own rate limiter: documented limits, waiting instead of failing, and no refusal possible.

Behavioural tests run on the real monotonic clock with short windows and check properties of the
recorded acquisitions and releases, never how long anything took.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import pytest

from exporter.config.schema import DOCUMENTED_LIMITS, RateLimit
from exporter.core.window import KeyedSlidingWindows
from exporter.whitebit.ratelimit import FamilyLimiter, RateLimiter, family_for


def test_documented_limits_are_whitebits_per_ip_limits() -> None:
    assert DOCUMENTED_LIMITS["main-account"] == RateLimit(1_000, 10.0)
    assert DOCUMENTED_LIMITS["main-account/history"] == RateLimit(200, 10.0)
    assert DOCUMENTED_LIMITS["trade-account"] == RateLimit(12_000, 10.0)
    assert DOCUMENTED_LIMITS["collateral-account"] == RateLimit(12_000, 10.0)
    assert DOCUMENTED_LIMITS["profile/websocket_token"] == RateLimit(10, 60.0)
    assert DOCUMENTED_LIMITS["default"] == RateLimit(10_000, 10.0)
    # Old docs 1,000, new docs 12,000: the stricter one.
    assert DOCUMENTED_LIMITS["orders"] == RateLimit(1_000, 10.0)


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/api/v4/main-account/balance", "main-account"),
        ("/api/v4/main-account/history", "main-account/history"),
        ("/api/v4/trade-account/balance", "trade-account"),
        ("/api/v4/collateral-account/balance-summary", "collateral-account"),
        ("/api/v4/collateral-account/summary", "collateral-account"),
        ("/api/v4/profile/websocket_token", "profile/websocket_token"),
        ("/api/v4/orders", "orders"),
        ("/api/v4/sub-account/balances", "sub-account/balances"),
        ("/api/v4/order/new", "default"),
        ("other", "default"),
    ],
)
def test_paths_map_to_their_documented_family(path: str, family: str) -> None:
    assert family_for(path) == family


def test_overrides_replace_documented_limits_and_the_rest_keep_theirs() -> None:
    # Unknown families and limits below 1 are refused by the config loader (tests/config).
    limiter = RateLimiter([("main-account/history", RateLimit(100, 10.0))])
    assert limiter.limit_for("/api/v4/main-account/history") == RateLimit(100, 10.0)
    assert limiter.limit_for("/api/v4/main-account/balance") == RateLimit(1_000, 10.0)


async def test_an_open_slot_blocks_until_released_and_waiters_are_served_in_order() -> None:
    family = FamilyLimiter("t", RateLimit(1, 0.05))
    first = await family.acquire("a")
    order: list[str] = []

    async def take(name: str) -> None:
        slot = await family.acquire(name)
        order.append(name)
        family.release(slot)

    waiters = [asyncio.create_task(take(name)) for name in ("b", "c", "d")]
    for _ in range(20):
        await asyncio.sleep(0)
    # Nothing has been answered yet, so no slot can free up however long they wait.
    assert order == [] and not any(w.done() for w in waiters)
    family.release(first)
    await asyncio.wait_for(asyncio.gather(*waiters), timeout=10)
    assert order == ["b", "c", "d"]


async def test_callers_wait_for_a_slot_instead_of_failing_and_never_exceed_the_window() -> None:
    limit = RateLimit(4, 0.2)
    family = FamilyLimiter("t", limit)
    events: list[tuple[float, float]] = []  # (acquired, released) on the limiter's clock

    async def call() -> None:
        slot = await family.acquire("k")
        acquired = time.monotonic()
        await asyncio.sleep(0.001)
        family.release(slot)
        events.append((acquired, time.monotonic()))

    await asyncio.wait_for(asyncio.gather(*(call() for _ in range(20))), timeout=30)
    assert len(events) == 20
    for acquired, _ in events:
        holding = [
            1
            for other_acquired, other_released in events
            # 1 ms of slack: these times are read just after the limiter's own reads of the clock.
            if other_acquired < acquired and other_released > acquired - limit.window + 0.001
        ]
        assert len(holding) < limit.limit


async def test_no_arrival_order_lets_whitebits_sliding_window_refuse_a_request() -> None:
    """WhiteBIT counts a request when it arrives, anywhere between our send and our answer."""
    limit = RateLimit(5, 0.3)
    family = FamilyLimiter("t", limit)
    rng = random.Random(7)
    arrivals: list[float] = []

    async def call() -> None:
        slot = await family.acquire()
        sent = time.monotonic()
        await asyncio.sleep(rng.uniform(0, 0.03))
        answered = time.monotonic()
        family.release(slot)
        arrivals.append(rng.uniform(sent, answered))

    await asyncio.wait_for(asyncio.gather(*(call() for _ in range(40))), timeout=30)
    server = KeyedSlidingWindows(limit.limit, limit.window)
    assert all(server.try_acquire("ip", now=t) for t in sorted(arrivals))


async def test_a_paused_family_admits_nothing_before_the_pause_ends() -> None:
    family = FamilyLimiter("t", RateLimit(100, 10.0))
    family.pause(0.05)
    family.pause(0.01)  # a shorter pause never shortens the one in force
    until = family.paused_until
    slot = await asyncio.wait_for(family.acquire(), timeout=10)
    assert time.monotonic() >= until
    family.release(slot)


async def test_usage_counts_open_and_recent_slots_by_key() -> None:
    family = FamilyLimiter("t", RateLimit(10, 60.0))
    a1 = await family.acquire(("main", "/x"))
    await family.acquire(("main", "/x"))
    b = await family.acquire(("ops", "/x"))
    family.release(a1)
    family.release(b)
    family.release(b)  # releasing twice counts once
    assert sum(family.usage_by_key().values()) == 3
    assert family.usage_by_key() == {("main", "/x"): 2, ("ops", "/x"): 1}


async def test_the_limiter_is_shared_by_family_not_by_endpoint() -> None:
    # Answers still in flight block a full family however short its window.
    limiter = RateLimiter([("collateral-account", RateLimit(2, 0.01))])
    summary = limiter.family("/api/v4/collateral-account/summary")
    assert limiter.family("/api/v4/collateral-account/balance-summary") is summary
    await summary.acquire()
    await summary.acquire()
    blocked = asyncio.create_task(limiter.family("/api/v4/collateral-account/balance-summary").acquire())
    for _ in range(10):
        await asyncio.sleep(0)
    assert not blocked.done()
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked


async def test_past_half_the_limit_admissions_are_paced_not_burst() -> None:
    limit = RateLimit(10, 0.5)
    family = FamilyLimiter("t", limit)
    admitted: list[float] = []
    for _ in range(8):
        slot = await asyncio.wait_for(family.acquire(), timeout=10)
        admitted.append(time.monotonic())
        family.release(slot)
    # The first half goes at once; from then on at least window / limit apart.
    gaps = [later - earlier for earlier, later in itertools.pairwise(admitted[4:])]
    assert all(gap >= limit.window / limit.limit * 0.99 for gap in gaps), gaps
