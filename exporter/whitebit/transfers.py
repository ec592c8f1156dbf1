"""The deposit and withdrawal lifecycle: a pure state machine over persisted transfer records.

Webhook deliveries (``deposit.*``, ``withdraw.*``) and REST history records are first
normalized into a :class:`TransferObservation` with its ``source`` (``"webhook"`` or
``"history"``); :func:`advance` then decides, without any I/O, what the stored
:class:`~exporter.core.state.TransferRecord` becomes. :class:`TransferBook` does the I/O around it
(lookup and write in the state file, in the caller's transaction) and keeps the in-memory view the
metrics are rendered from.

**Two views of one transfer.** A webhook and a history record describe the same transfer in different
forms (docs/protocol.md#webhook-payload-fields): the webhook may name the asset with a network suffix
(``USDT_ETH``), carry 18-decimal amounts, ``uniqueId: null``, no ``transactionId`` and, in
``deposit.canceled``, ``network: null``; history has the plain ticker, short amounts and a
``transactionId`` (either spelling). Either may come first, and history may show a status before or
after the webhook that announces it. An observation is matched to a record on what both views carry
and a transfer never changes (README.md#webhooks-and-transfers says why each):

- the *asset*: the ticker upper-cased, with any ``_SUFFIX`` split off (:func:`asset_of`). The suffix
  is not compared with ``network``: the documents pair ``USDT_ETH`` with ``ERC20``, give no table
  from one to the other and let ``network`` be null, so ``network`` only breaks ties;
- the amount as a Decimal (``"25.000000000000000000"``, ``"25"`` and ``25`` are equal);
- the address (case-insensitive) and the memo (``""`` and null are the same);
- ``createdAt``, within :data:`CREATED_AT_TOLERANCE` seconds;
- for deposits, the transaction hash when both carry one (a withdrawal's hash appears only once it
  is broadcast, so there it only breaks ties);
- ``transactionId`` and ``uniqueId`` where both carry one: an equal id decides, a different one is
  another transfer (:func:`compatible`). A deposit webhook's ``uniqueId`` equal to a record's
  ``transactionId`` decides too (docs/protocol.md#webhook-payload-fields).

**The key.** A new record is stored under ``m:<digest>:<slot>``, the digest of kind, asset, amount,
address, memo and the ``createdAt`` window (:data:`MATCH_WINDOW`, twice the tolerance) it falls in.
A lookup reads the one or two windows its own ``createdAt`` may match, slot 0, 1, … up to the first
free one (plus any slot still in flight beyond it, in case a final one below it was purged), so it
costs a few indexed reads. Records written by earlier versions keep their keys (``txid:``,
``uid:``, ``fp:`` of :func:`legacy_fingerprint`); they are looked up under those keys as well, and
a history record finds such a record that only a webhook created by asset and amount.

**Which record** (:func:`choose`). The one holding the observation's ``transactionId``; else the best
*eligible* one: a history record never joins a record that another history record (another
``transactionId``) holds, and neither view joins a record that is final with another outcome. Ties
go to matching ids, then the transaction hash, then (for a webhook) the record with the fewest copies
of this event (:data:`REPEATABLE_EVENTS`), the same finality, the fewest webhook events, the network,
the nearest ``createdAt`` and last the key, so the result depends only on the order of the
observations. A webhook never starts a second record while one it may belong to exists: a second copy
of an event (a look-alike transfer's, or the same event sent again under a new ``id``, which the
documents do not rule out) is kept on the record as a copy (``events``). History tells look-alikes
apart by ``transactionId``; a history record that shows its transfer further than its webhooks went
*adopts*, from look-alikes holding surplus copies, one copy of each event it lacks (:func:`adopt`), so
two outputs of one transaction to one address with one amount end as two records, each with its
webhooks, and neither is reported missed. An account without history (no API credentials) cannot
tell them apart and keeps one record.

**Counting outcomes.** Per outcome, ``whitebit_transfers_total`` counts the fewest transfers that
explain the final reports seen among the records that match: each final report (a final webhook, or
history's first final status for a ``transactionId``) adds one unless it pairs with a report of the
other view not paired yet (:func:`distinct_finals`, a maximum matching). A transfer reported final
by both views counts once in either order, two look-alike transfers count twice once both are
final, and which look-alike a webhook was attached to changes no count.

**Statuses.** Status codes mean different things per method (docs/protocol.md#transfer-status-codes),
so names come from two tables; webhook status values are placeholders in WhiteBIT's examples (all
15, docs/protocol.md#webhook-payload-fields), so a webhook's *method* decides whether it is final
(``deposit.processed`` is successful whatever status it carries) and the payload status is used only
where it agrees with the method. A final record never changes status again; a non-final one never
moves back to an earlier stage (a late retry of ``withdraw.unconfirmed`` after ``withdraw.pending``
changes nothing); confirmations only grow. The counted outcomes are not in the state file: a
restart counts from 0, and a report stored before it pairs as usual.

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

``details`` keeps what matching needs besides: the ids (and which ones a webhook gave), address,
memo, ``createdAt`` as sent, hash, network, the webhook events received (``events``, signature →
copies) and the outcome history reported (``history_outcome``). Every write of a transfer row goes
through :class:`TransferBook`, the counted-missed flag included.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, Literal, TypeGuard

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.metrics import (
    WHITEBIT_DEPOSITS_AWAITING_CONFIRMATIONS,
    WHITEBIT_TRANSFERS,
    WHITEBIT_TRANSFERS_IN_FLIGHT,
    WHITEBIT_TRANSFERS_OLDEST_IN_FLIGHT_TIMESTAMP_SECONDS,
)
from exporter.core.state import TransferKind, TransferRecord
from exporter.core.storage import TransferStorage
from exporter.webhooks.bounds import (
    MAX_ID_LENGTH,
    MAX_NUMBER_TEXT,
    MAX_TIMESTAMP,
    OutOfBounds,
    bounded_decimal,
    storable_text,
)

log = logging.getLogger(__name__)

TransferSource = Literal["webhook", "history"]
SOURCES: tuple[TransferSource, ...] = ("webhook", "history")

DEPOSIT: TransferKind = "deposit"
WITHDRAW: TransferKind = "withdraw"
TRANSFER_KINDS: tuple[TransferKind, ...] = (DEPOSIT, WITHDRAW)
#: The longest ticker accepted (WhiteBIT's are a few letters, with a ``_NETWORK`` suffix at most).
MAX_TICKER_LENGTH = 64
#: ``createdAt`` at or above this is no time (None): year 2100 in milliseconds, so a value in either
#: unit stays what it was (exporter/webhooks/bounds.py has the bounds of everything else).
MAX_CREATED_AT = MAX_TIMESTAMP * 1000
#: The most digits of an id sent as a JSON number (a 64-bit integer has 19).
MAX_ID_DIGITS = 40
#: Final transfers are kept this long so late deliveries and history rows are recognized as known.
FINAL_TRANSFER_RETENTION = 30 * 86400.0
#: How far apart (s) the two views' ``createdAt`` of one transfer may be. Both views document it as
#: the transfer's creation time in whole seconds (docs/protocol.md#webhook-payload-fields), so they
#: should be equal; the tolerance absorbs a difference the documents do not rule out (rounding, two
#: serializers) without joining a transfer made minutes later to the same address for the same amount.
CREATED_AT_TOLERANCE = 300.0
#: The ``createdAt`` window a record key is built from: twice the tolerance, so that every ``createdAt``
#: within the tolerance of an observation's falls in one of the two windows its lookup reads.
MATCH_WINDOW = 2 * CREATED_AT_TOLERANCE
#: The prefix of the keys this version writes (older versions wrote ``txid:``, ``uid:`` and ``fp:``).
KEY_PREFIX = "m:"
#: Webhook methods one transfer may send more than once (``deposit.updated`` once per confirmation,
#: ``withdraw.pending`` per status in progress): a copy of one is the same method *and* the same status
#: and confirmations. Every other method comes once per transfer, so any second one is a copy.
REPEATABLE_EVENTS = frozenset({"deposit.updated", "withdraw.pending"})

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


def webhook_level(record: TransferRecord) -> int:
    """How far the webhooks received for ``record`` went (0: none, or only ``withdraw.unconfirmed``)."""
    status = record.webhook_status
    if status is None:
        # Only a row migrated from schema v1 has webhook_seen without a status: its webhook came
        # but how far it went was not kept, so it is taken as final and never counted as missed.
        return FINAL_LEVEL if record.webhook_seen else 0
    if status in FINAL_OUTCOMES[record.kind]:
        return FINAL_LEVEL
    if record.kind == WITHDRAW and status == 5:
        return 0
    return PENDING_LEVEL


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


@dataclass(frozen=True, slots=True)
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

    @property
    def asset(self) -> str:
        """The plain ticker both views agree on (:func:`asset_of`)."""
        return asset_of(self.ticker)


# --- matching: what both views of a transfer share --------------------------------------------------


@functools.lru_cache(maxsize=4096)
def asset_of(ticker: str) -> str:
    """The plain ticker: upper case, without a ``_NETWORK`` suffix (``USDT_ETH`` → ``USDT``).

    Deposit webhooks may name the asset with its network (docs/protocol.md#webhook-payload-fields)
    while history names it plainly; this is the form both agree on, and the ``asset`` label.
    Cached: it runs several times per delivery, over a few dozen tickers.
    """
    text = ticker.strip().upper()
    return text.split("_", 1)[0] or text


def _folded(value: Any) -> str:
    """An address or hash for comparison: case-insensitive, ``""`` when absent."""
    return value.strip().casefold() if isinstance(value, str) else ""


def _memo(value: Any) -> str:
    """A memo for comparison: ``""`` and null (or absent) are the same."""
    return value.strip() if isinstance(value, str) else ""


def normalized_network(value: Any) -> str:
    """A network name for comparison: letters and digits, upper case (``ERC-20`` equals ``ERC20``)."""
    return "".join(ch for ch in value.upper() if ch.isalnum()) if isinstance(value, str) else ""


@dataclass(frozen=True, slots=True)
class _Fields:
    """What both views of a transfer carry and a transfer never changes; None where it is not known."""

    kind: str
    asset: str
    amount: Decimal
    address: str  # "" when not known
    memo: str | None  # None when not known (a record of an earlier version)
    created_at: float | None
    transaction_hash: str  # "" when not known

    def match(self, other: _Fields) -> bool:
        if (self.kind, self.asset, self.amount) != (other.kind, other.asset, other.amount):
            return False
        if self.address and other.address and self.address != other.address:
            return False
        if self.memo is not None and other.memo is not None and self.memo != other.memo:
            return False
        if (
            self.created_at is not None
            and other.created_at is not None
            and abs(self.created_at - other.created_at) > CREATED_AT_TOLERANCE
        ):
            return False
        # A deposit's hash is known from its first sighting in both views; a withdrawal's appears later.
        return not (
            self.kind == DEPOSIT
            and self.transaction_hash
            and other.transaction_hash
            and self.transaction_hash != other.transaction_hash
        )


def _fields_of(obs: TransferObservation) -> _Fields:
    return _Fields(
        obs.kind,
        obs.asset,
        obs.amount,
        _folded(obs.address),
        _memo(obs.memo),
        obs.created_at,
        _folded(obs.transaction_hash),
    )


def _record_fields(record: TransferRecord) -> _Fields:
    details = record.details
    # created_at as sent (None when the payload had none); a record of an earlier version has only the column.
    created: Any = details.get("created_at", record.created_at)
    return _Fields(
        record.kind,
        asset_of(record.ticker),
        record.amount,
        _folded(details.get("address")),
        _memo(details["memo"]) if "memo" in details else None,
        float(created) if _is_number(created) else None,
        _folded(details.get("transaction_hash")),
    )


def matches(record: TransferRecord, obs: TransferObservation) -> bool:
    """True when ``record`` may be ``obs``'s transfer by the fields both views carry (ids aside)."""
    return _record_fields(record).match(_fields_of(obs))


def look_alike(a: TransferRecord, b: TransferRecord) -> bool:
    """True when two records may be one transfer by the fields both views carry (ids aside)."""
    return _record_fields(a).match(_record_fields(b))


def compatible(record: TransferRecord, obs: TransferObservation) -> bool:
    """False when ``record`` names a different transactionId or uniqueId than ``obs``: another transfer."""
    for name, value in (("transaction_id", obs.transaction_id), ("unique_id", obs.unique_id)):
        stored = record.details.get(name)
        if stored and value and stored != value:
            return False
    return True


def own_window(created_at: float | None) -> str:
    """The ``createdAt`` window a record created with ``created_at`` is keyed in."""
    return "-" if created_at is None else str(math.floor(created_at / MATCH_WINDOW))


def match_windows(created_at: float | None) -> tuple[str, list[str]]:
    """(the ``createdAt`` window of ``created_at``, every window a matching ``createdAt`` may be in)."""
    if created_at is None:
        return "-", ["-"]
    low = math.floor((created_at - CREATED_AT_TOLERANCE) / MATCH_WINDOW)
    high = math.floor((created_at + CREATED_AT_TOLERANCE) / MATCH_WINDOW)
    return own_window(created_at), [str(w) for w in range(low, high + 1)]


#: What a record's key digest covers besides its ``createdAt`` window: kind, asset, amount, address, memo.
KeyFields = tuple[str, str, str, str, str]


def key_fields(obs: TransferObservation) -> KeyFields:
    """The fields of ``obs`` its key digest covers (the window aside), as they are hashed."""
    return (obs.kind, obs.asset, _amount_text(obs.amount), _folded(obs.address), _memo(obs.memo))


def record_key_fields(record: TransferRecord) -> KeyFields:
    """:func:`key_fields` of the observation ``record`` was created from (what a record keeps of it)."""
    details = record.details
    return (
        record.kind,
        asset_of(record.ticker),
        _amount_text(record.amount),
        _folded(details.get("address")),
        _memo(details.get("memo")),
    )


def match_digests(obs: TransferObservation, windows: Iterable[str], fields: KeyFields | None = None) -> list[str]:
    """The digest part of the key of a record created from ``obs`` in each of ``windows`` (module docstring)."""
    prefix = hashlib.sha256("\x1f".join(fields or key_fields(obs)).encode("utf-8"))
    digests = []
    for window in windows:
        digest = prefix.copy()
        digest.update(f"\x1f{window}".encode())
        digests.append(digest.hexdigest()[:24])
    return digests


def key_digest(key: str) -> str | None:
    """The digest part of a key this version writes, None for a key of an earlier version."""
    if not key.startswith(KEY_PREFIX):
        return None
    return key[len(KEY_PREFIX) :].rpartition(":")[0]


def _joined(*parts: str) -> str:
    """``parts`` as one string, for the look-up sets of :class:`TransferBook`.

    Strings, not tuples: one entry per transfer ever seen, and tuples would be garbage-collector work
    on every intake. Parts that contain the separator can make two entries equal: the sets only
    filter look-ups, so that costs a read, never a match.
    """
    return "\x1f".join(parts)


def legacy_fingerprint(obs: TransferObservation, ticker: str) -> str:
    """The ``fp:`` key earlier versions stored a transfer under, with ``ticker`` as the ticker.

    A snapshot of their formula (ticker as sent, upper-cased), so that their records are still found.
    """
    parts = [
        obs.kind,
        ticker.upper(),
        _amount_text(obs.amount),
        obs.address or "",
        obs.memo or "",
        "" if obs.created_at is None else str(int(obs.created_at)),
        (obs.transaction_hash or "") if obs.kind == DEPOSIT else "",
    ]
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return f"fp:{digest[:32]}"


def legacy_keys(obs: TransferObservation) -> list[str]:
    """Every key an earlier version may have stored ``obs``'s transfer under."""
    keys: list[str] = []
    if obs.transaction_id:
        keys.append(f"txid:{obs.transaction_id}")
    if obs.unique_id:
        keys.append(f"uid:{obs.unique_id}")
    keys.append(legacy_fingerprint(obs, obs.ticker))
    if obs.asset != obs.ticker.upper():
        # A webhook naming USDT_ETH finds the record history created under the plain ticker.
        keys.append(legacy_fingerprint(obs, obs.asset))
    return keys


# --- the two views of a record ---------------------------------------------------------------------


def event_signature(obs: TransferObservation) -> str:
    """A webhook event as a record keeps it: method, effective status, confirmations and its ``uniqueId``."""
    confirmations = "" if obs.confirmations_actual is None else str(obs.confirmations_actual)
    return f"{obs.event}|{obs.status}|{confirmations}|{obs.unique_id or ''}"


def _parse_signature(sig: str) -> tuple[str, int, int | None, str | None]:
    method, status, confirmations, unique_id = [*sig.split("|", 3), "", "", ""][:4]
    return method, int_or_none(status) or 0, int_or_none(confirmations), unique_id or None


def record_events(record: TransferRecord) -> dict[str, int]:
    """The webhook events ``record`` received: signature -> copies (empty for a record of an earlier version)."""
    stored = record.details.get("events")
    if not isinstance(stored, dict):
        return {}
    return {str(sig): count for sig, count in stored.items() if isinstance(count, int) and count > 0}


def _event_kind(sig: str) -> str:
    """What makes two events copies of each other: a repeatable one's whole signature, else its method."""
    method = sig.partition("|")[0]
    return sig if method in REPEATABLE_EVENTS else method


def _copies_of(events: Mapping[str, int], sig: str) -> int:
    """How many events like ``sig`` ``events`` holds (see :data:`REPEATABLE_EVENTS`)."""
    kind = _event_kind(sig)
    return sum(count for other, count in events.items() if _event_kind(other) == kind)


def webhook_outcome(record: TransferRecord) -> str | None:
    """The final outcome a webhook reported for ``record``, None while no webhook reported one."""
    if record.webhook_status is not None:
        return final_outcome(record.kind, record.webhook_status)
    # A row migrated from schema v1 may say a webhook came without saying how far it went.
    return record.outcome if record.webhook_seen and record.final else None


def history_outcome(record: TransferRecord) -> str | None:
    """The final outcome history reported for ``record``, None while history has not shown one."""
    stored = record.details.get("history_outcome")
    if isinstance(stored, str):
        return stored
    # A record of an earlier version: history showed it final when it set history_final_at.
    return record.outcome if "history_outcome" not in record.details and record.history_final_at else None


def eligible(record: TransferRecord, obs: TransferObservation) -> bool:
    """True when ``obs`` may join ``record`` (``matches`` assumed; see the module docstring)."""
    if not compatible(record, obs):
        return False
    outcome = final_outcome(obs.kind, obs.status)
    if outcome is not None and record.final and record.outcome != outcome:
        return False
    if obs.source == "history":
        # Held by another history record (another transactionId): another transfer.
        return not (record.history_seen and record.details.get("transaction_id") != obs.transaction_id)
    # A final webhook joins a record a final webhook with the same outcome reached only as a copy.
    reported = webhook_outcome(record)
    return outcome is None or reported is None or reported == outcome


def _same_id(record: TransferRecord, obs: TransferObservation) -> bool:
    details = record.details
    if obs.unique_id and obs.unique_id == details.get("unique_id"):
        return True
    if obs.kind != DEPOSIT:
        return False
    # A deposit webhook's uniqueId is its transactionId (docs/protocol.md#webhook-payload-fields).
    if obs.source == "webhook":
        return bool(obs.unique_id) and obs.unique_id == details.get("transaction_id")
    return bool(obs.transaction_id) and obs.transaction_id == details.get("webhook_unique_id")


def _preference(record: TransferRecord, obs: TransferObservation) -> tuple[int, int, int, int, int, int, float, str]:
    """Lower is better: how ``choose`` orders eligible records."""
    fields, mine = _record_fields(record), _fields_of(obs)
    network = normalized_network(record.details.get("network"))
    created = (
        abs(fields.created_at - mine.created_at)
        if fields.created_at is not None and mine.created_at is not None
        else 0.0
    )
    return (
        0 if _same_id(record, obs) else 1,
        0 if fields.transaction_hash and fields.transaction_hash == mine.transaction_hash else 1,
        _copies_of(record_events(record), event_signature(obs)) if obs.source == "webhook" else 0,
        0 if record.final == (final_outcome(obs.kind, obs.status) is not None) else 1,
        # Among look-alikes, the one that has heard least from webhooks is the likelier to be waiting.
        sum(record_events(record).values()) if obs.source == "webhook" else 0,
        0 if network and network == normalized_network(obs.network) else 1,
        created,
        record.key,
    )


def choose(obs: TransferObservation, candidates: Iterable[TransferRecord]) -> TransferRecord | None:
    """The record ``obs`` joins among ``candidates`` (records that ``match`` it), None for a new transfer."""
    candidates = list(candidates)
    if obs.transaction_id:
        for record in candidates:
            if record.details.get("transaction_id") == obs.transaction_id:
                return record
    return min((r for r in candidates if eligible(r, obs)), key=lambda r: _preference(r, obs), default=None)


def _pairable(history_part: TransferRecord, webhook_part: TransferRecord) -> bool:
    """True when one transfer may have made both reports: history's of one record, a webhook's of another.

    The webhook report is judged by the ids its own final webhook carried (``webhook_final_ids``), not
    by what joined its record later, so that a pairing, once possible, stays possible.
    """
    if history_part.key == webhook_part.key:
        return True
    if not look_alike(history_part, webhook_part):
        return False
    given = webhook_part.details.get("webhook_final_ids")
    if not isinstance(given, dict):
        return True
    for name in ("unique_id", "transaction_id"):
        sent, held = given.get(name), history_part.details.get(name)
        if sent and held and sent != held:
            return False
    return True


def distinct_finals(records: Sequence[TransferRecord], outcome: str) -> int:
    """The fewest transfers that explain the final reports with ``outcome`` among ``records``.

    Every history report and every webhook report with ``outcome`` is one transfer, except that a
    history report and a webhook report one transfer may have made both (:func:`_pairable`) count as
    one: the count is the number of reports less a maximum matching between the two views.
    """
    history = [r for r in records if history_outcome(r) == outcome]
    hooks = [r for r in records if webhook_outcome(r) == outcome]
    paired: dict[int, int] = {}  # index in hooks -> index in history

    def augment(i: int, tried: set[int]) -> bool:
        for j, hook in enumerate(hooks):
            if j in tried or not _pairable(history[i], hook):
                continue
            tried.add(j)
            if j not in paired or augment(paired[j], tried):
                paired[j] = i
                return True
        return False

    matched = sum(augment(i, set()) for i in range(len(history)))
    return len(history) + len(hooks) - matched


def newly_counted(
    before: TransferRecord | None, after: TransferRecord, others: Sequence[TransferRecord]
) -> tuple[str, ...]:
    """The outcomes a change of one record adds to ``whitebit_transfers_total`` (at most one each).

    ``before``/``after``: the record, before and after; ``others``: the other records that match the
    observation. Only a view's first final report on the record can count, and only if it raises
    :func:`distinct_finals`.
    """
    if before is None and not others:
        # A first report with nothing to pair with: the usual webhook (this path runs once per delivery).
        by_webhook, by_history = webhook_outcome(after), history_outcome(after)
        if by_webhook is None or by_history is None or by_webhook == by_history:
            either = by_webhook or by_history
            return () if either is None else (either,)
        return tuple(sorted((by_webhook, by_history)))
    gained = {
        outcome
        for view in (webhook_outcome, history_outcome)
        if (outcome := view(after)) is not None and (before is None or view(before) is None)
    }
    return tuple(
        outcome
        for outcome in sorted(gained)
        if distinct_finals([*others, after], outcome)
        > distinct_finals([*others, *([before] if before is not None else [])], outcome)
    )


def history_level(record: TransferRecord) -> int:
    """The furthest expectation level history has shown for ``record`` (0: none)."""
    if record.history_final_at is not None:
        return FINAL_LEVEL
    return PENDING_LEVEL if record.history_pending_at is not None else 0


def adopt(
    record: TransferRecord, candidates: Iterable[TransferRecord], obs: TransferObservation, now: float
) -> tuple[TransferRecord, list[TransferRecord]]:
    """``record`` (just joined by history ``obs``) with surplus events of its look-alikes it lacks.

    Only while history shows ``record`` further than its webhooks went. A look-alike holding more
    copies of an event than one transfer sends gives one of them to ``record`` if ``record`` has none
    like it: at most one of each, in key order, never one whose ``uniqueId`` names another transfer,
    and a final one only if it tells ``record``'s outcome. Returns the record and the look-alikes
    that gave, with one copy fewer each.
    """
    if webhook_level(record) >= history_level(record):
        return record, []
    donors: list[TransferRecord] = []
    created_at = _record_fields(record).created_at
    for donor in sorted(candidates, key=lambda r: r.key):
        events = record_events(donor)
        for sig in sorted(events, key=lambda s: (_parse_signature(s)[3] != obs.unique_id, s)):
            method, status, confirmations, unique_id = _parse_signature(sig)
            outcome = final_outcome(record.kind, status)
            if (
                events[sig] < 1
                or _copies_of(events, sig) < 2
                or _copies_of(record_events(record), sig) > 0
                or (unique_id and obs.unique_id and unique_id != obs.unique_id)
                or (outcome is not None and record.final and outcome != record.outcome)
            ):
                continue
            events[sig] -= 1
            copy = TransferObservation(
                account=record.account,
                kind=record.kind,
                source="webhook",
                status=status,
                ticker=record.ticker,
                amount=record.amount,
                observed_at=obs.observed_at,
                created_at=created_at,
                unique_id=unique_id,
                address=record.details.get("address") or None,
                memo=record.details.get("memo") or None,
                confirmations_actual=confirmations,
                event=method,
            )
            record = advance(record, copy, record.key, now).record
        if events != record_events(donor):
            kept = {sig: count for sig, count in events.items() if count > 0}
            donors.append(replace(donor, details={**donor.details, "events": kept}, updated_at=now))
    return record, donors


# --- the pure state machine -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transition:
    """What one observation does to a record: the record to store and the outcome to count, if any."""

    previous: TransferRecord | None
    record: TransferRecord
    #: By :func:`advance`: the outcome when the record becomes final. :meth:`TransferBook.stage` replaces
    #: it with what the transfer adds to ``whitebit_transfers_total`` (:func:`newly_counted`).
    counted_outcome: str | None = None
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
    if record is None:
        # An id the payload did not carry is left out (every reader uses .get): a smaller row.
        details: dict[str, Any] = {"address": obs.address or "", "memo": _memo(obs.memo), "created_at": obs.created_at}
        _add_identity(details, obs)
        _add_view_facts(details, obs)
        created = TransferRecord(
            account=obs.account,
            kind=obs.kind,
            key=key,
            status=obs.status,
            status_name=status_name(obs.kind, obs.status),
            ticker=obs.asset,
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
            details=details,
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
    details = dict(record.details)
    _add_identity(details, obs)
    _add_view_facts(details, obs)
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


def _add_identity(details: dict[str, Any], obs: TransferObservation) -> None:
    """Set in ``details`` (a record's own new dict) the ids and event ``obs`` carried; an absent one
    leaves the stored value alone."""
    last_event = obs.event if obs.event is not None else f"{obs.source}:{obs.status}"
    carried = (
        ("transaction_id", obs.transaction_id),
        ("unique_id", obs.unique_id),
        ("transaction_hash", obs.transaction_hash or None),
        ("network", obs.network),
        ("last_event", last_event),
    )
    details.update({name: value for name, value in carried if value is not None})
    if obs.source == "webhook":
        # Which ids a webhook gave: what decides whether it may be another record's history's webhook.
        if obs.unique_id is not None:
            details["webhook_unique_id"] = obs.unique_id
        if obs.transaction_id is not None:
            details["webhook_transaction_id"] = obs.transaction_id


def _add_view_facts(details: dict[str, Any], obs: TransferObservation) -> None:
    """Set in ``details`` (a record's own new dict) what ``obs`` tells about its own view: the
    webhook event, or history's outcome."""
    if obs.source == "webhook":
        stored = details.get("events")
        events = dict(stored) if isinstance(stored, dict) else {}
        sig = event_signature(obs)
        # A second copy is a look-alike's event, or one sent again under a new id (see adopt()).
        events[sig] = events.get(sig, 0) + 1
        details["events"] = events
        if final_outcome(obs.kind, obs.status) is not None and "webhook_final_ids" not in details:
            # The ids of the first final webhook: what its report pairs by (see _pairable()).
            # Only the ids it carried: an absent one pairs with anything, as a null one would.
            ids: dict[str, str] = {}
            if obs.unique_id is not None:
                ids["unique_id"] = obs.unique_id
            if obs.transaction_id is not None:
                ids["transaction_id"] = obs.transaction_id
            details["webhook_final_ids"] = ids
        return
    outcome = final_outcome(obs.kind, obs.status)
    if outcome is not None and not details.get("history_outcome"):
        details["history_outcome"] = outcome


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
    if len(ticker) > MAX_TICKER_LENGTH:
        # asset_of() caches tickers: an unbounded one would make the cache hold megabytes.
        raise ObservationError(f"transfer ticker is longer than {MAX_TICKER_LENGTH} characters")
    if not storable_text(ticker):
        raise ObservationError("transfer ticker is not valid text (a lone surrogate)")
    try:
        # Bounded before anything spells it out (exporter/webhooks/bounds.py): _amount_text()
        # normalizes it, the state file stores it as plain digits.
        amount = bounded_decimal(fields.get("amount"), "transfer amount")
    except OutOfBounds as exc:
        raise ObservationError(str(exc)) from None
    confirmations = fields.get("confirmations")
    actual = required = None
    if isinstance(confirmations, Mapping):
        actual = int_or_none(confirmations.get("actual"))
        required = int_or_none(confirmations.get("required"))
    created_at = created_at_of(fields.get("createdAt"))
    return TransferObservation(
        account=account,
        kind=kind,
        source=source,
        status=status,
        ticker=ticker.strip(),
        amount=amount,
        observed_at=observed_at,
        created_at=created_at,
        transaction_id=_text(fields.get("transactionId", fields.get("transaction_id")), "transactionId"),
        unique_id=_text(fields.get("uniqueId", fields.get("unique_id")), "uniqueId"),
        transaction_hash=_text(fields.get("transactionHash"), "transactionHash"),
        address=_text(fields.get("address"), "address"),
        memo=_text(fields.get("memo"), "memo"),
        network=_text(fields.get("network"), "network"),
        confirmations_actual=actual,
        confirmations_required=required,
        event=event,
    )


def created_at_of(value: Any) -> float | None:
    """``createdAt`` in unix seconds: an integer as documented, or a float or a numeric string; None otherwise.

    None also for a value outside [0, :data:`MAX_CREATED_AT`) (the ``int`` 10**400 is a number too,
    but no float), so that what follows (match windows, fingerprints) only ever sees a sane time.
    """
    if isinstance(value, str):
        if len(value) > MAX_NUMBER_TEXT:
            return None
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not _is_number(value) or not 0 <= value < MAX_CREATED_AT:  # NaN fails too
        return None
    return float(value)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_or_none(value: Any) -> int | None:
    """``value`` as a signed 64-bit integer (an int, an integral float or a string of ASCII digits), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, str):
        # ASCII only: str.isdigit() also takes digits int() refuses ("²"), and a 64-bit integer
        # has at most 20 characters, so int() never sees thousands of digits.
        text = value.strip()
        digits = text[1:] if text.startswith("-") else text
        if len(text) <= 20 and digits.isascii() and digits.isdigit():
            number = int(text)
            return number if -(2**63) <= number < 2**63 else None
    return None


def _text(value: Any, name: str = "id") -> str | None:
    """A string (or number) field as text, None when absent or empty; :class:`ObservationError` when too long."""
    if isinstance(value, str):
        if len(value) > MAX_ID_LENGTH:
            raise ObservationError(f"transfer {name} is longer than {MAX_ID_LENGTH} characters")
        if not storable_text(value):
            raise ObservationError(f"transfer {name} is not valid text (a lone surrogate)")
        return value if value != "" else None
    if isinstance(value, int) and not isinstance(value, bool) and not -(10**MAX_ID_DIGITS) < value < 10**MAX_ID_DIGITS:
        raise ObservationError(f"transfer {name} is a number of more than {MAX_ID_DIGITS} digits")
    if _is_number(value):
        return str(value)
    return None


def _amount_text(amount: Decimal) -> str:
    text = format(amount.normalize(), "f")
    return "0" if text in ("-0", "0") else text


# --- the book: I/O around the state machine and the view metrics are rendered from -------------------


@dataclass(frozen=True, slots=True)
class TransferUpdate:
    """A staged transition: written to the state file by :meth:`TransferBook.stage`, not yet in memory.

    ``counted``: the outcomes it adds to ``whitebit_transfers_total`` (:func:`newly_counted`);
    ``others``: other records the same stage wrote (a look-alike that gave up a surplus event).
    """

    transition: Transition
    observation: TransferObservation = field(repr=False)
    counted: tuple[str, ...] = ()
    others: tuple[TransferRecord, ...] = ()


class TransferBook:
    """Every account's transfers: the persisted records and the counts rendered as metrics.

    ``stage(obs)`` looks the record up and writes its new state, once, inside the caller's
    :meth:`StateStore.transaction`; once that transaction has committed, ``apply(update)`` brings
    the in-memory view (in-flight records, outcome counters) up to date. ``observe(obs)`` does both
    in a transaction of its own, so it must not be called inside another one. ``mark_missed`` sets
    reconciliation's counted flag. These are the only writers of a transfer row.
    """

    def __init__(
        self, store: TransferStorage, accounts: Iterable[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._clock = clock
        self.accounts = tuple(dict.fromkeys(accounts))
        self._open: dict[tuple[str, str, str], TransferRecord] = {}
        #: (account, kind, key digest) -> keys of records in flight, for a lookup past a purged slot.
        self._open_by_digest: dict[tuple[str, str, str], set[str]] = {}
        #: Every (account, kind, key digest) a record may be stored under (as :func:`_joined` text): a
        #: digest not in it has no slot to read, which spares a webhook's first sighting its lookups.
        #: Added to when a record is staged (so a rolled-back or purged record only costs a read), never
        #: removed.
        self._digests: set[str] = set()
        #: (account, key fields) of every record this version keyed, the same way: an observation whose
        #: fields are not in it matches no such record in any window, so its lookup hashes one window
        #: (for its own key) and reads nothing; most webhooks are a transfer's first sighting.
        self._key_fields: set[str] = set()
        self._totals: dict[tuple[str, str, str, str], int] = {}
        #: Called with every record an applied update wrote (see :meth:`add_listener`).
        self._listeners: list[Callable[[TransferRecord], None]] = []
        #: Records stored by an earlier version are looked up under their keys too, as long as any exist
        #: (this version never writes such a key, so the set only shrinks); a history record finds those
        #: that a webhook alone created by (account, kind, asset, amount), whatever ticker form they hold.
        self._legacy = False
        self._legacy_webhook_only: dict[tuple[str, str, str, Decimal], list[str]] = {}
        for record in store.transfers():
            if not record.final:
                self._track(record)
            digest = key_digest(record.key)
            if digest is not None:
                self._digests.add(_joined(record.account, record.kind, digest))
                self._key_fields.add(_joined(record.account, *record_key_fields(record)))
            else:
                self._legacy = True
                if record.webhook_seen and not record.history_seen:
                    ident = (record.account, record.kind, asset_of(record.ticker), record.amount)
                    self._legacy_webhook_only.setdefault(ident, []).append(record.key)
        # Outcome counters restart at 0, but for every asset already known, not only after a new event.
        for account, kind, ticker in store.transfer_assets():
            self._init_totals(account, kind, asset_of(ticker))

    # -- finding -------------------------------------------------------------------------------

    def candidates(self, obs: TransferObservation, fields: KeyFields | None = None) -> tuple[list[TransferRecord], str]:
        """(the stored records that match ``obs``, the key a new record of ``obs`` gets).

        Reads the slots of the one or two ``createdAt`` windows ``obs`` may match (see the module
        docstring) and, while records of an earlier version exist, their keys. ``fields``: the
        ``key_fields(obs)`` the caller has already computed.
        """
        if fields is None:
            fields = key_fields(obs)
        if _joined(obs.account, *fields) not in self._key_fields:
            # Nothing keyed by this version can match: only the own window's key is needed, slot 0.
            free = f"{KEY_PREFIX}{match_digests(obs, (own_window(obs.created_at),), fields)[0]}:0"
            return (self._legacy_candidates(obs, set()) if self._legacy else []), free
        found: dict[str, TransferRecord] = {}
        own, windows = match_windows(obs.created_at)
        free = ""
        for window, digest in zip(windows, match_digests(obs, windows, fields), strict=True):
            slot = 0
            while _joined(obs.account, obs.kind, digest) in self._digests:
                key = f"{KEY_PREFIX}{digest}:{slot}"
                record = self._store.get_transfer(obs.account, obs.kind, key)
                if record is None:
                    break
                found[key] = record
                slot += 1
            if window == own:
                free = f"{KEY_PREFIX}{digest}:{slot}"
            # A record in flight above a slot freed by the purge of a final one is still found.
            open_keys = self._open_by_digest.get((obs.account, obs.kind, digest))
            for key in sorted(open_keys) if open_keys else ():
                record = None if key in found else self._store.get_transfer(obs.account, obs.kind, key)
                if record is not None:
                    found[key] = record
        matching = [r for r in found.values() if matches(r, obs)]
        if self._legacy:
            matching.extend(self._legacy_candidates(obs, set(found)))
        return matching, free

    def _legacy_candidates(self, obs: TransferObservation, seen: set[str]) -> list[TransferRecord]:
        keys = legacy_keys(obs)
        if obs.source == "history":
            keys.extend(self._legacy_webhook_only.get((obs.account, obs.kind, obs.asset, obs.amount), ()))
        records: list[TransferRecord] = []
        for key in dict.fromkeys(keys):
            record = None if key in seen else self._store.get_transfer(obs.account, obs.kind, key)
            if record is None:
                continue
            seen.add(key)
            # Its own transactionId or uniqueId under its id key is its transfer, whatever else differs.
            same_id = (obs.transaction_id and record.details.get("transaction_id") == obs.transaction_id) or (
                obs.unique_id and key == f"uid:{obs.unique_id}"
            )
            if same_id or matches(record, obs):
                records.append(record)
        return records

    def find(self, obs: TransferObservation) -> TransferRecord | None:
        """The stored record ``obs`` would join, or None when it would start a new transfer."""
        return choose(obs, self.candidates(obs)[0])

    # -- writing -------------------------------------------------------------------------------

    def stage(self, obs: TransferObservation, *, baseline: bool = False) -> TransferUpdate:
        """Find ``obs``'s record, advance it and write it once (call inside a state transaction).

        ``baseline``: ``obs`` is a record of the account's first history poll (see :func:`advance`).
        """
        now = self._clock()
        fields = key_fields(obs)
        candidates, free = self.candidates(obs, fields)
        existing = choose(obs, candidates) if candidates else None
        transition = advance(existing, obs, existing.key if existing is not None else free, now, baseline=baseline)
        record = transition.record
        digest = key_digest(record.key)
        if digest is not None:
            self._digests.add(_joined(record.account, record.kind, digest))
            if existing is None:  # a new record, keyed from obs (an existing one is in the set already)
                self._key_fields.add(_joined(record.account, *fields))
        others = [r for r in candidates if r.key != record.key] if candidates else []
        donors: list[TransferRecord] = []
        if obs.source == "history":
            record, donors = adopt(record, others, obs, now)
            given = {r.key: r for r in donors}
            others = [given.get(r.key, r) for r in others]
        counted = newly_counted(existing, record, others)
        counted_outcome = counted[0] if counted else None
        if record is not transition.record or counted_outcome != transition.counted_outcome:
            transition = replace(transition, record=record, counted_outcome=counted_outcome)
        if transition.changed:
            self._store.put_transfer(record)
        for donor in donors:
            self._store.put_transfer(donor)
        return TransferUpdate(transition, obs, counted, tuple(donors))

    def apply(self, update: TransferUpdate) -> None:
        """Bring the in-memory view up to date with a committed ``stage()``."""
        t = update.transition
        record = t.record
        for written in (record, *update.others):
            self._track(written)
            for listener in self._listeners:
                listener(written)
        asset = asset_of(record.ticker)
        self._init_totals(record.account, record.kind, asset)
        for outcome in update.counted:
            total = (record.account, record.kind, outcome, asset)
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

    def _track(self, record: TransferRecord) -> None:
        ident = (record.account, record.kind, record.key)
        digest = key_digest(record.key)
        if not record.final:
            self._open[ident] = record
            if digest is not None:
                self._open_by_digest.setdefault((record.account, record.kind, digest), set()).add(record.key)
            return
        self._open.pop(ident, None)
        if digest is None:
            return
        slot_ident = (record.account, record.kind, digest)
        slots = self._open_by_digest.get(slot_ident)
        if slots is not None:
            slots.discard(record.key)
            if not slots:
                del self._open_by_digest[slot_ident]

    def add_listener(self, listener: Callable[[TransferRecord], None]) -> None:
        """Call ``listener`` with each record an update writes, once it is committed and applied
        (a webhook's or a history poll's), so that state kept beside the book follows at once."""
        self._listeners.append(listener)

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
