"""Which assets the simulated exchange lists, and whether a balance answer shows the zero ones.

WhiteBIT lists hundreds of assets. Its documents show balance answers (the main balance, the trade
balance, the WebSocket's ``balanceSpot_request`` and ``balanceMargin_request`` snapshots) both with
every listed asset, mostly at ``"0"``, and with zero balances left out (docs/protocol.md#main-balance).
One :class:`AssetListing` is shared by the REST API and the WebSocket hub, so both speak of the same
assets; with ``zero_balances="both"`` (the default) each answer picks a form at random, so a client
sees assets come and go at zero.
"""

from __future__ import annotations

import random
from typing import Literal

from exporter.simulator.model import CURRENCY_NAMES, NETWORKS, Exchange

#: Assets the simulated exchange lists beyond the ones it trades (WhiteBIT lists hundreds).
LISTED_ASSETS = 300
#: How balance answers treat zero balances: list every asset, leave zeros out, or either at random.
ZeroBalances = Literal["both", "listed", "omitted"]


class AssetListing:
    """The listed assets of ``exchange`` and the zero-balance form of each balance answer."""

    def __init__(
        self,
        exchange: Exchange,
        *,
        listed_assets: int = LISTED_ASSETS,
        zero_balances: ZeroBalances = "both",
        rng: random.Random | None = None,
    ) -> None:
        if listed_assets < 0:
            raise ValueError("listed_assets must not be negative")
        self.exchange = exchange
        self._extra = tuple(f"COIN{n:03d}" for n in range(listed_assets))
        self.zero_balances: ZeroBalances = zero_balances
        self._rng = random.Random(rng.getrandbits(64)) if rng is not None else random.Random()

    def assets(self) -> list[str]:
        """Every ticker the exchange lists: market currencies, known currencies, held assets, the rest."""
        tickers: set[str] = set(CURRENCY_NAMES) | set(NETWORKS) | set(self._extra)
        for market in self.exchange.markets:
            tickers.update(market.split("_"))
        for account in self.exchange.accounts.values():
            tickers.update(account.main, account.spot, account.collateral)
        return sorted(tickers)

    def lists_zeros(self) -> bool:
        """Whether this answer lists every asset (zeros included) or leaves zero balances out."""
        if self.zero_balances == "both":
            return self._rng.random() < 0.5
        return self.zero_balances == "listed"
