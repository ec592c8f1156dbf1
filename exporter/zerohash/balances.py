"""Zero Hash balances from ``account_balance.changed``: held per participant, exported in aggregate.

Each event carries the new absolute balance of one account, identified by (participant_code,
account_group, account_label, account_type, asset). Delivery order is not guaranteed, so an event
is applied only when it :func:`supersedes` what is held for that account: a newer payload
``timestamp``, or an equal one with a ``run_id`` not lower (runs are numbered upwards, see
docs/protocol.md#account-balance-events), and between equal ``run_id`` the later arrival (a
redelivery of the same event changes nothing). The per-participant values live in the state file
(:meth:`StateStore.apply_zerohash_balance`) and are reloaded at start. Metrics never carry one
series per end customer:

* ``zerohash_balance``: the sum over participants, per account_group, account_label, account_type, asset;
* ``zerohash_participant_balance``: one series per participant only for the configured allow-list;
* ``zerohash_accounts``: participants holding a non-zero balance, per account_group, account_type, asset;
* ``zerohash_balance_movements_total``: movements of applied-or-not events (every movement happened,
  whatever order it arrived in), by account_type, asset and movement_type (documented names or ``other``).

Amounts are summed as Decimal and exported as float64 whole asset units. What an event carries is
parsed within the bounds of :mod:`exporter.webhooks.bounds` (a balance of ``"1e999999999"`` is refused,
not spelled out), so a sender's bug cannot block the process or fill its memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.metrics import (
    OTHER,
    ZEROHASH_ACCOUNTS,
    ZEROHASH_BALANCE,
    ZEROHASH_BALANCE_MOVEMENTS,
    ZEROHASH_PARTICIPANT_BALANCE,
)
from exporter.core.state import ZerohashBalance, run_id_sort_key
from exporter.webhooks.bounds import MAX_DIGITS, OutOfBounds, bounded_decimal, bounded_id, bounded_seconds
from exporter.zerohash.signing import timestamp_to_seconds

#: Zero Hash movement types (docs/protocol.md#movement-and-account-types); anything else is ``other``.
MOVEMENT_TYPES = (
    "deposit",
    "withdrawal_pending",
    "withdrawal_confirmed",
    "withdrawal",
    "transfer",
    "final_settlement",
    "final_settlement_outstanding",
    "final_settlement_default",
    "final_settlement_default_fallback",
    "final_settlement_default_partial",
    "otc_final_settlement",
    "execution_fee",
    "network_fee",
    "transaction_fee",
    "bank_fee",
    "commission",
    "initial_margin",
    "variation_margin",
    "variation_margin_call",
    "interest_payment",
    "principal_swap",
    "repayment",
    "collateralize_loan",
    "loan_collateral_return",
)

#: Movement types whose counters start at 0 for every (account_type, asset) held: the ones Zero
#: Hash's deposit, withdrawal, transfer and settlement guide explains (the first six above). Others
#: appear when first seen.
CORE_MOVEMENT_TYPES = MOVEMENT_TYPES[: MOVEMENT_TYPES.index("final_settlement") + 1]

_KEY_FIELDS = ("participant_code", "account_group", "account_label", "account_type", "asset")


class BalancePayloadError(ValueError):
    """An ``account_balance.changed`` body that lacks what the event must carry."""


@dataclass(frozen=True)
class BalanceEvent:
    """One parsed ``account_balance.changed``: the new balance and the movement types that made it."""

    balance: ZerohashBalance
    movement_types: tuple[str, ...]


def parse_balance_event(document: Any) -> BalanceEvent:
    """Validate and normalize an ``account_balance.changed`` body (raises :class:`BalancePayloadError`).

    ``timestamp`` may be seconds or milliseconds (Zero Hash's own examples disagree); ``run_id`` a
    string or an integer; ``movements`` may be missing.
    """
    if not isinstance(document, Mapping):
        raise BalancePayloadError("the body is not a JSON object")
    try:
        key: dict[str, str] = {}
        for name in _KEY_FIELDS:
            value = document.get(name)
            if not isinstance(value, str) or not value:
                raise BalancePayloadError(f"{name} is missing or not a string")
            key[name] = bounded_id(value, name)
        balance = bounded_decimal(document.get("balance"), "balance")
        raw_ts = document.get("timestamp")
        try:
            if isinstance(raw_ts, bool) or not isinstance(raw_ts, (int, float, str)):
                raise ValueError
            timestamp = timestamp_to_seconds(raw_ts.strip() if isinstance(raw_ts, str) else raw_ts)
        except (ValueError, OverflowError):
            raise BalancePayloadError("timestamp is missing or not a number") from None
        timestamp = bounded_seconds(timestamp, "timestamp")
        run_id = _run_id(document.get("run_id"))
    except OutOfBounds as exc:
        raise BalancePayloadError(str(exc)) from None
    movements = document.get("movements") or []
    if not isinstance(movements, list):
        raise BalancePayloadError("movements is not a list")
    types = tuple(movement_type_label(m.get("movement_type")) for m in movements if isinstance(m, Mapping))
    return BalanceEvent(ZerohashBalance(balance=balance, timestamp=timestamp, run_id=run_id, **key), types)


def _run_id(value: Any) -> str | None:
    """``run_id`` as text: a string or an integer (docs/protocol.md#account-balance-events), or None when absent."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not -(10**MAX_DIGITS) < value < 10**MAX_DIGITS:
            raise OutOfBounds(f"run_id has more than {MAX_DIGITS} digits")
        return str(value)
    if isinstance(value, str):
        return bounded_id(value, "run_id")
    raise BalancePayloadError("run_id is not a string or an integer")


def supersedes(new: ZerohashBalance, held: ZerohashBalance | None) -> bool:
    """True when ``new`` replaces ``held`` for their account (module docstring): a newer timestamp,
    or an equal one and a ``run_id`` not lower; equal both ways, the later arrival (``new``) wins."""
    if held is None:
        return True
    if new.timestamp != held.timestamp:
        return new.timestamp > held.timestamp
    return run_id_sort_key(new.run_id) >= run_id_sort_key(held.run_id)


def movement_type_label(value: Any) -> str:
    """A documented movement type, or ``other``."""
    return value if isinstance(value, str) and value in MOVEMENT_TYPES else OTHER


_AccountKey = tuple[str, str, str, str, str]


class ZerohashBalances:
    """The held per-participant balances and movement counts; render with :class:`ZerohashBalanceCollector`.

    ``apply()`` is called with an event the state file accepted, after its transaction committed
    (and with the held ones at start); ``count_movements()`` for every new verified event.
    """

    def __init__(self, participants: Iterable[str], held: Iterable[ZerohashBalance] = ()) -> None:
        self.participants = frozenset(participants)
        self._balances: dict[_AccountKey, ZerohashBalance] = {}
        self._movements: dict[tuple[str, str, str], int] = {}
        for balance in held:
            self.apply(balance)

    def apply(self, balance: ZerohashBalance) -> None:
        """Hold ``balance`` for its account when it :func:`supersedes` the one held (as the state file decided)."""
        key = account_key(balance)
        if supersedes(balance, self._balances.get(key)):
            self._balances[key] = balance
        for movement_type in CORE_MOVEMENT_TYPES:
            self._movements.setdefault((balance.account_type, balance.asset, movement_type), 0)

    def count_movements(self, account_type: str, asset: str, movement_types: Iterable[str]) -> None:
        """Count one event's movements."""
        for movement_type in CORE_MOVEMENT_TYPES:
            self._movements.setdefault((account_type, asset, movement_type), 0)
        for movement_type in movement_types:
            ident = (account_type, asset, movement_type)
            self._movements[ident] = self._movements.get(ident, 0) + 1

    def held(self) -> list[ZerohashBalance]:
        """Every held balance, ordered by account key."""
        return [self._balances[k] for k in sorted(self._balances)]

    def movements(self) -> dict[tuple[str, str, str], int]:
        """(account_type, asset, movement_type) -> count since start."""
        return dict(self._movements)


def account_key(b: ZerohashBalance) -> _AccountKey:
    """The account ``b`` is the balance of: (participant_code, account_group, account_label, account_type, asset)."""
    return (b.participant_code, b.account_group, b.account_label, b.account_type, b.asset)


class ZerohashBalanceCollector(Collector):
    """Renders :class:`ZerohashBalances`.

    ::

        zerohash_balance{account_group="PLAT01",account_label="general",account_type="available",asset="USD"} 1250.5
        zerohash_participant_balance{participant="PART01",account_group="PLAT01",...} 250.5
        zerohash_accounts{account_group="PLAT01",account_type="available",asset="USD"} 3.0
        zerohash_balance_movements_total{account_type="available",asset="USD",movement_type="deposit"} 7.0
    """

    def __init__(self, balances: ZerohashBalances) -> None:
        self._balances = balances

    def collect(self) -> Iterator[Metric]:
        total = ZEROHASH_BALANCE.family()
        per_participant = ZEROHASH_PARTICIPANT_BALANCE.family()
        accounts = ZEROHASH_ACCOUNTS.family()
        movements = ZEROHASH_BALANCE_MOVEMENTS.family()
        sums: dict[tuple[str, str, str, str], Decimal] = {}
        holders: dict[tuple[str, str, str], set[str]] = {}
        for b in self._balances.held():
            group = (b.account_group, b.account_label, b.account_type, b.asset)
            sums[group] = sums.get(group, Decimal(0)) + b.balance
            holding = holders.setdefault((b.account_group, b.account_type, b.asset), set())
            if b.balance != 0:
                holding.add(b.participant_code)
            if b.participant_code in self._balances.participants:
                per_participant.add_metric(
                    [b.participant_code, b.account_group, b.account_label, b.account_type, b.asset], float(b.balance)
                )
        for group, value in sorted(sums.items()):
            total.add_metric(list(group), float(value))
        for holding_key, participants in sorted(holders.items()):
            accounts.add_metric(list(holding_key), len(participants))
        for movement_key, count in sorted(self._balances.movements().items()):
            movements.add_metric(list(movement_key), count)
        yield total
        yield per_participant
        yield accounts
        yield movements
