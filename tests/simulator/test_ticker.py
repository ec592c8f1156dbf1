"""The simulator's public ticker answers like WhiteBIT's, in every documented form, over loopback HTTP.

``GET /api/v4/public/ticker``: every market keyed by name, ids as integers, amounts as decimal strings,
alternately with and without ``change``; markets the simulator lists but does not trade (one quoted the
other way round, one never traded, one frozen); the gateway's non-JSON 429 and 503, and the API's 500.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from decimal import Decimal as D
from typing import Any

import aiohttp
import pytest

from exporter.simulator.model import SIDE_BUY
from exporter.simulator.rest import GATEWAY_429, GATEWAY_503, TICKER, ListedMarket
from exporter.simulator.server import DEFAULT_TICKER_MARKETS, SimulatedAccount, Simulator, SimulatorSettings
from exporter.whitebit.prices import MarketQuote, Ticker

ENTRY_KEYS = {"base_id", "quote_id", "last_price", "quote_volume", "base_volume", "isFrozen"}
DECIMAL = re.compile(r"-?\d+(\.\d+)?")


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(SimulatorSettings(accounts=(SimulatedAccount("acct", api_key="k", api_secret="s"),), seed=9))
    await simulator.start()
    yield simulator
    await simulator.stop()


async def get(sim: Simulator, path: str = TICKER) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(sim.url + path) as response:
        return response.status, response.content_type, await response.text()


async def ticker(sim: Simulator) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(sim.url + TICKER) as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def test_the_ticker_lists_every_market_in_the_documented_shapes(sim: Simulator) -> None:
    body = await ticker(sim)
    assert list(body) == ["BTC_USDT", "ETH_USDT", "USDT_UAH", "NEWCOIN_USDT", "OLDCOIN_USDT"]
    for market, entry in body.items():
        assert set(entry) == ENTRY_KEYS | {"change"}, market
        assert all(type(entry[key]) is int for key in ("base_id", "quote_id")), market
        assert all(DECIMAL.fullmatch(entry[key]) for key in ("last_price", "quote_volume", "base_volume", "change"))
        assert type(entry["isFrozen"]) is bool
    assert (body["BTC_USDT"]["base_id"], body["BTC_USDT"]["quote_id"]) == (1, 825)
    assert body["USDT_UAH"]["quote_id"] == 0  # no CoinMarketCap id: 0, as documented
    assert body["BTC_USDT"]["last_price"] == "60000"
    assert (body["NEWCOIN_USDT"]["last_price"], body["NEWCOIN_USDT"]["base_volume"]) == ("0", "0")
    assert body["OLDCOIN_USDT"]["isFrozen"] is True
    assert not any(entry["isFrozen"] for market, entry in body.items() if market != "OLDCOIN_USDT")


async def test_answers_alternate_between_the_current_and_the_previous_docs_form(sim: Simulator) -> None:
    forms = [await ticker(sim) for _ in range(4)]
    assert ["change" in answer["BTC_USDT"] for answer in forms] == [True, False, True, False]
    assert all(set(entry) == ENTRY_KEYS for entry in forms[1].values())
    # Both forms parse the same way.
    for answer in forms:
        assert Ticker(answer).market("BTC_USDT") == MarketQuote(D(60000), frozen=False)
        assert Ticker(answer).market("NEWCOIN_USDT") == MarketQuote(None, frozen=False)


async def test_the_ticker_follows_the_random_walk_and_counts_fills(sim: Simulator) -> None:
    sim.exchange.set_price("BTC_USDT", D("61500.25"))
    sim.exchange.place_instant_fill("acct", "BTC_USDT", SIDE_BUY, D("0.5"), D("61500"))
    entry = (await ticker(sim))["BTC_USDT"]
    assert entry["last_price"] == "61500.25"
    assert (entry["base_volume"], entry["quote_volume"]) == ("0.5", "30750")
    assert entry["change"] == "2.5"  # percent, from the opening 60000


async def test_the_market_list_leaves_out_the_frozen_market_as_whitebit_does(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as session, session.get(sim.url + "/api/v4/public/markets") as response:
        names = [market["name"] for market in await response.json()]
    assert names == ["BTC_USDT", "ETH_USDT", "USDT_UAH", "NEWCOIN_USDT"]


async def test_throttling_and_maintenance_answer_the_gateways_pages_and_a_failure_the_apis_500(
    sim: Simulator,
) -> None:
    sim.rest.force_rate_limit(TICKER, 1)
    assert await get(sim) == (429, "text/html", GATEWAY_429)
    sim.rest.set_unavailable(True)
    assert await get(sim) == (503, "text/html", GATEWAY_503)
    sim.rest.set_unavailable(False)
    sim.rest.fail_ticker(1)
    assert await get(sim) == (500, "application/json", '{"error":["Internal server error."]}')
    status, content_type, _ = await get(sim)
    assert (status, content_type) == (200, "application/json")
    assert sim.rest.stats()[TICKER]["statuses"] == {"429": 1, "503": 1, "500": 1, "200": 1}


async def test_the_listed_markets_are_a_setting() -> None:
    assert ListedMarket("OLDCOIN_USDT", "0.0042", frozen=True) in DEFAULT_TICKER_MARKETS
    settings = SimulatorSettings(
        accounts=(SimulatedAccount("acct", api_key="k", api_secret="s"),),
        markets=("BTC_USDT",),
        ticker_markets=(ListedMarket("USDT_EUR", "0.92"),),
    )
    simulator = Simulator(settings)
    await simulator.start()
    try:
        body = await ticker(simulator)
    finally:
        await simulator.stop()
    assert {market: entry["last_price"] for market, entry in body.items()} == {"BTC_USDT": "60000", "USDT_EUR": "0.92"}
