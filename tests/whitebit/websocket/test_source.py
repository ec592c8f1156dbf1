"""The private WebSocket source against the simulator, over real sockets, scraped over real HTTP.

After every scenario the scraped metrics (parsed) must equal what the simulator's exchange holds:
open orders and ``left`` per market/side/type, spot available + freeze and freeze, collateral B and
b (:func:`ws_harness.assert_matches`). Nothing here sleeps for a fixed time: every wait is for a
condition, with a timeout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import re
import socket
import time
from decimal import Decimal as D

import pytest

from exporter.core.backoff import Backoff
from exporter.core.health import HealthRegistry
from exporter.simulator.model import (
    SIDE_BUY,
    SIDE_SELL,
    TYPE_MARKET,
    TYPE_STOP_LIMIT,
    TYPE_STOP_MARKET,
    OrderEvent,
)
from exporter.whitebit.balances import AccountBalances
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.rest import WEBSOCKET_TOKEN, RestClient, RestMetrics, RestTransport
from exporter.whitebit.websocket.snapshot import MIN_REQUESTS
from exporter.whitebit.websocket.source import WebSocketSource
from tests.helpers import logfmt_lines, wait_for
from tests.whitebit.websocket.book import open_ids, pending_events
from tests.whitebit.websocket.churn import Churn
from tests.ws_harness import FAST, MARKETS, account, assert_matches, running, signed_token_provider

SPOT_AND_ORDERS = ("open_orders", "left", "spot", "frozen")


def closed_port() -> int:
    """A loopback port that was free a moment ago: connecting to it is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def events(result, market: str = "BTC_USDT", account: str = "main") -> dict[str, float]:
    return {
        labels["event"]: value
        for labels, value in result.samples("whitebit_order_events_total")
        if labels["account"] == account and labels["market"] == market
    }


async def test_snapshot_on_connect_matches_orders_placed_before_the_exporter_connected() -> None:
    async with running(page_limit=2) as h:
        ex = h.sim.exchange
        ids = [ex.place_order("main", "BTC_USDT", SIDE_BUY, D("0.01"), price=D(50000 + i)).id for i in range(5)]
        ex.place_order("main", "ETH_USDT", SIDE_SELL, D("1.5"), price=D(3100), rpi=True)
        ex.place_order(
            "main",
            "BTC_USDT",
            SIDE_SELL,
            D("0.2"),
            order_type=TYPE_STOP_LIMIT,
            price=D(61000),
            activation_price=D(60500),
        )
        result = await assert_matches(h)
        assert open_ids(h.sources["main"].book) >= set(ids)
        assert (
            result.value(
                "whitebit_open_orders",
                account="main",
                market="BTC_USDT",
                side="buy",
                type="limit",
            )
            == 5
        )
        assert (
            result.value(
                "whitebit_open_orders",
                account="main",
                market="BTC_USDT",
                side="sell",
                type="stop_limit",
            )
            == 1
        )
        # An RPI order counts like any other.
        assert (
            result.value(
                "whitebit_open_orders",
                account="main",
                market="ETH_USDT",
                side="sell",
                type="limit",
            )
            == 1
        )
        assert (
            result.value(
                "whitebit_open_orders_left",
                account="main",
                market="ETH_USDT",
                side="sell",
            )
            == 1.5
        )
        # Snapshot records are state, not events.
        assert events(result)["new"] == 0
        assert result.value("whitebit_up", account="main") == 1
        assert await h.ready() == (200, "ready\n")


async def test_modify_counts_one_modify_event_when_finish_comes_first() -> None:
    async with running() as h:
        await assert_matches(h)
        ex = h.sim.exchange
        order = ex.place_order(
            "main",
            "BTC_USDT",
            SIDE_BUY,
            D("0.5"),
            price=D(50000),
            client_order_id="bot-1",
        )
        await wait_for(lambda: order.id in open_ids(h.sources["main"].book))
        replacement = ex.modify_order("main", order.id, price=D(50100), amount=D("0.4"))
        await wait_for(lambda: open_ids(h.sources["main"].book) == {replacement.id})
        result = await assert_matches(h)
        assert (
            result.value(
                "whitebit_open_orders_left",
                account="main",
                market="BTC_USDT",
                side="buy",
            )
            == 0.4
        )
        await wait_for(lambda: pending_events(h.sources["main"].book.events) == 0)
        counted = events(await h.scrape())
        assert counted == {
            "new": 1,
            "update": 0,
            "finish": 0,
            "modify": 1,
            "stop_activated": 0,
        }


