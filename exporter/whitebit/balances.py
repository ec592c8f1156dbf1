"""Balances of WhiteBIT accounts: a pure per-account store and one collector for all of them.

:class:`AccountBalances` holds three wallets per account, each with the time it was last updated:

- ``main``: totals per asset, replaced whole by a REST poll (no WebSocket channel exists);
- ``spot``: ``available`` and ``freeze`` per asset, from ``balanceSpot`` (a snapshot, then updates
  carrying only the assets that changed, with absolute values) or a trade-balance poll;
- ``collateral``: balance ``B`` and borrowed ``b`` per asset, from ``balanceMargin`` or a poll.

Writers pass the time their data is from. A write older than the wallet's last update is refused
(returns False): the WebSocket and a REST poller may both feed one wallet, and a poll answered late
must not overwrite a newer push. Amounts are exact :class:`~decimal.Decimal` and rendered as float.

:class:`BalancesCollector` renders, for every account it holds::

    whitebit_balance{account="main",asset="USDT",wallet="spot"} 250000.0
    whitebit_balance_frozen{account="main",asset="USDT"} 14.5
    whitebit_collateral_borrowed{account="main",asset="USDT"} 0.0
    whitebit_balance_last_update_timestamp_seconds{account="main",wallet="spot"} 1.7e+09

``whitebit_balance{wallet="spot"}`` is available + freeze. While a source is disconnected its values
stay, with their timestamps, so staleness is visible instead of a silent gap.

**Freshness is not change.** The timestamp says when the wallet's numbers were last *known to be
current*, not when they last moved: a poll that answers the same numbers, and a live subscription
proving itself with a pong (:meth:`AccountBalances.confirm`), both advance it. A wallet idle for days
on a healthy connection therefore stays fresh, and one whose source stops goes stale. Before a
wallet's first answer the series holds the time the exporter started watching it (``watching_since``),
so a wallet that never arrives goes stale too instead of having no series at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from decimal import Decimal

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.metrics import (
    WHITEBIT_BALANCE,
    WHITEBIT_BALANCE_FROZEN,
    WHITEBIT_BALANCE_LAST_UPDATE_TIMESTAMP_SECONDS,
    WHITEBIT_COLLATERAL_BORROWED,
)

WALLET_MAIN = "main"
WALLET_SPOT = "spot"
WALLET_COLLATERAL = "collateral"
WALLETS = (WALLET_MAIN, WALLET_SPOT, WALLET_COLLATERAL)

ZERO = Decimal(0)


class AccountBalances:
    """The main, spot and collateral balances of one account, with last-update timestamps.

    Which assets are exported: with an ``assets`` allow-list, exactly those (at 0 until WhiteBIT
    reports one); without it, every asset once it has held a non-zero amount in that wallet, so the
    hundreds of zero assets WhiteBIT may list add no series, and an asset emptied later stays at 0
    (an alert on a low balance must fire, not go quiet). An exported asset that a later snapshot
    or poll leaves out is 0, as WhiteBIT documents for omitted assets (docs/protocol.md#main-balance).
    """

    def __init__(
        self, account: str, assets: Iterable[str] | None = None, *, watching_since: float | None = None
    ) -> None:
        self.account = account
        self.watching_since = watching_since
        self._allowed = None if assets is None else frozenset(assets)
        self._main: dict[str, Decimal] = {}
        self._spot: dict[str, tuple[Decimal, Decimal]] = {}  # asset -> (available, freeze)
        self._collateral: dict[str, tuple[Decimal, Decimal]] = {}  # asset -> (B, b)
        self._exported: dict[str, set[str]] = {wallet: set() for wallet in WALLETS}
        self._updated: dict[str, float] = {}
        if self._allowed is not None:
            for wallet in WALLETS:
                self._exported[wallet] = set(self._allowed)

    # --- reads ---

    def updated_at(self, wallet: str) -> float | None:
        """When ``wallet`` was last written or confirmed, or None if never written."""
        return self._updated.get(wallet)

    def current_as_of(self, wallet: str) -> float | None:
        """When ``wallet`` was last known current; before its first answer, ``watching_since``."""
        return self._updated.get(wallet, self.watching_since)

    def main(self) -> dict[str, Decimal]:
        """Main-balance totals of the exported assets (none before the wallet's first answer)."""
        return {asset: self._main.get(asset, ZERO) for asset in self._shown(WALLET_MAIN)}

    def spot(self) -> dict[str, tuple[Decimal, Decimal]]:
        """Spot ``(available, freeze)`` of the exported assets (none before the wallet's first answer)."""
        return {asset: self._spot.get(asset, (ZERO, ZERO)) for asset in self._shown(WALLET_SPOT)}

    def collateral(self) -> dict[str, tuple[Decimal, Decimal]]:
        """Collateral ``(balance B, borrowed b)`` of the exported assets (none before the first answer)."""
        return {asset: self._collateral.get(asset, (ZERO, ZERO)) for asset in self._shown(WALLET_COLLATERAL)}

    def exported_assets(self) -> set[str]:
        """Every asset with a ``whitebit_balance`` series in some wallet (what the exporter values)."""
        return {asset for wallet in WALLETS for asset in self._shown(wallet)}

    def _shown(self, wallet: str) -> list[str]:
        # An allow-listed asset is not shown at 0 before WhiteBIT said anything: an alert on a low
        # balance must not fire on an exporter that just started.
        return sorted(self._exported[wallet]) if wallet in self._updated else []

    # --- writes ---

    def _fresh(self, wallet: str, timestamp: float) -> bool:
        last = self._updated.get(wallet)
        if last is not None and timestamp < last:
            return False
        self._updated[wallet] = timestamp
        return True

    def confirm(self, wallet: str, timestamp: float) -> bool:
        """The wallet's source vouches that nothing changed up to ``timestamp`` (a live subscription's
        pong): its values stand, its timestamp advances. Refused before the wallet's first answer."""
        last = self._updated.get(wallet)
        if last is None:
            return False
        if timestamp > last:
            self._updated[wallet] = timestamp
        return True

    def _note(self, wallet: str, asset: str, nonzero: bool) -> None:
        if nonzero and self._allowed is None:
            self._exported[wallet].add(asset)

    def replace_wallet(self, wallet: str, totals: Mapping[str, Decimal], timestamp: float) -> bool:
        """Replace a whole wallet with totals per asset (exported assets not given are 0).

        For ``main``; for ``collateral`` (a REST poll knows only the totals) the borrowed amount of
        an asset still present is kept. ``spot`` needs ``available`` and ``freeze``: use
        :meth:`replace_spot`.
        """
        if wallet == WALLET_MAIN:
            if not self._fresh(wallet, timestamp):
                return False
            self._main = {asset: Decimal(total) for asset, total in totals.items()}
            for asset, total in self._main.items():
                self._note(wallet, asset, total != ZERO)
            return True
        if wallet == WALLET_COLLATERAL:
            previous = self._collateral
            return self.replace_collateral(
                {asset: (Decimal(total), previous.get(asset, (ZERO, ZERO))[1]) for asset, total in totals.items()},
                timestamp,
            )
        if wallet == WALLET_SPOT:
            raise ValueError("the spot wallet needs available and freeze: use replace_spot()")
        raise ValueError(f"unknown wallet {wallet!r}")

    def replace_spot(self, balances: Mapping[str, tuple[Decimal, Decimal]], timestamp: float) -> bool:
        """Replace the spot wallet: ``(available, freeze)`` per asset (a snapshot or a poll)."""
        if not self._fresh(WALLET_SPOT, timestamp):
            return False
        self._spot = {}
        self._set_pairs(WALLET_SPOT, self._spot, balances)
        return True

    def update_spot(self, changes: Mapping[str, tuple[Decimal, Decimal]], timestamp: float) -> bool:
        """Overwrite the assets in ``changes`` (absolute ``(available, freeze)``); others stay."""
        if not self._fresh(WALLET_SPOT, timestamp):
            return False
        self._set_pairs(WALLET_SPOT, self._spot, changes)
        return True

    def replace_collateral(self, balances: Mapping[str, tuple[Decimal, Decimal]], timestamp: float) -> bool:
        """Replace the collateral wallet: ``(balance B, borrowed b)`` per asset."""
        if not self._fresh(WALLET_COLLATERAL, timestamp):
            return False
        self._collateral = {}
        self._set_pairs(WALLET_COLLATERAL, self._collateral, balances)
        return True

    def update_collateral(self, changes: Mapping[str, tuple[Decimal, Decimal]], timestamp: float) -> bool:
        """Overwrite the assets in ``changes`` (absolute ``(B, b)``); others stay."""
        if not self._fresh(WALLET_COLLATERAL, timestamp):
            return False
        self._set_pairs(WALLET_COLLATERAL, self._collateral, changes)
        return True

    def _set_pairs(
        self,
        wallet: str,
        into: dict[str, tuple[Decimal, Decimal]],
        pairs: Mapping[str, tuple[Decimal, Decimal]],
    ) -> None:
        for asset, (first, second) in pairs.items():
            value = (Decimal(first), Decimal(second))
            into[asset] = value
            self._note(wallet, asset, value != (ZERO, ZERO))


class BalancesCollector(Collector):
    """The four balance families for every :class:`AccountBalances` added (one collector, so
    each family is exposed once whatever the number of accounts)."""

    def __init__(self, accounts: Iterable[AccountBalances] = ()) -> None:
        self._accounts: list[AccountBalances] = list(accounts)

    def add(self, balances: AccountBalances) -> None:
        """Render ``balances`` too (each account once)."""
        if any(existing.account == balances.account for existing in self._accounts):
            raise ValueError(f"balances of account {balances.account!r} are already collected")
        self._accounts.append(balances)

    def collect(self) -> Iterator[Metric]:
        balance = WHITEBIT_BALANCE.family()
        frozen = WHITEBIT_BALANCE_FROZEN.family()
        borrowed = WHITEBIT_COLLATERAL_BORROWED.family()
        updated = WHITEBIT_BALANCE_LAST_UPDATE_TIMESTAMP_SECONDS.family()
        for account in self._accounts:
            name = account.account
            for asset, total in account.main().items():
                balance.add_metric([name, WALLET_MAIN, asset], float(total))
            for asset, (available, freeze) in account.spot().items():
                balance.add_metric([name, WALLET_SPOT, asset], float(available + freeze))
                frozen.add_metric([name, asset], float(freeze))
            for asset, (total, debt) in account.collateral().items():
                balance.add_metric([name, WALLET_COLLATERAL, asset], float(total))
                borrowed.add_metric([name, asset], float(debt))
            for wallet in WALLETS:
                timestamp = account.current_as_of(wallet)
                if timestamp is not None:
                    updated.add_metric([name, wallet], timestamp)
        yield balance
        yield frozen
        yield borrowed
        yield updated
