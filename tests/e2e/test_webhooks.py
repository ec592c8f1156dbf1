"""End to end: the simulator's senders deliver deposits, withdrawals and Zero Hash runs to a real Exporter."""

from __future__ import annotations

import random
from collections.abc import Callable
from decimal import Decimal

from exporter.app import Exporter
from exporter.config.schema import (
    Config,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
    ZerohashConfig,
    ZerohashWebhookConfig,
)
from exporter.simulator.model import Exchange
from exporter.simulator.webhooks import WebhookSender
from exporter.simulator.zerohash import ZerohashLedger, ZerohashSender
from tests.helpers import scrape, wait_for

HOOK_KEY, HOOK_SECRET = "whk-e2e-PUBLIC", "whsec-e2e-0123456789"
ZH_SECRET = "zh-e2e-0123456789"


def settled(sender: WebhookSender | ZerohashSender) -> bool:
    return all(record["outcome"] != "pending" for record in sender.history())


async def test_simulated_deposits_and_withdrawals_drive_transfer_metrics(make_config: Callable[..., Config]) -> None:
    account = WhitebitAccountConfig(
        name="main", webhook=WhitebitWebhookConfig(public_key=HOOK_KEY, secrets=(HOOK_SECRET,))
    )
    exporter = Exporter(make_config([account]))
    await exporter.start()
    exchange = Exchange(["BTC_USDT"], rng=random.Random(7))
    exchange.add_account(
        "main",
        api_key="k",
        api_secret="s",
        webhook_key=HOOK_KEY,
        webhook_secret=HOOK_SECRET,
        main={"USDT": "1000", "BTC": "1"},
    )
    sender = WebhookSender(exchange, url=exporter.webhooks_url + "/webhooks/whitebit", retry_delays=(0.05,) * 3)
    await sender.start()
    try:
        # A deposit through its whole lifecycle, one confirmation's webhook lost on the way.
        credited = exchange.start_deposit("main", "USDT", Decimal(25), confirmations_required=3)
        exchange.confirm_deposit("main", credited.transaction_id)
        sender.drop_next(1, "deposit.updated")
        exchange.confirm_deposit("main", credited.transaction_id)
        exchange.credit_deposit("main", credited.transaction_id)
        # A canceled deposit, and one still waiting for confirmations.
        canceled = exchange.start_deposit("main", "BTC", Decimal("0.1"))
        exchange.cancel_deposit("main", canceled.transaction_id)
        waiting = exchange.start_deposit("main", "USDT", Decimal(5), confirmations_required=4)
        exchange.confirm_deposit("main", waiting.transaction_id)
        # Withdrawals: one successful, one partial, one still pending.
        done = exchange.start_withdrawal("main", "USDT", Decimal(100), fee=Decimal(1))
        exchange.process_withdrawal("main", done.transaction_id)
        exchange.complete_withdrawal("main", done.transaction_id)
        partial = exchange.start_withdrawal("main", "USDT", Decimal(50))
        exchange.partially_complete_withdrawal("main", partial.transaction_id, Decimal(20))
        pending = exchange.start_withdrawal("main", "BTC", Decimal("0.2"))
        exchange.process_withdrawal("main", pending.transaction_id, status=12)
        exchange.apply_code("main", "WBX-E2E")
        await wait_for(lambda: settled(sender) and sender.can_replay("main"), timeout=10)
        stats = sender.stats()
        assert stats["delivered"] == stats["sent"] == 15 and stats["dropped"] == 1

        # Mischief: a forged, a tampered and a replayed delivery.
        assert (await sender.send_forged("main"))["attempts"] == [401]
        assert (await sender.send_tampered("main"))["attempts"] == [401]
        assert (await sender.replay_last("main"))["attempts"] == [200]  # type: ignore[index]

        result = await scrape(exporter.metrics_url)
        total = "whitebit_transfers_total"
        assert result.value(total, account="main", kind="deposit", outcome="successful", asset="USDT") == 1
        assert result.value(total, account="main", kind="deposit", outcome="canceled", asset="BTC") == 1
        assert result.value(total, account="main", kind="withdraw", outcome="successful", asset="USDT") == 1
        assert result.value(total, account="main", kind="withdraw", outcome="partially_successful", asset="USDT") == 1
        assert result.value(total, account="main", kind="withdraw", outcome="successful", asset="BTC") == 0
        in_flight = "whitebit_transfers_in_flight"
        assert result.value(in_flight, account="main", kind="deposit", status="pending") == 1
        assert result.value(in_flight, account="main", kind="withdraw", status="pending") == 1
        assert result.value(in_flight, account="main", kind="withdraw", status="unconfirmed") == 0
        assert result.value("whitebit_deposits_awaiting_confirmations", account="main") == 1
        assert (
            result.value("whitebit_transfers_oldest_in_flight_timestamp_seconds", account="main", kind="deposit")
            == waiting.created_at
        )
        assert result.value("whitebit_webhooks_verified_total", account="main", method="deposit.updated") == 2
        assert result.value("whitebit_webhooks_verified_total", account="main", method="code.apply") == 2
        assert result.value("whitebit_webhooks_duplicate_total", account="main") == 1
        assert result.value("whitebit_webhooks_rejected_total", account="main", reason="bad_signature") == 1
        assert result.value("whitebit_webhooks_rejected_total", account="main", reason="payload_mismatch") == 1
        assert result.value("whitebit_webhook_nonce_regressions_total", account="main") == 0
        # The state holds each transfer once, with the simulator's statuses.
        records = {(r.kind, r.ticker, r.amount): r for r in exporter.state.transfers("main")}
        assert len(records) == 6
        assert records[("withdraw", "USDT", Decimal(100))].status == 3
        assert records[("withdraw", "BTC", Decimal("0.2"))].status == 12
        assert records[("deposit", "USDT", Decimal(5))].confirmations_actual == 1
    finally:
        await sender.stop()
        await exporter.stop()


