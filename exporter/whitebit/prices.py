"""Prices of the assets the accounts hold, in one quote asset, from WhiteBIT's public ticker.

One supervised task, ``rest:prices:<account>``, reads ``GET /api/v4/public/ticker`` every
``prices.interval`` (default a minute): one unsigned request answers every market, so the cost is
one request a minute whatever the number of assets, against the 2,000 per 10 s WhiteBIT allows
(docs/protocol.md#public-ticker). It is named after the first account with API credentials and goes
through that account's REST client, base URL and the shared rate limiter (the ``public/ticker``
family), so it is retried, counted and timed like every other REST call
(``whitebit_rest_requests_total{endpoint="/api/v4/public/ticker"}``), as the clock measurement is.

**What is priced.** Every asset some account has a ``whitebit_balance`` series for (in any wallet),
against the last ticker read, at each scrape: an asset that shows up between two reads is priced
from the last read at once, so every price is exactly as old as
``whitebit_price_last_update_timestamp_seconds`` says.

**How an asset A is priced in the quote Q** (a price is the last trade price, in Q per A):

- A is Q: exactly 1;
- else the market ``A_Q``: its ``last_price``;
- else the market ``Q_A``: 1 / its ``last_price`` (the same trade seen from the other side; divided
  with 28 significant digits, then rounded to float64 like every exported value);
- else no price and no series. There is no second hop through a third asset: the product of two
  last prices, traded at different moments, is no price any trade was made at, and its error is
  the sum of both markets' staleness, which the ticker does not report.

A market is passed over (and the other direction tried) when trading on it is disabled
(``isFrozen``: its last price may be arbitrarily old), when it has no trade (``last_price`` ``0``,
empty, null or missing) or when its entry does not parse (a price that is not a finite, non-negative
decimal; ``isFrozen`` that is not a boolean). Why a held asset has no price is logged when that
changes, as ``reason``: ``no_market``, ``frozen``, ``no_trades`` or ``malformed``.

**Failures.** A read that fails (an HTTP error after the client's retries; an answer that is not an
object of markets, such as an error envelope with status 200 or an empty object) changes nothing:
the previous read's prices stay, and the timestamp shows their age. Prices are no account's data,
so they count neither towards ``whitebit_up`` nor towards ``/-/ready``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.metrics import WHITEBIT_PRICE, WHITEBIT_PRICE_LAST_UPDATE_TIMESTAMP_SECONDS, LabelValues
from exporter.whitebit.rest import PUBLIC_TICKER, ResponseError, RestClient

log = logging.getLogger(__name__)

#: Why a held asset has no price (the ``reason`` of the log line).
NO_MARKET = "no_market"
FROZEN = "frozen"
NO_TRADES = "no_trades"
MALFORMED = "malformed"

ONE = Decimal(1)
#: Keys of WhiteBIT's error envelopes; no market is called that (market names are BASE_QUOTE).
_ENVELOPE_KEYS = ("success", "message", "error", "errors", "params", "result", "code")


@dataclass(frozen=True)
class MarketQuote:
    """What the ticker says of one market: its last price (None: no trade yet) and whether trading is off."""

    last_price: Decimal | None
    frozen: bool


def parse_market(entry: Any) -> MarketQuote:
    """One value of the ticker object; raises :class:`ValueError` saying what is wrong with it.

    ``last_price`` is a decimal string as documented, or a JSON number (parsed as ``Decimal(str(x))``);
    ``0``, ``""``, ``null`` and a missing one mean no trade. ``isFrozen`` missing means not frozen.
    """
    if not isinstance(entry, dict):
        raise ValueError(f"expected an object, got {type(entry).__name__}")
    raw = entry.get("last_price")
    last_price: Decimal | None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        last_price = None
    elif isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(f"last_price: expected a decimal, got {type(raw).__name__}")
    else:
        try:
            last_price = Decimal(str(raw).strip())
        except InvalidOperation:
            raise ValueError(f"last_price: not a decimal: {str(raw)[:40]!r}") from None
        if not last_price.is_finite() or last_price < 0:
            raise ValueError(f"last_price: not a finite, non-negative decimal: {str(raw)[:40]!r}")
        if last_price == 0:
            last_price = None
    frozen = entry.get("isFrozen", False)
    if not isinstance(frozen, bool):
        raise ValueError(f"isFrozen: expected true or false, got {str(frozen)[:40]!r}")
    return MarketQuote(last_price, frozen)


class Ticker:
    """One answer of ``/api/v4/public/ticker``: markets by name, each parsed when first asked for.

    Raises :class:`~exporter.whitebit.rest.ResponseError` for an answer that is no ticker: not a JSON
    object, an error envelope, or an object without a single market.
    """

    def __init__(self, document: Any) -> None:
        if not isinstance(document, dict):
            raise ResponseError(PUBLIC_TICKER, f"expected a JSON object keyed by market, got {type(document).__name__}")
        envelope = [key for key in _ENVELOPE_KEYS if key in document and not isinstance(document[key], dict)]
        if envelope:
            message = document.get("message")
            detail = f": {message[:200]}" if isinstance(message, str) and message else ""
            raise ResponseError(PUBLIC_TICKER, f"an error answer, not a ticker ({', '.join(envelope)}){detail}")
        if not document:
            raise ResponseError(PUBLIC_TICKER, "the ticker lists no market")
        self._document = document
        self._parsed: dict[str, MarketQuote | ValueError | None] = {}

    def market(self, name: str) -> MarketQuote | None:
        """The market called ``name``, or None when the ticker does not list it; :class:`ValueError` if malformed."""
        if name not in self._parsed:
            entry: MarketQuote | ValueError | None = None
            if name in self._document:
                try:
                    entry = parse_market(self._document[name])
                except ValueError as error:
                    entry = error
            self._parsed[name] = entry
        found = self._parsed[name]
        if isinstance(found, ValueError):
            raise found
        return found


@dataclass(frozen=True)
class Pricing:
    """An asset's price in the quote and where it came from, or why it has none."""

    price: Decimal | None
    #: The market it was read from (None for the quote itself or without a price).
    market: str | None = None
    #: True when read from the market quoted the other way round (``QUOTE_ASSET``).
    inverse: bool = False
    #: Why there is no price (``no_market``, ``frozen``, ``no_trades``, ``malformed``); "" with one.
    reason: str = ""
    detail: str = ""


