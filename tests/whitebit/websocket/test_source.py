"""The private WebSocket source against the simulator, over real sockets, scraped over real HTTP.

After every scenario the scraped metrics (parsed) must equal what the simulator's exchange holds:
open orders and ``left`` per market/side/type, spot available + freeze and freeze, collateral B and
b (:func:`ws_harness.assert_matches`). Nothing here sleeps for a fixed time: every wait is for a
condition, with a timeout.
"""

from __future__ import annotations

import json
from decimal import Decimal as D

from exporter.simulator.model import (
    SIDE_BUY,
    SIDE_SELL,
    TYPE_MARKET,
    TYPE_STOP_LIMIT,
    TYPE_STOP_MARKET,
)
from tests.helpers import wait_for
from tests.whitebit.websocket.book import open_ids, pending_events
from tests.ws_harness import assert_matches, running


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
        result = await assert_matches(h)
        assert open_ids(h.sources["main"].book) == {replacement.id}
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
        await assert_matches(h)
        assert open_ids(h.sources["main"].book) == {replacement.id}
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
    # The exporter asks for a market the exchange does not list: ordersPending_subscribe fails.
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
        assert result.value("whitebit_websocket_connected", account="main") == 0
        status, body = await h.ready()
        assert status == 503 and "ordersPending_subscribe failed" in body


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
