"""End to end: the simulator's senders deliver deposits, withdrawals and Zero Hash runs to a real Exporter."""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

from exporter.app import Exporter
from exporter.config.schema import (
    Config,
    ListenAddress,
    PollConfig,
    StateConfig,
    WebConfig,
    WebhooksConfig,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
    ZerohashConfig,
    ZerohashWebhookConfig,
)
from exporter.simulator.model import Exchange, Transfer
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from exporter.simulator.webhooks import WebhookSender
from exporter.simulator.zerohash import ZerohashLedger, ZerohashSender
from exporter.whitebit.rest import MAIN_HISTORY
from tests.helpers import Scrape, scrape, wait_for

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

        await exporter.inbox.caught_up()  # transfers are derived from the inbox after the 200s
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


# --- both views of every transfer, in WhiteBIT's documented forms -------------------------------------

API_KEY, API_SECRET = "e2e-api-key", "e2e-api-secret"
GRACE = 60.0
LOOPBACK = ListenAddress("127.0.0.1", 0)
FINAL = {1: {3: "successful", 7: "successful", 4: "canceled", 9: "canceled"}}
FINAL[2] = {3: "successful", 7: "successful", 4: "canceled", 18: "partially_successful"}


class Clock:
    """The exporter's wall clock, moved by hand so that the reconciliation grace passes on cue."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def watched(sim: Simulator, state: Path, clock: Clock) -> AsyncIterator[Exporter]:
    """An exporter polling the simulator's history and receiving its webhooks, past its baseline poll."""
    account = WhitebitAccountConfig(
        name="main",
        rest_url=sim.url,
        ws_url=sim.ws_url,
        api_key=API_KEY,
        api_secret=API_SECRET,
        poll=PollConfig(main_balance=60.0, collateral=60.0, history=0.1, trade_balance=60.0),
        reconcile_grace=GRACE,
        webhook_retry_window=GRACE,  # overdue and missed at once: tests/whitebit/test_reconcile.py has them apart
        webhook=WhitebitWebhookConfig(public_key=HOOK_KEY, secrets=(HOOK_SECRET,)),
    )
    config = Config(
        web=WebConfig(listen_address=LOOPBACK),
        webhooks=WebhooksConfig(listen_address=LOOPBACK),
        state=StateConfig(path=str(state)),
        whitebit=(account,),
    )
    exporter = Exporter(config, clock=clock)
    await exporter.start()
    try:
        await sim.connect_webhooks(exporter.webhooks_url + "/webhooks/whitebit", None)
        await wait_for(lambda: exporter.state.get_cursor("main", "history") is not None, timeout=10)
        yield exporter
    finally:
        await exporter.stop()


def truth(sim: Simulator) -> dict[tuple[str, str, str], float]:
    """The simulator's final outcomes per (kind, outcome, plain asset)."""
    outcomes: Counter[tuple[str, str, str]] = Counter()
    for t in sim.exchange.accounts["main"].transfers:
        outcome = FINAL[t.method].get(t.status)
        if outcome is not None:
            outcomes[("deposit" if t.method == 1 else "withdraw", outcome, t.ticker)] += 1
    return dict(outcomes)


def counted(result: Scrape) -> dict[tuple[str, str, str], float]:
    return {
        (labels["kind"], labels["outcome"], labels["asset"]): value
        for labels, value in result.samples("whitebit_transfers_total")
        if labels["account"] == "main" and value
    }


def missed(result: Scrape) -> dict[str, float | None]:
    return {
        kind: result.value("whitebit_webhooks_missed_total", account="main", kind=kind)
        for kind in ("deposit", "withdraw")
    }


async def history_polls(sim: Simulator, count: int = 3) -> None:
    """Wait until ``count`` more history requests arrived: the polls before the last have finished."""

    def requests() -> int:
        return int(sim.rest.stats().get(MAIN_HISTORY, {}).get("requests", 0))

    target = requests() + count
    await wait_for(lambda: requests() >= target, timeout=10)


def both_views_in(exporter: Exporter, sim: Simulator, transfers: list[Transfer]) -> Callable[[], bool]:
    """True once every webhook was answered and history showed each transfer with its current status."""

    def check() -> bool:
        assert sim.webhooks is not None
        if not settled(sim.webhooks):
            return False
        seen = {r.details.get("transaction_id"): r for r in exporter.state.transfers("main") if r.history_seen}
        return all(t.transaction_id in seen and seen[t.transaction_id].status == t.status for t in transfers)

    return check


