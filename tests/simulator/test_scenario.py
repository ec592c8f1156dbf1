"""The scenario engine: realistic activity that always leaves the exchange and the ledger consistent."""

from __future__ import annotations

import asyncio
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from exporter.simulator.backend import PaymentBackend
from exporter.simulator.model import METHOD_DEPOSIT, METHOD_WITHDRAW, SIDE_BUY, Exchange, WebhookEvent
from exporter.simulator.scenario import ADVERSARIAL_ACTIONS, ScenarioEngine
from exporter.simulator.webhooks import WebhookSender
from exporter.simulator.zerohash import AccountKey, ZerohashLedger, ZerohashSender
from exporter.whitebit.signing import (
    HEADER_APIKEY,
    HEADER_PAYLOAD,
    HEADER_SIGNATURE,
    payload_matches_body,
    signature_matches,
)
from tests.helpers import wait_for

MARKETS = ("BTC_USDT", "ETH_USDT")
MAIN = {"USDT": "25000", "BTC": "1.5", "ETH": "20"}
SPOT = {"USDT": "250000", "BTC": "4", "ETH": "60"}
COLLATERAL = {"USDT": "5000", "BTC": "0.25"}
WEBHOOK_SECRETS = {"wk-alpha": "ws-alpha", "wk-beta": "ws-beta"}


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class RecordingSender(ZerohashSender):
    """A Zero Hash sender that also keeps every payload handed to it, to replay the ledger from them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, payload_type: str, payload: Mapping[str, Any]) -> str:
        self.sent.append((payload_type, dict(payload)))
        return super().send(payload_type, payload)


class RecordingExchange(Exchange):
    """An exchange that also remembers how much each account moved from main to spot."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.moved_to_spot: dict[str, Counter[str]] = defaultdict(Counter)

    def transfer_main_to_spot(self, account_name: str, asset: str, amount: Decimal) -> None:
        super().transfer_main_to_spot(account_name, asset, amount)
        self.moved_to_spot[account_name][asset] += amount


def build_exchange(clock: Clock, seed: int, *, funded: bool = True) -> RecordingExchange:
    exchange = RecordingExchange(MARKETS, clock=clock, rng=random.Random(seed))
    for name, (key, secret) in zip(("alpha", "beta"), WEBHOOK_SECRETS.items(), strict=True):
        exchange.add_account(
            name,
            api_key=f"api-{name}",
            api_secret=f"api-secret-{name}",
            webhook_key=key,
            webhook_secret=secret,
            main=MAIN if funded else {},
            spot=SPOT if funded else {},
            collateral=COLLATERAL if funded else {},
        )
    return exchange


def check_exchange(exchange: RecordingExchange, initial_main: Mapping[str, Mapping[str, Decimal]]) -> None:
    for name, account in exchange.accounts.items():
        held: dict[str, Decimal] = defaultdict(Decimal)
        for order in account.orders.values():
            base, quote = order.market.split("_")
            held[quote if order.side == SIDE_BUY else base] += order.frozen
            assert order.frozen >= 0 and order.left > 0, order
        for asset, balance in account.spot.items():
            assert balance.available >= 0, (name, asset, balance)
            assert balance.freeze == held.get(asset, Decimal(0)), (name, asset, balance, held)
        assert set(held) <= set(account.spot)
        for asset, balance in account.collateral.items():
            assert balance.balance >= 0 and balance.borrow >= 0, (name, asset, balance)

        expected: Counter[str] = Counter()
        expected.update(initial_main[name])
        expected.subtract(exchange.moved_to_spot[name])
        for transfer in account.transfers:
            if transfer.method == METHOD_DEPOSIT and transfer.status in (3, 7):
                expected[transfer.ticker] += transfer.amount - transfer.fee
            elif transfer.method == METHOD_WITHDRAW and transfer.status == 18:
                assert transfer.processed_amount is not None
                expected[transfer.ticker] -= transfer.processed_amount + transfer.fee
            elif transfer.method == METHOD_WITHDRAW and transfer.status != 4:
                expected[transfer.ticker] -= transfer.amount + transfer.fee
        for asset in set(expected) | set(account.main):
            main = account.main.get(asset, Decimal(0))
            assert main >= 0, (name, asset, main)
            assert main == expected.get(asset, Decimal(0)), (name, asset, main, expected.get(asset))


