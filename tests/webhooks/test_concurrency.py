"""200 concurrent deliveries per provider (valid, duplicate, forged): exact counters and exact persisted state."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from decimal import Decimal

import aiohttp

from exporter.app import Exporter
from exporter.config.schema import (
    Config,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
    ZerohashConfig,
    ZerohashWebhookConfig,
)
from exporter.core.state import StateStore
from exporter.whitebit.signing import compact_json, sign_body
from exporter.zerohash.signing import hmac_signature
from tests.helpers import scrape

KEY, SECRET = "whk-conc-PUBLIC", "whsec-conc-0123456789"
ZH_SECRET = "zh-conc-0123456789"
UNIQUE, DUPLICATES, FORGED, TAMPERED = 100, 50, 30, 20


def deposit(index: int) -> bytes:
    params = {
        "address": f"addr-{index}",
        "amount": f"{index + 1}.000000000000000000",
        "createdAt": 1_700_000_000 + index,
        "currency": "Tether US",
        "ticker": "USDT",
        "fee": "0",
        "memo": "",
        "method": 1,
        "network": "TRC20",
        "status": 3,
        "transactionHash": f"0x{index:064x}",
        "uniqueId": None,
    }
    return compact_json({"method": "deposit.processed", "params": params, "id": f"conc-{index}"})


def balance(index: int) -> bytes:
    return json.dumps(
        {
            "participant_code": f"P{index:03d}",
            "account_group": "PLAT",
            "account_label": "general",
            "account_type": "available",
            "asset": "USD",
            "balance": str(index + 1),
            "run_id": str(index),
            "run_type": "deposit",
            "timestamp": 1_760_000_000_000 + index,
            "movements": [{"movement_type": "deposit", "change": str(index + 1), "movement_id": f"m{index}"}],
        }
    ).encode()


def zh_headers(body: bytes, notification_id: str, secret: str = ZH_SECRET) -> dict[str, str]:
    return {
        "x-zh-hook-notification-id": notification_id,
        "x-zh-hook-payload-type": "account_balance.changed",
        "x-zh-hook-signature-256": hmac_signature(secret, body, None),
    }


async def test_concurrent_mixed_deliveries_are_counted_and_stored_exactly(make_config: Callable[..., Config]) -> None:
    account = WhitebitAccountConfig(name="main", webhook=WhitebitWebhookConfig(public_key=KEY, secrets=(SECRET,)))
    config = make_config([account], zerohash=ZerohashConfig(ZerohashWebhookConfig(hmac_secrets=(ZH_SECRET,))))
    rng = random.Random(4)
    whitebit: list[tuple[bytes, dict[str, str]]] = []
    zerohash: list[tuple[bytes, dict[str, str]]] = []
    for i in range(UNIQUE):
        whitebit.append((deposit(i), sign_body(deposit(i), key=KEY, secret=SECRET)))
        zerohash.append((balance(i), zh_headers(balance(i), f"n-{i}")))
    for i in rng.sample(range(UNIQUE), DUPLICATES):
        whitebit.append((deposit(i), sign_body(deposit(i), key=KEY, secret=SECRET)))
        # Half are plain redeliveries, half replays under a swapped notification id.
        zerohash.append((balance(i), zh_headers(balance(i), f"n-{i}" if i % 2 else f"swapped-{i}")))
    for i in range(FORGED):
        body = deposit(1000 + i)
        whitebit.append((body, sign_body(body, key=KEY, secret="guess")))
        zerohash.append((balance(1000 + i), zh_headers(balance(1000 + i), f"f-{i}", secret="guess")))
    for i in range(TAMPERED):
        body = deposit(2000 + i)
        whitebit.append((body.replace(b'"addr-', b'"evil-'), sign_body(body, key=KEY, secret=SECRET)))
        body = balance(2000 + i)
        zerohash.append((body.replace(b'"P', b'"X'), zh_headers(body, f"t-{i}")))
    rng.shuffle(whitebit)
    rng.shuffle(zerohash)

    exporter = Exporter(config)
    await exporter.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def post(path: str, body: bytes, headers: dict[str, str]) -> int:
                async with http.post(exporter.webhooks_url + path, data=body, headers=headers) as response:
                    return response.status

            statuses = await asyncio.gather(
                *(post("/webhooks/whitebit", b, h) for b, h in whitebit),
                *(post("/webhooks/zerohash", b, h) for b, h in zerohash),
            )
        wb_statuses, zh_statuses = statuses[: len(whitebit)], statuses[len(whitebit) :]
        assert sorted(wb_statuses) == [200] * (UNIQUE + DUPLICATES) + [401] * (FORGED + TAMPERED)
        assert sorted(zh_statuses) == [200] * (UNIQUE + DUPLICATES) + [401] * (FORGED + TAMPERED)

        result = await scrape(exporter.metrics_url)
        assert result.value("whitebit_webhooks_received_total", account="main", method="deposit.processed") == 150
        assert result.value("whitebit_webhooks_received_total", account="main", method="other") == 50
        assert result.value("whitebit_webhooks_verified_total", account="main", method="deposit.processed") == 150
        assert result.value("whitebit_webhooks_duplicate_total", account="main") == DUPLICATES
        assert result.value("whitebit_webhooks_rejected_total", account="main", reason="bad_signature") == FORGED
        assert result.value("whitebit_webhooks_rejected_total", account="main", reason="payload_mismatch") == TAMPERED
        assert (
            result.value("whitebit_transfers_total", account="main", kind="deposit", outcome="successful", asset="USDT")
            == UNIQUE
        )
        assert result.value("zerohash_webhooks_received_total", payload_type="account_balance.changed") == 200
        assert result.value("zerohash_webhooks_verified_total", payload_type="account_balance.changed") == 150
        assert result.value("zerohash_webhooks_duplicate_total") == DUPLICATES
        assert result.value("zerohash_webhooks_rejected_total", reason="bad_signature") == FORGED + TAMPERED
        assert (
            result.value(
                "zerohash_balance_movements_total", account_type="available", asset="USD", movement_type="deposit"
            )
            == UNIQUE
        )
        expected_sum = sum(range(1, UNIQUE + 1))
        assert (
            result.value(
                "zerohash_balance", account_group="PLAT", account_label="general", account_type="available", asset="USD"
            )
            == expected_sum
        )
        assert result.value("zerohash_accounts", account_group="PLAT", account_type="available", asset="USD") == UNIQUE
    finally:
        await exporter.stop()

    with StateStore.open(config.state.path) as store:
        transfers = store.transfers("main")
        assert len(transfers) == UNIQUE and all(t.final and t.outcome == "successful" for t in transfers)
        assert sum(t.amount for t in transfers) == Decimal(expected_sum)
        assert all(store.delivery_seen("whitebit", "main", f"conc-{i}") for i in range(UNIQUE))
        assert not any(store.delivery_seen("whitebit", "main", f"conc-{i}") for i in range(1000, 1000 + FORGED))
        assert not any(store.delivery_seen("whitebit", "main", f"conc-{i}") for i in range(2000, 2000 + TAMPERED))
        balances = store.zerohash_balances()
        assert len(balances) == UNIQUE and sum(b.balance for b in balances) == Decimal(expected_sum)