def price_in(asset: str, quote: str, ticker: Ticker) -> Pricing:
    """The price of one ``asset`` in ``quote``: 1 for the quote, the direct market, the inverse one, or none."""
    if asset == quote:
        return Pricing(ONE)
    problems: list[tuple[str, str]] = []
    for market, inverse in ((f"{asset}_{quote}", False), (f"{quote}_{asset}", True)):
        try:
            entry = ticker.market(market)
        except ValueError as error:
            problems.append((MALFORMED, f"{market}: {error}"))
            continue
        if entry is None:
            continue
        if entry.frozen:
            problems.append((FROZEN, f"{market}: trading is disabled (isFrozen)"))
        elif entry.last_price is None:
            problems.append((NO_TRADES, f"{market}: no trade (last_price 0)"))
        else:
            price = ONE / entry.last_price if inverse else entry.last_price
            return Pricing(price, market=market, inverse=inverse)
    if not problems:
        return Pricing(None, reason=NO_MARKET, detail=f"the ticker lists neither {asset}_{quote} nor {quote}_{asset}")
    return Pricing(None, reason=problems[0][0], detail="; ".join(text for _, text in problems))


class Prices(Collector):
    """The last ticker read and what it prices: ``whitebit_price`` for every held asset it prices.

    ::

        whitebit_price{asset="BTC",quote="USDT"} 60125.5
        whitebit_price{asset="USDT",quote="USDT"} 1.0
        whitebit_price_last_update_timestamp_seconds{quote="USDT"} 1.7e+09

    The timestamp is there from the start (``watching_since`` until the first read), so a ticker
    that never answers goes stale like one that stopped.
    """

    def __init__(self, quote: str, held: Callable[[], Iterable[str]], *, watching_since: float | None = None) -> None:
        self.quote = quote
        self._held = held
        self.watching_since = watching_since
        self._ticker: Ticker | None = None
        self._updated: float | None = None

    @property
    def updated_at(self) -> float | None:
        """When the ticker in use was read (the poll's start), or None before the first read."""
        return self._updated

    def update(self, ticker: Ticker, timestamp: float) -> bool:
        """Price from ``ticker``, read at ``timestamp``; refused (False) when an older read than the one in use."""
        if self._updated is not None and timestamp < self._updated:
            return False
        self._ticker = ticker
        self._updated = timestamp
        return True

    def current(self) -> dict[str, Pricing]:
        """Every held asset's pricing from the last ticker read (empty before the first read)."""
        ticker = self._ticker
        if ticker is None:
            return {}
        return {asset: price_in(asset, self.quote, ticker) for asset in sorted(set(self._held()))}

    def collect(self) -> Iterator[Metric]:
        priced: dict[LabelValues, float] = {
            (asset, self.quote): float(pricing.price)
            for asset, pricing in self.current().items()
            if pricing.price is not None
        }
        yield WHITEBIT_PRICE.render(priced)
        timestamp = self._updated if self._updated is not None else self.watching_since
        yield WHITEBIT_PRICE_LAST_UPDATE_TIMESTAMP_SECONDS.render(
            {} if timestamp is None else {(self.quote,): timestamp}
        )


class PricePoll:
    """One read of the ticker into :class:`Prices`; logs each held asset whose price comes or goes."""

    kind = "prices"

    def __init__(self, client: RestClient, prices: Prices, *, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._prices = prices
        self._clock = clock
        self._reasons: dict[str, str] = {}  # asset -> reason it had no price at the last read ("" priced)

    async def __call__(self) -> None:
        started = self._clock()
        ticker = Ticker(await self._client.get_public(PUBLIC_TICKER))
        if self._prices.update(ticker, started):
            self._report(self._prices.current())

    def _report(self, pricings: Mapping[str, Pricing]) -> None:
        quote = self._prices.quote
        for asset, pricing in pricings.items():
            previous = self._reasons.get(asset)
            self._reasons[asset] = pricing.reason
            if pricing.reason and pricing.reason != previous:
                log.warning(
                    "no price for a held asset",
                    extra={"asset": asset, "quote": quote, "reason": pricing.reason, "detail": pricing.detail},
                )
            elif not pricing.reason and previous:
                log.info(
                    "price available again",
                    extra={"asset": asset, "quote": quote, "market": pricing.market},
                )