async def test_modify_counts_one_modify_event_when_new_comes_first() -> None:
    async with running() as h:
        await assert_matches(h)
        ex = h.sim.exchange
        order = ex.place_order("main", "ETH_USDT", SIDE_SELL, D(2), price=D(3200), client_order_id="mm-7")
        await wait_for(lambda: order.id in open_ids(h.sources["main"].book))
        replacement = ex.modify_order("main", order.id, price=D(3150), new_first=True)
        # The aggregates are the same before and after this modify: wait for the ids to change.
        await wait_for(lambda: open_ids(h.sources["main"].book) == {replacement.id})
        await assert_matches(h)
        await wait_for(lambda: pending_events(h.sources["main"].book.events) == 0)
        counted = events(await h.scrape(), "ETH_USDT")
        assert counted == {
            "new": 1,
            "update": 0,
            "finish": 0,
            "modify": 1,
            "stop_activated": 0,
        }


async def test_stop_activation_is_a_second_new_with_the_same_id_and_keeps_one_order() -> None:
    async with running() as h:
        await assert_matches(h)
        ex = h.sim.exchange
        stop = ex.place_order(
            "main",
            "BTC_USDT",
            SIDE_BUY,
            D("0.1"),
            order_type=TYPE_STOP_MARKET,
            activation_price=D(61000),
        )
        await wait_for(lambda: stop.id in open_ids(h.sources["main"].book))
        ex.activate_stop("main", stop.id)
        await wait_for(lambda: h.sources["main"].book.events.counts()[("BTC_USDT", "stop_activated")] == 1)
        result = await assert_matches(h)
        assert (
            result.value(
                "whitebit_open_orders",
                account="main",
                market="BTC_USDT",
                side="buy",
                type="stop_market",
            )
            == 1
        )
        ex.fill_order("main", stop.id, D("0.04"))
        ex.fill_order("main", stop.id)
        result = await assert_matches(h)
        assert (
            result.value(
                "whitebit_open_orders",
                account="main",
                market="BTC_USDT",
                side="buy",
                type="stop_market",
            )
            == 0
        )
        await wait_for(lambda: pending_events(h.sources["main"].book.events) == 0)
        assert events(await h.scrape()) == {
            "new": 1,
            "update": 1,
            "finish": 1,
            "modify": 0,
            "stop_activated": 1,
        }


async def test_instant_fill_sends_a_lone_finish_for_an_unseen_id() -> None:
    async with running() as h:
        await assert_matches(h)
        ex = h.sim.exchange
        ex.place_instant_fill("main", "BTC_USDT", SIDE_BUY, D("0.05"), D(60000))
        ex.place_order("main", "BTC_USDT", SIDE_SELL, D("0.01"), order_type=TYPE_MARKET)
        await wait_for(lambda: h.sources["main"].book.events.counts()[("BTC_USDT", "finish")] == 2)
        result = await assert_matches(h)
        assert len(h.sources["main"].book) == 0
        assert events(result)["new"] == 0


async def test_partial_fill_then_cancel_leaves_nothing_open() -> None:
    async with running() as h:
        await assert_matches(h)
        ex = h.sim.exchange
        order = ex.place_order("main", "ETH_USDT", SIDE_BUY, D(3), price=D(2900), client_order_id="pf")
        ex.fill_order("main", order.id, D("1.25"))
        result = await assert_matches(h)
        assert (
            result.value(
                "whitebit_open_orders_left",
                account="main",
                market="ETH_USDT",
                side="buy",
            )
            == 1.75
        )
        ex.cancel_order("main", order.id)
        result = await assert_matches(h)
        assert (
            result.value(
                "whitebit_open_orders",
                account="main",
                market="ETH_USDT",
                side="buy",
                type="limit",
            )
            == 0
        )
        assert (
            result.value(
                "whitebit_open_orders_left",
                account="main",
                market="ETH_USDT",
                side="buy",
            )
            == 0
        )
        await wait_for(lambda: pending_events(h.sources["main"].book.events) == 0)
        assert events(await h.scrape(), "ETH_USDT") == {
            "new": 1,
            "update": 1,
            "finish": 1,
            "modify": 0,
            "stop_activated": 0,
        }


