"""The simulated exchange: accounts, balances, collateral positions, open orders and transfer history.

A pure state machine with no I/O: every operation changes state the way WhiteBIT documents it and
emits the events WhiteBIT would push (``ordersPending_update``, ``balanceSpot_update``,
``balanceMargin_update``) and the webhooks it would send. The REST, WebSocket and webhook layers of
the simulator only translate this state and these events into the wire protocol, so the same rules
(modify is finish-then-new with a new id, a stop activation is a second "new" with the same id, an
instant fill is a lone "finish", balance updates carry only the assets that changed) hold everywhere.

Balances stay consistent with the orders: a resting order freezes what it could spend, a fill moves
base and quote between ``available`` and ``freeze``, a cancel releases what is left. Deposits credit
the main balance only when they reach a credited status; withdrawals debit it when created and give
it back when canceled.
"""

from __future__ import annotations

import itertools
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, ClassVar

ZERO = Decimal(0)

# WebSocket order event ids (docs/protocol.md#orderspending-channel).
EVENT_NEW = 1
EVENT_UPDATE = 2
EVENT_FINISH = 3

# WebSocket order side codes: 1 = sell, 2 = buy.
SIDE_SELL = 1
SIDE_BUY = 2
SIDE_NAMES = {SIDE_SELL: "sell", SIDE_BUY: "buy"}

# WebSocket order type codes and the REST strings for them.
TYPE_LIMIT = 1
TYPE_MARKET = 2
TYPE_STOCK_MARKET = 202
TYPE_STOP_LIMIT = 3
TYPE_STOP_MARKET = 4
TYPE_MARGIN_LIMIT = 7
TYPE_MARGIN_MARKET = 8
TYPE_MARGIN_STOP_LIMIT = 9
TYPE_MARGIN_STOP_MARKET = 10
TYPE_REST_NAMES = {
    TYPE_LIMIT: "limit",
    TYPE_MARKET: "market",
    TYPE_STOCK_MARKET: "stock market",
    TYPE_STOP_LIMIT: "stop limit",
    TYPE_STOP_MARKET: "stop market",
    TYPE_MARGIN_LIMIT: "margin limit",
    TYPE_MARGIN_MARKET: "margin market",
    TYPE_MARGIN_STOP_LIMIT: "margin stop limit",
    TYPE_MARGIN_STOP_MARKET: "trigger stop market",
}
STOP_TYPES = frozenset({TYPE_STOP_LIMIT, TYPE_STOP_MARKET, TYPE_MARGIN_STOP_LIMIT, TYPE_MARGIN_STOP_MARKET})

# History ``method`` values.
METHOD_DEPOSIT = 1
METHOD_WITHDRAW = 2

# Deposit and withdrawal status codes (docs/protocol.md#transfer-status-codes).
DEPOSIT_CREDITED = 3
DEPOSIT_CANCELED = 4
DEPOSIT_UNCONFIRMED_BY_USER = 5
DEPOSIT_PENDING = 15
DEPOSIT_FROZEN = 21
DEPOSIT_UNCREDITED = 22
DEPOSIT_TRAVEL_RULE_FROZEN = 27
DEPOSIT_TRAVEL_RULE_PROCESSING = 28
WITHDRAW_SUCCESSFUL = 3
WITHDRAW_CANCELED = 4
WITHDRAW_UNCONFIRMED = 5
WITHDRAW_PENDING = 1
WITHDRAW_PROCESSING = 2
WITHDRAW_PARTIAL = 18

CURRENCY_NAMES = {
    "BTC": "Bitcoin",
    "ETH": "Ethereum",
    "USDT": "Tether US",
    "USDC": "USD Coin",
    "TRX": "Tron",
    "SOL": "Solana",
    "XRP": "Ripple",
}
NETWORKS = {"USDT": ["TRC20", "ERC20"], "USDC": ["ERC20", "SOL"], "ETH": ["ERC20"]}


class ExchangeError(Exception):
    """An operation the exchange refuses (unknown order, not enough balance, unknown market)."""


def fmt(amount: Decimal) -> str:
    """A decimal string as WhiteBIT's REST and WebSocket send it (no exponent, no trailing zeros)."""
    text = format(amount.normalize(), "f")
    return text if text != "-0" else "0"


def fmt18(amount: Decimal) -> str:
    """A decimal string with 18 places, as WhiteBIT's webhook examples show amounts."""
    return format(amount.quantize(Decimal("1e-18")), "f")


@dataclass
class SpotBalance:
    """Trade-account balance of one asset: what can be spent and what open orders hold."""

    available: Decimal = ZERO
    freeze: Decimal = ZERO


@dataclass
class MarginBalance:
    """Collateral-account balance of one asset."""

    balance: Decimal = ZERO
    borrow: Decimal = ZERO

    @property
    def available_without_borrow(self) -> Decimal:
        return max(self.balance - self.borrow, ZERO)

    @property
    def available_with_borrow(self) -> Decimal:
        # The simulator lends up to 10x collateral, a round figure that keeps `ab` distinct from `av`.
        return self.available_without_borrow * 10


@dataclass(frozen=True)
class Position:
    """An open collateral position: ``amount`` of the market's base asset (negative: short) at ``base_price``.

    Opening one leaves the collateral balance as it is (WhiteBIT's ``balanceMargin`` page says so);
    what it is worth shows in the collateral summary (``/api/v4/collateral-account/summary``).
    """

    market: str
    amount: Decimal
    base_price: Decimal