def check_ledger(ledger: ZerohashLedger, sent: list[tuple[str, dict[str, Any]]]) -> None:
    """Replaying every payload's movements reproduces each payload's balance and the ledger's."""
    running: dict[AccountKey, Decimal] = defaultdict(Decimal)
    for payload_type, payload in sent:
        if payload_type != "account_balance.changed":
            continue
        key = AccountKey(
            payload["participant_code"],
            payload["account_group"],
            payload["account_label"],
            payload["account_type"],
            payload["asset"],
        )
        running[key] += sum((Decimal(m["change"]) for m in payload["movements"]), Decimal(0))
        assert running[key] == Decimal(payload["balance"]), payload
    assert all(value >= 0 for value in ledger.balances.values())
    assert {k: v for k, v in running.items() if v} == {k: v for k, v in ledger.balances.items() if v}


def test_thousands_of_steps_keep_every_balance_consistent() -> None:
    clock = Clock()
    rng = random.Random(2024)
    exchange = build_exchange(clock, 1)
    ledger = ZerohashLedger(clock=clock, rng=rng)
    sender = RecordingSender(url="http://127.0.0.1:9/", hmac_secret="zh-secret", clock=clock, rng=rng)
    engine = ScenarioEngine(exchange, accounts=["alpha", "beta"], rng=rng, zerohash=(ledger, sender), clock=clock)
    initial_main = {name: {k: Decimal(v) for k, v in MAIN.items()} for name in exchange.accounts}
    webhooks: list[WebhookEvent] = []
    exchange.subscribe(lambda event: webhooks.append(event) if isinstance(event, WebhookEvent) else None)

    most_orders = 0
    for _ in range(3000):
        clock.now += 0.5
        engine.step()
        check_exchange(exchange, initial_main)
        most_orders = max(most_orders, *(len(a.orders) for a in exchange.accounts.values()))
    check_ledger(ledger, sender.sent)

    counts = engine.counts()
    assert set(engine.action_names()) <= set(counts), set(engine.action_names()) - set(counts)
    assert most_orders <= 60  # cancels catch up once an account has more than 40
    deposits = {(t.method, t.status) for a in exchange.accounts.values() for t in a.transfers}
    assert {(1, 3), (1, 4), (2, 3), (2, 4), (2, 18)} <= deposits  # credited, canceled, successful, partial
    hashes = Counter(t.transaction_hash for a in exchange.accounts.values() for t in a.transfers if t.method == 1)
    assert max(hashes.values()) >= 2  # two deposits sharing one transaction hash
    # A Travel Rule deposit has no deposit.accepted webhook (27 and 28 are silent) but is credited in the end.
    accepted = {e.params["transactionHash"] for e in webhooks if e.method == "deposit.accepted"}
    processed = {e.params["transactionHash"] for e in webhooks if e.method == "deposit.processed"}
    assert processed - accepted


def test_a_seeded_scenario_is_reproducible() -> None:
    def run(seed: int) -> tuple[list[str], dict[str, Any]]:
        clock = Clock()
        rng = random.Random(seed)
        exchange = build_exchange(clock, seed)
        ledger = ZerohashLedger(clock=clock, rng=rng)
        sender = ZerohashSender(url="http://127.0.0.1:9/", hmac_secret="s", clock=clock, rng=rng)
        engine = ScenarioEngine(exchange, accounts=["alpha", "beta"], rng=rng, zerohash=(ledger, sender), clock=clock)
        actions = []
        for _ in range(400):
            clock.now += 0.5
            actions.append(engine.step())
        return actions, {name: exchange.snapshot(name) for name in exchange.accounts}

    assert run(7) == run(7)
    assert run(7)[0] != run(8)[0]