async def test_orders_filled_and_cancelled_while_disconnected_disappear_after_reconnect() -> None:
    async with running() as h:
        ex = h.sim.exchange
        keep = ex.place_order("main", "BTC_USDT", SIDE_BUY, D("0.3"), price=D(50000))
        filled = ex.place_order("main", "BTC_USDT", SIDE_SELL, D("0.2"), price=D(70000))
        cancelled = ex.place_order("main", "ETH_USDT", SIDE_BUY, D(1), price=D(2000))
        partly = ex.place_order("main", "ETH_USDT", SIDE_SELL, D(4), price=D(4000))
        await assert_matches(h)
        source = h.sources["main"]
        await h.sim.ws.drop("main")
        # Everything below happens while no connection exists: nothing of it is ever pushed.
        assert h.sim.ws.connections("main") == 0
        ex.fill_order("main", filled.id)
        ex.cancel_order("main", cancelled.id)
        ex.fill_order("main", partly.id, D("1.5"))
        added = ex.place_order("main", "BTC_USDT", SIDE_BUY, D("0.7"), price=D(49000))
        ex.transfer_to_collateral("main", "USDT", D("123.45"))
        ex.borrow("main", "USDT", D(50))
        await wait_for(lambda: source.reconnects >= 1)
        result = await assert_matches(h)
        assert open_ids(source.book) == {keep.id, partly.id, added.id}
        assert result.value("whitebit_websocket_reconnects_total", account="main") >= 1
        assert result.value("whitebit_collateral_borrowed", account="main", asset="USDT") == 50


async def test_balance_update_with_one_asset_of_many_keeps_the_others() -> None:
    async with running() as h:
        await assert_matches(h)
        before = h.balances["main"].spot()
        assert {"USDT", "BTC", "ETH"} <= set(before)
        updated_before = h.balances["main"].updated_at("spot")
        h.sim.exchange.transfer_to_collateral("main", "BTC", D("0.5"))
        await wait_for(lambda: h.balances["main"].spot()["BTC"] != before["BTC"])
        result = await assert_matches(h)
        after = h.balances["main"].spot()
        assert after["USDT"] == before["USDT"] and after["ETH"] == before["ETH"]
        assert after["BTC"] == (D("3.5"), D(0))
        assert result.value("whitebit_balance", account="main", wallet="collateral", asset="BTC") == 0.75
        assert result.value("whitebit_balance", account="main", wallet="collateral", asset="USDT") == 5000
        assert h.balances["main"].updated_at("spot") >= updated_before
        stamp = result.value(
            "whitebit_balance_last_update_timestamp_seconds",
            account="main",
            wallet="spot",
        )
        assert stamp == h.balances["main"].updated_at("spot")


async def test_failed_authorize_is_counted_shown_on_ready_and_retried() -> None:
    async with running() as h:

        async def bad_token() -> str:
            return "not-a-token"

        h.token_override["main"] = bad_token
        source = h.sources["main"]
        await wait_for(lambda: source.errors["authorize"] >= 2, timeout=10)
        result = await h.scrape()
        assert result.value("whitebit_websocket_errors_total", account="main", method="authorize") >= 2
        assert result.value("whitebit_websocket_connected", account="main") == 0
        assert result.value("whitebit_up", account="main") == 0
        status, body = await h.ready()
        assert status == 503 and "websocket main" in body and "authorize failed" in body
        assert "not-a-token" not in body
        del h.token_override["main"]
        await assert_matches(h)
        assert (await h.ready())[0] == 200


