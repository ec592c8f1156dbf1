"""Zero Hash balances: summed over participants, allow-listed per participant, applied only when not older."""

from __future__ import annotations

import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.registry import CollectorRegistry

from exporter.app import Exporter
from exporter.config.schema import Config, ZerohashConfig, ZerohashWebhookConfig
from exporter.core.state import StateStore, ZerohashBalance
from exporter.zerohash.balances import (
    BalancePayloadError,
    ZerohashBalanceCollector,
    ZerohashBalances,
    parse_balance_event,
)
from exporter.zerohash.signing import hmac_signature
from tests.helpers import scrape

SECRET = "zh-balances-secret-0123456789"


def payload(
    participant: str = "P1",
    balance: str = "10",
    timestamp: int = 1_760_000_000_000,
    *,
    account_type: str = "available",
    asset: str = "USD",
    movements: tuple[str, ...] = ("deposit",),
    **extra: Any,
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "participant_code": participant,
        "account_group": "PLAT",
        "account_label": "general",
        "account_type": account_type,
        "asset": asset,
        "balance": balance,
        "run_id": "1",
        "run_type": "deposit",
        "timestamp": timestamp,
        "movements": [{"movement_type": m, "change": "1", "movement_id": f"m{i}"} for i, m in enumerate(movements)],
    }
    doc.update(extra)
    return doc


def held(participant: str, balance: str, account_type: str = "available", asset: str = "USD") -> ZerohashBalance:
    return ZerohashBalance(participant, "PLAT", "general", account_type, asset, Decimal(balance), 1.0)


def collect(balances: ZerohashBalances) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(ZerohashBalanceCollector(balances))
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in registry.collect() for s in f.samples}


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


# -- parsing ------------------------------------------------------------------------------------


def test_timestamps_in_seconds_and_milliseconds_mean_the_same_time() -> None:
    assert parse_balance_event(payload(timestamp=1_760_000_000)).balance.timestamp == 1_760_000_000
    assert parse_balance_event(payload(timestamp=1_760_000_000_500)).balance.timestamp == 1_760_000_000.5


def test_run_id_may_be_a_number_and_movements_may_be_missing() -> None:
    event = parse_balance_event({**payload(run_id=9000123), "movements": None})
    assert event.balance.run_id == "9000123" and event.movement_types == ()


def test_undocumented_movement_types_count_as_other() -> None:
    assert parse_balance_event(payload(movements=("deposit", "teleport"))).movement_types == ("deposit", "other")


@pytest.mark.parametrize(
    "doc",
    [
        payload(balance="ten"),
        payload(balance="NaN"),
        payload(balance=True),
        payload(timestamp=None),
        payload(timestamp="soon"),
        {k: v for k, v in payload().items() if k != "asset"},
        payload(participant_code=7),
        {**payload(), "movements": {"movement_type": "deposit"}},
        [],
    ],
)
def test_events_without_what_they_must_carry_are_refused(doc: Any) -> None:
    with pytest.raises(BalancePayloadError):
        parse_balance_event(doc)


def test_balance_keeps_every_digit() -> None:
    assert parse_balance_event(payload(balance="0.123456789012345678")).balance.balance == Decimal(
        "0.123456789012345678"
    )


# -- aggregation --------------------------------------------------------------------------------


def test_balances_are_summed_over_participants_with_series_only_for_the_allow_list() -> None:
    balances = ZerohashBalances(
        ["P1"], [held("P1", "10.5"), held("P2", "4"), held("P3", "0"), held("P2", "1", account_type="collateral")]
    )
    got = collect(balances)
    labels = {"account_group": "PLAT", "account_label": "general", "asset": "USD"}
    assert got[key("zerohash_balance", account_type="available", **labels)] == 14.5
    assert got[key("zerohash_balance", account_type="collateral", **labels)] == 1
    assert got[key("zerohash_participant_balance", participant="P1", account_type="available", **labels)] == 10.5
    assert not [k for k in got if k[0] == "zerohash_participant_balance" and ("participant", "P2") in k[1]]
    # P3 holds nothing, so it does not count as an account holding a balance.
    assert got[key("zerohash_accounts", account_group="PLAT", account_type="available", asset="USD")] == 2
    assert got[key("zerohash_accounts", account_group="PLAT", account_type="collateral", asset="USD")] == 1


