"""History reconciliation: read ``/api/v4/main-account/history`` and catch every missed webhook.

One :class:`HistoryPoll` per account with API credentials runs as the supervised source
``rest:history:<account>`` every ``poll.history`` seconds (health ``rest:history``; its failures are
reported and logged as the balance polls' are, see "Failures" in :mod:`exporter.whitebit.pollers`). Each poll feeds
every record it reads to the transfer lifecycle (:class:`~exporter.whitebit.transfers.TransferBook`) as a
``"history"`` observation, so statuses that have no webhook (5, 21, 22, Travel Rule 27 and 28) show
in ``whitebit_transfers_in_flight`` from history alone, and then decides which transfers' webhooks
are missing.

**What a poll reads.** History has no date filter and comes newest first, ordered by ``createdAt``.
Every request names its ``transactionMethod``, ``limit`` and ``offset`` (the previous docs list all
three as required), so deposits (1) and withdrawals (2) are read as two lists. A list is paged from
offset 0 with ``limit`` 100 (the previous docs' maximum; the current docs' 500 is unconfirmed) and
``offset + limit`` always below 10,000 (the docs' error text; their table says "at most"), so one
query reaches 9,999 records (docs/protocol.md#deposit-and-withdrawal-history). Each poll reads

- each list down to the *cursor* minus :data:`CURSOR_OVERLAP` seconds: the cursor is the newest
  ``createdAt`` any poll has read, persisted in the state file. Everything newer is new; the overlap
  re-reads the last few minutes, which costs nothing (feeding a record twice changes nothing) and
  covers records sharing the newest second and records that appear with a slightly older
  ``createdAt``. Pages cannot skip a record: new records are only ever inserted at the top, which
  pushes older ones *down* into the next page (read twice), never up past it. More than 9,999 new
  records of one method between two polls are logged as a gap.
- when a transfer still in flight lies deeper than that, every record of that method still in
  flight, at any depth, with the ``status`` filter (the codes that are not final,
  :data:`IN_FLIGHT_STATUSES`): a record changes status without changing position, and this one
  query (one page, as long as fewer than 100 are in flight) serves every such transfer within the
  200 requests / 10 s budget that all accounts share. A quiet account costs two requests per poll.
- a transfer history had shown in flight, deeper than the new records, that the in-flight query no
  longer holds has moved on to a final status: it is *looked up* by its address (and memo), down to
  its ``createdAt`` (:data:`MAX_LOOKUPS` per poll, least recently looked up first). The endpoint
  has no ``transactionId`` filter and deposits carry no ``uniqueId``, so the address is the
  narrowest filter both kinds have. Should WhiteBIT refuse the ``status`` filter, every deep
  transfer is looked up this way.

So an account with more than 10,000 records still gets its baseline and its reconciliation: what
matters is always within reach of a filtered query.

**The first poll** (no cursor in the state file, or one that cannot be read) is the *baseline*: it
reads the newest page of each method and every record still in flight (the ``status`` filter; as
deep as the cap allows if WhiteBIT refuses it), feeds only the transfers still in flight (the final ones happened
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
``uniqueId``, else by what both views carry and a transfer never changes: the plain asset (a webhook's
``USDT_ETH`` is history's ``USDT``), the amount as a Decimal, address, memo, ``createdAt`` within a
tolerance, and for deposits the transaction hash. A transaction hash alone is never a key: two
records with one hash (one on-chain transaction paying two addresses) are two transfers, and two
records alike in all of that are still two transfers when their ``transactionId`` differs.

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
record stays unmatched (a warning says so). Nor is a record counted while a look-alike (alike in
every field both views carry) that was counted missed has received a webhook since: that webhook
may be this record's, and the one miss among the two was counted already. Look-alikes' webhooks
are shared out by the lifecycle (``adopt`` in :mod:`exporter.whitebit.transfers`), so that two
outputs of one transaction to one address are not reported missed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.health import HealthRegistry
from exporter.core.metrics import WHITEBIT_WEBHOOKS_MISSED, WHITEBIT_WEBHOOKS_OVERDUE, LabelValues
from exporter.core.state import StateError, TransferKind, TransferRecord
from exporter.core.storage import TransferStorage
from exporter.whitebit.pollers import Poller, build_poller
from exporter.whitebit.rest import MAIN_HISTORY, ResponseError, RestClient, ValidationError
from exporter.whitebit.transfers import (
    DEPOSIT,
    FINAL_LEVEL,
    FINAL_OUTCOMES,
    PENDING_LEVEL,
    STATUS_NAMES,
    TRANSFER_KINDS,
    WITHDRAW,
    ObservationError,
    TransferBook,
    TransferObservation,
    TransferUpdate,
    asset_of,
    created_at_of,
    look_alike,
    observation_from_history,
    webhook_level,
)

log = logging.getLogger(__name__)

#: Records per page: the previous docs' maximum (the current docs' 500 is unconfirmed,
#: docs/protocol.md#deposit-and-withdrawal-history).
PAGE_LIMIT = 100
#: ``offset + limit`` must stay below this (the docs' table says "<= 10000", their error text "less
#: than 10000": the stricter, docs/protocol.md#deposit-and-withdrawal-history).
MAX_OFFSET = 10_000
#: Seconds of history re-read below the cursor on every poll (see the module docstring).
CURSOR_OVERLAP = 300.0
#: Lost transfers (see the module docstring) a poll looks up at most.
MAX_LOOKUPS = 5
#: The ``transactionMethod`` of each kind; every request names one (the previous docs require it).
TRANSACTION_METHODS: tuple[tuple[TransferKind, int], ...] = ((DEPOSIT, 1), (WITHDRAW, 2))
METHOD_OF_KIND: dict[TransferKind, int] = dict(TRANSACTION_METHODS)
#: The status codes of each kind that are not final, for the ``status`` filter.
IN_FLIGHT_STATUSES: dict[TransferKind, tuple[int, ...]] = {
    kind: tuple(sorted(code for code in STATUS_NAMES[kind] if code not in FINAL_OUTCOMES[kind]))
    for kind in TRANSFER_KINDS
}


def _described(record: TransferRecord) -> dict[str, Any]:
    """What a log line says about a transfer (no secrets: ids and amounts only)."""
    return {
        "account": record.account,
        "kind": record.kind,
        "ticker": record.ticker,
        "amount": format(record.amount, "f"),
        "status": record.status,
        "transaction_id": record.details.get("transaction_id"),
    }


def _below(floor: float, oldest: float) -> bool:
    """Whether a read that has reached back to ``oldest`` went below ``floor``."""
    return oldest < floor


def page_limit_at(offset: int) -> int:
    """The ``limit`` of the page at ``offset``: :data:`PAGE_LIMIT`, less near the cap (0: no page)."""
    return max(0, min(PAGE_LIMIT, MAX_OFFSET - 1 - offset))


#: The state-file cursor name.
CURSOR_NAME = "history"
#: How far apart (s) a webhook-only record may be created from a history record to count as its
#: loose match (see the module docstring).
LOOSE_MATCH_WINDOW = 86400.0


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
    """``whitebit_webhooks_missed_total{account,kind}`` and ``whitebit_webhooks_overdue{account,kind}``,
    from 0 for every account with a webhook to miss.

    ::

        whitebit_webhooks_missed_total{account="main",kind="deposit"} 1.0
        whitebit_webhooks_overdue{account="main",kind="withdraw"} 2.0

    The overdue gauge counts, at scrape time, the transfers each account's poll holds as overdue
    (:meth:`track_overdue`), which a webhook removes the moment it arrives.
    """

    def __init__(self, accounts: Iterable[str]) -> None:
        self._counts: dict[LabelValues, float] = {(account, kind): 0 for account in accounts for kind in TRANSFER_KINDS}
        self._overdue: dict[str, Mapping[tuple[str, str], float]] = {}

    def bump(self, account: str, kind: str) -> None:
        """Count one transfer whose webhook was missed."""
        self._counts[(account, kind)] += 1

    def track_overdue(self, account: str, overdue: Mapping[tuple[str, str], float]) -> None:
        """Render ``overdue`` ((kind, key) -> when it fell due) as the account's overdue gauge."""
        self._overdue[account] = overdue

    def collect(self) -> Iterator[Metric]:
        yield WHITEBIT_WEBHOOKS_MISSED.render(self._counts)
        overdue: dict[LabelValues, float] = dict.fromkeys(self._counts, 0.0)
        for account, entries in self._overdue.items():
            for kind, _ in entries:
                overdue[(account, kind)] = overdue.get((account, kind), 0.0) + 1
        yield WHITEBIT_WEBHOOKS_OVERDUE.render(overdue)


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
    return created_at_of(record.get("createdAt"))