async def test_failed_subscription_is_an_error_counted_and_retried_never_silence() -> None:
    # The exporter asks for a market the exchange does not list: ordersPending_subscribe fails. The
    # channel is retried on the same connection while the balance channels serve.
    async with running(exporter_markets=("BTC_USDT", "NOPE_USDT")) as h:
        source = h.sources["main"]
        await wait_for(lambda: source.errors["ordersPending_subscribe"] >= 2, timeout=10)
        result = await h.scrape()
        assert (
            result.value(
                "whitebit_websocket_errors_total",
                account="main",
                method="ordersPending_subscribe",
            )
            >= 2
        )
        assert result.value("whitebit_websocket_connected", account="main") == 1
        assert result.value("whitebit_websocket_channel_synced", account="main", channel="ordersPending") == 0
        assert result.value("whitebit_websocket_channel_synced", account="main", channel="balanceSpot") == 1
        assert result.value("whitebit_up", account="main") == 0
        assert source.reconnects == 0
        status, body = await h.ready()
        assert status == 503 and "channel ordersPending: ordersPending_subscribe failed" in body


async def test_silent_server_is_detected_by_the_missing_pong_and_the_source_reconnects() -> None:
    async with running() as h:
        await assert_matches(h)
        source = h.sources["main"]
        h.sim.ws.silence("main", True)
        await wait_for(lambda: not source.connected, timeout=10)
        assert source.errors["ping"] >= 1
        result = await h.scrape()
        assert result.value("whitebit_websocket_connected", account="main") == 0
        assert result.value("whitebit_up", account="main") == 0
        # Values stay, with their timestamps, while disconnected.
        assert result.value("whitebit_balance", account="main", wallet="spot", asset="USDT") == 250000
        assert result.value("whitebit_websocket_last_message_timestamp_seconds", account="main") is not None
        status, body = await h.ready()
        assert status == 503 and "no pong within" in body
        h.sim.ws.silence(None, False)
        h.sim.exchange.place_order("main", "BTC_USDT", SIDE_BUY, D("0.01"), price=D(40000))
        await assert_matches(h)
        assert source.reconnects >= 1


@pytest.mark.parametrize("form", ["array", "object"])
async def test_balance_spot_updates_apply_in_either_documented_form(form: str) -> None:
    # The channel page sends params as an array of objects, a docs guide's example as one object.
    async with running() as h:
        await assert_matches(h)
        h.sim.ws.spot_update_form = form
        for price in (50000, 50100, 50200):
            h.sim.exchange.place_order("main", "BTC_USDT", SIDE_BUY, D("0.01"), price=D(price))
        await assert_matches(h, parts=("spot", "frozen"))
        assert sum(h.sources["main"].invalid.values()) == 0


async def test_an_idle_wallet_stays_fresh_while_the_connection_is_live_and_goes_stale_when_it_is_not() -> None:
    # Freshness is not change: nothing moves, yet every pong confirms the subscribed wallets.
    async with running() as h:
        await assert_matches(h)
        source = h.sources["main"]

        def current_as_of(wallet: str) -> float:
            value = source.balances.current_as_of(wallet)
            assert value is not None
            return value

        first = {wallet: current_as_of(wallet) for wallet in ("spot", "collateral")}
        await wait_for(lambda: all(current_as_of(w) > first[w] + 1.5 for w in first), timeout=10)
        result = await h.scrape()
        for wallet in first:
            age = time.time() - result.value(
                "whitebit_balance_last_update_timestamp_seconds", account="main", wallet=wallet
            )
            assert 0 <= age < FAST["ping_interval"] + FAST["pong_timeout"]
        # The server goes silent: no pong, no confirmation; the timestamps stop where they were.
        h.sim.ws.silence("main", True)
        try:
            await wait_for(lambda: not source.connected, timeout=10)
            stopped = {wallet: current_as_of(wallet) for wallet in first}
            # A whole failed reconnect (no reply within pong_timeout) later, nothing moved.
            reconnects = source.reconnects
            await wait_for(lambda: source.reconnects >= reconnects + 2 and not source.connected, timeout=15)
            result = await h.scrape()
            for wallet, value in stopped.items():
                scraped = result.value("whitebit_balance_last_update_timestamp_seconds", account="main", wallet=wallet)
                assert scraped == value
        finally:
            h.sim.ws.silence(None, False)


