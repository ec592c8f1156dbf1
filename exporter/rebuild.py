"""Rebuild: derive every transfer and Zero Hash balance again from the evidence the state file keeps.

The evidence is what was received: the inbox (every accepted webhook delivery, body as received)
and the history records the polls read (``history_records``, each distinct record once, with when
a poll first read it). Derived state is what the exporter concluded from it: the transfers (their
lifecycle, which webhook joined which history record, what reconciliation expects) and the Zero Hash
balances. When the rules that derive it change (better matching, a fixed status table), the state
derived by the old rules stays wrong until it is derived again; :class:`Rebuilder` does that, on a
stopped exporter's file (``whitebit-exporter state rebuild``, :mod:`exporter.state_cli`).

**How.** In one transaction: the derived state is deleted, then every piece of evidence is replayed
through the same code the running exporter uses (:class:`~exporter.whitebit.transfers.TransferBook`,
:func:`~exporter.whitebit.webhook.delivery_observation`, the Zero Hash deriver,
:func:`~exporter.whitebit.reconcile.stage_history`), in the order it was received, each with the
clock set to when it was received: a webhook delivery at its ``received_at``, the records a poll
read first at that poll's time, with the poll's baseline and cursor rules. A history record read
again by later polls is replayed once, where it was first read (feeding a record twice changes
nothing). The inbox cursor ends past the last row. Final transfers past their retention are purged
as the running exporter would. Nothing of it is committed on a dry run.

**The evidence horizon.** Evidence is kept for ``state.inbox_retention``, and history records only
since the version that began keeping them. Before the horizon
(:meth:`~exporter.core.state.StateStore.evidence_horizon`) the evidence is not complete, so a
transfer created before it (less the ``createdAt`` tolerance) is *carried*: kept as it is, and
evidence that joins it is not replayed (it is in the record already).

**Missed webhooks.** ``missed_counted`` says a transfer was counted in
``whitebit_webhooks_missed_total``. The replay checks for missed webhooks when the polls did (each
poll keeps its check among the feeds) with the same grace and retry window, so a transfer whose
webhook came too late is counted as it was. Where the old state had counted no record of a
transfer that the new rules find missed and still without its webhook, the flag is left off: the
exporter counts it, and alerts, at its next history poll. The report says how many.

**The report** compares the transfers before and after, matched as the same transfer when they
look alike in every field both views carry (:func:`~exporter.whitebit.transfers.look_alike`) and no
id of theirs differs: one to one (unchanged, changed, newly final), several into one (merged), one
into several (split), none (new, removed).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal
from typing import Any

from exporter.config.schema import Config
from exporter.core.state import HistoryEvidence, HistoryFeed, InboxDelivery, StateError, TransferRecord, ZerohashBalance
from exporter.core.storage import Rebuild
from exporter.webhooks.inbox import DeriveError
from exporter.whitebit.reconcile import (
    CURSOR_NAME,
    HistoryCursor,
    MissedWebhooks,
    MissedWebhookWatch,
    due_since,
    history_observations,
    stage_history,
)
from exporter.whitebit.transfers import (
    CREATED_AT_TOLERANCE,
    FINAL_TRANSFER_RETENTION,
    TransferBook,
    TransferObservation,
    TransferUpdate,
    asset_of,
    created_at_of,
    look_alike,
)
from exporter.whitebit.webhook import PROVIDER as WHITEBIT
from exporter.whitebit.webhook import delivery_observation
from exporter.zerohash.balances import ZerohashBalances
from exporter.zerohash.webhook import PROVIDER as ZEROHASH
from exporter.zerohash.webhook import ZerohashDeriver

log = logging.getLogger(__name__)

#: Rows read from the state file at a time, of each kind of evidence.
READ_BATCH = 1000

#: The version of the rules that derive state from evidence. Raise it with every change that derives
#: other state from the same deliveries and history records (matching, the lifecycle, what
#: reconciliation expects, Zero Hash ordering): the exporter then rebuilds a state file derived by
#: lower rules when it starts (:func:`rebuild_if_rules_changed`). Stored as the cursor
#: ``derivation:rules`` (account '').
DERIVATION_RULES = 1
_RULES_CURSOR = "derivation:rules"


@dataclass(frozen=True)
class WebhookWatch:
    """What decides, for one account with a webhook, when a due webhook is overdue and when missed."""

    grace: float
    retry_window: float


@dataclass(frozen=True)
class RebuildSettings:
    """What of the config a rebuild needs: the WhiteBIT accounts, which of them have a webhook (and
    its timing), and whether Zero Hash is configured (its rows are derived only then)."""

    accounts: tuple[str, ...]
    webhooks: Mapping[str, WebhookWatch] = field(default_factory=dict)
    zerohash: bool = False


@dataclass
class RebuildReport:
    """What a rebuild replayed and what changed (see the module docstring for the categories)."""

    dry_run: bool = False
    webhooks_replayed: int = 0
    history_records_replayed: int = 0
    history_feeds_replayed: int = 0
    #: Evidence that could not be derived (each inbox row is marked with the reason).
    not_derivable: int = 0
    #: Evidence that joins a carried transfer (created before the horizon), not replayed.
    joined_carried: int = 0
    horizon: float | None = None
    transfers_before: int = 0
    transfers_after: int = 0
    carried: int = 0
    unchanged: int = 0
    changed: int = 0
    newly_final: int = 0
    no_longer_final: int = 0
    outcome_changed: int = 0
    merged: int = 0
    merged_from: int = 0
    split: int = 0
    split_into: int = 0
    regrouped: int = 0
    new: int = 0
    removed: int = 0
    missed_before: int = 0
    missed_kept: int = 0
    no_longer_missed: int = 0
    newly_missed: int = 0
    overdue: int = 0
    #: Zero Hash balances held before and after the rebuild, and how many of them differ.
    balances_before: int = 0
    balances_after: int = 0
    balances_changed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """Every field, for ``--format json``."""
        return asdict(self)


class _Undo(Exception):
    """Rolls a dry run's transaction back once its report is complete."""


