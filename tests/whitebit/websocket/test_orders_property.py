"""Property: whatever the listing order, however replies and pushes interleave and whatever happens
while the snapshot pages, the book ends equal to the exchange and the event counters to the events.

A pure model of one account's connection to the simulator's exchange: once subscribed, every order
event goes into a push lane; a page request is answered when the "server" gets to it, from the
exchange as it is then, into a reply lane; the client receives from either lane at random (each
lane keeps its order), and churn (places, fills, cancels, modifies both ways round, stop orders and
their activations, instant fills) happens between any two of those steps. The client is the
source's own machinery: :class:`MarketPaging` per market, a :class:`SnapshotMerge` in front of a
staging book, the swap, then the merge in front of the live book until it expires. Connections drop
(between pushes) and come back, losing what happened meanwhile.

After everything delivered has been applied, the book must hold exactly the exchange's open orders
(ids and aggregates) and the event counters must equal the events delivered, each counted once under
its true name (``new``, ``update``, ``finish``, ``modify``, ``stop_activated``).
"""

from __future__ import annotations

import collections
import itertools
import random
from decimal import Decimal as D
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.simulator.model import SIDE_BUY, TYPE_STOP_LIMIT, Exchange, OrderEvent
from exporter.whitebit.websocket.orders import OrderBook, OrderEvents, SnapshotMerge
from exporter.whitebit.websocket.snapshot import MarketPaging, PagingFailed
from tests.whitebit.websocket.book import aggregate, open_ids
from tests.whitebit.websocket.churn import Churn

MARKETS = ("BTC_USDT", "ETH_USDT")


class Client:
    """The source's snapshot machinery over a model connection with a push lane and a reply lane."""

    def __init__(self, exchange: Exchange, rng: random.Random, limit: int, *, reply_weight: float = 1.0) -> None:
        self.exchange = exchange
        self.rng = rng
        self.limit = limit
        self.reply_weight = reply_weight  # below 1: replies lag behind pushes
        self.book = OrderBook(MARKETS, OrderEvents(MARKETS, clock=lambda: 0.0), restrict=True)
        self.connected = False
        self.merge: SnapshotMerge | None = None
        self.staging: OrderBook | None = None
        self.pagings: dict[str, MarketPaging] = {}
        self.attempt = 0
        self.pushes: collections.deque[OrderEvent] = collections.deque()
        # (attempt, market, offset, finishes of the market seen when the request was sent)
        self.requests: collections.deque[tuple[int, str, int, int]] = collections.deque()
        self.replies: collections.deque[tuple[int, str, int, int, list[dict[str, Any]], int]] = collections.deque()
        self.delivered: list[OrderEvent] = []
        self.requests_sent = 0
        exchange.subscribe(self.on_event)

    def on_event(self, event: Any) -> None:
        if isinstance(event, OrderEvent) and self.connected:
            self.pushes.append(event)

    def connect(self) -> None:
        self.connected = True  # subscribed: events from now on are pushed
        self.start_attempt()

    def start_attempt(self) -> None:
        self.attempt += 1
        self.staging = self.book.staging()
        self.merge = SnapshotMerge(self.staging)
        self.pagings = {market: MarketPaging(market, self.limit) for market in MARKETS}
        for market in MARKETS:
            self.request(market)

    def request(self, market: str) -> None:
        assert self.merge is not None
        self.requests_sent += 1
        self.requests.append((self.attempt, market, self.pagings[market].offset, self.merge.finishes.get(market, 0)))

    def drop(self) -> None:
        while self.pushes:
            self.deliver_push()
        self.connected = False
        self.merge = self.staging = None
        self.book.events.flush(float("inf"))  # as the source does on a disconnect
        self.requests.clear()
        self.replies.clear()

    @property
    def syncing(self) -> bool:
        return self.staging is not None

    def serve_request(self) -> None:
        attempt, market, offset, finishes = self.requests.popleft()
        listed = self.exchange.open_orders("acct", market)
        records = [o.to_ws() for o in listed[offset : offset + self.limit]]
        self.replies.append((attempt, market, offset, finishes, records, len(listed)))

    def deliver_push(self) -> None:
        event = self.pushes.popleft()
        self.delivered.append(event)
        if self.merge is None:
            self.book.apply(event.event_id, event.order)
        else:
            self.merge.push(event.event_id, event.order)

    def deliver_reply(self) -> None:
        attempt, market, offset, finishes, records, total = self.replies.popleft()
        if attempt != self.attempt or self.staging is None or self.merge is None:
            return  # a reply to an attempt given up (the source awaits it and drops it too)
        merge = self.merge
        paging = self.pagings[market]
        try:
            paging.on_page(offset, [merge.record(r) for r in records], total, merge.finishes.get(market, 0) - finishes)
        except PagingFailed:
            self.start_attempt()  # the channel is retried (after a backoff) on the same connection
            return
        if not paging.done:
            self.request(market)
        elif all(p.done for p in self.pagings.values()):
            self.book.replace_with(self.staging)
            merge.book = self.book
            self.staging = None  # the merge stays in front of the live book for the grace period

    def step(self, churn: Churn, churn_rate: float) -> None:
        rng = self.rng
        if rng.random() < churn_rate:
            churn.step({r["id"] for reply in self.replies for r in reply[4]})
            return
        choices = [
            (name, weight)
            for name, weight, waiting in (
                ("push", 1.0, self.pushes),
                ("reply", self.reply_weight, self.replies),
                ("serve", 1.0, self.requests),
            )
            if waiting
        ]
        if not choices:
            if self.merge is not None and not self.syncing:
                self.merge = None  # the grace period is over
            return
        choice = rng.choices([name for name, _ in choices], [weight for _, weight in choices])[0]
        if choice == "push":
            self.deliver_push()
        elif choice == "reply":
            self.deliver_reply()
        else:
            self.serve_request()


