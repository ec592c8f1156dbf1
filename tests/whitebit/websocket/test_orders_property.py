"""Property: whatever WhiteBIT sends and whenever the connection drops, the aggregates are exact.

The simulator's pure exchange generates the events (place, partial and full fills, cancels,
modifies in both arrival orders, stop activations, instant fills); a "connection" feeds them to an
:class:`OrderBook` and drops at random, losing every event until it reconnects, which reads the
exchange's open orders page by page while events keep arriving (the source's sequence: subscribe,
then snapshot into a staging book, then swap). After every step the aggregates must equal those of
a plain model computed from the exchange's final state.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal as D
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.simulator.model import (
    SIDE_BUY,
    SIDE_SELL,
    TYPE_LIMIT,
    TYPE_STOP_LIMIT,
    TYPE_STOP_MARKET,
    Exchange,
    ExchangeError,
    OrderEvent,
)
from exporter.whitebit.websocket.orders import OrderBook, OrderEvents
from tests.whitebit.websocket.book import aggregate
from tests.whitebit.websocket.book import open_ids as book_ids

MARKETS = ("BTC_USDT", "ETH_USDT")

operation = st.one_of(
    st.tuples(
        st.just("place"),
        st.sampled_from(MARKETS),
        st.sampled_from((SIDE_BUY, SIDE_SELL)),
        st.sampled_from((TYPE_LIMIT, TYPE_STOP_LIMIT, TYPE_STOP_MARKET)),
        st.integers(1, 50),
        st.booleans(),
    ),
    st.tuples(st.just("fill"), st.integers(0, 30), st.integers(1, 100)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("modify"), st.integers(0, 30), st.booleans(), st.integers(1, 50)),
    st.tuples(st.just("activate"), st.integers(0, 30)),
    st.tuples(st.just("instant"), st.sampled_from(MARKETS), st.integers(1, 5)),
    st.tuples(st.just("disconnect")),
    st.tuples(st.just("reconnect"), st.integers(1, 3), st.integers(0, 3)),
)


class Connection:
    """Feeds the exchange's order events to the book while connected, drops them otherwise."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.book = OrderBook(MARKETS, OrderEvents(MARKETS, clock=lambda: 0.0))
        self.connected = True
        self.staging: OrderBook | None = None
        exchange.subscribe(self.on_event)

    def on_event(self, event: Any) -> None:
        if not isinstance(event, OrderEvent) or not self.connected:
            return
        if self.staging is None:
            self.book.apply(event.event_id, event.order)
            return
        self.staging.apply(event.event_id, event.order)
        if event.event_id == 3 and event.order["id"] in self.read.get(event.order["market"], ()):
            self.finished[event.order["market"]].add(event.order["id"])

    def reconnect(self, page: int, busy: int, act: Any) -> None:
        """Subscribe (events flow into staging), page the snapshot with events between pages, swap.

        The next offset is the source's rule: orders read that are still open (finishes of orders
        already read move the rest of the list up).
        """
        self.connected = True
        self.staging = self.book.staging()
        self.read: dict[str, set[int]] = {}
        self.finished: dict[str, set[int]] = {}
        for market in MARKETS:
            read = self.read[market] = set()
            finished = self.finished[market] = set()
            while True:
                offset = len(read) - len(finished)
                records = [o.to_ws() for o in self.exchange.open_orders("acct", market)][offset : offset + page]
                for record in records:
                    read.add(self.staging.upsert(record))
                for _ in range(busy):  # events between pages land in staging, in order
                    act()
                if len(records) < page:
                    break
        self.book.replace_with(self.staging)
        self.staging = None


@settings(max_examples=150, deadline=None)
@given(st.lists(operation, max_size=60), st.randoms(use_true_random=False))
def test_aggregates_equal_a_plain_model_of_the_final_state(ops: list[tuple[Any, ...]], rnd: Any) -> None:
    exchange = Exchange(MARKETS, clock=lambda: 1.7e9)
    exchange.add_account(
        "acct",
        api_key="k",
        api_secret="s",
        spot={"USDT": "1e12", "BTC": "1e9", "ETH": "1e9"},
    )
    conn = Connection(exchange)
    counter = [0]

    def open_ids() -> list[int]:
        return [o.id for o in exchange.open_orders("acct")]

    def pick(index: int) -> int | None:
        ids = open_ids()
        return ids[index % len(ids)] if ids else None

    def background_activity() -> None:
        ids = open_ids()
        if ids and rnd.random() < 0.5:
            with contextlib.suppress(ExchangeError):
                exchange.cancel_order("acct", rnd.choice(ids))
        else:
            exchange.place_order("acct", rnd.choice(MARKETS), SIDE_BUY, D(1), price=D(10))

    for op in ops:
        kind = op[0]
        try:
            if kind == "place":
                _, market, side, type_, amount, with_coid = op
                counter[0] += 1
                exchange.place_order(
                    "acct",
                    market,
                    side,
                    D(amount),
                    order_type=type_,
                    price=None if type_ == TYPE_STOP_MARKET else D(100),
                    activation_price=D(90) if type_ != TYPE_LIMIT else None,
                    client_order_id=f"c{counter[0]}" if with_coid else "",
                )
            elif kind == "fill" and (oid := pick(op[1])) is not None:
                order = exchange.accounts["acct"].orders[oid]
                if order.is_stop and not order.activated:
                    exchange.activate_stop("acct", oid)
                exchange.fill_order("acct", oid, order.left * op[2] / 100)
            elif kind == "cancel" and (oid := pick(op[1])) is not None:
                exchange.cancel_order("acct", oid)
            elif kind == "modify" and (oid := pick(op[1])) is not None:
                exchange.modify_order("acct", oid, amount=D(op[3]), new_first=op[2])
            elif kind == "activate" and (oid := pick(op[1])) is not None:
                exchange.activate_stop("acct", oid)
            elif kind == "instant":
                exchange.place_instant_fill("acct", op[1], SIDE_BUY, D(op[2]), D(100))
            elif kind == "disconnect":
                conn.connected = False
            elif kind == "reconnect":
                conn.reconnect(op[1], op[2], background_activity)
        except ExchangeError:
            pass
        if conn.connected:
            want_counts, want_lefts = aggregate(o.to_ws() for o in exchange.open_orders("acct"))
            got_counts = {(m, s, t): c for m, s, t, c in conn.book.series_values()[0] if c}
            got_lefts = {(m, s): v for m, s, v in conn.book.series_values()[1] if v}
            assert got_counts == want_counts
            assert got_lefts == {k: v for k, v in want_lefts.items() if v}
            assert book_ids(conn.book) == set(open_ids())
