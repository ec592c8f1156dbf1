"""Every supervised source of the WhiteBIT accounts with API credentials, wired in one place.

Per account: the private WebSocket (spot and collateral wallets, open orders), the REST pollers
(main balance, collateral, the spot wallet while the WebSocket is down) and history reconciliation.
Shared by every account: one rate limiter (WhiteBIT limits per IP), one HTTP session and one
collector per metric family, so each family is exposed once whatever the number of accounts.
Accounts run on webhooks alone need no source.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client.registry import CollectorRegistry

from exporter.config.schema import RestConfig, WhitebitAccountConfig
from exporter.core.health import HealthRegistry
from exporter.core.state import StateStore
from exporter.core.supervisor import Source
from exporter.whitebit.balances import AccountBalances, BalancesCollector
from exporter.whitebit.pollers import CollateralSummaries, build_pollers
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.reconcile import MissedWebhooks, build_history_poller
from exporter.whitebit.rest import RestClient, RestMetrics, RestTransport
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
    clock: Callable[[], float] = time.time,
) -> WhitebitSources:
    """The sources of every account with API credentials; their collectors are registered on ``registry``."""
    api_accounts = [account for account in accounts if account.has_api]
    if not api_accounts:
        return WhitebitSources((), None)
    balances = {account.name: AccountBalances(account.name) for account in api_accounts}
    limiter = RateLimiter(rest.rate_limits)
    rest_metrics = RestMetrics(limiter, buckets=rest.request_duration_buckets)
    transport = RestTransport(limiter, rest_metrics, timeout=rest.timeout)
    summaries = CollateralSummaries()
    websockets = WebSocketCollector()
    # Missed webhooks are counted only for accounts that have a webhook to miss.
    missed = MissedWebhooks(account.name for account in api_accounts if account.webhook is not None)
    for collector in (BalancesCollector(balances.values()), rest_metrics, summaries, websockets, missed):
        registry.register(collector)

    sources: list[Source] = []
    nonces: dict[str, NonceSource] = {}  # WhiteBIT tracks nonces per API key
    for account in api_accounts:
        # has_api: the loader sets both or neither.
        assert account.api_key is not None
        assert account.api_secret is not None
        client = RestClient(
            account=account.name,
            base_url=account.rest_url,
            api_key=account.api_key,
            api_secret=account.api_secret,
            transport=transport,
            nonce_window=account.nonce_window,
            nonces=nonces.setdefault(account.api_key, NonceSource()),
            max_retries=rest.max_retries,
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
                websocket_ok=websocket.supplies_wallets,
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
                missed=missed if account.webhook is not None else None,
                clock=clock,
            )
        )
    return WhitebitSources(tuple(sources), transport)