# --- feeding the lifecycle (the poll's and a rebuild's) ------------------------------------------


def history_observations(
    account: str, records: Iterable[Mapping[str, Any]], observed_at: float
) -> tuple[list[TransferObservation], list[str]]:
    """(the observations of ``records``, read at ``observed_at``; why each record that is none was skipped)."""
    observations: list[TransferObservation] = []
    skipped: list[str] = []
    for raw in records:
        try:
            observations.append(observation_from_history(account, raw, observed_at))
        except ObservationError as exc:
            skipped.append(str(exc))
    return observations, skipped


def stage_history(
    book: TransferBook, observations: Sequence[TransferObservation], cursor: HistoryCursor | None, now: float
) -> tuple[list[TransferUpdate], HistoryCursor]:
    """Stage one poll's observations (inside a state transaction): (the updates, the cursor after the poll).

    ``cursor`` None makes it the baseline. A final record is skipped when it is the baseline's, or
    when an earlier poll read it (:meth:`HistoryCursor.old`) and no record of it is kept: final
    before the exporter watched, or read and forgotten (purged after its retention), it is old news,
    neither an outcome nor a miss.
    """
    baseline = cursor is None
    newest = cursor.newest if cursor is not None else None
    for obs in observations:
        if obs.created_at is not None and (newest is None or obs.created_at > newest):
            newest = obs.created_at
    updates: list[TransferUpdate] = []
    for obs in observations:
        if obs.status in FINAL_OUTCOMES[obs.kind] and (
            cursor is None or (cursor.old(obs.created_at) and book.find(obs) is None)
        ):
            continue
        updates.append(book.stage(obs, baseline=baseline))
    if cursor is None:
        cursor = HistoryCursor(newest, now, newest)
    return updates, replace(cursor, newest=newest)


