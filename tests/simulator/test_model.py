"""The simulated exchange emits WhiteBIT's documented events and keeps balances consistent."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from exporter.simulator.model import (
    EVENT_FINISH,
    EVENT_NEW,
    EVENT_UPDATE,
    SIDE_BUY,
    SIDE_SELL,
    TYPE_STOP_LIMIT,
    Exchange,
    ExchangeError,
    MarginBalanceEvent,
    OrderEvent,
    SpotBalanceEvent,
    WebhookEvent,
)


@pytest.fixture
def exchange() -> tuple[Exchange, list]:
    clock = iter(float(1_700_000_000 + i) for i in range(10_000))
    x = Exchange(["BTC_USDT", "ETH_USDT"], clock=lambda: next(clock))
    x.add_account(
        "main",
        api_key="key",
        api_secret="secret",
        webhook_key="wkey",
        webhook_secret="wsecret",
        main={"USDT": "1000"},
        spot={"USDT": "100000", "BTC": "2", "ETH": "5"},
        collateral={"USDT": "500"},
    )
    events: list = []
    x.subscribe(events.append)
    return x, events


def order_events(events: list) -> list[tuple[int, int, str]]:
    return [(e.event_id, e.order["id"], e.order["status"]) for e in events if isinstance(e, OrderEvent)]


def test_limit_order_freezes_what_it_could_spend(exchange):
    x, events = exchange
    x.place_order("main", "BTC_USDT", SIDE_BUY, D("0.5"), price=D("59000"))
    assert x.snapshot("main")["spot"]["USDT"] == {"available": "70500", "freeze": "29500"}
    assert [type(e) for e in events] == [SpotBalanceEvent, OrderEvent]
    assert events[0].balances == {"USDT": {"available": "70500", "freeze": "29500"}}


def test_modify_is_finish_then_new_with_a_new_id_and_same_client_order_id(exchange):
    x, events = exchange
    order = x.place_order("main", "BTC_USDT", SIDE_BUY, D("0.5"), price=D("59000"), client_order_id="mon-1")
    events.clear()
    replacement = x.modify_order("main", order.id, price=D("58000"))
    assert replacement.id != order.id
    assert order_events(events) == [(EVENT_FINISH, order.id, "CANCELED"), (EVENT_NEW, replacement.id, "OPEN")]
    assert {e.order["client_order_id"] for e in events if isinstance(e, OrderEvent)} == {"mon-1"}
    assert x.snapshot("main")["spot"]["USDT"]["freeze"] == "29000"


def test_modify_can_announce_the_new_order_first(exchange):
    x, events = exchange
    order = x.place_order("main", "BTC_USDT", SIDE_SELL, D("1"), price=D("61000"), client_order_id="c")
    events.clear()
    replacement = x.modify_order("main", order.id, price=D("62000"), new_first=True)
    assert order_events(events) == [(EVENT_NEW, replacement.id, "OPEN"), (EVENT_FINISH, order.id, "CANCELED")]


def test_stop_activation_is_a_second_new_with_the_same_id(exchange):
    x, events = exchange
    stop = x.place_order(
        "main", "BTC_USDT", SIDE_SELL, D("1"), order_type=TYPE_STOP_LIMIT, price=D("55000"), activation_price=D("56000")
    )
    with pytest.raises(ExchangeError):
        x.fill_order("main", stop.id)
    x.activate_stop("main", stop.id)
    assert order_events(events) == [(EVENT_NEW, stop.id, "OPEN"), (EVENT_NEW, stop.id, "OPEN")]
    assert events[-1].order["type"] == TYPE_STOP_LIMIT and events[-1].order["activated"] == 1


def test_instant_fill_is_a_lone_finish(exchange):
    x, events = exchange
    order = x.place_instant_fill("main", "ETH_USDT", SIDE_BUY, D("1"), D("3000"))
    assert order_events(events) == [(EVENT_FINISH, order.id, "FILLED")]
    assert order.id not in x.accounts["main"].orders


def test_partial_fill_then_cancel_keeps_deal_stock_and_releases_the_rest(exchange):
    x, events = exchange
    order = x.place_order("main", "BTC_USDT", SIDE_SELL, D("1"), price=D("61000"))
    x.fill_order("main", order.id, D("0.25"))
    x.cancel_order("main", order.id)
    assert order_events(events) == [
        (EVENT_NEW, order.id, "OPEN"),
        (EVENT_UPDATE, order.id, "PARTIALLY_FILLED"),
        (EVENT_FINISH, order.id, "CANCELED"),
    ]
    assert events[-1].order["deal_stock"] == "0.25" and events[-1].order["left"] == "0.75"
    spot = x.snapshot("main")["spot"]
    assert spot["BTC"] == {"available": "1.75", "freeze": "0"}
    assert D(spot["USDT"]["available"]) == D("100000") + D("15250") - D("15.25")


def test_balance_updates_carry_only_the_assets_that_changed(exchange):
    x, events = exchange
    x.transfer_to_collateral("main", "USDT", D("10"))
    spot = [e for e in events if isinstance(e, SpotBalanceEvent)]
    margin = [e for e in events if isinstance(e, MarginBalanceEvent)]
    assert [set(e.balances) for e in spot] == [{"USDT"}]
    assert margin[0].balances == {"USDT": {"B": "510", "b": "0", "av": "510", "ab": "5100"}}


def test_deposit_lifecycle_emits_documented_webhooks_and_credits_once(exchange):
    x, events = exchange
    deposit = x.start_deposit("main", "USDT", D("50"), confirmations_required=2)
    x.confirm_deposit("main", deposit.transaction_id)
    x.credit_deposit("main", deposit.transaction_id)
    hooks = [e for e in events if isinstance(e, WebhookEvent)]
    assert [h.method for h in hooks] == ["deposit.accepted", "deposit.updated", "deposit.processed"]
    assert "method" not in hooks[1].params  # as in the documented deposit.updated example
    assert hooks[1].params["confirmations"] == {"actual": 1, "required": 2}
    assert hooks[2].params["amount"] == "50.000000000000000000"
    assert x.snapshot("main")["main"]["USDT"] == "1050"
    with pytest.raises(ExchangeError):
        x.credit_deposit("main", deposit.transaction_id)


def test_travel_rule_deposit_sends_no_webhook_until_credited(exchange):
    x, events = exchange
    deposit = x.start_deposit("main", "USDT", D("5"), travel_rule=True)
    assert deposit.status == 27
    x.advance_travel_rule("main", deposit.transaction_id)
    assert deposit.status == 28
    assert not [e for e in events if isinstance(e, WebhookEvent)]
    x.credit_deposit("main", deposit.transaction_id)
    assert [e.method for e in events if isinstance(e, WebhookEvent)] == ["deposit.processed"]


def test_withdrawal_debits_on_creation_and_refunds_on_cancel(exchange):
    x, events = exchange
    withdrawal = x.start_withdrawal("main", "USDT", D("100"), fee=D("1"), unique_id="payout-1")
    assert x.snapshot("main")["main"]["USDT"] == "899"
    x.process_withdrawal("main", withdrawal.transaction_id)
    x.cancel_withdrawal("main", withdrawal.transaction_id)
    assert x.snapshot("main")["main"]["USDT"] == "1000"
    hooks = [e for e in events if isinstance(e, WebhookEvent)]
    assert [h.method for h in hooks] == ["withdraw.unconfirmed", "withdraw.pending", "withdraw.canceled"]
    # null in WhiteBIT's withdrawal examples too; history echoes the client's id.
    assert {h.params["uniqueId"] for h in hooks} == {None}
    assert x.snapshot("main")["transfers"][0]["uniqueId"] == "payout-1"


def test_deposit_webhooks_and_history_carry_the_documented_forms(exchange):
    x, events = exchange
    usdt = x.start_deposit("main", "USDT", D("25"), network="ERC20", transaction_hash="0xfeed")
    x.cancel_deposit("main", usdt.transaction_id)
    btc = x.start_deposit("main", "BTC", D("0.5"))
    hooks = [e.params for e in events if isinstance(e, WebhookEvent)]
    accepted, canceled, btc_accepted = hooks
    # The webhook: the network-suffixed ticker beside the network, 18 decimals, no ids.
    assert (accepted["ticker"], accepted["network"]) == ("USDT_ETH", "ERC20")
    assert (accepted["amount"], accepted["fee"]) == ("25.000000000000000000", "0.000000000000000000")
    assert accepted["uniqueId"] is None and "transactionId" not in accepted and "transaction_id" not in accepted
    assert canceled["ticker"] == "USDT_ETH" and canceled["createdAt"] == accepted["createdAt"] == usdt.created_at
    # A single-network asset: the plain ticker and a null network.
    assert (btc_accepted["ticker"], btc_accepted["network"]) == ("BTC", None)
    # History: the plain ticker, the network, short amounts and the transactionId, in both spellings.
    by_id = {r["transactionId"]: r for r in x.snapshot("main")["transfers"]}
    record = by_id[usdt.transaction_id]
    assert (record["ticker"], record["network"], record["amount"], record["fee"]) == ("USDT", "ERC20", "25", "0")
    assert record["uniqueId"] is None and record["createdAt"] == usdt.created_at
    assert record["transactionHash"] == accepted["transactionHash"] == "0xfeed"
    x.history_field_style = "snake"
    snake = next(r for r in x.snapshot("main")["transfers"] if r["transaction_id"] == btc.transaction_id)
    assert (snake["ticker"], snake["network"], snake["unique_id"]) == ("BTC", None, None)


def test_plain_webhooks_switch_the_documented_forms_off():
    clock = iter(float(1_700_000_000 + i) for i in range(100))
    x = Exchange(["BTC_USDT"], clock=lambda: next(clock), plain_webhooks=True)
    x.add_account("main", api_key="k", api_secret="s", main={"USDT": "100"})
    events: list = []
    x.subscribe(events.append)
    x.start_deposit("main", "USDT", D("5"), network="TRC20")
    x.start_withdrawal("main", "USDT", D("10"), unique_id="payout-2")
    deposit, withdrawal = (e.params for e in events if isinstance(e, WebhookEvent))
    assert (deposit["ticker"], deposit["network"], deposit["uniqueId"]) == ("USDT", "TRC20", None)
    assert withdrawal["uniqueId"] == "payout-2"
    assert Exchange(["BTC_USDT"]).plain_webhooks is False


def test_history_is_newest_first_in_either_field_spelling(exchange):
    x, _ = exchange
    first = x.start_deposit("main", "BTC", D("0.1"), transaction_hash="0xshared")
    second = x.start_deposit("main", "BTC", D("0.2"), transaction_hash="0xshared")
    records = x.snapshot("main")["transfers"]
    assert [r["transactionId"] for r in records] == [second.transaction_id, first.transaction_id]
    x.history_field_style = "snake"
    assert "transaction_id" in x.snapshot("main")["transfers"][0]


def test_client_order_id_is_unique_among_open_orders_of_a_market(exchange):
    x, _ = exchange
    order = x.place_order("main", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"), client_order_id="dup")
    with pytest.raises(ExchangeError):
        x.place_order("main", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"), client_order_id="dup")
    x.place_order("main", "ETH_USDT", SIDE_BUY, D("0.1"), price=D("2000"), client_order_id="dup")
    x.cancel_order("main", order.id)
    x.place_order("main", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"), client_order_id="dup")


def test_orders_that_would_overdraw_are_refused(exchange):
    x, events = exchange
    with pytest.raises(ExchangeError):
        x.place_order("main", "BTC_USDT", SIDE_SELL, D("3"), price=D("60000"))
    assert events == []


def test_a_position_opens_at_the_market_price_and_leaves_the_collateral_balance_alone(exchange):
    x, events = exchange
    x.set_price("BTC_USDT", D("61000"))
    position = x.open_position("main", "BTC_USDT", D("-0.1"))
    assert (position.market, position.amount, position.base_price) == ("BTC_USDT", D("-0.1"), D("61000"))
    assert x.accounts["main"].positions == {"BTC_USDT": position}
    assert x.accounts["main"].collateral["USDT"].balance == D("500")
    assert not [e for e in events if isinstance(e, MarginBalanceEvent)]


def test_positions_are_refused_without_collateral_trading_in_an_unknown_market_or_twice(exchange):
    x, _ = exchange
    x.add_account("spot-only", api_key="k2", api_secret="s2", collateral_trading=False)
    with pytest.raises(ExchangeError, match="no collateral trading"):
        x.open_position("spot-only", "BTC_USDT", D("1"))
    with pytest.raises(ExchangeError, match="does not exist"):
        x.open_position("main", "SOL_USDT", D("1"))
    with pytest.raises(ExchangeError, match="non-zero"):
        x.open_position("main", "BTC_USDT", D("0"))
    x.open_position("main", "BTC_USDT", D("1"))
    with pytest.raises(ExchangeError, match="already holds"):
        x.open_position("main", "BTC_USDT", D("1"))
    with pytest.raises(ValueError, match="no collateral trading"):
        x.add_account("spot-too", api_key="k3", api_secret="s3", positions={"BTC_USDT": "1"}, collateral_trading=False)