def test_steps_never_raise_when_the_exchange_refuses_everything() -> None:
    clock = Clock()
    exchange = build_exchange(clock, 3, funded=False)
    engine = ScenarioEngine(exchange, accounts=["alpha", "beta"], rng=random.Random(3), clock=clock)
    sequence = [engine.step() for _ in range(300)]
    actions = Counter(sequence)
    # No spot funds, so no trading until credited deposits are moved to spot; deposits, and withdrawals of
    # what they credit, still happen.
    trading = {"place_limit", "place_rpi", "place_stop", "instant_fill", "market_order", "full_fill", "cancel"}
    first_funding = sequence.index("main_to_spot") if "main_to_spot" in sequence else len(sequence)
    assert not trading & set(sequence[:first_funding])
    assert actions["deposit_credit"] > 0 and actions["withdraw_start"] > 0
    assert actions["skipped"] > 0
    assert sum(actions.values()) == 300


def test_mischief_without_an_event_loop_falls_back_to_ordinary_actions() -> None:
    clock = Clock()
    exchange = build_exchange(clock, 4)
    sender = WebhookSender(exchange, url="http://127.0.0.1:9/", clock=clock, rng=random.Random(4))
    engine = ScenarioEngine(
        exchange, accounts=["alpha"], rng=random.Random(4), webhook_sender=sender, forge_every=1, clock=clock
    )
    actions = {engine.step() for _ in range(200)}
    assert not actions & set(ADVERSARIAL_ACTIONS)
    assert "drop_webhook" in actions  # needs no loop: it only arms the sender


class FakeSleep:
    """Records each sleep; after ``limit`` of them, signals ``reached`` (and keeps yielding)."""

    def __init__(self, limit: int) -> None:
        self.delays: list[float] = []
        self.limit = limit
        self.reached = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if len(self.delays) >= self.limit:
            self.reached.set()
        await asyncio.sleep(0)