async def test_webhooks_and_history_in_the_documented_forms_count_each_transfer_once(tmp_path: Path) -> None:
    sim = Simulator(
        SimulatorSettings(
            accounts=(SimulatedAccount("main", API_KEY, API_SECRET, webhook_key=HOOK_KEY, webhook_secret=HOOK_SECRET),),
            webhook_retry_delays=(0.05,) * 3,
            history_field_style="snake",  # history in the new OpenAPI's spelling (test_reconcile reads camel)
            seed=11,
        )
    )
    await sim.start()
    clock = Clock()
    try:
        async with watched(sim, tmp_path / "state.db", clock) as exporter:
            x = sim.exchange
            made: list[Transfer] = []
            # Deposits: webhooks name USDT_ETH / USDT_TRON beside the network, in 18 decimals, without ids.
            credited = x.start_deposit("main", "USDT", Decimal(25), network="ERC20", confirmations_required=2)
            for _ in range(2):
                x.confirm_deposit("main", credited.transaction_id)
            x.credit_deposit("main", credited.transaction_id)
            canceled = x.start_deposit("main", "USDT", Decimal("5.5"), network="TRC20")
            x.cancel_deposit("main", canceled.transaction_id, status=9)
            bitcoin = x.start_deposit("main", "BTC", Decimal("0.1"), confirmations_required=1)
            x.credit_deposit("main", bitcoin.transaction_id, status=7)
            # Two outputs of one transaction to one address with one amount: alike in every field.
            first = x.start_deposit("main", "USDT", Decimal(100), network="ERC20", transaction_hash="0xtx")
            second = x.start_deposit(
                "main", "USDT", Decimal(100), network="ERC20", transaction_hash="0xtx", address=first.address
            )
            for output in (first, second):
                x.credit_deposit("main", output.transaction_id)
            waiting = x.start_deposit("main", "USDT", Decimal(7), network="ERC20", confirmations_required=3)
            x.confirm_deposit("main", waiting.transaction_id)
            # Withdrawals: webhooks with uniqueId null, history with the client's id.
            done = x.start_withdrawal("main", "USDT", Decimal(100), fee=Decimal(1))
            x.process_withdrawal("main", done.transaction_id)
            x.complete_withdrawal("main", done.transaction_id)
            partial = x.start_withdrawal("main", "USDT", Decimal(50))
            x.process_withdrawal("main", partial.transaction_id, status=2)
            x.partially_complete_withdrawal("main", partial.transaction_id, Decimal(20))
            dropped_off = x.start_withdrawal("main", "BTC", Decimal("0.2"))
            x.cancel_withdrawal("main", dropped_off.transaction_id)
            pending = x.start_withdrawal("main", "USDT", Decimal(10))
            x.process_withdrawal("main", pending.transaction_id, status=12)
            made += [credited, canceled, bitcoin, first, second, waiting, done, partial, dropped_off, pending]

            await wait_for(both_views_in(exporter, sim, made), timeout=15)
            clock.now += GRACE + 1
            await history_polls(sim)
            result = await scrape(exporter.metrics_url)
            assert (
                counted(result)
                == truth(sim)
                == {
                    ("deposit", "successful", "USDT"): 3,
                    ("deposit", "canceled", "USDT"): 1,
                    ("deposit", "successful", "BTC"): 1,
                    ("withdraw", "successful", "USDT"): 1,
                    ("withdraw", "partially_successful", "USDT"): 1,
                    ("withdraw", "canceled", "BTC"): 1,
                }
            )
            assert missed(result) == {"deposit": 0, "withdraw": 0}
            assert result.value("whitebit_transfers_in_flight", account="main", kind="deposit", status="pending") == 1
            assert result.value("whitebit_transfers_in_flight", account="main", kind="withdraw", status="pending") == 1
            assert len(exporter.state.transfers("main")) == len(made)

            # One deposit.processed lost: history shows the credit, and exactly one miss is counted.
            assert sim.webhooks is not None
            sim.webhooks.drop_next(1, "deposit.processed")
            lost = x.start_deposit("main", "USDT", Decimal(42), network="ERC20", confirmations_required=1)
            x.credit_deposit("main", lost.transaction_id)
            made.append(lost)
            await wait_for(both_views_in(exporter, sim, made), timeout=15)
            await history_polls(sim)
            assert missed(await scrape(exporter.metrics_url)) == {"deposit": 0, "withdraw": 0}  # within the grace
            clock.now += GRACE + 1
            await wait_for(
                lambda: (
                    exporter.registry.get_sample_value(
                        "whitebit_webhooks_missed_total", {"account": "main", "kind": "deposit"}
                    )
                    == 1
                ),
                timeout=10,
            )
            await history_polls(sim)
            result = await scrape(exporter.metrics_url)
            assert missed(result) == {"deposit": 1, "withdraw": 0}
            assert counted(result) == truth(sim)
            assert sim.webhooks.stats()["dropped"] == 1
    finally:
        await sim.stop()
