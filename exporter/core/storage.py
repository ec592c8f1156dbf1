"""The storage boundary: what each part of the exporter needs of the durable state, as protocols.

:class:`exporter.core.state.StateStore` (one SQLite file, one writer process) implements every
protocol here and holds every SQL statement of the exporter. The receivers, the inbox consumer, the
transfer book, reconciliation and the inspection commands are typed against these protocols, not
against the SQLite class, so a second backend (a server database such as PostgreSQL, for two
replicas behind a load balancer) can be added by implementing them, without touching any of those.
``docs/storage.md`` says what each method promises, and what such a backend must keep.

The protocols are narrow on purpose: each lists the calls of one part, nothing more.

- :class:`Transactions`: the one way to group writes. Nothing may be awaited inside a transaction.
- :class:`DeliveryIntake`: what a receiver commits before its 200.
- :class:`InboxLog`: what the inbox consumer and housekeeping read and write.
- :class:`TransferStorage`: the transfer book's and reconciliation's records and cursors.
- :class:`BalanceStorage`: Zero Hash balances.
- :class:`InboxReader`: the read-only inspection commands.
- :class:`Rebuild`: what ``whitebit-exporter state rebuild`` needs besides the parts it replays.
- :class:`RelayLog`: what the relay owes each target, and where each delivery stands.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from exporter.core.state import (
    DeliveryQuery,
    HistoryEvidence,
    HistoryFeed,
    InboxDelivery,
    RelayAnswer,
    RelayItem,
    TransferKind,
    TransferRecord,
    ZerohashBalance,
)


class Transactions(Protocol):
    """Grouping writes: all of a transaction or none of it is kept, and nothing is awaited inside."""

    def transaction(self) -> AbstractContextManager[None]:
        """A transaction; nested, a savepoint (undone alone when its block raises)."""
        ...

    def run_batch(self, jobs: Sequence[Callable[[], Any]]) -> list[tuple[Any, Exception | None]]:
        """``jobs`` in one transaction, each as if in its own savepoint: ``(value, None)`` or ``(None, exc)``
        per job; raises when nothing could be committed. A job may run twice, the first run leaving no trace."""
        ...


class Cursors(Protocol):
    """Small named values kept per account (positions of pollers, markers, first-watched times)."""

    def get_cursor(self, account: str, name: str) -> str | None:
        """The value, or None."""
        ...

    def set_cursor(self, account: str, name: str, value: str) -> None:
        """Store the value (in the caller's transaction, if any)."""
        ...

    def first_watched(self, account: str, feed: str) -> float:
        """When this state first watched ``feed`` of ``account``: now, the first time it is asked."""
        ...


class DeliveryIntake(Transactions, Cursors, Protocol):
    """What a webhook receiver writes before it answers 200."""

    def add_delivery(self, delivery: InboxDelivery, *, ttl: float = ...) -> int | None:
        """Store the accepted delivery as received; its ``seq`` if new, None if a duplicate (counted on its row).

        ``seq`` values grow in the order rows are committed and are never reused."""
        ...

    def set_verdict(self, seq: int, verdict: str) -> None:
        """Change what row ``seq`` says of its delivery (in the transaction that stored it)."""
        ...

    def raise_nonce(self, account: str, nonce: int) -> bool:
        """Record ``nonce`` if it is above the highest of ``account``; whether it was."""
        ...

    def last_deliveries(self, provider: str) -> dict[str, float]:
        """When each account's newest delivery from ``provider`` was received, kept or purged."""
        ...


class InboxLog(Transactions, Protocol):
    """The inbox as the consumer derives it and housekeeping trims it."""

    def inbox_after(self, seq: int, limit: int, *, headers: bool = True) -> list[InboxDelivery]:
        """Up to ``limit`` rows after ``seq``, in ``seq`` order."""
        ...

    def inbox_cursor(self) -> int:
        """The ``seq`` of the last row whose state has been derived (0 before any)."""
        ...

    def set_inbox_cursor(self, seq: int) -> None:
        """Move the cursor (in the transaction that holds the derived writes)."""
        ...

    def mark_derive_error(self, seq: int, error: str) -> None:
        """Note on row ``seq`` why it could not be derived."""
        ...

    def inbox_backlog(self) -> tuple[int, float | None]:
        """(rows after the cursor, when the oldest of them was received)."""
        ...

    def purge_inbox(self, retention: float, *, limit: int = ...) -> int:
        """Forget at most ``limit`` derived rows past ``retention`` (ids kept through their dedupe window)."""
        ...


class TransferStorage(Transactions, Cursors, Protocol):
    """The deposit and withdrawal records (the transfer book's and reconciliation's)."""

    def get_transfer(self, account: str, kind: str, key: str) -> TransferRecord | None:
        """The record, or None."""
        ...

    def put_transfer(self, record: TransferRecord) -> None:
        """Insert or replace the record with the same (account, kind, key)."""
        ...

    def transfers(self, account: str | None = None, *, open_only: bool = False) -> list[TransferRecord]:
        """Every record (of ``account``; only those not final)."""
        ...

    def transfer_assets(self) -> list[tuple[str, TransferKind, str]]:
        """Every (account, kind, ticker) with a record."""
        ...

    def purge_final_transfers(self, older_than: float) -> int:
        """Delete final records last updated before ``older_than``; how many."""
        ...

    def record_history(
        self, account: str, records: Sequence[tuple[str, str]], *, observed_at: float, baseline: bool
    ) -> int:
        """Keep what a poll fed: one feed, and each record (digest, JSON text) once per distinct digest."""
        ...

    def record_evaluation(self, account: str, at: float) -> None:
        """Keep that a poll checked for missed webhooks at ``at`` (among the feeds)."""
        ...

    def purge_history(self, retention: float, *, limit: int = ...) -> int:
        """Forget at most ``limit`` history records no poll read for ``retention`` seconds."""
        ...


class BalanceStorage(Protocol):
    """Zero Hash balances, newest event per account."""

    def apply_zerohash_balance(self, b: ZerohashBalance) -> bool:
        """Store ``b`` unless a newer event of its account is stored; whether it was."""
        ...

    def zerohash_balances(self) -> list[ZerohashBalance]:
        """Every stored balance."""
        ...


class InboxReader(Protocol):
    """What the inspection commands read (``whitebit-exporter inbox``)."""

    def find_deliveries(self, query: DeliveryQuery) -> list[InboxDelivery]:
        """Rows matching every filter of ``query``, newest first."""
        ...

    def get_delivery(self, seq: int) -> InboxDelivery | None:
        """Row ``seq``, or None."""
        ...

    def deliveries_with_id(self, delivery_id: str) -> list[InboxDelivery]:
        """The rows with that delivery id."""
        ...

    def transfers_with_key(self, key: str) -> list[TransferRecord]:
        """Every record stored under ``key``."""
        ...

    def inbox_cursor(self) -> int:
        """As :meth:`InboxLog.inbox_cursor`."""
        ...


class Rebuild(InboxLog, TransferStorage, BalanceStorage, Protocol):
    """What a rebuild reads and resets, besides the calls of the parts it replays."""

    def history_feeds_after(self, seq: int, limit: int) -> list[HistoryFeed]:
        """Kept history feeds after ``seq``, in the order fed."""
        ...

    def history_after(self, seq: int, limit: int) -> list[HistoryEvidence]:
        """Kept history records after ``seq``, in the order stored (that of their first feed)."""
        ...

    def evidence_horizon(self) -> float | None:
        """The time before which the evidence is not all kept (None: all of it is)."""
        ...

    def evidence_counts(self) -> tuple[int, int]:
        """(inbox rows with a body, history records)."""
        ...

    def last_inbox_seq(self) -> int:
        """The newest inbox row's ``seq``."""
        ...

    def reset_derived_state(self, *, keep_transfers_created_before: float | None) -> tuple[int, int]:
        """Delete the derived transfers (those created before the cutoff kept) and balances; counts."""
        ...


class RelayLog(Transactions, Protocol):
    """The deliveries the relay owes each target (the inbox consumer enqueues, one sender per target sends)."""

    def enqueue_relay(self, target: str, rows: Sequence[InboxDelivery], *, at: float) -> None:
        """Owe ``target`` each of ``rows`` (once each, however often enqueued)."""
        ...

    def relay_heads(
        self, target: str, now: float, limit: int, *, skip: Collection[tuple[str, str]] = ...
    ) -> list[RelayItem]:
        """Per (provider, account) not in ``skip``, the oldest delivery owed, when due; each with its inbox row."""
        ...

    def relay_queue_run(self, target: str, provider: str, account: str, now: float, limit: int) -> list[RelayItem]:
        """One queue's oldest deliveries owed, in order, while due, at most ``limit``; each with its inbox row."""
        ...

    def relay_answered(
        self,
        target: str,
        seq: int,
        *,
        at: float,
        delivered: bool,
        status: int | None = None,
        error: str | None = None,
        retry_at: float | None = None,
    ) -> None:
        """One attempt's outcome: delivered, tried again at ``retry_at``, or dead."""
        ...

    def relay_answers(self, target: str, answers: Sequence[RelayAnswer]) -> None:
        """Several attempts' outcomes, in one commit."""
        ...

    def relay_backlog(self, target: str) -> tuple[int, float | None, int]:
        """(owed, when the oldest was enqueued, dead letters)."""
        ...

    def relay_items(self, state: str, target: str | None = None, *, limit: int = ...) -> list[RelayItem]:
        """Deliveries in ``state``, oldest first."""
        ...

    def retry_dead(self, *, target: str | None = None, seq: int | None = None, at: float) -> int:
        """Owe dead letters again; how many."""
        ...


if TYPE_CHECKING:
    from exporter.core.state import StateStore

    def _sqlite_implements_every_protocol(
        store: StateStore,
    ) -> tuple[DeliveryIntake, InboxLog, TransferStorage, BalanceStorage, InboxReader, Rebuild, RelayLog]:
        # Checked by mypy, never run: the SQLite store must keep satisfying each protocol.
        return store, store, store, store, store, store, store
