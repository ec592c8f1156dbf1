"""REST pollers against the simulator: what each poll writes, when it stays quiet, and how it fails.

Polls are driven one at a time (``await poll()``) where the test is about content, and run under
the exporter where it is about scheduling, health and scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal as D
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from exporter.app import Exporter
from exporter.config.schema import Config, PollConfig, WhitebitAccountConfig
from exporter.core.health import HealthRegistry
from exporter.core.outage import SourceStatus
from exporter.simulator.model import MarginBalance, SpotBalance
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from exporter.whitebit.balances import AccountBalances, BalancesCollector
from exporter.whitebit.pollers import (
    CollateralPoll,
    CollateralSummaries,
    MainBalancePoll,
    Poller,
    TradeBalancePoll,
    build_poller,
    build_pollers,
    parse_collateral_balance_summary,
    parse_collateral_summary,
    parse_main_balance,
    parse_trade_balance,
)
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.rest import (
    COLLATERAL_BALANCE_SUMMARY,
    COLLATERAL_SUMMARY,
    MAIN_BALANCE,
    TRADE_BALANCE,
    NoAnswerError,
    ResponseError,
    RestClient,
    RestMetrics,
    RestTransport,
)
from exporter.whitebit.websocket.source import WebSocketSource
from tests.helpers import collected, logfmt_lines, scrape, wait_for

KEY, SECRET = "poller-key", "poller-secret"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorSettings(accounts=(SimulatedAccount("acct", api_key=KEY, api_secret=SECRET),), seed=2))
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def client(simulator: Simulator) -> AsyncIterator[RestClient]:
    limiter = RateLimiter()
    transport = RestTransport(limiter, RestMetrics(limiter))
    yield RestClient(
        account="acct",
        base_url=simulator.url,
        api_key=KEY,
        api_secret=SECRET,
        transport=transport,
    )
    await transport.close()


def requests_to(sim: Simulator, path: str) -> int:
    entry = sim.rest.stats().get(path)
    return 0 if entry is None else int(entry["requests"])


# --- main balance ------------------------------------------------------------------------------


async def test_main_balance_poll_replaces_the_main_wallet(simulator, client) -> None:
    balances = AccountBalances("acct")
    await MainBalancePoll(client, balances, clock=lambda: 1234.0)()
    assert balances.main() == {"BTC": D("1.5"), "ETH": D(20), "USDT": D(25000)}
    assert balances.updated_at("main") == 1234.0
    collector = BalancesCollector([balances])
    assert collected(collector, "whitebit_balance", account="acct", wallet="main", asset="USDT") == 25000.0


async def test_an_asset_that_leaves_the_main_balance_answer_is_exported_as_zero(simulator, client) -> None:
    balances = AccountBalances("acct")
    poll = MainBalancePoll(client, balances)
    await poll()
    simulator.exchange.accounts["acct"].main["ETH"] = D(0)  # WhiteBIT omits zero balances
    await poll()
    assert balances.main()["ETH"] == D(0)
    assert (
        collected(
            BalancesCollector([balances]),
            "whitebit_balance",
            account="acct",
            wallet="main",
            asset="ETH",
        )
        == 0.0
    )


async def test_a_malformed_answer_is_rejected_whole_and_the_wallet_keeps_its_values() -> None:
    with pytest.raises(ResponseError, match=r"BTC\.main_balance: not a decimal"):
        parse_main_balance({"USDT": {"main_balance": "5"}, "BTC": {"main_balance": "1,5"}})
    with pytest.raises(ResponseError, match="not a finite decimal"):
        parse_main_balance({"BTC": {"main_balance": "NaN"}})
    with pytest.raises(ResponseError, match="expected a JSON object"):
        parse_main_balance([{"BTC": "1"}])
    with pytest.raises(ResponseError, match="no main_balance"):
        parse_main_balance({"BTC": {"balance": "1"}})
    with pytest.raises(ResponseError, match="expected a decimal, got bool"):
        parse_main_balance({"BTC": {"main_balance": True}})


def test_amounts_are_exact_decimals_whether_strings_or_json_numbers() -> None:
    assert parse_main_balance({"BTC": {"main_balance": "0.1000000000000000055"}}) == {"BTC": D("0.1000000000000000055")}
    assert parse_trade_balance({"USDT": {"available": 10, "freeze": "0.5"}}) == {"USDT": (D(10), D("0.5"))}
    assert parse_collateral_balance_summary([{"asset": "BTC", "balance": "0.25", "borrow": "0.1"}]) == {
        "BTC": (D("0.25"), D("0.1"))
    }


# --- collateral --------------------------------------------------------------------------------


async def test_collateral_summary_gauges_come_from_every_poll(simulator, client) -> None:
    summaries = CollateralSummaries()
    poll = CollateralPoll(
        client,
        AccountBalances("acct"),
        summaries,
        websocket_supplies=lambda wallet: True,
        clock=lambda: 99.0,
    )
    await poll()

    def shown(name: str) -> float | None:
        return collected(summaries, name, account="acct")

    # 5000 USDT + 0.25 BTC at the simulator's BTC_USDT price, no borrowing, no positions.
    price = simulator.exchange.prices["BTC_USDT"]
    assert shown("whitebit_collateral_equity") == float(D(5000) + D("0.25") * price)
    assert shown("whitebit_collateral_margin") == 0.0
    assert shown("whitebit_collateral_free_margin") == shown("whitebit_collateral_equity")
    assert shown("whitebit_collateral_margin_fraction") == math.inf
    assert shown("whitebit_collateral_account_last_update_timestamp_seconds") == 99.0


def test_collateral_summary_keeps_a_real_margin_fraction() -> None:
    summary = parse_collateral_summary(
        {
            "equity": "100",
            "margin": "10",
            "freeMargin": "90",
            "marginFraction": "0.35",
            "leverage": 10,
        },
        1.0,
    )
    assert summary.margin_fraction == 0.35


async def test_the_collateral_wallet_is_polled_only_while_the_websocket_cannot_supply_it(simulator, client) -> None:
    balances = AccountBalances("acct")
    ws_up = True
    poll = CollateralPoll(
        client, balances, CollateralSummaries(), websocket_supplies=lambda wallet: ws_up and wallet == "collateral"
    )
    await poll()
    assert requests_to(simulator, COLLATERAL_BALANCE_SUMMARY) == 0
    assert balances.updated_at("collateral") is None

    ws_up = False
    simulator.exchange.accounts["acct"].collateral["BTC"] = MarginBalance(D("0.25"), D("0.05"))
    await poll()
    assert requests_to(simulator, COLLATERAL_BALANCE_SUMMARY) == 1
    assert balances.collateral() == {
        "BTC": (D("0.25"), D("0.05")),
        "USDT": (D(5000), D(0)),
    }
    assert requests_to(simulator, COLLATERAL_SUMMARY) == 2


# --- trade balance -----------------------------------------------------------------------------


async def test_trade_balance_is_not_polled_while_the_websocket_supplies_it(simulator, client) -> None:
    balances = AccountBalances("acct")
    await TradeBalancePoll(client, balances, websocket_supplies=lambda wallet: True)()
    assert requests_to(simulator, TRADE_BALANCE) == 0
    assert balances.spot() == {}


async def test_trade_balance_fills_the_spot_wallet_while_the_websocket_is_down(simulator, client) -> None:
    balances = AccountBalances("acct")
    simulator.exchange.accounts["acct"].spot["BTC"] = SpotBalance(D(3), D(1))
    poll = TradeBalancePoll(client, balances, websocket_supplies=lambda wallet: False)
    await poll()
    assert balances.spot()["BTC"] == (D(3), D(1))
    collector = BalancesCollector([balances])
    assert collected(collector, "whitebit_balance", account="acct", wallet="spot", asset="BTC") == 4.0
    assert collected(collector, "whitebit_balance_frozen", account="acct", asset="BTC") == 1.0

    del simulator.exchange.accounts["acct"].spot["ETH"]
    await poll()
    assert balances.spot()["ETH"] == (D(0), D(0))


async def test_a_trade_balance_answer_is_dropped_if_the_websocket_came_back_meanwhile(simulator, client) -> None:
    balances = AccountBalances("acct")
    answers = iter([False, True])  # down when the poll starts, up when its answer arrives
    await TradeBalancePoll(client, balances, websocket_supplies=lambda wallet: next(answers) and wallet == "spot")()
    assert requests_to(simulator, TRADE_BALANCE) == 1
    assert balances.spot() == {}


def test_a_websocket_that_never_synced_supplies_no_wallet() -> None:
    # Which wallet a live connection supplies is covered over real sockets in
    # tests/whitebit/websocket/test_source.py; here: nothing before it ever connected.
    async def no_token() -> str:
        raise AssertionError("never connected in this test")

    health = HealthRegistry()
    websocket = WebSocketSource("acct", "ws://127.0.0.1:1/ws", (), no_token, AccountBalances("acct"), health)
    websocket.health.ok()  # even a health entry forced OK does not make it supply a wallet
    assert [websocket.supplies(wallet) for wallet in ("main", "spot", "collateral")] == [False, False, False]


async def test_each_fallback_poll_asks_about_its_own_wallet(simulator, client) -> None:
    asked: list[str] = []

    def supplies(wallet: str) -> bool:
        asked.append(wallet)
        return True

    balances = AccountBalances("acct")
    await TradeBalancePoll(client, balances, websocket_supplies=supplies)()
    assert asked == ["spot"]
    asked.clear()
    await CollateralPoll(client, balances, CollateralSummaries(), websocket_supplies=supplies)()
    assert asked == ["collateral"]


# --- scheduling and health ---------------------------------------------------------------------


async def test_pollers_register_health_and_start_at_spread_out_offsets(client) -> None:
    health = HealthRegistry()
    pollers = build_pollers(
        client,
        AccountBalances("acct"),
        PollConfig(main_balance=30.0, collateral=2.0, trade_balance=30.0),
        health=health,
        summaries=CollateralSummaries(),
        websocket_supplies=lambda wallet: False,
        rng=random.Random(5),
    )
    assert [p.name for p in pollers] == [
        "rest:main_balance:acct",
        "rest:collateral:acct",
        "rest:trade_balance:acct",
    ]
    assert [h.label for h in health.sources()] == [
        "rest:main_balance acct",
        "rest:collateral acct",
        "rest:trade_balance acct",
    ]
    offsets = [p.start_offset for p in pollers]
    assert len(set(offsets)) == 3
    assert 0 <= offsets[0] < 5.0 and 0 <= offsets[1] < 2.0 and 0 <= offsets[2] < 5.0


async def test_a_failing_poll_reports_failing_and_keeps_polling() -> None:
    health = HealthRegistry().register("rest:test", "acct")
    calls = 0

    async def poll() -> None:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise ResponseError(MAIN_BALANCE, "bad answer")

    poller = Poller(account="acct", kind="test", interval=0.01, poll=poll, status=SourceStatus(health))
    task = asyncio.create_task(poller.run())
    try:
        await wait_for(lambda: calls >= 1 and not health.is_ok)
        assert health.reason == f"{MAIN_BALANCE}: response error: bad answer"
        await wait_for(lambda: health.is_ok)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_bug_in_a_poll_is_reported_and_left_to_the_supervisor() -> None:
    health = HealthRegistry().register("rest:test", "acct")

    async def poll() -> None:
        raise KeyError("bug")

    poller = Poller(account="acct", kind="test", interval=0.01, poll=poll, status=SourceStatus(health))
    with pytest.raises(KeyError):
        await asyncio.wait_for(poller.run(), timeout=10)
    assert health.reason == "internal error (see the log)"


async def test_a_starting_poll_shows_its_first_failed_attempts_reason_before_any_retry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with socket.socket() as probe:  # a loopback port nothing listens on: connections are refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    retries: list[float] = []

    async def hold(seconds: float) -> None:
        retries.append(seconds)
        await asyncio.Event().wait()  # the retry never comes: readiness must not wait for it

    limiter = RateLimiter()
    transport = RestTransport(limiter, RestMetrics(limiter))
    client = RestClient(
        account="acct",
        base_url=f"http://127.0.0.1:{port}",
        api_key=KEY,
        api_secret=SECRET,
        transport=transport,
        max_retries=5,
        sleep=hold,
    )
    health = HealthRegistry()
    poller = build_poller(
        client, "main_balance", 0.05, lambda c: MainBalancePoll(c, AccountBalances("acct")), health=health
    )
    task = asyncio.create_task(poller.run())
    try:
        await wait_for(lambda: health.readiness()[1] != ["rest:main_balance acct: starting"], timeout=5)
        assert health.readiness() == (
            False,
            [f"rest:main_balance acct: {MAIN_BALANCE}: connection refused (127.0.0.1:{port})"],
        )
        assert len(retries) == 1  # one attempt made, its retry still waiting
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await transport.close()
    lines = logfmt_lines(caplog.records)
    assert [(line["level"], line["msg"]) for line in lines if line["level"] != "debug"] == [
        ("warning", "source failing")
    ]
    [failing] = [line for line in lines if line["msg"] == "source failing"]
    assert (failing["source"], failing["account"], failing["reason"]) == (
        "rest:main_balance",
        "acct",
        f"{MAIN_BALANCE}: connection refused (127.0.0.1:{port})",
    )
    # The attempt itself is detail, at debug.
    assert [line["level"] for line in lines if line["msg"] == "REST call failed; retrying"] == ["debug"]


async def test_a_poll_that_keeps_failing_logs_once_then_a_summary_then_its_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock()
    health = HealthRegistry(clock=clock).register("rest:test", "acct")
    calls = 0

    async def poll() -> None:
        # 1: ok; 2-10: refused (the clock jumps past the summary interval at 6); 11 on: ok.
        nonlocal calls
        calls += 1
        if calls == 6:
            clock.now += 301.0
        if 2 <= calls <= 10:
            raise NoAnswerError(MAIN_BALANCE, f"connection refused (127.0.0.1:9) #{calls}")

    poller = Poller(account="acct", kind="test", interval=0.01, poll=poll, status=SourceStatus(health))
    task = asyncio.create_task(poller.run())
    try:
        await wait_for(lambda: calls >= 11 and health.is_ok, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    lines = [line for line in logfmt_lines(caplog.records) if line["level"] != "debug"]
    assert [
        (line["level"], line["msg"], line.get("failures"), line.get("down_seconds"), line.get("reason"))
        for line in lines
    ] == [
        ("warning", "source failing", None, None, f"{MAIN_BALANCE}: connection refused (127.0.0.1:9) #2"),
        ("warning", "source still failing", "4", "301.0", f"{MAIN_BALANCE}: connection refused (127.0.0.1:9) #6"),
        ("info", "source recovered", "9", "301.0", None),
    ]
    assert all((line["source"], line["account"]) == ("rest:test", "acct") for line in lines)


# --- under the exporter -------------------------------------------------------------------------


def account(url: str, *, secret: str = SECRET, interval: float = 0.05) -> WhitebitAccountConfig:
    return WhitebitAccountConfig(
        name="acct",
        rest_url=url,
        ws_url=url.replace("http://", "ws://", 1) + "/ws",
        api_key=KEY,
        api_secret=secret,
        poll=PollConfig(
            main_balance=interval,
            collateral=interval,
            history=60.0,
            trade_balance=interval,
        ),
    )


@pytest.fixture
async def exporters() -> AsyncIterator[Callable[[Config], Any]]:
    started: list[Exporter] = []

    async def start(config: Config) -> Exporter:
        exporter = Exporter(config)
        started.append(exporter)
        await exporter.start()
        return exporter

    yield start
    for exporter in started:
        await exporter.stop()


async def test_exporter_exposes_polled_balances_and_summary_and_becomes_ready(
    simulator, make_config, exporters
) -> None:
    exporter = await exporters(make_config([account(simulator.url)]))
    await wait_for(lambda: exporter.health.readiness()[0], timeout=10)
    result = await scrape(exporter.metrics_url)
    assert result.value("whitebit_balance", account="acct", wallet="main", asset="BTC") == 1.5
    assert result.value("whitebit_collateral_margin_fraction", account="acct") == math.inf
    # The WebSocket is up, so the spot wallet is its, and the trade balance is no longer polled
    # (it may have been once, before the WebSocket came up).
    assert result.value("whitebit_balance", account="acct", wallet="spot", asset="BTC") == 4.0
    trade_polls = requests_to(simulator, TRADE_BALANCE)
    main_polls = requests_to(simulator, MAIN_BALANCE)
    await wait_for(lambda: requests_to(simulator, MAIN_BALANCE) >= main_polls + 5, timeout=10)
    assert requests_to(simulator, TRADE_BALANCE) == trade_polls
    assert result.value("whitebit_up", account="acct") == 1.0
    assert (
        result.value(
            "whitebit_rest_requests_total",
            account="acct",
            endpoint=MAIN_BALANCE,
            code="200",
        )
        >= 1
    )


async def test_a_failing_poll_shows_on_ready_with_its_reason(simulator, make_config, exporters) -> None:
    exporter = await exporters(make_config([account(simulator.url, secret="wrong-secret")]))
    async with aiohttp.ClientSession() as http:

        async def failing_lines() -> list[str]:
            async with http.get(exporter.metrics_url + "/-/ready") as response:
                if response.status != 503:
                    return []
                return (await response.text()).splitlines()

        async def shows_auth_failure() -> bool:
            return any(line.startswith("rest:main_balance acct: /api") for line in await failing_lines())

        await wait_for(shows_auth_failure, timeout=10)
        lines = await failing_lines()
    assert f"rest:main_balance acct: {MAIN_BALANCE}: auth error (HTTP 401, code 10): Unauthorized request." in lines
    assert "wrong-secret" not in "\n".join(lines)
    result = await scrape(exporter.metrics_url)
    assert result.value("whitebit_up", account="acct") == 0.0


async def test_a_hanging_poll_blocks_neither_the_other_polls_nor_a_scrape(make_config, exporters) -> None:
    release = asyncio.Event()
    collateral_polls = 0

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async def summary(request: web.Request) -> web.Response:
        nonlocal collateral_polls
        collateral_polls += 1
        return web.json_response(
            {
                "equity": "10",
                "margin": "0",
                "freeMargin": "10",
                "marginFraction": "1000000000000000000000",
            }
        )

    app = web.Application()
    app.router.add_post(MAIN_BALANCE, hang)
    app.router.add_post(COLLATERAL_SUMMARY, summary)
    app.router.add_post(COLLATERAL_BALANCE_SUMMARY, lambda_json([]))
    app.router.add_post(TRADE_BALANCE, lambda_json({}))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        before = time.time()
        exporter = await exporters(make_config([account(f"http://{host}:{port}")]))
        await wait_for(lambda: collateral_polls >= 5, timeout=10)
        result = await scrape(exporter.metrics_url)
        assert result.value("whitebit_collateral_equity", account="acct") == 10.0
        # The main wallet never answered: no balance, and its freshness is still the start time,
        # from which WhitebitBalanceStale counts.
        assert not [labels for labels, _ in result.samples("whitebit_balance") if labels["wallet"] == "main"]
        since = result.value("whitebit_balance_last_update_timestamp_seconds", account="acct", wallet="main")
        assert since is not None and before <= since <= time.time()
        await wait_for(lambda: collateral_polls >= 8, timeout=10)
        result = await scrape(exporter.metrics_url)
        assert result.value("whitebit_balance_last_update_timestamp_seconds", account="acct", wallet="main") == since
    finally:
        release.set()
        await runner.cleanup()


def lambda_json(document: Any) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(document)

    return handler