async def test_a_source_cancelled_as_its_token_arrives_stops() -> None:
    # Python 3.11's asyncio.wait_for swallowed a cancellation that arrived as the awaited call
    # finished (https://github.com/python/cpython/issues/86296): the source then connected and ran
    # on, and the shutdown that cancelled it waited forever. The token request is one such await.
    async with running(autostart=False) as h:
        creds = account("main")
        token = await signed_token_provider(h.sim.url, creds.api_key, creds.api_secret)()
        tasks: list[asyncio.Task[None]] = []

        async def cancelled_as_it_answers() -> str:
            tasks[0].cancel()
            return token

        h.token_override["main"] = cancelled_as_it_answers
        h.start()
        tasks.extend(h.tasks)
        done, _ = await asyncio.wait(tasks, timeout=10)
        assert done == set(tasks) and tasks[0].cancelled()
        assert not h.sources["main"].connected


async def test_garbage_is_counted_by_reason_and_skipped_without_losing_the_connection() -> None:
    async with running(("main", "other")) as h:
        await assert_matches(h, "main")
        await assert_matches(h, "other")
        source = h.sources["main"]
        good_order = {
            "id": 1,
            "market": "BTC_USDT",
            "type": 1,
            "side": 2,
            "left": "1",
            "client_order_id": "",
            "status": "OPEN",
        }
        frames = {
            "bad_json": "{not json",
            "not_an_object": "[1, 2, 3]",
            "unknown_method": json.dumps({"id": None, "method": "surprise_update", "params": []}),
            "missing_field": json.dumps(
                {
                    "id": None,
                    "method": "ordersPending_update",
                    "params": [1, {"id": 5, "market": "BTC_USDT"}],
                }
            ),
            "wrong_type": json.dumps(
                {
                    "id": None,
                    "method": "ordersPending_update",
                    "params": [1, {**good_order, "id": "7"}],
                }
            ),
            "bad_value": json.dumps(
                {
                    "id": None,
                    "method": "balanceSpot_update",
                    "params": [{"USDT": {"available": "lots", "freeze": "0"}}],
                }
            ),
            "unknown_market": json.dumps(
                {
                    "id": None,
                    "method": "ordersPending_update",
                    "params": [1, {**good_order, "market": "DOGE_USDT"}],
                }
            ),
            "unexpected_reply": json.dumps({"id": 987654, "result": "pong", "error": None}),
        }
        for text in frames.values():
            await h.sim.ws.send_raw("main", text)
        await wait_for(lambda: all(source.invalid[reason] == 1 for reason in frames), timeout=5)
        # The connection survived and keeps applying real events.
        h.sim.exchange.place_order("main", "BTC_USDT", SIDE_SELL, D("0.25"), price=D(65000))
        h.sim.exchange.place_order("other", "ETH_USDT", SIDE_BUY, D(1), price=D(2500))
        result = await assert_matches(h, "main")
        await assert_matches(h, "other")
        for reason in frames:
            assert (
                result.value(
                    "whitebit_websocket_messages_invalid_total",
                    account="main",
                    reason=reason,
                )
                == 1
            )
            assert (
                result.value(
                    "whitebit_websocket_messages_invalid_total",
                    account="other",
                    reason=reason,
                )
                == 0
            )
        assert source.reconnects == 0
        # Nothing from the garbage reached the state: the balance is untouched, order 7 does not exist.
        assert 7 not in open_ids(source.book) and 1 not in open_ids(source.book)
        assert result.value("whitebit_balance", account="main", wallet="spot", asset="USDT") == 250000


async def test_token_requests_stay_within_the_budget_during_a_reconnect_storm() -> None:
    async with running(token_budget=3, token_window=3600.0) as h:
        await assert_matches(h)

        async def bad_token() -> str:
            h.tokens_fetched["bad"] = h.tokens_fetched.get("bad", 0) + 1
            return "not-a-token"

        h.token_override["main"] = bad_token
        await h.sim.ws.drop("main")
        await wait_for(lambda: h.tokens_fetched.get("bad", 0) == 2, timeout=10)
        await wait_for(lambda: "token budget" in h.sources["main"].health.reason, timeout=10)
        status, body = await h.ready()
        assert status == 503 and "token budget" in body
        # The budget of 3 per hour is spent (1 good + 2 bad): the source waits instead of asking again.
        assert h.tokens_fetched["main"] == 3


