"""The WebSocket, open-order and order-event families of every account's private WebSocket.

Rendered on each scrape from the sources' own state (the order book's aggregates, the connection's
counters), so a scrape walks the series, never the orders.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.metrics import (
    WHITEBIT_OPEN_ORDERS,
    WHITEBIT_OPEN_ORDERS_LEFT,
    WHITEBIT_ORDER_EVENTS,
    WHITEBIT_WEBSOCKET_CHANNEL_SYNCED,
    WHITEBIT_WEBSOCKET_CONNECTED,
    WHITEBIT_WEBSOCKET_ERRORS,
    WHITEBIT_WEBSOCKET_LAST_MESSAGE_TIMESTAMP_SECONDS,
    WHITEBIT_WEBSOCKET_MESSAGES_INVALID,
    WHITEBIT_WEBSOCKET_RECONNECTS,
)
from exporter.whitebit.websocket.source import WebSocketSource


class WebSocketCollector(Collector):
    """The WebSocket, open-order and order-event families of every source added.

    ::

        whitebit_websocket_connected{account="main"} 1.0
        whitebit_websocket_channel_synced{account="main",channel="balanceMargin"} 0.0
        whitebit_open_orders{account="main",market="BTC_USDT",side="buy",type="limit"} 3.0
        whitebit_order_events_total{account="main",event="modify",market="BTC_USDT"} 1.0
    """

    def __init__(self, sources: Iterable[WebSocketSource] = ()) -> None:
        self._sources: list[WebSocketSource] = list(sources)

    def add(self, source: WebSocketSource) -> None:
        """Render ``source`` too."""
        self._sources.append(source)

    def collect(self) -> Iterator[Metric]:
        connected = WHITEBIT_WEBSOCKET_CONNECTED.family()
        channels = WHITEBIT_WEBSOCKET_CHANNEL_SYNCED.family()
        reconnects = WHITEBIT_WEBSOCKET_RECONNECTS.family()
        last_message = WHITEBIT_WEBSOCKET_LAST_MESSAGE_TIMESTAMP_SECONDS.family()
        open_orders = WHITEBIT_OPEN_ORDERS.family()
        left = WHITEBIT_OPEN_ORDERS_LEFT.family()
        events = WHITEBIT_ORDER_EVENTS.family()
        invalid = WHITEBIT_WEBSOCKET_MESSAGES_INVALID.family()
        errors = WHITEBIT_WEBSOCKET_ERRORS.family()
        for source in self._sources:
            account = source.account
            connected.add_metric([account], 1.0 if source.connected else 0.0)
            for channel in source.channels:
                channels.add_metric([account, channel.name], 1.0 if channel.synced else 0.0)
            reconnects.add_metric([account], source.reconnects)
            if source.last_message_at is not None:
                last_message.add_metric([account], source.last_message_at)
            counts, lefts = source.book.series_values()
            for market, side, type_, count in counts:
                open_orders.add_metric([account, market, side, type_], count)
            for market, side, total in lefts:
                left.add_metric([account, market, side], float(total))
            for (market, event), count in source.book.events.counts().items():
                events.add_metric([account, market, event], count)
            for reason, count in source.invalid.items():
                invalid.add_metric([account, reason], count)
            for method, count in source.errors.items():
                errors.add_metric([account, method], count)
        yield connected
        yield channels
        yield reconnects
        yield last_message
        yield open_orders
        yield left
        yield events
        yield invalid
        yield errors