@dataclass
class Order:
    """An order in the simulated matching engine."""

    id: int
    market: str
    side: int
    type: int
    amount: Decimal
    price: Decimal | None
    left: Decimal
    client_order_id: str
    ctime: float
    mtime: float
    deal_stock: Decimal = ZERO
    deal_money: Decimal = ZERO
    deal_fee: Decimal = ZERO
    status: str = "OPEN"
    post_only: bool = False
    ioc: bool = False
    rpi: bool = False
    activation_price: Decimal | None = None
    activated: bool = False
    frozen: Decimal = ZERO  # what this order holds in `freeze` (quote for buys, base for sells)

    @property
    def is_stop(self) -> bool:
        return self.type in STOP_TYPES

    def to_ws(self) -> dict[str, Any]:
        """The order object of ``ordersPending`` (snake_case, integer enums)."""
        doc: dict[str, Any] = {
            "id": self.id,
            "market": self.market,
            "type": self.type,
            "side": self.side,
            "post_only": self.post_only,
            "ioc": self.ioc,
            "ctime": self.ctime,
            "mtime": self.mtime,
            "price": fmt(self.price) if self.price is not None else "0",
            "amount": fmt(self.amount),
            "left": fmt(self.left),
            "deal_stock": fmt(self.deal_stock),
            "deal_money": fmt(self.deal_money),
            "deal_fee": fmt(self.deal_fee),
            "client_order_id": self.client_order_id,
            "stp": "no",
            "status": self.status,
            "position_side": "BOTH",
            "rpi": self.rpi,
            "retail": False,
            "reduce_only": False,
        }
        if self.activation_price is not None:
            doc["activation_price"] = fmt(self.activation_price)
            doc["activated"] = 1 if self.activated else 0
        return doc

    def to_rest(self) -> dict[str, Any]:
        """The order item of ``POST /api/v4/orders`` (camelCase, string enums)."""
        doc: dict[str, Any] = {
            "orderId": self.id,
            "clientOrderId": self.client_order_id,
            "market": self.market,
            "side": SIDE_NAMES[self.side],
            "type": TYPE_REST_NAMES.get(self.type, "limit"),
            "timestamp": self.ctime,
            "dealMoney": fmt(self.deal_money),
            "dealStock": fmt(self.deal_stock),
            "amount": fmt(self.amount),
            "left": fmt(self.left),
            "dealFee": fmt(self.deal_fee),
            "postOnly": self.post_only,
            "ioc": self.ioc,
            "status": self.status,
            "stp": "no",
            "rpi": self.rpi,
        }
        if self.price is not None:
            doc["price"] = fmt(self.price)
        if self.activation_price is not None:
            doc["activation_price"] = fmt(self.activation_price)
            doc["activated"] = 1 if self.activated else 0
            doc["activationCondition"] = "gte" if self.side == SIDE_BUY else "lte"
        return doc


@dataclass
class Transfer:
    """A deposit or withdrawal: what ``/api/v4/main-account/history`` shows and what its webhooks carry.

    The two views differ as WhiteBIT documents them (docs/protocol.md#webhook-payload-fields):
    :meth:`to_history` has the plain ticker, the network, short amounts and the ``transactionId``
    (or ``transaction_id``); :meth:`to_webhook_params` has, for a deposit of a multi-network asset,
    the ticker with its network suffix (``USDT_ETH`` beside ``"network": "ERC20"``), 18-decimal
    amounts, ``uniqueId: null``, no ``transactionId``, and ``network: null`` for a single-network
    asset. ``plain=True`` switches the webhook to the plain ticker and the echoed ``uniqueId``.
    """

    #: The suffix a deposit webhook appends to a multi-network ticker, per network (``USDT`` on
    #: ``ERC20`` is ``USDT_ETH``, as in WhiteBIT's examples; the others are the simulator's own).
    WEBHOOK_TICKER_SUFFIXES: ClassVar[dict[str, str]] = {"ERC20": "ETH", "TRC20": "TRON", "SOL": "SOL"}

    transaction_id: str
    method: int
    ticker: str
    amount: Decimal
    fee: Decimal
    address: str
    network: str | None
    status: int
    transaction_hash: str
    created_at: int
    unique_id: str | None = None
    memo: str = ""
    description: str | None = ""
    confirmations_actual: int | None = None
    confirmations_required: int | None = None
    processed_amount: Decimal | None = None

    @property
    def currency(self) -> str:
        return CURRENCY_NAMES.get(self.ticker, self.ticker)

    def to_history(self, field_style: str = "camel") -> dict[str, Any]:
        """A history record; ``field_style`` "snake" uses the new OpenAPI's ``unique_id``/``transaction_id``."""
        unique_key, txid_key = (
            ("unique_id", "transaction_id") if field_style == "snake" else ("uniqueId", "transactionId")
        )
        record: dict[str, Any] = {
            "address": self.address,
            unique_key: self.unique_id,
            "createdAt": self.created_at,
            "currency": self.currency,
            "ticker": self.ticker,
            "method": self.method,
            "amount": fmt(self.amount),
            "description": self.description,
            "memo": self.memo,
            "fee": fmt(self.fee),
            "status": self.status,
            "network": self.network,
            "transactionHash": self.transaction_hash,
            txid_key: self.transaction_id,
            "details": {"partial": self._partial()},
            "confirmations": self._confirmations(),
        }
        return record

    @property
    def webhook_ticker(self) -> str:
        """The ticker a deposit webhook names: with the network suffix for a multi-network asset."""
        suffix = self.WEBHOOK_TICKER_SUFFIXES.get(self.network or "")
        if self.method != METHOD_DEPOSIT or suffix is None or suffix == self.ticker:
            return self.ticker
        return f"{self.ticker}_{suffix}"

    def to_webhook_params(self, *, plain: bool = False) -> dict[str, Any]:
        """The ``params`` of a ``deposit.*`` / ``withdraw.*`` webhook (before the sender adds ``nonce``).

        WhiteBIT's documented form (see the class docstring); ``plain`` names the plain ticker and
        echoes ``uniqueId`` instead.
        """
        params: dict[str, Any] = {
            "address": self.address,
            "amount": fmt18(self.amount),
            "createdAt": self.created_at,
            "currency": self.currency,
            "description": self.description,
            "fee": fmt18(self.fee),
            "memo": self.memo,
            "method": self.method,
            "network": self.network,
            "status": self.status,
            "ticker": self.ticker if plain else self.webhook_ticker,
            "transactionHash": self.transaction_hash,
            # null in every documented example, for deposits and withdrawals alike.
            "uniqueId": self.unique_id if plain else None,
        }
        confirmations = self._confirmations()
        if confirmations is not None:
            params["confirmations"] = confirmations
        return params

    def _confirmations(self) -> dict[str, int] | None:
        if self.confirmations_required is None:
            return None
        return {"actual": self.confirmations_actual or 0, "required": self.confirmations_required}

    def _partial(self) -> dict[str, str] | None:
        if self.processed_amount is None:
            return None
        return {
            "requestAmount": fmt(self.amount),
            "processedAmount": fmt(self.processed_amount),
            "processedFee": fmt(self.fee),
            "normalizeTransaction": "",
        }