class _ReplayClock:
    """The clock the replayed parts read: when the evidence being replayed was received."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Progress = Callable[[int, int], None]


class Rebuilder:
    """Derives the state of one state file again (call :meth:`run` on a store nothing else writes)."""

    def __init__(
        self,
        store: Rebuild,
        settings: RebuildSettings,
        *,
        clock: Callable[[], float] = time.time,
        progress: Progress | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._clock = clock
        self._progress = progress
        self._replay_clock = _ReplayClock()

    def run(self, *, dry_run: bool = False) -> RebuildReport:
        """Rebuild in one transaction (rolled back when ``dry_run``); the report."""
        report = RebuildReport(dry_run=dry_run)
        try:
            with self._store.transaction():
                self._rebuild(report)
                if dry_run:
                    raise _Undo
        except _Undo:
            pass
        return report

    # -- the steps -----------------------------------------------------------------------------

    def _rebuild(self, report: RebuildReport) -> None:
        store = self._store
        now = self._clock()
        store.set_cursor("", _RULES_CURSOR, str(DERIVATION_RULES))
        before = store.transfers()
        balances_before = store.zerohash_balances()
        horizon = report.horizon = store.evidence_horizon()
        keep_before = None if horizon is None else horizon + CREATED_AT_TOLERANCE
        store.reset_derived_state(keep_transfers_created_before=keep_before)
        book = TransferBook(store, self._settings.accounts, clock=self._replay_clock)
        carried: set[tuple[str, str, str]] = {(r.account, r.kind, r.key) for r in store.transfers()}
        report.carried = len(carried)
        self._replay(book, carried, report, now)
        book.purge_final(now - FINAL_TRANSFER_RETENTION)
        self._restore_balances(balances_before, report)
        old = [r for r in before if (r.account, r.kind, r.key) not in carried]
        new = [r for r in store.transfers() if (r.account, r.kind, r.key) not in carried]
        report.transfers_before, report.transfers_after = len(before), len(new) + len(carried)
        self._compare(old, new, report)

    def _replay(
        self, book: TransferBook, carried: set[tuple[str, str, str]], report: RebuildReport, now: float
    ) -> None:
        store = self._store
        last_seq = store.last_inbox_seq()
        total = sum(store.evidence_counts())
        done = 0
        zerohash = ZerohashDeriver(store, ZerohashBalances(())) if self._settings.zerohash else None
        history = _HistoryReplay(
            store, book, lambda obs: self._joins_carried(book, obs, carried, report), self._watches(book), report
        )
        for item in _merged(_inbox_rows(store, last_seq), _feeds(store)):
            if isinstance(item, InboxDelivery):
                self._replay_clock.now = item.received_at
                if item.body is not None:
                    done += 1
                    self._replay_delivery(item, book, carried, zerohash, history, report)
            else:
                self._replay_clock.now = item.at
                done += history.feed(item)
            if self._progress is not None:
                self._progress(done, total)
        if self._progress is not None:
            self._progress(total, total)  # records read before the horizon were counted, not replayed
        store.set_inbox_cursor(last_seq)
        self._replay_clock.now = now
        for watch in history.watches.values():  # as the exporter's next poll will
            watch.evaluate()
            report.overdue += len(watch.overdue)

    def _watches(self, book: TransferBook) -> dict[str, MissedWebhookWatch]:
        """A missed-webhook watch per account with a webhook, on the replay's clock, watching only what
        the replay feeds it (a carried transfer is left as it is)."""
        missed = MissedWebhooks(self._settings.webhooks)
        return {
            account: MissedWebhookWatch(
                account,
                book,
                self._store,
                grace=watch.grace,
                retry_window=watch.retry_window,
                missed=missed,
                clock=self._replay_clock,
                watching=set(),
                replaying=True,
            )
            for account, watch in self._settings.webhooks.items()
        }

    def _replay_delivery(
        self,
        row: InboxDelivery,
        book: TransferBook,
        carried: set[tuple[str, str, str]],
        zerohash: ZerohashDeriver | None,
        history: _HistoryReplay,
        report: RebuildReport,
    ) -> None:
        store = self._store
        try:
            with store.transaction():  # a savepoint: a row that fails leaves nothing behind
                if row.provider == WHITEBIT:
                    obs = delivery_observation(row)
                    if obs is not None and not self._joins_carried(book, obs, carried, report):
                        update = book.stage(obs)
                        book.apply(update)
                        history.touched(update)
                elif row.provider == ZEROHASH and zerohash is not None:
                    applied = zerohash.stage(row)
                    if applied is not None:
                        applied()
                else:
                    raise DeriveError(f"no deriver for provider {row.provider!r} (not configured now)")
        except StateError as exc:
            if exc.kind is not None:
                raise  # the file failed, not the row
            self._not_derivable(row, str(exc), report)
        except DeriveError as exc:
            self._not_derivable(row, str(exc), report)
        else:
            report.webhooks_replayed += 1

    def _not_derivable(self, row: InboxDelivery, error: str, report: RebuildReport) -> None:
        report.not_derivable += 1
        self._store.mark_derive_error(row.seq, error)

    def _joins_carried(
        self,
        book: TransferBook,
        obs: TransferObservation,
        carried: set[tuple[str, str, str]],
        report: RebuildReport,
    ) -> bool:
        if not carried:
            return False
        record = book.find(obs)
        if record is None or (record.account, record.kind, record.key) not in carried:
            return False
        report.joined_carried += 1
        return True

    def _restore_balances(self, before: list[ZerohashBalance], report: RebuildReport) -> None:
        """Put back each balance no kept delivery derived again (its evidence is gone), count changes."""
        store = self._store
        after = {_balance_key(b) for b in store.zerohash_balances()}
        for balance in before:
            if _balance_key(balance) not in after:
                store.apply_zerohash_balance(balance)
        # Every balance held before is held again (put back or derived again): what differs is all that changed.
        rebuilt = store.zerohash_balances()
        old = {_balance_key(b): b for b in before}
        report.balances_before, report.balances_after = len(before), len(rebuilt)
        report.balances_changed = sum(1 for b in rebuilt if old.get(_balance_key(b)) != b)

    # -- comparing -----------------------------------------------------------------------------

    def _compare(self, old: list[TransferRecord], new: list[TransferRecord], report: RebuildReport) -> None:
        """Classify the changes; leave each miss no exporter counted yet to the exporter's next poll."""
        report.missed_before = sum(1 for r in old if r.missed_counted)
        for olds, news in _components(old, new):
            _classify(olds, news, report)
            counted_before = sum(1 for r in olds if r.missed_counted)
            counted_now = [r for r in news if r.missed_counted]
            if counted_before:
                report.missed_kept += len(counted_now)
                if not counted_now:
                    report.no_longer_missed += counted_before
                continue
            for record in counted_now:
                if due_since(record) is None:
                    report.missed_kept += 1  # its webhook came late: counted then, as the exporter did
                    continue
                # Missed by these rules and never counted: the exporter counts it (and alerts) next poll.
                self._store.put_transfer(replace(record, missed_counted=False))
                report.newly_missed += 1