async def test_run_steps_at_the_rate_until_cancelled() -> None:
    clock = Clock()
    exchange = build_exchange(clock, 5)
    sleep = FakeSleep(limit=25)
    engine = ScenarioEngine(
        exchange, accounts=["alpha", "beta"], rng=random.Random(5), rate=4.0, clock=clock, sleep=sleep
    )
    task = asyncio.create_task(engine.run())
    await asyncio.wait_for(sleep.reached.wait(), timeout=5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    steps = sum(engine.counts().values())
    assert steps == len(sleep.delays)  # one step per pause
    assert set(sleep.delays) == {0.25}  # 4 actions per second


def test_rate_must_be_positive() -> None:
    exchange = build_exchange(Clock(), 6)
    with pytest.raises(ValueError, match="rate must be positive"):
        ScenarioEngine(exchange, accounts=["alpha"], rng=random.Random(), rate=0)
    with pytest.raises(ValueError, match="unknown accounts: nobody"):
        ScenarioEngine(exchange, accounts=["nobody"], rng=random.Random())


# --- with real senders on loopback -------------------------------------------------------------


async def test_mischief_reaches_the_receivers_when_forge_every_is_set(aiohttp_server: Any) -> None:
    whitebit: list[bool] = []  # verified or not, per delivery
    zerohash: list[dict[str, str]] = []

    async def whitebit_handler(request: web.Request) -> web.Response:
        body = await request.read()
        payload = request.headers.get(HEADER_PAYLOAD, "")
        secret = WEBHOOK_SECRETS.get(request.headers.get(HEADER_APIKEY, ""), "")
        ok = (
            payload_matches_body(body, payload)
            and signature_matches(payload, request.headers.get(HEADER_SIGNATURE, ""), [secret]) == 0
        )
        whitebit.append(ok)
        return web.Response(status=200 if ok else 401)

    async def zerohash_handler(request: web.Request) -> web.Response:
        await request.read()
        zerohash.append(dict(request.headers))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/webhooks/whitebit", whitebit_handler)
    app.router.add_post("/webhooks/zerohash", zerohash_handler)
    server = await aiohttp_server(app)

    rng = random.Random(99)
    exchange = Exchange(MARKETS, rng=rng)
    for name, (key, secret) in zip(("alpha", "beta"), WEBHOOK_SECRETS.items(), strict=True):
        exchange.add_account(
            name, api_key=name, api_secret=name, webhook_key=key, webhook_secret=secret, main=MAIN, spot=SPOT
        )
    webhooks = WebhookSender(exchange, url=str(server.make_url("/webhooks/whitebit")), rng=rng, retry_delays=(0.0,))
    ledger = ZerohashLedger(rng=rng)
    zh_sender = ZerohashSender(url=str(server.make_url("/webhooks/zerohash")), hmac_secret="zh", rng=rng)
    engine = ScenarioEngine(
        exchange,
        accounts=["alpha", "beta"],
        rng=rng,
        zerohash=(ledger, zh_sender),
        webhook_sender=webhooks,
        forge_every=4,
    )
    wanted = set(ADVERSARIAL_ACTIONS) | {"drop_webhook", "zh_drop"}
    await webhooks.start()
    await zh_sender.start()
    try:
        for _ in range(6000):
            engine.step()
            await asyncio.sleep(0)  # let deliveries progress between steps
            if wanted <= set(engine.counts()):
                break
        await engine.drain()
        await wait_for(lambda: all(r["outcome"] != "pending" for r in webhooks.history()), timeout=20)
        await wait_for(lambda: all(r["outcome"] != "pending" for r in zh_sender.history()), timeout=20)
    finally:
        await engine.aclose()
        await webhooks.stop()
        await zh_sender.stop()

    assert wanted <= set(engine.counts()), wanted - set(engine.counts())
    stats = webhooks.stats()
    assert stats["forged"] >= 1 and stats["tampered"] >= 1 and stats["replayed"] >= 1
    assert stats["delivered"] >= 1
    assert whitebit.count(False) == stats["forged"] + stats["tampered"]
    zh_stats = zh_sender.stats()
    assert zh_stats["forged"] >= 1 and zh_stats["stale"] >= 1 and zh_stats["replayed"] >= 1
    assert zh_stats["tampered"] >= 1 and zh_stats["delivered"] >= 1
    assert any(h.get("x-zh-hook-payload-type") == "trade.status_changed" for h in zerohash)


async def test_with_mischief_the_payment_backend_fails_and_goes_away_for_a_while_then_comes_back() -> None:
    clock = Clock()
    backend = PaymentBackend({}, None)
    await backend.start()
    outage_over = asyncio.Event()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        await outage_over.wait()

    engine = ScenarioEngine(
        build_exchange(clock, 5),
        accounts=["alpha"],
        rng=random.Random(5),
        backend=backend,
        forge_every=50,
        clock=clock,
        sleep=sleep,
    )
    try:
        assert {"backend_fail", "backend_outage"} <= set(engine.action_names())
        assert engine._do_backend_fail() and 2 <= backend.trouble.fail_next <= 6
        assert not engine._do_backend_fail()  # one lot of 500s at a time
        assert engine._do_backend_outage()
        await wait_for(lambda: backend.trouble.down and bool(slept), timeout=5.0)
        assert 45.0 <= slept[0] <= 120.0
        assert not engine._do_backend_outage() and not engine._do_backend_fail()  # one outage at a time
        outage_over.set()
        await engine.drain()
        assert not backend.trouble.down and 2 <= backend.trouble.fail_next <= 6  # the 500s it was given still due
        async with aiohttp.ClientSession() as http, http.post(f"{backend.url}/whitebit", data=b"{}") as answer:
            assert answer.status == 401  # listening again (and an unsigned delivery does not verify)
    finally:
        await engine.aclose()
        await backend.stop()