@dataclass
class Account:
    """One simulated WhiteBIT account and the credentials that reach it."""

    name: str
    api_key: str
    api_secret: str
    webhook_key: str | None = None
    webhook_secret: str | None = None
    main: dict[str, Decimal] = field(default_factory=dict)
    spot: dict[str, SpotBalance] = field(default_factory=dict)
    collateral: dict[str, MarginBalance] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)  # by market
    orders: dict[int, Order] = field(default_factory=dict)
    transfers: list[Transfer] = field(default_factory=list)  # oldest first
    #: False for an account without collateral (margin) trading: its collateral wallet stays empty and
    #: the WebSocket refuses ``balanceMargin`` (what WhiteBIT answers then is not documented).
    collateral_trading: bool = True

    def history(self) -> list[Transfer]:
        """Transfers newest first, as the history endpoint returns them."""
        return sorted(self.transfers, key=lambda t: t.created_at, reverse=True)

    def transfer(self, transaction_id: str) -> Transfer:
        for item in self.transfers:
            if item.transaction_id == transaction_id:
                return item
        raise ExchangeError(f"unknown transfer {transaction_id}")


# --- events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OrderEvent:
    """An ``ordersPending_update``: ``[event_id, order]``."""

    account: str
    event_id: int
    order: dict[str, Any]


@dataclass(frozen=True)
class SpotBalanceEvent:
    """A ``balanceSpot_update`` carrying only the assets that changed."""

    account: str
    balances: dict[str, dict[str, str]]


@dataclass(frozen=True)
class MarginBalanceEvent:
    """A ``balanceMargin_update`` carrying only the assets that changed."""

    account: str
    balances: dict[str, dict[str, str]]


@dataclass(frozen=True)
class WebhookEvent:
    """A webhook WhiteBIT would send for this account (``params`` without ``nonce``)."""

    account: str
    method: str
    params: dict[str, Any]


Event = OrderEvent | SpotBalanceEvent | MarginBalanceEvent | WebhookEvent
Listener = Callable[[Event], None]


def spot_wire(balance: SpotBalance) -> dict[str, str]:
    return {"available": fmt(balance.available), "freeze": fmt(balance.freeze)}


def margin_wire(balance: MarginBalance) -> dict[str, str]:
    """The abbreviated keys of ``balanceMargin_update``."""
    return {
        "B": fmt(balance.balance),
        "b": fmt(balance.borrow),
        "av": fmt(balance.available_without_borrow),
        "ab": fmt(balance.available_with_borrow),
    }


def margin_request_wire(balance: MarginBalance) -> dict[str, str]:
    """The long keys of ``balanceMargin_request`` and the REST summary."""
    return {
        "balance": fmt(balance.balance),
        "borrow": fmt(balance.borrow),
        "available_without_borrow": fmt(balance.available_without_borrow),
        "available_with_borrow": fmt(balance.available_with_borrow),
    }


# --- the exchange ---------------------------------------------------------------------------------


DEFAULT_PRICES = {"BTC": Decimal("60000"), "ETH": Decimal("3000"), "SOL": Decimal("150"), "TRX": Decimal("0.12")}
FEE_RATE = Decimal("0.001")


