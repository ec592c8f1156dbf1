"""Random order activity on the simulator's exchange, each event tagged with what it must count as.

Shared by the pure property test and the socket test of snapshots under churn: both compare the
exporter's ``whitebit_order_events_total`` with :meth:`Churn.expected` of the events it received.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal as D
from typing import Any

from exporter.simulator.model import (
    SIDE_BUY,
    SIDE_SELL,
    TYPE_LIMIT,
    TYPE_MARKET,
    TYPE_STOP_LIMIT,
    TYPE_STOP_MARKET,
    Exchange,
    ExchangeError,
    OrderEvent,
)


class Churn:
    """Random order activity on ``account``; every order event it causes is tagged with the name the
    exporter must count it as (``new``, ``update``, ``finish``, ``modify``, ``stop_activated``; the
    second half of a modify is tagged None). Amounts are whole units times ``scale``."""

    def __init__(
        self, exchange: Exchange, rng: random.Random, account: str, markets: Sequence[str], *, scale: D = D(1)
    ) -> None:
        self.exchange = exchange
        self.rng = rng
        self.account = account
        self.markets = tuple(markets)
        self.scale = scale
        self.coids = itertools.count(1)
        self.emitted: list[OrderEvent] = []
        self.tags: dict[int, str | None] = {}  # id(event) -> expected name (None: counted by its pair)
        exchange.subscribe(lambda e: self.emitted.append(e) if isinstance(e, OrderEvent) else None)

    def _run(self, action: Callable[[], Any], tags: list[str | None]) -> None:
        start = len(self.emitted)
        try:
            action()
        except ExchangeError:
            return
        events = self.emitted[start:]
        assert len(events) == len(tags), (events, tags)
        for event, tag in zip(events, tags, strict=True):
            self.tags[id(event)] = tag

    def place(self) -> None:
        rng = self.rng
        market = rng.choice(self.markets)
        side = rng.choice((SIDE_BUY, SIDE_SELL))
        type_ = rng.choice((TYPE_LIMIT, TYPE_LIMIT, TYPE_STOP_LIMIT, TYPE_STOP_MARKET))
        coid = f"c{next(self.coids)}" if rng.random() < 0.6 else ""
        self._run(
            lambda: self.exchange.place_order(
                self.account,
                market,
                side,
                D(rng.randint(1, 50)) * self.scale,
                order_type=type_,
                price=None if type_ == TYPE_STOP_MARKET else D(100),
                activation_price=D(90) if type_ != TYPE_LIMIT else None,
                client_order_id=coid,
            ),
            ["new"],
        )

    def step(self, focus: set[int] | None = None) -> None:
        """One action; half the time on an order of ``focus`` (those in pages on their way), if any."""
        rng = self.rng
        orders = list(self.exchange.accounts[self.account].orders.values())
        if focus and rng.random() < 0.5:
            orders = [o for o in orders if o.id in focus] or orders
        kind = rng.choice(("place", "place", "fill", "fill", "cancel", "modify", "activate", "instant"))
        if kind == "place" or not orders:
            self.place()
            return
        order = rng.choice(orders)
        if kind == "fill":
            if order.is_stop and not order.activated:
                self._run(lambda: self.exchange.activate_stop(self.account, order.id), ["stop_activated"])
            partial = rng.random() < 0.6
            qty = order.left * D(rng.randint(1, 90)) / 100 if partial else None
            self._run(
                lambda: self.exchange.fill_order(self.account, order.id, qty), ["update" if partial else "finish"]
            )
        elif kind == "cancel":
            self._run(lambda: self.exchange.cancel_order(self.account, order.id), ["finish"])
        elif kind == "modify":
            tags: list[str | None] = ["modify", None] if order.client_order_id else ["finish", "new"]
            new_first = rng.random() < 0.3
            if new_first and not order.client_order_id:
                tags.reverse()
            self._run(
                lambda: self.exchange.modify_order(
                    self.account, order.id, amount=D(rng.randint(1, 50)) * self.scale, new_first=new_first
                ),
                tags,
            )
        elif kind == "activate":
            self._run(lambda: self.exchange.activate_stop(self.account, order.id), ["stop_activated"])
        elif rng.random() < 0.5:
            self._run(
                lambda: self.exchange.place_instant_fill(
                    self.account, rng.choice(self.markets), SIDE_BUY, self.scale, D(100)
                ),
                ["finish"],
            )
        else:
            self._run(
                lambda: self.exchange.place_order(
                    self.account, rng.choice(self.markets), SIDE_SELL, self.scale, order_type=TYPE_MARKET
                ),
                ["finish"],
            )

    def expected(self, events: Iterable[OrderEvent]) -> dict[tuple[str, str], int]:
        """``(market, event) -> count`` the exporter must show after receiving ``events``."""
        counts: dict[tuple[str, str], int] = {}
        for event in events:
            tag = self.tags.get(id(event))
            if tag is not None:
                key = (event.order["market"], tag)
                counts[key] = counts.get(key, 0) + 1
        return counts
