"""Durable state: everything a restart must not lose, in one SQLite file.

What a restart must not lose (README.md#durable-state) lives here: webhook delivery ids seen (with
an expiry), the highest webhook nonce per account, deposits and withdrawals with their lifecycle
status and what history reconciliation knows about each, history reconciliation cursors and Zero
Hash balances per participant. Prometheus counters are *not* stored; they restart at 0 as
Prometheus expects.

Why synchronous calls on the event loop: the store uses one connection from the asyncio
event-loop thread, and every call is a short indexed read or write. In WAL mode with
``synchronous=NORMAL`` a commit is a ``write()`` into the WAL file without an ``fsync``, so it
takes microseconds (an automatic checkpoint every 64 pages syncs once) and, once it has
returned, survives a crash or SIGKILL of the process (the data is in the OS page cache). That is
exactly the guarantee a webhook receiver needs to commit before it answers 200. Surviving a
power loss or kernel crash needs an ``fsync`` per commit, which is ``durability="power"``
(``synchronous=FULL``). A thread pool would only add ordering problems between concurrent
writers for no gain at these sizes.

The file under faults (README.md#durable-state): the exporter opens it with an exclusive lock on
``<state>.lock`` (one writer per file), refuses it at start when ``PRAGMA quick_check`` finds
damage, and notes what every failed read or write says about it in :class:`StateCondition`
(rendered by :mod:`exporter.core.state_watch`). The WAL is checkpointed every
:data:`WAL_AUTOCHECKPOINT_PAGES` pages (fewer on a small volume) and cut back to that size, and
``<state>.reserve`` holds :data:`RESERVE_BYTES` back, given up when the volume is full so that a
checkpoint can still shrink the WAL.

Amounts are stored as TEXT decimal strings and returned as :class:`decimal.Decimal`, so nothing
is rounded on the way through; times are float unix seconds. Never put a secret in here.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import math
import os
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

#: A migration is either an SQL script or a function given the connection. The runner wraps
#: each one in its own transaction and bumps ``PRAGMA user_version``. A function must not call
#: ``executescript()`` (it commits implicitly and would break that transaction).
Migration = str | Callable[[sqlite3.Connection], None]

TransferKind = Literal["deposit", "withdraw"]
Durability = Literal["process", "power"]

#: Marks the file as ours (``PRAGMA application_id``, "WBEX"), so another program's SQLite
#: database given by mistake is refused instead of having tables added to it.
APPLICATION_ID = 0x57424558

#: Webhook ids must be remembered across restarts for at least 48 h (README.md#durable-state; default 7 days).
MIN_DELIVERY_TTL = 48 * 3600.0
# Cursor-name suffixes (table ``cursors``) of what the freshness of a webhook feed is restored from.
_LAST_DELIVERY = ":last_delivery"
_FIRST_WATCHED = ":first_watched"
DEFAULT_DELIVERY_TTL = 7 * 86400.0
#: The cursor (table ``cursors``, account '') of the last inbox row whose state has been derived.
_INBOX_APPLIED = "inbox:applied"
#: Inbox rows one purge call deletes or empties at most (see :meth:`StateStore.purge_inbox`).
INBOX_PURGE_BATCH = 500
#: The cursor (account '') before which the evidence of derived state is not all kept (see
#: :meth:`StateStore.evidence_horizon`).
_EVIDENCE_HORIZON = "evidence:horizon"

BUSY_TIMEOUT_MS = 5000

# -- keeping the file small and its volume from wedging (README.md#durable-state) ----------------
#: WAL pages after which a commit checkpoints them into the file (``PRAGMA wal_autocheckpoint``).
#: SQLite's default, 1000 pages (~4 MB), is more than a small state volume holds, and a WAL that
#: cannot reach it never shrinks; but each checkpoint syncs the file, so a short one costs intake
#: its throughput (benchmarks/bench_webhooks.py: 64 pages took the verified ratio from 0.24 to 0.20,
#: 512 pages to 0.22-0.23). So the threshold follows the volume: SQLite's default where there is
#: room, fewer pages (down to :data:`WAL_AUTOCHECKPOINT_MIN_PAGES`) so that the WAL never takes more
#: than an eighth of the free space.
WAL_AUTOCHECKPOINT_PAGES = 1000
WAL_AUTOCHECKPOINT_MIN_PAGES = 64
#: A WAL emptied by a checkpoint is cut back to the size of the checkpoint threshold (``PRAGMA
#: journal_size_limit``): not below it, as a WAL cut shorter is only grown again, block by block,
#: before the next checkpoint (benchmarks/bench_webhooks.py measured that cost on the dedupe stage).
#: The WAL stays below this under steady load: the largest autocheckpoint threshold (with 4 KiB
#: pages) plus one batch's commit.
WAL_LIMIT = 5 * 1024 * 1024
#: Bytes kept in ``<state>.reserve``: deleted when a write finds the volume full, so a checkpoint can
#: still move the WAL into the file and shrink it; written again once there is room (twice this).
RESERVE_BYTES = 512 * 1024
#: The page size the thresholds are counted in (SQLite's default, which this store never changes).
_PAGE_BYTES = 4096
#: Kinds of failed reads and writes (``whitebit_exporter_state_errors_total{kind}``), from SQLite's
#: primary result codes (https://www.sqlite.org/rescode.html).
ERROR_KINDS = ("full", "corrupt", "io", "readonly", "busy", "other")
_KIND_OF_CODE = {13: "full", 11: "corrupt", 26: "corrupt", 10: "io", 14: "io", 8: "readonly", 5: "busy", 6: "busy"}

_SCHEMA_V1 = """
CREATE TABLE webhook_deliveries (
    provider    TEXT NOT NULL,
    account     TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    first_seen  REAL NOT NULL,
    expires_at  REAL NOT NULL,
    PRIMARY KEY (provider, account, delivery_id)
) WITHOUT ROWID;
CREATE INDEX webhook_deliveries_by_expiry ON webhook_deliveries (expires_at);

