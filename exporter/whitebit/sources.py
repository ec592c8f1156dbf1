"""Every supervised source of the WhiteBIT accounts with API credentials, wired in one place.

Per account: the private WebSocket (spot and collateral wallets, open orders), the REST pollers
(main balance, collateral, the spot wallet while the WebSocket is down) and history reconciliation.
Per WhiteBIT base URL: the measurement of its clock, which every nonce of its accounts is signed on.
Once: the public ticker, which prices the assets every account holds (``prices``; through the first
account's client and base URL).
Shared by every account: one rate limiter (WhiteBIT limits per IP), one HTTP session and one
collector per metric family, so each family is exposed once whatever the number of accounts.
Accounts run on webhooks alone need no source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial

from prometheus_client.registry import CollectorRegistry

from exporter.config.schema import PricesConfig, RestConfig, WhitebitAccountConfig
from exporter.core.health import HealthRegistry
from exporter.core.outage import SourceStatus
from exporter.core.state import StateStore
from exporter.core.supervisor import Source
from exporter.whitebit.balances import AccountBalances, BalancesCollector
from exporter.whitebit.clock import ClockCollector, ClockSync, ExchangeClock
from exporter.whitebit.pollers import CollateralSummaries, Poller, build_pollers
from exporter.whitebit.prices import PricePoll, Prices
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.reconcile import MissedWebhooks, build_history_poller
from exporter.whitebit.rest import PUBLIC_TIME, RestClient, RestMetrics, RestTransport
from exporter.whitebit.signing import NonceSource
from exporter.whitebit.transfers import TransferBook
from exporter.whitebit.websocket.collector import WebSocketCollector
from exporter.whitebit.websocket.source import WebSocketSource


@dataclass(frozen=True)
class WhitebitSources:
    """What :func:`build_sources` made: the sources to supervise and the HTTP transport they share."""

    sources: tuple[Source, ...]
    transport: RestTransport | None

    async def close(self) -> None:
        """Close the shared HTTP session (after the sources have stopped)."""
        if self.transport is not None:
            await self.transport.close()


def build_sources(
    accounts: Sequence[WhitebitAccountConfig],
    rest: RestConfig,
    *,
    transfers: TransferBook,
    state: StateStore,
    health: HealthRegistry,
    registry: CollectorRegistry,
    prices: PricesConfig | None = None,
    clock: Callable[[], float] = time.time,
    host_clock: Callable[[], float] = time.time,
) -> WhitebitSources:
    """The sources of every account with API credentials; their collectors are registered on ``registry``.

    ``prices`` (default: on, in USDT, every minute) says whether and how the public ticker prices the held assets.
    """
    api_accounts = [account for account in accounts if account.has_api]
    if not api_accounts:
        return WhitebitSources((), None)
    # Every wallet's freshness counts from now until its first answer (a wallet that never arrives goes stale).
    started = clock()
    balances = {
        account.name: AccountBalances(account.name, account.assets, watching_since=started) for account in api_accounts
    }
    limiter = RateLimiter(rest.rate_limits)
    rest_metrics = RestMetrics(limiter, buckets=rest.request_duration_buckets)
    transport = RestTransport(limiter, rest_metrics, timeout=rest.timeout)
    summaries = CollateralSummaries()
    websockets = WebSocketCollector()
    clocks = ClockCollector()
    # Missed webhooks are counted only for accounts that have a webhook to miss.
    missed = MissedWebhooks(account.name for account in api_accounts if account.webhook is not None)
    for collector in (BalancesCollector(balances.values()), rest_metrics, summaries, websockets, missed, clocks):
        registry.register(collector)

    sources: list[Source] = []
    clients: list[RestClient] = []
    nonces: dict[str, NonceSource] = {}  # WhiteBIT tracks nonces per API key
    exchange_clocks: dict[str, ExchangeClock] = {}  # by base URL: one exchange, one clock
    for account in api_accounts:
        # has_api: the loader sets both or neither.
        assert account.api_key is not None
        assert account.api_secret is not None
        exchange_clock = exchange_clocks.get(account.rest_url)
        measure = exchange_clock is None
        if exchange_clock is None:
            # Nonces are judged by WhiteBIT's real clock, so they follow the host's real clock corrected
            # by the measured offset (host_clock), not ``clock``, the exporter's notion of now for its
            # own bookkeeping (which tests move by hand).
            exchange_clock = exchange_clocks[account.rest_url] = ExchangeClock(host_clock)
        clocks.add(account.name, exchange_clock)
        client = RestClient(
            account=account.name,
            base_url=account.rest_url,
            api_key=account.api_key,
            api_secret=account.api_secret,
            transport=transport,
            nonce_window=account.nonce_window,
            nonces=nonces.setdefault(account.api_key, NonceSource(exchange_clock.now, window=account.nonce_window)),
            max_retries=rest.max_retries,
            on_nonce_refused=exchange_clock.nonce_refused,
        )
        clients.append(client)
        if measure:
            sources.append(
                ClockSync(
                    account.name,
                    exchange_clock,
                    partial(client.get_public, PUBLIC_TIME),
                    local_clock=host_clock,
                    outage_clock=clock,
                )
            )
        websocket = WebSocketSource(
            account.name,
            account.ws_url,
            account.markets,
            client.websocket_token,
            balances[account.name],
            health,
            clock=clock,
        )
        websockets.add(websocket)
        sources.append(websocket)
        sources.extend(
            build_pollers(
                client,
                balances[account.name],
                account.poll,
                health=health,
                summaries=summaries,
                websocket_supplies=websocket.supplies,
            )
        )
        sources.append(
            build_history_poller(
                client,
                transfers,
                state,
                health=health,
                interval=account.poll.history,
                grace=account.reconcile_grace,
                retry_window=account.webhook_retry_window,
                missed=missed if account.webhook is not None else None,
                clock=clock,
            )
        )
    prices = prices if prices is not None else PricesConfig()
    if prices.enabled:
        sources.append(_price_poller(clients[0], balances.values(), prices, registry, clock=clock))
    return WhitebitSources(tuple(sources), transport)


def _price_poller(
    client: RestClient,
    balances: Iterable[AccountBalances],
    settings: PricesConfig,
    registry: CollectorRegistry,
    *,
    clock: Callable[[], float],
) -> Poller:
    """The ticker poll (``rest:prices:<account>``), pricing every asset of ``balances``; no health entry."""
    held = tuple(balances)
    prices = Prices(
        settings.quote,
        lambda: {asset for account in held for asset in account.exported_assets()},
        watching_since=clock(),
    )
    registry.register(prices)
    status = SourceStatus.unlisted(f"rest:{PricePoll.kind}", client.account, clock=clock)
    return Poller(
        account=client.account,
        kind=PricePoll.kind,
        interval=settings.interval,
        poll=PricePoll(client.observed(lambda error: status.attempt_failed(str(error))), prices, clock=clock),
        status=status,
    )
