"""The simulator's REST API answers like WhiteBIT: shapes, filters, paging, auth failures, rate limits.

Every request goes through a real aiohttp server on a loopback port and is signed with
``exporter.whitebit.signing``; the clock is injected, so nonce windows and rate-limit windows are
moved by the test instead of waited for.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal as D
from typing import Any

import pytest
from aiohttp import web

from exporter.simulator.listing import LISTED_ASSETS
from exporter.simulator.model import SIDE_BUY, SIDE_SELL, Exchange
from exporter.simulator.rest import RestApi
from exporter.simulator.tokens import TokenIssuer
from exporter.whitebit.signing import (
    HEADER_APIKEY,
    HEADER_PAYLOAD,
    HEADER_SIGNATURE,
    compact_json,
    encode_payload,
    sign_payload,
    sign_request,
)

KEY, SECRET = "sim-key", "sim-secret"
OTHER_KEY, OTHER_SECRET = "other-key", "other-secret"
START = 1_700_000_000.0

TOO_MANY = {"code": 0, "message": "Too many requests.", "errors": {}}
UNAUTHORIZED = {"code": 10, "message": "Unauthorized request."}
INVALID_PAYLOAD = {"code": 9, "message": "Invalid payload."}


class FakeClock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sim:
    """A RestApi behind a test server, with helpers that sign like a WhiteBIT client."""

    def __init__(self, api: RestApi, client: Any, exchange: Exchange, clock: FakeClock, tokens: TokenIssuer) -> None:
        self.api = api
        self.client = client
        self.exchange = exchange
        self.clock = clock
        self.tokens = tokens
        self._last_nonce = 0

    def nonce(self) -> int:
        self._last_nonce = max(int(self.clock() * 1000), self._last_nonce + 1)
        return self._last_nonce

    async def call(
        self,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        key: str = KEY,
        secret: str = SECRET,
        nonce: int | str | None = None,
        window: bool = True,
    ) -> tuple[int, Any]:
        signed = sign_request(
            path,
            params or {},
            api_key=key,
            api_secret=secret,
            nonce=self.nonce() if nonce is None else nonce,  # type: ignore[arg-type]
            nonce_window=window,
        )
        return await self.post(path, signed.body, signed.headers)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
        response = await self.client.post(path, data=body, headers=headers)
        return response.status, await response.json()

    async def raw(self, path: str, document: Any, *, key: str = KEY, secret: str = SECRET) -> tuple[int, Any]:
        """POST a hand-built body, correctly signed (for bodies sign_request would not build)."""
        body = compact_json(document) if isinstance(document, dict) else json.dumps(document).encode()
        return await self.post(path, body, signed_headers(body, key=key, secret=secret))

    async def get(self, path: str) -> tuple[int, Any]:
        response = await self.client.get(path)
        return response.status, await response.json()


def signed_headers(body: bytes, *, key: str = KEY, secret: str = SECRET) -> dict[str, str]:
    payload = encode_payload(body)
    return {
        "Content-Type": "application/json",
        HEADER_APIKEY: key,
        HEADER_PAYLOAD: payload,
        HEADER_SIGNATURE: sign_payload(payload, secret),
    }


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def exchange(clock: FakeClock) -> Exchange:
    x = Exchange(["BTC_USDT", "ETH_USDT"], clock=clock, rng=random.Random(7))
    x.add_account(
        "main",
        api_key=KEY,
        api_secret=SECRET,
        main={"USDT": "1000", "BTC": "0.5", "ETH": "0"},
        spot={"USDT": "100000", "BTC": "2", "ETH": "0"},
        collateral={"USDT": "500", "BTC": "0.25"},
    )
    x.add_account("other", api_key=OTHER_KEY, api_secret=OTHER_SECRET, main={"USDT": "1"})
    return x


async def make_sim(aiohttp_client: Any, exchange: Exchange, clock: FakeClock, **kwargs: Any) -> Sim:
    tokens = TokenIssuer(clock=clock)
    api = RestApi(exchange, tokens, clock=clock, **kwargs)
    app = web.Application()
    api.register(app)
    return Sim(api, await aiohttp_client(app), exchange, clock, tokens)


@pytest.fixture
async def sim(aiohttp_client: Any, exchange: Exchange, clock: FakeClock) -> Sim:
    # The tests of everything but the history parameters' presence leave them out where they like;
    # test_history_requires_... below covers the default, which requires them.
    return await make_sim(aiohttp_client, exchange, clock, history_paging_required=False)


# --- websocket token and balances -------------------------------------------------------------


async def test_websocket_token_is_issued_for_the_signing_account(sim):
    status, body = await sim.call("/api/v4/profile/websocket_token")
    assert status == 200
    assert set(body) == {"websocket_token"}
    assert sim.tokens.redeem(body["websocket_token"]) == "main"
    status, body = await sim.call("/api/v4/profile/websocket_token", key=OTHER_KEY, secret=OTHER_SECRET)
    assert sim.tokens.redeem(body["websocket_token"]) == "other"


async def test_main_balance_without_zeros_lists_non_zero_assets_keyed_by_ticker(sim):
    sim.api.listing.zero_balances = "omitted"
    status, body = await sim.call("/api/v4/main-account/balance")
    assert status == 200
    assert body == {"BTC": {"main_balance": "0.5"}, "USDT": {"main_balance": "1000"}}


async def test_main_balance_with_zeros_lists_every_listed_asset(sim):
    sim.api.listing.zero_balances = "listed"
    status, body = await sim.call("/api/v4/main-account/balance")
    assert status == 200
    assert len(body) >= LISTED_ASSETS
    assert body["BTC"] == {"main_balance": "0.5"} and body["USDT"] == {"main_balance": "1000"}
    assert body["COIN123"] == {"main_balance": "0"}
    assert {entry["main_balance"] for ticker, entry in body.items() if ticker not in ("BTC", "USDT")} == {"0"}


async def test_by_default_balance_answers_come_in_both_documented_forms(sim):
    sizes = {len((await sim.call("/api/v4/main-account/balance"))[1]) for _ in range(40)}
    sizes |= {len((await sim.call("/api/v4/trade-account/balance"))[1]) for _ in range(40)}
    assert min(sizes) <= 3 and max(sizes) >= LISTED_ASSETS


async def test_main_balance_with_ticker_is_flat_and_unknown_ticker_is_zero(sim):
    assert await sim.call("/api/v4/main-account/balance", {"ticker": "USDT"}) == (200, {"main_balance": "1000"})
    assert await sim.call("/api/v4/main-account/balance", {"ticker": "ETH"}) == (200, {"main_balance": "0"})
    assert await sim.call("/api/v4/main-account/balance", {"ticker": "NOPE"}) == (200, {"main_balance": "0"})


async def test_main_balance_rejects_a_ticker_that_is_not_a_string(sim):
    status, body = await sim.call("/api/v4/main-account/balance", {"ticker": 5})
    assert status == 400
    assert body == {"code": 0, "message": "Validation failed", "errors": {"ticker": ["The ticker must be a string."]}}


async def test_trade_balance_without_zeros_lists_non_zero_assets_with_available_and_freeze(sim):
    sim.api.listing.zero_balances = "omitted"
    sim.exchange.place_order("main", "BTC_USDT", SIDE_BUY, D("0.5"), price=D("59000"))
    status, body = await sim.call("/api/v4/trade-account/balance")
    assert status == 200
    assert body == {
        "BTC": {"available": "2", "freeze": "0"},
        "USDT": {"available": "70500", "freeze": "29500"},
    }


async def test_trade_balance_with_ticker_is_flat(sim):
    assert await sim.call("/api/v4/trade-account/balance", {"ticker": "BTC"}) == (
        200,
        {"available": "2", "freeze": "0"},
    )
    assert await sim.call("/api/v4/trade-account/balance", {"ticker": "ETH"}) == (
        200,
        {"available": "0", "freeze": "0"},
    )


async def test_trade_balance_unknown_ticker_is_code_30_currency_not_found(sim):
    status, body = await sim.call("/api/v4/trade-account/balance", {"ticker": "NOPE"})
    assert status == 422
    assert body == {"code": 30, "message": "Validation failed", "errors": {"ticker": ["Currency was not found."]}}
    status, body = await sim.call("/api/v4/trade-account/balance", {"ticker": ["BTC"]})
    assert status == 422
    assert body["errors"] == {"ticker": ["Ticker field should be a string."]}


async def test_collateral_balance_values_are_json_numbers(sim):
    sim.exchange.borrow("main", "ETH", D("0"))  # an ETH entry with nothing in it: left out
    assert "ETH" in sim.exchange.accounts["main"].collateral
    status, body = await sim.call("/api/v4/collateral-account/balance")
    assert status == 200
    assert body == {"BTC": 0.25, "USDT": 500}
    assert isinstance(body["USDT"], int) and isinstance(body["BTC"], float)
    assert await sim.call("/api/v4/collateral-account/balance", {"ticker": "BTC"}) == (200, {"BTC": 0.25})


async def test_collateral_balance_unknown_ticker_is_rejected(sim):
    status, body = await sim.call("/api/v4/collateral-account/balance", {"ticker": "NOPE"})
    assert status == 422
    assert body == {"code": 30, "message": "Validation failed", "errors": {"ticker": ["ticker is invalid."]}}


async def test_collateral_balance_summary_is_an_array_of_strings(sim):
    sim.exchange.borrow("main", "USDT", D("100"))
    status, body = await sim.call("/api/v4/collateral-account/balance-summary")
    assert status == 200
    assert body == [
        {
            "asset": "BTC",
            "balance": "0.25",
            "borrow": "0",
            "availableWithoutBorrow": "0.25",
            "availableWithBorrow": "2.5",
        },
        {
            "asset": "USDT",
            "balance": "500",
            "borrow": "100",
            "availableWithoutBorrow": "400",
            "availableWithBorrow": "4000",
        },
    ]
    status, body = await sim.call("/api/v4/collateral-account/balance-summary", {"ticker": "USDT"})
    assert [item["asset"] for item in body] == ["USDT"]


async def test_collateral_summary_values_the_collateral_with_no_positions(sim):
    sim.exchange.borrow("main", "USDT", D("100"))
    status, body = await sim.call("/api/v4/collateral-account/summary")
    assert status == 200
    # 500 USDT - 100 borrowed + 0.25 BTC at 60000; margin = borrowed / leverage 10.
    assert body == {
        "equity": "15400",
        "margin": "10",
        "freeMargin": "15390",
        "unrealizedFunding": "0",
        "pnl": "0",
        "marginFraction": "1000000000000000000000",
        "leverage": 10,
    }


async def test_collateral_summary_with_positions_has_a_margin_fraction_that_falls_as_they_lose(sim):
    sim.exchange.open_position("main", "BTC_USDT", D("0.5"))  # long, at 60000
    sim.exchange.open_position("main", "ETH_USDT", D("-2"))  # short, at 3000
    status, body = await sim.call("/api/v4/collateral-account/summary")
    assert status == 200
    # Equity 500 + 0.25 * 60000 = 15500 against positions worth 30000 + 6000: margin 36000 / 10.
    assert body == {
        "equity": "15500",
        "margin": "3600",
        "freeMargin": "11900",
        "unrealizedFunding": "0",
        "pnl": "0",
        "marginFraction": "0.4305555555555556",
        "leverage": 10,
    }
    # BTC falls 10% and ETH rises 10%: both positions lose (3000 + 600), the BTC collateral too (1500).
    sim.exchange.set_price("BTC_USDT", D("54000"))
    sim.exchange.set_price("ETH_USDT", D("3300"))
    status, body = await sim.call("/api/v4/collateral-account/summary")
    assert (body["equity"], body["pnl"], body["margin"]) == ("10400", "-3600", "3360")
    assert body["marginFraction"] == "0.3095238095238095"  # 10400 / (27000 + 6600)


# --- deposit/withdraw history -----------------------------------------------------------------


@pytest.fixture
def transfers(exchange: Exchange, clock: FakeClock) -> dict[str, Any]:
    """Two deposits and two withdrawals, one second apart (oldest first)."""
    made: dict[str, Any] = {}
    made["btc_deposit"] = exchange.start_deposit("main", "BTC", D("0.1"), address="addr-btc")
    clock.advance(1)
    exchange.credit_deposit("main", made["btc_deposit"].transaction_id)
    made["usdt_deposit"] = exchange.start_deposit("main", "USDT", D("50"), address="addr-usdt")
    clock.advance(1)
    made["withdrawal"] = exchange.start_withdrawal("main", "USDT", D("20"), unique_id="payout-1", address="dest-1")
    clock.advance(1)
    made["second_withdrawal"] = exchange.start_withdrawal(
        "main", "USDT", D("10"), unique_id="payout-2", address="dest-2"
    )
    exchange.accounts["main"].transfer(made["second_withdrawal"].transaction_id).memo = "tag-7"
    clock.advance(1)
    return made


def txids(body: dict[str, Any]) -> list[str]:
    return [record["transactionId"] for record in body["records"]]


async def test_history_is_newest_first_with_limit_offset_total(sim, transfers):
    status, body = await sim.call("/api/v4/main-account/history")
    assert status == 200
    assert (body["limit"], body["offset"], body["total"]) == (50, 0, 4)
    assert txids(body) == [
        transfers[name].transaction_id for name in ("second_withdrawal", "withdrawal", "usdt_deposit", "btc_deposit")
    ]
    record = body["records"][-1]
    assert record["status"] == 3 and record["method"] == 1 and record["amount"] == "0.1"
    assert record["confirmations"] == {"actual": 2, "required": 2}


async def test_history_pages_with_limit_and_offset(sim, transfers):
    status, body = await sim.call("/api/v4/main-account/history", {"limit": 2, "offset": 1})
    assert (status, body["limit"], body["offset"], body["total"]) == (200, 2, 1, 4)
    assert txids(body) == [transfers["withdrawal"].transaction_id, transfers["usdt_deposit"].transaction_id]
    status, body = await sim.call("/api/v4/main-account/history", {"limit": 2, "offset": 4})
    assert (body["total"], body["records"]) == (4, [])


async def test_history_default_limit_is_50(sim, exchange, clock):
    for _ in range(55):
        exchange.start_deposit("main", "BTC", D("0.01"))
        clock.advance(1)
    status, body = await sim.call("/api/v4/main-account/history")
    assert (status, body["limit"], body["total"], len(body["records"])) == (200, 50, 55, 50)


@pytest.mark.parametrize("method", [1, "1"])
async def test_history_transaction_method_1_is_deposits_as_int_or_string(sim, transfers, method):
    status, body = await sim.call("/api/v4/main-account/history", {"transactionMethod": method})
    assert status == 200
    assert txids(body) == [transfers["usdt_deposit"].transaction_id, transfers["btc_deposit"].transaction_id]


async def test_history_transaction_method_2_is_withdrawals(sim, transfers):
    _, body = await sim.call("/api/v4/main-account/history", {"transactionMethod": "2"})
    assert {r["method"] for r in body["records"]} == {2} and body["total"] == 2


@pytest.mark.parametrize("method", [3, "3", 0, True, None, "deposit", 1.0])
async def test_history_rejects_any_other_transaction_method(sim, method):
    status, body = await sim.call("/api/v4/main-account/history", {"transactionMethod": method})
    assert status == 400
    assert body == {
        "code": 0,
        "message": "Validation failed",
        "errors": {"transactionMethod": ["The selected transaction method is invalid."]},
    }


async def test_history_filters_by_ticker_and_rejects_an_unknown_one(sim, transfers):
    status, body = await sim.call("/api/v4/main-account/history", {"ticker": "BTC"})
    assert txids(body) == [transfers["btc_deposit"].transaction_id]
    status, body = await sim.call("/api/v4/main-account/history", {"ticker": "NOPE"})
    assert status == 400
    assert body["errors"] == {"ticker": ["The selected ticker is invalid."]}


async def test_history_filters_by_address_addresses_and_memo(sim, transfers):
    _, body = await sim.call("/api/v4/main-account/history", {"address": "dest-1"})
    assert txids(body) == [transfers["withdrawal"].transaction_id]
    _, body = await sim.call("/api/v4/main-account/history", {"addresses": ["dest-1", "addr-btc", "unused"]})
    assert txids(body) == [transfers["withdrawal"].transaction_id, transfers["btc_deposit"].transaction_id]
    _, body = await sim.call("/api/v4/main-account/history", {"memo": "tag-7"})
    assert txids(body) == [transfers["second_withdrawal"].transaction_id]


async def test_history_limits_addresses_to_20(sim, transfers):
    status, body = await sim.call("/api/v4/main-account/history", {"addresses": [f"a{i}" for i in range(21)]})
    assert status == 400
    assert body["errors"] == {"addresses": ["The addresses may not have more than 20 items."]}
    status, _ = await sim.call("/api/v4/main-account/history", {"addresses": [f"a{i}" for i in range(20)]})
    assert status == 200


@pytest.mark.parametrize("field", ["uniqueId", "unique_id"])
async def test_history_filters_by_unique_id_under_both_spellings(sim, transfers, field):
    status, body = await sim.call("/api/v4/main-account/history", {field: "payout-2"})
    assert status == 200
    assert txids(body) == [transfers["second_withdrawal"].transaction_id]


async def test_history_filters_by_status_codes_of_the_method(sim, transfers):
    _, body = await sim.call("/api/v4/main-account/history", {"transactionMethod": 1, "status": [3, 7]})
    assert txids(body) == [transfers["btc_deposit"].transaction_id]
    _, body = await sim.call("/api/v4/main-account/history", {"transactionMethod": 1, "status": [15]})
    assert txids(body) == [transfers["usdt_deposit"].transaction_id]


@pytest.mark.parametrize(
    "params",
    [
        {"transactionMethod": 1, "status": [18]},  # 18 exists only for withdrawals
        {"transactionMethod": 2, "status": [9]},  # 9 is canceled only for deposits
        {"status": [99]},
        {"status": ["3"]},
        {"status": 3},
    ],
)
async def test_history_rejects_invalid_status_filters(sim, params):
    status, body = await sim.call("/api/v4/main-account/history", params)
    assert status == 400
    assert list(body["errors"]) == ["status"]


@pytest.mark.parametrize(
    ("params", "field", "message"),
    [
        ({"limit": 101}, "limit", "The limit may not be greater than 100."),
        ({"limit": 0}, "limit", "The limit must be at least 1."),
        ({"limit": "10"}, "limit", "The limit must be an integer."),
        ({"offset": -1}, "offset", "The offset must be at least 0."),
        ({"offset": 10001}, "offset", "The offset may not be greater than 10000."),
        ({"offset": 9950, "limit": 100}, "offset", "Offset is too big. Please use offset + limit less than 10000."),
    ],
)
async def test_history_bounds_limit_and_offset(sim, params, field, message):
    status, body = await sim.call("/api/v4/main-account/history", params)
    assert status == 400
    assert body == {"code": 0, "message": "Validation failed", "errors": {field: [message]}}


async def test_history_refuses_offset_plus_limit_of_10000_and_accepts_9999(sim, transfers):
    # The table says "offset + limit <= 10000", the error text "less than 10000": the stricter holds.
    status, body = await sim.call("/api/v4/main-account/history", {"offset": 9900, "limit": 100})
    assert status == 400
    assert body["errors"] == {"offset": ["Offset is too big. Please use offset + limit less than 10000."]}
    status, body = await sim.call("/api/v4/main-account/history", {"offset": 9900, "limit": 99})
    assert (status, body["total"], body["records"]) == (200, 4, [])


async def test_history_requires_method_limit_and_offset_by_default(aiohttp_client, exchange, clock, transfers):
    # The previous docs list transactionMethod, limit and offset as required.
    sim = await make_sim(aiohttp_client, exchange, clock)
    status, body = await sim.call("/api/v4/main-account/history", {"limit": 10})
    assert status == 400
    assert body["errors"] == {
        "transactionMethod": ["The transactionMethod field is required."],
        "offset": ["The offset field is required."],
    }
    status, body = await sim.call("/api/v4/main-account/history", {"transactionMethod": 1, "limit": 10, "offset": 0})
    assert status == 200
    assert body["records"] and {record["method"] for record in body["records"]} == {1}


async def test_history_reports_every_invalid_field_at_once(sim):
    status, body = await sim.call("/api/v4/main-account/history", {"transactionMethod": 5, "limit": 500})
    assert status == 400
    assert set(body["errors"]) == {"transactionMethod", "limit"}


async def test_history_limit_can_be_raised_to_the_new_docs_500(aiohttp_client, exchange, clock, transfers):
    sim = await make_sim(aiohttp_client, exchange, clock, history_max_limit=500, history_paging_required=False)
    status, body = await sim.call("/api/v4/main-account/history", {"limit": 500})
    assert (status, body["limit"]) == (200, 500)
    status, body = await sim.call("/api/v4/main-account/history", {"limit": 501})
    assert body["errors"] == {"limit": ["The limit may not be greater than 500."]}


async def test_history_success_status_can_be_the_documented_201(aiohttp_client, exchange, clock):
    sim = await make_sim(aiohttp_client, exchange, clock, history_success_status=201, history_paging_required=False)
    status, _ = await sim.call("/api/v4/main-account/history")
    assert status == 201


async def test_history_records_use_the_new_openapi_names_in_snake_style(aiohttp_client, clock):
    x = Exchange(["BTC_USDT"], clock=clock, history_field_style="snake")
    x.add_account("main", api_key=KEY, api_secret=SECRET, main={"USDT": "100"})
    transfer = x.start_withdrawal("main", "USDT", D("5"), unique_id="payout-9")
    sim = await make_sim(aiohttp_client, x, clock, history_paging_required=False)
    _, body = await sim.call("/api/v4/main-account/history", {"unique_id": "payout-9"})
    record = body["records"][0]
    assert record["unique_id"] == "payout-9" and record["transaction_id"] == transfer.transaction_id
    assert "uniqueId" not in record and "transactionId" not in record


# --- open orders ------------------------------------------------------------------------------


@pytest.fixture
def orders(exchange: Exchange, clock: FakeClock) -> list[Any]:
    placed = []
    for n, (market, side, price) in enumerate(
        [("BTC_USDT", SIDE_BUY, "59000"), ("ETH_USDT", SIDE_BUY, "2900"), ("BTC_USDT", SIDE_SELL, "61000")]
    ):
        placed.append(exchange.place_order("main", market, side, D("0.1"), price=D(price), client_order_id=f"mon-{n}"))
        clock.advance(1)
    return placed


async def test_orders_without_market_lists_every_market_as_a_flat_array(sim, orders):
    # Newest first by default (the listing order is not documented, docs/protocol.md#open-order-listing).
    status, body = await sim.call("/api/v4/orders")
    assert status == 200
    assert [o["orderId"] for o in body] == [o.id for o in reversed(orders)]
    assert body[-1] == orders[0].to_rest()
    assert body[-1]["side"] == "buy" and body[-1]["type"] == "limit" and body[-1]["price"] == "59000"


async def test_orders_list_oldest_first_when_the_exchange_is_set_so(sim, orders):
    sim.exchange.list_newest_first = False
    status, body = await sim.call("/api/v4/orders")
    assert status == 200
    assert [o["orderId"] for o in body] == [o.id for o in orders]
    assert body[0] == orders[0].to_rest()
    assert body[0]["side"] == "buy" and body[0]["type"] == "limit" and body[0]["price"] == "59000"


async def test_orders_filter_by_market_order_id_and_client_order_id(sim, orders):
    _, body = await sim.call("/api/v4/orders", {"market": "BTC_USDT"})
    assert [o["orderId"] for o in body] == [orders[2].id, orders[0].id]
    _, body = await sim.call("/api/v4/orders", {"market": "BTC_USDT", "orderId": orders[2].id})
    assert [o["orderId"] for o in body] == [orders[2].id]
    _, body = await sim.call("/api/v4/orders", {"market": "BTC_USDT", "clientOrderId": "mon-0"})
    assert [o["orderId"] for o in body] == [orders[0].id]
    _, body = await sim.call("/api/v4/orders", {"market": "ETH_USDT", "clientOrderId": "mon-0"})
    assert body == []


async def test_orders_page_with_limit_and_offset(sim, orders):
    _, body = await sim.call("/api/v4/orders", {"limit": 2})
    assert [o["orderId"] for o in body] == [orders[2].id, orders[1].id]
    _, body = await sim.call("/api/v4/orders", {"limit": 2, "offset": 2})
    assert [o["orderId"] for o in body] == [orders[0].id]
    _, body = await sim.call("/api/v4/orders", {"offset": 3})
    assert body == []


async def test_orders_unknown_market_is_code_31(sim):
    status, body = await sim.call("/api/v4/orders", {"market": "DOGE_USDT"})
    assert status == 422
    assert body == {"code": 31, "message": "Validation failed", "errors": {"market": ["Market is not available"]}}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"limit": 101}, "limit"),
        ({"limit": 0}, "limit"),
        ({"offset": 10001}, "offset"),
        ({"orderId": 1}, "market"),  # a single-order lookup needs the market
        ({"market": "BTC_USDT", "orderId": "1"}, "orderId"),
    ],
)
async def test_orders_validation_is_code_30(sim, params, field):
    status, body = await sim.call("/api/v4/orders", params)
    assert status == 422
    assert body["code"] == 30 and list(body["errors"]) == [field]


# --- public endpoints -------------------------------------------------------------------------


async def test_public_markets_carry_what_clients_parse(sim):
    status, body = await sim.get("/api/v4/public/markets")
    assert status == 200
    assert [m["name"] for m in body] == ["BTC_USDT", "ETH_USDT"]
    btc = body[0]
    assert set(btc) == {
        "name", "stock", "money", "stockPrec", "moneyPrec", "feePrec", "makerFee", "takerFee",
        "minAmount", "minTotal", "maxTotal", "tradesEnabled", "isCollateral", "type",
    }  # fmt: skip
    assert (btc["stock"], btc["money"], btc["type"], btc["tradesEnabled"]) == ("BTC", "USDT", "spot", True)
    assert all(isinstance(btc[k], str) for k in ("stockPrec", "moneyPrec", "makerFee", "minAmount", "maxTotal"))


async def test_public_assets_are_keyed_by_ticker(sim):
    status, body = await sim.get("/api/v4/public/assets")
    assert status == 200
    assert {"BTC", "USDT", "ETH"} <= set(body)
    usdt = body["USDT"]
    assert usdt["name"] == "Tether US"
    assert usdt["networks"]["deposits"] == ["TRC20", "ERC20"] and usdt["networks"]["default"] == "TRC20"
    assert usdt["can_deposit"] is True and isinstance(usdt["currency_precision"], str)


async def test_public_time_and_platform_status(sim, clock):
    assert await sim.get("/api/v4/public/time") == (200, {"time": int(START)})
    assert await sim.get("/api/v4/public/platform/status") == (200, {"status": "system operational"})
    sim.api.set_unavailable(True)
    assert await sim.get("/api/v4/public/platform/status") == (200, {"status": "system maintenance"})


async def test_unknown_paths_are_json_404s_before_any_auth(sim):
    assert await sim.post("/api/v4/no-such/endpoint", b"{}", {}) == (
        404,
        {"code": 0, "message": "Not found.", "errors": {}},
    )
    status, body = await sim.get("/api/v4/public/no-such")
    assert (status, body["success"]) == (404, False)


async def test_maintenance_answers_503_on_private_endpoints_only(sim):
    sim.api.set_unavailable(True)
    status, body = await sim.call("/api/v4/main-account/balance")
    assert status == 503
    assert body == {
        "response": None,
        "status": 503,
        "errors": {"message": [""]},
        "notification": None,
        "warning": None,
        "_token": None,
    }
    assert (await sim.get("/api/v4/public/markets"))[0] == 200
    sim.api.set_unavailable(False)
    assert (await sim.call("/api/v4/main-account/balance"))[0] == 200


async def test_stats_count_requests_and_last_status_per_endpoint(sim):
    await sim.call("/api/v4/main-account/balance")
    await sim.call("/api/v4/main-account/balance", secret="wrong")
    await sim.get("/api/v4/public/time")
    stats = sim.api.stats()
    assert stats["/api/v4/main-account/balance"] == {
        "requests": 2,
        "last_status": 401,
        "statuses": {"200": 1, "401": 1},
    }
    assert stats["/api/v4/public/time"]["requests"] == 1
    json.dumps(stats)  # the control API serves it as is


# --- authentication failures ------------------------------------------------------------------


def balance_request(sim: Sim, **kwargs: Any) -> Any:
    return sign_request("/api/v4/main-account/balance", {}, api_key=KEY, api_secret=SECRET, nonce=sim.nonce(), **kwargs)


@pytest.mark.parametrize("drop", ["missing", "empty"])
async def test_missing_api_key_is_unauthorized(sim, drop):
    signed = balance_request(sim)
    headers = dict(signed.headers)
    if drop == "missing":
        del headers[HEADER_APIKEY]
    else:
        headers[HEADER_APIKEY] = ""
    assert await sim.post(signed.path, signed.body, headers) == (401, UNAUTHORIZED)


async def test_unknown_api_key_is_told_to_enable_its_key(sim):
    status, body = await sim.call("/api/v4/main-account/balance", key="no-such-key")
    assert status == 401
    assert body == {"code": 2, "message": "This action is unauthorized. Enable your key in API settings"}


@pytest.mark.parametrize("drop", ["missing", "empty"])
async def test_missing_payload_header_is_payload_not_provided(sim, drop):
    signed = balance_request(sim)
    headers = dict(signed.headers)
    if drop == "missing":
        del headers[HEADER_PAYLOAD]
    else:
        headers[HEADER_PAYLOAD] = ""
    assert await sim.post(signed.path, signed.body, headers) == (
        401,
        {"code": 0, "message": "Payload not provided.", "errors": {}},
    )


async def test_payload_must_be_base64_of_the_exact_body_bytes(sim):
    # The same JSON document with spaces: equal as data, different as bytes.
    document = {"request": "/api/v4/main-account/balance", "nonce": sim.nonce()}
    spaced = json.dumps(document).encode()
    headers = signed_headers(compact_json(document))
    assert await sim.post("/api/v4/main-account/balance", spaced, headers) == (400, INVALID_PAYLOAD)


async def test_tampered_body_with_the_original_headers_is_invalid_payload(sim):
    signed = sign_request(
        "/api/v4/trade-account/balance", {"ticker": "BTC"}, api_key=KEY, api_secret=SECRET, nonce=sim.nonce()
    )
    tampered = signed.body.replace(b'"BTC"', b'"USDT"')
    assert await sim.post(signed.path, tampered, signed.headers) == (400, INVALID_PAYLOAD)


async def test_tampered_body_and_payload_with_the_original_signature_is_unauthorized(sim):
    signed = sign_request(
        "/api/v4/trade-account/balance", {"ticker": "BTC"}, api_key=KEY, api_secret=SECRET, nonce=sim.nonce()
    )
    tampered = signed.body.replace(b'"BTC"', b'"USDT"')
    headers = dict(signed.headers, **{HEADER_PAYLOAD: encode_payload(tampered)})
    assert await sim.post(signed.path, tampered, headers) == (401, UNAUTHORIZED)


async def test_wrong_secret_is_unauthorized_request(sim):
    assert await sim.call("/api/v4/main-account/balance", secret="not-the-secret") == (401, UNAUTHORIZED)


async def test_another_accounts_secret_is_unauthorized_request(sim):
    assert await sim.call("/api/v4/main-account/balance", secret=OTHER_SECRET) == (401, UNAUTHORIZED)


async def test_missing_signature_is_unauthorized_request(sim):
    signed = balance_request(sim)
    headers = {k: v for k, v in signed.headers.items() if k != HEADER_SIGNATURE}
    assert await sim.post(signed.path, signed.body, headers) == (401, UNAUTHORIZED)


async def test_signature_hex_case_does_not_matter(sim):
    signed = balance_request(sim)
    headers = dict(signed.headers, **{HEADER_SIGNATURE: signed.headers[HEADER_SIGNATURE].upper()})
    status, _ = await sim.post(signed.path, signed.body, headers)
    assert status == 200


async def test_header_names_are_case_insensitive(sim):
    signed = balance_request(sim)
    headers = {k.lower(): v for k, v in signed.headers.items()}
    status, _ = await sim.post(signed.path, signed.body, headers)
    assert status == 200


@pytest.mark.parametrize("document", [["not", "an", "object"], "text", 5])
async def test_signed_body_that_is_not_a_json_object_fails_validation(sim, document):
    status, body = await sim.raw("/api/v4/main-account/balance", document)
    assert status == 400
    assert body["code"] == 0 and body["message"] == "Validation failed"


async def test_signed_body_that_is_not_json_fails_validation(sim):
    body = b"request=/api/v4/main-account/balance"
    status, answer = await sim.post("/api/v4/main-account/balance", body, signed_headers(body))
    assert (status, answer["message"]) == (400, "Validation failed")


@pytest.mark.parametrize("request_value", ["missing", "", None])
async def test_missing_request_field_is_request_not_provided(sim, request_value):
    document: dict[str, Any] = {"nonce": sim.nonce()}
    if request_value != "missing":
        document["request"] = request_value
    assert await sim.raw("/api/v4/main-account/balance", document) == (
        401,
        {"code": 0, "message": "Request not provided.", "errors": {}},
    )


async def test_request_field_must_be_the_url_path(sim):
    signed = sign_request("/api/v4/trade-account/balance", {}, api_key=KEY, api_secret=SECRET, nonce=sim.nonce())
    assert await sim.post("/api/v4/main-account/balance", signed.body, signed.headers) == (
        401,
        {"code": 0, "message": "Invalid request.", "errors": {}},
    )


@pytest.mark.parametrize("nonce_value", ["missing", "", None])
async def test_missing_nonce_is_nonce_not_provided(sim, nonce_value):
    document: dict[str, Any] = {"request": "/api/v4/main-account/balance"}
    if nonce_value != "missing":
        document["nonce"] = nonce_value
    assert await sim.raw("/api/v4/main-account/balance", document) == (
        401,
        {"code": 0, "message": "Nonce not provided.", "errors": {}},
    )


@pytest.mark.parametrize("nonce_value", ["abc", "12.5", -5, 1.7e12, True, [1]])
async def test_non_numeric_nonce_is_rejected(sim, nonce_value):
    document = {"request": "/api/v4/main-account/balance", "nonce": nonce_value}
    assert await sim.raw("/api/v4/main-account/balance", document) == (
        401,
        {"code": 0, "message": "Invalid nonce.", "errors": {}},
    )


@pytest.mark.parametrize("window", [True, False])
async def test_nonce_may_be_a_numeric_string(sim, window):
    status, _ = await sim.call("/api/v4/main-account/balance", nonce=str(sim.nonce()), window=window)
    assert status == 200


@pytest.mark.parametrize("window_value", ["true", 1, 0, None, "false"])
async def test_non_boolean_nonce_window_is_invalid(sim, window_value):
    document = {"request": "/api/v4/main-account/balance", "nonce": sim.nonce(), "nonceWindow": window_value}
    assert await sim.raw("/api/v4/main-account/balance", document) == (
        401,
        {"code": 0, "message": "Invalid nonceWindow.", "errors": {}},
    )


async def test_nonce_window_false_is_the_same_as_absent(sim):
    document = {"request": "/api/v4/main-account/balance", "nonce": 5, "nonceWindow": False}
    assert (await sim.raw("/api/v4/main-account/balance", document))[0] == 200
    document["nonce"] = 5
    assert await sim.raw("/api/v4/main-account/balance", document) == (429, TOO_MANY)


async def test_without_window_a_nonce_not_above_the_last_is_429_too_many_requests(sim):
    assert (await sim.call("/api/v4/main-account/balance", nonce=100, window=False))[0] == 200
    assert await sim.call("/api/v4/main-account/balance", nonce=100, window=False) == (429, TOO_MANY)
    assert await sim.call("/api/v4/main-account/balance", nonce=99, window=False) == (429, TOO_MANY)
    # Any larger integer works: without a window the nonce need not be a timestamp.
    assert (await sim.call("/api/v4/main-account/balance", nonce=101, window=False))[0] == 200


async def test_nonces_are_tracked_per_api_key(sim):
    assert (await sim.call("/api/v4/main-account/balance", nonce=100, window=False))[0] == 200
    status, _ = await sim.call(
        "/api/v4/main-account/balance", key=OTHER_KEY, secret=OTHER_SECRET, nonce=50, window=False
    )
    assert status == 200


async def test_a_rejected_request_does_not_use_up_its_nonce(sim):
    nonce = sim.nonce()
    assert (await sim.call("/api/v4/main-account/balance", secret="wrong", nonce=nonce))[0] == 401
    assert (await sim.call("/api/v4/main-account/balance", nonce=nonce))[0] == 200


async def test_window_accepts_out_of_order_nonces_but_not_a_reused_one(sim):
    now_ms = int(sim.clock() * 1000)
    assert (await sim.call("/api/v4/main-account/balance", nonce=now_ms + 20))[0] == 200
    assert (await sim.call("/api/v4/main-account/balance", nonce=now_ms + 10))[0] == 200
    assert await sim.call("/api/v4/main-account/balance", nonce=now_ms + 20) == (429, TOO_MANY)


async def test_window_nonce_6_seconds_old_is_more_than_5_seconds_lesser(sim):
    stale = int(sim.clock() * 1000) - 6_000
    assert await sim.call("/api/v4/main-account/balance", nonce=stale) == (
        401,
        {"code": 0, "message": "Your nonce is more than 5 seconds lesser than the current nonce", "errors": {}},
    )


async def test_window_nonce_6_seconds_ahead_is_rejected(sim):
    ahead = int(sim.clock() * 1000) + 6_000
    status, body = await sim.call("/api/v4/main-account/balance", nonce=ahead)
    assert status == 401
    assert body["message"] == "Your nonce is more than 5 seconds greater than the current nonce"


async def test_window_edges_are_inclusive_at_5_seconds(sim):
    now_ms = int(sim.clock() * 1000)
    assert (await sim.call("/api/v4/main-account/balance", nonce=now_ms - 5_000))[0] == 200
    assert (await sim.call("/api/v4/main-account/balance", nonce=now_ms + 5_000))[0] == 200


async def test_window_nonce_raises_the_keys_highest_nonce(sim):
    now_ms = int(sim.clock() * 1000)
    assert (await sim.call("/api/v4/main-account/balance", nonce=now_ms))[0] == 200
    assert await sim.call("/api/v4/main-account/balance", nonce=now_ms - 1, window=False) == (429, TOO_MANY)
    assert sim.api.authenticator.highest_nonce(KEY) == now_ms


async def test_a_counter_nonce_cannot_be_replayed_through_the_window(sim):
    now_ms = int(sim.clock() * 1000)
    assert (await sim.call("/api/v4/main-account/balance", nonce=now_ms, window=False))[0] == 200
    assert await sim.call("/api/v4/main-account/balance", nonce=now_ms) == (429, TOO_MANY)


async def test_window_nonce_memory_is_bounded_by_the_window(sim):
    for _ in range(20):
        assert (await sim.call("/api/v4/main-account/balance"))[0] == 200
    assert sim.api.authenticator.remembered_nonces(KEY) == 20
    sim.clock.advance(5.1)
    assert sim.api.authenticator.remembered_nonces(KEY) == 0


# --- rate limits ------------------------------------------------------------------------------


async def test_eleventh_websocket_token_within_60_seconds_is_429_and_the_window_slides(sim):
    for _ in range(5):
        assert (await sim.call("/api/v4/profile/websocket_token"))[0] == 200
    sim.clock.advance(30)
    for _ in range(5):
        assert (await sim.call("/api/v4/profile/websocket_token"))[0] == 200
    sim.clock.advance(29.9)
    assert await sim.call("/api/v4/profile/websocket_token") == (429, TOO_MANY)
    sim.clock.advance(0.1)  # 60 s after the first five: they leave the window
    for _ in range(5):
        assert (await sim.call("/api/v4/profile/websocket_token"))[0] == 200
    assert await sim.call("/api/v4/profile/websocket_token") == (429, TOO_MANY)
    # Other endpoints have their own budgets.
    assert (await sim.call("/api/v4/main-account/balance"))[0] == 200


async def test_201st_history_request_within_10_seconds_is_429(sim):
    for _ in range(200):
        status, _ = await sim.call("/api/v4/main-account/history")
        assert status == 200
    assert await sim.call("/api/v4/main-account/history") == (429, TOO_MANY)
    assert sim.api.limiter.usage("127.0.0.1", "main-account/history") == 200
    sim.clock.advance(10)
    assert (await sim.call("/api/v4/main-account/history"))[0] == 200


async def test_rate_limit_applies_before_authentication(sim):
    sim.api.force_rate_limit("/api/v4/main-account/history", 1)
    assert await sim.post("/api/v4/main-account/history", b"garbage", {}) == (429, TOO_MANY)
    # Unauthenticated requests still use the IP's budget.
    assert (await sim.post("/api/v4/main-account/history", b"garbage", {}))[0] == 401
    assert sim.api.limiter.usage("127.0.0.1", "/api/v4/main-account/history") == 1


async def test_rate_limited_request_does_not_use_up_its_nonce(sim):
    nonce = sim.nonce()
    sim.api.force_rate_limit("main-account", 1)
    assert await sim.call("/api/v4/main-account/balance", nonce=nonce) == (429, TOO_MANY)
    assert (await sim.call("/api/v4/main-account/balance", nonce=nonce))[0] == 200


async def test_forced_429s_model_whitebit_throttling_then_clear(sim):
    sim.api.force_rate_limit("/api/v4/trade-account/balance", 2)
    assert await sim.call("/api/v4/trade-account/balance") == (429, TOO_MANY)
    assert (await sim.call("/api/v4/main-account/balance"))[0] == 200
    assert await sim.call("/api/v4/trade-account/balance") == (429, TOO_MANY)
    assert (await sim.call("/api/v4/trade-account/balance"))[0] == 200
    assert sim.api.stats()["/api/v4/trade-account/balance"]["statuses"] == {"200": 1, "429": 2}


async def test_public_endpoints_are_rate_limited_too(sim):
    sim.api.force_rate_limit("public/markets", 1)
    assert await sim.get("/api/v4/public/markets") == (429, TOO_MANY)
    assert (await sim.get("/api/v4/public/markets"))[0] == 200
