"""REST pollers of one WhiteBIT account: main balance, collateral, and trade balance as a fallback.

Each poll kind runs as its own supervised source (``rest:main_balance:<account>`` …) with its own
health entry, so a slow or failing poll delays only itself: the others keep their schedule, and a
scrape only reads the state they left (it never waits on a poll). The first poll of each comes at a
random offset within the first ``min(interval, 5 s)``, so an exporter with many accounts does not
send all its polls at once; after that each runs at a fixed rate on its own phase, skipping (not
bunching up) the ticks a slow poll overran. The shared rate limiter evens out whatever coincides.

What each poll does:

- **main balance** (``poll.main_balance``): ``/api/v4/main-account/balance`` replaces the ``main``
  wallet. WhiteBIT may list every asset, mostly at zero, or leave zero balances out (the sources
  disagree, docs/protocol.md#main-balance); :class:`~exporter.whitebit.balances.AccountBalances`
  decides what is exported (an asset once it held something, then at 0 when emptied or left out).
- **collateral** (``poll.collateral``): ``/api/v4/collateral-account/summary`` every time, for the
  ``whitebit_collateral_*`` account gauges, which have no WebSocket source. The collateral *wallet*
  comes from the WebSocket (``balanceMargin``) while it is connected; only while it is not does this
  poll also read ``/api/v4/collateral-account/balance-summary`` (balance and borrow as decimal
  strings, unlike ``/balance`` whose JSON numbers may have lost digits) and replace the wallet.
- **trade balance** (``poll.trade_balance``): the spot wallet comes from the WebSocket
  (``balanceSpot``, all assets, whatever the configured markets); this poll reads
  ``/api/v4/trade-account/balance`` and replaces the spot wallet only while that account's
  WebSocket source is not healthy (disconnected, stale, or not configured), so spot balances stay
  fresh through a WebSocket outage without spending requests while it is up.

Writes carry the wall-clock time the poll *started*: :class:`AccountBalances` refuses a write older
than the wallet's last update, so an answer that was in flight while the WebSocket pushed a newer
value cannot overwrite it. A poll answer that does not parse is rejected whole (a wrong number is
worse than none): the wallet keeps its previous values and timestamp, and the source reports failing.

**Failures.** Each poller reports to a :class:`~exporter.core.outage.SourceStatus`: a poll that failed
(after its REST client's retries) fails the source, with its reason on ``/-/ready`` and in the
source's outage log (one line when it starts failing, a summary every 5 minutes at most, one when it
recovers). Each poll calls WhiteBIT through a client made for its poller
(:meth:`~exporter.whitebit.rest.RestClient.observed`), which tells the status of each attempt it
retries: detail while the source is OK, but the reason of a source that is starting or already
failing, so ``/-/ready`` names the cause from the first failed attempt.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.config.schema import PollConfig
from exporter.core.health import HealthRegistry
from exporter.core.metrics import (
    WHITEBIT_COLLATERAL_ACCOUNT_LAST_UPDATE_TIMESTAMP_SECONDS,
    WHITEBIT_COLLATERAL_EQUITY,
    WHITEBIT_COLLATERAL_FREE_MARGIN,
    WHITEBIT_COLLATERAL_MARGIN,
    WHITEBIT_COLLATERAL_MARGIN_FRACTION,
)
from exporter.core.outage import SourceStatus
from exporter.whitebit.balances import WALLET_COLLATERAL, WALLET_MAIN, WALLET_SPOT
from exporter.whitebit.rest import (
    COLLATERAL_BALANCE_SUMMARY,
    COLLATERAL_SUMMARY,
    MAIN_BALANCE,
    TRADE_BALANCE,
    ResponseError,
    RestClient,
    RestError,
)

log = logging.getLogger(__name__)

#: First polls are spread over this many seconds at most (less when the interval is shorter).
START_SPREAD = 5.0
#: A poller's health turns stale when no poll succeeded for ``STALE_INTERVALS`` intervals plus
#: ``STALE_SLACK`` seconds (room for a full round of retries with backoff).
STALE_INTERVALS = 3
STALE_SLACK = 120.0
#: WhiteBIT's ``marginFraction`` when the account holds no position (old docs); exported as +Inf.
NO_POSITIONS_MARGIN_FRACTION = Decimal(1000000000000000000000)


class BalanceStore(Protocol):
    """The writes the pollers make (:class:`exporter.whitebit.balances.AccountBalances`)."""

    def replace_wallet(self, wallet: str, totals: Mapping[str, Decimal], timestamp: float) -> bool: ...

    def replace_spot(self, balances: Mapping[str, tuple[Decimal, Decimal]], timestamp: float) -> bool: ...

    def replace_collateral(self, balances: Mapping[str, tuple[Decimal, Decimal]], timestamp: float) -> bool: ...


# --- parsing ----------------------------------------------------------------------------------


def _amount(endpoint: str, where: str, value: Any) -> Decimal:
    """A finite decimal from a string or JSON number (parsed as ``Decimal(str(x))``, docs/protocol.md#rest-basics)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ResponseError(endpoint, f"{where}: expected a decimal, got {type(value).__name__}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ResponseError(endpoint, f"{where}: not a decimal: {str(value)[:40]!r}") from None
    if not amount.is_finite():
        raise ResponseError(endpoint, f"{where}: not a finite decimal: {str(value)[:40]!r}")
    return amount


def _asset(endpoint: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 32:
        raise ResponseError(endpoint, f"invalid asset name {str(value)[:40]!r}")
    return value


def _object(endpoint: str, document: Any) -> dict[str, Any]:
    if not isinstance(document, dict):
        raise ResponseError(endpoint, f"expected a JSON object, got {type(document).__name__}")
    return document


def parse_main_balance(document: Any) -> dict[str, Decimal]:
    """``{"BTC": {"main_balance": "0.015"}, …}`` → ``{"BTC": Decimal("0.015")}``."""
    totals: dict[str, Decimal] = {}
    for asset, entry in _object(MAIN_BALANCE, document).items():
        name = _asset(MAIN_BALANCE, asset)
        fields = _object(MAIN_BALANCE, entry)
        if "main_balance" not in fields:
            raise ResponseError(MAIN_BALANCE, f"{name}: no main_balance")
        totals[name] = _amount(MAIN_BALANCE, f"{name}.main_balance", fields["main_balance"])
    return totals


def parse_trade_balance(document: Any) -> dict[str, tuple[Decimal, Decimal]]:
    """``{"USDT": {"available": "…", "freeze": "…"}, …}`` → ``{"USDT": (available, freeze)}``."""
    balances: dict[str, tuple[Decimal, Decimal]] = {}
    for asset, entry in _object(TRADE_BALANCE, document).items():
        name = _asset(TRADE_BALANCE, asset)
        fields = _object(TRADE_BALANCE, entry)
        balances[name] = (
            _amount(TRADE_BALANCE, f"{name}.available", fields.get("available")),
            _amount(TRADE_BALANCE, f"{name}.freeze", fields.get("freeze")),
        )
    return balances


def parse_collateral_balance_summary(
    document: Any,
) -> dict[str, tuple[Decimal, Decimal]]:
    """``[{"asset", "balance", "borrow", …}, …]`` → ``{"USDT": (balance, borrow)}``."""
    if not isinstance(document, list):
        raise ResponseError(
            COLLATERAL_BALANCE_SUMMARY,
            f"expected a JSON array, got {type(document).__name__}",
        )
    balances: dict[str, tuple[Decimal, Decimal]] = {}
    for entry in document:
        fields = _object(COLLATERAL_BALANCE_SUMMARY, entry)
        name = _asset(COLLATERAL_BALANCE_SUMMARY, fields.get("asset"))
        balances[name] = (
            _amount(COLLATERAL_BALANCE_SUMMARY, f"{name}.balance", fields.get("balance")),
            _amount(COLLATERAL_BALANCE_SUMMARY, f"{name}.borrow", fields.get("borrow", "0")),
        )
    return balances


@dataclass(frozen=True)
class CollateralSummary:
    """The account-level collateral figures, in the collateral valuation currency (USDT)."""

    equity: Decimal
    margin: Decimal
    free_margin: Decimal
    margin_fraction: float  # +Inf when there is no open position
    timestamp: float


def parse_collateral_summary(document: Any, timestamp: float) -> CollateralSummary:
    """``{equity, margin, freeMargin, marginFraction, …}`` (strings, as documented)."""
    fields = _object(COLLATERAL_SUMMARY, document)
    fraction = _amount(COLLATERAL_SUMMARY, "marginFraction", fields.get("marginFraction"))
    return CollateralSummary(
        equity=_amount(COLLATERAL_SUMMARY, "equity", fields.get("equity")),
        margin=_amount(COLLATERAL_SUMMARY, "margin", fields.get("margin")),
        free_margin=_amount(COLLATERAL_SUMMARY, "freeMargin", fields.get("freeMargin")),
        margin_fraction=math.inf if fraction >= NO_POSITIONS_MARGIN_FRACTION else float(fraction),
        timestamp=timestamp,
    )


# --- the polls --------------------------------------------------------------------------------


class MainBalancePoll:
    """One main-balance poll: the whole ``main`` wallet, vanished assets at 0."""

    kind = "main_balance"

    def __init__(
        self,
        client: RestClient,
        balances: BalanceStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._balances = balances
        self._clock = clock

    async def __call__(self) -> None:
        started = self._clock()
        totals = parse_main_balance(await self._client.post(MAIN_BALANCE))
        self._balances.replace_wallet(WALLET_MAIN, totals, started)


class CollateralPoll:
    """One collateral poll: the summary always, the wallet only while the WebSocket cannot."""

    kind = "collateral"

    def __init__(
        self,
        client: RestClient,
        balances: BalanceStore,
        summaries: CollateralSummaries,
        *,
        websocket_supplies: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._balances = balances
        self._summaries = summaries
        self._websocket_supplies = websocket_supplies
        self._clock = clock

    async def __call__(self) -> None:
        started = self._clock()
        document = await self._client.post(COLLATERAL_SUMMARY)
        self._summaries.set(self._client.account, parse_collateral_summary(document, started))
        if self._websocket_supplies(WALLET_COLLATERAL):
            return
        started = self._clock()
        balances = parse_collateral_balance_summary(await self._client.post(COLLATERAL_BALANCE_SUMMARY))
        if not self._websocket_supplies(WALLET_COLLATERAL):
            self._balances.replace_collateral(balances, started)


class TradeBalancePoll:
    """One trade-balance poll, made only while the account's WebSocket cannot supply the spot wallet."""

    kind = "trade_balance"

    def __init__(
        self,
        client: RestClient,
        balances: BalanceStore,
        *,
        websocket_supplies: Callable[[str], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._balances = balances
        self._websocket_supplies = websocket_supplies
        self._clock = clock

    async def __call__(self) -> None:
        if self._websocket_supplies(WALLET_SPOT):
            return
        started = self._clock()
        balances = parse_trade_balance(await self._client.post(TRADE_BALANCE))
        # The WebSocket may have come back (and written newer values) while this was in flight.
        if not self._websocket_supplies(WALLET_SPOT):
            self._balances.replace_spot(balances, started)


# --- scheduling -------------------------------------------------------------------------------


class Poller:
    """Runs one poll every ``interval`` seconds as a supervised source, reporting to its ``status`` (whose
    health entry the price poll has none of, since prices are no account's data, see exporter.whitebit.prices)."""

    def __init__(
        self,
        *,
        account: str,
        kind: str,
        interval: float,
        poll: Callable[[], Awaitable[None]],
        status: SourceStatus,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        start_spread: float = START_SPREAD,
    ) -> None:
        self.account = account
        self.kind = kind
        self.interval = interval
        self._poll = poll
        self.status = status
        self.health = status.health
        self._monotonic = monotonic
        #: Seconds from the start of ``run()`` to the first poll: random, so polls do not coincide.
        self.start_offset = (rng if rng is not None else random.Random()).uniform(0.0, min(interval, start_spread))

    @property
    def name(self) -> str:
        """The supervisor task name, ``rest:<kind>:<account>``."""
        return f"rest:{self.kind}:{self.account}"

    async def run(self) -> None:
        """Poll forever on a fixed-rate schedule; a failed poll is reported and the schedule kept."""
        next_at = self._monotonic() + self.start_offset
        while True:
            delay = next_at - self._monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await self._poll_once()
            next_at += self.interval
            now = self._monotonic()
            if next_at < now:
                # Overran: keep the phase, skip the missed ticks instead of firing them back to back.
                next_at += math.ceil((now - next_at) / self.interval) * self.interval

    async def _poll_once(self) -> None:
        try:
            await self._poll()
        except RestError as error:
            self.status.failed(str(error))
            log.debug("poll failed", extra={"account": self.account, "poll": self.kind, "reason": str(error)})
        except Exception:
            # A bug, not WhiteBIT: the supervisor logs and restarts the task; readiness says so meanwhile.
            self.status.failed("internal error (see the log)")
            raise
        else:
            self.status.ok()


# --- the collateral summary gauges -------------------------------------------------------------


class CollateralSummaries(Collector):
    """The latest ``/collateral-account/summary`` of every account.

    ::

        whitebit_collateral_equity{account="main"} 27500.0
        whitebit_collateral_margin_fraction{account="main"} +Inf
    """

    def __init__(self) -> None:
        self._latest: dict[str, CollateralSummary] = {}

    def set(self, account: str, summary: CollateralSummary) -> None:
        """Keep ``summary`` as the account's latest (an older one never replaces a newer one)."""
        current = self._latest.get(account)
        if current is None or summary.timestamp >= current.timestamp:
            self._latest[account] = summary

    def collect(self) -> Iterator[Metric]:
        latest = sorted(self._latest.items())
        yield WHITEBIT_COLLATERAL_EQUITY.render({(account,): float(s.equity) for account, s in latest})
        yield WHITEBIT_COLLATERAL_MARGIN.render({(account,): float(s.margin) for account, s in latest})
        yield WHITEBIT_COLLATERAL_FREE_MARGIN.render({(account,): float(s.free_margin) for account, s in latest})
        yield WHITEBIT_COLLATERAL_MARGIN_FRACTION.render({(account,): s.margin_fraction for account, s in latest})
        yield WHITEBIT_COLLATERAL_ACCOUNT_LAST_UPDATE_TIMESTAMP_SECONDS.render(
            {(account,): s.timestamp for account, s in latest}
        )


# --- wiring -----------------------------------------------------------------------------------


def build_pollers(
    client: RestClient,
    balances: BalanceStore,
    poll: PollConfig,
    *,
    health: HealthRegistry,
    summaries: CollateralSummaries,
    websocket_supplies: Callable[[str], bool],
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.time,
) -> list[Poller]:
    """The three balance pollers of one account, each registered with ``health`` as ``rest:<kind>``.

    ``websocket_supplies(wallet)`` tells whether the account's WebSocket keeps that wallet (``spot``
    or ``collateral``) current right now; the fallback poll of a wallet it supplies is not made.
    """
    polls: list[tuple[str, float, Callable[[RestClient], Callable[[], Awaitable[None]]]]] = [
        (MainBalancePoll.kind, poll.main_balance, lambda observed: MainBalancePoll(observed, balances, clock=clock)),
        (
            CollateralPoll.kind,
            poll.collateral,
            lambda observed: CollateralPoll(
                observed, balances, summaries, websocket_supplies=websocket_supplies, clock=clock
            ),
        ),
        (
            TradeBalancePoll.kind,
            poll.trade_balance,
            lambda observed: TradeBalancePoll(observed, balances, websocket_supplies=websocket_supplies, clock=clock),
        ),
    ]
    shared_rng = rng if rng is not None else random.Random()
    return [
        build_poller(client, kind, interval, make_poll, health=health, rng=shared_rng)
        for kind, interval, make_poll in polls
    ]


def build_poller(
    client: RestClient,
    kind: str,
    interval: float,
    make_poll: Callable[[RestClient], Callable[[], Awaitable[None]]],
    *,
    health: HealthRegistry,
    rng: random.Random | None = None,
) -> Poller:
    """The poller ``rest:<kind>:<account>``: its health entry ``rest:<kind>`` (stale after
    :data:`STALE_INTERVALS` intervals plus :data:`STALE_SLACK`) and outage log, and the poll
    ``make_poll`` builds on a client that reports each retried attempt to them."""
    status = SourceStatus(
        health.register(f"rest:{kind}", client.account, max_age=STALE_INTERVALS * interval + STALE_SLACK),
        logger=log,
    )
    poll = make_poll(client.observed(lambda error: status.attempt_failed(str(error))))
    return Poller(account=client.account, kind=kind, interval=interval, poll=poll, status=status, rng=rng)