def rules_of(store: Rebuild) -> int | None:
    """The version of the rules the state file was derived by (None: never recorded)."""
    value = store.get_cursor("", _RULES_CURSOR)
    try:
        return None if value is None else int(value)
    except ValueError:
        return 0  # unreadable: as if derived by rules older than any


def rebuild_if_rules_changed(
    store: Rebuild, settings: RebuildSettings, *, clock: Callable[[], float] = time.time
) -> RebuildReport | None:
    """At start: rebuild a state file derived by rules older than :data:`DERIVATION_RULES`; the report, or
    None when nothing was rebuilt.

    A file that never recorded its rules (new, or from a version before they were recorded) is taken
    to be derived by these: a new one has nothing to rebuild, and an older one's evidence begins at
    its upgrade (its horizon), so a rebuild would carry every transfer as it is. A file derived by
    newer rules (a downgrade) is left as it is.
    """
    rules = rules_of(store)
    if rules is None:
        store.set_cursor("", _RULES_CURSOR, str(DERIVATION_RULES))
        return None
    if rules >= DERIVATION_RULES:
        return None
    return Rebuilder(store, settings, clock=clock).run()


def report_summary(report: RebuildReport) -> dict[str, Any]:
    """The numbers a log line about a rebuild carries."""
    return {
        "webhooks": report.webhooks_replayed,
        "history_records": report.history_records_replayed,
        "not_derivable": report.not_derivable,
        "carried": report.carried,
        "transfers_before": report.transfers_before,
        "transfers_after": report.transfers_after,
        "changed": report.changed,
        "merged": report.merged,
        "split": report.split,
        "new": report.new,
        "removed": report.removed,
        "missed_before": report.missed_before,
        "missed_kept": report.missed_kept,
        "no_longer_missed": report.no_longer_missed,
        "newly_missed": report.newly_missed,
        "balances_changed": report.balances_changed,
    }