async def test_scenario_activity_with_drops_ends_with_metrics_equal_to_the_simulator() -> None:
    async with running(page_limit=3) as h:
        await assert_matches(h)
        source = h.sources["main"]
        for round_ in range(4):
            for _ in range(60):
                h.sim.scenario.step()
            if round_ % 2 == 0:
                await h.sim.ws.drop("main", abrupt=round_ == 0)
                for _ in range(30):  # activity nobody is told about
                    h.sim.scenario.step()
            await assert_matches(h)
        assert source.reconnects == 2
        assert sum(source.invalid.values()) == 0
        assert sum(source.book.events.counts().values()) > 0  # the scenario did trade


async def test_a_failing_balance_margin_channel_is_shown_and_retried_while_spot_and_orders_serve() -> None:
    # What balanceMargin answers on an account without collateral trading is undocumented: here, an error.
    async with running(autostart=False, backoff=Backoff(0.05, 0.4)) as h:
        hub, ex = h.sim.ws, h.sim.exchange
        hub.fail_channel("main", "balanceMargin", 2, "collateral trading is not enabled")
        ex.place_order("main", "BTC_USDT", SIDE_BUY, D("0.2"), price=D(50000), client_order_id="a")
        ex.place_order("main", "ETH_USDT", SIDE_SELL, D(3), price=D(3100))
        h.start()
        source = h.sources["main"]
        await assert_matches(h, parts=SPOT_AND_ORDERS)
        # The good channels keep following on the same connection.
        ex.place_order("main", "ETH_USDT", SIDE_BUY, D(1), price=D(2900))
        ex.transfer_main_to_spot("main", "USDT", D(100))
        result = await assert_matches(h, parts=SPOT_AND_ORDERS)
        assert result.value("whitebit_websocket_connected", account="main") == 1
        channel = {
            labels["channel"]: value
            for labels, value in result.samples("whitebit_websocket_channel_synced")
            if labels["account"] == "main"
        }
        assert channel == {"balanceSpot": 1, "balanceMargin": 0, "ordersPending": 1}
        # Not down: the collateral wallet's REST fallback poll stands in (its own health says whether
        # that works); /-/ready lists the channel as degraded.
        assert result.value("whitebit_up", account="main") == 1
        assert result.value("whitebit_balance", account="main", wallet="collateral", asset="USDT") is None
        status, body = await h.ready()
        assert status == 200
        assert body.startswith("ready\n")
        assert (
            "degraded: websocket main: channel balanceMargin: balanceMargin_subscribe failed: error 2 collateral"
            in body
        )
        assert body.rstrip().endswith("the collateral wallet is polled over REST meanwhile")
        # Retried with a growing backoff, never hammering: two more tries take at least 2 × 0.8 × 0.4 s.
        await wait_for(lambda: source.errors["balanceMargin_subscribe"] >= 5, timeout=10)
        delay = float(re.findall(r"retrying in ([0-9.]+)s", source.channels[1].reason)[0])
        assert 0.3 <= delay <= 0.4
        loop = asyncio.get_running_loop()
        started, tries = loop.time(), hub.requests_served["balanceMargin_subscribe"]
        await wait_for(lambda: hub.requests_served["balanceMargin_subscribe"] >= tries + 2, timeout=10)
        assert loop.time() - started >= 0.6
        result = await h.scrape()
        assert result.value("whitebit_websocket_errors_total", account="main", method="balanceMargin_subscribe") >= 5
        assert source.errors["balanceMargin_request"] == 0  # a channel is read only once subscribed
        assert not source.supplies("collateral")  # the REST fallback keeps the collateral wallet meanwhile
        assert source.supplies("spot")
        # WhiteBIT stops refusing: the channel recovers on the same connection.
        hub.fail_channel("main", "balanceMargin", None)
        ex.borrow("main", "USDT", D(25))
        result = await assert_matches(h)
        await wait_for(lambda: all(channel.synced for channel in source.channels), timeout=10)
        result = await h.scrape()
        assert result.value("whitebit_websocket_channel_synced", account="main", channel="balanceMargin") == 1
        assert result.value("whitebit_collateral_borrowed", account="main", asset="USDT") == 25
        assert result.value("whitebit_up", account="main") == 1
        assert await h.ready() == (200, "ready\n")
        assert source.supplies("collateral") and source.supplies("spot")
        ex.borrow("main", "USDT", D(5))  # and its pushes apply
        await assert_matches(h)
        assert source.reconnects == 0 and hub.connections("main") == 1


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    """What the source logged above debug level, parsed (not the simulator's lines)."""
    return [
        line
        for line in logfmt_lines(caplog.records)
        if line["level"] != "debug" and line["logger"].startswith("exporter.whitebit.")
    ]


