"""History reconciliation: read ``/api/v4/main-account/history`` and catch every missed webhook.

One :class:`HistoryPoll` per account with API credentials runs as the supervised source
``rest:history:<account>`` every ``poll.history`` seconds (health ``rest:history``). Each poll feeds
every record it reads to the transfer lifecycle (:class:`~exporter.whitebit.transfers.TransferBook`) as a
``"history"`` observation, so statuses that have no webhook (5, 21, 22, Travel Rule 27 and 28) show
in ``whitebit_transfers_in_flight`` from history alone, and then decides which transfers' webhooks
are missing.

**What a poll reads.** History has no date filter and comes newest first, ordered by ``createdAt``.
A poll pages from offset 0 with ``limit`` 100 (the previous docs' maximum; the current docs' 500 is
unconfirmed, docs/protocol.md#deposit-and-withdrawal-history) and stops at the first page that
reaches back past

- the *cursor* minus :data:`CURSOR_OVERLAP` seconds: the cursor is the newest ``createdAt`` any poll
  has read, persisted in the state file. Everything newer is new; the overlap re-reads the last few
  minutes, which costs nothing (feeding a record twice changes nothing) and covers records sharing
  the newest second and records that appear with a slightly older ``createdAt``. Pages cannot skip a
  record: new records are only ever inserted at the top, which pushes older ones *down* into the
  next page (read twice), never up past it.
- the oldest transfer still in flight for the account (from webhooks or history) minus the overlap,
  at most :data:`MAX_RECHECK_PAGES` pages deep: a record changes status without changing position,
  so a poll re-reads the window that still holds a transfer it is waiting for. The history endpoint
  has no ``transactionId`` filter and deposits carry no ``uniqueId``, so a filtered look-up per
  transfer would not work for deposits; one window read serves every in-flight transfer at once
  within the 200 requests / 10 s budget that all accounts share (a quiet account costs one request
  per poll). A transfer deeper than that is still finished by its webhook.

and never beyond ``offset + limit = 10000``, the documented cap (more than 10,000 new records
between two polls are logged as a gap).

**The first poll** (no cursor in the state file, or one that cannot be read) is the *baseline*: it
reads as deep as the cap allows, feeds only the transfers still in flight (the final ones happened
before the exporter watched; counting them in ``whitebit_transfers_total`` would be a spike of old
news) and waives, for those, every webhook they should already have produced (the lifecycle records
the waiver: ``TransferBook.stage(obs, baseline=True)``). Later polls likewise ignore a *final*
record they do not know whose ``createdAt`` is at or before the baseline's newest record, or below
the overlap window (read by an earlier poll: skipped by the baseline, or forgotten when final
records are purged after 30 days). A fresh install therefore never pages on its account's past; a
baseline deposit that is credited *after* the first poll is expected to bring its
``deposit.processed`` like any other.

**Matching** a history record to the webhooks received is the lifecycle's rule
(:mod:`exporter.whitebit.transfers`): by ``transactionId`` where both have it (either spelling), else by
``uniqueId``, else by the fingerprint of the fields that do not change over a transfer's life (kind,
ticker, amount, address, memo, ``createdAt``, and for deposits the transaction hash). A transaction
hash alone is never a key: two records with one hash (one on-chain transaction paying two
addresses) are two transfers; two records whose fingerprints collide too are still two transfers
when their ``transactionId`` differs.

**Missed webhooks.** Each history status that WhiteBIT announces by webhook sets an *expectation
level* (:func:`~exporter.whitebit.transfers.expected_level`, docs/protocol.md#webhook-methods):
deposits 15 → 1 (``deposit.accepted``/``updated``), 3, 7, 4, 9 → 2 (``processed``/``canceled``);
withdrawals 1, 2, 6, 10–17 → 1 (``withdraw.pending``), 3, 7, 4, 18 → 2 (final). Deposit 5, 21, 22,
27, 28 and withdrawal 5 and 21 set none (no webhook is documented for them, or the status of
``withdraw.unconfirmed`` is not). The lifecycle records, with the transfer, when history *first*
showed each level (``history_pending_at``, ``history_final_at``); the webhooks received for the
transfer reach a level too (:func:`webhook_level` of ``webhook_status``, the furthest status any
webhook reported). A transfer is counted in ``whitebit_webhooks_missed_total{account,kind}`` once,
when a level history showed has waited ``reconcile_grace`` seconds without a webhook reaching it. So
a lost ``deposit.processed`` counts even after ``deposit.accepted`` came, while a lost
``deposit.updated`` (one confirmation tick) of a deposit whose other webhooks came does not: the
receiver knew the deposit was pending, and a payment team must not be paged for a tick. The
*counted* flag lives in the state file with the transfer (set through
``TransferBook.mark_missed``), and so do the first-seen times, so neither a restart nor a late
webhook counts a transfer twice, and a restart does not restart the grace. A webhook that comes
after it was counted is processed as usual.

False positives are what this counter must not have. Besides the baseline rule: a record is only
ever counted for accounts with a webhook configured; grace runs from when *this exporter* first saw
the status in history, not from ``createdAt`` (a webhook still in WhiteBIT's retry schedule gets
the whole grace); and a transfer whose webhook came but did not match it exactly (an unmatched
webhook-only record of the same kind, asset and amount within a day) is not counted while that
record stays unmatched (a warning says so).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.health import HealthRegistry
from exporter.core.metrics import WHITEBIT_WEBHOOKS_MISSED, LabelValues
from exporter.core.state import StateError, StateStore, TransferRecord
from exporter.whitebit.pollers import STALE_INTERVALS, STALE_SLACK, Poller
from exporter.whitebit.rest import MAIN_HISTORY, ResponseError, RestClient
from exporter.whitebit.transfers import (
    FINAL_LEVEL,
    FINAL_OUTCOMES,
    PENDING_LEVEL,
    TRANSFER_KINDS,
    WITHDRAW,
    ObservationError,
    TransferBook,
    TransferObservation,
    TransferUpdate,
    candidate_keys,
    compatible,
    observation_from_history,
)

log = logging.getLogger(__name__)

#: Records per page: the previous docs' maximum (the current docs' 500 is unconfirmed,
#: docs/protocol.md#deposit-and-withdrawal-history).
PAGE_LIMIT = 100
#: ``offset + limit`` may not exceed this (docs/protocol.md#deposit-and-withdrawal-history).
MAX_OFFSET = 10_000
#: Seconds of history re-read below the cursor on every poll (see the module docstring).
CURSOR_OVERLAP = 300.0
#: Pages a poll reads at most to re-check transfers still in flight (new records are always read).
MAX_RECHECK_PAGES = 20
#: The state-file cursor name.
CURSOR_NAME = "history"
#: How far apart (s) a webhook-only record may be created from a history record to count as its
#: loose match (see the module docstring).
LOOSE_MATCH_WINDOW = 86400.0


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


def _levels_seen(record: TransferRecord) -> list[tuple[int, float]]:
    """(level, first seen) for every expectation level history has shown for ``record``."""
    seen = ((PENDING_LEVEL, record.history_pending_at), (FINAL_LEVEL, record.history_final_at))
    return [(level, at) for level, at in seen if at is not None]


def due_since(record: TransferRecord) -> float | None:
    """When history first showed a level no webhook has reached yet (None: nothing is awaited)."""
    floor = max(webhook_level(record), record.history_waived)
    times = [at for level, at in _levels_seen(record) if level > floor]
    return min(times) if times else None


# --- the cursor -------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryCursor:
    """What the state file remembers between polls.

    ``newest``: the newest ``createdAt`` any poll read; ``baseline_at``: when the baseline poll ran
    (exporter clock); ``baseline_newest``: the newest ``createdAt`` the baseline read.
    """

    newest: float | None
    baseline_at: float
    baseline_newest: float | None = None

    def encode(self) -> str:
        return json.dumps(
            {"newest": self.newest, "baseline_at": self.baseline_at, "baseline_newest": self.baseline_newest},
            sort_keys=True,
        )

    def old(self, created_at: float | None) -> bool:
        """True for a ``createdAt`` an earlier poll has certainly read (at or before the baseline, or
        below the overlap window)."""
        if created_at is None:
            return False
        if self.baseline_newest is not None and created_at <= self.baseline_newest:
            return True
        return self.newest is not None and created_at < self.newest - CURSOR_OVERLAP

    @classmethod
    def decode(cls, text: str | None) -> HistoryCursor | None:
        """The stored cursor, or None when there is none (or it cannot be read: the next poll is a baseline)."""
        if text is None:
            return None
        try:
            value = json.loads(text)
            newest = value["newest"]
            baseline_at = float(value["baseline_at"])
            baseline_newest = value.get("baseline_newest")
            newest = None if newest is None else float(newest)
            baseline_newest = None if baseline_newest is None else float(baseline_newest)
        except (ValueError, TypeError, KeyError, AttributeError):
            log.warning("unreadable history cursor in the state file; starting a new baseline")
            return None
        return cls(newest, baseline_at, baseline_newest)


# --- the counter ------------------------------------------------------------------------------


class MissedWebhooks(Collector):
    """``whitebit_webhooks_missed_total{account,kind}``, from 0 for every account with a webhook to miss.

    ::

        whitebit_webhooks_missed_total{account="main",kind="deposit"} 1.0
    """

    def __init__(self, accounts: Iterable[str]) -> None:
        self._counts: dict[LabelValues, float] = {(account, kind): 0 for account in accounts for kind in TRANSFER_KINDS}

    def bump(self, account: str, kind: str) -> None:
        """Count one transfer whose webhook was missed."""
        self._counts[(account, kind)] += 1

    def collect(self) -> Iterator[Metric]:
        yield WHITEBIT_WEBHOOKS_MISSED.render(self._counts)


# --- parsing ----------------------------------------------------------------------------------


def parse_history_page(document: Any) -> tuple[list[Mapping[str, Any]], int | None]:
    """``{"limit", "offset", "total", "records": [...]}`` → (records, total)."""
    if not isinstance(document, dict):
        raise ResponseError(MAIN_HISTORY, f"expected a JSON object, got {type(document).__name__}")
    records = document.get("records")
    if not isinstance(records, list):
        raise ResponseError(MAIN_HISTORY, "the answer has no records array")
    total = document.get("total")
    total = total if isinstance(total, int) and not isinstance(total, bool) and total >= 0 else None
    return [r for r in records if isinstance(r, dict)], total


def _created_at(record: Mapping[str, Any]) -> float | None:
    value = record.get("createdAt")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


# --- the poll ---------------------------------------------------------------------------------


class HistoryPoll:
    """One reconciliation poll of one account (see the module docstring)."""

    kind = "history"

    def __init__(
        self,
        client: RestClient,
        book: TransferBook,
        store: StateStore,
        *,
        grace: float,
        missed: MissedWebhooks | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.account = client.account
        self._book = book
        self._store = store
        self.grace = grace
        #: None: the account has no webhook configured, so nothing is ever counted as missed.
        self._missed = missed
        self._clock = clock
        self._watch: set[tuple[str, str]] | None = None  # (kind, key) of transfers awaiting a webhook
        self._loose_logged: set[tuple[str, str]] = set()

    async def __call__(self) -> None:
        cursor = HistoryCursor.decode(self._store.get_cursor(self.account, CURSOR_NAME))
        try:
            records = await self._read(cursor)
            self._feed(records, cursor)
        finally:
            self._evaluate()

    # -- reading -------------------------------------------------------------------------------

    async def _read(self, cursor: HistoryCursor | None) -> list[Mapping[str, Any]]:
        must_reach = None if cursor is None or cursor.newest is None else cursor.newest - CURSOR_OVERLAP
        open_times = [r.created_at for r in self._book.in_flight() if r.account == self.account]
        recheck = min(open_times) - CURSOR_OVERLAP if open_times else None
        records: list[Mapping[str, Any]] = []
        offset = 0
        pages = 0
        while True:
            page, total = parse_history_page(
                await self._client.post(MAIN_HISTORY, {"limit": PAGE_LIMIT, "offset": offset})
            )
            pages += 1
            records.extend(page)
            if len(page) < PAGE_LIMIT or (total is not None and offset + len(page) >= total):
                return records
            times = [t for t in map(_created_at, page) if t is not None]
            oldest = min(times) if times else math.inf
            if cursor is not None:
                # No newest yet (history was empty at the baseline): everything read is new.
                new_left = must_reach is None or oldest >= must_reach
                recheck_left = recheck is not None and oldest >= recheck and pages < MAX_RECHECK_PAGES
                if not (new_left or recheck_left):
                    return records
            offset += PAGE_LIMIT
            if offset + PAGE_LIMIT > MAX_OFFSET:
                if cursor is not None and (must_reach is None or oldest >= must_reach):
                    log.warning(
                        "more than 10000 history records since the last poll; older new records were not read",
                        extra={"account": self.account},
                    )
                return records

    # -- feeding the lifecycle -----------------------------------------------------------------

    def _feed(self, records: list[Mapping[str, Any]], cursor: HistoryCursor | None) -> None:
        now = self._clock()
        baseline = cursor is None
        observations: list[TransferObservation] = []
        for raw in records:
            try:
                observations.append(observation_from_history(self.account, raw, now))
            except ObservationError as exc:
                log.warning("history record skipped", extra={"account": self.account, "reason": str(exc)})
        newest = cursor.newest if cursor is not None else None
        for obs in observations:
            if obs.created_at is not None and (newest is None or obs.created_at > newest):
                newest = obs.created_at
        updates: list[TransferUpdate] = []
        watch = self._watch_set()
        with self._store.transaction():
            for obs in observations:
                if obs.status in FINAL_OUTCOMES[obs.kind] and (
                    baseline or (cursor is not None and cursor.old(obs.created_at) and not self._known(obs))
                ):
                    # Final before the exporter watched (the baseline), or read and forgotten (a final
                    # record purged after its retention): old news, neither an outcome nor a miss.
                    continue
                update = self._book.stage(obs, baseline=baseline)
                updates.append(update)
                record = update.transition.record
                if self._missed is not None and not record.missed_counted and due_since(record) is not None:
                    watch.add((record.kind, record.key))
            if cursor is None:
                cursor = HistoryCursor(newest, now, newest)
            self._store.set_cursor(self.account, CURSOR_NAME, replace(cursor, newest=newest).encode())
        for update in updates:
            self._book.apply(update)
        if baseline:
            log.info(
                "history baseline taken; transfers before it are never counted as missed",
                extra={"account": self.account, "records": len(records), "in_flight": len(updates)},
            )

    def _known(self, obs: TransferObservation) -> bool:
        for key in candidate_keys(obs):
            found = self._store.get_transfer(obs.account, obs.kind, key)
            if found is not None and compatible(found, obs):
                return True
        return False

    # -- missed webhooks -----------------------------------------------------------------------

    def _watch_set(self) -> set[tuple[str, str]]:
        if self._watch is None:
            # Rebuilt from the state file once per process, so a restart keeps waiting where it was.
            self._watch = set()
            if self._missed is not None:
                for record in self._store.transfers(self.account):
                    if not record.missed_counted and due_since(record) is not None:
                        self._watch.add((record.kind, record.key))
        return self._watch

    def _evaluate(self) -> None:
        if self._missed is None:
            return
        now = self._clock()
        watch = self._watch_set()
        counted: list[TransferRecord] = []
        try:
            with self._store.transaction():
                for kind, key in sorted(watch):
                    record = self._store.get_transfer(self.account, kind, key)
                    due = None if record is None or record.missed_counted else due_since(record)
                    if record is None or due is None:
                        watch.discard((kind, key))
                        continue
                    if now - due < self.grace or self._loosely_matched(record):
                        continue
                    counted.append(self._book.mark_missed(record))
                    watch.discard((kind, key))
        except StateError as exc:
            log.warning("missed-webhook check not recorded", extra={"account": self.account, "error": str(exc)})
            return
        for record in counted:
            self._missed.bump(record.account, record.kind)
            log.warning(
                "webhook missed: history shows a transfer whose webhook did not come within reconcile_grace",
                extra={
                    "account": record.account,
                    "kind": record.kind,
                    "ticker": record.ticker,
                    "amount": format(record.amount, "f"),
                    "status": record.status,
                    "transaction_id": record.details.get("transaction_id"),
                    "grace_seconds": self.grace,
                },
            )

    def _loosely_matched(self, record: TransferRecord) -> bool:
        """True when an unmatched webhook-only record looks like ``record``'s own webhook."""
        due = due_since(record)
        # The level that fell due: a webhook-only record that reached it would have been this one's.
        needed = max((level for level, at in _levels_seen(record) if at == due), default=FINAL_LEVEL)
        for other in self._store.transfers(self.account):
            if (
                other.key != record.key
                and other.kind == record.kind
                and other.webhook_seen
                and not other.history_seen
                and other.ticker.upper() == record.ticker.upper()
                and other.amount == record.amount
                and abs(other.created_at - record.created_at) <= LOOSE_MATCH_WINDOW
                and webhook_level(other) >= needed
            ):
                ident = (record.kind, record.key)
                if ident not in self._loose_logged:
                    self._loose_logged.add(ident)
                    log.warning(
                        "a history record matches a webhook only by asset and amount; not counted as missed",
                        extra={
                            "account": self.account,
                            "kind": record.kind,
                            "ticker": record.ticker,
                            "amount": format(record.amount, "f"),
                        },
                    )
                return True
        return False


# --- wiring -----------------------------------------------------------------------------------


def build_history_poller(
    client: RestClient,
    book: TransferBook,
    store: StateStore,
    *,
    health: HealthRegistry,
    interval: float,
    grace: float,
    missed: MissedWebhooks | None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.time,
) -> Poller:
    """The history poller of one account (``rest:history:<account>``, health ``rest:history``).

    ``missed`` is None for an account without a webhook: its history still feeds the lifecycle,
    but nothing can be missed.
    """
    return Poller(
        account=client.account,
        kind=HistoryPoll.kind,
        interval=interval,
        poll=HistoryPoll(client, book, store, grace=grace, missed=missed, clock=clock),
        health=health.register("rest:history", client.account, max_age=STALE_INTERVALS * interval + STALE_SLACK),
        rng=rng,
    )