def _balance_key(b: ZerohashBalance) -> tuple[str, str, str, str, str]:
    return (b.participant_code, b.account_group, b.account_label, b.account_type, b.asset)


def _inbox_rows(store: Rebuild, last_seq: int) -> Iterator[InboxDelivery]:
    seq = 0
    while seq < last_seq:
        rows = store.inbox_after(seq, READ_BATCH, headers=False)
        if not rows:
            return
        for row in rows:
            if row.seq > last_seq:
                return
            yield row
        seq = rows[-1].seq


def _feeds(store: Rebuild) -> Iterator[HistoryFeed]:
    seq = 0
    while rows := store.history_feeds_after(seq, READ_BATCH):
        yield from rows
        seq = rows[-1].seq


def _records(store: Rebuild) -> Iterator[HistoryEvidence]:
    seq = 0
    while rows := store.history_after(seq, READ_BATCH):
        yield from rows
        seq = rows[-1].seq


Identity = tuple[str, str, str, Decimal]


def _identity(record: TransferRecord) -> Identity:
    """What look-alikes share: a change to one record may change what its look-alikes' records do."""
    return (record.account, record.kind, asset_of(record.ticker), record.amount)


@dataclass
class _Kept:
    """A history record being replayed: as stored, parsed, and the identity of its transfer."""

    evidence: HistoryEvidence
    raw: dict[str, Any]
    identity: Identity | None = None


