"""The simulator's rate limits are WhiteBIT's: per IP, per endpoint family, in sliding windows."""

from __future__ import annotations

import pytest

from exporter.simulator.ratelimit import DEFAULT_LIMITS, RateLimits, family_for


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_default_limits_are_the_documented_ones():
    assert DEFAULT_LIMITS["default"] == (10_000, 10.0)
    assert DEFAULT_LIMITS["main-account"] == (1_000, 10.0)
    assert DEFAULT_LIMITS["main-account/history"] == (200, 10.0)
    assert DEFAULT_LIMITS["trade-account"] == (12_000, 10.0)
    assert DEFAULT_LIMITS["collateral-account"] == (12_000, 10.0)
    assert DEFAULT_LIMITS["orders"] == (12_000, 10.0)
    assert DEFAULT_LIMITS["profile/websocket_token"] == (10, 60.0)
    assert DEFAULT_LIMITS["public"] == (20_000, 10.0)
    assert DEFAULT_LIMITS["public/markets"] == (2_000, 10.0)


@pytest.mark.parametrize(
    ("path", "family"),
    [
        ("/api/v4/main-account/balance", "main-account"),
        ("/api/v4/main-account/address", "main-account"),
        ("/api/v4/main-account/history", "main-account/history"),
        ("/api/v4/trade-account/balance", "trade-account"),
        ("/api/v4/trade-account/order/history", "trade-account"),
        ("/api/v4/collateral-account/balance", "collateral-account"),
        ("/api/v4/collateral-account/summary", "collateral-account"),
        ("/api/v4/orders", "orders"),
        ("/api/v4/profile/websocket_token", "profile/websocket_token"),
        ("/api/v4/public/markets", "public/markets"),
        ("/api/v4/public/ticker", "public/ticker"),
        ("/api/v4/public/orderbook/BTC_USDT", "public/orderbook"),
        ("/api/v4/public/assets", "public"),
        ("/api/v4/public/time", "public"),
        ("/api/v4/order/new", "default"),
        ("/api/v4/nonexistent", "default"),
        ("/ws", "default"),
    ],
)
def test_paths_map_to_their_documented_family(path, family):
    assert family_for(path) == family


def test_limits_count_per_client_ip_and_family():
    limits = RateLimits({"main-account/history": (2, 10.0)}, clock=FakeClock())
    history = "/api/v4/main-account/history"
    assert limits.check("10.0.0.1", history)
    assert limits.check("10.0.0.1", history)
    assert not limits.check("10.0.0.1", history)
    assert limits.check("10.0.0.2", history)  # another IP has its own budget
    assert limits.check("10.0.0.1", "/api/v4/main-account/balance")  # another family too
    assert limits.usage("10.0.0.1", "main-account/history") == 2
    assert limits.usage("10.0.0.1", history) == 2


def test_endpoints_of_one_family_share_its_budget():
    limits = RateLimits({"main-account": (2, 10.0)}, clock=FakeClock())
    assert limits.check("ip", "/api/v4/main-account/balance")
    assert limits.check("ip", "/api/v4/main-account/address")
    assert not limits.check("ip", "/api/v4/main-account/balance")


def test_overrides_must_name_a_known_family():
    with pytest.raises(ValueError, match="unknown rate-limit family"):
        RateLimits({"main-acount": (1, 1.0)})


def test_forced_429s_hit_any_ip_and_do_not_use_the_budget():
    limits = RateLimits({"main-account/history": (1, 10.0)}, clock=FakeClock())
    limits.force("main-account/history", 2)
    assert limits.forced("/api/v4/main-account/history") == 2
    assert not limits.check("10.0.0.1", "/api/v4/main-account/history")
    assert not limits.check("10.0.0.2", "/api/v4/main-account/history")
    assert limits.forced("main-account/history") == 0
    assert limits.check("10.0.0.1", "/api/v4/main-account/history")
    assert limits.usage("10.0.0.1", "main-account/history") == 1


def test_force_accepts_a_path_and_only_touches_its_family():
    limits = RateLimits(clock=FakeClock())
    limits.force("/api/v4/profile/websocket_token", 1)
    assert limits.check("ip", "/api/v4/main-account/balance")
    assert not limits.check("ip", "/api/v4/profile/websocket_token")
    assert limits.check("ip", "/api/v4/profile/websocket_token")


def test_force_zero_cancels_and_unknown_family_is_an_error():
    limits = RateLimits(clock=FakeClock())
    limits.force("orders", 3)
    limits.force("orders", 0)
    assert limits.check("ip", "/api/v4/orders")
    with pytest.raises(ValueError, match="unknown rate-limit family"):
        limits.force("no-such-family", 1)
    with pytest.raises(ValueError, match="count must be >= 0"):
        limits.force("orders", -1)
