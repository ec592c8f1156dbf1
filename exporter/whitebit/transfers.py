"""The deposit and withdrawal lifecycle: a pure state machine over persisted transfer records.

Webhook deliveries (``deposit.*``, ``withdraw.*``) and REST history records are first
normalized into a :class:`TransferObservation` with its ``source`` (``"webhook"`` or
``"history"``); :func:`advance` then decides, without any I/O, what the stored
:class:`~exporter.core.state.TransferRecord` becomes. :class:`TransferBook` does the I/O around it
(lookup and write in the state file, in the caller's transaction) and keeps the in-memory view the
metrics are rendered from.

**The key.** Each transfer is stored under the most stable identity its payload allows, tried in
this order:

1. ``txid:<transactionId>``: unique across WhiteBIT and never reused (history records always have it;
   webhook payloads are not documented to carry it, but one that does is keyed by it);
2. ``uid:<uniqueId>``: the client's id of a withdrawal (or the platform-assigned id of a deposit);
   documented as the dedup key, but ``null`` in every webhook example;
3. ``fp:<sha256 prefix>``: a fingerprint of the fields that do not change over a transfer's life:
   kind, ticker, amount (normalized, so ``"0.0105"`` equals ``"0.010500000000000000"``), address,
   memo, ``createdAt`` and, for deposits only, the transaction hash. A transaction hash alone is
   not unique (one on-chain transaction can pay several addresses: several records, one hash); a
   withdrawal's hash is empty until it is broadcast, so it is left out there; ``network`` is left
   out because ``deposit.canceled`` may carry it as ``null``.

A later observation finds its record under *any* of its candidate keys (so a history record with a
``transactionId`` finds the record a webhook created under its fingerprint), unless the stored
record names a different ``transactionId`` or ``uniqueId`` (then it is another transfer). The record
keeps the key it was created under. A record first seen in history is created under its fingerprint
(see :func:`new_key`), so the webhook that comes after it, without a ``transactionId``, finds it.

**Statuses.** Status codes mean different things per method (docs/protocol.md#transfer-status-codes),
so names come from two tables; webhook status values are placeholders in WhiteBIT's examples (all
15, docs/protocol.md#webhook-payload-fields), so a webhook's *method* decides whether it is final
(``deposit.processed`` is successful whatever status it carries) and the payload status is used only
where it agrees with the method. A final record never changes status again; a non-final one never
moves back to an earlier stage (a late retry of ``withdraw.unconfirmed`` after ``withdraw.pending``
changes nothing); confirmations only grow. Each record's final outcome is counted once, when it
becomes final, however many deliveries report it; the ``final`` flag is in the state file, so a
restart does not count it again.

**What reconciliation compares.** The same state machine keeps, in typed fields of each record,
what :mod:`exporter.whitebit.reconcile` needs to tell a missed webhook, so that the lifecycle is
computed, and written, in one place:

- ``webhook_status``, the furthest status any *webhook* reported. A late retry of an earlier event
  (``deposit.accepted`` after ``deposit.processed``) never lowers it, and a final one never changes.
- For *history* observations, the *expectation level* their status implies (:func:`expected_level`:
  :data:`PENDING_LEVEL` or :data:`FINAL_LEVEL`, none for a status WhiteBIT sends no webhook for) and
  when history first showed each level (``history_pending_at``, ``history_final_at``). A first
  sighting is never moved, so the grace period runs from it across polls and restarts.
- ``history_waived``: the first history poll of an account is the *baseline*
  (``stage(obs, baseline=True)``), and the levels its records already show are waived.

Every write of a transfer row goes through :class:`TransferBook`, the counted-missed flag included.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, TypeGuard

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.metrics import (
    WHITEBIT_DEPOSITS_AWAITING_CONFIRMATIONS,
    WHITEBIT_TRANSFERS,
    WHITEBIT_TRANSFERS_IN_FLIGHT,
    WHITEBIT_TRANSFERS_OLDEST_IN_FLIGHT_TIMESTAMP_SECONDS,
)
from exporter.core.state import StateStore, TransferKind, TransferRecord

log = logging.getLogger(__name__)

TransferSource = Literal["webhook", "history"]
SOURCES: tuple[TransferSource, ...] = ("webhook", "history")

DEPOSIT: TransferKind = "deposit"
WITHDRAW: TransferKind = "withdraw"
TRANSFER_KINDS: tuple[TransferKind, ...] = (DEPOSIT, WITHDRAW)
#: Final transfers are kept this long so late deliveries and history rows are recognized as known.
FINAL_TRANSFER_RETENTION = 30 * 86400.0

# Final outcomes (the `outcome` label of whitebit_transfers_total).
SUCCESSFUL = "successful"
CANCELED = "canceled"
PARTIALLY_SUCCESSFUL = "partially_successful"
OUTCOMES: dict[TransferKind, tuple[str, ...]] = {
    DEPOSIT: (SUCCESSFUL, CANCELED),
    WITHDRAW: (SUCCESSFUL, CANCELED, PARTIALLY_SUCCESSFUL),
}

OTHER_STATUS = "other"

# Deposit status codes (docs/protocol.md#transfer-status-codes): code -> meaning name, the `status`
# label while in flight.
DEPOSIT_STATUS_NAMES: dict[int, str] = {
    3: SUCCESSFUL,
    7: SUCCESSFUL,
    4: CANCELED,
    9: CANCELED,
    5: "unconfirmed_by_user",
    15: "pending",
    21: "frozen",
    22: "uncredited",
    27: "travel_rule_frozen",
    28: "travel_rule_processing",
}
# Withdrawal status codes (docs/protocol.md#transfer-status-codes).
WITHDRAW_PENDING_CODES = (1, 2, 6, 10, 11, 12, 13, 14, 15, 16, 17)
WITHDRAW_STATUS_NAMES: dict[int, str] = {
    **dict.fromkeys(WITHDRAW_PENDING_CODES, "pending"),
    3: SUCCESSFUL,
    7: SUCCESSFUL,
    4: CANCELED,
    5: "unconfirmed",
    18: PARTIALLY_SUCCESSFUL,
    21: "frozen",
}
STATUS_NAMES: dict[TransferKind, dict[int, str]] = {DEPOSIT: DEPOSIT_STATUS_NAMES, WITHDRAW: WITHDRAW_STATUS_NAMES}
FINAL_OUTCOMES: dict[TransferKind, dict[int, str]] = {
    DEPOSIT: {3: SUCCESSFUL, 7: SUCCESSFUL, 4: CANCELED, 9: CANCELED},
    WITHDRAW: {3: SUCCESSFUL, 7: SUCCESSFUL, 4: CANCELED, 18: PARTIALLY_SUCCESSFUL},
}
#: Every ``status`` label value ``whitebit_transfers_in_flight`` can carry, per kind (all start at 0).
IN_FLIGHT_STATUSES: dict[TransferKind, tuple[str, ...]] = {
    kind: (
        *dict.fromkeys(name for code, name in STATUS_NAMES[kind].items() if code not in FINAL_OUTCOMES[kind]),
        OTHER_STATUS,
    )
    for kind in TRANSFER_KINDS
}

#: Webhook methods that move a transfer: method -> (kind, the status code the method implies).
WEBHOOK_TRANSFER_EVENTS: dict[str, tuple[TransferKind, int]] = {
    "deposit.accepted": (DEPOSIT, 15),
    "deposit.updated": (DEPOSIT, 15),
    "deposit.processed": (DEPOSIT, 3),
    "deposit.canceled": (DEPOSIT, 4),
    "withdraw.unconfirmed": (WITHDRAW, 5),
    "withdraw.pending": (WITHDRAW, 1),
    "withdraw.successful": (WITHDRAW, 3),
    "withdraw.canceled": (WITHDRAW, 4),
    "withdraw.partial_successful": (WITHDRAW, 18),
}


class ObservationError(ValueError):
    """A payload that cannot describe a transfer (no amount, no asset): it is not what it should be."""


def status_name(kind: TransferKind, status: int) -> str:
    """The bounded meaning name of ``status`` for ``kind`` (``other`` for an undocumented code)."""
    return STATUS_NAMES[kind].get(status, OTHER_STATUS)


def final_outcome(kind: TransferKind, status: int) -> str | None:
    """The final outcome ``status`` means for ``kind``, or None while the transfer is in flight."""
    return FINAL_OUTCOMES[kind].get(status)


#: Expectation levels: which webhook a history status says WhiteBIT has sent. 0 stands for none, and
#: ``webhook_status`` and ``history_waived`` are compared on the same scale.
PENDING_LEVEL = 1
FINAL_LEVEL = 2


def expected_level(kind: TransferKind, status: int) -> int | None:
    """The webhook level a *history* status implies, or None where WhiteBIT sends no webhook.

    Deposit 15 → pending (``deposit.accepted``/``updated``), withdrawal 1, 2, 6, 10–17 → pending
    (``withdraw.pending``), every final status → final. Deposit 5, 21, 22, 27, 28 and withdrawal 5
    and 21 have no webhook, or one whose status is not documented
    (docs/protocol.md#webhook-methods), so they expect none.
    """
    if final_outcome(kind, status) is not None:
        return FINAL_LEVEL
    if (kind == DEPOSIT and status == 15) or (kind == WITHDRAW and status in WITHDRAW_PENDING_CODES):
        return PENDING_LEVEL
    return None


@dataclass(frozen=True)
class TransferObservation:
    """One normalized sighting of a deposit or withdrawal, from a webhook or a history record.

    ``status`` is already the effective code (for webhooks, reconciled with the method by
    :func:`observation_from_webhook`). Optional fields are None when the payload lacks them.
    """

    account: str
    kind: TransferKind
    source: TransferSource
    status: int
    ticker: str
    amount: Decimal
    observed_at: float
    created_at: float | None = None
    transaction_id: str | None = None
    unique_id: str | None = None
    transaction_hash: str | None = None
    address: str | None = None
    memo: str | None = None
    network: str | None = None
    confirmations_actual: int | None = None
    confirmations_required: int | None = None
    event: str | None = None  # the webhook method, e.g. "deposit.updated"

    def __post_init__(self) -> None:
        if self.kind not in TRANSFER_KINDS:
            raise ValueError(f"transfer kind must be deposit or withdraw, not {self.kind!r}")
        if self.source not in SOURCES:
            raise ValueError(f"observation source must be webhook or history, not {self.source!r}")


# --- keys --------------------------------------------------------------------------------------


def fingerprint(obs: TransferObservation) -> str:
    """The ``fp:`` key: a hash of the fields that stay the same over the transfer's life."""
    parts = [
        obs.kind,
        obs.ticker.upper(),
        _amount_text(obs.amount),
        obs.address or "",
        obs.memo or "",
        "" if obs.created_at is None else str(int(obs.created_at)),
        # A withdrawal's hash appears only once it is broadcast, so only deposits use it.
        (obs.transaction_hash or "") if obs.kind == DEPOSIT else "",
    ]
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f"fp:{digest[:32]}"


def candidate_keys(obs: TransferObservation) -> list[str]:
    """Every key ``obs`` may be stored under, strongest first; the first is the one a new record gets."""
    keys: list[str] = []
    if obs.transaction_id:
        keys.append(f"txid:{obs.transaction_id}")
    if obs.unique_id:
        keys.append(f"uid:{obs.unique_id}")
    keys.append(fingerprint(obs))
    return keys


def new_key(obs: TransferObservation, keys: list[str], taken: set[str]) -> str:
    """The key a first sighting is stored under (``keys`` from :func:`candidate_keys`).

    A webhook's record gets its strongest id. A record first seen in *history* gets its fingerprint
    instead (unless another transfer holds it): a webhook carries no ``transactionId``, so a record
    stored under ``txid:`` would never be found by the webhook that arrives after the history poll.
    """
    fp = keys[-1]
    if obs.source == "history" and fp not in taken:
        return fp
    return keys[0]


def compatible(record: TransferRecord, obs: TransferObservation) -> bool:
    """False when ``record`` names a different transactionId or uniqueId than ``obs``: another transfer."""
    for name, value in (("transaction_id", obs.transaction_id), ("unique_id", obs.unique_id)):
        stored = record.details.get(name)
        if stored and value and stored != value:
            return False
    return True


# --- the pure state machine -----------------------------------------------------------------------


@dataclass(frozen=True)
class Transition:
    """What one observation does to a record: the record to store and the outcome to count, if any."""

    previous: TransferRecord | None
    record: TransferRecord
    counted_outcome: str | None = None  # set exactly once per record: when it becomes final
    conflict: bool = False  # a final record was reported final with another outcome (kept as it was)

    @property
    def changed(self) -> bool:
        return self.record != self.previous


def _stage(kind: TransferKind, status: int) -> int:
    """Lifecycle order: 0 the first stage, 1 in progress, 2 final. A record never moves to a lower stage."""
    if final_outcome(kind, status) is not None:
        return 2
    if (kind == WITHDRAW and status == 5) or (kind == DEPOSIT and status == 27):
        return 0
    return 1


def advance(
    record: TransferRecord | None, obs: TransferObservation, key: str, now: float, *, baseline: bool = False
) -> Transition:
    """The record after ``obs`` (``record`` None: first sighting, stored under ``key``). Pure.

    ``baseline``: ``obs`` is a record of an account's first history poll, whose expectations are
    waived (see the module docstring); only a history observation can be one.
    """
    if baseline and obs.source != "history":
        raise ValueError("only a history observation can belong to the baseline")
    outcome = final_outcome(obs.kind, obs.status)
    identity = _identity(obs)
    if record is None:
        created = TransferRecord(
            account=obs.account,
            kind=obs.kind,
            key=key,
            status=obs.status,
            status_name=status_name(obs.kind, obs.status),
            ticker=obs.ticker,
            amount=obs.amount,
            created_at=obs.created_at if obs.created_at is not None else obs.observed_at,
            updated_at=now,
            final=outcome is not None,
            outcome=outcome,
            webhook_seen=obs.source == "webhook",
            history_seen=obs.source == "history",
            confirmations_actual=obs.confirmations_actual,
            confirmations_required=obs.confirmations_required,
            webhook_status=_furthest_webhook_status(obs.kind, None, obs),
            details=identity,
        )
        return Transition(None, _expect(created, obs, baseline=baseline), counted_outcome=outcome)

    status, final, new_outcome, counted, conflict = record.status, record.final, record.outcome, None, False
    if record.final:
        conflict = outcome is not None and outcome != record.outcome
    elif outcome is not None:
        status, final, new_outcome, counted = obs.status, True, outcome, outcome
    elif _stage(obs.kind, obs.status) >= _stage(record.kind, record.status):
        status = obs.status
    actual = _max_optional(record.confirmations_actual, obs.confirmations_actual)
    required = obs.confirmations_required if obs.confirmations_required is not None else record.confirmations_required
    details = {**record.details, **{k: v for k, v in identity.items() if v is not None}}
    updated = replace(
        record,
        status=status,
        status_name=status_name(record.kind, status),
        final=final,
        outcome=new_outcome,
        webhook_seen=record.webhook_seen or obs.source == "webhook",
        history_seen=record.history_seen or obs.source == "history",
        confirmations_actual=actual,
        confirmations_required=required,
        webhook_status=_furthest_webhook_status(record.kind, record.webhook_status, obs),
        details=details,
    )
    if updated != record:
        updated = replace(updated, updated_at=now)
    # updated_at dates the transfer's own last change and times the purge of a final record; the
    # first sighting of a level in history is reconciliation's bookkeeping and leaves it alone.
    updated = _expect(updated, obs, baseline=baseline)
    return Transition(record, updated, counted_outcome=counted, conflict=conflict)


def _furthest_webhook_status(kind: TransferKind, seen: int | None, obs: TransferObservation) -> int | None:
    """The furthest status any *webhook* reported, ``seen`` before ``obs``.

    A late retry of an earlier event (``deposit.accepted`` after ``deposit.processed``) never lowers
    it, and a final one is kept, so reconciliation never expects a webhook that already came.
    """
    if obs.source != "webhook":
        return seen
    if seen is not None and (final_outcome(kind, seen) is not None or _stage(kind, obs.status) < _stage(kind, seen)):
        return seen
    return obs.status


def _expect(record: TransferRecord, obs: TransferObservation, *, baseline: bool) -> TransferRecord:
    """``record`` with the webhooks a *history* ``obs`` says WhiteBIT has sent.

    A level's first sighting is ``obs.observed_at``, when this exporter read the record, not
    ``createdAt``: a webhook still in WhiteBIT's retry schedule gets the whole grace period. A
    final status reached directly also marks the pending level, since the transfer passed it.
    """
    if obs.source != "history":
        return record
    level = expected_level(obs.kind, obs.status) or 0
    pending_at, final_at = record.history_pending_at, record.history_final_at
    if level >= PENDING_LEVEL and pending_at is None:
        pending_at = obs.observed_at
    if level >= FINAL_LEVEL and final_at is None:
        final_at = obs.observed_at
    waived = max(record.history_waived, level) if baseline else record.history_waived
    if (pending_at, final_at, waived) == (record.history_pending_at, record.history_final_at, record.history_waived):
        return record
    return replace(record, history_pending_at=pending_at, history_final_at=final_at, history_waived=waived)


def _identity(obs: TransferObservation) -> dict[str, Any]:
    return {
        "transaction_id": obs.transaction_id,
        "unique_id": obs.unique_id,
        "transaction_hash": obs.transaction_hash or None,
        "network": obs.network,
        "last_event": obs.event if obs.event is not None else f"{obs.source}:{obs.status}",
    }


def _max_optional(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


# --- normalizing payloads ---------------------------------------------------------------------------


def observation_from_webhook(
    account: str, method: str, params: Mapping[str, Any], observed_at: float
) -> TransferObservation:
    """Normalize the ``params`` of a ``deposit.*``/``withdraw.*`` delivery (``method`` already canonical).

    Raises :class:`ObservationError` when the payload has no usable amount or asset; fields the
    documents disagree on (``uniqueId``, ``network``, ``confirmations``, ``method``) may be absent.
    """
    kind, implied = WEBHOOK_TRANSFER_EVENTS[method]
    return _observation(
        account,
        kind,
        "webhook",
        _webhook_status(kind, implied, params.get("status")),
        params,
        observed_at,
        event=method,
    )


def observation_from_history(account: str, record: Mapping[str, Any], observed_at: float) -> TransferObservation:
    """Normalize one ``/api/v4/main-account/history`` record (``method`` 1 deposit, 2 withdrawal).

    Accepts both ``transactionId``/``uniqueId`` and the new OpenAPI's ``transaction_id``/``unique_id``.
    """
    method = int_or_none(record.get("method"))
    if method not in (1, 2):
        raise ObservationError(f"history record method must be 1 or 2, not {record.get('method')!r}")
    status = int_or_none(record.get("status"))
    if status is None:
        raise ObservationError("history record has no integer status")
    return _observation(account, DEPOSIT if method == 1 else WITHDRAW, "history", status, record, observed_at)


def _webhook_status(kind: TransferKind, implied: int, raw: Any) -> int:
    # WhiteBIT's examples carry placeholder statuses, so the method decides and the payload's code is
    # used only where it tells the same story (e.g. 7 instead of 3 for a credited deposit).
    given = int_or_none(raw)
    if given is None or given not in STATUS_NAMES[kind]:
        return implied
    implied_outcome = final_outcome(kind, implied)
    if final_outcome(kind, given) != implied_outcome:
        return implied
    return given


def _observation(
    account: str,
    kind: TransferKind,
    source: TransferSource,
    status: int,
    fields: Mapping[str, Any],
    observed_at: float,
    event: str | None = None,
) -> TransferObservation:
    ticker = fields.get("ticker") or fields.get("currency")
    if not isinstance(ticker, str) or not ticker.strip():
        raise ObservationError("transfer has no ticker")
    amount = _decimal(fields.get("amount"))
    if amount is None:
        raise ObservationError(f"transfer amount is not a decimal: {fields.get('amount')!r}")
    confirmations = fields.get("confirmations")
    actual = required = None
    if isinstance(confirmations, Mapping):
        actual = int_or_none(confirmations.get("actual"))
        required = int_or_none(confirmations.get("required"))
    created = fields.get("createdAt")
    created_at = float(created) if _is_number(created) and math.isfinite(float(created)) and created >= 0 else None
    return TransferObservation(
        account=account,
        kind=kind,
        source=source,
        status=status,
        ticker=ticker.strip(),
        amount=amount,
        observed_at=observed_at,
        created_at=created_at,
        transaction_id=_text(fields.get("transactionId", fields.get("transaction_id"))),
        unique_id=_text(fields.get("uniqueId", fields.get("unique_id"))),
        transaction_hash=_text(fields.get("transactionHash")),
        address=_text(fields.get("address")),
        memo=_text(fields.get("memo")),
        network=_text(fields.get("network")),
        confirmations_actual=actual,
        confirmations_required=required,
        event=event,
    )


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
        return number if -(2**63) <= number < 2**63 else None
    return None


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None
    return number if number.is_finite() else None


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value if value != "" else None
    if _is_number(value):
        return str(value)
    return None


def _amount_text(amount: Decimal) -> str:
    text = format(amount.normalize(), "f")
    return "0" if text in ("-0", "0") else text


# --- the book: I/O around the state machine and the view metrics are rendered from -------------------


@dataclass(frozen=True)
class TransferUpdate:
    """A staged transition: written to the state file by :meth:`TransferBook.stage`, not yet in memory."""

    transition: Transition
    observation: TransferObservation = field(repr=False)


class TransferBook:
    """Every account's transfers: the persisted records and the counts rendered as metrics.

    ``stage(obs)`` looks the record up and writes its new state, once, inside the caller's
    :meth:`StateStore.transaction`; once that transaction has committed, ``apply(update)`` brings
    the in-memory view (in-flight records, outcome counters) up to date. ``observe(obs)`` does both
    in a transaction of its own, so it must not be called inside another one. ``mark_missed`` sets
    reconciliation's counted flag. These are the only writers of a transfer row.
    """

    def __init__(self, store: StateStore, accounts: Iterable[str], *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self.accounts = tuple(dict.fromkeys(accounts))
        self._open: dict[tuple[str, str, str], TransferRecord] = {}
        self._totals: dict[tuple[str, str, str, str], int] = {}
        for record in store.transfers(open_only=True):
            self._open[(record.account, record.kind, record.key)] = record
        # Outcome counters restart at 0, but for every asset already known, not only after a new event.
        for account, kind, ticker in store.transfer_assets():
            self._init_totals(account, kind, ticker)

    # -- writing -------------------------------------------------------------------------------

    def stage(self, obs: TransferObservation, *, baseline: bool = False) -> TransferUpdate:
        """Find ``obs``'s record, advance it and write it once (call inside a state transaction).

        ``baseline``: ``obs`` is a record of the account's first history poll (see :func:`advance`).
        """
        keys = candidate_keys(obs)
        if len(keys) == 1 and (obs.account, obs.kind, keys[0]) not in self._open:
            # Not in flight, so most likely a first sighting (a webhook's usual case): insert it in
            # one statement. Only if a record was stored after all (final, or staged earlier in
            # this transaction) does the lookup below run, exactly as without this shortcut.
            transition = advance(None, obs, keys[0], self._clock(), baseline=baseline)
            if self._store.add_transfer(transition.record):
                return TransferUpdate(transition, obs)
        existing: TransferRecord | None = None
        taken: set[str] = set()
        for key in keys:
            found = self._store.get_transfer(obs.account, obs.kind, key)
            if found is not None:
                if compatible(found, obs):
                    existing = found
                    break
                taken.add(key)
        key = existing.key if existing is not None else new_key(obs, keys, taken)
        transition = advance(existing, obs, key, self._clock(), baseline=baseline)
        if transition.changed:
            self._store.put_transfer(transition.record)
        return TransferUpdate(transition, obs)

    def apply(self, update: TransferUpdate) -> None:
        """Bring the in-memory view up to date with a committed ``stage()``."""
        t = update.transition
        record = t.record
        ident = (record.account, record.kind, record.key)
        self._init_totals(record.account, record.kind, record.ticker)
        if record.final:
            self._open.pop(ident, None)
        else:
            self._open[ident] = record
        if t.counted_outcome is not None:
            total = (record.account, record.kind, t.counted_outcome, record.ticker)
            self._totals[total] = self._totals.get(total, 0) + 1
        if t.conflict:
            log.warning(
                "final transfer reported final again with another outcome; kept the first",
                extra={
                    "account": record.account,
                    "kind": record.kind,
                    "outcome": record.outcome,
                    "reported_status": update.observation.status,
                    "source": update.observation.source,
                },
            )

    def observe(self, obs: TransferObservation) -> Transition:
        """Stage and apply ``obs`` in a transaction of its own; the transition it made."""
        with self._store.transaction():
            update = self.stage(obs)
        self.apply(update)
        return update.transition

    def mark_missed(self, record: TransferRecord) -> TransferRecord:
        """Store ``record`` as counted in ``whitebit_webhooks_missed_total`` (call inside a state transaction).

        ``record`` must have been read in that same transaction, so that nothing newer is overwritten.
        The in-memory view is left as it is: the flag shows in no metric, and reconciliation reads it
        from the state file.
        """
        if record.missed_counted:
            return record
        marked = replace(record, missed_counted=True)
        self._store.put_transfer(marked)
        return marked

    def purge_final(self, older_than: float) -> int:
        """Forget final records last updated before ``older_than`` (unix s); returns how many."""
        return self._store.purge_final_transfers(older_than)

    # -- reading -------------------------------------------------------------------------------

    def in_flight(self) -> list[TransferRecord]:
        """Transfers not yet final, oldest first."""
        return sorted(self._open.values(), key=lambda r: (r.account, r.created_at, r.kind, r.key))

    def totals(self) -> dict[tuple[str, str, str, str], int]:
        """Final outcomes counted since start: (account, kind, outcome, asset) -> count."""
        return dict(self._totals)

    def _init_totals(self, account: str, kind: TransferKind, asset: str) -> None:
        # A counter series starts at 0 as soon as its asset is known, so increase() sees the first one.
        for outcome in OUTCOMES[kind]:
            self._totals.setdefault((account, kind, outcome, asset), 0)


class TransferCollector(Collector):
    """Transfers in flight by status meaning, final outcomes, and how long deposits have been waiting.

    ::

        whitebit_transfers_in_flight{account="main",kind="deposit",status="pending"} 2.0
        whitebit_transfers_total{account="main",asset="USDT",kind="deposit",outcome="successful"} 5.0
        whitebit_transfers_oldest_in_flight_timestamp_seconds{account="main",kind="deposit"} 1.7e+09
        whitebit_deposits_awaiting_confirmations{account="main"} 1.0
    """

    def __init__(self, book: TransferBook) -> None:
        self._book = book

    def collect(self) -> Iterator[Metric]:
        in_flight = WHITEBIT_TRANSFERS_IN_FLIGHT.family()
        totals = WHITEBIT_TRANSFERS.family()
        oldest = WHITEBIT_TRANSFERS_OLDEST_IN_FLIGHT_TIMESTAMP_SECONDS.family()
        awaiting = WHITEBIT_DEPOSITS_AWAITING_CONFIRMATIONS.family()
        counts: dict[tuple[str, str, str], int] = {}
        first: dict[tuple[str, str], float] = {}
        waiting: dict[str, int] = dict.fromkeys(self._book.accounts, 0)
        for account in self._book.accounts:
            for kind in TRANSFER_KINDS:
                for name in IN_FLIGHT_STATUSES[kind]:
                    counts[(account, kind, name)] = 0
        for record in self._book.in_flight():
            ident = (record.account, record.kind, record.status_name)
            counts[ident] = counts.get(ident, 0) + 1
            pair = (record.account, record.kind)
            first[pair] = min(first.get(pair, math.inf), record.created_at)
            if (
                record.kind == DEPOSIT
                and record.confirmations_required is not None
                and (record.confirmations_actual or 0) < record.confirmations_required
            ):
                waiting[record.account] = waiting.get(record.account, 0) + 1
        for in_flight_labels, count in counts.items():
            in_flight.add_metric(list(in_flight_labels), count)
        for total_labels, total in sorted(self._book.totals().items()):
            totals.add_metric(list(total_labels), total)
        for oldest_labels, created_at in sorted(first.items()):
            oldest.add_metric(list(oldest_labels), created_at)
        for account, count in waiting.items():
            awaiting.add_metric([account], count)
        yield in_flight
        yield totals
        yield oldest
        yield awaiting