@settings(max_examples=120, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    newest_first=st.booleans(),
    limit=st.integers(2, 12),
    initial=st.integers(0, 60),
    churn_rate=st.sampled_from((0.0, 0.2, 0.4, 0.6)),
    reply_weight=st.sampled_from((1.0, 0.1)),
    drops=st.integers(0, 2),
)
def test_the_book_and_the_counters_converge_to_the_exchange(
    seed: int, newest_first: bool, limit: int, initial: int, churn_rate: float, reply_weight: float, drops: int
) -> None:
    rng = random.Random(seed)
    times = itertools.count()
    exchange = Exchange(MARKETS, clock=lambda: 1.7e9 + next(times) * 0.001)
    exchange.list_newest_first = newest_first
    exchange.add_account("acct", api_key="k", api_secret="s", spot={"USDT": "1e15", "BTC": "1e12", "ETH": "1e12"})
    churn = Churn(exchange, rng, "acct", MARKETS)
    for _ in range(initial):
        churn.place()
    client = Client(exchange, rng, limit, reply_weight=reply_weight)
    client.connect()
    for _ in range(drops):
        for _ in range(rng.randint(0, 150)):
            client.step(churn, churn_rate)
        client.drop()
        for _ in range(rng.randint(0, 20)):  # activity nobody is told about
            churn.step()
        client.connect()
    for _ in range(rng.randint(0, 300)):
        client.step(churn, churn_rate)
    # Quiet now: everything on its way arrives and the snapshot completes, within a bounded number of steps.
    for _ in range(100_000):
        if not (client.pushes or client.replies or client.requests or client.syncing):
            break
        client.step(churn, 0.0)
    else:
        raise AssertionError("the snapshot never completed")
    assert not client.syncing

    want_counts, want_lefts = aggregate(o.to_ws() for o in exchange.open_orders("acct"))
    got_counts = {(m, s, t): c for m, s, t, c in client.book.series_values()[0] if c}
    got_lefts = {(m, s): v for m, s, v in client.book.series_values()[1] if v}
    assert open_ids(client.book) == {o.id for o in exchange.open_orders("acct")}
    assert got_counts == want_counts
    assert got_lefts == {k: v for k, v in want_lefts.items() if v}
    client.book.events.flush(float("inf"))
    got_events = {key: n for key, n in client.book.events.counts().items() if n}
    assert got_events == churn.expected(client.delivered)
    # Re-reads stay bounded: a few times the pages the lists needed, whatever the churn.
    assert client.requests_sent <= 40 * (drops + 1) * (2 + (initial + 300) // (limit - 1))


def test_a_stop_order_activated_before_its_page_arrives_counts_once_as_an_activation() -> None:
    """The case the id rule alone gets wrong: the activation's "new" comes before the page listing it."""
    times = itertools.count()
    exchange = Exchange(MARKETS, clock=lambda: 1.7e9 + next(times) * 0.001)
    exchange.add_account("acct", api_key="k", api_secret="s", spot={"USDT": "1e9"})
    stop = exchange.place_order(
        "acct", "BTC_USDT", SIDE_BUY, D(1), order_type=TYPE_STOP_LIMIT, price=D(100), activation_price=D(90)
    )
    client = Client(exchange, random.Random(0), 5)
    client.connect()
    exchange.activate_stop("acct", stop.id)
    client.deliver_push()  # the activation arrives before any page was served
    while client.requests or client.replies:
        if client.requests:
            client.serve_request()
        else:
            client.deliver_reply()
    client.book.events.flush(float("inf"))
    assert {k: n for k, n in client.book.events.counts().items() if n} == {("BTC_USDT", "stop_activated"): 1}
    assert open_ids(client.book) == {stop.id}


def test_an_order_placed_while_paging_and_listed_before_its_push_counts_once_as_new() -> None:
    times = itertools.count()
    exchange = Exchange(MARKETS, clock=lambda: 1.7e9 + next(times) * 0.001)
    exchange.add_account("acct", api_key="k", api_secret="s", spot={"USDT": "1e9"})
    client = Client(exchange, random.Random(0), 5)
    client.connect()
    placed = exchange.place_order(
        "acct", "BTC_USDT", SIDE_BUY, D(1), order_type=TYPE_STOP_LIMIT, price=D(100), activation_price=D(90)
    )
    while client.requests or client.replies:  # every page first, the push afterwards
        if client.requests:
            client.serve_request()
        else:
            client.deliver_reply()
    assert not client.syncing and open_ids(client.book) == {placed.id}
    client.deliver_push()
    client.book.events.flush(float("inf"))
    assert {k: n for k, n in client.book.events.counts().items() if n} == {("BTC_USDT", "new"): 1}