class _HistoryReplay:
    """Feeds the history records to the lifecycle again, feed by feed, as the polls fed them.

    A record is fed at the feed that first read it. A poll also fed every record it read again, and
    that changes nothing unless something changed a record of that transfer (or of a look-alike)
    since: so a record is fed again at a later feed that read it (``last_feed``) only when its
    transfer's identity is marked (:meth:`touched`), which is what makes the replay end where the
    polls did without reading every poll's every record.
    """

    def __init__(
        self,
        store: Rebuild,
        book: TransferBook,
        joins_carried: Callable[[TransferObservation], bool],
        watches: Mapping[str, MissedWebhookWatch],
        report: RebuildReport,
    ) -> None:
        self._store = store
        self._book = book
        self._joins_carried = joins_carried
        self.watches = watches
        self._report = report
        self._records = _records(store)
        self._next: HistoryEvidence | None = next(self._records, None)
        self._alive: dict[str, dict[int, _Kept]] = {}
        self._dirty: set[Identity] = set()
        self._cursors: dict[str, HistoryCursor] = {}

    def touched(self, update: TransferUpdate) -> None:
        """Mark the transfers an applied update wrote: the next feed that reads them feeds them again."""
        if update.transition.changed or update.others:
            for record in (update.transition.record, *update.others):
                self._dirty.add(_identity(record))

    def feed(self, feed: HistoryFeed) -> int:
        """Replay one feed (or a poll's check for missed webhooks); how many records it read for the first time."""
        watch = self.watches.get(feed.account)
        if feed.evaluation:
            if watch is not None:
                watch.evaluate()
            return 0
        fresh: list[_Kept] = []
        while self._next is not None and self._next.first_feed <= feed.seq:
            evidence, self._next = self._next, next(self._records, None)
            try:
                raw = json.loads(evidence.record)
            except ValueError:
                raw = None
            if not isinstance(raw, dict):
                self._report.not_derivable += 1
                continue
            kept = _Kept(evidence, raw)
            if evidence.first_feed == feed.seq:
                fresh.append(kept)
            else:  # its first feed is past the retention: it was read before the evidence kept begins
                self._alive.setdefault(evidence.account, {})[evidence.seq] = kept
        alive = self._alive.setdefault(feed.account, {})
        again = [k for k in alive.values() if k.evidence.last_feed >= feed.seq and k.identity in self._dirty]
        self._dirty.difference_update(k.identity for k in again)
        batch = sorted([*fresh, *again], key=_read_order)
        observations: list[TransferObservation] = []
        fed: list[_Kept] = []
        for kept in batch:
            found, skipped = history_observations(feed.account, [kept.raw], feed.at)
            if skipped and kept in fresh:
                self._report.not_derivable += 1
            for obs in found:
                kept.identity = (obs.account, obs.kind, obs.asset, obs.amount)
                if not self._joins_carried(obs):
                    observations.append(obs)
                    fed.append(kept)
        cursor = None if feed.baseline else self._cursor(feed)
        updates, self._cursors[feed.account] = stage_history(self._book, observations, cursor, feed.at)
        if watch is not None:
            watch.track(updates)
        for update in updates:
            self._book.apply(update)
            self.touched(update)
        for kept in fresh:
            alive[kept.evidence.seq] = kept
        for seq in [seq for seq, kept in alive.items() if kept.evidence.last_feed <= feed.seq]:
            del alive[seq]
        self._report.history_records_replayed += len(fresh)
        self._report.history_feeds_replayed += 1
        return len(fresh)

    def _cursor(self, feed: HistoryFeed) -> HistoryCursor:
        """The history cursor before a feed that was not the baseline: the one replay built, or (the
        baseline past the evidence kept) the stored one's baseline, with nothing read since."""
        cursor = self._cursors.get(feed.account)
        if cursor is not None:
            return cursor
        stored = HistoryCursor.decode(self._store.get_cursor(feed.account, CURSOR_NAME))
        if stored is None:
            return HistoryCursor(None, feed.at)
        return HistoryCursor(None, stored.baseline_at, stored.baseline_newest)