def test_movement_counters_start_at_zero_for_held_assets_and_count_by_type() -> None:
    balances = ZerohashBalances([], [held("P1", "1")])
    got = collect(balances)
    assert (
        got[
            key(
                "zerohash_balance_movements_total",
                account_type="available",
                asset="USD",
                movement_type="withdrawal_pending",
            )
        ]
        == 0
    )
    balances.count_movements("available", "USD", ["deposit", "deposit", "other"])
    got = collect(balances)
    assert (
        got[key("zerohash_balance_movements_total", account_type="available", asset="USD", movement_type="deposit")]
        == 2
    )
    assert (
        got[key("zerohash_balance_movements_total", account_type="available", asset="USD", movement_type="other")] == 1
    )


# -- through the receiver: ordering, persistence ------------------------------------------------------


class Deliverer:
    def __init__(self, exporter: Exporter, http: aiohttp.ClientSession) -> None:
        self.exporter, self.http, self.count = exporter, http, 0

    async def send(self, doc: dict[str, Any]) -> int:
        self.count += 1
        body = json.dumps(doc).encode()
        headers = {
            "x-zh-hook-notification-id": f"n-{self.count}",
            "x-zh-hook-payload-type": "account_balance.changed",
            "x-zh-hook-signature-256": hmac_signature(SECRET, body, None),
        }
        async with self.http.post(
            self.exporter.webhooks_url + "/webhooks/zerohash", data=body, headers=headers
        ) as response:
            return response.status


def zh(participants: tuple[str, ...] = ("P1",)) -> ZerohashConfig:
    return ZerohashConfig(ZerohashWebhookConfig(hmac_secrets=(SECRET,), participants=participants))


LABELS = {"account_group": "PLAT", "account_label": "general", "account_type": "available", "asset": "USD"}


async def test_an_older_event_does_not_replace_a_newer_balance_but_its_movements_count(
    make_config: Callable[..., Config],
) -> None:
    exporter = Exporter(make_config(zerohash=zh()))
    await exporter.start()
    try:
        async with aiohttp.ClientSession() as http:
            d = Deliverer(exporter, http)
            assert await d.send(payload("P1", "30", 1_760_000_002_000)) == 200
            assert await d.send(payload("P1", "20", 1_760_000_001_000)) == 200  # arrives late
            await exporter.inbox.caught_up()  # balances are derived from the inbox after the 200s
            result = await scrape(exporter.metrics_url)
            assert result.value("zerohash_balance", LABELS) == 30
            assert (
                result.value(
                    "zerohash_balance_movements_total", account_type="available", asset="USD", movement_type="deposit"
                )
                == 2
            )
            # Same time, written in seconds: not older, so it applies.
            assert await d.send(payload("P1", "31", 1_760_000_002)) == 200
            assert await d.send(payload("P2", "5", 1_760_000_000)) == 200
            await exporter.inbox.caught_up()
            result = await scrape(exporter.metrics_url)
            assert result.value("zerohash_balance", LABELS) == 36
            assert result.value("zerohash_participant_balance", {**LABELS, "participant": "P1"}) == 31
            assert result.value("zerohash_participant_balance", {**LABELS, "participant": "P2"}) is None
            assert result.value("zerohash_accounts", account_group="PLAT", account_type="available", asset="USD") == 2
            assert result.value("zerohash_webhook_last_received_timestamp_seconds") is not None
    finally:
        await exporter.stop()


async def test_balances_are_persisted_and_reloaded_at_start(make_config: Callable[..., Config], tmp_path: Path) -> None:
    config = make_config(zerohash=zh(("P1", "P2")))
    first = Exporter(config)
    await first.start()
    try:
        async with aiohttp.ClientSession() as http:
            d = Deliverer(first, http)
            assert await d.send(payload("P1", "7.25", 1_760_000_000_000)) == 200
            assert await d.send(payload("P2", "2", 1_760_000_000_000, account_type="collateral")) == 200
    finally:
        await first.stop()
    with StateStore.open(config.state.path) as store:
        assert {b.participant_code: b.balance for b in store.zerohash_balances()} == {
            "P1": Decimal("7.25"),
            "P2": Decimal(2),
        }
    second = Exporter(config)
    await second.start()
    try:
        result = await scrape(second.metrics_url)
        assert result.value("zerohash_balance", LABELS) == 7.25
        assert (
            result.value("zerohash_participant_balance", {**LABELS, "account_type": "collateral", "participant": "P2"})
            == 2
        )
        async with aiohttp.ClientSession() as http:
            # An event older than the reloaded one is still not applied after the restart.
            assert await Deliverer(second, http).send(payload("P1", "1", 1_759_999_999_000)) == 200
        result = await scrape(second.metrics_url)
        assert result.value("zerohash_balance", LABELS) == 7.25
    finally:
        await second.stop()