async def test_a_token_that_cannot_be_had_is_one_line_with_its_cause_however_many_reconnects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    port = closed_port()
    limiter = RateLimiter()
    transport = RestTransport(limiter, RestMetrics(limiter))
    creds = account("main")
    refused = RestClient(
        account="main",
        base_url=f"http://127.0.0.1:{port}",
        api_key=creds.api_key,
        api_secret=creds.api_secret,
        transport=transport,
    )
    try:
        async with running(autostart=False, backoff=Backoff(0.05, 0.2)) as h:
            source = h.sources["main"]
            h.token_override["main"] = refused.websocket_token
            h.start()
            await wait_for(lambda: source.errors["token"] >= 4, timeout=10)
            cause = f"token request failed: {WEBSOCKET_TOKEN}: connection refused (127.0.0.1:{port})"
            assert source.health.reason.startswith(f"disconnected: {cause}; reconnecting in ")
            del h.token_override["main"]
            await wait_for(lambda: source.health.is_ok, timeout=10)
            failures = source.errors["token"]
    finally:
        await transport.close()
    lines = outage_lines(caplog)
    assert [(line["level"], line["msg"], line.get("reason"), line.get("failures")) for line in lines] == [
        ("warning", "source failing", cause, None),
        ("info", "websocket synced", None, None),
        ("info", "source recovered", None, str(failures)),
    ]
    assert all(line["account"] == "main" and "channel" not in line for line in lines)


async def test_a_token_provider_that_times_out_says_so_never_an_empty_timeouterror() -> None:
    async with running(autostart=False, backoff=Backoff(0.05, 0.2)) as h:
        source = h.sources["main"]

        async def slow_token() -> str:
            # Its own limit, not the source's: the source cannot know it, and says only "timed out".
            await asyncio.wait_for(asyncio.Event().wait(), timeout=0.01)
            return "never"

        h.token_override["main"] = slow_token
        h.start()
        await wait_for(lambda: source.errors["token"] >= 1, timeout=10)
        assert source.health.reason.startswith("disconnected: token request failed: timed out; reconnecting in ")