def _read_order(kept: _Kept) -> tuple[int, float, int]:
    """Roughly the order a poll reads records in: by method, newest ``createdAt`` first, then as stored."""
    raw = kept.raw
    method = raw.get("method")
    created = created_at_of(raw.get("createdAt"))
    return (method if isinstance(method, int) else 0, -(created or 0.0), kept.evidence.seq)


def _merged(deliveries: Iterator[InboxDelivery], polls: Iterator[HistoryFeed]) -> Iterator[InboxDelivery | HistoryFeed]:
    """Both kinds of evidence in the order received; a delivery first when a poll ran at the same time."""
    delivery = next(deliveries, None)
    poll = next(polls, None)
    while delivery is not None and poll is not None:
        if delivery.received_at <= poll.at:
            yield delivery
            delivery = next(deliveries, None)
        else:
            yield poll
            poll = next(polls, None)
    if delivery is not None:
        yield delivery
        yield from deliveries
    if poll is not None:
        yield poll
        yield from polls


def _ids_agree(a: TransferRecord, b: TransferRecord) -> bool:
    for name in ("transaction_id", "unique_id"):
        x, y = a.details.get(name), b.details.get(name)
        if x and y and x != y:
            return False
    return True


def _created_slot(record: TransferRecord) -> float | None:
    """The :data:`CREATED_AT_TOLERANCE`-wide slot of the ``createdAt`` the record was reported with (None: none)."""
    created = record.details.get("created_at", record.created_at)
    if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
        return None
    return float(math.floor(created / CREATED_AT_TOLERANCE))


def _address(record: TransferRecord) -> str:
    address = record.details.get("address")
    return address.strip().casefold() if isinstance(address, str) else ""


