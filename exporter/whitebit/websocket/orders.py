"""The open orders of one WhiteBIT account as a pure state machine, fed by ``ordersPending``.

:class:`OrderBook` keeps every open order by id and, alongside, the aggregates the exporter exposes
(``whitebit_open_orders{market,side,type}`` and ``whitebit_open_orders_left{market,side}``). Every
event changes the aggregates by the order's old and new contribution, so an event costs O(1) and a
scrape walks the series, never the orders. Sums of ``left`` are exact :class:`~decimal.Decimal`
arithmetic: a float sum drifts after millions of add/subtract pairs, and users page on these numbers.

WhiteBIT's rules (docs/protocol.md#order-lifecycle-events), all handled here:

- event 1 is "new"; a second 1 for an id already open is a **stop activation** (type and status do
  not change), so orders are always upserted by id, never appended;
- event 2 is "update" (a partial fill); for an id never seen it is an upsert (we may have missed the
  new, e.g. an order placed while the snapshot was being read);
- event 3 is "finish" (filled or canceled), also for ids never seen: an order that fills at once
  sends nothing else;
- a **modify** is a finish of the old id and a new with a new id and the same ``client_order_id`` on
  the same market. :class:`OrderEvents` counts such a pair once, as ``modify``, whichever arrives
  first, when the two arrive within :data:`MODIFY_WINDOW` seconds of each other and the finished
  order was not completely filled. The book itself applies both halves at once; only the event
  counter waits up to the window to know which name the event gets.

While a snapshot is being read (and for a short grace after it), replies and pushes may arrive in
any order (docs/protocol.md#open-order-listing); :class:`SnapshotMerge` then stands between them
and the book, so that a record older than a push cannot undo it, a finished order cannot come back,
and a push already reflected in a record is still counted once, under the right name.

RPI orders are ordinary orders here. Order ids, client order ids and prices never become labels.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable
from decimal import Context, Decimal
from typing import Any

from exporter.whitebit.websocket.parsing import (
    INVALID_BAD_VALUE,
    INVALID_MISSING_FIELD,
    INVALID_UNKNOWN_MARKET,
    INVALID_WRONG_TYPE,
    InvalidMessage,
    parse_amount,
)

#: The ``side`` label values.
ORDER_SIDES = ("buy", "sell")
#: The ``event`` label values of ``whitebit_order_events_total``.
ORDER_EVENTS = ("new", "update", "finish", "modify", "stop_activated")

#: WebSocket ``ordersPending_update`` event ids.
EVENT_NEW = 1
EVENT_UPDATE = 2
EVENT_FINISH = 3

#: Seconds within which a finish and a new with the same market and ``client_order_id`` are one
#: ``modify``. WhiteBIT emits both halves of a modify back to back from one request, so they arrive
#: milliseconds apart; one second tolerates a busy event loop while staying far below the time a
#: bot needs to cancel an order and deliberately reuse its client order id for another.
MODIFY_WINDOW = 1.0

#: Stop order types (docs/protocol.md#order-lifecycle-events): the only ones a second "new" can activate.
STOP_TYPES = frozenset(
    {3, 4, 9, 10, "stop limit", "stop market", "margin stop limit", "margin stop market", "trigger stop market"}
)

#: WebSocket order ``type`` codes (docs/protocol.md#orderspending-channel) and the REST spellings, as the
#: ``type`` label values.
TYPE_NAMES: dict[Any, str] = {
    1: "limit",
    2: "market",
    202: "stock_market",
    3: "stop_limit",
    4: "stop_market",
    7: "margin_limit",
    8: "margin_market",
    9: "margin_stop_limit",
    10: "margin_stop_market",
    14: "margin_normalization",
    "limit": "limit",
    "market": "market",
    "stock market": "stock_market",
    "stop limit": "stop_limit",
    "stop market": "stop_market",
    "margin limit": "margin_limit",
    "margin market": "margin_market",
    "margin stop limit": "margin_stop_limit",
    "trigger stop market": "margin_stop_market",
    "margin stop market": "margin_stop_market",
    "normalization": "margin_normalization",
    "margin normalization": "margin_normalization",
}
#: The ``type`` of an order whose type code WhiteBIT has not documented (keeps the label bounded).
TYPE_OTHER = "other"
#: WebSocket ``side``: **1 = sell, 2 = buy**; REST sends the words.
SIDE_NAMES: dict[Any, str] = {1: "sell", 2: "buy", "sell": "sell", "buy": "buy"}

ZERO = Decimal(0)
# Enough digits that no realistic sum of amounts is ever rounded.
_EXACT = Context(prec=80)
_add = _EXACT.add
_sub = _EXACT.subtract


_SCALARS = (int, str)


class _Left:
    """Count and exact sum of ``left`` of the open orders of one (market, side)."""

    __slots__ = ("market", "side", "total")

    def __init__(self, market: str, side: str) -> None:
        self.market = market
        self.side = side
        self.total = ZERO


class _Series:
    """Count of open orders of one (market, side, type); points at its (market, side) sum."""

    __slots__ = ("count", "left", "market", "side", "type")

    def __init__(self, market: str, side: str, type_: str, left: _Left) -> None:
        self.market = market
        self.side = side
        self.type = type_
        self.count = 0
        self.left = left


class OrderEvents:
    """``whitebit_order_events_total{market,event}`` with modify detection; pure apart from ``clock``.

    A finish (of an order not completely filled) and a new with the same market and non-empty
    ``client_order_id`` and different ids, arriving within ``window`` seconds in either order, count
    once as ``modify``. Until its partner arrives or the window passes, such a finish or new waits
    (uncounted) in a queue; :meth:`flush` (called on every event and before every read) counts the
    expired ones under their own names. An order's own new and finish never pair: when one arrives
    while the other waits, the waiting one is counted under its own name at once (so it cannot pair
    with another order's event later). Counters of configured markets start at 0.
    """

    def __init__(
        self,
        markets: Iterable[str] = (),
        *,
        window: float = MODIFY_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self._clock = clock
        self._counts: dict[tuple[str, str], int] = {}
        for market in markets:
            for event in ORDER_EVENTS:
                self._counts[(market, event)] = 0
        # Entries: [due, kind, market, client_order_id, order_id, settled]
        self._queue: collections.deque[list[Any]] = collections.deque()
        self._waiting_finish: dict[tuple[str, str], list[Any]] = {}
        self._waiting_new: dict[tuple[str, str], list[Any]] = {}

    def count(self, market: str, event: str) -> None:
        """Count one event that never pairs (update, stop activation)."""
        key = (market, event)
        self._counts[key] = self._counts.get(key, 0) + 1

    def new(self, market: str, order_id: int, client_order_id: str) -> None:
        """An order appeared (event 1 for an unknown id)."""
        self._pairable("new", market, order_id, client_order_id, pairable=bool(client_order_id))

    def finish(self, market: str, order_id: int, client_order_id: str, *, filled: bool) -> None:
        """An order finished (event 3); ``filled`` when nothing was left, which rules out a modify."""
        self._pairable(
            "finish",
            market,
            order_id,
            client_order_id,
            pairable=bool(client_order_id) and not filled,
        )

    def _pairable(
        self,
        kind: str,
        market: str,
        order_id: int,
        client_order_id: str,
        *,
        pairable: bool,
    ) -> None:
        now = self._clock()
        if self._queue:
            self.flush(now)
        if not pairable:
            self.count(market, kind)
            return
        key = (market, client_order_id)
        partners, mine = (
            (self._waiting_finish, self._waiting_new) if kind == "new" else (self._waiting_new, self._waiting_finish)
        )
        partner = partners.get(key)
        if partner is not None:
            del partners[key]
            partner[5] = True
            if partner[4] != order_id:
                self.count(market, "modify")
                return
            # The waiting event is this order's own other half (its new, now its finish): it was no
            # modify's half, and must not pair with a later order's event under the same key.
            self.count(market, partner[1])
        previous = mine.get(key)
        if previous is not None:
            # A second unpaired event of the same kind and key: the first can no longer pair.
            previous[5] = True
            self.count(market, kind)
        entry = [now + self.window, kind, market, client_order_id, order_id, False]
        mine[key] = entry
        self._queue.append(entry)

    def flush(self, now: float | None = None) -> None:
        """Count every waiting finish or new whose window has passed under its own name."""
        if now is None:
            now = self._clock()
        queue = self._queue
        while queue and queue[0][0] <= now:
            entry = queue.popleft()
            if entry[5]:
                continue
            entry[5] = True
            waiting = self._waiting_new if entry[1] == "new" else self._waiting_finish
            key = (entry[2], entry[3])
            if waiting.get(key) is entry:
                del waiting[key]
            self.count(entry[2], entry[1])

    def counts(self) -> dict[tuple[str, str], int]:
        """``(market, event) -> count`` after flushing what has expired."""
        self.flush()
        return dict(self._counts)


class OrderBook:
    """Open orders by id with incrementally maintained aggregates.

    ``apply(event_id, order)`` takes the ``params`` of an ``ordersPending_update``; ``upsert``
    takes a record of an ``ordersPending_request`` page (a snapshot, counted as no event).
    Series of configured markets (both sides, type ``limit``) exist from the start at 0, and a
    series once seen stays (at 0 when empty), so ``sum()`` and ``absent()`` in alert rules behave.
    """

    __slots__ = (
        "_lefts",
        "_markets",
        "_orders",
        "_raw",
        "_restrict",
        "_series",
        "events",
    )

    def __init__(
        self,
        markets: Iterable[str] = (),
        events: OrderEvents | None = None,
        *,
        restrict: bool = False,
    ) -> None:
        self._markets = tuple(markets)
        # With restrict, an order on a market not configured is refused ("unknown_market"): the
        # exporter never read that market's snapshot, so counting its orders would be wrong.
        self._restrict = restrict
        self.events = events if events is not None else OrderEvents(self._markets)
        # order id -> (series, left, client_order_id)
        self._orders: dict[int, tuple[_Series, Decimal, str]] = {}
        self._series: dict[tuple[str, str, str], _Series] = {}
        self._lefts: dict[tuple[str, str], _Left] = {}
        # (market, raw side, raw type) -> series: one dict lookup per event on the hot path
        self._raw: dict[tuple[Any, Any, Any], _Series] = {}
        for market in self._markets:
            for side in ORDER_SIDES:
                self._series_for(market, side, "limit")

    # --- reads ---

    def __len__(self) -> int:
        return len(self._orders)

    def series_values(
        self,
    ) -> tuple[list[tuple[str, str, str, int]], list[tuple[str, str, Decimal]]]:
        """Both aggregates as plain tuples, the cheapest form for a collector."""
        return (
            [(s.market, s.side, s.type, s.count) for s in self._series.values()],
            [(left.market, left.side, left.total) for left in self._lefts.values()],
        )

    # --- writes ---

    def _series_for(self, market: str, side: str, type_: str) -> _Series:
        series = self._series.get((market, side, type_))
        if series is None:
            left = self._lefts.get((market, side))
            if left is None:
                left = self._lefts[(market, side)] = _Left(market, side)
            series = self._series[(market, side, type_)] = _Series(market, side, type_, left)
        return series

    def _resolve(self, market: Any, side: Any, type_: Any) -> _Series:
        # True == 1 and 1.0 == 1 in a dict key: refuse them before the cache could match them.
        if side.__class__ not in _SCALARS or type_.__class__ not in _SCALARS:
            raise InvalidMessage(INVALID_WRONG_TYPE, "side or type is not an integer or a string")
        try:
            return self._raw[(market, side, type_)]
        except KeyError:
            pass
        except TypeError:  # an unhashable value (a list, an object) where a scalar belongs
            raise InvalidMessage(INVALID_WRONG_TYPE, "market, side or type is not a scalar") from None
        if not isinstance(market, str) or not market:
            raise InvalidMessage(INVALID_WRONG_TYPE, "market is not a non-empty string")
        if self._restrict and market not in self._markets:
            raise InvalidMessage(INVALID_UNKNOWN_MARKET, f"market {market[:32]!r} is not configured")
        side_name = SIDE_NAMES.get(side)
        if side_name is None:
            raise InvalidMessage(INVALID_BAD_VALUE, f"unknown side {str(side)[:16]!r}")
        type_name = TYPE_NAMES.get(type_, TYPE_OTHER)
        series = self._series_for(market, side_name, type_name)
        self._raw[(market, side, type_)] = series
        return series

    def _parse(self, order: Any) -> tuple[int, _Series, Decimal, str]:
        if not isinstance(order, dict):
            raise InvalidMessage(INVALID_WRONG_TYPE, "order is not an object")
        try:
            order_id = order["id"]
            market = order["market"]
            side = order["side"]
            type_ = order["type"]
            left_raw = order["left"]
        except KeyError as exc:
            raise InvalidMessage(INVALID_MISSING_FIELD, f"order has no {exc.args[0]!r}") from None
        if order_id.__class__ is not int:
            raise InvalidMessage(INVALID_WRONG_TYPE, "id is not an integer")
        series = self._resolve(market, side, type_)
        left = parse_amount(left_raw, "left")
        if left < 0:
            raise InvalidMessage(INVALID_BAD_VALUE, "left is negative")
        client_order_id = order.get("client_order_id")
        if client_order_id is None:
            client_order_id = order.get("clientOrderId") or ""
        elif client_order_id.__class__ is not str:
            raise InvalidMessage(INVALID_WRONG_TYPE, "client_order_id is not a string")
        return order_id, series, left, client_order_id

    def _put(self, order_id: int, series: _Series, left: Decimal, client_order_id: str) -> bool:
        """Upsert; True when the id was already open."""
        old = self._orders.get(order_id)
        self._orders[order_id] = (series, left, client_order_id)
        if old is None:
            series.count += 1
            series.left.total = _add(series.left.total, left)
            return False
        old_series, old_left, _ = old
        if old_series is series:
            if old_left != left:
                series.left.total = _add(_sub(series.left.total, old_left), left)
        else:  # market, side or type changed: move the contribution
            old_series.count -= 1
            old_series.left.total = _sub(old_series.left.total, old_left)
            series.count += 1
            series.left.total = _add(series.left.total, left)
        return True

    def _drop(self, order_id: int) -> bool:
        old = self._orders.pop(order_id, None)
        if old is None:
            return False
        series, left, _ = old
        series.count -= 1
        series.left.total = _sub(series.left.total, left)
        return True

    def apply(self, event_id: Any, order: Any) -> str:
        """Apply one ``ordersPending_update``; returns what it was (``new``, ``update``, ``finish``,
        ``stop_activated``). Raises :class:`InvalidMessage` (state untouched) for a bad event."""
        order_id, series, left, client_order_id = self._parse(order)
        events = self.events
        if event_id == EVENT_NEW and event_id.__class__ is int:
            if self._put(order_id, series, left, client_order_id):
                # A second "new" for an open id: WhiteBIT's only stop-activation signal.
                events.count(series.market, "stop_activated")
                return "stop_activated"
            events.new(series.market, order_id, client_order_id)
            return "new"
        if event_id == EVENT_UPDATE and event_id.__class__ is int:
            self._put(order_id, series, left, client_order_id)
            events.count(series.market, "update")
            return "update"
        if event_id == EVENT_FINISH and event_id.__class__ is int:
            self._drop(order_id)
            status = order.get("status")
            filled = status == "FILLED" or (status is None and left == 0)
            events.finish(series.market, order_id, client_order_id, filled=filled)
            return "finish"
        raise InvalidMessage(INVALID_BAD_VALUE, f"unknown event id {str(event_id)[:16]!r}")

    def upsert(self, order: Any) -> int:
        """Apply one snapshot record (no event counted); returns its id."""
        order_id, series, left, client_order_id = self._parse(order)
        self._put(order_id, series, left, client_order_id)
        return order_id

    def replace_with(self, other: OrderBook) -> None:
        """Take ``other``'s orders as the whole truth (after a resync), keeping every series seen.

        O(series + orders of ``other``): the aggregates are rebuilt from ``other``'s, whose
        series objects are re-keyed into this book.
        """
        for s in self._series.values():
            s.count = 0
        for left in self._lefts.values():
            left.total = ZERO
        mapping: dict[int, _Series] = {}
        for series_key, theirs in other._series.items():
            mine = self._series_for(*series_key)
            mine.count = theirs.count
            mapping[id(theirs)] = mine
        for left_key, theirs_left in other._lefts.items():
            self._lefts_for(left_key).total = theirs_left.total
        self._orders = {oid: (mapping[id(s)], left, coid) for oid, (s, left, coid) in other._orders.items()}
        self._raw = {raw: mapping[id(s)] for raw, s in other._raw.items()}

    def _lefts_for(self, key: tuple[str, str]) -> _Left:
        left = self._lefts.get(key)
        if left is None:
            left = self._lefts[key] = _Left(*key)
        return left

    def staging(self) -> OrderBook:
        """An empty book sharing this one's event counters, to be filled during a resync."""
        return OrderBook(self._markets, self.events, restrict=self._restrict)


def _time(value: Any) -> float | None:
    """A ``ctime``/``mtime`` as a float, or None when absent or not a number."""
    if value.__class__ is float or value.__class__ is int:
        return float(value)
    return None


def _newer(a: tuple[float | None, Decimal], b: tuple[float | None, Decimal]) -> bool:
    """True when order state ``a`` (``mtime``, ``left``) is later than ``b``.

    ``mtime`` decides; with equal or unknown times the smaller ``left`` is later, because an order's
    ``left`` only shrinks (a modify makes a new order with a new id).
    """
    if a[0] is not None and b[0] is not None and a[0] != b[0]:
        return a[0] > b[0]
    return a[1] < b[1]


class SnapshotMerge:
    """Snapshot records and ``ordersPending_update`` pushes, in whatever order they arrive, into one book.

    Used while a snapshot is read into a staging book and for a grace period after the staging book
    became the live one (:attr:`book` is then pointed at it), because a reply and a push computed
    around the same moment may arrive either way round (docs/protocol.md#open-order-listing). For
    every order id it remembers the state it holds (``mtime``, ``left``) and whether a push for the
    id was seen, and it remembers every id that finished:

    - :meth:`record` (a page record, never an event) is applied only when it is later than what the
      book holds, and never for an id that finished: a page computed before a finish may arrive
      after it, and must not bring the order back;
    - :meth:`push` counts every push once, like :meth:`OrderBook.apply`, and applies its state
      unless the book already holds a later one;
    - a "new" is a stop activation when the id is open and a push for it was seen (WhiteBIT's rule).
      For an id known only from a record, or not known yet, the record and the push may be the same
      creation seen twice, so the order itself decides: only a stop order (types 3, 4, 9, 10) can be
      activated, and an activation happens after creation, so its ``mtime`` is later than its
      ``ctime``; a creation has them equal. Without both times the id rule applies.

    ``finishes`` counts finish pushes per market (the snapshot paging reads it as a hint of how far
    the listing moved).
    """

    __slots__ = ("_finished", "_seen", "book", "expires_at", "finishes")

    def __init__(self, book: OrderBook) -> None:
        self.book = book
        # order id -> (mtime, left, a push for it was seen) of the state the book holds
        self._seen: dict[int, tuple[float | None, Decimal, bool]] = {}
        self._finished: set[int] = set()
        self.finishes: dict[str, int] = {}
        #: Monotonic time after which the owner drops the merge (None while the snapshot is read).
        self.expires_at: float | None = None

    def record(self, order: Any) -> int:
        """Apply one ``ordersPending_request`` record (no event); returns its id."""
        book = self.book
        order_id, series, left, client_order_id = book._parse(order)
        if order_id in self._finished:
            return order_id
        state = (_time(order.get("mtime")), left)
        seen = self._seen.get(order_id)
        if seen is None:
            book._put(order_id, series, left, client_order_id)
            self._seen[order_id] = (*state, False)
        elif _newer(state, seen[:2]):
            book._put(order_id, series, left, client_order_id)
            self._seen[order_id] = (*state, seen[2])
        return order_id

    def push(self, event_id: Any, order: Any) -> str:
        """Apply one ``ordersPending_update`` (as :meth:`OrderBook.apply`); returns what it was."""
        book = self.book
        order_id, series, left, client_order_id = book._parse(order)
        events = book.events
        market = series.market
        if event_id.__class__ is not int or event_id not in (EVENT_NEW, EVENT_UPDATE, EVENT_FINISH):
            raise InvalidMessage(INVALID_BAD_VALUE, f"unknown event id {str(event_id)[:16]!r}")
        if event_id == EVENT_FINISH:
            book._drop(order_id)
            self._seen.pop(order_id, None)
            self._finished.add(order_id)
            self.finishes[market] = self.finishes.get(market, 0) + 1
            status = order.get("status")
            filled = status == "FILLED" or (status is None and left == 0)
            events.finish(market, order_id, client_order_id, filled=filled)
            return "finish"
        seen = self._seen.get(order_id)
        is_open = order_id in book._orders
        if event_id == EVENT_UPDATE:
            kind = "update"
            events.count(market, kind)
        elif self._is_activation(order, is_open, seen):
            kind = "stop_activated"
            events.count(market, kind)
        else:
            kind = "new"
            events.new(market, order_id, client_order_id)
        if order_id in self._finished:
            # Cannot happen while pushes keep their order; a finished order never comes back.
            return kind
        state = (_time(order.get("mtime")), left)
        if seen is None or not is_open or not _newer(seen[:2], state):
            book._put(order_id, series, left, client_order_id)
            self._seen[order_id] = (*state, True)
        else:
            self._seen[order_id] = (*seen[:2], True)
        return kind

    @staticmethod
    def _is_activation(order: dict[str, Any], is_open: bool, seen: tuple[float | None, Decimal, bool] | None) -> bool:
        if is_open and (seen is None or seen[2]):
            return True  # the book knew the order from a push (or from before the merge began)
        if order.get("type") not in STOP_TYPES:
            return False
        ctime = _time(order.get("ctime"))
        mtime = _time(order.get("mtime"))
        if ctime is not None and mtime is not None:
            return mtime > ctime
        return is_open