async def test_a_websocket_that_cannot_connect_names_the_refused_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = closed_port()
    health = HealthRegistry()

    async def token() -> str:
        return "a-token-never-sent"

    source = WebSocketSource(
        "main",
        f"ws://127.0.0.1:{port}/ws",
        MARKETS,
        token,
        AccountBalances("main"),
        health,
        **{**FAST, "backoff": Backoff(0.02, 0.05)},
    )
    task = asyncio.create_task(source.run())
    try:
        await wait_for(lambda: source.reconnects >= 5, timeout=10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    cause = f"cannot connect: connection refused (127.0.0.1:{port})"
    assert [(line["level"], line["msg"], line.get("reason")) for line in outage_lines(caplog)] == [
        ("warning", "source failing", cause)
    ]


async def test_a_refused_channel_is_one_line_while_retried_and_one_when_it_syncs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running(autostart=False, backoff=Backoff(0.02, 0.05)) as h:
        hub = h.sim.ws
        hub.fail_channel("main", "balanceMargin", 2, "collateral trading is not enabled")
        h.start()
        source = h.sources["main"]
        await wait_for(lambda: source.errors["balanceMargin_subscribe"] >= 6, timeout=10)
        hub.fail_channel("main", "balanceMargin", None)
        await wait_for(lambda: all(channel.synced for channel in source.channels), timeout=10)
        tries = source.errors["balanceMargin_subscribe"]
    # Every try and its error reply are detail, at debug: one line when the channel fails, one when it syncs.
    lines = outage_lines(caplog)
    assert [(line["level"], line["msg"], line.get("channel"), line.get("failures")) for line in lines] == [
        ("warning", "source failing", "balanceMargin", None),
        ("info", "websocket synced", None, None),
        ("info", "source recovered", "balanceMargin", str(tries)),
    ]
    assert lines[0]["reason"] == "balanceMargin_subscribe failed: error 2 collateral trading is not enabled"


@pytest.mark.parametrize("newest_first", [True, False], ids=["newest-first", "oldest-first"])
@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_snapshot_under_churn_converges_to_the_simulator_and_counts_every_event_once(
    newest_first: bool, seed: int
) -> None:
    async with running(autostart=False, page_limit=17, modify_window=0.3) as h:
        hub, ex = h.sim.ws, h.sim.exchange
        ex.list_newest_first = newest_first
        hub.interleave = 0.01  # replies and pushes overtake each other by up to 10 ms
        hub.rng.seed(seed)
        churn = Churn(ex, random.Random(seed), "main", MARKETS, scale=D("0.0001"))
        for _ in range(500):  # about 250 open orders per market
            churn.place()
        # The events the exporter receives: those emitted while its ordersPending subscription is active.
        received: list[OrderEvent] = []
        ex.subscribe(
            lambda e: (
                received.append(e)
                if isinstance(e, OrderEvent) and "ordersPending" in hub.subscriptions("main")
                else None
            )
        )
        source = h.sources["main"]
        during_paging = 0

        async def keep_churning() -> None:
            nonlocal during_paging
            while True:
                for _ in range(3):
                    churn.step()
                if received and not source.connected:
                    during_paging += 3
                await asyncio.sleep(0.001)  # paces the load; nothing waits on it

        h.start()
        churning = asyncio.create_task(keep_churning())
        try:
            await wait_for(lambda: source.connected, timeout=30)
            count = len(churn.emitted)
            await wait_for(lambda: len(churn.emitted) >= count + 200, timeout=30)  # and some more after it
        finally:
            churning.cancel()
            await asyncio.gather(churning, return_exceptions=True)
        assert during_paging > 50  # the orders really moved while the snapshot was read
        await assert_matches(h, timeout=20)
        await wait_for(lambda: open_ids(source.book) == {o.id for o in ex.open_orders("main")}, timeout=10)
        await wait_for(lambda: pending_events(source.book.events) == 0, timeout=5)
        result = await h.scrape()
        counted = {
            (labels["market"], labels["event"]): value
            for labels, value in result.samples("whitebit_order_events_total")
            if labels["account"] == "main" and value
        }
        assert counted == churn.expected(received)
        assert source.reconnects == 0 and sum(source.invalid.values()) == 0
        # Re-reads stay bounded: a few pages more than the lists needed.
        pages = sum(-(-len(ex.open_orders("main", m)) // 16) + 1 for m in MARKETS)
        assert hub.requests_served["ordersPending_request"] <= 3 * pages + 2 * MIN_REQUESTS


async def test_a_balance_push_computed_after_the_snapshot_but_arriving_before_it_is_kept() -> None:
    # Replies take 0.3 s longer than pushes: the transfer below is pushed before the snapshot that
    # predates it arrives. Dropping pushes that come before the snapshot would lose it for good.
    async with running(autostart=False) as h:
        hub, ex = h.sim.ws, h.sim.exchange
        hub.reply_delay = 0.3
        h.start()
        await wait_for(lambda: hub.requests_served["balanceSpot_request"] == 1, timeout=10)
        await wait_for(lambda: hub.requests_served["balanceMargin_request"] == 1, timeout=10)
        ex.transfer_to_collateral("main", "ETH", D("2.5"))  # spot ETH and collateral ETH, nothing after it
        assert h.balances["main"].updated_at("spot") is None  # the snapshot is still on its way
        result = await assert_matches(h)
        assert result.value("whitebit_balance", account="main", wallet="spot", asset="ETH") == 57.5
        assert result.value("whitebit_balance", account="main", wallet="collateral", asset="ETH") == 2.5