def _components(
    old: Sequence[TransferRecord], new: Sequence[TransferRecord]
) -> Iterator[tuple[list[TransferRecord], list[TransferRecord]]]:
    """Groups of old and new records that are one another's transfers (module docstring)."""
    records = [*old, *new]
    parent = list(range(len(records)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    # Look-alikes share account, kind, asset and amount, a createdAt within the tolerance and an address,
    # each where both have one: new records are indexed by all of that, so each old one is compared with
    # its neighbours only (many deposits share an amount).
    slots: dict[tuple[Identity, float | None], dict[str, list[int]]] = {}
    for j in range(len(old), len(records)):
        key = (_identity(records[j]), _created_slot(records[j]))
        slots.setdefault(key, {}).setdefault(_address(records[j]), []).append(j)
    for i, record in enumerate(old):
        identity, slot, address = _identity(record), _created_slot(record), _address(record)
        if slot is None:
            near_slots = [by_address for (ident, _), by_address in slots.items() if ident == identity]
        else:
            near_slots = [slots.get((identity, s), {}) for s in (None, slot - 1, slot, slot + 1)]
        for by_address in near_slots:
            near = by_address.values() if not address else (by_address.get(address, ()), by_address.get("", ()))
            for j in (j for js in near for j in js):
                if look_alike(record, records[j]) and _ids_agree(record, records[j]):
                    parent[root(i)] = root(j)
    groups: dict[int, tuple[list[TransferRecord], list[TransferRecord]]] = {}
    for i, record in enumerate(records):
        olds, news = groups.setdefault(root(i), ([], []))
        (olds if i < len(old) else news).append(record)
    yield from groups.values()


def _classify(olds: list[TransferRecord], news: list[TransferRecord], report: RebuildReport) -> None:
    if not olds:
        report.new += len(news)
    elif not news:
        report.removed += len(olds)
    elif len(olds) == 1 and len(news) == 1:
        before, after = olds[0], news[0]
        if (before.status, before.final, before.outcome) == (after.status, after.final, after.outcome):
            report.unchanged += 1
            return
        report.changed += 1
        if after.final and not before.final:
            report.newly_final += 1
        elif before.final and not after.final:
            report.no_longer_final += 1
        elif before.final and after.final and before.outcome != after.outcome:
            report.outcome_changed += 1
    elif len(news) == 1:
        report.merged += 1
        report.merged_from += len(olds)
    elif len(olds) == 1:
        report.split += 1
        report.split_into += len(news)
    else:
        report.regrouped += 1


def settings_from_config(config: Config) -> RebuildSettings:
    """The :class:`RebuildSettings` of a loaded config."""
    accounts = tuple(a.name for a in config.whitebit)
    webhooks = {
        a.name: WebhookWatch(a.reconcile_grace, max(a.reconcile_grace, a.webhook_retry_window))
        for a in config.whitebit
        if a.webhook is not None
    }
    return RebuildSettings(accounts, webhooks, zerohash=config.zerohash is not None)


def horizon_text(horizon: float | None) -> str:
    """The horizon for a person: an ISO time, or that there is none."""
    if horizon is None or not math.isfinite(horizon):
        return "none (all evidence is kept)"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(horizon))


def report_lines(report: RebuildReport, path: str) -> Iterable[str]:
    """The report as a table for a person."""
    yield f"state rebuild of {path}" + (" (dry run: nothing was written)" if report.dry_run else "")
    rows = [
        (
            "evidence replayed",
            f"{report.webhooks_replayed} webhook deliveries, {report.history_records_replayed} history records"
            f" (read in {report.history_feeds_replayed} polls)",
        ),
        ("not derivable", f"{report.not_derivable} (inbox rows marked with the reason)"),
        (
            "evidence horizon",
            f"{horizon_text(report.horizon)}; {report.carried} transfers created before it kept as they were,"
            f" {report.joined_carried} pieces of evidence joined them",
        ),
        ("transfers", f"{report.transfers_before} before, {report.transfers_after} after"),
        ("  unchanged", str(report.unchanged)),
        (
            "  changed",
            f"{report.changed} ({report.newly_final} newly final, {report.no_longer_final} no longer final,"
            f" {report.outcome_changed} with another outcome)",
        ),
        ("  merged", f"{report.merged} (from {report.merged_from} records)"),
        ("  split", f"{report.split} (into {report.split_into} records)"),
        ("  regrouped", str(report.regrouped)),
        ("  new", str(report.new)),
        ("  removed", str(report.removed)),
        (
            "missed webhooks",
            f"{report.missed_before} counted before; {report.missed_kept} counted now,"
            f" {report.no_longer_missed} no longer missed, {report.newly_missed} newly missed (counted at the"
            f" exporter's next history poll), {report.overdue} overdue",
        ),
        (
            "zero hash balances",
            f"{report.balances_before} before, {report.balances_after} after, {report.balances_changed} changed",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        yield f"{name.ljust(width)}  {value}"