def history_evidence(records: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(digest, JSON text) of each distinct record, as the state file keeps it (``record_history``).

    The text has sorted keys, so that a record read again with its fields in another order is the
    same evidence; ASCII, so that any string the API sent can be stored.
    """
    kept: dict[str, str] = {}
    for raw in records:
        text = json.dumps(raw, sort_keys=True, separators=(",", ":"))
        kept.setdefault(hashlib.sha256(text.encode()).hexdigest()[:32], text)
    return list(kept.items())


# --- the poll ---------------------------------------------------------------------------------


class HistoryPoll:
    """One reconciliation poll of one account (see the module docstring)."""

    kind = "history"

    def __init__(
        self,
        client: RestClient,
        book: TransferBook,
        store: TransferStorage,
        *,
        grace: float,
        missed: MissedWebhooks | None,
        retry_window: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self.account = client.account
        self._book = book
        self._store = store
        self._clock = clock
        self._status_filter_refused = False
        self._looked_up: dict[tuple[str, str], float] = {}  # (kind, key) -> when last looked up
        #: None: the account has no webhook configured, so nothing is ever counted as missed.
        self._watch = (
            None
            if missed is None
            else MissedWebhookWatch(
                self.account, book, store, grace=grace, retry_window=retry_window, missed=missed, clock=clock
            )
        )

    async def __call__(self) -> None:
        cursor = HistoryCursor.decode(self._store.get_cursor(self.account, CURSOR_NAME))
        try:
            if cursor is None:
                self._feed(await self._read_baseline(), None)
                return
            reached: dict[TransferKind, float] = {}
            records = await self._read_since(cursor, reached)
            touched = self._feed(records, cursor)
            lost = self._lost(reached, touched)
            if lost:
                cursor = HistoryCursor.decode(self._store.get_cursor(self.account, CURSOR_NAME)) or cursor
                self._feed(await self._look_up(lost), cursor)
        finally:
            self._evaluate()

    # -- reading -------------------------------------------------------------------------------

    async def _page(self, method: int, offset: int, **filters: Any) -> tuple[list[Mapping[str, Any]], bool]:
        """One page of ``method``'s records at ``offset``: (records, True when it was the last one)."""
        limit = page_limit_at(offset)
        params = {"transactionMethod": method, "limit": limit, "offset": offset, **filters}
        page, total = parse_history_page(await self._client.post(MAIN_HISTORY, params))
        last = len(page) < limit or (total is not None and offset + len(page) >= total)
        return page, last or page_limit_at(offset + limit) < 1

    async def _pages(
        self, method: int, until: Callable[[float], bool] | None = None, **filters: Any
    ) -> tuple[list[Mapping[str, Any]], float, bool]:
        """Pages of ``method`` from offset 0 until the last, or until ``until(oldest createdAt)`` says
        the page reached far enough: (records, oldest ``createdAt`` read, True when cut by the cap)."""
        records: list[Mapping[str, Any]] = []
        oldest = math.inf
        offset = 0
        while True:
            page, last = await self._page(method, offset, **filters)
            records.extend(page)
            oldest = min([oldest, *(t for t in map(_created_at, page) if t is not None)])
            if last:
                capped = len(page) == page_limit_at(offset) and page_limit_at(offset + len(page)) < 1
                return records, (-math.inf if not capped else oldest), capped
            if until is not None and until(oldest):
                return records, oldest, False
            offset += len(page)

    async def _read_baseline(self) -> list[Mapping[str, Any]]:
        """The newest records of each method, and every record still in flight at any depth."""
        records: list[Mapping[str, Any]] = []
        for kind, method in TRANSACTION_METHODS:
            head, _ = await self._page(method, 0)
            records.extend(head)
            records.extend(await self._in_flight_records(kind, method, baseline=True))
        return records

    async def _read_since(self, cursor: HistoryCursor, reached: dict[TransferKind, float]) -> list[Mapping[str, Any]]:
        """Each method's records down to the cursor (less the overlap), and, where a transfer still in
        flight lies deeper, every record still in flight; ``reached`` gets how far down each read."""
        must_reach = None if cursor.newest is None else cursor.newest - CURSOR_OVERLAP
        records: list[Mapping[str, Any]] = []
        for kind, method in TRANSACTION_METHODS:
            # No newest yet (history was empty at the baseline): everything is new.
            new, oldest, capped = await self._pages(method, None if must_reach is None else partial(_below, must_reach))
            records.extend(new)
            if capped and (must_reach is None or oldest >= must_reach):
                log.warning(
                    "more than 9999 history records of one method since the last poll; older new records were not read",
                    extra={"account": self.account, "transaction_method": method},
                )
            reached[kind] = oldest - CURSOR_OVERLAP
            if any(r.created_at < reached[kind] for r in self._in_flight(kind)):
                records.extend(await self._in_flight_records(kind, method, baseline=False))
        return records

    def _in_flight(self, kind: TransferKind) -> list[TransferRecord]:
        return [r for r in self._book.in_flight() if r.account == self.account and r.kind == kind]

    async def _in_flight_records(self, kind: TransferKind, method: int, *, baseline: bool) -> list[Mapping[str, Any]]:
        """Every record of ``method`` whose status is not final, filtered by ``status`` at any depth.

        Should WhiteBIT refuse the filter, the baseline reads as deep as the cap allows instead (and
        later polls rely on :meth:`_look_up`); the refusal is logged once.
        """
        if self._status_filter_refused:
            return (await self._pages(method))[0] if baseline else []
        try:
            records, _, capped = await self._pages(method, status=list(IN_FLIGHT_STATUSES[kind]))
        except ValidationError as exc:
            self._status_filter_refused = True
            log.warning(
                "history refused the status filter; transfers in flight deeper than the newest records are"
                " looked up by address instead",
                extra={"account": self.account, "error": str(exc)},
            )
            return (await self._pages(method))[0] if baseline else []
        if capped:
            log.warning(
                "more than 9999 history records in flight; the oldest were not read",
                extra={"account": self.account, "transaction_method": method},
            )
        return records

    def _lost(self, reached: Mapping[TransferKind, float], touched: set[tuple[str, str]]) -> list[TransferRecord]:
        """Transfers history showed in flight, deeper than this poll's new records, that the in-flight
        read no longer holds: their status moved on to a final one. The least recently looked up first,
        at most :data:`MAX_LOOKUPS` per poll."""
        lost = [
            record
            for kind, floor in reached.items()
            for record in self._in_flight(kind)
            if record.history_seen and record.created_at < floor and (record.kind, record.key) not in touched
        ]
        lost.sort(key=lambda r: self._looked_up.get((r.kind, r.key), -math.inf))
        return lost[:MAX_LOOKUPS]

    async def _look_up(self, lost: list[TransferRecord]) -> list[Mapping[str, Any]]:
        """The records at each lost transfer's address (and memo), down to its ``createdAt``."""
        records: list[Mapping[str, Any]] = []
        for record in lost:
            self._looked_up[(record.kind, record.key)] = self._clock()
            address = record.details.get("address")
            if not address:
                continue
            filters: dict[str, Any] = {"address": address}
            memo = record.details.get("memo")
            if memo:
                filters["memo"] = memo
            found, _, _ = await self._pages(
                METHOD_OF_KIND[record.kind], partial(_below, record.created_at - CURSOR_OVERLAP), **filters
            )
            records.extend(found)
        return records

    # -- feeding the lifecycle -----------------------------------------------------------------

    def _feed(self, records: list[Mapping[str, Any]], cursor: HistoryCursor | None) -> set[tuple[str, str]]:
        """Stage every record as a history observation and keep the records as evidence; returns
        (kind, key) of the transfers fed."""
        now = self._clock()
        baseline = cursor is None
        observations, skipped = history_observations(self.account, records, now)
        for reason in skipped:
            log.warning("history record skipped", extra={"account": self.account, "reason": reason})
        with self._store.transaction():
            updates, after = stage_history(self._book, observations, cursor, now)
            self._store.record_history(self.account, history_evidence(records), observed_at=now, baseline=baseline)
            self._store.set_cursor(self.account, CURSOR_NAME, after.encode())
        if self._watch is not None:
            self._watch.track(updates)
        for update in updates:
            self._book.apply(update)
        if baseline:
            log.info(
                "history baseline taken; transfers before it are never counted as missed",
                extra={"account": self.account, "records": len(records), "in_flight": len(updates)},
            )
        return {(u.transition.record.kind, u.transition.record.key) for u in updates}

    def _evaluate(self) -> None:
        if self._watch is not None:
            self._watch.evaluate()


class MissedWebhookWatch:
    """One account's transfers awaiting a webhook: when each is overdue, and when it counts as missed.

    Fed the updates of every history feed (:meth:`track`) and asked after every poll
    (:meth:`evaluate`), which also keeps the evaluation as evidence (``record_evaluation``), so that
    a rebuild asks at the same times. ``replaying`` (a rebuild) leaves out the log lines, which were
    logged when it happened, and keeps no evaluation: the rebuild replays the ones kept.
    """

    def __init__(
        self,
        account: str,
        book: TransferBook,
        store: TransferStorage,
        *,
        grace: float,
        retry_window: float | None,
        missed: MissedWebhooks,
        clock: Callable[[], float],
        watching: set[tuple[str, str]] | None = None,
        replaying: bool = False,
    ) -> None:
        self.account = account
        self._book = book
        self._store = store
        self.grace = grace
        #: When an overdue webhook counts as missed; the grace itself unless given (then nothing is overdue).
        self.retry_window = grace if retry_window is None else max(grace, retry_window)
        self._missed = missed
        self._clock = clock
        self._replaying = replaying
        #: (kind, key) of transfers awaiting a webhook; None: read from the state file at the first use.
        self._watch = watching
        self._loose_logged: set[tuple[str, str]] = set()
        #: (kind, key) -> when its webhook fell due, for transfers past the grace but not yet missed.
        self.overdue: dict[tuple[str, str], float] = {}
        missed.track_overdue(account, self.overdue)
        book.add_listener(self._on_record)

    def track(self, updates: Iterable[TransferUpdate]) -> None:
        """Watch each transfer a history feed left awaiting a webhook."""
        watch = self._watch_set()
        for update in updates:
            record = update.transition.record
            if not record.missed_counted and due_since(record) is not None:
                watch.add((record.kind, record.key))

    def _watch_set(self) -> set[tuple[str, str]]:
        if self._watch is None:
            # Rebuilt from the state file once per process, so a restart keeps waiting where it was.
            self._watch = {
                (record.kind, record.key)
                for record in self._store.transfers(self.account)
                if not record.missed_counted and due_since(record) is not None
            }
        return self._watch

    def _on_record(self, record: TransferRecord) -> None:
        """A committed update wrote ``record``: an overdue transfer whose webhook came is no longer overdue."""
        ident = (record.kind, record.key)
        if (
            record.account == self.account
            and ident in self.overdue
            and (record.missed_counted or due_since(record) is None)
        ):
            del self.overdue[ident]

    def evaluate(self) -> None:
        """Count what has waited past the retry window as missed, hold what is past the grace as overdue."""
        now = self._clock()
        watch = self._watch_set()
        counted: list[TransferRecord] = []
        newly_overdue: list[TransferRecord] = []
        try:
            with self._store.transaction():
                for kind, key in sorted(watch):
                    ident = (kind, key)
                    record = self._store.get_transfer(self.account, kind, key)
                    due = None if record is None or record.missed_counted else due_since(record)
                    if record is None or due is None:
                        watch.discard(ident)
                        self.overdue.pop(ident, None)
                        continue
                    if now - due < self.grace or self._loosely_matched(record):
                        self.overdue.pop(ident, None)
                        continue
                    if now - due < self.retry_window:
                        if ident not in self.overdue:
                            newly_overdue.append(record)
                        self.overdue[ident] = due
                        continue
                    counted.append(self._book.mark_missed(record))
                    watch.discard(ident)
                    self.overdue.pop(ident, None)
                if not self._replaying:
                    self._store.record_evaluation(self.account, now)
        except StateError as exc:
            log.warning("missed-webhook check not recorded", extra={"account": self.account, "error": str(exc)})
            return
        for record in counted:
            self._missed.bump(record.account, record.kind)
        if self._replaying:
            return
        for record in newly_overdue:
            log.warning(
                "webhook overdue: history shows a transfer whose webhook has not come within reconcile_grace;"
                " it counts as missed if it has not come within webhook_retry_window",
                extra={**_described(record), "grace_seconds": self.grace, "retry_window_seconds": self.retry_window},
            )
        for record in counted:
            log.warning(
                "webhook missed: history shows a transfer whose webhook did not come within webhook_retry_window",
                extra={**_described(record), "grace_seconds": self.grace, "retry_window_seconds": self.retry_window},
            )

    def _loosely_matched(self, record: TransferRecord) -> bool:
        """True when an unmatched webhook-only record looks like ``record``'s own webhook (logged once)."""
        why = loose_match(record, self._store.transfers(self.account))
        if why is None:
            return False
        ident = (record.kind, record.key)
        if ident not in self._loose_logged and not self._replaying:
            self._loose_logged.add(ident)
            log.warning(
                "a history record matches a webhook only by asset and amount; not counted as missed"
                if why == "unmatched"
                else "a history record's webhook may have joined a look-alike counted missed; not counted",
                extra={
                    "account": self.account,
                    "kind": record.kind,
                    "ticker": record.ticker,
                    "amount": format(record.amount, "f"),
                },
            )
        return True


def loose_match(record: TransferRecord, others: Iterable[TransferRecord]) -> str | None:
    """Why ``record``, due, is not counted missed although no webhook of its own came; None: it may be.

    ``"unmatched"``: a webhook-only record of its account (among ``others``) that history never
    matched, alike in asset and amount, reached the level that fell due: its webhook, most likely.
    ``"recounted"``: a look-alike counted missed has received a webhook since, which may be this
    one's (the two cannot be told apart), and the one miss among the two was counted already.
    """
    due = due_since(record)
    # The level that fell due: a webhook-only record that reached it would have been this one's.
    needed = max((level for level, at in _levels_seen(record) if at == due), default=FINAL_LEVEL)
    for other in others:
        if other.account != record.account or other.kind != record.kind or other.key == record.key:
            continue
        if webhook_level(other) < needed:
            continue
        if (
            other.webhook_seen
            and not other.history_seen
            and asset_of(other.ticker) == asset_of(record.ticker)
            and other.amount == record.amount
            and abs(other.created_at - record.created_at) <= LOOSE_MATCH_WINDOW
        ):
            return "unmatched"
        if other.missed_counted and due_since(other) is None and look_alike(other, record):
            return "recounted"
    return None


# --- wiring -----------------------------------------------------------------------------------


def build_history_poller(
    client: RestClient,
    book: TransferBook,
    store: TransferStorage,
    *,
    health: HealthRegistry,
    interval: float,
    grace: float,
    missed: MissedWebhooks | None,
    retry_window: float | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.time,
) -> Poller:
    """The history poller of one account (``rest:history:<account>``, health ``rest:history``).

    ``missed`` is None for an account without a webhook: its history still feeds the lifecycle,
    but nothing can be missed. A webhook is overdue after ``grace`` and missed after ``retry_window``.
    """
    return build_poller(
        client,
        HistoryPoll.kind,
        interval,
        lambda observed: HistoryPoll(
            observed, book, store, grace=grace, missed=missed, retry_window=retry_window, clock=clock
        ),
        health=health,
        rng=rng,
    )
