"""The simulator's REST API: WhiteBIT's private v4 endpoints and the public ones clients load first.

Every private endpoint is a POST whose signed JSON body is checked by
:class:`~exporter.simulator.auth.RequestAuthenticator`. Each request goes through, in order:

1. the rate limit of its endpoint family for the client IP (WhiteBIT limits per IP, before any
   authentication work), answering 429 ``{"code":0,"message":"Too many requests.","errors":{}}``;
2. maintenance mode (:meth:`RestApi.set_unavailable`), answering 503 on private endpoints;
3. authentication;
4. the endpoint's own parameter validation and its answer.

Shapes follow docs/protocol.md#whitebit-rest-api: amounts are decimal strings except the collateral
balance values, which are JSON numbers; balance endpoints return a flat object when ``ticker`` is
given; history is newest first with ``limit``/``offset``/``total``; open orders are a flat array.
Where the sources disagree the simulator takes the stricter documented rule (history ``limit`` <= 100
unless ``history_max_limit`` raises it to the current docs' 500; orders ``offset`` <= 10000;
docs/protocol.md#deposit-and-withdrawal-history, #rest-open-orders) so that a client that passes here
passes on WhiteBIT.

Validation errors use WhiteBIT's envelope ``{"code", "message", "errors": {field: [text]}}``; main
account endpoints answer 400 with code 0 (the history page documents HTTP 400 for them), trade
endpoints 422 with codes 30/31 as their pages show.

The public ticker (``GET /api/v4/public/ticker``, docs/protocol.md#public-ticker) answers every traded
market at the price the scenario walks, plus the :class:`ListedMarket` entries (an inverse market, one
never traded with ``last_price`` ``"0"``, a frozen one), with ids as integers and amounts as strings,
alternately with and without ``change`` (the current and the previous docs' forms). Its 429 and its
503 (maintenance) are the gateway's non-JSON pages; :meth:`RestApi.fail_ticker` makes it answer the
API's 500 ``{"error": [...]}``.

The aiohttp ``Application`` is assembled elsewhere (``exporter.simulator.server``); this module only
adds routes to it with :meth:`RestApi.register`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeGuard

from aiohttp import web

from exporter.simulator.auth import AuthFailure, RequestAuthenticator, parse_body, too_many_requests
from exporter.simulator.listing import AssetListing
from exporter.simulator.model import (
    CURRENCY_NAMES,
    NETWORKS,
    ZERO,
    Account,
    Exchange,
    MarginBalance,
    SpotBalance,
    Transfer,
    fmt,
    spot_wire,
)
from exporter.simulator.ratelimit import RateLimits
from exporter.simulator.tokens import TokenIssuer

API = "/api/v4"

# ccxt's recorded maintenance body ("legacy 503"); the newer envelope has never been observed for 503.
UNAVAILABLE_BODY: dict[str, Any] = {
    "response": None,
    "status": 503,
    "errors": {"message": [""]},
    "notification": None,
    "warning": None,
    "_token": None,
}

# History status codes valid for each transactionMethod (docs/protocol.md#transfer-status-codes).
DEPOSIT_STATUSES = frozenset({3, 4, 5, 7, 9, 15, 21, 22, 27, 28})
WITHDRAW_STATUSES = frozenset({1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 21})

HISTORY_MAX_OFFSET = 10_000
#: History parameters the previous docs list as required.
HISTORY_REQUIRED = ("transactionMethod", "limit", "offset")
_HISTORY_STRING_FILTERS = (
    ("address", "address"),
    ("memo", "memo"),
    ("uniqueId", "unique id"),
    ("unique_id", "unique id"),
)
HISTORY_MAX_ADDRESSES = 20
# Current docs allow offsets up to 4294967295, previous docs 10000 (docs/protocol.md#rest-open-orders):
# the stricter one.
ORDERS_MAX_OFFSET = 10_000
ORDERS_MAX_LIMIT = 100

# WhiteBIT's public asset ids and precisions for the assets the simulator knows; others get defaults.
_UNIFIED_IDS = {"BTC": "1", "ETH": "1027", "USDT": "825", "USDC": "3408", "TRX": "1958", "SOL": "5426", "XRP": "52"}
_CURRENCY_PRECISION = {"BTC": 8, "ETH": 18, "USDT": 6, "USDC": 6, "TRX": 6, "SOL": 9, "XRP": 6}
_STOCK_PRECISION = {"BTC": 6, "ETH": 4, "SOL": 2, "TRX": 1, "XRP": 1}
_MIN_DEPOSIT_WITHDRAW = {"BTC": ("0.0001", "0.0003"), "ETH": ("0.001", "0.005")}

# Collateral valuation: assets are valued in this quote currency through the `<ASSET>_USDT` price.
_VALUATION_QUOTE = "USDT"
_LEVERAGE = 10  # matches MarginBalance.available_with_borrow (10x collateral)
# marginFraction "1000000000000000000000" means no open positions (previous docs; docs/protocol.md#collateral-balance).
_NO_POSITIONS_MARGIN_FRACTION = "1000000000000000000000"
# Places of a margin fraction, as in the previous docs' example ("6.2446758120916304").
_MARGIN_FRACTION_PLACES = Decimal("1e-16")

_MISSING: Any = object()

TICKER = API + "/public/ticker"
# What the gateway in front of the public API answers when it throttles or during maintenance: not JSON
# (docs/protocol.md#public-ticker). The bodies are the simulator's own.
GATEWAY_429 = "<html><head><title>429 Too Many Requests</title></head><body>429 Too Many Requests</body></html>"
GATEWAY_503 = (
    "<html><head><title>503 Service Temporarily Unavailable</title></head>"
    "<body>503 Service Temporarily Unavailable</body></html>"
)
#: The public API's own 500 body.
INTERNAL_ERROR_BODY: dict[str, Any] = {"error": ["Internal server error."]}


@dataclass(frozen=True)
class ListedMarket:
    """A market the public ticker lists although the simulator does not trade on it.

    ``last_price`` ``"0"`` is a market listed but never traded; ``frozen`` one whose trading is
    disabled (``isFrozen``), which the market list (markets enabled for trading only) leaves out.
    """

    name: str
    last_price: str
    frozen: bool = False


PrivateHandler = Callable[[Account, dict[str, Any]], tuple[int, Any]]
PublicHandler = Callable[[web.Request], tuple[int, Any]]


def _dumps(document: Any) -> str:
    return json.dumps(document, separators=(",", ":"))


def _json_number(amount: Decimal) -> int | float:
    """A JSON number for a collateral balance: an integer when whole (the docs show ``1000``)."""
    if amount == amount.to_integral_value():
        return int(amount)
    return float(amount)


def _ticker_entry(
    market: str,
    price: Decimal,
    base_volume: Decimal,
    quote_volume: Decimal,
    change: Decimal,
    frozen: bool,
    with_change: bool,
) -> dict[str, Any]:
    """One market of ``/public/ticker``: ids as integers (0: unknown), amounts as decimal strings."""
    base, quote = market.split("_")
    entry: dict[str, Any] = {
        "base_id": int(_UNIFIED_IDS.get(base, "0")),
        "quote_id": int(_UNIFIED_IDS.get(quote, "0")),
        "last_price": fmt(price),
        "quote_volume": fmt(quote_volume),
        "base_volume": fmt(base_volume),
        "isFrozen": frozen,
    }
    if with_change:
        entry["change"] = fmt(change.quantize(Decimal("0.01")))
    return entry


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class _Invalid(Exception):
    """A validation failure carrying its complete HTTP answer."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(body.get("message"))
        self.status = status
        self.body = body


