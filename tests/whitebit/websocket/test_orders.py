"""The pure order book: upsert by id, WhiteBIT's event rules, modify pairing, exact aggregates."""

from __future__ import annotations

from decimal import Decimal as D
from typing import Any

import pytest

from exporter.whitebit.websocket.orders import OrderBook, OrderEvents
from exporter.whitebit.websocket.parsing import InvalidMessage
from tests.whitebit.websocket.book import open_ids, pending_events


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def order(
    order_id: int,
    *,
    market: str = "BTC_USDT",
    side: Any = 2,
    type_: Any = 1,
    left: str = "1",
    coid: str = "",
    status: str = "OPEN",
) -> dict[str, Any]:
    return {
        "id": order_id,
        "market": market,
        "side": side,
        "type": type_,
        "left": left,
        "client_order_id": coid,
        "status": status,
    }


def book(markets: tuple[str, ...] = ("BTC_USDT",), **kw: Any) -> tuple[OrderBook, Clock]:
    clock = Clock()
    return OrderBook(markets, OrderEvents(markets, clock=clock, **kw)), clock


def counts(b: OrderBook) -> dict[tuple[str, str, str], int]:
    return {(m, s, t): c for m, s, t, c in b.series_values()[0] if c}


def lefts(b: OrderBook) -> dict[tuple[str, str], D]:
    return {(m, s): v for m, s, v in b.series_values()[1] if v}


def test_side_1_is_sell_and_2_is_buy_and_types_use_spec_names() -> None:
    b, _ = book()
    b.apply(1, order(1, side=1, type_=3))
    b.apply(1, order(2, side=2, type_=10))
    b.apply(1, order(3, side=2, type_=202))
    b.apply(1, order(4, side=2, type_=99))
    assert counts(b) == {
        ("BTC_USDT", "sell", "stop_limit"): 1,
        ("BTC_USDT", "buy", "margin_stop_market"): 1,
        ("BTC_USDT", "buy", "stock_market"): 1,
        ("BTC_USDT", "buy", "other"): 1,
    }


def test_second_new_for_an_open_id_is_a_stop_activation_not_a_second_order() -> None:
    b, _ = book()
    assert b.apply(1, order(7, type_=4, left="2")) == "new"
    assert b.apply(1, order(7, type_=4, left="2")) == "stop_activated"
    assert counts(b) == {("BTC_USDT", "buy", "stop_market"): 1}
    assert lefts(b) == {("BTC_USDT", "buy"): D(2)}
    assert b.events.counts()[("BTC_USDT", "stop_activated")] == 1


def test_update_upserts_and_moves_left_exactly() -> None:
    b, _ = book()
    b.apply(1, order(1, left="0.3"))
    b.apply(1, order(2, left="0.1"))
    b.apply(2, order(1, left="0.2"))
    b.apply(2, order(3, left="0.7"))  # an update for an unseen id is an upsert
    assert lefts(b) == {("BTC_USDT", "buy"): D("1.0")}
    assert len(b) == 3


def test_finish_for_an_unseen_id_is_counted_and_changes_nothing() -> None:
    b, _ = book()
    b.apply(1, order(1))
    assert b.apply(3, order(99, status="FILLED", left="0")) == "finish"
    assert len(b) == 1
    assert b.events.counts()[("BTC_USDT", "finish")] == 1


@pytest.mark.parametrize("new_first", [False, True])
def test_finish_and_new_with_the_same_client_order_id_are_one_modify(
    new_first: bool,
) -> None:
    b, clock = book()
    b.apply(1, order(1, coid="bot-1", left="1"))
    clock.now += 5  # the original new is counted as new once its window has passed
    finish = (3, order(1, coid="bot-1", status="CANCELED", left="1"))
    new = (1, order(2, coid="bot-1", left="0.5"))
    for event_id, doc in [new, finish] if new_first else [finish, new]:
        b.apply(event_id, doc)
        clock.now += 0.01
    clock.now += 5
    assert b.events.counts() == {
        ("BTC_USDT", "new"): 1,
        ("BTC_USDT", "update"): 0,
        ("BTC_USDT", "finish"): 0,
        ("BTC_USDT", "modify"): 1,
        ("BTC_USDT", "stop_activated"): 0,
    }
    assert open_ids(b) == {2}
    assert lefts(b) == {("BTC_USDT", "buy"): D("0.5")}


def test_an_order_modified_and_cancelled_within_the_window_counts_new_modify_finish() -> None:
    # Place X, modify it into Y, cancel Y, all within one window: X's own "new" (still waiting for
    # a partner when X's finish arrives) must not pair with Y's finish as a second modify.
    b, clock = book(window=1.0)
    b.apply(1, order(1, coid="bot"))
    b.apply(3, order(1, coid="bot", status="CANCELED"))
    b.apply(1, order(2, coid="bot"))
    b.apply(3, order(2, coid="bot", status="CANCELED"))
    clock.now += 1.5
    got = b.events.counts()
    assert (
        got[("BTC_USDT", "new")],
        got[("BTC_USDT", "modify")],
        got[("BTC_USDT", "finish")],
    ) == (1, 1, 1)
    assert open_ids(b) == set()