async def test_simulated_zerohash_runs_sum_to_the_ledger(make_config: Callable[..., Config]) -> None:
    zerohash = ZerohashConfig(ZerohashWebhookConfig(hmac_secrets=(ZH_SECRET,), participants=("PART01",)))
    exporter = Exporter(make_config(zerohash=zerohash))
    await exporter.start()
    ledger = ZerohashLedger(rng=random.Random(5))
    sender = ZerohashSender(
        url=exporter.webhooks_url + "/webhooks/zerohash",
        hmac_secret=ZH_SECRET,
        rng=random.Random(6),
        fast_retry_delay=0.01,
        backoff_delays=(0.05,),
    )
    await sender.start()
    try:
        for participant, amount in (("PART01", "100"), ("PART02", "40"), ("PART03", "2.5")):
            for payload in ledger.deposit(participant, "USD", Decimal(amount), account_group="PLAT01"):
                sender.send("account_balance.changed", payload)
        request_id, payloads = ledger.withdraw("PART02", "USD", Decimal(15), account_group="PLAT01")
        for payload in payloads:
            sender.send("account_balance.changed", payload)
        for payload in ledger.confirm_withdrawal(request_id):
            sender.send("account_balance.changed", payload)
        await wait_for(lambda: settled(sender) and sender.can_replay(), timeout=10)
        assert (await sender.replay_last())["attempts"] == [200]  # type: ignore[index]
        assert (await sender.send_stale())["attempts"] == [401]
        assert (await sender.send_forged())["attempts"] == [401]

        result = await scrape(exporter.metrics_url)
        labels = {"account_group": "PLAT01", "account_label": "general", "asset": "USD"}
        for account_type in ("available", "collateral"):
            expected = sum(v for key, v in ledger.balances.items() if key.account_type == account_type)
            assert result.value("zerohash_balance", {**labels, "account_type": account_type}) == float(expected)
        assert (
            result.value(
                "zerohash_participant_balance", {**labels, "account_type": "available", "participant": "PART01"}
            )
            == 100
        )
        assert (
            result.value(
                "zerohash_participant_balance", {**labels, "account_type": "available", "participant": "PART02"}
            )
            is None
        )
        assert result.value("zerohash_accounts", account_group="PLAT01", account_type="available", asset="USD") == 3
        movements = "zerohash_balance_movements_total"
        assert result.value(movements, account_type="available", asset="USD", movement_type="deposit") == 3
        assert result.value(movements, account_type="available", asset="USD", movement_type="withdrawal") == 1
        assert result.value(movements, account_type="collateral", asset="USD", movement_type="withdrawal_pending") == 1
        assert result.value("zerohash_webhooks_duplicate_total") == 1
        assert result.value("zerohash_webhooks_rejected_total", reason="stale_timestamp") == 1
        assert result.value("zerohash_webhooks_rejected_total", reason="bad_signature") == 1
    finally:
        await sender.stop()
        await exporter.stop()