CREATE TABLE nonces (
    account    TEXT PRIMARY KEY,
    highest    INTEGER NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE transfers (
    account                TEXT NOT NULL,
    kind                   TEXT NOT NULL CHECK (kind IN ('deposit', 'withdraw')),
    key                    TEXT NOT NULL,
    status                 INTEGER NOT NULL,
    status_name            TEXT NOT NULL,
    ticker                 TEXT NOT NULL,
    amount                 TEXT NOT NULL,
    created_at             REAL NOT NULL,
    updated_at             REAL NOT NULL,
    final                  INTEGER NOT NULL CHECK (final IN (0, 1)),
    outcome                TEXT,
    webhook_seen           INTEGER NOT NULL CHECK (webhook_seen IN (0, 1)),
    history_seen           INTEGER NOT NULL CHECK (history_seen IN (0, 1)),
    missed_counted         INTEGER NOT NULL CHECK (missed_counted IN (0, 1)),
    confirmations_actual   INTEGER,
    confirmations_required INTEGER,
    details                TEXT NOT NULL,
    PRIMARY KEY (account, kind, key)
);
CREATE INDEX transfers_by_final ON transfers (final, updated_at);

CREATE TABLE cursors (
    account    TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (account, name)
);

CREATE TABLE zerohash_balances (
    participant_code TEXT NOT NULL,
    account_group    TEXT NOT NULL,
    account_label    TEXT NOT NULL,
    account_type     TEXT NOT NULL,
    asset            TEXT NOT NULL,
    balance          TEXT NOT NULL,
    timestamp        REAL NOT NULL,
    run_id           TEXT,
    PRIMARY KEY (participant_code, account_group, account_label, account_type, asset)
);
"""


def _reconciliation_columns_v2(conn: sqlite3.Connection) -> None:
    """Schema v2: history reconciliation's fields of a transfer get columns of their own.

    Schema v1 kept them in the ``details`` JSON: ``webhook_status`` (an int), ``history_levels``
    (``{"1": first seen, "2": first seen}``, 1 the pending level and 2 the final one) and
    ``history_waived`` (an int). Each is moved into its column and removed from ``details``, read
    the way the v1 code read it so that no transfer's missed-webhook outcome changes: a value that
    code ignored (a status that is not an int, a time that is not a number) stays unset, and a
    ``history_waived`` that is there but not an int waives both levels, as it did there. A level
    other than "1" and "2" was never written by any version and is dropped. A row with
    ``webhook_seen`` and no ``webhook_status`` keeps the column empty: nothing recorded how far its
    webhooks went, and the reader, not a made-up status, decides what that means. A row whose
    ``details`` cannot be parsed is left as it is rather than refusing the whole file. This is a
    snapshot of the v1 format, so it uses no helper that may change later.
    """
    conn.execute("ALTER TABLE transfers ADD COLUMN webhook_status INTEGER")
    conn.execute("ALTER TABLE transfers ADD COLUMN history_pending_at REAL")
    conn.execute("ALTER TABLE transfers ADD COLUMN history_final_at REAL")
    conn.execute(
        "ALTER TABLE transfers ADD COLUMN history_waived INTEGER NOT NULL DEFAULT 0 CHECK (history_waived IN (0, 1, 2))"
    )
    moved = ("webhook_status", "history_levels", "history_waived")
    for rowid, text in conn.execute("SELECT rowid, details FROM transfers").fetchall():
        try:
            details = json.loads(text)
        except (TypeError, ValueError):
            continue
        if not isinstance(details, dict) or not any(name in details for name in moved):
            continue
        status = details.pop("webhook_status", None)
        if isinstance(status, bool) or not isinstance(status, int) or not -(2**63) <= status < 2**63:
            status = None
        first_seen: dict[int, float] = {}
        levels = details.pop("history_levels", None)
        if isinstance(levels, dict):
            for name, at in levels.items():
                try:
                    level = int(name)
                except (TypeError, ValueError):
                    continue
                number = isinstance(at, (int, float)) and not isinstance(at, bool) and math.isfinite(at)
                if level in (1, 2) and number:
                    first_seen[level] = min(float(at), first_seen.get(level, math.inf))
        waived = details.pop("history_waived", 0)
        waived = min(max(int(waived), 0), 2) if isinstance(waived, int) else 2
        conn.execute(
            "UPDATE transfers SET webhook_status = ?, history_pending_at = ?, history_final_at = ?,"
            " history_waived = ?, details = ? WHERE rowid = ?",
            (
                status,
                first_seen.get(1),
                first_seen.get(2),
                waived,
                json.dumps(details, sort_keys=True, separators=(",", ":")),
                rowid,
            ),
        )


def _inbox_v3(conn: sqlite3.Connection) -> None:
    """Schema v3: the webhook inbox (one row per accepted delivery, body as received) replaces the
    delivery-id table as the dedupe record.

    The ids remembered by v2 move into the inbox as rows without a body (what was received was not
    kept then), and the inbox cursor is set past them: their state was derived when they arrived.
    ``seq`` is AUTOINCREMENT: after a purge that deleted the newest rows, a new delivery must not reuse
    a seq at or below the cursor, which would pass it over as derived.
    A snapshot of the v3 format: it uses no helper that may change later.
    """
    conn.execute(
        "CREATE TABLE inbox ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " provider TEXT NOT NULL,"
        " account TEXT NOT NULL,"
        " delivery_id TEXT NOT NULL,"
        " method TEXT NOT NULL,"
        " received_at REAL NOT NULL,"
        " expires_at REAL NOT NULL,"
        " status INTEGER NOT NULL,"
        " verdict TEXT NOT NULL,"
        " nonce INTEGER,"
        " headers TEXT,"
        " body BLOB,"
        " duplicates INTEGER NOT NULL DEFAULT 0,"
        " last_duplicate_at REAL,"
        " derive_error TEXT,"
        " UNIQUE (provider, account, delivery_id))"
    )
    conn.execute("CREATE INDEX inbox_by_time ON inbox (received_at)")
    conn.execute(
        "INSERT INTO inbox (provider, account, delivery_id, method, received_at, expires_at, status, verdict)"
        " SELECT provider, account, delivery_id, '', first_seen, expires_at, 200, 'ok' FROM webhook_deliveries"
        " ORDER BY first_seen, provider, account, delivery_id"
    )
    conn.execute("DROP TABLE webhook_deliveries")
    conn.execute(
        "INSERT INTO cursors (account, name, value, updated_at)"
        " SELECT '', 'inbox:applied', CAST(COALESCE(MAX(seq), 0) AS TEXT), 0 FROM inbox"
    )


def _history_records_v4(conn: sqlite3.Connection) -> None:
    """Schema v4: the history the polls read, kept as evidence that ``whitebit-exporter state
    rebuild`` derives transfers from again, together with the inbox.

    ``history_feeds`` has one row per time a poll fed records to the lifecycle (``at``, the poll's
    clock; ``baseline``, whether it was the account's baseline). ``history_records`` keeps each
    distinct record (``digest`` of its content) once: the feed that first read it, the last feed
    that read it and when (``last_seen_at``, what the retention counts from). Nothing was kept of
    the history read before this version, so the evidence horizon (cursor ``evidence:horizon``) is
    set to now when transfers exist, and at least past the inbox rows that have no body (their
    content was never kept). A snapshot of the v4 format.
    """
    conn.execute(
        "CREATE TABLE history_feeds ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " account TEXT NOT NULL,"
        " at REAL NOT NULL,"
        " baseline INTEGER NOT NULL CHECK (baseline IN (0, 1)))"
    )
    conn.execute("CREATE INDEX history_feeds_by_time ON history_feeds (at)")
    conn.execute(
        "CREATE TABLE history_records ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " account TEXT NOT NULL,"
        " digest TEXT NOT NULL,"
        " first_feed INTEGER NOT NULL,"
        " last_feed INTEGER NOT NULL,"
        " last_seen_at REAL NOT NULL,"
        " record TEXT NOT NULL,"
        " UNIQUE (account, digest))"
    )
    conn.execute("CREATE INDEX history_records_by_last_seen ON history_records (last_seen_at)")
    conn.execute(
        "INSERT INTO cursors (account, name, value, updated_at)"
        " SELECT '', 'evidence:horizon', CAST(MAX(at) AS TEXT), 0 FROM ("
        " SELECT (julianday('now') - 2440587.5) * 86400.0 AS at WHERE EXISTS (SELECT 1 FROM transfers)"
        " UNION ALL SELECT MAX(received_at) FROM inbox WHERE body IS NULL)"
        " HAVING MAX(at) IS NOT NULL"
    )


def _inbox_dedupe_v5(conn: sqlite3.Connection) -> None:
    """Schema v5: a delivery's dedupe lookup goes by a 64-bit digest in ``inbox_ids``, written when its
    state is derived, instead of a unique index written before its 200.

    The unique index on (provider, account, delivery id) put each new delivery's random id at a random
    place of a large index, so every commit before the 200s wrote about one index page per delivery
    (benchmarks/bench_webhooks.py: the inbox row alone went from 0.42 to 0.55 of a bare handler
    without it). Now the inbox row carries ``digest`` (BLAKE2b-64 of the three ids, signed, see
    :func:`delivery_digest`); ``inbox_ids`` (digest, seq) indexes the rows whose state has been
    derived, written by the consumer's transaction, and the store remembers the digests of the rows
    not derived yet. SQLite cannot drop a constraint, so the table is built again, its AUTOINCREMENT
    sequence carried over. A snapshot of the v5 format: the digest is spelled out here.
    """

    def digest(provider: str, account: str, delivery_id: str) -> int:
        text = f"{provider}\x1f{account}\x1f{delivery_id}".encode("utf-8", "surrogatepass")
        return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)

    conn.create_function("inbox_v5_digest", 3, digest, deterministic=True)
    columns = (
        "seq, provider, account, delivery_id, method, received_at, expires_at, status, verdict, nonce, headers, body,"
        " duplicates, last_duplicate_at, derive_error"
    )
    conn.execute(
        "CREATE TABLE inbox_v5 ("
        " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
        " provider TEXT NOT NULL,"
        " account TEXT NOT NULL,"
        " delivery_id TEXT NOT NULL,"
        " method TEXT NOT NULL,"
        " received_at REAL NOT NULL,"
        " expires_at REAL NOT NULL,"
        " status INTEGER NOT NULL,"
        " verdict TEXT NOT NULL,"
        " nonce INTEGER,"
        " headers TEXT,"
        " body BLOB,"
        " duplicates INTEGER NOT NULL DEFAULT 0,"
        " last_duplicate_at REAL,"
        " derive_error TEXT,"
        " digest INTEGER NOT NULL)"
    )
    conn.execute(
        f"INSERT INTO inbox_v5 ({columns}, digest)"
        f" SELECT {columns}, inbox_v5_digest(provider, account, delivery_id) FROM inbox ORDER BY seq"
    )
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'inbox'").fetchone()
    conn.execute("DROP TABLE inbox")
    conn.execute("ALTER TABLE inbox_v5 RENAME TO inbox")
    # The highest seq ever handed out, also one whose row a purge deleted, stays the floor of new ones.
    conn.execute("DELETE FROM sqlite_sequence WHERE name IN ('inbox', 'inbox_v5')")
    conn.execute(
        "INSERT INTO sqlite_sequence (name, seq) SELECT 'inbox', MAX(COALESCE(MAX(seq), 0), ?) FROM inbox",
        (0 if row is None else int(row[0]),),
    )
    conn.execute("CREATE INDEX inbox_by_time ON inbox (received_at)")
    conn.execute(
        "CREATE TABLE inbox_ids (digest INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (digest, seq))"
        " WITHOUT ROWID"
    )
    conn.execute(
        "INSERT INTO inbox_ids (digest, seq) SELECT digest, seq FROM inbox WHERE seq <= COALESCE("
        "(SELECT CAST(value AS INTEGER) FROM cursors WHERE account = '' AND name = 'inbox:applied'), 0)"
    )
    # A poll's check for missed webhooks is kept among its feeds, so that a rebuild checks at the same times.
    conn.execute(
        "ALTER TABLE history_feeds ADD COLUMN evaluation INTEGER NOT NULL DEFAULT 0 CHECK (evaluation IN (0, 1))"
    )


def _relay_v6(conn: sqlite3.Connection) -> None:
    """Schema v6: what the relay owes each target (``relay_deliveries``, one row per inbox row and target).

    ``state`` is pending until the target answers 2xx (delivered) or the row's time runs out (dead);
    ``attempts``, ``next_attempt_at``, and the last answer (``last_status``, ``last_error``) say where a
    pending one stands. Keyed by (seq, target), so the inbox purge finds a row still owed by its seq;
    ``relay_heads`` finds, per target, the oldest pending row of each (provider, account).
    A snapshot of the v6 format.
    """
    conn.execute(
        "CREATE TABLE relay_deliveries ("
        " seq INTEGER NOT NULL,"
        " target TEXT NOT NULL,"
        " provider TEXT NOT NULL,"
        " account TEXT NOT NULL,"
        " state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),"
        " attempts INTEGER NOT NULL DEFAULT 0,"
        " enqueued_at REAL NOT NULL,"
        " next_attempt_at REAL NOT NULL,"
        " last_attempt_at REAL,"
        " last_status INTEGER,"
        " last_error TEXT,"
        " finished_at REAL,"
        " PRIMARY KEY (seq, target)) WITHOUT ROWID"
    )
    # enqueued_at rides along so the backlog's count and age are one pass over the index, not the table.
    conn.execute("CREATE INDEX relay_by_state ON relay_deliveries (target, state, provider, account, seq, enqueued_at)")


#: MIGRATIONS[i] takes the schema from version i to version i + 1. Append only; never edit a
#: migration that has shipped, since files in the field were built by it.
MIGRATIONS: tuple[Migration, ...] = (
    _SCHEMA_V1,
    _reconciliation_columns_v2,
    _inbox_v3,
    _history_records_v4,
    _inbox_dedupe_v5,
    _relay_v6,
)


class _Rerun(Exception):
    """Rolls back a batch run without savepoints so it can run again with them (see ``run_batch``)."""


class StateError(Exception):
    """The state file cannot be used: not a database, too new, unwritable, or a failed write.

    ``kind`` (one of :data:`ERROR_KINDS`) is set when SQLite itself failed a read or write of the
    file; it is None for a misuse of the store (closed, a transaction across an ``await``).
    """

    def __init__(self, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


def error_kind(exc: sqlite3.Error) -> str:
    """Which of :data:`ERROR_KINDS` an SQLite error is (``other`` when SQLite gave no code)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int):
        return "corrupt" if "malformed" in str(exc) else "other"
    return _KIND_OF_CODE.get(code & 0xFF, "other")


class StateCondition:
    """What the store has learned about its file from its own reads and writes since it was opened.

    ``writable`` turns False when a write fails and True again at the next successful commit (a
    delivery's, or :meth:`StateStore.probe` from housekeeping). ``damage`` is set by the first error
    saying the file is malformed and stays: only restoring or moving the file away and restarting
    fixes that. ``errors`` counts failed reads and writes per kind. ``on_change`` is called after
    every change of :attr:`problem` (``/-/ready`` follows it).
    """

    def __init__(self) -> None:
        self.writable = True
        self.write_error = ""
        self.damage = ""
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.free_bytes: float = math.nan
        self.on_change: Callable[[], None] | None = None

    @property
    def problem(self) -> str:
        """Why the state is not healthy (shown on ``/-/ready``); empty while it is."""
        if self.damage:
            return f"state file damaged ({self.damage}); restore it from a backup or move it away, then restart"
        if not self.writable:
            return f"state file not writable ({self.write_error}); deliveries are answered 503 until a write succeeds"
        return ""

    def _error(self, exc: sqlite3.Error, *, write: bool) -> str:
        kind = error_kind(exc)
        self.errors[kind] += 1
        before = self.problem
        if kind == "corrupt" and not self.damage:
            self.damage = str(exc)
        if write:
            self.writable = False
            self.write_error = f"{kind}: {exc}"
        if self.problem != before:
            self._changed()
        return kind

    def _committed(self) -> None:
        if not self.writable:
            self.writable = True
            self.write_error = ""
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


@dataclass(frozen=True, slots=True)
class TransferRecord:
    """One deposit or withdrawal as the lifecycle state machine last left it.

    Besides the lifecycle, it carries what history reconciliation compares (written by the same
    state machine, read by :mod:`exporter.whitebit.reconcile`): ``webhook_status``, the furthest
    status any webhook reported; ``history_pending_at`` and ``history_final_at``, when history first
    showed a status whose pending or final webhook WhiteBIT sends; ``history_waived``, the level up
    to which the baseline poll waived those webhooks (0 none, 1 pending, 2 final). A row migrated
    from schema v1 may have ``webhook_seen`` without ``webhook_status``, because it was written
    without one; the field stays empty rather than guessed. ``details`` holds the identity the
    payloads gave (``transaction_id``, ``unique_id``, ``transaction_hash``, ``network``,
    ``last_event``).
    """

    account: str
    kind: TransferKind
    key: str
    status: int
    status_name: str
    ticker: str
    amount: Decimal
    created_at: float
    updated_at: float
    final: bool = False
    outcome: str | None = None
    webhook_seen: bool = False
    history_seen: bool = False
    missed_counted: bool = False
    confirmations_actual: int | None = None
    confirmations_required: int | None = None
    webhook_status: int | None = None
    history_pending_at: float | None = None
    history_final_at: float | None = None
    history_waived: int = 0
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class InboxDelivery:
    """One accepted webhook delivery as received: a row of the inbox (see :meth:`StateStore.add_delivery`).

    ``delivery_id`` is what identifies the delivery to dedupe (WhiteBIT's signed ``id``, the SHA-256
    of a Zero Hash body); ``headers`` the ones that were signed or identify it; ``body`` the raw
    body, None once the retention has removed it; ``status`` and ``verdict`` what the receiver
    answered and why (``ok``; ``nonce_regression`` accepted under the ``count`` policy; ``late``).
    ``seq`` (the order received), ``expires_at``, ``duplicates``, ``last_duplicate_at`` and
    ``derive_error`` are set by the store.
    """

    provider: str
    account: str
    delivery_id: str
    method: str
    received_at: float
    body: bytes | None
    headers: dict[str, str] = field(default_factory=dict)
    nonce: int | None = None
    status: int = 200
    verdict: str = "ok"
    seq: int = 0
    expires_at: float = math.inf
    duplicates: int = 0
    last_duplicate_at: float | None = None
    derive_error: str | None = None


@dataclass(frozen=True)
class DeliveryQuery:
    """Which inbox rows to find: received in [``since``, ``until``), of that provider, account and
    method, whose body contains any of ``containing`` (each filter only when given); at most ``limit``."""

    since: float | None = None
    until: float | None = None
    provider: str | None = None
    account: str | None = None
    method: str | None = None
    containing: tuple[str, ...] = ()
    limit: int = 100


@dataclass(frozen=True, slots=True)
class HistoryFeed:
    """One time a poll fed history records to the lifecycle (see :meth:`StateStore.record_history`), or
    (``evaluation``) checked which webhooks are missed (:meth:`StateStore.record_evaluation`)."""

    seq: int
    account: str
    at: float
    baseline: bool
    evaluation: bool = False


@dataclass(frozen=True, slots=True)
class HistoryEvidence:
    """One distinct history record as the polls read it (see :meth:`StateStore.record_history`).

    ``record`` is the record as JSON text; ``first_feed`` and ``last_feed`` the ``seq`` of the first
    and the last :class:`HistoryFeed` that read it; ``seq`` the order stored (that of ``first_feed``).
    """

    seq: int
    account: str
    first_feed: int
    last_feed: int
    record: str


@dataclass(frozen=True, slots=True)
class RelayItem:
    """One delivery the relay owes one target: its place (``seq``), its inbox row's ordering key
    (``provider``, ``account``) and where it stands. ``delivery`` is the inbox row (body and headers),
    when it was read with it."""

    seq: int
    target: str
    provider: str
    account: str
    state: str
    attempts: int
    enqueued_at: float
    next_attempt_at: float
    last_attempt_at: float | None = None
    last_status: int | None = None
    last_error: str | None = None
    finished_at: float | None = None
    delivery: InboxDelivery | None = None


@dataclass(frozen=True)
class RelayAnswer:
    """What one relay attempt came to: delivered, tried again at ``retry_at``, or (neither) dead."""

    seq: int
    at: float
    delivered: bool
    status: int | None = None
    error: str | None = None
    retry_at: float | None = None


@dataclass(frozen=True)
class ZerohashBalance:
    """The absolute balance of one Zero Hash account at its payload event time."""

    participant_code: str
    account_group: str
    account_label: str
    account_type: str
    asset: str
    balance: Decimal
    timestamp: float
    run_id: str | None = None


class StateStore:
    """Typed facade over the SQLite state file; create it with :meth:`open`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        clock: Callable[[], float],
        lock: int | None = None,
        *,
        read_only: bool = False,
    ) -> None:
        self._db: sqlite3.Connection | None = conn
        self._path = path
        self._clock = clock
        self._depth = 0
        self._owner: object = None
        self._lock = lock
        self._condition = StateCondition()
        self._checkpoint_pages = WAL_AUTOCHECKPOINT_PAGES
        #: digest -> seq (a list of them for two deliveries with one digest) of each inbox row whose
        #: state is not derived yet, so not in ``inbox_ids``; loaded at the first lookup.
        self._pending: dict[int, int | list[int]] | None = None
        self._pending_order: deque[tuple[int, int]] = deque()  # (seq, digest), oldest first
        #: The inbox cursor the open transaction set, and the highest one committed: rows up to it are indexed.
        self._indexing_to = 0
        self._indexed_through = 0
        #: The highest nonce committed per account (read once, then kept: this store is the one writer),
        #: the ones the open transaction raised (written just before it commits), and those as each open
        #: savepoint found them (put back when it is undone).
        self._nonces: dict[str, int | None] = {}
        self._nonces_raised: dict[str, int] = {}
        self._raised_at_savepoints: list[dict[str, int]] = []
        if not read_only:
            self.volume_free_bytes()  # fits the checkpoint threshold to the volume from the start
        if lock is not None:
            # The exporter's own store (exclusive): it keeps the room a full volume needs to recover.
            # Another connection to the file (tests, benchmarks) writes no reserve of its own.
            self.ensure_reserve()

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def open_read_only(cls, path: str | Path, *, migrations: Sequence[Migration] = MIGRATIONS) -> StateStore:
        """Open an existing state file to read it only (the inspection commands), beside a running exporter.

        Nothing is written: no migration, no lock, no reserve. A file of another schema version is
        refused (start the exporter of this version once to migrate it); any write raises
        :class:`StateError`.
        """
        path = Path(path)
        if not path.is_file():
            raise StateError(f"no state file at {path}")
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        except sqlite3.Error as exc:
            raise StateError(f"{path} is not a usable SQLite state file: {exc}") from exc
        if app_id != APPLICATION_ID:
            conn.close()
            raise StateError(f"{path} is not a whitebit-exporter state file")
        if version != len(migrations):
            conn.close()
            raise StateError(
                f"{path} has schema version {version}, this version reads {len(migrations)}:"
                " start this version of the exporter on it once to migrate it"
            )
        return cls(conn, path, time.time, read_only=True)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        durability: Durability = "process",
        migrations: Sequence[Migration] = MIGRATIONS,
        exclusive: bool = False,
    ) -> StateStore:
        """Open (creating if needed) and migrate the state file at ``path``.

        ``exclusive=True`` (what the exporter does) first takes the lock ``<state>.lock`` and
        raises :class:`StateError` naming the holder's pid when another process has it; without
        it the file is opened unlocked (a second connection that inspects it, as tests do).

        ``durability="process"`` (``synchronous=NORMAL``) makes every commit survive a crash or
        SIGKILL of this process; ``"power"`` (``synchronous=FULL``) also survives power loss at
        the cost of an fsync per commit.
        """
        if durability not in ("process", "power"):
            raise ValueError(f"durability must be 'process' or 'power', not {durability!r}")
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot open state file {path}: {exc}") from exc
        lock = _lock(path) if exclusive else None
        try:
            # Autocommit mode: transactions are issued explicitly by transaction().
            conn = sqlite3.connect(path, isolation_level=None)
            conn.create_function("run_id_sort_key", 1, run_id_sort_key, deterministic=True)
        except (OSError, sqlite3.Error) as exc:
            if lock is not None:
                os.close(lock)
            raise StateError(f"cannot open state file {path}: {exc}") from exc
        try:
            _prepare(conn, path, durability, migrations)
        except BaseException:
            conn.close()
            if lock is not None:
                os.close(lock)
            raise
        return cls(conn, path, clock, lock)

    def close(self) -> None:
        """Close the file and release its lock; an open transaction is rolled back. Closing twice is harmless."""
        if self._db is not None:
            self._db.close()
            self._db = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """The state file."""
        return self._path

    @property
    def condition(self) -> StateCondition:
        """Whether the file is writable and undamaged, and its failed reads and writes by kind."""
        return self._condition

    @property
    def schema_version(self) -> int:
        """The schema version of the open file (``PRAGMA user_version``)."""
        return int(self._query("PRAGMA user_version")[0][0])

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group several calls into one atomic commit; an exception rolls all of it back.

        Calls inside do not commit by themselves. Nested blocks are savepoints: an exception
        caught inside the outer block undoes only the nested block. Never ``await`` inside:
        another task's call would otherwise silently join this transaction, so such a call
        raises :class:`StateError` instead.
        """
        conn = self._conn()
        owner = self._check_owner()
        outer = self._depth == 0
        savepoint = f"sp{self._depth}"
        try:
            conn.execute("BEGIN IMMEDIATE" if outer else f"SAVEPOINT {savepoint}")
        except sqlite3.Error as exc:
            raise self._failure(f"cannot begin a transaction on {self._path}", exc) from exc
        if outer:
            self._owner = owner
        else:
            self._raised_at_savepoints.append(dict(self._nonces_raised))
        self._depth += 1
        try:
            try:
                yield
            finally:
                self._depth -= 1
            if outer and self._nonces_raised:
                self._write_nonces(conn)
            conn.execute("COMMIT" if outer else f"RELEASE {savepoint}")
        except BaseException as exc:
            _undo(conn, None if outer else savepoint)
            self._indexing_to = self._indexed_through  # whatever was indexed in it is undone
            self._nonces_raised = {} if outer else self._raised_at_savepoints.pop()
            failure = exc
            if isinstance(exc, sqlite3.Error):
                failure = self._failure(f"state write to {self._path} failed", exc)
            if outer and isinstance(failure, StateError) and failure.kind == "full":
                self._make_room()
            if failure is not exc:
                raise failure from exc
            raise
        else:
            if outer:
                self._condition._committed()
                self._indexed_through = max(self._indexed_through, self._indexing_to)
                if self._nonces_raised:
                    self._nonces.update(self._nonces_raised)
                    self._nonces_raised = {}
            else:
                self._raised_at_savepoints.pop()
        finally:
            if outer:
                self._owner = None

    def _check_owner(self) -> object:
        try:
            task: object = asyncio.current_task()
        except RuntimeError:  # no running event loop: plain synchronous use
            task = None
        if self._depth and task is not self._owner:
            raise StateError(
                "a StateStore transaction is open in another asyncio task; never await inside transaction()"
            )
        return task

    def run_batch(self, jobs: Sequence[Callable[[], Any]]) -> list[tuple[Any, Exception | None]]:
        """Run ``jobs`` in ONE transaction, as if each were in its own savepoint, then commit.

        Returns one outcome per job: ``(value, None)``, or ``(None, exc)`` for a job that raised
        an :class:`Exception`, whose writes are undone alone while the others still commit.
        Raises :class:`StateError` with nothing committed when the transaction cannot begin or
        commit, or when a failing job took the whole transaction down with it (SQLite ends a
        transaction by itself on some errors, such as a full disk). Same rules as
        :meth:`transaction`: never ``await`` inside a job.

        Jobs first run without savepoints (they cost a few microseconds per job, and this runs
        once per webhook delivery); only when one of them raises is everything rolled back and
        the batch run again with a savepoint per job. A job may therefore run twice, the first
        run leaving no trace: it must act on nothing but this store (memory is updated once the
        outcome is known, after the commit).
        """
        try:
            with self.transaction():
                values = []
                for job in jobs:
                    try:
                        values.append(job())
                    except Exception:
                        raise _Rerun from None
        except _Rerun:
            return self._run_isolated(jobs)
        return [(value, None) for value in values]

    def _run_isolated(self, jobs: Sequence[Callable[[], Any]]) -> list[tuple[Any, Exception | None]]:
        """:meth:`run_batch` with a savepoint around each job: ``transaction()`` nested per job, inlined."""
        outcomes: list[tuple[Any, Exception | None]] = []
        with self.transaction():
            conn = self._conn()
            depth = self._depth
            name = f"sp{depth}"
            begin, release = f"SAVEPOINT {name}", f"RELEASE {name}"
            for job in jobs:
                try:
                    conn.execute(begin)
                except sqlite3.Error as exc:
                    raise self._failure(f"cannot begin a savepoint on {self._path}", exc) from exc
                self._depth = depth + 1
                raised = dict(self._nonces_raised)
                try:
                    value = job()
                except Exception as exc:
                    self._depth = depth
                    _undo(conn, name)
                    self._nonces_raised = raised
                    if not conn.in_transaction:
                        kind = exc.kind if isinstance(exc, StateError) else None
                        raise StateError(
                            f"state write to {self._path} failed and ended the transaction: {exc}", kind
                        ) from exc
                    outcomes.append((None, exc))
                    continue
                finally:
                    self._depth = depth
                try:
                    conn.execute(release)
                except sqlite3.Error as exc:
                    raise self._failure(f"state write to {self._path} failed", exc) from exc
                outcomes.append((value, None))
        return outcomes

    # -- the webhook inbox -------------------------------------------------------------------

    def add_delivery(self, delivery: InboxDelivery, *, ttl: float = DEFAULT_DELIVERY_TTL) -> int | None:
        """Store an accepted delivery as received; its ``seq`` if it is new, None if it was received before.

        The row is the delivery's dedupe record: a delivery with the same (provider, account,
        delivery id) is a duplicate for as long as the row exists, which is at least ``ttl`` (and
        the inbox retention, see :meth:`purge_inbox`). A duplicate is counted on the first row.
        Found by its digest: among the rows not derived yet (held in memory), or in ``inbox_ids``.
        """
        if not (math.isfinite(ttl) and ttl >= MIN_DELIVERY_TTL):
            raise ValueError(f"delivery ttl must be at least {MIN_DELIVERY_TTL:.0f} s, not {ttl!r}")
        received_at = _finite(delivery.received_at, "received_at")
        provider, account, delivery_id = delivery.provider, delivery.account, delivery.delivery_id
        digest = delivery_digest(provider, account, delivery_id)
        seen = self._row_of(self._pending_seqs(digest), provider, account, delivery_id)
        row = (
            provider,
            account,
            delivery_id,
            delivery.method,
            received_at,
            received_at + ttl,
            delivery.status,
            delivery.verdict,
            delivery.nonce,
            _HEADERS_JSON.encode(delivery.headers),
            delivery.body,
            digest,
        )
        if seen is None:
            # One statement in the common case (a new delivery): the insert looks the digest up itself.
            cur = self._write(_ADD_DELIVERY_UNLESS_INDEXED, (*row, digest))
            if cur.rowcount == 1:
                seq = int(cur.lastrowid or 0)
                self._remember_pending(digest, seq)
                return seq
            seen = self._row_of(self._indexed_seqs(digest), provider, account, delivery_id)
        if seen is not None:
            self._write(
                "UPDATE inbox SET duplicates = duplicates + 1, last_duplicate_at = ? WHERE seq = ?", (received_at, seen)
            )
            return None
        # Another delivery has this digest: this one is new all the same.
        seq = int(self._write(_ADD_DELIVERY, row).lastrowid or 0)
        self._remember_pending(digest, seq)
        return seq

    def _pending_rows(self) -> dict[int, int | list[int]]:
        if self._pending is None:
            self._pending = {}
            self._indexed_through = self._indexing_to = self.inbox_cursor()
            for digest, seq in self._query(
                "SELECT digest, seq FROM inbox WHERE seq > ? ORDER BY seq", (self._indexed_through,)
            ):
                self._remember_pending(int(digest), int(seq))
        return self._pending

    def _remember_pending(self, digest: int, seq: int) -> None:
        pending = self._pending_rows()
        held = pending.get(digest)
        if held is None:
            pending[digest] = seq
        elif isinstance(held, list):
            held.append(seq)
        else:
            pending[digest] = [held, seq]
        order = self._pending_order
        order.append((seq, digest))
        # Rows the consumer derived (and so indexed) in a committed transaction need no memory.
        while order and order[0][0] <= self._indexed_through:
            done, done_digest = order.popleft()
            held = pending.get(done_digest)
            if held == done:
                del pending[done_digest]
            elif isinstance(held, list) and done in held:
                held.remove(done)
                if not held:
                    del pending[done_digest]

    def _pending_seqs(self, digest: int) -> list[int]:
        held = self._pending_rows().get(digest)
        return [] if held is None else list(held) if isinstance(held, list) else [held]

    def _indexed_seqs(self, digest: int) -> list[int]:
        return [int(r[0]) for r in self._query("SELECT seq FROM inbox_ids WHERE digest = ?", (digest,))]

    def _row_of(self, seqs: list[int], provider: str, account: str, delivery_id: str) -> int | None:
        """Which of ``seqs`` (rows whose digest matched) is this delivery's row, if any: another delivery may
        share the digest, and a remembered row may have been rolled back."""
        for seq in seqs:
            rows = self._query("SELECT provider, account, delivery_id FROM inbox WHERE seq = ?", (seq,))
            if rows and tuple(rows[0]) == (provider, account, delivery_id):
                return seq
        return None

    def _find_delivery(self, digest: int, provider: str, account: str, delivery_id: str) -> int | None:
        """The ``seq`` of the inbox row of this delivery, or None."""
        seqs = self._pending_seqs(digest) + self._indexed_seqs(digest)
        return self._row_of(seqs, provider, account, delivery_id)

    def set_verdict(self, seq: int, verdict: str) -> None:
        """Change what the inbox row ``seq`` says of its delivery (in the transaction that stored it)."""
        self._write("UPDATE inbox SET verdict = ? WHERE seq = ?", (verdict, seq))

    def delivery_seen(self, provider: str, account: str, delivery_id: str) -> bool:
        """True if the delivery is in the inbox (received before, so a new one with its id is a duplicate)."""
        return (
            self._find_delivery(delivery_digest(provider, account, delivery_id), provider, account, delivery_id)
            is not None
        )

    def inbox_after(self, seq: int, limit: int, *, headers: bool = True) -> list[InboxDelivery]:
        """Up to ``limit`` inbox rows after ``seq``, in the order received (bodies purged or not).

        ``headers=False`` leaves each row's ``headers`` empty, unread (derivation needs only the body).
        """
        columns = _INBOX_COLUMNS if headers else _INBOX_COLUMNS.replace(" headers,", " NULL,")
        rows = self._query(f"SELECT {columns} FROM inbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        return [_inbox_delivery(r) for r in rows]

    def find_deliveries(self, query: DeliveryQuery) -> list[InboxDelivery]:
        """Inbox rows matching every filter of ``query``, newest first, at most ``query.limit``."""
        where: list[str] = []
        params: list[object] = []
        for clause, value in (
            ("received_at >= ?", query.since),
            ("received_at < ?", query.until),
            ("provider = ?", query.provider),
            ("account = ?", query.account),
            ("method = ?", query.method),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        if query.containing:
            where.append("(" + " OR ".join("instr(body, ?) > 0" for _ in query.containing) + ")")
            params.extend(text.encode() for text in query.containing)
        condition = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT {_INBOX_COLUMNS} FROM inbox{condition} ORDER BY seq DESC LIMIT ?"
        rows = self._query(sql, (*params, query.limit))
        return [_inbox_delivery(r) for r in rows]

    def get_delivery(self, seq: int) -> InboxDelivery | None:
        """The inbox row ``seq``, or None."""
        rows = self._query(f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE seq = ?", (seq,))
        return _inbox_delivery(rows[0]) if rows else None

    def deliveries_with_id(self, delivery_id: str) -> list[InboxDelivery]:
        """The inbox rows (one per provider and account at most) whose delivery id is ``delivery_id``."""
        rows = self._query(f"SELECT {_INBOX_COLUMNS} FROM inbox WHERE delivery_id = ? ORDER BY seq", (delivery_id,))
        return [_inbox_delivery(r) for r in rows]

    def transfers_with_key(self, key: str) -> list[TransferRecord]:
        """Every account's and kind's transfer stored under ``key``."""
        rows = self._query(f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE key = ?", (key,))
        return [_transfer(r) for r in rows]

    def inbox_cursor(self) -> int:
        """The ``seq`` of the last inbox row whose state has been derived (0 before any)."""
        rows = self._query("SELECT value FROM cursors WHERE account = '' AND name = ?", (_INBOX_APPLIED,))
        return int(rows[0][0]) if rows else 0

    def set_inbox_cursor(self, seq: int) -> None:
        """Record that the state of every inbox row up to ``seq`` has been derived, and index the rows it
        passes in ``inbox_ids`` (their dedupe lookup from now on; see :meth:`add_delivery`)."""
        seq = _int(seq, "seq")
        with self.transaction():
            previous = self.inbox_cursor()
            if seq > previous:
                self._conn().execute(
                    "INSERT OR IGNORE INTO inbox_ids (digest, seq)"
                    " SELECT digest, seq FROM inbox WHERE seq > ? AND seq <= ?",
                    (previous, seq),
                )
                self._indexing_to = max(self._indexing_to, seq)
            self.set_cursor("", _INBOX_APPLIED, str(seq))

    def inbox_backlog(self) -> tuple[int, float | None]:
        """(inbox rows not derived yet, when the oldest of them was received, None when there is none)."""
        cursor = self.inbox_cursor()
        count = self._query("SELECT COUNT(*) FROM inbox WHERE seq > ?", (cursor,))[0][0]
        oldest = self._query("SELECT received_at FROM inbox WHERE seq > ? ORDER BY seq LIMIT 1", (cursor,))
        return int(count), (float(oldest[0][0]) if oldest else None)

    def last_inbox_seq(self) -> int:
        """The ``seq`` of the newest inbox row (0 when there is none)."""
        return int(self._query("SELECT COALESCE(MAX(seq), 0) FROM inbox")[0][0])

    def mark_derive_error(self, seq: int, error: str) -> None:
        """Note on inbox row ``seq`` why its state could not be derived (the row is kept, the cursor moves on)."""
        self._write("UPDATE inbox SET derive_error = ? WHERE seq = ?", (error, seq))

    def purge_inbox(self, retention: float, *, limit: int = INBOX_PURGE_BATCH) -> int:
        """Forget at most ``limit`` old deliveries; how many rows were deleted or emptied.

        A row whose state has been derived, and that the relay owes no target, is deleted once it is
        older than ``retention`` and past its dedupe expiry (with the relay's record of it); a row older
        than ``retention`` but still needed for dedupe keeps its id and loses its body and headers. The
        newest ``received_at`` of each feed among the deleted rows is kept first, as the cursor
        ``<provider>:last_delivery``, so :meth:`last_deliveries` survives the purge. At most ``limit``
        rows per call, so one call holds the loop only briefly.
        """
        now = self._now()
        before = now - retention
        with self.transaction():
            conn = self._conn()
            cursor = self.inbox_cursor()
            doomed = (
                "SELECT seq FROM inbox WHERE received_at <= ? AND expires_at <= ? AND seq <= ?"
                f" AND {_NOT_OWED} ORDER BY seq LIMIT ?"
            )
            conn.execute(
                "INSERT INTO cursors (account, name, value, updated_at)"
                f" SELECT account, provider || ?, CAST(MAX(received_at) AS TEXT), ? FROM inbox WHERE seq IN ({doomed})"
                " GROUP BY provider, account"
                " ON CONFLICT (account, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
                " WHERE CAST(excluded.value AS REAL) > CAST(cursors.value AS REAL)",
                (_LAST_DELIVERY, now, before, now, cursor, limit),
            )
            conn.execute(
                f"DELETE FROM inbox_ids WHERE (digest, seq) IN (SELECT digest, seq FROM inbox WHERE seq IN ({doomed}))",
                (before, now, cursor, limit),
            )
            # What the relay did with a row goes with it (the doomed rows are owed to no target).
            conn.execute(f"DELETE FROM relay_deliveries WHERE seq IN ({doomed})", (before, now, cursor, limit))
            deleted = conn.execute(f"DELETE FROM inbox WHERE seq IN ({doomed})", (before, now, cursor, limit)).rowcount
            emptied = conn.execute(
                "UPDATE inbox SET body = NULL, headers = NULL WHERE seq IN (SELECT seq FROM inbox"
                f" WHERE received_at <= ? AND body IS NOT NULL AND seq <= ? AND {_NOT_OWED} ORDER BY seq LIMIT ?)",
                (before, cursor, max(limit - deleted, 0)),
            ).rowcount
            if deleted + emptied:
                _raise_horizon(conn, before, now)
            return deleted + emptied

    # -- the relay ---------------------------------------------------------------------------

    def enqueue_relay(self, target: str, rows: Sequence[InboxDelivery], *, at: float) -> None:
        """Owe ``target`` each of ``rows`` (inbox rows; call in the transaction that derives them)."""
        when = _finite(at, "at")
        with self.transaction():
            self._conn().executemany(
                "INSERT OR IGNORE INTO relay_deliveries"
                " (seq, target, provider, account, state, enqueued_at, next_attempt_at)"
                " VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                [(row.seq, target, row.provider, row.account, when, when) for row in rows],
            )

    def relay_heads(
        self, target: str, now: float, limit: int, *, skip: Collection[tuple[str, str]] = ()
    ) -> list[RelayItem]:
        """Per (provider, account), the oldest delivery ``target`` is owed, when it is due by ``now``;
        each with its inbox row, oldest first, at most ``limit``. A later one waits for it: the order
        received is the order sent. ``skip``: (provider, account) queues to leave out (their head is
        being sent)."""
        due = _finite(now, "now")
        heads = [
            item
            for item in self._relay_queue_heads(target)
            if item.next_attempt_at <= due and (item.provider, item.account) not in skip
        ]
        heads.sort(key=lambda item: item.seq)
        return [replace(item, delivery=self.get_delivery(item.seq)) for item in heads[:limit]]

    def relay_queue_run(self, target: str, provider: str, account: str, now: float, limit: int) -> list[RelayItem]:
        """The oldest deliveries ``target`` is owed of one (provider, account) queue, in order, as long as
        they are due by ``now``, at most ``limit``; each with its inbox row. One query: the sender's next
        steps through a queue it is sending."""
        rows = self._query(
            f"SELECT {_RELAY_COLUMNS_R}, {_INBOX_COLUMNS_I} FROM relay_deliveries r LEFT JOIN inbox i ON i.seq = r.seq"
            " WHERE r.target = ? AND r.state = 'pending' AND r.provider = ? AND r.account = ? ORDER BY r.seq LIMIT ?",
            (target, provider, account, limit),
        )
        due = _finite(now, "now")
        run: list[RelayItem] = []
        for row in rows:
            if float(row[7]) > due:  # next_attempt_at
                break
            inbox = row[_RELAY_WIDTH:]
            run.append(_relay_item(row, None if inbox[0] is None else _inbox_delivery(inbox)))
        return run

    def _relay_queue_heads(self, target: str) -> list[RelayItem]:
        """The oldest pending delivery of each (provider, account) queue of ``target``, due or not.

        One index seek per queue (a skip scan over ``relay_by_state``), so its cost follows the
        number of accounts, not the backlog: a target down for days owes millions of rows.
        """
        pending = f"SELECT {_RELAY_COLUMNS} FROM relay_deliveries WHERE target = ? AND state = 'pending'"
        next_provider = f"{pending} AND provider > ? ORDER BY provider, account, seq LIMIT 1"
        next_account = f"{pending} AND provider = ? AND account > ? ORDER BY account, seq LIMIT 1"
        heads: list[RelayItem] = []
        row = self._query(next_provider, (target, ""))
        while row:
            head = _relay_item(row[0])
            heads.append(head)
            row = self._query(next_account, (target, head.provider, head.account)) or self._query(
                next_provider, (target, head.provider)
            )
        return heads

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
        """Record one attempt's outcome: delivered, or tried again at ``retry_at``, or (``retry_at`` None
        and not delivered) dead."""
        self.relay_answers(target, [RelayAnswer(seq, at, delivered, status, error, retry_at)])

    def relay_answers(self, target: str, answers: Sequence[RelayAnswer]) -> None:
        """Record the outcomes of several attempts (of different deliveries) in one commit. An answer to
        a delivery no longer pending (recorded already) changes nothing."""
        rows = []
        for answer in answers:
            when = _finite(answer.at, "at")
            retry_at = None if answer.retry_at is None else _finite(answer.retry_at, "retry_at")
            state = "delivered" if answer.delivered else ("pending" if retry_at is not None else "dead")
            finished = None if state == "pending" else when
            rows.append((state, when, answer.status, answer.error, retry_at, finished, answer.seq, target))
        with self.transaction():
            try:
                self._conn().executemany(
                    "UPDATE relay_deliveries SET state = ?, attempts = attempts + 1, last_attempt_at = ?,"
                    " last_status = ?, last_error = ?, next_attempt_at = COALESCE(?, next_attempt_at), finished_at = ?"
                    " WHERE seq = ? AND target = ? AND state = 'pending'",
                    rows,
                )
            except sqlite3.Error as exc:
                raise self._failure(f"state write to {self._path} failed", exc) from exc

    def relay_backlog(self, target: str) -> tuple[int, float | None, int]:
        """(deliveries owed, when the oldest of them was enqueued, dead letters) of ``target``.

        Both owed figures come from one pass over ``relay_by_state``, which carries ``enqueued_at``
        for it (tens of milliseconds at a million owed); a dead letter owed again is older than the
        queue it rejoins, so the oldest is not always a queue's head.
        """
        owed = self._query(
            "SELECT COUNT(*), MIN(enqueued_at) FROM relay_deliveries WHERE target = ? AND state = 'pending'",
            (target,),
        )[0]
        dead = self._query("SELECT COUNT(*) FROM relay_deliveries WHERE target = ? AND state = 'dead'", (target,))[0][0]
        return int(owed[0]), (None if owed[1] is None else float(owed[1])), int(dead)

    def relay_items(self, state: str, target: str | None = None, *, limit: int = 100) -> list[RelayItem]:
        """Deliveries in ``state`` (of ``target``), oldest first, at most ``limit``."""
        rows = self._query(
            f"SELECT {_RELAY_COLUMNS} FROM relay_deliveries WHERE state = ? AND (? IS NULL OR target = ?)"
            " ORDER BY seq, target LIMIT ?",
            (state, target, target, limit),
        )
        return [_relay_item(r) for r in rows]

    def retry_dead(self, *, target: str | None = None, seq: int | None = None, at: float) -> int:
        """Owe the dead letters (of ``target``, or the one at ``seq``) again, due at ``at``; how many.

        Each is owed as from ``at`` (its ``enqueued_at``), so it has a whole ``retry_for`` again, not one try.
        """
        return self._write(
            "UPDATE relay_deliveries SET state = 'pending', next_attempt_at = ?, enqueued_at = ?, finished_at = NULL"
            " WHERE state = 'dead' AND (? IS NULL OR target = ?) AND (? IS NULL OR seq = ?)",
            (_finite(at, "at"), _finite(at, "at"), target, target, seq, seq),
        ).rowcount

    # -- history evidence --------------------------------------------------------------------

    def record_history(
        self, account: str, records: Sequence[tuple[str, str]], *, observed_at: float, baseline: bool
    ) -> int:
        """Keep what one poll of ``account`` fed the lifecycle: (digest, record as JSON text) each; the feed's seq.

        The feed itself is one row (when, whether it was the baseline); a record whose digest is kept
        already only has its last feed moved on. Call it in the transaction that stages the records,
        so the evidence and what was derived from it commit together.
        """
        at = _finite(observed_at, "observed_at")
        with self.transaction():  # a savepoint inside the caller's transaction
            conn = self._conn()
            feed = conn.execute(
                "INSERT INTO history_feeds (account, at, baseline) VALUES (?, ?, ?)", (account, at, int(baseline))
            ).lastrowid
            conn.executemany(
                "INSERT INTO history_records (account, digest, first_feed, last_feed, last_seen_at, record)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (account, digest)"
                " DO UPDATE SET last_feed = excluded.last_feed, last_seen_at = excluded.last_seen_at",
                [(account, digest, feed, feed, at, text) for digest, text in records],
            )
        return int(feed or 0)

    def history_feeds_after(self, seq: int, limit: int) -> list[HistoryFeed]:
        """Up to ``limit`` kept feeds after ``seq``, in the order they were fed."""
        rows = self._query(
            "SELECT seq, account, at, baseline, evaluation FROM history_feeds WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [HistoryFeed(int(r[0]), str(r[1]), float(r[2]), bool(r[3]), bool(r[4])) for r in rows]

    def record_evaluation(self, account: str, at: float) -> None:
        """Keep, among the feeds, that a poll of ``account`` checked for missed webhooks at ``at``."""
        self._write(
            "INSERT INTO history_feeds (account, at, baseline, evaluation) VALUES (?, ?, 0, 1)",
            (account, _finite(at, "at")),
        )

    def history_after(self, seq: int, limit: int) -> list[HistoryEvidence]:
        """Up to ``limit`` kept history records stored after ``seq``, in the order stored."""
        rows = self._query(
            "SELECT seq, account, first_feed, last_feed, record FROM history_records"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        )
        return [HistoryEvidence(int(r[0]), str(r[1]), int(r[2]), int(r[3]), str(r[4])) for r in rows]

    def purge_history(self, retention: float, *, limit: int = INBOX_PURGE_BATCH) -> int:
        """Forget at most ``limit`` history records no poll has read for ``retention`` seconds, and
        as many feeds older than that; how many rows were deleted.

        A record still read (a transfer in flight for months) is kept however old it is.
        """
        now = self._now()
        before = now - retention
        with self.transaction():
            conn = self._conn()
            deleted = conn.execute(
                "DELETE FROM history_records WHERE seq IN"
                " (SELECT seq FROM history_records WHERE last_seen_at <= ? ORDER BY last_seen_at LIMIT ?)",
                (before, limit),
            ).rowcount
            feeds = conn.execute(
                "DELETE FROM history_feeds WHERE seq IN"
                " (SELECT seq FROM history_feeds WHERE at <= ? ORDER BY at LIMIT ?)",
                (before, limit),
            ).rowcount
            if deleted or feeds:
                _raise_horizon(conn, before, now)
            return max(deleted, feeds)

    def evidence_horizon(self) -> float | None:
        """The time before which evidence of derived state may be gone: None when all is kept.

        Evidence is the inbox's bodies and the history records: a purge that removes some, or the
        upgrade that began keeping history, moves the horizon to when it stops being complete. A
        transfer created before it cannot be derived again from what is kept.
        """
        value = self.get_cursor("", _EVIDENCE_HORIZON)
        return None if value is None else float(value)

    def evidence_counts(self) -> tuple[int, int]:
        """(inbox rows with a body, history records kept): the evidence a rebuild replays."""
        inbox = self._query("SELECT COUNT(*) FROM inbox WHERE body IS NOT NULL")[0][0]
        history = self._query("SELECT COUNT(*) FROM history_records")[0][0]
        return int(inbox), int(history)

    def reset_derived_state(self, *, keep_transfers_created_before: float | None) -> tuple[int, int]:
        """Delete what the inbox and history derive, for a rebuild (inside its transaction).

        Deletes every transfer created at or after ``keep_transfers_created_before`` (all when
        None), every Zero Hash balance and every inbox row's derive error, and puts the inbox
        cursor back to 0. Nonces and cursors stay: they are decided at intake and by the polls.
        Returns (transfers deleted, Zero Hash balances deleted).
        """
        conn = self._conn()
        keep = -math.inf if keep_transfers_created_before is None else keep_transfers_created_before
        transfers = conn.execute("DELETE FROM transfers WHERE created_at >= ?", (keep,)).rowcount
        balances = conn.execute("DELETE FROM zerohash_balances").rowcount
        conn.execute("UPDATE inbox SET derive_error = NULL WHERE derive_error IS NOT NULL")
        self.set_inbox_cursor(0)
        return transfers, balances

    def last_deliveries(self, provider: str) -> dict[str, float]:
        """When each account's newest delivery from ``provider`` was received, kept or purged."""
        newest: dict[str, float] = {}
        purged = self._query("SELECT account, value FROM cursors WHERE name = ?", (provider + _LAST_DELIVERY,))
        kept = self._query(
            "SELECT account, MAX(received_at) FROM inbox WHERE provider = ? GROUP BY account", (provider,)
        )
        for account, value in [*purged, *kept]:
            newest[str(account)] = max(newest.get(str(account), -math.inf), float(value))
        return newest

    def first_watched(self, account: str, feed: str) -> float:
        """When this state file first watched ``feed`` of ``account``: now, the first time it is asked."""
        name = feed + _FIRST_WATCHED
        with self.transaction():
            self._conn().execute(
                "INSERT INTO cursors (account, name, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account, name) DO NOTHING",
                (account, name, repr(self._now()), self._now()),
            )
        return float(self._query("SELECT value FROM cursors WHERE account = ? AND name = ?", (account, name))[0][0])

    # -- nonces ------------------------------------------------------------------------------

    def highest_nonce(self, account: str) -> int | None:
        """The highest webhook nonce recorded for ``account`` (by the open transaction too), or None."""
        raised = self._nonces_raised.get(account)
        return raised if raised is not None else self._committed_nonce(account)

    def raise_nonce(self, account: str, nonce: int) -> bool:
        """Record ``nonce`` if it is above the highest (or the first); True if it was, False if not.

        Decided against the highest committed and those raised in the open transaction, and written
        once per account when that transaction commits (this runs once per webhook delivery; a
        delivery batch raises one account's nonce many times). This store is the file's one writer,
        so what it committed is what the file holds.
        """
        _int(nonce, "nonce")
        if self._depth == 0:
            with self.transaction():
                return self.raise_nonce(account, nonce)
        self._check_owner()
        highest = self.highest_nonce(account)
        if highest is not None and nonce <= highest:
            return False
        self._nonces_raised[account] = nonce
        return True

    def _committed_nonce(self, account: str) -> int | None:
        if account not in self._nonces:
            rows = self._query("SELECT highest FROM nonces WHERE account = ?", (account,))
            self._nonces[account] = int(rows[0][0]) if rows else None
        return self._nonces[account]

    def _write_nonces(self, conn: sqlite3.Connection) -> None:
        """Write the nonces the closing transaction raised (just before its COMMIT)."""
        now = self._now()
        conn.executemany(
            "INSERT INTO nonces (account, highest, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (account) DO UPDATE SET highest = excluded.highest, updated_at = excluded.updated_at"
            " WHERE excluded.highest > nonces.highest",
            [(account, nonce, now) for account, nonce in self._nonces_raised.items()],
        )

    # -- transfers ---------------------------------------------------------------------------

    def put_transfer(self, record: TransferRecord) -> None:
        """Insert or replace the transfer with the same (account, kind, key)."""
        self._write(_PUT_TRANSFER, _transfer_row(record))

    def add_transfer(self, record: TransferRecord) -> bool:
        """Insert the transfer unless one with the same (account, kind, key) is stored; True if inserted.

        One statement instead of a lookup and a write, for a record that is most likely new.
        """
        return self._write(_ADD_TRANSFER, _transfer_row(record)).rowcount == 1

    def get_transfer(self, account: str, kind: str, key: str) -> TransferRecord | None:
        """The transfer with this (account, kind, key), or None."""
        rows = self._query(
            f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE account = ? AND kind = ? AND key = ?",
            (account, kind, key),
        )
        return _transfer(rows[0]) if rows else None

    def transfers(self, account: str | None = None, *, open_only: bool = False) -> list[TransferRecord]:
        """Transfers, optionally of one account and/or only those not final, oldest first."""
        sql = f"SELECT {_TRANSFER_COLUMNS} FROM transfers WHERE (? IS NULL OR account = ?)"
        if open_only:
            sql += " AND final = 0"
        sql += " ORDER BY account, created_at, kind, key"
        return [_transfer(row) for row in self._query(sql, (account, account))]

    def purge_final_transfers(self, older_than: float) -> int:
        """Delete final transfers last updated before ``older_than`` (unix s); returns how many.

        Final records are kept for a while so that late webhook deliveries and history rows are
        recognized as known instead of counted again.
        """
        with self.transaction():
            cur = self._conn().execute(
                "DELETE FROM transfers WHERE final = 1 AND updated_at < ?", (_finite(older_than, "older_than"),)
            )
            return cur.rowcount

    def transfer_assets(self) -> list[tuple[str, TransferKind, str]]:
        """Every distinct (account, kind, ticker) among stored transfers, final ones included."""
        rows = self._query("SELECT DISTINCT account, kind, ticker FROM transfers ORDER BY account, kind, ticker")
        # The column's CHECK constraint admits only the two TransferKind values.
        return [(str(r[0]), r[1], str(r[2])) for r in rows]

    # -- cursors -----------------------------------------------------------------------------

    def get_cursor(self, account: str, name: str) -> str | None:
        """The stored cursor ``name`` of ``account`` (e.g. the history reconciliation position)."""
        rows = self._query("SELECT value FROM cursors WHERE account = ? AND name = ?", (account, name))
        return str(rows[0][0]) if rows else None

    def set_cursor(self, account: str, name: str, value: str) -> None:
        """Store cursor ``name`` of ``account``."""
        with self.transaction():
            self._conn().execute(
                "INSERT INTO cursors (account, name, value, updated_at) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (account, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (account, name, value, self._now()),
            )

    # -- Zero Hash balances ------------------------------------------------------------------

    def apply_zerohash_balance(self, b: ZerohashBalance) -> bool:
        """Store ``b`` unless a newer event for the same account is stored; True if applied.

        Zero Hash does not guarantee delivery order, so the payload timestamp decides, then the
        ``run_id`` (:func:`run_id_sort_key`), then the later arrival (a redelivery of the same
        event changes nothing). Decided by the statement itself, so deliveries for one account in
        one batch transaction are ordered against each other too.
        """
        row = (
            b.participant_code,
            b.account_group,
            b.account_label,
            b.account_type,
            b.asset,
            _decimal_text(b.balance, "balance"),
            _finite(b.timestamp, "timestamp"),
            b.run_id,
        )
        cur = self._write(
            f"INSERT INTO zerohash_balances ({_ZEROHASH_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (participant_code, account_group, account_label, account_type, asset) DO UPDATE"
            " SET balance = excluded.balance, timestamp = excluded.timestamp, run_id = excluded.run_id"
            " WHERE excluded.timestamp > zerohash_balances.timestamp"
            " OR (excluded.timestamp = zerohash_balances.timestamp"
            " AND run_id_sort_key(excluded.run_id) >= run_id_sort_key(zerohash_balances.run_id))",
            row,
        )
        return cur.rowcount == 1

    def zerohash_balances(self) -> list[ZerohashBalance]:
        """Every stored Zero Hash balance, ordered by account key."""
        rows = self._query(
            f"SELECT {_ZEROHASH_COLUMNS} FROM zerohash_balances"
            " ORDER BY participant_code, account_group, account_label, account_type, asset"
        )
        return [_zerohash_balance(r) for r in rows]

    # -- the file's health ---------------------------------------------------------------------

    def probe(self) -> None:
        """Write and commit one tiny row, to learn whether the file is writable again (housekeeping).

        Raises :class:`StateError` when it is not; a success marks the condition writable.
        """
        with self.transaction():
            self._conn().execute(
                "INSERT INTO cursors (account, name, value, updated_at) VALUES ('', ?, ?, ?)"
                " ON CONFLICT (account, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (_PROBE, repr(self._now()), self._now()),
            )

    def checkpoint(self, *, truncate: bool = False) -> bool:
        """Copy the WAL into the file (``PRAGMA wal_checkpoint``); True when all of it was.

        ``truncate`` also cuts the WAL file to 0 bytes. Never inside a transaction (returns False).
        """
        if self._depth or self._db is None:
            return False
        try:
            busy, _, _ = self._db.execute(f"PRAGMA wal_checkpoint({'TRUNCATE' if truncate else 'PASSIVE'})").fetchone()
        except sqlite3.Error as exc:
            self._condition._error(exc, write=False)
            return False
        return int(busy) == 0

    def wal_bytes(self) -> int:
        """The size of the ``-wal`` file now (0 when there is none)."""
        try:
            return self._path.with_name(self._path.name + "-wal").stat().st_size
        except OSError:
            return 0

    def volume_free_bytes(self) -> float:
        """Bytes an unprivileged writer may still use on the state file's volume (one ``statvfs``)."""
        try:
            st = os.statvfs(self._path.parent)
        except OSError:
            free = math.nan
        else:
            free = float(st.f_bavail * st.f_frsize)
        self._condition.free_bytes = free
        self.fit_checkpoints(free)
        return free

    def fit_checkpoints(self, free: float) -> None:
        """Set the autocheckpoint threshold for ``free`` bytes on the volume (see :data:`WAL_AUTOCHECKPOINT_PAGES`)."""
        if self._db is None or self._depth:
            return
        pages = WAL_AUTOCHECKPOINT_PAGES
        if math.isfinite(free):
            pages = max(WAL_AUTOCHECKPOINT_MIN_PAGES, min(pages, int(free / 8 / _PAGE_BYTES)))
        if pages != self._checkpoint_pages:
            try:
                self._db.execute(f"PRAGMA wal_autocheckpoint = {pages}")
                self._db.execute(f"PRAGMA journal_size_limit = {pages * _PAGE_BYTES}")
            except sqlite3.Error as exc:
                self._condition._error(exc, write=False)
                return
            self._checkpoint_pages = pages

    @property
    def reserve_path(self) -> Path:
        """``<state>.reserve``: room held back for a checkpoint when the volume fills up."""
        return self._path.with_name(self._path.name + ".reserve")

    def ensure_reserve(self) -> bool:
        """Write the reserve file if it is missing and the volume has room for it twice; True if it exists."""
        reserve = self.reserve_path
        if reserve.exists():
            return True
        if not self.volume_free_bytes() >= 2 * RESERVE_BYTES:
            return False
        try:
            # Written, not truncated to size: a sparse file would hold no blocks back.
            with reserve.open("wb") as f:
                f.write(bytes(RESERVE_BYTES))
                f.flush()
                os.fsync(f.fileno())
        except OSError:
            reserve.unlink(missing_ok=True)
            return False
        return True

    def upkeep(self) -> None:
        """Housekeeping's frequent round: free space, a probe while unwritable, a short WAL, the reserve."""
        self.volume_free_bytes()
        if not self._condition.writable:
            try:
                self.probe()
            except StateError:
                return
        self.checkpoint(truncate=self.wal_bytes() > self._checkpoint_pages * _PAGE_BYTES)
        self.ensure_reserve()

    def _make_room(self) -> None:
        """The volume is full: give up the reserve and checkpoint, so the WAL shrinks and writes can resume."""
        self.reserve_path.unlink(missing_ok=True)
        self.checkpoint(truncate=True)

    # -- helpers -----------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StateError(f"state store {self._path} is closed")
        return self._db

    def _now(self) -> float:
        return float(self._clock())

    def _query(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        conn = self._conn()
        self._check_owner()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._failure(f"state read from {self._path} failed", exc, write=False) from exc

    def _write(self, sql: str, params: Sequence[object]) -> sqlite3.Cursor:
        """Run ONE write statement atomically: in its own transaction, or in the caller's.

        Inside an open transaction no savepoint is needed: SQLite undoes a failed statement by
        itself and the error reaches the caller, whose block decides what else to undo.
        """
        if self._depth == 0:
            with self.transaction():
                return self._conn().execute(sql, params)
        conn = self._conn()
        self._check_owner()
        try:
            return conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise self._failure(f"state write to {self._path} failed", exc) from exc

    def _failure(self, what: str, exc: sqlite3.Error, *, write: bool = True) -> StateError:
        """The StateError to raise for ``exc``, after counting it and noting what it says about the file.

        A failed statement inside a transaction marks the file unwritable at once: the caller's
        commit cannot succeed without it, and the next successful commit marks it writable again.
        """
        if isinstance(exc, sqlite3.IntegrityError):
            # A constraint violated by a caller's data says nothing about the file.
            return StateError(f"{what}: {exc}")
        kind = self._condition._error(exc, write=write)
        return StateError(f"{what}: {exc}", kind)

    def _atomic(self) -> AbstractContextManager[None]:
        """A transaction of its own, or nothing when the caller's is already open (no savepoint)."""
        if self._depth == 0:
            return self.transaction()
        self._check_owner()
        return nullcontext()


#: The cursor (of account "") that :meth:`StateStore.probe` rewrites.
_PROBE = "state:probe"
_TRANSFER_COLUMNS = (
    "account, kind, key, status, status_name, ticker, amount, created_at, updated_at, final, outcome,"
    " webhook_seen, history_seen, missed_counted, confirmations_actual, confirmations_required,"
    " webhook_status, history_pending_at, history_final_at, history_waived, details"
)
_TRANSFER_PLACEHOLDERS = ", ".join("?" * len(_TRANSFER_COLUMNS.split(",")))
_ZEROHASH_COLUMNS = "participant_code, account_group, account_label, account_type, asset, balance, timestamp, run_id"
#: json.dumps(sort_keys=True, separators=(",", ":"), allow_nan=False), without building an encoder per call.
_DETAILS_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False)
#: json.dumps(separators=(",", ":")) for an inbox row's headers, likewise (once per delivery, before its 200).
_HEADERS_JSON = json.JSONEncoder(separators=(",", ":"))
_PUT_TRANSFER = f"INSERT OR REPLACE INTO transfers ({_TRANSFER_COLUMNS}) VALUES ({_TRANSFER_PLACEHOLDERS})"
_ADD_TRANSFER = (
    f"INSERT INTO transfers ({_TRANSFER_COLUMNS}) VALUES ({_TRANSFER_PLACEHOLDERS})"
    " ON CONFLICT (account, kind, key) DO NOTHING"
)


def delivery_digest(provider: str, account: str, delivery_id: str) -> int:
    """The 64-bit key a delivery's dedupe lookup goes by (``inbox.digest``, ``inbox_ids``): BLAKE2b of its
    three ids, as a signed integer (SQLite's). Two deliveries may share one; a lookup checks the row."""
    text = f"{provider}\x1f{account}\x1f{delivery_id}".encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "big", signed=True)


def run_id_sort_key(run_id: str | None) -> str:
    """Sort key of a Zero Hash ``run_id`` as text: none first, then decimal ids by value (runs are
    numbered upwards, docs/protocol.md#account-balance-events), then any other text.

    Text, so that SQLite compares it the same way (registered on the connection for
    :meth:`StateStore.apply_zerohash_balance`); decimal ids by their digit count without leading
    zeros, then their digits, without int() on a string of any length.
    """
    if run_id is None:
        return "0"
    if run_id.isascii() and run_id.isdigit():
        digits = run_id.lstrip("0")
        return f"1{len(digits):05d}{digits}"
    return "2" + run_id


_ADD_DELIVERY = (
    "INSERT INTO inbox (provider, account, delivery_id, method, received_at, expires_at, status, verdict,"
    " nonce, headers, body, digest) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_ADD_DELIVERY_UNLESS_INDEXED = (
    "INSERT INTO inbox (provider, account, delivery_id, method, received_at, expires_at, status, verdict,"
    " nonce, headers, body, digest) SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?"
    " WHERE NOT EXISTS (SELECT 1 FROM inbox_ids WHERE digest = ?)"
)

_RELAY_COLUMNS = (
    "seq, target, provider, account, state, attempts, enqueued_at, next_attempt_at, last_attempt_at, last_status,"
    " last_error, finished_at"
)
_RELAY_COLUMNS_R = ", ".join(f"r.{name.strip()}" for name in _RELAY_COLUMNS.split(","))
_RELAY_WIDTH = len(_RELAY_COLUMNS.split(","))
#: An inbox row the relay owes no target, and no target gave up on (the purge leaves one it still owes alone,
#: and a dead letter too, so that ``relay retry`` has its body to send).
_NOT_OWED = "NOT EXISTS (SELECT 1 FROM relay_deliveries r WHERE r.seq = inbox.seq AND r.state IN ('pending', 'dead'))"


def _relay_item(r: Sequence[Any], delivery: InboxDelivery | None = None) -> RelayItem:
    return RelayItem(
        seq=int(r[0]),
        target=str(r[1]),
        provider=str(r[2]),
        account=str(r[3]),
        state=str(r[4]),
        attempts=int(r[5]),
        enqueued_at=float(r[6]),
        next_attempt_at=float(r[7]),
        last_attempt_at=None if r[8] is None else float(r[8]),
        last_status=None if r[9] is None else int(r[9]),
        last_error=r[10],
        finished_at=None if r[11] is None else float(r[11]),
        delivery=delivery,
    )


_INBOX_COLUMNS = (
    "seq, provider, account, delivery_id, method, received_at, expires_at, status, verdict, nonce, headers, body,"
    " duplicates, last_duplicate_at, derive_error"
)
_INBOX_COLUMNS_I = ", ".join(f"i.{name.strip()}" for name in _INBOX_COLUMNS.split(","))


def _inbox_delivery(r: Sequence[Any]) -> InboxDelivery:
    headers: dict[str, str] = {}
    if r[10] is not None:
        try:
            parsed = json.loads(r[10])
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            headers = {str(k): str(v) for k, v in parsed.items()}
    return InboxDelivery(
        provider=r[1],
        account=r[2],
        delivery_id=r[3],
        method=r[4],
        received_at=float(r[5]),
        body=None if r[11] is None else bytes(r[11]),
        headers=headers,
        nonce=None if r[9] is None else int(r[9]),
        status=int(r[7]),
        verdict=r[8],
        seq=int(r[0]),
        expires_at=float(r[6]),
        duplicates=int(r[12]),
        last_duplicate_at=None if r[13] is None else float(r[13]),
        derive_error=r[14],
    )


def _raise_horizon(conn: sqlite3.Connection, at: float, now: float) -> None:
    """Move the evidence horizon (see :meth:`StateStore.evidence_horizon`) to ``at`` unless it is past it."""
    conn.execute(
        "INSERT INTO cursors (account, name, value, updated_at) VALUES ('', ?, ?, ?)"
        " ON CONFLICT (account, name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
        " WHERE CAST(excluded.value AS REAL) > CAST(cursors.value AS REAL)",
        (_EVIDENCE_HORIZON, repr(at), now),
    )


def _zerohash_balance(r: Sequence[Any]) -> ZerohashBalance:
    return ZerohashBalance(
        participant_code=r[0],
        account_group=r[1],
        account_label=r[2],
        account_type=r[3],
        asset=r[4],
        balance=Decimal(r[5]),
        timestamp=float(r[6]),
        run_id=r[7],
    )


def _transfer_row(record: TransferRecord) -> tuple[Any, ...]:
    """The ``transfers`` row of ``record``, validated (ValueError) before anything is written."""
    if record.kind not in ("deposit", "withdraw"):
        raise ValueError(f"transfer kind must be 'deposit' or 'withdraw', not {record.kind!r}")
    if not isinstance(record.details, dict):
        raise ValueError(f"transfer details must be a dict, not {type(record.details).__name__}")
    try:
        details = _DETAILS_JSON.encode(record.details)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"transfer details are not plain JSON: {exc}") from exc
    if _int(record.history_waived, "history_waived") not in (0, 1, 2):
        raise ValueError(f"history_waived must be a level 0, 1 or 2, not {record.history_waived!r}")
    return (
        record.account,
        record.kind,
        record.key,
        _int(record.status, "status"),
        record.status_name,
        record.ticker,
        _decimal_text(record.amount, "amount"),
        _finite(record.created_at, "created_at"),
        _finite(record.updated_at, "updated_at"),
        int(record.final),
        record.outcome,
        int(record.webhook_seen),
        int(record.history_seen),
        int(record.missed_counted),
        _optional_int(record.confirmations_actual, "confirmations_actual"),
        _optional_int(record.confirmations_required, "confirmations_required"),
        _optional_int(record.webhook_status, "webhook_status"),
        _optional_finite(record.history_pending_at, "history_pending_at"),
        _optional_finite(record.history_final_at, "history_final_at"),
        record.history_waived,
        details,
    )


def _transfer(r: Sequence[Any]) -> TransferRecord:
    return TransferRecord(
        account=r[0],
        kind=r[1],
        key=r[2],
        status=int(r[3]),
        status_name=r[4],
        ticker=r[5],
        amount=Decimal(r[6]),
        created_at=float(r[7]),
        updated_at=float(r[8]),
        final=bool(r[9]),
        outcome=r[10],
        webhook_seen=bool(r[11]),
        history_seen=bool(r[12]),
        missed_counted=bool(r[13]),
        confirmations_actual=r[14],
        confirmations_required=r[15],
        webhook_status=r[16],
        history_pending_at=r[17],
        history_final_at=r[18],
        history_waived=int(r[19]),
        details=json.loads(r[20]),
    )


def _decimal_text(value: Decimal, name: str) -> str:
    # A float would already have lost digits; NaN/Infinity are not amounts.
    if not isinstance(value, Decimal) or not value.is_finite():
        raise ValueError(f"{name} must be a finite Decimal, not {value!r}")
    return format(value, "f")


def _int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -(2**63) <= value < 2**63:
        raise ValueError(f"{name} must be a 64-bit integer, not {value!r}")
    return value


def _optional_int(value: int | None, name: str) -> int | None:
    return None if value is None else _int(value, name)


def _optional_finite(value: float | None, name: str) -> float | None:
    return None if value is None else _finite(value, name)


def _finite(value: float, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
    return float(value)


def _undo(conn: sqlite3.Connection, savepoint: str | None) -> None:
    """Roll back the whole transaction (``savepoint`` None) or back to ``savepoint``."""
    try:
        if savepoint is not None:
            conn.execute(f"ROLLBACK TO {savepoint}")
            conn.execute(f"RELEASE {savepoint}")
        elif conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        # The error that got us here is the one worth reporting; a failed rollback leaves the
        # transaction open and the next BEGIN reports that as a StateError.
        pass


def lock_path(path: Path) -> Path:
    """``<state>.lock``: holds the pid of the exporter that has the state file open."""
    return path.with_name(path.name + ".lock")


def _lock(path: Path) -> int:
    """Take the exclusive lock of the state file at ``path``; its file descriptor, held until close.

    An ``flock`` on ``<state>.lock``: two exporters writing one file would each keep their own
    in-memory view of it. The kernel drops the lock when its holder exits however it exits, so a
    lock file left by a dead process never blocks a start.
    """
    where = lock_path(path)
    try:
        fd = os.open(where, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StateError(f"cannot open lock file {where}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = ""
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            with suppress(OSError):
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StateError(f"cannot lock {where}: {exc}") from exc
        raise StateError(
            f"{path} is in use by another whitebit-exporter (pid {holder or 'unknown'});"
            " run one exporter per state file"
        ) from None
    # Without the pid the lock still holds; only a second instance's message is poorer.
    with suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _prepare(conn: sqlite3.Connection, path: Path, durability: Durability, migrations: Sequence[Migration]) -> None:
    """Check that ``conn`` is a state file this code understands, configure it and migrate it."""
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        # The first read of the header: a file that is not SQLite fails here.
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        has_objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] > 0
    except sqlite3.Error as exc:
        raise StateError(f"{path} is not a usable SQLite state file: {exc}") from exc
    if app_id not in (0, APPLICATION_ID) or (version == 0 and has_objects):
        raise StateError(f"{path} is an SQLite database of another program, not a whitebit-exporter state file")
    if version > len(migrations):
        raise StateError(
            f"{path} was written by a newer whitebit-exporter (schema version {version};"
            f" this version knows up to {len(migrations)})"
        )
    if has_objects:
        _check_integrity(conn, path)
    try:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        conn.execute(f"PRAGMA synchronous = {'NORMAL' if durability == 'process' else 'FULL'}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_AUTOCHECKPOINT_PAGES * _PAGE_BYTES}")
    except sqlite3.Error as exc:
        raise StateError(f"cannot configure state file {path}: {exc}") from exc
    if str(mode).lower() != "wal":
        # Durability of commits is argued for WAL; don't run silently on something else.
        raise StateError(f"{path}: SQLite refused WAL journal mode (got {mode!r}); use a local filesystem")
    for index in range(version, len(migrations)):
        _migrate(conn, path, index + 1, migrations[index])


def _check_integrity(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse a damaged file at start (``PRAGMA quick_check``), not one delivery at a time later.

    quick_check reads every page (it skips only the index-versus-table comparison of
    ``integrity_check``), so damage anywhere is found before anything is served.
    """
    try:
        rows = conn.execute("PRAGMA quick_check(1)").fetchall()
    except sqlite3.Error as exc:
        found = str(exc)
    else:
        found = "" if [tuple(r) for r in rows] == [("ok",)] else " ".join(str(r[0]) for r in rows)
    if found:
        found = " ".join(found.split())[:200]
        raise StateError(
            f"{path} is damaged (quick_check: {found}); restore it from a backup, or move it away to start empty"
        )


def _migrate(conn: sqlite3.Connection, path: Path, target: int, migration: Migration) -> None:
    """Apply one migration and set ``user_version = target`` in a single transaction."""
    stamps = [f"PRAGMA user_version = {target}"]
    if target == 1:
        stamps.append(f"PRAGMA application_id = {APPLICATION_ID}")
    try:
        if isinstance(migration, str):
            # executescript() commits any open transaction first, so BEGIN/COMMIT go inside it.
            conn.executescript(f"BEGIN IMMEDIATE;\n{migration}\n;{'; '.join(stamps)};\nCOMMIT;")
        else:
            conn.execute("BEGIN IMMEDIATE")
            migration(conn)
            for stamp in stamps:
                conn.execute(stamp)
            conn.execute("COMMIT")
    except Exception as exc:
        _undo(conn, None)
        raise StateError(f"migrating {path} to schema version {target} failed: {exc}") from exc