def test_finish_and_new_further_apart_than_the_window_are_not_a_modify() -> None:
    b, clock = book(window=1.0)
    b.apply(3, order(1, coid="x", status="CANCELED"))
    clock.now += 1.5
    b.apply(1, order(2, coid="x"))
    clock.now += 1.5
    got = b.events.counts()
    assert (
        got[("BTC_USDT", "finish")],
        got[("BTC_USDT", "new")],
        got[("BTC_USDT", "modify")],
    ) == (1, 1, 0)


def test_a_filled_order_and_a_new_reusing_its_client_order_id_are_not_a_modify() -> None:
    b, clock = book()
    b.apply(3, order(1, coid="x", status="FILLED", left="0"))
    b.apply(1, order(2, coid="x"))
    clock.now += 5
    got = b.events.counts()
    assert (
        got[("BTC_USDT", "finish")],
        got[("BTC_USDT", "new")],
        got[("BTC_USDT", "modify")],
    ) == (1, 1, 0)


def test_orders_without_client_order_id_are_counted_at_once() -> None:
    b, _ = book()
    b.apply(1, order(1))
    b.apply(3, order(1, status="CANCELED"))
    assert b.events.counts()[("BTC_USDT", "new")] == 1
    assert b.events.counts()[("BTC_USDT", "finish")] == 1
    assert pending_events(b.events) == 0


@pytest.mark.parametrize(
    ("doc", "reason"),
    [
        ("not an order", "wrong_type"),
        ({"id": 1, "market": "BTC_USDT"}, "missing_field"),
        (order(1) | {"id": "1"}, "wrong_type"),
        (order(1) | {"side": True}, "wrong_type"),
        (order(1) | {"type": 1.0}, "wrong_type"),
        (order(1) | {"side": 3}, "bad_value"),
        (order(1) | {"left": "NaN"}, "bad_value"),
        (order(1) | {"left": "-1"}, "bad_value"),
        (order(1) | {"left": "abc"}, "bad_value"),
        (order(1) | {"left": None}, "wrong_type"),
        (order(1) | {"market": ["BTC_USDT"]}, "wrong_type"),
        (order(1) | {"client_order_id": 5}, "wrong_type"),
    ],
)
def test_bad_orders_are_refused_with_a_reason_and_change_nothing(doc: Any, reason: str) -> None:
    b, _ = book()
    b.apply(1, order(42, left="3"))
    with pytest.raises(InvalidMessage) as caught:
        b.apply(1, doc)
    assert caught.value.reason == reason
    assert open_ids(b) == {42} and lefts(b) == {("BTC_USDT", "buy"): D(3)}


def test_unknown_event_id_is_refused() -> None:
    b, _ = book()
    with pytest.raises(InvalidMessage):
        b.apply(4, order(1))
    with pytest.raises(InvalidMessage):
        b.apply(True, order(1))
    assert len(b) == 0


def test_a_restricted_book_refuses_markets_it_was_not_configured_for() -> None:
    b = OrderBook(("BTC_USDT",), restrict=True)
    with pytest.raises(InvalidMessage) as caught:
        b.apply(1, order(1, market="ETH_USDT"))
    assert caught.value.reason == "unknown_market"


def test_series_start_at_zero_and_stay_after_their_orders_are_gone() -> None:
    b, _ = book(("BTC_USDT", "ETH_USDT"))
    start = {(m, s, t): c for m, s, t, c in b.series_values()[0]}
    assert start == {(m, s, "limit"): 0 for m in ("BTC_USDT", "ETH_USDT") for s in ("buy", "sell")}
    b.apply(1, order(1, type_=3))
    b.apply(3, order(1, type_=3, status="CANCELED"))
    series = {(m, s, t): c for m, s, t, c in b.series_values()[0]}
    assert series[("BTC_USDT", "buy", "stop_limit")] == 0


def test_replace_with_takes_the_staged_orders_and_keeps_every_series() -> None:
    live, _ = book()
    live.apply(1, order(1, type_=3, left="5"))
    staged = live.staging()
    staged.upsert(order(2, left="0.25"))
    staged.upsert(order(3, side=1, left="0.75"))
    live.replace_with(staged)
    assert open_ids(live) == {2, 3}
    assert counts(live) == {
        ("BTC_USDT", "buy", "limit"): 1,
        ("BTC_USDT", "sell", "limit"): 1,
    }
    assert ("BTC_USDT", "buy", "stop_limit", 0) in live.series_values()[0]
    # The live book keeps working incrementally after the swap.
    live.apply(3, order(2, status="CANCELED"))
    live.apply(2, order(3, side=1, left="0.5"))
    assert lefts(live) == {("BTC_USDT", "sell"): D("0.5")}


def test_left_sums_are_exact_after_many_additions_and_removals() -> None:
    b, _ = book()
    for i in range(1, 2001):
        b.apply(1, order(i, left="0.1"))
    for i in range(1, 2001):
        if i != 7:
            b.apply(3, order(i, left="0.1", status="CANCELED"))
    assert lefts(b) == {("BTC_USDT", "buy"): D("0.1")}


def test_rest_spellings_of_side_and_type_are_accepted() -> None:
    b, _ = book()
    b.upsert(
        {
            "id": 1,
            "market": "BTC_USDT",
            "side": "sell",
            "type": "stop limit",
            "left": "1",
            "clientOrderId": "a",
        }
    )
    assert counts(b) == {("BTC_USDT", "sell", "stop_limit"): 1}