class _Errors:
    """Field errors collected Laravel-style, so one answer lists every invalid field."""

    def __init__(self) -> None:
        self.fields: dict[str, list[str]] = {}

    def add(self, name: str, message: str) -> None:
        self.fields.setdefault(name, []).append(message)

    def __contains__(self, name: str) -> bool:
        return name in self.fields

    def raise_if_any(self, status: int, code: int) -> None:
        if self.fields:
            raise _Invalid(status, {"code": code, "message": "Validation failed", "errors": self.fields})


def _validation(status: int, code: int, name: str, message: str) -> _Invalid:
    return _Invalid(status, {"code": code, "message": "Validation failed", "errors": {name: [message]}})


def _read_int(params: dict[str, Any], name: str, errors: _Errors, *, default: int, minimum: int, maximum: int) -> int:
    """An integer parameter (JSON integers only) within bounds, with Laravel's messages."""
    value = params.get(name, _MISSING)
    if value is _MISSING:
        return default
    if not _is_int(value):
        errors.add(name, f"The {name} must be an integer.")
        return default
    if value < minimum:
        errors.add(name, f"The {name} must be at least {minimum}.")
    elif value > maximum:
        errors.add(name, f"The {name} may not be greater than {maximum}.")
    return value


class RestApi:
    """WhiteBIT's REST endpoints over one :class:`Exchange`, with auth, rate limits and maintenance."""

    def __init__(
        self,
        exchange: Exchange,
        tokens: TokenIssuer,
        *,
        authenticator: RequestAuthenticator | None = None,
        limiter: RateLimits | None = None,
        clock: Callable[[], float] = time.time,
        history_max_limit: int = 100,
        history_success_status: int = 200,
        listing: AssetListing | None = None,
        history_paging_required: bool = True,
        ticker_markets: Sequence[ListedMarket] = (),
    ) -> None:
        # History limit maximum: 100 (previous docs) or 500 (current docs),
        # docs/protocol.md#deposit-and-withdrawal-history.
        if not 1 <= history_max_limit <= 500:
            raise ValueError("history_max_limit must be 1..500 (old docs 100, new docs 500)")
        if history_success_status not in (200, 201):
            raise ValueError("history_success_status must be 200 or 201")
        self.exchange = exchange
        self.tokens = tokens
        self.clock = clock
        self.authenticator = authenticator or RequestAuthenticator(exchange.account_by_key, clock=clock)
        self.limiter = limiter or RateLimits(clock=clock)
        self.history_max_limit = history_max_limit
        # The docs say 201 for history (apparently copied from the withdraw page,
        # docs/protocol.md#deposit-and-withdrawal-history);
        # clients must accept any 2xx, and 200 is what every other endpoint answers.
        self.history_success_status = history_success_status
        # Which assets exist and whether a balance answer lists the zero ones (shared with the WebSocket).
        self.listing = listing or AssetListing(exchange)
        # The previous docs list transactionMethod, limit and offset as required; the current ones give
        # them defaults (docs/protocol.md#deposit-and-withdrawal-history). The stricter rule by default.
        self.history_paging_required = history_paging_required
        # Tests of a client's fallback: refuse the documented `status` filter as if unsupported.
        self.history_refuses_status_filter = False
        self._unavailable = False
        self._stats: dict[str, dict[str, Any]] = {}
        # Markets the ticker lists besides the traded ones; answers alternate between the ticker's
        # current form (with `change`) and the previous docs' one (without), starting with the current.
        self.ticker_markets: tuple[ListedMarket, ...] = tuple(ticker_markets)
        self._ticker_answers = 0
        self._ticker_failures = 0

    # --- control ---

    @property
    def unavailable(self) -> bool:
        return self._unavailable

    def set_unavailable(self, unavailable: bool) -> None:
        """Maintenance mode: private endpoints answer 503 and platform/status says so."""
        self._unavailable = unavailable

    def force_rate_limit(self, family_or_path: str, count: int) -> None:
        """The next ``count`` requests of this endpoint family answer 429 (WhiteBIT throttling)."""
        self.limiter.force(family_or_path, count)

    def fail_ticker(self, count: int) -> None:
        """The next ``count`` ticker requests answer 500 ``{"error": ["Internal server error."]}``."""
        if count < 0:
            raise ValueError("count must be >= 0")
        self._ticker_failures = count

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint: requests served, the last status, and counts by status (JSON-ready)."""
        return {
            endpoint: {
                "requests": entry["requests"],
                "last_status": entry["last_status"],
                "statuses": {str(status): n for status, n in sorted(entry["statuses"].items())},
            }
            for endpoint, entry in sorted(self._stats.items())
        }

    def _record(self, endpoint: str, status: int) -> None:
        entry = self._stats.setdefault(endpoint, {"requests": 0, "last_status": None, "statuses": {}})
        entry["requests"] += 1
        entry["last_status"] = status
        entry["statuses"][status] = entry["statuses"].get(status, 0) + 1

    # --- routing ---

    def register(self, app: web.Application) -> None:
        """Add every REST route to ``app`` (catch-alls last, so they only take unknown paths)."""
        private: dict[str, PrivateHandler] = {
            "/profile/websocket_token": self._websocket_token,
            "/main-account/balance": self._main_balance,
            "/main-account/history": self._history,
            "/trade-account/balance": self._trade_balance,
            "/collateral-account/balance": self._collateral_balance,
            "/collateral-account/balance-summary": self._collateral_balance_summary,
            "/collateral-account/summary": self._collateral_summary,
            "/orders": self._orders,
        }
        public: dict[str, PublicHandler] = {
            "/public/markets": self._markets,
            "/public/assets": self._assets_endpoint,
            "/public/time": self._time,
            "/public/ping": self._ping,
            "/public/platform/status": self._platform_status,
        }
        routes = [web.post(API + path, self._private_route(API + path, handler)) for path, handler in private.items()]
        routes += [web.get(API + path, self._public_route(API + path, handler)) for path, handler in public.items()]
        routes.append(web.get(TICKER, self._ticker_route))
        routes += [
            web.get(API + "/public/{tail:.*}", self._public_route("<unknown public>", self._public_not_found)),
            web.post(API + "/{tail:.*}", self._public_route("<unknown private>", self._private_not_found)),
        ]
        app.add_routes(routes)

    def _respond(self, endpoint: str, status: int, body: Any) -> web.Response:
        self._record(endpoint, status)
        return web.json_response(body, status=status, dumps=_dumps)

    def _respond_gateway(self, endpoint: str, status: int, text: str) -> web.Response:
        self._record(endpoint, status)
        return web.Response(text=text, status=status, content_type="text/html")

    def _admit(self, request: web.Request) -> bool:
        return self.limiter.check(request.remote or "unknown", request.path)

    def _public_route(self, endpoint: str, handler: PublicHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if not self._admit(request):
                failure = too_many_requests()
                return self._respond(endpoint, failure.status, failure.body)
            status, body = handler(request)
            return self._respond(endpoint, status, body)

        return handle

    def _private_route(
        self, endpoint: str, handler: PrivateHandler
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            if not self._admit(request):
                failure = too_many_requests()
                return self._respond(endpoint, failure.status, failure.body)
            if self._unavailable:
                return self._respond(endpoint, 503, UNAVAILABLE_BODY)
            body = await request.read()
            result = self.authenticator.authenticate(request.path, request.headers, body)
            if isinstance(result, AuthFailure):
                return self._respond(endpoint, result.status, result.body)
            params = parse_body(body)
            if params is None:  # authenticate() has already checked it is an object
                raise RuntimeError("authenticated body is not a JSON object")
            try:
                status, payload = handler(result, params)
            except _Invalid as invalid:
                return self._respond(endpoint, invalid.status, invalid.body)
            return self._respond(endpoint, status, payload)

        return handle

    # --- static market and asset data ---

    def assets(self) -> list[str]:
        """Every ticker the simulated exchange lists."""
        return self.listing.assets()

    def _price_in_quote(self, asset: str) -> Decimal:
        if asset == _VALUATION_QUOTE:
            return Decimal(1)
        return self.exchange.prices.get(f"{asset}_{_VALUATION_QUOTE}", ZERO)

    # --- private endpoints ---

    def _websocket_token(self, account: Account, params: dict[str, Any]) -> tuple[int, Any]:
        return 200, {"websocket_token": self.tokens.issue(account.name)}

    def _main_balance(self, account: Account, params: dict[str, Any]) -> tuple[int, Any]:
        ticker = params.get("ticker", _MISSING)
        if ticker is _MISSING:
            if self.listing.lists_zeros():
                return 200, {t: {"main_balance": fmt(account.main.get(t, ZERO))} for t in self.assets()}
            return 200, {t: {"main_balance": fmt(v)} for t, v in sorted(account.main.items()) if v != ZERO}
        if not isinstance(ticker, str) or not ticker:
            raise _validation(400, 0, "ticker", "The ticker must be a string.")
        # Current docs: an unknown ticker is a zero balance, not an error (the previous docs answered a
        # validation error, the laxer behaviour for a client, which must handle "0" either way;
        # docs/protocol.md#main-balance).
        return 200, {"main_balance": fmt(account.main.get(ticker, ZERO))}

    def _trade_balance(self, account: Account, params: dict[str, Any]) -> tuple[int, Any]:
        ticker = params.get("ticker", _MISSING)
        if ticker is _MISSING:
            # The current docs return only non-zero currencies, the previous ones all of them
            # (docs/protocol.md#trade-balance).
            if self.listing.lists_zeros():
                return 200, {t: spot_wire(account.spot.get(t, SpotBalance())) for t in self.assets()}
            return 200, {
                t: spot_wire(b) for t, b in sorted(account.spot.items()) if b.available != ZERO or b.freeze != ZERO
            }
        if not isinstance(ticker, str) or not ticker:
            raise _validation(422, 30, "ticker", "Ticker field should be a string.")
        if ticker not in self.assets():
            raise _validation(422, 30, "ticker", "Currency was not found.")
        return 200, spot_wire(account.spot.get(ticker, SpotBalance()))

    def _collateral_ticker(self, params: dict[str, Any]) -> str | None:
        ticker = params.get("ticker", _MISSING)
        if ticker is _MISSING:
            return None
        if not isinstance(ticker, str) or ticker not in self.assets():
            raise _validation(422, 30, "ticker", "ticker is invalid.")
        return ticker

    def _collateral_items(self, account: Account, ticker: str | None) -> list[tuple[str, MarginBalance]]:
        if ticker is not None:
            return [(ticker, account.collateral.get(ticker, MarginBalance()))]
        return [(t, b) for t, b in sorted(account.collateral.items()) if b.balance != ZERO or b.borrow != ZERO]

    def _collateral_balance(self, account: Account, params: dict[str, Any]) -> tuple[int, Any]:
        ticker = self._collateral_ticker(params)
        # JSON numbers, as the docs and OpenAPI show (docs/protocol.md#collateral-balance).
        return 200, {t: _json_number(b.balance) for t, b in self._collateral_items(account, ticker)}

    def _collateral_balance_summary(self, account: Account, params: dict[str, Any]) -> tuple[int, Any]:
        ticker = self._collateral_ticker(params)
        return 200, [
            {
                "asset": t,
                "balance": fmt(b.balance),
                "borrow": fmt(b.borrow),
                "availableWithoutBorrow": fmt(b.available_without_borrow),
                "availableWithBorrow": fmt(b.available_with_borrow),
            }
            for t, b in self._collateral_items(account, ticker)
        ]

    def _collateral_summary(self, account: Account, params: dict[str, Any]) -> tuple[int, Any]:
        # Everything in USDT. Equity is the net collateral value plus the open positions' unrealized
        # PnL at the current prices; borrowing and positions tie up 1/leverage of their value as
        # margin; no funding is charged. marginFraction is equity over the value of the open positions,
        # so it falls as a position loses, towards the 3% at which WhiteBIT liquidates
        # (docs/protocol.md#collateral-balance), or the no-positions value when there is none.
        equity = ZERO
        borrowed = ZERO
        for asset, balance in account.collateral.items():
            price = self._price_in_quote(asset)
            equity += (balance.balance - balance.borrow) * price
            borrowed += balance.borrow * price
        exposure = ZERO
        pnl = ZERO
        for position in account.positions.values():
            in_quote = self._price_in_quote(position.market.split("_")[1])
            price = self.exchange.prices[position.market]
            exposure += abs(position.amount) * price * in_quote
            pnl += position.amount * (price - position.base_price) * in_quote
        equity += pnl
        margin = (borrowed + exposure) / _LEVERAGE
        fraction = (
            fmt((equity / exposure).quantize(_MARGIN_FRACTION_PLACES)) if exposure else _NO_POSITIONS_MARGIN_FRACTION
        )
        return 200, {
            "equity": fmt(equity),
            "margin": fmt(margin),
            "freeMargin": fmt(equity - margin),
            "unrealizedFunding": "0",
            "pnl": fmt(pnl),
            "marginFraction": fraction,
            "leverage": _LEVERAGE,
        }

    def _history(self, account: Account, params: dict[str, Any]) -> tuple[int, Any]:
        errors = _Errors()
        if self.history_paging_required:
            for name in HISTORY_REQUIRED:
                if name not in params:
                    errors.add(name, f"The {name} field is required.")
        method = self._history_method(params, errors)
        ticker = params.get("ticker", _MISSING)
        if ticker is not _MISSING:
            if not isinstance(ticker, str):
                errors.add("ticker", "The ticker must be a string.")
            elif ticker not in self.assets():
                errors.add("ticker", "The selected ticker is invalid.")
        strings: dict[str, str] = {}
        # Both spellings of the unique-id filter are honoured (docs/protocol.md#deposit-and-withdrawal-history);
        # given both, both apply.
        for name, label in _HISTORY_STRING_FILTERS:
            value = params.get(name, _MISSING)
            if value is _MISSING:
                continue
            if isinstance(value, str):
                strings[name] = value
            else:
                errors.add(name, f"The {label} must be a string.")
        addresses = self._history_addresses(params, errors)
        statuses = self._history_statuses(params, method, errors)
        limit = _read_int(params, "limit", errors, default=50, minimum=1, maximum=self.history_max_limit)
        offset = _read_int(params, "offset", errors, default=0, minimum=0, maximum=HISTORY_MAX_OFFSET)
        # "offset + limit <= 10000" in the table, "less than 10000" in the error text: the stricter one.
        if "limit" not in errors and "offset" not in errors and offset + limit >= HISTORY_MAX_OFFSET:
            errors.add("offset", "Offset is too big. Please use offset + limit less than 10000.")
        errors.raise_if_any(400, 0)

        def keep(t: Transfer) -> bool:
            return (
                (method is None or t.method == method)
                and (ticker is _MISSING or t.ticker == ticker)
                and ("address" not in strings or t.address == strings["address"])
                and (addresses is None or t.address in addresses)
                and ("memo" not in strings or t.memo == strings["memo"])
                and ("uniqueId" not in strings or t.unique_id == strings["uniqueId"])
                and ("unique_id" not in strings or t.unique_id == strings["unique_id"])
                and (statuses is None or t.status in statuses)
            )

        # Newest first; among equal timestamps the later-created record first.
        newest_first = sorted(account.transfers, key=lambda t: t.created_at)[::-1]
        matched = [t for t in newest_first if keep(t)]
        style = self.exchange.history_field_style
        return self.history_success_status, {
            "limit": limit,
            "offset": offset,
            "total": len(matched),
            "records": [t.to_history(style) for t in matched[offset : offset + limit]],
        }

    @staticmethod
    def _history_method(params: dict[str, Any], errors: _Errors) -> int | None:
        value = params.get("transactionMethod", _MISSING)
        if value is _MISSING:
            return None
        # The OpenAPI types it as an integer; a previous-docs example sends "1", so both are accepted
        # (docs/protocol.md#deposit-and-withdrawal-history).
        if _is_int(value) and value in (1, 2):
            return int(value)
        if isinstance(value, str) and value in ("1", "2"):
            return int(value)
        errors.add("transactionMethod", "The selected transaction method is invalid.")
        return None

    @staticmethod
    def _history_addresses(params: dict[str, Any], errors: _Errors) -> frozenset[str] | None:
        value = params.get("addresses", _MISSING)
        if value is _MISSING:
            return None
        if not isinstance(value, list):
            errors.add("addresses", "The addresses must be an array.")
            return None
        if len(value) > HISTORY_MAX_ADDRESSES:
            errors.add("addresses", f"The addresses may not have more than {HISTORY_MAX_ADDRESSES} items.")
        if not all(isinstance(item, str) for item in value):
            errors.add("addresses", "Each of the addresses must be a string.")
        return frozenset(item for item in value if isinstance(item, str))

    def _history_statuses(self, params: dict[str, Any], method: int | None, errors: _Errors) -> frozenset[int] | None:
        value = params.get("status", _MISSING)
        if value is _MISSING:
            return None
        if self.history_refuses_status_filter:
            errors.add("status", "The selected status is invalid.")
            return None
        if not isinstance(value, list):
            errors.add("status", "The status must be an array.")
            return None
        # Codes mean different things per method; without a method any code of either is accepted.
        valid = {1: DEPOSIT_STATUSES, 2: WITHDRAW_STATUSES}.get(method or 0, DEPOSIT_STATUSES | WITHDRAW_STATUSES)
        if not all(_is_int(item) and item in valid for item in value):
            errors.add("status", "The selected status is invalid.")
        return frozenset(item for item in value if _is_int(item))

    def _orders(self, account: Account, params: dict[str, Any]) -> tuple[int, Any]:
        errors = _Errors()
        market = params.get("market", _MISSING)
        if market is not _MISSING:
            if not isinstance(market, str):
                errors.add("market", "The market must be a string.")
            elif market not in self.exchange.markets:
                raise _validation(422, 31, "market", "Market is not available")
        order_id = params.get("orderId", _MISSING)
        if order_id is not _MISSING and not _is_int(order_id):
            errors.add("orderId", "The order id must be an integer.")
        client_order_id = params.get("clientOrderId", _MISSING)
        if client_order_id is not _MISSING and not isinstance(client_order_id, str):
            errors.add("clientOrderId", "The client order id must be a string.")
        if market is _MISSING and (order_id is not _MISSING or client_order_id is not _MISSING):
            # Searching across all markets only works when neither is given (docs/protocol.md#rest-open-orders);
            # the message is the previous docs' wording for a missing market.
            errors.add("market", "The market field is required.")
        limit = _read_int(params, "limit", errors, default=50, minimum=1, maximum=ORDERS_MAX_LIMIT)
        offset = _read_int(params, "offset", errors, default=0, minimum=0, maximum=ORDERS_MAX_OFFSET)
        errors.raise_if_any(422, 30)
        # Listed as ordersPending_request lists them: newest first unless the exchange says otherwise
        # (the order is undocumented, docs/protocol.md#open-order-listing).
        orders = self.exchange.open_orders(account.name, None if market is _MISSING else market)
        if order_id is not _MISSING:
            orders = [o for o in orders if o.id == order_id]
        if client_order_id is not _MISSING:
            orders = [o for o in orders if o.client_order_id == client_order_id]
        return 200, [o.to_rest() for o in orders[offset : offset + limit]]

    # --- public endpoints ---

    def _markets(self, request: web.Request) -> tuple[int, Any]:
        # Only markets enabled for trading: a frozen one is left out.
        traded = [self._market_info(market, self.exchange.prices[market]) for market in self.exchange.markets]
        listed = [self._market_info(m.name, Decimal(m.last_price)) for m in self.ticker_markets if not m.frozen]
        return 200, traded + listed

    def _market_info(self, market: str, price: Decimal) -> dict[str, Any]:
        stock, money = market.split("_")
        stock_prec = _STOCK_PRECISION.get(stock, 4)
        money_prec = 2 if price >= 1 else 6
        return {
            "name": market,
            "stock": stock,
            "money": money,
            "stockPrec": str(stock_prec),
            "moneyPrec": str(money_prec),
            "feePrec": "4",
            "makerFee": "0.1",  # percent, i.e. the model's 0.001 fee rate
            "takerFee": "0.1",
            "minAmount": fmt(Decimal(1).scaleb(-stock_prec)),
            "minTotal": "5",
            "maxTotal": "1000000000",
            "tradesEnabled": True,
            "isCollateral": True,
            "type": "spot",
        }

    def _assets_endpoint(self, request: web.Request) -> tuple[int, Any]:
        return 200, {ticker: self._asset_info(ticker) for ticker in self.assets()}

    @staticmethod
    def _asset_info(ticker: str) -> dict[str, Any]:
        networks = NETWORKS.get(ticker, [ticker])
        min_deposit, min_withdraw = _MIN_DEPOSIT_WITHDRAW.get(ticker, ("1", "2"))
        return {
            "name": CURRENCY_NAMES.get(ticker, ticker),
            "unified_cryptoasset_id": _UNIFIED_IDS.get(ticker, "0"),
            "can_withdraw": True,
            "can_deposit": True,
            "min_withdraw": min_withdraw,
            "max_withdraw": "0",
            "maker_fee": "0.1",
            "taker_fee": "0.1",
            "min_deposit": min_deposit,
            "max_deposit": "0",
            "networks": {"deposits": list(networks), "withdraws": list(networks), "default": networks[0]},
            "confirmations": dict.fromkeys(networks, "2"),
            "limits": {
                "deposit": {network: {"min": min_deposit} for network in networks},
                "withdraw": {network: {"min": min_withdraw} for network in networks},
            },
            "currency_precision": str(_CURRENCY_PRECISION.get(ticker, 8)),
            "is_memo": False,
        }

    async def _ticker_route(self, request: web.Request) -> web.Response:
        """``GET /api/v4/public/ticker``: the gateway's non-JSON 429 and 503, the API's own 500, or the ticker."""
        if not self._admit(request):
            return self._respond_gateway(TICKER, 429, GATEWAY_429)
        if self._unavailable:
            return self._respond_gateway(TICKER, 503, GATEWAY_503)
        if self._ticker_failures:
            self._ticker_failures -= 1
            return self._respond(TICKER, 500, INTERNAL_ERROR_BODY)
        return self._respond(TICKER, 200, self.ticker())

    def ticker(self) -> dict[str, Any]:
        """One ticker answer: every traded market at its current price, then the listed-only ones."""
        with_change = self._ticker_answers % 2 == 0
        self._ticker_answers += 1
        answer: dict[str, Any] = {}
        for market in self.exchange.markets:
            price = self.exchange.prices[market]
            opening = self.exchange.opening_prices.get(market, price)
            base_volume, quote_volume = self.exchange.volumes.get(market, (ZERO, ZERO))
            change = (price - opening) / opening * 100 if opening else ZERO
            answer[market] = _ticker_entry(market, price, base_volume, quote_volume, change, False, with_change)
        for listed in self.ticker_markets:
            price = Decimal(listed.last_price)
            answer[listed.name] = _ticker_entry(listed.name, price, ZERO, ZERO, ZERO, listed.frozen, with_change)
        return answer

    def _time(self, request: web.Request) -> tuple[int, Any]:
        return 200, {"time": int(self.clock())}

    def _ping(self, request: web.Request) -> tuple[int, Any]:
        return 200, ["pong"]

    def _platform_status(self, request: web.Request) -> tuple[int, Any]:
        return 200, {"status": "system maintenance" if self._unavailable else "system operational"}

    def _public_not_found(self, request: web.Request) -> tuple[int, Any]:
        # The public v4 error envelope (docs/protocol.md#rest-errors).
        return 404, {"success": False, "message": "Not found", "params": []}

    def _private_not_found(self, request: web.Request) -> tuple[int, Any]:
        # Routing happens before authentication: an unknown path is a 404 whatever its signature.
        return 404, {"code": 0, "message": "Not found.", "errors": {}}