class Exchange:
    """All simulated accounts and markets; every state change goes through its methods."""

    def __init__(
        self,
        markets: Sequence[str],
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        history_field_style: str = "camel",
        plain_webhooks: bool = False,
    ) -> None:
        for market in markets:
            if market.count("_") != 1:
                raise ValueError(f"market {market!r} is not BASE_QUOTE")
        self.markets: tuple[str, ...] = tuple(markets)
        self.clock = clock
        self.rng = rng or random.Random()
        self.history_field_style = history_field_style
        #: Deposit and withdrawal webhooks in the plain form (see Transfer.to_webhook_params), not WhiteBIT's.
        self.plain_webhooks = plain_webhooks
        self.accounts: dict[str, Account] = {}  # by name
        self.prices: dict[str, Decimal] = {
            market: DEFAULT_PRICES.get(market.split("_")[0], Decimal("1")) for market in markets
        }
        #: What the public ticker reports beside the price: the price the simulation opened at (its
        #: ``change`` is measured from it) and the (base, quote) volume filled since then, per market.
        self.opening_prices: dict[str, Decimal] = dict(self.prices)
        self.volumes: dict[str, tuple[Decimal, Decimal]] = dict.fromkeys(markets, (ZERO, ZERO))
        self._order_ids = itertools.count(4_200_000_001)
        self._listeners: list[Listener] = []

    # --- accounts and listeners ---

    def add_account(
        self,
        name: str,
        *,
        api_key: str,
        api_secret: str,
        webhook_key: str | None = None,
        webhook_secret: str | None = None,
        main: Mapping[str, str | Decimal] | None = None,
        spot: Mapping[str, str | Decimal] | None = None,
        collateral: Mapping[str, str | Decimal] | None = None,
        positions: Mapping[str, str | Decimal] | None = None,
        collateral_trading: bool = True,
    ) -> Account:
        """Create an account with starting balances (spot amounts are all available) and open
        positions (market -> base amount, negative for a short, opened at the market's price)."""
        if name in self.accounts:
            raise ValueError(f"account {name!r} exists")
        if (collateral or positions) and not collateral_trading:
            raise ValueError(f"account {name!r} has no collateral trading, so no collateral balances or positions")
        account = Account(name, api_key, api_secret, webhook_key, webhook_secret, collateral_trading=collateral_trading)
        account.main = {k: Decimal(v) for k, v in (main or {}).items()}
        account.spot = {k: SpotBalance(Decimal(v)) for k, v in (spot or {}).items()}
        account.collateral = {k: MarginBalance(Decimal(v)) for k, v in (collateral or {}).items()}
        self.accounts[name] = account
        for market, amount in (positions or {}).items():
            self.open_position(name, market, Decimal(amount))
        return account

    def account_by_key(self, api_key: str) -> Account | None:
        for account in self.accounts.values():
            if account.api_key == api_key:
                return account
        return None

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` with every event from now on; returns a function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            listener(event)

    def _emit_spot(self, account: Account, assets: Iterable[str]) -> None:
        changed = {asset: spot_wire(account.spot.setdefault(asset, SpotBalance())) for asset in dict.fromkeys(assets)}
        if changed:
            self._emit(SpotBalanceEvent(account.name, changed))

    def _emit_margin(self, account: Account, assets: Iterable[str]) -> None:
        changed = {
            asset: margin_wire(account.collateral.setdefault(asset, MarginBalance())) for asset in dict.fromkeys(assets)
        }
        if changed:
            self._emit(MarginBalanceEvent(account.name, changed))

    def _webhook(self, account: Account, method: str, params: dict[str, Any]) -> None:
        self._emit(WebhookEvent(account.name, method, params))

    def _account(self, name: str) -> Account:
        try:
            return self.accounts[name]
        except KeyError:
            raise ExchangeError(f"unknown account {name!r}") from None

    def _order(self, account: Account, order_id: int) -> Order:
        try:
            return account.orders[order_id]
        except KeyError:
            raise ExchangeError(f"order {order_id} is not open") from None

    # --- reads ---

    #: How ``ordersPending_request`` and ``/api/v4/orders`` list open orders. WhiteBIT does not document
    #: it (docs/protocol.md#open-order-listing); the matching engine its protocol comes from lists a user's
    #: orders newest first, so that is the default, and the form in which new orders shift every
    #: position. False lists oldest first (new orders are appended). Set it per exchange.
    list_newest_first: bool = True

    def open_orders(self, account_name: str, market: str | None = None) -> list[Order]:
        """Open orders sorted by creation (``ctime``, then id): newest first unless
        :attr:`list_newest_first` is False."""
        orders = self._account(account_name).orders.values()
        return sorted(
            (o for o in orders if market is None or o.market == market),
            key=lambda o: (o.ctime, o.id),
            reverse=self.list_newest_first,
        )

    def snapshot(self, account_name: str) -> dict[str, Any]:
        """Everything an account holds, in wire form: what tests compare the exporter's metrics with."""
        account = self._account(account_name)
        return {
            "main": {asset: fmt(amount) for asset, amount in sorted(account.main.items())},
            "spot": {asset: spot_wire(balance) for asset, balance in sorted(account.spot.items())},
            "collateral": {asset: margin_request_wire(b) for asset, b in sorted(account.collateral.items())},
            "orders": [order.to_ws() for order in self.open_orders(account_name)],
            "transfers": [t.to_history(self.history_field_style) for t in account.history()],
        }

    # --- trading ---

    def set_price(self, market: str, price: Decimal) -> None:
        self.prices[market] = price

    def _split(self, market: str) -> tuple[str, str]:
        if market not in self.markets:
            raise ExchangeError(f"market {market} does not exist")
        base, quote = market.split("_")
        return base, quote

    def place_order(
        self,
        account_name: str,
        market: str,
        side: int,
        amount: Decimal,
        *,
        order_type: int = TYPE_LIMIT,
        price: Decimal | None = None,
        activation_price: Decimal | None = None,
        client_order_id: str = "",
        rpi: bool = False,
        post_only: bool = False,
    ) -> Order:
        """Place an order. A limit order rests (event 1); a market order fills at once (a lone event 3)."""
        account = self._account(account_name)
        base, quote = self._split(market)
        if amount <= 0:
            raise ExchangeError("amount must be positive")
        if client_order_id and any(
            o.client_order_id == client_order_id and o.market == market for o in account.orders.values()
        ):
            raise ExchangeError(f"client order id {client_order_id} is already used by an open order on {market}")
        now = self.clock()
        market_price = self.prices[market]
        is_market = order_type in (TYPE_MARKET, TYPE_STOCK_MARKET, TYPE_MARGIN_MARKET)
        if not is_market and order_type not in (TYPE_STOP_MARKET, TYPE_MARGIN_STOP_MARKET) and price is None:
            raise ExchangeError("price is required")
        if order_type in STOP_TYPES and activation_price is None:
            raise ExchangeError("activation price is required")
        hold_price = price or activation_price or market_price
        hold_asset, hold = (quote, amount * hold_price) if side == SIDE_BUY else (base, amount)
        wallet = account.spot.setdefault(hold_asset, SpotBalance())
        if wallet.available < hold:
            raise ExchangeError(f"not enough {hold_asset} balance")
        order = Order(
            id=next(self._order_ids),
            market=market,
            side=side,
            type=order_type,
            amount=amount,
            price=None if is_market or order_type in (TYPE_STOP_MARKET, TYPE_MARGIN_STOP_MARKET) else price,
            left=amount,
            client_order_id=client_order_id,
            ctime=now,
            mtime=now,
            rpi=rpi,
            post_only=post_only or rpi,
            activation_price=activation_price,
        )
        if is_market:
            # Fills completely at the market price: WhiteBIT sends only event 3 for such an order.
            order.price = None
            self._settle_fill(account, order, amount, market_price, base, quote, hold_first=False)
            order.status = "FILLED"
            self._emit_spot(account, (base, quote))
            self._emit(OrderEvent(account.name, EVENT_FINISH, order.to_ws()))
            return order
        wallet.available -= hold
        wallet.freeze += hold
        order.frozen = hold
        account.orders[order.id] = order
        self._emit_spot(account, (hold_asset,))
        self._emit(OrderEvent(account.name, EVENT_NEW, order.to_ws()))
        return order

    def place_instant_fill(
        self, account_name: str, market: str, side: int, amount: Decimal, price: Decimal, client_order_id: str = ""
    ) -> Order:
        """A limit order that crosses the book and fills completely on arrival: a lone event 3."""
        account = self._account(account_name)
        base, quote = self._split(market)
        hold_asset, hold = (quote, amount * price) if side == SIDE_BUY else (base, amount)
        if account.spot.setdefault(hold_asset, SpotBalance()).available < hold:
            raise ExchangeError(f"not enough {hold_asset} balance")
        now = self.clock()
        order = Order(next(self._order_ids), market, side, TYPE_LIMIT, amount, price, amount, client_order_id, now, now)
        self._settle_fill(account, order, amount, price, base, quote, hold_first=False)
        order.status = "FILLED"
        self._emit_spot(account, (base, quote))
        self._emit(OrderEvent(account.name, EVENT_FINISH, order.to_ws()))
        return order

    def _settle_fill(
        self, account: Account, order: Order, qty: Decimal, price: Decimal, base: str, quote: str, *, hold_first: bool
    ) -> None:
        """Move balances for ``qty`` filled at ``price``; ``hold_first`` takes from the order's freeze."""
        money = qty * price
        fee = (money * FEE_RATE).quantize(Decimal("1e-8"))
        base_wallet = account.spot.setdefault(base, SpotBalance())
        quote_wallet = account.spot.setdefault(quote, SpotBalance())
        if order.side == SIDE_BUY:
            if hold_first:
                # The hold was taken at the order's price; a stop-market fills at the market price.
                held = min(order.frozen, (order.price or order.activation_price or price) * qty)
                quote_wallet.freeze -= held
                order.frozen -= held
                quote_wallet.available += held - money
            else:
                if quote_wallet.available < money:
                    raise ExchangeError(f"not enough {quote} balance")
                quote_wallet.available -= money
            quote_wallet.available -= fee
            base_wallet.available += qty
        else:
            if hold_first:
                base_wallet.freeze -= qty
                order.frozen -= qty
            else:
                if base_wallet.available < qty:
                    raise ExchangeError(f"not enough {base} balance")
                base_wallet.available -= qty
            quote_wallet.available += money - fee
        base_volume, quote_volume = self.volumes.get(order.market, (ZERO, ZERO))
        self.volumes[order.market] = (base_volume + qty, quote_volume + money)
        order.left -= qty
        order.deal_stock += qty
        order.deal_money += money
        order.deal_fee += fee
        order.mtime = self.clock()

    def fill_order(self, account_name: str, order_id: int, qty: Decimal | None = None) -> Order:
        """Fill ``qty`` (default: all that is left). Partial: event 2; complete: event 3 with FILLED."""
        account = self._account(account_name)
        order = self._order(account, order_id)
        if order.is_stop and not order.activated:
            raise ExchangeError(f"stop order {order_id} has not been activated")
        qty = order.left if qty is None else min(qty, order.left)
        if qty <= 0:
            raise ExchangeError("fill quantity must be positive")
        base, quote = self._split(order.market)
        price = order.price if order.price is not None else self.prices[order.market]
        self._settle_fill(account, order, qty, price, base, quote, hold_first=True)
        if order.left <= 0:
            order.left = ZERO
            order.status = "FILLED"
            self._release(account, order)
            del account.orders[order.id]
            self._emit_spot(account, (base, quote))
            self._emit(OrderEvent(account.name, EVENT_FINISH, order.to_ws()))
        else:
            order.status = "PARTIALLY_FILLED"
            self._emit_spot(account, (base, quote))
            self._emit(OrderEvent(account.name, EVENT_UPDATE, order.to_ws()))
        return order

    def _release(self, account: Account, order: Order) -> str:
        """Give back whatever the order still holds; returns the asset it was held in."""
        base, quote = order.market.split("_")
        asset = quote if order.side == SIDE_BUY else base
        wallet = account.spot.setdefault(asset, SpotBalance())
        wallet.freeze -= order.frozen
        wallet.available += order.frozen
        order.frozen = ZERO
        return asset

    def cancel_order(self, account_name: str, order_id: int) -> Order:
        """Cancel: event 3 with CANCELED (after a partial fill, ``deal_stock`` stays above zero)."""
        account = self._account(account_name)
        order = account.orders.pop(self._order(account, order_id).id)
        order.status = "CANCELED"
        order.mtime = self.clock()
        asset = self._release(account, order)
        self._emit_spot(account, (asset,))
        self._emit(OrderEvent(account.name, EVENT_FINISH, order.to_ws()))
        return order

    def modify_order(
        self,
        account_name: str,
        order_id: int,
        *,
        price: Decimal | None = None,
        amount: Decimal | None = None,
        new_first: bool = False,
    ) -> Order:
        """Modify = cancel and replace with a new id and the same ``client_order_id``.

        WhiteBIT sends event 3 for the old id and then event 1 for the new one; ``new_first`` sends
        them the other way round, which clients must also handle.
        """
        account = self._account(account_name)
        old = self._order(account, order_id)
        if old.type not in (TYPE_LIMIT, TYPE_STOP_LIMIT, TYPE_STOP_MARKET, TYPE_MARGIN_LIMIT, TYPE_MARGIN_STOP_LIMIT):
            raise ExchangeError("only limit and stop orders can be modified")
        base, quote = self._split(old.market)
        new_price = price if price is not None else old.price
        new_amount = amount if amount is not None else old.left
        hold_asset = quote if old.side == SIDE_BUY else base
        new_hold = (
            new_amount * (new_price or old.activation_price or self.prices[old.market])
            if old.side == SIDE_BUY
            else new_amount
        )
        wallet = account.spot.setdefault(hold_asset, SpotBalance())
        if wallet.available + old.frozen < new_hold:
            raise ExchangeError(f"not enough {hold_asset} balance")
        now = self.clock()
        del account.orders[old.id]
        old.status = "CANCELED"
        old.mtime = now
        self._release(account, old)
        replacement = Order(
            id=next(self._order_ids),
            market=old.market,
            side=old.side,
            type=old.type,
            amount=new_amount,
            price=new_price,
            left=new_amount,
            client_order_id=old.client_order_id,
            ctime=now,
            mtime=now,
            rpi=old.rpi,
            post_only=old.post_only,
            activation_price=old.activation_price,
            activated=old.activated,
        )
        wallet.available -= new_hold
        wallet.freeze += new_hold
        replacement.frozen = new_hold
        account.orders[replacement.id] = replacement
        events = [
            OrderEvent(account.name, EVENT_FINISH, old.to_ws()),
            OrderEvent(account.name, EVENT_NEW, replacement.to_ws()),
        ]
        if new_first:
            events.reverse()
        self._emit_spot(account, (hold_asset,))
        for event in events:
            self._emit(event)
        return replacement

    def activate_stop(self, account_name: str, order_id: int) -> Order:
        """A stop order triggers: a second event 1 with the same id; type and status do not change."""
        account = self._account(account_name)
        order = self._order(account, order_id)
        if not order.is_stop or order.activated:
            raise ExchangeError(f"order {order_id} is not a waiting stop order")
        order.activated = True
        order.mtime = self.clock()
        self._emit(OrderEvent(account.name, EVENT_NEW, order.to_ws()))
        return order

    # --- transfers between balances ---

    def transfer_main_to_spot(self, account_name: str, asset: str, amount: Decimal) -> None:
        """Move main-balance funds to the trade balance (``/api/v4/main-account/transfer``).

        Only the spot side has a push channel; the main balance changes silently, as on WhiteBIT.
        """
        account = self._account(account_name)
        if amount <= 0 or account.main.get(asset, ZERO) < amount:
            raise ExchangeError(f"not enough {asset} main balance")
        account.main[asset] -= amount
        account.spot.setdefault(asset, SpotBalance()).available += amount
        self._emit_spot(account, (asset,))

    # --- collateral ---

    def transfer_to_collateral(self, account_name: str, asset: str, amount: Decimal) -> None:
        """Move spot funds to the collateral balance (both update events follow)."""
        account = self._account(account_name)
        if not account.collateral_trading:
            raise ExchangeError(f"account {account_name} has no collateral trading")
        wallet = account.spot.setdefault(asset, SpotBalance())
        if wallet.available < amount:
            raise ExchangeError(f"not enough {asset} balance")
        wallet.available -= amount
        account.collateral.setdefault(asset, MarginBalance()).balance += amount
        self._emit_spot(account, (asset,))
        self._emit_margin(account, (asset,))

    def borrow(self, account_name: str, asset: str, amount: Decimal) -> None:
        """Change the borrowed amount of a collateral asset (negative repays)."""
        account = self._account(account_name)
        if not account.collateral_trading:
            raise ExchangeError(f"account {account_name} has no collateral trading")
        balance = account.collateral.setdefault(asset, MarginBalance())
        balance.borrow = max(balance.borrow + amount, ZERO)
        self._emit_margin(account, (asset,))

    def open_position(self, account_name: str, market: str, amount: Decimal) -> Position:
        """Open a collateral position at the market's current price (negative ``amount``: a short)."""
        account = self._account(account_name)
        if not account.collateral_trading:
            raise ExchangeError(f"account {account_name} has no collateral trading")
        self._split(market)
        if amount == 0:
            raise ExchangeError("a position needs a non-zero amount")
        if market in account.positions:
            raise ExchangeError(f"account {account_name} already holds a {market} position")
        position = Position(market, amount, self.prices[market])
        account.positions[market] = position
        return position

    # --- deposits and withdrawals ---

    def _new_transfer(self, account: Account, method: int, ticker: str, amount: Decimal, **kwargs: Any) -> Transfer:
        networks = NETWORKS.get(ticker)
        transfer = Transfer(
            transaction_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),
            method=method,
            ticker=ticker,
            amount=amount,
            fee=kwargs.pop("fee", ZERO),
            address=kwargs.pop("address", f"sim{self.rng.getrandbits(64):016x}"),
            network=kwargs.pop("network", self.rng.choice(networks) if networks else None),
            status=kwargs.pop("status"),
            transaction_hash=kwargs.pop("transaction_hash", f"0x{self.rng.getrandbits(256):064x}"),
            created_at=int(self.clock()),
            **kwargs,
        )
        account.transfers.append(transfer)
        return transfer

    def start_deposit(
        self,
        account_name: str,
        ticker: str,
        amount: Decimal,
        *,
        confirmations_required: int = 2,
        transaction_hash: str | None = None,
        travel_rule: bool = False,
        address: str | None = None,
        network: str | None = None,
    ) -> Transfer:
        """A deposit is seen on chain: status 15 and ``deposit.accepted``.

        With ``travel_rule`` it waits in status 27 instead, which has no webhook (docs/protocol.md#webhook-methods).
        ``network`` (one of the asset's) is drawn at random when not given.
        """
        account = self._account(account_name)
        extra: dict[str, Any] = {}
        if transaction_hash is not None:
            extra["transaction_hash"] = transaction_hash
        if address is not None:
            extra["address"] = address
        if network is not None:
            extra["network"] = network
        transfer = self._new_transfer(
            account,
            METHOD_DEPOSIT,
            ticker,
            amount,
            status=DEPOSIT_TRAVEL_RULE_FROZEN if travel_rule else DEPOSIT_PENDING,
            confirmations_actual=0,
            confirmations_required=confirmations_required,
            **extra,
        )
        if not travel_rule:
            self._webhook(account, "deposit.accepted", transfer.to_webhook_params(plain=self.plain_webhooks))
        return transfer

    def confirm_deposit(self, account_name: str, transaction_id: str) -> Transfer:
        """One more confirmation: ``deposit.updated`` (one event per change, not a completion signal)."""
        account = self._account(account_name)
        transfer = account.transfer(transaction_id)
        if transfer.status != DEPOSIT_PENDING:
            raise ExchangeError(f"deposit {transaction_id} is not pending")
        transfer.confirmations_actual = (transfer.confirmations_actual or 0) + 1
        params = transfer.to_webhook_params(plain=self.plain_webhooks)
        params.pop("method")  # the documented deposit.updated example has no `method` field
        params["description"] = "update"
        self._webhook(account, "deposit.updated", params)
        return transfer

    def advance_travel_rule(self, account_name: str, transaction_id: str) -> Transfer:
        """Travel Rule data supplied: 27 becomes 28 (no webhook)."""
        transfer = self._account(account_name).transfer(transaction_id)
        if transfer.status != DEPOSIT_TRAVEL_RULE_FROZEN:
            raise ExchangeError(f"deposit {transaction_id} is not waiting for Travel Rule data")
        transfer.status = DEPOSIT_TRAVEL_RULE_PROCESSING
        return transfer

    def credit_deposit(self, account_name: str, transaction_id: str, *, status: int = DEPOSIT_CREDITED) -> Transfer:
        """Credited to the main balance: status 3 (or 7) and ``deposit.processed``."""
        account = self._account(account_name)
        transfer = account.transfer(transaction_id)
        if transfer.method != METHOD_DEPOSIT or transfer.status in (3, 7, 4, 9):
            raise ExchangeError(f"deposit {transaction_id} is final or not a deposit")
        transfer.status = status
        if transfer.confirmations_required is not None:
            transfer.confirmations_actual = max(transfer.confirmations_actual or 0, transfer.confirmations_required)
        account.main[transfer.ticker] = account.main.get(transfer.ticker, ZERO) + transfer.amount - transfer.fee
        self._webhook(account, "deposit.processed", transfer.to_webhook_params(plain=self.plain_webhooks))
        return transfer

    def cancel_deposit(self, account_name: str, transaction_id: str, *, status: int = DEPOSIT_CANCELED) -> Transfer:
        """Canceled: status 4 (or 9) and ``deposit.canceled``; nothing is credited."""
        account = self._account(account_name)
        transfer = account.transfer(transaction_id)
        if transfer.method != METHOD_DEPOSIT or transfer.status in (3, 7, 4, 9):
            raise ExchangeError(f"deposit {transaction_id} is final or not a deposit")
        transfer.status = status
        self._webhook(account, "deposit.canceled", transfer.to_webhook_params(plain=self.plain_webhooks))
        return transfer

    def start_withdrawal(
        self,
        account_name: str,
        ticker: str,
        amount: Decimal,
        *,
        fee: Decimal = ZERO,
        unique_id: str | None = None,
        address: str | None = None,
    ) -> Transfer:
        """A withdrawal is created: the main balance is debited, status 5 and ``withdraw.unconfirmed``."""
        account = self._account(account_name)
        if account.main.get(ticker, ZERO) < amount + fee:
            raise ExchangeError(f"not enough {ticker} main balance")
        account.main[ticker] -= amount + fee
        extra: dict[str, Any] = {"address": address} if address is not None else {}
        transfer = self._new_transfer(
            account,
            METHOD_WITHDRAW,
            ticker,
            amount,
            fee=fee,
            status=WITHDRAW_UNCONFIRMED,
            unique_id=unique_id or f"payout-{self.rng.getrandbits(32):08x}",
            description=None,
            transaction_hash="",
            **extra,
        )
        self._webhook(account, "withdraw.unconfirmed", transfer.to_webhook_params(plain=self.plain_webhooks))
        return transfer

    def process_withdrawal(self, account_name: str, transaction_id: str, *, status: int = WITHDRAW_PENDING) -> Transfer:
        """The withdrawal is in progress: a pending status (1, 2, 6, 10–17) and ``withdraw.pending``."""
        account = self._account(account_name)
        transfer = account.transfer(transaction_id)
        if transfer.method != METHOD_WITHDRAW or transfer.status in (3, 7, 4, 18):
            raise ExchangeError(f"withdrawal {transaction_id} is final or not a withdrawal")
        transfer.status = status
        if not transfer.transaction_hash:
            transfer.transaction_hash = f"0x{self.rng.getrandbits(256):064x}"
        self._webhook(account, "withdraw.pending", transfer.to_webhook_params(plain=self.plain_webhooks))
        return transfer

    def complete_withdrawal(self, account_name: str, transaction_id: str) -> Transfer:
        """Done: status 3 and ``withdraw.successful``."""
        transfer = self._finish_withdrawal(account_name, transaction_id, WITHDRAW_SUCCESSFUL)
        params = transfer.to_webhook_params(plain=self.plain_webhooks)
        self._webhook(self._account(account_name), "withdraw.successful", params)
        return transfer

    def cancel_withdrawal(self, account_name: str, transaction_id: str) -> Transfer:
        """Canceled: status 4, the debit is returned, ``withdraw.canceled``."""
        account = self._account(account_name)
        transfer = self._finish_withdrawal(account_name, transaction_id, WITHDRAW_CANCELED)
        account.main[transfer.ticker] = account.main.get(transfer.ticker, ZERO) + transfer.amount + transfer.fee
        self._webhook(account, "withdraw.canceled", transfer.to_webhook_params(plain=self.plain_webhooks))
        return transfer

    def partially_complete_withdrawal(self, account_name: str, transaction_id: str, processed: Decimal) -> Transfer:
        """Fiat partial success: status 18, the unprocessed rest is returned, ``withdraw.partial_successful``."""
        account = self._account(account_name)
        transfer = self._finish_withdrawal(account_name, transaction_id, WITHDRAW_PARTIAL)
        processed = min(processed, transfer.amount)
        transfer.processed_amount = processed
        account.main[transfer.ticker] = account.main.get(transfer.ticker, ZERO) + transfer.amount - processed
        params = transfer.to_webhook_params(plain=self.plain_webhooks)
        params["details"] = {"partial": transfer._partial()}
        self._webhook(account, "withdraw.partial_successful", params)
        return transfer

    def _finish_withdrawal(self, account_name: str, transaction_id: str, status: int) -> Transfer:
        transfer = self._account(account_name).transfer(transaction_id)
        if transfer.method != METHOD_WITHDRAW or transfer.status in (3, 7, 4, 18):
            raise ExchangeError(f"withdrawal {transaction_id} is final or not a withdrawal")
        transfer.status = status
        return transfer

    # --- codes and refunds ---

    def apply_code(self, account_name: str, code: str) -> None:
        """A WhiteBIT Code owned by the account was redeemed: ``code.apply``."""
        self._webhook(self._account(account_name), "code.apply", {"code": code})

    def refund_deposit(self, account_name: str, transaction_id: str, *, succeed: bool = True) -> None:
        """A canceled deposit is refunded (``refund.successful``) or the refund fails (``refund.failed``)."""
        account = self._account(account_name)
        transfer = account.transfer(transaction_id)
        if transfer.method != METHOD_DEPOSIT or transfer.status not in (4, 9):
            raise ExchangeError(f"deposit {transaction_id} is not canceled; nothing to refund")
        now = int(self.clock())
        network_fee = (transfer.amount * Decimal("0.01")).quantize(Decimal("1e-8"))
        params: dict[str, Any] = {
            "transactionId": transfer.transaction_id,
            "status": "completed" if succeed else "failed",
            "refundAddress": transfer.address,
            "depositAmount": fmt18(transfer.amount),
            "currency": transfer.currency,
            "ticker": transfer.ticker,
            "network": transfer.network,
            "createdAt": transfer.created_at,
            "processedAt": now,
        }
        if succeed:
            params["refundNetworkFee"] = fmt18(network_fee)
            params["refundAmount"] = fmt18(transfer.amount - network_fee)
            params["refundHash"] = f"0x{self.rng.getrandbits(256):064x}"
        self._webhook(account, "refund.successful" if succeed else "refund.failed", params)
