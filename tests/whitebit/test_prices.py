"""Prices from WhiteBIT's public ticker: every documented form parsed, routes to the quote, the collector,
and the exporter pricing what its accounts hold from the simulator's ticker over loopback HTTP.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Callable
from decimal import Decimal as D
from typing import Any

import pytest

from exporter.config.schema import Config, PollConfig, PricesConfig, RestConfig, WhitebitAccountConfig
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from exporter.whitebit.prices import (
    FROZEN,
    MALFORMED,
    NO_MARKET,
    NO_TRADES,
    MarketQuote,
    PricePoll,
    Prices,
    Ticker,
    parse_market,
    price_in,
)
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.rest import (
    PUBLIC_TICKER,
    RateLimitedError,
    ResponseError,
    RestClient,
    RestMetrics,
    RestTransport,
    UnavailableError,
)
from tests.helpers import Scrape, collected, scrape, wait_for

KEY, SECRET = "price-key", "price-secret"

#: The current docs' example entry (OpenAPI of /api/v4/public/ticker).
CURRENT = {
    "base_id": 1,
    "quote_id": 825,
    "last_price": "9164.09",
    "quote_volume": "43341942.90416876",
    "base_volume": "4723.286463",
    "isFrozen": False,
    "change": "0.57",
}
#: The previous docs' first form: the same without ``change``.
PREVIOUS = {key: value for key, value in CURRENT.items() if key != "change"}


# --- parsing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (CURRENT, MarketQuote(D("9164.09"), frozen=False)),
        (PREVIOUS, MarketQuote(D("9164.09"), frozen=False)),
        # Amounts are documented as strings; a JSON number is read as Decimal(str(x)), like every amount.
        ({**CURRENT, "last_price": 9164.09}, MarketQuote(D("9164.09"), frozen=False)),
        ({**CURRENT, "last_price": 41}, MarketQuote(D(41), frozen=False)),
        ({**CURRENT, "last_price": " 0.000001 "}, MarketQuote(D("0.000001"), frozen=False)),
        ({**CURRENT, "isFrozen": True}, MarketQuote(D("9164.09"), frozen=True)),
        ({key: value for key, value in CURRENT.items() if key != "isFrozen"}, MarketQuote(D("9164.09"), False)),
    ],
    ids=["current", "previous", "float", "integer", "padded", "frozen", "no-isFrozen"],
)
def test_every_documented_form_of_a_ticker_entry_parses(entry: dict[str, Any], expected: MarketQuote) -> None:
    assert parse_market(entry) == expected


@pytest.mark.parametrize("last_price", ["0", "0.00000000", 0, 0.0, "", "  ", None], ids=repr)
def test_a_market_without_a_trade_has_no_last_price(last_price: Any) -> None:
    assert parse_market({**CURRENT, "last_price": last_price}) == MarketQuote(None, frozen=False)
    assert parse_market({"isFrozen": False}) == MarketQuote(None, frozen=False)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({**CURRENT, "last_price": "9 164,09"}, "last_price: not a decimal"),
        ({**CURRENT, "last_price": "-1"}, "not a finite, non-negative decimal"),
        ({**CURRENT, "last_price": "NaN"}, "not a finite, non-negative decimal"),
        ({**CURRENT, "last_price": "Infinity"}, "not a finite, non-negative decimal"),
        ({**CURRENT, "last_price": True}, "expected a decimal, got bool"),
        ({**CURRENT, "last_price": ["1"]}, "expected a decimal, got list"),
        ({**CURRENT, "isFrozen": "false"}, "isFrozen: expected true or false"),
        ({**CURRENT, "isFrozen": 0}, "isFrozen: expected true or false"),
        ("9164.09", "expected an object, got str"),
    ],
)
def test_a_malformed_entry_says_what_is_wrong(entry: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_market(entry)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([{"BTC_USDT": CURRENT}], "expected a JSON object keyed by market, got list"),
        ({}, "the ticker lists no market"),
        # The previous docs' public error envelope, the 500 body and the private envelope, answered with 200.
        ({"success": False, "message": "Too many requests", "params": []}, "an error answer.*: Too many requests"),
        ({"error": ["Internal server error."]}, r"an error answer, not a ticker \(error\)"),
        ({"code": 0, "message": "Too many requests.", "errors": {}}, "an error answer"),
    ],
)
def test_an_answer_that_is_no_ticker_is_refused_whole(document: Any, message: str) -> None:
    with pytest.raises(ResponseError, match=message):
        Ticker(document)


def test_a_malformed_market_spoils_only_itself_and_an_unlisted_one_is_none() -> None:
    ticker = Ticker({"BTC_USDT": CURRENT, "ETH_USDT": {**CURRENT, "last_price": "x"}})
    assert ticker.market("BTC_USDT") == MarketQuote(D("9164.09"), frozen=False)
    assert ticker.market("XRP_USDT") is None
    with pytest.raises(ValueError, match="not a decimal"):
        ticker.market("ETH_USDT")
    with pytest.raises(ValueError, match="not a decimal"):  # the same answer every time
        ticker.market("ETH_USDT")


# --- routes to the quote ----------------------------------------------------------------------------


def entry(last_price: str, *, frozen: bool = False) -> dict[str, Any]:
    return {**CURRENT, "last_price": last_price, "isFrozen": frozen}


TICKER = Ticker(
    {
        "BTC_USDT": entry("60125.5"),
        "USDT_UAH": entry("41.52"),
        # Both directions listed: the direct one wins.
        "ETH_USDT": entry("3000"),
        "USDT_ETH": entry("0.0004"),
        # Direct frozen or never traded, the inverse usable.
        "SOL_USDT": entry("150", frozen=True),
        "USDT_SOL": entry("0.00625"),
        "TRX_USDT": entry("0"),
        "USDT_TRX": entry("8"),
        # Nothing usable.
        "OLDCOIN_USDT": entry("0.0042", frozen=True),
        "NEWCOIN_USDT": entry("0"),
        "BADCOIN_USDT": entry("n/a"),
        "TWOCOIN_USDT": entry("1", frozen=True),
        "USDT_TWOCOIN": entry("1", frozen=True),
        # A second hop (XRP -> BTC -> USDT) is never taken.
        "XRP_BTC": entry("0.00001"),
    }
)


def test_the_quote_itself_is_exactly_one_whatever_the_ticker_lists() -> None:
    assert price_in("USDT", "USDT", TICKER).price == D(1)


def test_the_direct_market_gives_its_last_price_and_wins_over_the_inverse() -> None:
    btc = price_in("BTC", "USDT", TICKER)
    assert (btc.price, btc.market, btc.inverse, btc.reason) == (D("60125.5"), "BTC_USDT", False, "")
    eth = price_in("ETH", "USDT", TICKER)
    assert (eth.price, eth.market) == (D(3000), "ETH_USDT")


def test_a_market_quoted_the_other_way_round_gives_the_inverse_price() -> None:
    uah = price_in("UAH", "USDT", TICKER)
    assert (uah.market, uah.inverse) == ("USDT_UAH", True)
    assert uah.price == D(1) / D("41.52")
    assert float(uah.price) == float(D(1) / D("41.52"))
    # And the other way: UAH is the quote, USDT is priced from USDT_UAH directly.
    assert price_in("USDT", "UAH", TICKER).price == D("41.52")


def test_a_frozen_or_never_traded_market_is_passed_over_for_the_other_direction() -> None:
    assert price_in("SOL", "USDT", TICKER).price == D(1) / D("0.00625")
    assert price_in("TRX", "USDT", TICKER).price == D("0.125")


@pytest.mark.parametrize(
    ("asset", "reason", "detail"),
    [
        ("OLDCOIN", FROZEN, "OLDCOIN_USDT: trading is disabled (isFrozen)"),
        ("NEWCOIN", NO_TRADES, "NEWCOIN_USDT: no trade (last_price 0)"),
        ("BADCOIN", MALFORMED, "BADCOIN_USDT: last_price: not a decimal: 'n/a'"),
        (
            "TWOCOIN",
            FROZEN,
            "TWOCOIN_USDT: trading is disabled (isFrozen); USDT_TWOCOIN: trading is disabled (isFrozen)",
        ),
        ("XRP", NO_MARKET, "the ticker lists neither XRP_USDT nor USDT_XRP"),
    ],
)
def test_an_asset_without_a_usable_market_has_no_price_and_a_reason(asset: str, reason: str, detail: str) -> None:
    pricing = price_in(asset, "USDT", TICKER)
    assert (pricing.price, pricing.reason, pricing.detail) == (None, reason, detail)


# --- the collector ----------------------------------------------------------------------------------


def test_prices_cover_exactly_the_held_assets_of_the_last_ticker_read() -> None:
    held = {"BTC", "USDT", "XRP"}
    prices = Prices("USDT", lambda: held, watching_since=100.0)
    # Before the first read: no price, and the time polling began, so a ticker that never answers goes stale.
    assert collected(prices, "whitebit_price", asset="USDT", quote="USDT") is None
    assert collected(prices, "whitebit_price_last_update_timestamp_seconds", quote="USDT") == 100.0

    assert prices.update(TICKER, 160.0)
    assert collected(prices, "whitebit_price", asset="BTC", quote="USDT") == 60125.5
    assert collected(prices, "whitebit_price", asset="USDT", quote="USDT") == 1.0
    assert collected(prices, "whitebit_price", asset="XRP", quote="USDT") is None  # no series at all
    assert collected(prices, "whitebit_price", asset="ETH", quote="USDT") is None  # not held
    assert collected(prices, "whitebit_price_last_update_timestamp_seconds", quote="USDT") == 160.0

    # An asset held since the last read is priced from it at once.
    held.add("UAH")
    assert collected(prices, "whitebit_price", asset="UAH", quote="USDT") == float(D(1) / D("41.52"))

    # A read that started before the one in use is refused.
    assert not prices.update(Ticker({"BTC_USDT": entry("1")}), 150.0)
    assert collected(prices, "whitebit_price", asset="BTC", quote="USDT") == 60125.5
    assert prices.update(Ticker({"BTC_USDT": entry("61000")}), 220.0)
    assert collected(prices, "whitebit_price", asset="BTC", quote="USDT") == 61000.0
    # The new read no longer lists USDT_UAH: UAH's price goes with it.
    assert collected(prices, "whitebit_price", asset="UAH", quote="USDT") is None


def test_prices_before_any_read_or_watch_render_empty_families() -> None:
    prices = Prices("USDT", lambda: ("BTC",))
    families = {family.name: family for family in prices.collect()}
    assert families["whitebit_price"].samples == []
    assert families["whitebit_price_last_update_timestamp_seconds"].samples == []


# --- against the simulator over loopback HTTP ----------------------------------------------------------

#: What the simulated account holds in its main wallet: assets priced directly (BTC, ETH), the quote, one
#: priced through USDT_UAH, one whose market is frozen, one whose market never traded, one with no market.
MAIN = {"USDT": "1000", "BTC": "2", "ETH": "3", "UAH": "8304", "OLDCOIN": "10", "NEWCOIN": "5", "XRP": "30"}


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    account = SimulatedAccount("acct", api_key=KEY, api_secret=SECRET, main=MAIN)
    sim = Simulator(SimulatorSettings(accounts=(account,), seed=5))
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[RestClient]:
    limiter = RateLimiter()
    transport = RestTransport(limiter, RestMetrics(limiter))
    yield RestClient(
        account="acct", base_url=simulator.url, api_key=KEY, api_secret=SECRET, transport=transport, max_retries=0
    )
    await transport.close()


async def test_one_poll_reads_the_simulators_ticker_in_both_of_its_forms(simulator, client) -> None:
    held = {"BTC", "ETH", "USDT", "UAH"}
    prices = Prices("USDT", lambda: held)
    poll = PricePoll(client, prices, clock=lambda: 500.0)
    await poll()
    simulator.exchange.set_price("BTC_USDT", D("61234.56"))
    await poll()  # the second answer is the previous docs' form, without `change`
    assert simulator.rest.stats()[PUBLIC_TICKER]["statuses"] == {"200": 2}
    assert collected(prices, "whitebit_price", asset="BTC", quote="USDT") == 61234.56
    eth = simulator.exchange.prices["ETH_USDT"]
    assert collected(prices, "whitebit_price", asset="ETH", quote="USDT") == float(eth)
    assert collected(prices, "whitebit_price", asset="UAH", quote="USDT") == float(D(1) / D("41.52"))
    assert collected(prices, "whitebit_price_last_update_timestamp_seconds", quote="USDT") == 500.0


async def test_a_failed_read_keeps_the_last_prices_and_their_time(simulator, client) -> None:
    prices = Prices("USDT", lambda: {"BTC"})
    times = iter((10.0, 20.0, 30.0, 40.0))
    poll = PricePoll(client, prices, clock=lambda: next(times))
    await poll()
    before = simulator.exchange.prices["BTC_USDT"]
    simulator.exchange.set_price("BTC_USDT", before * 2)
    simulator.rest.fail_ticker(1)
    with pytest.raises(UnavailableError, match="HTTP 500"):
        await poll()
    simulator.rest.set_unavailable(True)  # maintenance: the gateway's 503 page, not JSON
    with pytest.raises(UnavailableError, match="HTTP 503"):
        await poll()
    simulator.rest.set_unavailable(False)
    simulator.rest.force_rate_limit(PUBLIC_TICKER, 1)  # the gateway's 429 page, not JSON
    with pytest.raises(RateLimitedError, match="HTTP 429"):
        await poll()
    assert collected(prices, "whitebit_price", asset="BTC", quote="USDT") == float(before)
    assert collected(prices, "whitebit_price_last_update_timestamp_seconds", quote="USDT") == 10.0
    statuses = simulator.rest.stats()[PUBLIC_TICKER]["statuses"]
    assert statuses == {"200": 1, "500": 1, "503": 1, "429": 1}
    metrics = client.transport.metrics
    for code in ("200", "500", "503", "429"):
        assert collected(metrics, "whitebit_rest_requests_total", account="acct", endpoint=PUBLIC_TICKER, code=code)
    assert collected(metrics, "whitebit_rest_rate_limited_total", account="acct", endpoint=PUBLIC_TICKER) == 1.0


# --- under the exporter ---------------------------------------------------------------------------------


def exporter_config(make_config: Callable[..., Config], url: str, prices: PricesConfig) -> Config:
    account = WhitebitAccountConfig(
        name="acct",
        rest_url=url,
        ws_url=url.replace("http://", "ws://", 1) + "/ws",
        api_key=KEY,
        api_secret=SECRET,
        poll=PollConfig(main_balance=0.2, collateral=0.2, history=60.0, trade_balance=0.2),
    )
    # No retries: each failure of the ticker shows at once.
    return dataclasses.replace(make_config([account]), prices=prices, rest=RestConfig(max_retries=0))


def prices_of(result: Scrape) -> dict[tuple[str, str], float]:
    return {(labels["asset"], labels["quote"]): value for labels, value in result.samples("whitebit_price")}


def ticker_requests(result: Scrape, code: str) -> float:
    return result.value("whitebit_rest_requests_total", account="acct", endpoint=PUBLIC_TICKER, code=code) or 0.0


async def test_the_exporter_prices_every_held_asset_from_the_ticker_and_follows_it(
    simulator, make_config, start_exporter, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="exporter.whitebit.prices")
    exporter = await start_exporter(exporter_config(make_config, simulator.url, PricesConfig(interval=1.0)))
    prices = simulator.exchange.prices
    expected = {
        ("BTC", "USDT"): float(prices["BTC_USDT"]),
        ("ETH", "USDT"): float(prices["ETH_USDT"]),
        ("USDT", "USDT"): 1.0,
        ("UAH", "USDT"): float(D(1) / D("41.52")),
    }
    seen: list[Scrape] = []

    async def priced() -> bool:
        seen[:] = [await scrape(exporter.metrics_url)]
        return prices_of(seen[0]) == expected

    await wait_for(priced, timeout=15, interval=0.2, message=f"prices never matched: {seen and prices_of(seen[0])}")
    result = seen[0]
    # Every held asset has a balance series; OLDCOIN, NEWCOIN and XRP have no price series.
    held = {labels["asset"] for labels, _ in result.samples("whitebit_balance")}
    assert held >= set(MAIN)
    assert {asset for asset, _ in prices_of(result)} == {"BTC", "ETH", "USDT", "UAH"}

    # Why, once each, in the log: at the first read after the asset's balance arrived (a scrape may price
    # from the read before, which came before the main balance).
    def reasons() -> list[tuple[str, str]]:
        return sorted(
            (record.asset, record.reason)  # type: ignore[attr-defined]
            for record in caplog.records
            if record.getMessage() == "no price for a held asset"
        )

    unpriced = [("NEWCOIN", NO_TRADES), ("OLDCOIN", FROZEN), ("XRP", NO_MARKET)]
    await wait_for(lambda: reasons() == unpriced, timeout=10, interval=0.2, message=f"logged: {reasons()}")
    first_read = result.value("whitebit_price_last_update_timestamp_seconds", quote="USDT")
    assert first_read is not None
    # One request per read, counted like every REST call, in the ticker's own rate-limit family.
    assert ticker_requests(result, "200") >= 1
    usage = result.value("whitebit_rest_rate_limit_usage_ratio", account="acct", endpoint=PUBLIC_TICKER)
    assert usage is not None and 0 < usage <= 20 / 2000

    # The price moves: the next read shows it, with a newer timestamp.
    simulator.exchange.set_price("BTC_USDT", D("65432.1"))

    async def moved() -> bool:
        seen[:] = [await scrape(exporter.metrics_url)]
        return prices_of(seen[0]).get(("BTC", "USDT")) == 65432.1

    await wait_for(moved, timeout=10, interval=0.2)
    assert seen[0].value("whitebit_price_last_update_timestamp_seconds", quote="USDT") > first_read
    assert seen[0].value("whitebit_exporter_task_running", task="rest:prices:acct") == 1.0
    # Prices are no account's data: they have no health entry of their own.
    assert not [s for s in exporter.health.sources() if "prices" in s.source]
    # Several reads later, each reason is still logged once only.
    assert reasons() == unpriced


async def test_a_failing_ticker_keeps_the_last_prices_counts_each_error_and_recovers(
    simulator, make_config, start_exporter
) -> None:
    exporter = await start_exporter(exporter_config(make_config, simulator.url, PricesConfig(interval=1.0)))
    result = Scrape("")

    async def scraped(predicate: Callable[[Scrape], bool]) -> bool:
        nonlocal result
        result = await scrape(exporter.metrics_url)
        return predicate(result)

    await wait_for(lambda: scraped(lambda r: ("BTC", "USDT") in prices_of(r)), timeout=15, interval=0.2)
    await wait_for(lambda: exporter.health.readiness()[0], timeout=15)
    price = prices_of(result)[("BTC", "USDT")]

    simulator.exchange.set_price("BTC_USDT", D(price * 2))
    simulator.rest.fail_ticker(1_000)
    # A read answered before the failures began may still land: take the time of the last good read once
    # the failures are under way, then watch two more fail.
    await wait_for(lambda: scraped(lambda r: ticker_requests(r, "500") >= 1), timeout=15, interval=0.2)
    read_at = result.value("whitebit_price_last_update_timestamp_seconds", quote="USDT")
    await wait_for(lambda: scraped(lambda r: ticker_requests(r, "500") >= 3), timeout=15, interval=0.2)
    assert prices_of(result)[("BTC", "USDT")] == price
    assert result.value("whitebit_price_last_update_timestamp_seconds", quote="USDT") == read_at
    # Prices are no account's data: a failing ticker leaves the account up and the exporter ready.
    assert result.value("whitebit_up", account="acct") == 1.0
    assert exporter.health.readiness() == (True, [])

    simulator.rest.fail_ticker(0)
    simulator.rest.force_rate_limit(PUBLIC_TICKER, 2)
    await wait_for(lambda: scraped(lambda r: ticker_requests(r, "429") >= 2), timeout=15, interval=0.2)
    limited = result.value("whitebit_rest_rate_limited_total", account="acct", endpoint=PUBLIC_TICKER)
    assert limited == 2.0

    await wait_for(lambda: scraped(lambda r: prices_of(r).get(("BTC", "USDT")) == price * 2), timeout=15, interval=0.2)
    assert result.value("whitebit_price_last_update_timestamp_seconds", quote="USDT") > read_at


async def test_prices_switched_off_read_no_ticker_and_export_no_price(simulator, make_config, start_exporter) -> None:
    exporter = await start_exporter(exporter_config(make_config, simulator.url, PricesConfig(enabled=False)))
    await wait_for(lambda: exporter.health.readiness()[0], timeout=15)
    result = await scrape(exporter.metrics_url)
    assert result.value("whitebit_balance", account="acct", wallet="main", asset="BTC") == 2.0
    assert result.samples("whitebit_price") == []
    assert result.samples("whitebit_price_last_update_timestamp_seconds") == []
    assert PUBLIC_TICKER not in simulator.rest.stats()
    assert result.value("whitebit_exporter_task_running", task="rest:prices:acct") is None


async def test_prices_in_another_quote_value_the_former_quote_too(simulator, make_config, start_exporter) -> None:
    exporter = await start_exporter(
        exporter_config(make_config, simulator.url, PricesConfig(quote="UAH", interval=1.0))
    )

    async def priced() -> bool:
        return prices_of(await scrape(exporter.metrics_url)).keys() == {("UAH", "UAH"), ("USDT", "UAH")}

    # Only USDT_UAH reaches UAH: USDT at its last price, UAH at 1; BTC would need a second hop, which is never taken.
    await wait_for(priced, timeout=15, interval=0.2)
    result = await scrape(exporter.metrics_url)
    assert prices_of(result) == {("UAH", "UAH"): 1.0, ("USDT", "UAH"): 41.52}
    assert result.value("whitebit_price_last_update_timestamp_seconds", quote="UAH") is not None
