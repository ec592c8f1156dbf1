"""Source health: readiness lines and whitebit_up per account."""

from __future__ import annotations

from prometheus_client.registry import CollectorRegistry

from exporter.core.health import HealthRegistry, UpCollector
from exporter.core.metrics import WHITEBIT_UP


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_fresh_registration_is_failing_with_reason_starting() -> None:
    health = HealthRegistry()
    source = health.register("websocket", "main")
    assert not source.is_ok
    assert source.reason == "starting"
    assert health.readiness() == (False, ["websocket main: starting"])


def test_readiness_lists_every_failing_source_with_its_reason() -> None:
    health = HealthRegistry()
    health.register("websocket", "main").failing("disconnected (connection refused)")
    health.register("rest", "main").ok()
    health.register("zerohash", None).failing("no secrets")
    ready, lines = health.readiness()
    assert not ready
    assert lines == ["websocket main: disconnected (connection refused)", "zerohash: no secrets"]


def test_ready_once_every_source_is_ok() -> None:
    health = HealthRegistry()
    websocket = health.register("websocket", "main")
    rest = health.register("rest", "main")
    websocket.ok()
    assert health.readiness()[0] is False
    rest.ok()
    assert health.readiness() == (True, [])
    assert rest.reason == ""


def test_no_sources_means_ready() -> None:
    assert HealthRegistry().readiness() == (True, [])


def test_source_goes_back_to_failing() -> None:
    health = HealthRegistry()
    source = health.register("websocket", "main")
    source.ok()
    source.failing("disconnected (closed by server)")
    assert not source.is_ok
    assert health.readiness() == (False, ["websocket main: disconnected (closed by server)"])


def test_registering_the_same_source_twice_returns_the_same_handle() -> None:
    health = HealthRegistry()
    first = health.register("websocket", "main")
    first.ok()
    again = health.register("websocket", "main")
    assert again is first
    assert again.is_ok
    assert len(health.sources()) == 1


def test_source_with_max_age_turns_stale_without_fresh_ok() -> None:
    clock = FakeClock()
    health = HealthRegistry(clock=clock)
    poller = health.register("rest", "main", max_age=60)
    poller.ok()
    clock.now += 60
    assert poller.is_ok
    clock.now += 1
    assert not poller.is_ok
    assert poller.reason == "stale: no fresh data for 61s (limit 60s)"
    assert health.readiness() == (False, ["rest main: stale: no fresh data for 61s (limit 60s)"])
    poller.ok()
    assert health.readiness() == (True, [])


def _up(registry: CollectorRegistry, account: str) -> float | None:
    return registry.get_sample_value(WHITEBIT_UP.name, {"account": account})


def test_whitebit_up_per_configured_account() -> None:
    health = HealthRegistry()
    registry = CollectorRegistry()
    registry.register(UpCollector(health, ["main", "ops", "hooks"]))
    main_ws = health.register("websocket", "main")
    main_rest = health.register("rest", "main")
    health.register("websocket", "ops").ok()
    health.register("zerohash", None).failing("not a WhiteBIT account")

    assert _up(registry, "main") == 0.0  # both sources still starting
    main_ws.ok()
    assert _up(registry, "main") == 0.0  # one of two sources OK is not up
    main_rest.ok()
    assert _up(registry, "main") == 1.0
    assert _up(registry, "ops") == 1.0
    assert _up(registry, "hooks") == 1.0  # webhook-only: no source registered
    main_rest.failing("HTTP 503")
    assert _up(registry, "main") == 0.0


def test_whitebit_up_only_for_configured_accounts() -> None:
    health = HealthRegistry()
    registry = CollectorRegistry()
    registry.register(UpCollector(health, ["main"]))
    health.register("websocket", "stray").ok()
    samples = [s for m in registry.collect() for s in m.samples]
    assert [(s.name, s.labels, s.value) for s in samples] == [(WHITEBIT_UP.name, {"account": "main"}, 1.0)]


def test_an_ok_source_with_a_note_is_ready_and_up_and_the_note_is_listed() -> None:
    # A WebSocket that lost one channel whose wallet a REST poll covers: still serving.
    health = HealthRegistry()
    websocket = health.register("websocket", "main")
    websocket.ok(note="channel balanceMargin: error 2; the collateral wallet is polled over REST")
    assert websocket.is_ok
    assert health.readiness() == (True, [])
    assert health.account_ok("main")
    assert health.notes() == [
        "websocket main: channel balanceMargin: error 2; the collateral wallet is polled over REST"
    ]
    websocket.ok()
    assert health.notes() == []
    websocket.ok(note="channel balanceSpot: error 3")
    websocket.failing("disconnected")
    assert health.notes() == []  # a failing source has a reason, not a note
