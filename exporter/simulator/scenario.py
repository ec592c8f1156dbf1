"""The scenario engine: realistic, never-ending activity on the simulated exchange (and Zero Hash).

Each :meth:`ScenarioEngine.step` performs one action chosen by weight: trading (limit, RPI and stop
orders, partial and full fills, cancels, modifies both ways round, stop activations, instant fills,
market orders, a price random walk), collateral transfers and borrowing, deposits and withdrawals
walking through their documented statuses (including Travel Rule deposits, canceled deposits and their
refunds, two deposits sharing a transaction hash, partial withdrawals), WhiteBIT Codes, Zero Hash
balance runs, and, when ``forge_every`` is set, forged, tampered, stale and replayed deliveries,
deliberately lost webhooks (mostly the final ``deposit.processed``/``withdraw.successful``, which
history reconciliation then counts as missed), bursts of forced 429s on the endpoints the exporter
polls, dropped WebSocket connections, and 500s and outages of the payment backend the relay forwards
to, so that dashboards and alerts have something to show.

Everything goes through :class:`~exporter.simulator.model.Exchange` and
:class:`~exporter.simulator.zerohash.ZerohashLedger`, so balances stay consistent whatever happens.
An action the exchange refuses (``ExchangeError``) or that has nothing to act on is replaced by another
one; after a few refusals the step is recorded as ``skipped``. With a seeded ``rng`` (shared with a
seeded exchange) the sequence of actions is reproducible.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Sequence
from decimal import ROUND_DOWN, Decimal
from typing import TYPE_CHECKING, Any

from exporter.simulator.model import (
    DEPOSIT_CANCELED,
    DEPOSIT_PENDING,
    DEPOSIT_TRAVEL_RULE_FROZEN,
    DEPOSIT_TRAVEL_RULE_PROCESSING,
    METHOD_DEPOSIT,
    METHOD_WITHDRAW,
    SIDE_BUY,
    SIDE_SELL,
    TYPE_LIMIT,
    TYPE_MARKET,
    TYPE_STOP_LIMIT,
    TYPE_STOP_MARKET,
    WITHDRAW_UNCONFIRMED,
    Account,
    Exchange,
    ExchangeError,
    Order,
    Transfer,
)
from exporter.simulator.sender import Sleep, cancel_and_wait
from exporter.simulator.webhooks import WebhookSender
from exporter.simulator.zerohash import (
    ACCOUNT_BALANCE_CHANGED,
    AVAILABLE,
    PARTICIPANT_STATUS_CHANGED,
    TRADE_STATUS_CHANGED,
    AccountKey,
    LedgerError,
    TradeSide,
    ZerohashLedger,
    ZerohashSender,
)

if TYPE_CHECKING:
    from exporter.simulator.backend import PaymentBackend
    from exporter.simulator.rest import RestApi
    from exporter.simulator.ws import WebSocketHub

log = logging.getLogger(__name__)

# Relative weights of the ordinary actions (the Zero Hash ones apply only with a Zero Hash side).
TRADING_WEIGHTS: dict[str, float] = {
    "place_limit": 14,
    "place_rpi": 3,
    "place_stop": 3,
    "activate_stop": 2,
    "partial_fill": 6,
    "full_fill": 6,
    "cancel": 6,
    "cancel_partially_filled": 2,
    "modify": 4,
    "modify_new_first": 1,
    "instant_fill": 3,
    "market_order": 1.5,
    "price_move": 8,
    "collateral_transfer": 1.5,
    "borrow": 1.5,
    "main_to_spot": 1,
}
TRANSFER_WEIGHTS: dict[str, float] = {
    "deposit_start": 4,
    "deposit_confirm": 5,
    "deposit_credit": 3,
    "deposit_cancel": 0.6,
    "deposit_travel_rule": 0.6,
    "travel_rule_advance": 1,
    "deposit_shared_hash": 0.4,
    "withdraw_start": 3,
    "withdraw_process": 3,
    "withdraw_complete": 2.5,
    "withdraw_cancel": 0.6,
    "withdraw_partial": 0.3,
    "code_apply": 0.5,
    "refund": 0.5,
}
ZEROHASH_WEIGHTS: dict[str, float] = {
    "zh_deposit": 3,
    "zh_withdraw": 1.5,
    "zh_withdraw_confirm": 1.5,
    "zh_transfer": 2,
    "zh_trade": 2.5,
    "zh_participant_status": 0.3,
}
# Lost webhooks happen among ordinary actions, only when mischief is switched on (forge_every).
DROP_WEIGHTS: dict[str, float] = {"drop_webhook": 0.3, "zh_drop": 0.2}
#: Which deliveries a ``drop_webhook`` loses: mostly final ones, the losses a payment team must hear of.
DROP_PREFIXES: tuple[str, ...] = ("deposit.processed", "withdraw.successful", "deposit.", "withdraw.")
# Trouble for the exporter's REST client and WebSocket, also only with mischief switched on.
# A whole simulator (REST served too, as in --demo) also loses final webhooks more often, so a missed
# webhook shows within minutes of a demo's start.
TROUBLE_WEIGHTS: dict[str, float] = {"force_429": 0.4, "ws_drop": 0.15, "drop_final_webhook": 0.5}
# Trouble for the relay, when the payment backend is there: a few 500s now and then (about every two
# minutes at the demo's rate), and now and then (about every ten minutes) an outage long enough for the
# backlog to show on the dashboard and drain after it.
BACKEND_WEIGHTS: dict[str, float] = {"backend_fail": 0.25, "backend_outage": 0.05}
#: Seconds a ``backend_outage`` keeps the payment backend's port closed (at random between the two).
BACKEND_OUTAGE_SECONDS = (45.0, 120.0)
FINAL_WEBHOOK_PREFIXES: tuple[str, ...] = ("deposit.processed", "withdraw.successful")
#: Endpoints the exporter polls, whose family a ``force_429`` throttles for a few requests.
FORCE_429_PATHS: tuple[str, ...] = (
    "/api/v4/main-account/balance",
    "/api/v4/main-account/history",
    "/api/v4/collateral-account/summary",
)
# Every forge_every steps one of these (whichever is possible) replaces the ordinary action.
ADVERSARIAL_ACTIONS: tuple[str, ...] = (
    "forge",
    "tamper",
    "replay",
    "zh_forge",
    "zh_tamper",
    "zh_stale",
    "zh_replay",
)

WITHDRAW_PENDING_STATUSES = (1, 2, 6, 10, 11, 12, 13, 14, 15, 16, 17)
TRADE_SIDES: tuple[TradeSide, ...] = ("buy", "sell")
ZEROHASH_PARTICIPANT_STATUSES = ("submitted", "pending_approval", "approved", "locked", "disabled")
ZEROHASH_TRANSFER_TYPES = ("trade_allocation", "fund", "commission_allocation", "pay")
ZEROHASH_PRICES = {"BTC": Decimal(60000), "ETH": Decimal(3000), "USDC.ETH": Decimal(1), "USD": Decimal(1)}
MAX_TRIES = 8
MAX_TRACKED = 500  # bound on the in-flight bookkeeping, so a demo that runs for days stays small


class ScenarioEngine:
    """Makes one realistic thing happen per :meth:`step`, or ``rate`` things per second under :meth:`run`."""

    def __init__(
        self,
        exchange: Exchange,
        *,
        accounts: Sequence[str],
        rate: float = 2.0,
        rng: random.Random,
        zerohash: tuple[ZerohashLedger, ZerohashSender] | None = None,
        webhook_sender: WebhookSender | None = None,
        forge_every: int | None = None,
        rest: RestApi | None = None,
        websocket: WebSocketHub | None = None,
        backend: PaymentBackend | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Sleep = asyncio.sleep,
        max_open_orders: int = 40,
        zerohash_group: str = "PLAT01",
        zerohash_participants: Sequence[str] = ("PART01", "PART02", "PART03", "PART04", "PART05"),
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        if not accounts:
            raise ValueError("the scenario needs at least one account")
        unknown = [name for name in accounts if name not in exchange.accounts]
        if unknown:
            raise ValueError(f"unknown accounts: {', '.join(unknown)}")
        if forge_every is not None and forge_every < 1:
            raise ValueError("forge_every must be at least 1")
        self.exchange = exchange
        self.accounts = tuple(accounts)
        self.rate = rate
        self.rng = rng
        self.ledger: ZerohashLedger | None = None
        self.zerohash_sender: ZerohashSender | None = None
        if zerohash is not None:
            self.ledger, self.zerohash_sender = zerohash
        self.webhook_sender = webhook_sender
        self.forge_every = forge_every
        self.rest = rest
        self.websocket = websocket
        self.backend = backend
        self.max_open_orders = max_open_orders
        self.zerohash_group = zerohash_group
        self.zerohash_participants = tuple(zerohash_participants)
        self._clock = clock
        self._sleep = sleep
        self._steps = 0
        self._counts: Counter[str] = Counter()
        self._finished_cids: deque[str] = deque(maxlen=20)
        self._refundable: deque[tuple[str, str]] = deque(maxlen=MAX_TRACKED)  # (account, transaction id)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._weights = dict(TRADING_WEIGHTS) | dict(TRANSFER_WEIGHTS)
        if self.ledger is not None:
            self._weights |= ZEROHASH_WEIGHTS
        if forge_every is not None:
            if webhook_sender is not None:
                self._weights["drop_webhook"] = DROP_WEIGHTS["drop_webhook"]
            if self.zerohash_sender is not None:
                self._weights["zh_drop"] = DROP_WEIGHTS["zh_drop"]
            if rest is not None:
                self._weights["force_429"] = TROUBLE_WEIGHTS["force_429"]
                if webhook_sender is not None:
                    self._weights["drop_final_webhook"] = TROUBLE_WEIGHTS["drop_final_webhook"]
            if websocket is not None:
                self._weights["ws_drop"] = TROUBLE_WEIGHTS["ws_drop"]
            if backend is not None:
                self._weights |= BACKEND_WEIGHTS
        self._actions: dict[str, Callable[[], bool]] = {name: getattr(self, f"_do_{name}") for name in self._weights}
        self._adversarial: dict[str, Callable[[], bool]] = {
            name: getattr(self, f"_do_{name}") for name in ADVERSARIAL_ACTIONS
        }

    # --- public ---

    def action_names(self) -> list[str]:
        """Every action this engine can take with its configuration."""
        names = list(self._weights)
        if self.forge_every is not None:
            names += [name for name in ADVERSARIAL_ACTIONS if self._adversary_available(name)]
        return names

    def counts(self) -> dict[str, int]:
        """How often each action was performed (and ``skipped`` steps)."""
        return dict(self._counts)

    def step(self) -> str:
        """Perform one action and return its name (``skipped`` when nothing could be done)."""
        self._steps += 1
        if self.forge_every is not None and self._steps % self.forge_every == 0:
            names = list(ADVERSARIAL_ACTIONS)
            self.rng.shuffle(names)
            for name in names:
                if self._attempt(name, self._adversarial[name]):
                    return name
        names, weights = self._choices()
        for _ in range(MAX_TRIES):
            name = self.rng.choices(names, weights)[0]
            if self._attempt(name, self._actions[name]):
                return name
        self._counts["skipped"] += 1
        return "skipped"

    async def run(self) -> None:
        """Step ``rate`` times per second until cancelled; the mischief tasks it started go with it."""
        interval = 1.0 / self.rate
        next_at = self._clock()
        try:
            while True:
                self.step()
                # Keep the rate steady when steps take time, but never sleep longer than one interval
                # (a clock that stands still, as in tests) nor try to catch up after falling behind.
                next_at += interval
                now = self._clock()
                next_at = max(next_at, now)
                await self._sleep(min(interval, next_at - now))
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Cancel and await the deliveries (forged, replayed …) that steps started."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()

    async def drain(self) -> None:
        """Wait until the deliveries that steps started have finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- choosing ---

    def _choices(self) -> tuple[list[str], list[float]]:
        weights = dict(self._weights)
        if any(len(self.exchange.accounts[name].orders) > self.max_open_orders for name in self.accounts):
            # Too many resting orders: make cancelling the likeliest thing until the book is back in bounds.
            weights["cancel"] = sum(weights.values())
        return list(weights), list(weights.values())

    def _attempt(self, name: str, action: Callable[[], bool]) -> bool:
        try:
            done = action()
        except (ExchangeError, LedgerError) as error:
            log.debug("scenario action refused", extra={"action": name, "reason": str(error)})
            return False
        if done:
            self._counts[name] += 1
        return done

    # --- helpers ---

    def _account(self) -> Account:
        return self.exchange.accounts[self.rng.choice(self.accounts)]

    def _uniform(self, low: float, high: float) -> Decimal:
        return Decimal(str(round(self.rng.uniform(low, high), 6)))

    @staticmethod
    def _price(value: Decimal) -> Decimal:
        """Six significant digits, like a market's price precision."""
        return value.quantize(Decimal(1).scaleb(value.adjusted() - 5))

    @staticmethod
    def _amount(value: Decimal, places: int = 6) -> Decimal:
        return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_DOWN)

    def _client_order_id(self) -> str:
        roll = self.rng.random()
        if roll < 0.05 and self._finished_cids:
            # WhiteBIT only keeps client ids unique among open orders, so finished ones come back.
            return self.rng.choice(list(self._finished_cids))
        if roll < 0.75:
            return f"sim-{self.rng.getrandbits(40):010x}"
        return ""

    def _finished(self, order: Order) -> None:
        if order.client_order_id:
            self._finished_cids.append(order.client_order_id)

    def _order_size(
        self, account: Account, market: str, side: int, price: Decimal, share: tuple[float, float]
    ) -> Decimal:
        """An amount worth a random ``share`` of what the account can spend on this side."""
        base, quote = market.split("_")
        if side == SIDE_BUY:
            available = account.spot.get(quote)
            funds = available.available if available else Decimal(0)
            return self._amount(funds * self._uniform(*share) / price)
        available = account.spot.get(base)
        return self._amount((available.available if available else Decimal(0)) * self._uniform(*share))

    def _open(self, predicate: Callable[[Order], bool]) -> list[tuple[Account, Order]]:
        return [
            (account, order)
            for name in self.accounts
            for account in (self.exchange.accounts[name],)
            for order in account.orders.values()
            if predicate(order)
        ]

    def _pick_open(self, predicate: Callable[[Order], bool]) -> tuple[Account, Order] | None:
        candidates = self._open(predicate)
        return self.rng.choice(candidates) if candidates else None

    def _transfers(self, method: int, statuses: Sequence[int]) -> list[tuple[Account, Any]]:
        wanted = set(statuses)
        return [
            (account, transfer)
            for name in self.accounts
            for account in (self.exchange.accounts[name],)
            for transfer in account.transfers[-MAX_TRACKED:]
            if transfer.method == method and transfer.status in wanted
        ]

    def _assets(self) -> list[str]:
        assets: dict[str, None] = {}
        for market in self.exchange.markets:
            base, quote = market.split("_")
            assets[base] = None
            assets[quote] = None
        return list(assets)

    def _asset_price(self, asset: str) -> Decimal:
        for market, price in self.exchange.prices.items():
            base, _quote = market.split("_")
            if base == asset:
                return price
        return Decimal(1)

    # --- trading ---

    def _place_limit(self, *, rpi: bool) -> bool:
        account = self._account()
        market = self.rng.choice(self.exchange.markets)
        side = self.rng.choice((SIDE_BUY, SIDE_SELL))
        offset = self._uniform(0.001, 0.02)
        price = self._price(self.exchange.prices[market] * (1 - offset if side == SIDE_BUY else 1 + offset))
        amount = self._order_size(account, market, side, price, (0.005, 0.03))
        if amount <= 0:
            return False
        self.exchange.place_order(
            account.name, market, side, amount, price=price, client_order_id=self._client_order_id(), rpi=rpi
        )
        return True

    def _do_place_limit(self) -> bool:
        return self._place_limit(rpi=False)

    def _do_place_rpi(self) -> bool:
        return self._place_limit(rpi=True)

    def _do_place_stop(self) -> bool:
        account = self._account()
        market = self.rng.choice(self.exchange.markets)
        side = self.rng.choice((SIDE_BUY, SIDE_SELL))
        offset = self._uniform(0.005, 0.03)
        # A buy stop waits above the market, a sell stop below it.
        activation = self._price(self.exchange.prices[market] * (1 + offset if side == SIDE_BUY else 1 - offset))
        order_type = self.rng.choice((TYPE_STOP_LIMIT, TYPE_STOP_MARKET))
        price = None
        if order_type == TYPE_STOP_LIMIT:
            price = self._price(activation * (Decimal("1.002") if side == SIDE_BUY else Decimal("0.998")))
        amount = self._order_size(account, market, side, price or activation, (0.005, 0.02))
        if amount <= 0:
            return False
        self.exchange.place_order(
            account.name,
            market,
            side,
            amount,
            order_type=order_type,
            price=price,
            activation_price=activation,
            client_order_id=self._client_order_id(),
        )
        return True

    def _do_activate_stop(self) -> bool:
        picked = self._pick_open(lambda o: o.is_stop and not o.activated)
        if picked is None:
            return False
        account, order = picked
        assert order.activation_price is not None
        # The market reaches the activation price, and the stop triggers.
        self.exchange.set_price(order.market, order.activation_price)
        self.exchange.activate_stop(account.name, order.id)
        return True

    @staticmethod
    def _fillable(order: Order) -> bool:
        return not order.is_stop or order.activated

    def _do_partial_fill(self) -> bool:
        picked = self._pick_open(self._fillable)
        if picked is None:
            return False
        account, order = picked
        qty = self._amount(order.left * self._uniform(0.1, 0.7))
        if qty <= 0 or qty >= order.left:
            return False
        self.exchange.fill_order(account.name, order.id, qty)
        return True

    def _do_full_fill(self) -> bool:
        activated = self._open(lambda o: o.is_stop and o.activated)
        if activated and self.rng.random() < 0.5:
            account, order = self.rng.choice(activated)
        else:
            picked = self._pick_open(self._fillable)
            if picked is None:
                return False
            account, order = picked
        self._finished(self.exchange.fill_order(account.name, order.id))
        return True

    def _do_cancel(self) -> bool:
        crowded = [n for n in self.accounts if len(self.exchange.accounts[n].orders) > self.max_open_orders]
        account = self.exchange.accounts[self.rng.choice(crowded)] if crowded else self._account()
        if not account.orders:
            return False
        order = self.rng.choice(list(account.orders.values()))
        self._finished(self.exchange.cancel_order(account.name, order.id))
        return True

    def _do_cancel_partially_filled(self) -> bool:
        picked = self._pick_open(lambda o: o.deal_stock > 0)
        if picked is None:
            return False
        account, order = picked
        self._finished(self.exchange.cancel_order(account.name, order.id))
        return True

    def _modify(self, *, new_first: bool) -> bool:
        picked = self._pick_open(lambda o: o.type in (TYPE_LIMIT, TYPE_STOP_LIMIT, TYPE_STOP_MARKET))
        if picked is None:
            return False
        account, order = picked
        price = None if order.price is None else self._price(order.price * (1 + self._uniform(-0.005, 0.005)))
        amount = None
        if self.rng.random() < 0.3:
            amount = self._amount(order.left * self._uniform(0.8, 1.2))
            if amount <= 0:
                return False
        self.exchange.modify_order(account.name, order.id, price=price, amount=amount, new_first=new_first)
        return True

    def _do_modify(self) -> bool:
        return self._modify(new_first=False)

    def _do_modify_new_first(self) -> bool:
        return self._modify(new_first=True)

    def _do_instant_fill(self) -> bool:
        account = self._account()
        market = self.rng.choice(self.exchange.markets)
        side = self.rng.choice((SIDE_BUY, SIDE_SELL))
        price = self.exchange.prices[market]
        amount = self._order_size(account, market, side, price, (0.002, 0.01))
        if amount <= 0:
            return False
        self.exchange.place_instant_fill(account.name, market, side, amount, price, self._client_order_id())
        return True

    def _do_market_order(self) -> bool:
        account = self._account()
        market = self.rng.choice(self.exchange.markets)
        side = self.rng.choice((SIDE_BUY, SIDE_SELL))
        amount = self._order_size(account, market, side, self.exchange.prices[market], (0.002, 0.01))
        if amount <= 0:
            return False
        self.exchange.place_order(account.name, market, side, amount, order_type=TYPE_MARKET)
        return True

    def _do_price_move(self) -> bool:
        market = self.rng.choice(self.exchange.markets)
        move = Decimal(str(round(self.rng.gauss(0, 0.003), 6)))
        move = max(min(move, Decimal("0.02")), Decimal("-0.02"))
        self.exchange.set_price(market, self._price(self.exchange.prices[market] * (1 + move)))
        return True

    def _do_collateral_transfer(self) -> bool:
        account = self._account()
        assets = [asset for asset, balance in account.spot.items() if balance.available > 0]
        if not assets:
            return False
        asset = self.rng.choice(assets)
        amount = self._amount(account.spot[asset].available * self._uniform(0.001, 0.01))
        if amount <= 0:
            return False
        self.exchange.transfer_to_collateral(account.name, asset, amount)
        return True

    def _do_main_to_spot(self) -> bool:
        # Deposits land on the main balance; moving part of it to spot keeps trading funded for days.
        account = self._account()
        assets = [asset for asset, amount in account.main.items() if amount > 0]
        if not assets:
            return False
        asset = self.rng.choice(assets)
        amount = self._amount(account.main[asset] * self._uniform(0.05, 0.2))
        if amount <= 0:
            return False
        self.exchange.transfer_main_to_spot(account.name, asset, amount)
        return True

    def _do_borrow(self) -> bool:
        account = self._account()
        assets = [asset for asset, balance in account.collateral.items() if balance.balance > 0]
        if not assets:
            return False
        asset = self.rng.choice(assets)
        balance = account.collateral[asset]
        if balance.borrow > 0 and self.rng.random() < 0.4:
            amount = -self._amount(balance.borrow * self._uniform(0.1, 1.0))
        else:
            amount = self._amount(balance.balance * self._uniform(0.01, 0.1))
        if amount == 0:
            return False
        self.exchange.borrow(account.name, asset, amount)
        return True

    # --- deposits, withdrawals, codes, refunds ---

    def _deposit_ticker(self, account: Account) -> str:
        assets = self._assets()
        if self.rng.random() < 0.5:
            # Top up whatever the account holds least of (by value), so withdrawals keep finding funds.
            return min(assets, key=lambda a: account.main.get(a, Decimal(0)) * self._asset_price(a))
        return self.rng.choice(assets)

    def _deposit_amount(self, ticker: str) -> Decimal:
        value = self._uniform(20, 3000)
        return self._amount(value / self._asset_price(ticker))

    def _do_deposit_start(self) -> bool:
        account = self._account()
        ticker = self._deposit_ticker(account)
        amount = self._deposit_amount(ticker)
        if amount <= 0:
            return False
        self.exchange.start_deposit(account.name, ticker, amount, confirmations_required=self.rng.randint(1, 6))
        return True

    def _do_deposit_travel_rule(self) -> bool:
        account = self._account()
        ticker = self._deposit_ticker(account)
        amount = self._deposit_amount(ticker)
        if amount <= 0:
            return False
        self.exchange.start_deposit(account.name, ticker, amount, travel_rule=True)
        return True

    def _do_deposit_shared_hash(self) -> bool:
        # One on-chain transaction paying two deposit addresses: two records, one hash. Now and then
        # both outputs pay one address the same amount: two transfers that look the same in every
        # field a webhook carries, told apart only by their history records' transactionIds.
        tx_hash = f"0x{self.rng.getrandbits(256):064x}"
        ticker = self.rng.choice(self._assets())
        if self.rng.random() < 0.5:
            account = self._account()
            amount = self._deposit_amount(ticker)
            if amount <= 0:
                return False
            confirmations = self.rng.randint(1, 4)
            first = self.exchange.start_deposit(
                account.name, ticker, amount, transaction_hash=tx_hash, confirmations_required=confirmations
            )
            self.exchange.start_deposit(
                account.name,
                ticker,
                amount,
                transaction_hash=tx_hash,
                confirmations_required=confirmations,
                address=first.address,
                network=first.network,
            )
            return True
        for _ in range(2):
            account = self._account()
            amount = self._deposit_amount(ticker)
            if amount <= 0:
                return False
            self.exchange.start_deposit(
                account.name, ticker, amount, transaction_hash=tx_hash, confirmations_required=self.rng.randint(1, 4)
            )
        return True

    @staticmethod
    def _outputs_of_one_transaction(account: Account, transfer: Transfer) -> list[Transfer]:
        """``transfer`` and the look-alike outputs of its transaction in the same state: they move together."""
        return [
            t
            for t in account.transfers
            if t.method == METHOD_DEPOSIT
            and (t.transaction_hash, t.address, t.amount, t.ticker, t.status, t.confirmations_actual)
            == (
                transfer.transaction_hash,
                transfer.address,
                transfer.amount,
                transfer.ticker,
                transfer.status,
                transfer.confirmations_actual,
            )
        ]

    def _do_deposit_confirm(self) -> bool:
        candidates = [
            (a, t)
            for a, t in self._transfers(METHOD_DEPOSIT, (DEPOSIT_PENDING,))
            if (t.confirmations_actual or 0) < (t.confirmations_required or 0)
        ]
        if not candidates:
            return False
        account, transfer = self.rng.choice(candidates)
        for output in self._outputs_of_one_transaction(account, transfer):
            self.exchange.confirm_deposit(account.name, output.transaction_id)
        return True

    def _do_deposit_credit(self) -> bool:
        candidates = [
            (a, t)
            for a, t in self._transfers(METHOD_DEPOSIT, (DEPOSIT_PENDING, DEPOSIT_TRAVEL_RULE_PROCESSING))
            if t.status == DEPOSIT_TRAVEL_RULE_PROCESSING
            or (t.confirmations_actual or 0) >= (t.confirmations_required or 0)
        ]
        if not candidates:
            return False
        account, transfer = self.rng.choice(candidates)
        status = self.rng.choice((3, 3, 3, 7))
        for output in self._outputs_of_one_transaction(account, transfer):
            self.exchange.credit_deposit(account.name, output.transaction_id, status=status)
        return True

    def _do_deposit_cancel(self) -> bool:
        candidates = self._transfers(METHOD_DEPOSIT, (DEPOSIT_PENDING, DEPOSIT_TRAVEL_RULE_PROCESSING))
        if not candidates:
            return False
        account, transfer = self.rng.choice(candidates)
        status = self.rng.choice((4, 4, 9))
        for output in self._outputs_of_one_transaction(account, transfer):
            self.exchange.cancel_deposit(account.name, output.transaction_id, status=status)
            self._refundable.append((account.name, output.transaction_id))
        return True

    def _do_travel_rule_advance(self) -> bool:
        candidates = self._transfers(METHOD_DEPOSIT, (DEPOSIT_TRAVEL_RULE_FROZEN,))
        if not candidates:
            return False
        account, transfer = self.rng.choice(candidates)
        self.exchange.advance_travel_rule(account.name, transfer.transaction_id)
        return True

    def _do_refund(self) -> bool:
        while self._refundable:
            name, transaction_id = self._refundable.popleft()
            account = self.exchange.accounts[name]
            transfer = account.transfer(transaction_id)
            if transfer.status in (DEPOSIT_CANCELED, 9):
                self.exchange.refund_deposit(name, transaction_id, succeed=self.rng.random() < 0.85)
                return True
        return False

    def _do_withdraw_start(self) -> bool:
        account = self._account()
        funded = [asset for asset, amount in account.main.items() if amount > 0]
        if not funded:
            return False
        ticker = self.rng.choice(funded)
        amount = self._amount(account.main[ticker] * self._uniform(0.02, 0.2))
        fee = self._amount(amount * Decimal("0.001"))
        if amount <= 0:
            return False
        self.exchange.start_withdrawal(account.name, ticker, amount, fee=fee)
        return True

    def _do_withdraw_process(self) -> bool:
        candidates = self._transfers(METHOD_WITHDRAW, (WITHDRAW_UNCONFIRMED, 1))
        if not candidates:
            return False
        account, transfer = self.rng.choice(candidates)
        status = 1 if transfer.status == WITHDRAW_UNCONFIRMED else self.rng.choice(WITHDRAW_PENDING_STATUSES[1:])
        self.exchange.process_withdrawal(account.name, transfer.transaction_id, status=status)
        return True

    def _do_withdraw_complete(self) -> bool:
        candidates = self._transfers(METHOD_WITHDRAW, WITHDRAW_PENDING_STATUSES)
        if not candidates:
            return False
        account, transfer = self.rng.choice(candidates)
        self.exchange.complete_withdrawal(account.name, transfer.transaction_id)
        return True

    def _do_withdraw_cancel(self) -> bool:
        candidates = self._transfers(METHOD_WITHDRAW, (WITHDRAW_UNCONFIRMED, 1))
        if not candidates:
            return False
        account, transfer = self.rng.choice(candidates)
        self.exchange.cancel_withdrawal(account.name, transfer.transaction_id)
        return True

    def _do_withdraw_partial(self) -> bool:
        candidates = self._transfers(METHOD_WITHDRAW, WITHDRAW_PENDING_STATUSES)
        if not candidates:
            return False
        account, transfer = self.rng.choice(candidates)
        processed = self._amount(transfer.amount * self._uniform(0.3, 0.9))
        self.exchange.partially_complete_withdrawal(account.name, transfer.transaction_id, processed)
        return True

    def _do_code_apply(self) -> bool:
        self.exchange.apply_code(self._account().name, f"WBX-{self.rng.getrandbits(48):012X}")
        return True

    # --- Zero Hash ---

    def _zh(self) -> tuple[ZerohashLedger, ZerohashSender]:
        assert self.ledger is not None
        assert self.zerohash_sender is not None
        return self.ledger, self.zerohash_sender

    def _zh_send(self, payloads: list[dict[str, Any]]) -> None:
        _, sender = self._zh()
        for payload in payloads:
            sender.send(ACCOUNT_BALANCE_CHANGED, payload)

    def _zh_price(self, asset: str) -> Decimal:
        market = f"{asset}_USDT"
        if market in self.exchange.prices:
            return self.exchange.prices[market]
        return ZEROHASH_PRICES.get(asset, Decimal(1))

    def _zh_funded(self, asset: str | None = None) -> list[AccountKey]:
        ledger, _ = self._zh()
        return [
            key
            for key, balance in ledger.balances.items()
            if balance > 0 and key.account_type == AVAILABLE and (asset is None or key.asset == asset)
        ]

    def _do_zh_deposit(self) -> bool:
        ledger, _ = self._zh()
        asset = self.rng.choice(tuple(ZEROHASH_PRICES))
        amount = self._amount(self._uniform(50, 5000) / self._zh_price(asset), 8 if asset in ("BTC", "ETH") else 2)
        if amount <= 0:
            return False
        participant = self.rng.choice(self.zerohash_participants)
        self._zh_send(ledger.deposit(participant, asset, amount, account_group=self.zerohash_group))
        return True

    def _do_zh_withdraw(self) -> bool:
        ledger, _ = self._zh()
        funded = self._zh_funded()
        if not funded:
            return False
        key = self.rng.choice(funded)
        amount = self._amount(ledger.balance(key) * self._uniform(0.05, 0.5), 8)
        if amount <= 0:
            return False
        _, payloads = ledger.withdraw(
            key.participant_code, key.asset, amount, account_group=key.account_group, account_label=key.account_label
        )
        self._zh_send(payloads)
        return True

    def _do_zh_withdraw_confirm(self) -> bool:
        ledger, _ = self._zh()
        pending = ledger.pending_withdrawals()
        if not pending:
            return False
        # Mostly oldest first, as chains confirm, but not always.
        request_id = pending[0] if self.rng.random() < 0.7 else self.rng.choice(pending)
        self._zh_send(ledger.confirm_withdrawal(request_id))
        return True

    def _do_zh_transfer(self) -> bool:
        ledger, _ = self._zh()
        funded = self._zh_funded()
        if not funded:
            return False
        source = self.rng.choice(funded)
        others = [p for p in (*self.zerohash_participants, self.zerohash_group) if p != source.participant_code]
        amount = self._amount(ledger.balance(source) * self._uniform(0.05, 0.3), 8)
        if amount <= 0 or not others:
            return False
        self._zh_send(
            ledger.transfer(
                source.participant_code,
                self.rng.choice(others),
                source.asset,
                amount,
                account_group=source.account_group,
                transfer_type=self.rng.choice(ZEROHASH_TRANSFER_TYPES),
            )
        )
        return True

    def _do_zh_trade(self) -> bool:
        ledger, sender = self._zh()
        asset = self.rng.choice(("BTC", "ETH"))
        price = self._zh_price(asset)
        side = self.rng.choice(TRADE_SIDES)
        if side == "buy":
            funded = self._zh_funded("USD")
            if not funded:
                return False
            key = self.rng.choice(funded)
            notional = self._amount(ledger.balance(key) * self._uniform(0.05, 0.4), 2)
            quantity = self._amount(notional / price, 8)
        else:
            funded = self._zh_funded(asset)
            if not funded:
                return False
            key = self.rng.choice(funded)
            quantity = self._amount(ledger.balance(key) * self._uniform(0.05, 0.5), 8)
            notional = self._amount(quantity * price, 2)
        if quantity <= 0 or notional <= 0:
            return False
        trade_id, payloads = ledger.settle_trade(
            key.participant_code,
            account_group=key.account_group,
            side=side,
            asset=asset,
            quantity=quantity,
            quoted_currency="USD",
            notional=notional,
            outstanding=self.rng.random() < 0.3,
        )
        self._zh_send(payloads)
        sender.send(TRADE_STATUS_CHANGED, ledger.trade_status_payload(trade_id))
        return True

    def _do_zh_participant_status(self) -> bool:
        ledger, sender = self._zh()
        participant = self.rng.choice(self.zerohash_participants)
        status = self.rng.choice(ZEROHASH_PARTICIPANT_STATUSES)
        sender.send(PARTICIPANT_STATUS_CHANGED, ledger.participant_status_payload(participant, status))
        return True

    # --- mischief ---

    def _do_drop_webhook(self) -> bool:
        if self.webhook_sender is None:
            return False
        # Deposits and withdrawals are what the exporter can notice missing (history reconciliation).
        self.webhook_sender.drop_next(1, method_prefix=self.rng.choice(DROP_PREFIXES))
        return True

    def _do_drop_final_webhook(self) -> bool:
        if self.webhook_sender is None:
            return False
        self.webhook_sender.drop_next(1, method_prefix=self.rng.choice(FINAL_WEBHOOK_PREFIXES))
        return True

    def _do_force_429(self) -> bool:
        if self.rest is None:
            return False
        # WhiteBIT throttling (or a nonce it did not like): the exporter must back off and recover.
        path, count = self.rng.choice(FORCE_429_PATHS), self.rng.randint(1, 3)
        self.rest.force_rate_limit(path, count)
        log.info("scenario forces 429s", extra={"path": path, "count": count})
        return True

    def _do_ws_drop(self) -> bool:
        if self.websocket is None:
            return False
        name = self.rng.choice(self.accounts)
        if not self.websocket.connections(name):
            return False
        return self._spawn(self.websocket.drop(name))

    def _do_backend_fail(self) -> bool:
        # One lot of 500s at a time: a backlog retried slowly after an outage would otherwise meet them all.
        if self.backend is None or self.backend.trouble.down or self.backend.trouble.fail_next:
            return False
        count = self.rng.randint(2, 6)
        self.backend.fail_next(count)
        log.info("scenario makes the payment backend answer 500", extra={"count": count})
        return True

    def _do_backend_outage(self) -> bool:
        if self.backend is None or self.backend.trouble.down:
            return False
        return self._spawn(self._backend_outage(self.backend, self.rng.uniform(*BACKEND_OUTAGE_SECONDS)))

    async def _backend_outage(self, backend: PaymentBackend, seconds: float) -> None:
        log.info("scenario takes the payment backend down", extra={"seconds": round(seconds)})
        await backend.set_trouble(dataclasses.replace(backend.trouble, down=True))
        try:
            await self._sleep(seconds)
        finally:
            await backend.set_trouble(dataclasses.replace(backend.trouble, down=False))
            log.info("scenario brings the payment backend back")

    def _do_zh_drop(self) -> bool:
        if self.zerohash_sender is None:
            return False
        self.zerohash_sender.drop_next(1, ACCOUNT_BALANCE_CHANGED)
        return True

    def _webhook_account(self) -> str | None:
        if self.webhook_sender is None:
            return None
        names = [name for name in self.webhook_sender.webhook_accounts() if name in self.accounts]
        return self.rng.choice(names) if names else None

    def _adversary_available(self, name: str) -> bool:
        if name in ("forge", "tamper", "replay"):
            return self.webhook_sender is not None
        return self.zerohash_sender is not None

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> bool:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coroutine.close()  # a synchronous caller: mischief needs the event loop, so do something else
            return False
        task = loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return True

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("scenario delivery failed", extra={"error": repr(task.exception())})

    def _do_forge(self) -> bool:
        name = self._webhook_account()
        if name is None or self.webhook_sender is None:
            return False
        return self._spawn(self.webhook_sender.send_forged(name))

    def _do_tamper(self) -> bool:
        name = self._webhook_account()
        if name is None or self.webhook_sender is None:
            return False
        return self._spawn(self.webhook_sender.send_tampered(name))

    def _do_replay(self) -> bool:
        name = self._webhook_account()
        if name is None or self.webhook_sender is None or not self.webhook_sender.can_replay(name):
            return False
        return self._spawn(self.webhook_sender.replay_last(name))

    def _do_zh_forge(self) -> bool:
        if self.zerohash_sender is None:
            return False
        return self._spawn(self.zerohash_sender.send_forged())

    def _do_zh_tamper(self) -> bool:
        if self.zerohash_sender is None:
            return False
        return self._spawn(self.zerohash_sender.send_tampered())

    def _do_zh_stale(self) -> bool:
        if self.zerohash_sender is None:
            return False
        return self._spawn(self.zerohash_sender.send_stale())

    def _do_zh_replay(self) -> bool:
        if self.zerohash_sender is None or not self.zerohash_sender.can_replay():
            return False
        return self._spawn(self.zerohash_sender.replay_last())
