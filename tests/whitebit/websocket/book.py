"""Test-side views of the order book: what the tests compare the exporter's state against.

The product renders the book through its collector only; these helpers read the book's state
directly so a test can name an order id or wait for the modify-pairing window to pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from exporter.whitebit.websocket.orders import SIDE_NAMES, TYPE_NAMES, TYPE_OTHER, OrderBook, OrderEvents


def open_ids(book: OrderBook) -> set[int]:
    """Every open order id."""
    return set(book._orders)


def pending_events(events: OrderEvents) -> int:
    """Events still waiting for a possible modify partner (after flushing what has expired)."""
    events.flush()
    return sum(1 for entry in events._queue if not entry[5])


def aggregate(
    orders: Iterable[Mapping[str, Any]],
) -> tuple[dict[tuple[str, str, str], int], dict[tuple[str, str], Decimal]]:
    """The aggregates of a plain list of order objects, computed from scratch: the reference model.

    Counts per (market, side, type) and ``left`` per (market, side), only for groups that have orders.
    """
    counts: dict[tuple[str, str, str], int] = {}
    lefts: dict[tuple[str, str], Decimal] = {}
    for order in orders:
        side = SIDE_NAMES[order["side"]]
        key = (order["market"], side, TYPE_NAMES.get(order["type"], TYPE_OTHER))
        counts[key] = counts.get(key, 0) + 1
        lefts[(order["market"], side)] = lefts.get((order["market"], side), Decimal(0)) + Decimal(str(order["left"]))
    return counts, lefts
