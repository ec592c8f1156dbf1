"""Tests for the durable SQLite state store, on real files under tmp_path."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import pytest

import exporter.core.state as state_module
from exporter.core.state import (
    _SCHEMA_V1,
    APPLICATION_ID,
    DEFAULT_DELIVERY_TTL,
    MIGRATIONS,
    MIN_DELIVERY_TTL,
    InboxDelivery,
    StateError,
    StateStore,
    TransferRecord,
    ZerohashBalance,
    _reconciliation_columns_v2,
    delivery_digest,
)

DAY = 86400.0


class FakeClock:
    """A settable clock for expiry tests."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "exporter.db"


@pytest.fixture
def store(db_path: Path, clock: FakeClock):
    with StateStore.open(db_path, clock=clock) as s:
        yield s


def transfer(key: str = "tx-1", **changes: object) -> TransferRecord:
    record = TransferRecord(
        account="main",
        kind="deposit",
        key=key,
        status=15,
        status_name="pending",
        ticker="BTC",
        amount=Decimal("0.123456789012345678"),
        created_at=1_700_000_000.5,
        updated_at=1_700_000_010.25,
    )
    return replace(record, **changes)


def zh_balance(balance: str = "10.5", timestamp: float = 1_700_000_000.0, **changes: object) -> ZerohashBalance:
    b = ZerohashBalance(
        participant_code="CUST42",
        account_group="PLATX1",
        account_label="general",
        account_type="available",
        asset="BTC",
        balance=Decimal(balance),
        timestamp=timestamp,
        run_id="run-1",
    )
    return replace(b, **changes)


def delivery(delivery_id: str, received_at: float, **changes: object) -> InboxDelivery:
    """An accepted WhiteBIT delivery as the receiver stores it: its body as received and the signed headers."""
    d = InboxDelivery(
        provider="whitebit",
        account="main",
        delivery_id=delivery_id,
        method="deposit.processed",
        received_at=received_at,
        body=json.dumps({"id": delivery_id}, separators=(",", ":")).encode(),
        headers={"X-TXC-APIKEY": "key-1", "X-TXC-SIGNATURE": f"sig-{delivery_id}"},
    )
    return replace(d, **changes)


def inbox(store: StateStore) -> list[InboxDelivery]:
    """Every inbox row, in the order received."""
    return store.inbox_after(0, 1_000_000)


def derive_all(store: StateStore) -> None:
    """Move the inbox cursor past every row, as the inbox consumer does once it has derived them."""
    store.set_inbox_cursor(store.last_inbox_seq())


@contextmanager
def raw(path: Path) -> Iterator[sqlite3.Connection]:
    """A second, independent connection: it only sees what has been committed."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        yield conn
    finally:
        conn.close()


# -- opening -------------------------------------------------------------------------------


def test_open_creates_parent_directories_and_the_latest_schema(db_path: Path) -> None:
    assert not db_path.parent.exists()
    with StateStore.open(db_path) as s:
        assert s.path == db_path
        assert s.schema_version == len(MIGRATIONS)
    assert db_path.is_file()


@pytest.mark.parametrize(("durability", "synchronous"), [("process", 1), ("power", 2)])
def test_open_configures_wal_foreign_keys_busy_timeout_and_durability(
    db_path: Path, durability: str, synchronous: int
) -> None:
    with StateStore.open(db_path, durability=durability) as s:  # type: ignore[arg-type]
        conn = s._conn()  # white-box: these pragmas are per connection, invisible from outside
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous  # 1 NORMAL, 2 FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0


def test_open_rejects_an_unknown_durability(db_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        StateStore.open(db_path, durability="disk")  # type: ignore[arg-type]


def test_open_refuses_a_file_that_is_not_sqlite_and_leaves_it_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    content = b"this is definitely not an SQLite database\n" * 200
    path.write_bytes(content)
    with pytest.raises(StateError, match="not a usable SQLite state file"):
        StateStore.open(path)
    assert path.read_bytes() == content


def test_open_refuses_a_schema_written_by_a_newer_exporter(db_path: Path) -> None:
    StateStore.open(db_path).close()
    with raw(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(StateError, match="written by a newer whitebit-exporter"):
        StateStore.open(db_path)


def test_open_refuses_another_programs_sqlite_database(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with raw(path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    with pytest.raises(StateError, match="another program"):
        StateStore.open(path)
    with raw(path) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["invoices"]


def test_open_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot open state file"):
        StateStore.open(tmp_path)


def test_calls_after_close_raise_state_error_and_close_is_idempotent(db_path: Path) -> None:
    s = StateStore.open(db_path)
    s.close()
    s.close()
    with pytest.raises(StateError, match="closed"):
        s.highest_nonce("main")
    with pytest.raises(StateError, match="closed"):
        s.set_cursor("main", "history", "1")


def test_reopening_keeps_everything_that_was_written(db_path: Path, clock: FakeClock) -> None:
    start = clock.now
    with StateStore.open(db_path, clock=clock) as s:
        seq = s.add_delivery(delivery("d-1", clock.now, nonce=42))
        assert seq is not None
        s.raise_nonce("main", 42)
        s.put_transfer(transfer(details={"address": "bc1q", "memo": None}))
        s.set_cursor("main", "history", "offset=100")
        s.apply_zerohash_balance(zh_balance("7.000000001"))
    clock.now += 2 * DAY  # at least 48 h of dedupe memory across restarts (README.md#durable-state)
    with StateStore.open(db_path, clock=clock) as s:
        assert inbox(s) == [replace(delivery("d-1", start, nonce=42), seq=seq, expires_at=start + DEFAULT_DELIVERY_TTL)]
        assert s.delivery_seen("whitebit", "main", "d-1")
        assert s.add_delivery(delivery("d-1", clock.now)) is None
        assert s.highest_nonce("main") == 42
        assert s.get_transfer("main", "deposit", "tx-1") == transfer(details={"address": "bc1q", "memo": None})
        assert s.get_cursor("main", "history") == "offset=100"
        assert s.zerohash_balances() == [zh_balance("7.000000001")]


# -- migrations ----------------------------------------------------------------------------


def _add_transfer_note(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE transfers ADD COLUMN note TEXT NOT NULL DEFAULT 'none'")
    conn.execute("CREATE TABLE extra (k TEXT PRIMARY KEY)")


def test_migrating_a_hand_made_v1_file_keeps_its_data(db_path: Path) -> None:
    db_path.parent.mkdir(parents=True)
    with raw(db_path) as conn:
        conn.executescript(MIGRATIONS[0])  # type: ignore[arg-type]
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO nonces (account, highest, updated_at) VALUES ('main', 9, 1.0)")
        conn.execute("INSERT INTO cursors (account, name, value, updated_at) VALUES ('main', 'history', 'c1', 1.0)")
        conn.execute(
            "INSERT INTO transfers VALUES ('main', 'withdraw', 'w-1', 3, 'pending', 'USDT', '12.50', 1.0, 2.0,"
            " 0, NULL, 1, 0, 0, 2, 12, '{\"a\":1}')"
        )

    with StateStore.open(db_path, migrations=(*MIGRATIONS, _add_transfer_note)) as s:
        assert s.schema_version == len(MIGRATIONS) + 1
        assert s.highest_nonce("main") == 9
        assert s.get_cursor("main", "history") == "c1"
        record = s.get_transfer("main", "withdraw", "w-1")
        assert record is not None
        assert (record.amount, record.webhook_seen, record.confirmations_required, record.details) == (
            Decimal("12.50"),
            True,
            12,
            {"a": 1},
        )
    with raw(db_path) as conn:
        assert conn.execute("SELECT note FROM transfers").fetchall() == [("none",)]
        assert conn.execute("SELECT count(*) FROM extra").fetchone() == (0,)


def _v1_transfer(conn: sqlite3.Connection, key: str, details: str, *, webhook_seen: int = 0) -> None:
    conn.execute(
        "INSERT INTO transfers VALUES ('main', 'deposit', ?, 15, 'pending', 'USDT', '5', 1.0, 2.0,"
        " 0, NULL, ?, 1, 0, NULL, NULL, ?)",
        (key, webhook_seen, details),
    )


def test_schema_v2_moves_reconciliation_fields_out_of_the_details_of_a_v1_file(db_path: Path) -> None:
    identity = {"transaction_id": "T-1", "unique_id": None, "network": "TRC20", "last_event": "history:15"}
    db_path.parent.mkdir(parents=True)
    with raw(db_path) as conn:
        conn.executescript(MIGRATIONS[0])  # type: ignore[arg-type]
        conn.execute("PRAGMA user_version = 1")
        rows = {
            "full": {**identity, "webhook_status": 3, "history_levels": {"1": 100.5, "2": 200}, "history_waived": 1},
            # Its webhook came before v1 kept how far: the status stays unknown, not made up.
            "legacy": {**identity, "history_levels": {"1": 100.0}},
            "plain": identity,
            # What the v1 reader ignored, and a level no version wrote, stay unset; a waiver that is
            # there but not an int waived every level.
            "odd": {"webhook_status": "3", "history_levels": {"1": "soon", "x": 5, "3": 7}, "history_waived": None},
            "huge-waiver": {"history_levels": [], "history_waived": 9},
        }
        for key, details in rows.items():
            _v1_transfer(conn, key, json.dumps(details), webhook_seen=int(key == "legacy"))
        _v1_transfer(conn, "unreadable", "{not json")

    with StateStore.open(db_path) as s:
        assert s.schema_version == len(MIGRATIONS) >= 2
        full = s.get_transfer("main", "deposit", "full")
        assert full is not None and full.details == identity
        assert (full.webhook_status, full.history_pending_at, full.history_final_at, full.history_waived) == (
            3,
            100.5,
            200.0,
            1,
        )
        legacy = s.get_transfer("main", "deposit", "legacy")
        assert legacy is not None and legacy.details == identity and legacy.webhook_seen
        assert (legacy.webhook_status, legacy.history_pending_at, legacy.history_final_at) == (None, 100.0, None)
        assert s.get_transfer("main", "deposit", "plain") == transfer(
            "plain",
            ticker="USDT",
            amount=Decimal(5),
            created_at=1.0,
            updated_at=2.0,
            history_seen=True,
            details=identity,
        )
        odd = s.get_transfer("main", "deposit", "odd")
        assert odd is not None and odd.details == {}
        assert (odd.webhook_status, odd.history_pending_at, odd.history_final_at, odd.history_waived) == (
            None,
            None,
            None,
            2,
        )
        huge = s.get_transfer("main", "deposit", "huge-waiver")
        assert huge is not None and (huge.history_pending_at, huge.history_waived) == (None, 2)
    with raw(db_path) as conn:
        # A row whose details cannot be parsed is left as it was instead of refusing the file.
        assert conn.execute("SELECT details, history_waived FROM transfers WHERE key = 'unreadable'").fetchone() == (
            "{not json",
            0,
        )


def test_migrating_a_hand_made_v2_file_moves_its_delivery_ids_into_the_inbox(db_path: Path, clock: FakeClock) -> None:
    start = clock.now
    remembered = [  # (provider, account, delivery_id, first_seen, expires_at), not in first_seen order
        ("whitebit", "main", "w-2", start - 5, start - 5 + DEFAULT_DELIVERY_TTL),
        ("whitebit", "trading", "w-3", start - 7, start - 7 + DEFAULT_DELIVERY_TTL),
        ("zerohash", "", "z-1", start - 9, start - 9 + DEFAULT_DELIVERY_TTL),
        ("whitebit", "main", "w-1", start - 10, start - 10 + DEFAULT_DELIVERY_TTL),
        # Expired and not yet purged: v2 took it as new again; in the inbox it waits for the purge.
        ("whitebit", "main", "w-old", start - 10 * DAY, start - 3 * DAY),
    ]
    db_path.parent.mkdir(parents=True)
    with raw(db_path) as conn:
        conn.executescript(_SCHEMA_V1)
        _reconciliation_columns_v2(conn)
        conn.execute("PRAGMA user_version = 2")
        conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.executemany("INSERT INTO webhook_deliveries VALUES (?, ?, ?, ?, ?)", remembered)
        conn.execute("INSERT INTO nonces (account, highest, updated_at) VALUES ('main', 9, 1.0)")

    with StateStore.open(db_path, clock=clock) as s:
        assert s.schema_version == len(MIGRATIONS)
        assert s.highest_nonce("main") == 9
        rows = inbox(s)
        seqs = [r.seq for r in rows]
        assert seqs == sorted(set(seqs))
        # In the order first seen, each id a row without a body (v2 never kept one), already derived.
        assert [(r.provider, r.account, r.delivery_id, r.received_at, r.expires_at) for r in rows] == sorted(
            remembered, key=lambda r: r[3]
        )
        assert {(r.method, r.body, str(r.headers), r.nonce, r.status, r.verdict, r.duplicates) for r in rows} == {
            ("", None, "{}", None, 200, "ok", 0)
        }
        assert s.inbox_cursor() == seqs[-1] == s.last_inbox_seq()
        assert s.inbox_backlog() == (0, None)
        assert s.last_deliveries("whitebit") == {"main": start - 5, "trading": start - 7}
        assert s.last_deliveries("zerohash") == {"": start - 9}
        for provider, account, delivery_id, *_ in remembered:
            assert s.delivery_seen(provider, account, delivery_id)
            assert s.add_delivery(delivery(delivery_id, clock.now, provider=provider, account=account)) is None
        assert [r.duplicates for r in inbox(s)] == [1] * len(remembered)
        # Derived, so the purge takes them as any other row: the expired one goes, the others stay.
        assert s.purge_inbox(DAY) == 1
        assert not s.delivery_seen("whitebit", "main", "w-old")
        assert [r.delivery_id for r in inbox(s)] == ["w-1", "z-1", "w-3", "w-2"]
        assert s.last_deliveries("whitebit") == {"main": start - 5, "trading": start - 7}
        new = s.add_delivery(delivery("w-new", clock.now))
        assert new is not None and new > seqs[-1]
    with raw(db_path) as conn:
        assert conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'webhook_deliveries'").fetchall() == []


@pytest.mark.parametrize(
    "broken",
    [
        "CREATE TABLE half_done (k TEXT); INSERT INTO no_such_table VALUES (1);",
        lambda conn: (conn.execute("CREATE TABLE half_done (k TEXT)"), conn.execute("SELECT * FROM nope")),
    ],
    ids=["sql-script", "function"],
)
def test_a_failing_migration_is_rolled_back_and_refused(db_path: Path, broken: object) -> None:
    with StateStore.open(db_path) as s:
        s.raise_nonce("main", 5)
    with pytest.raises(StateError, match=f"schema version {len(MIGRATIONS) + 1} failed"):
        StateStore.open(db_path, migrations=(*MIGRATIONS, broken))  # type: ignore[arg-type]
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'half_done'").fetchone() == (0,)
    with StateStore.open(db_path) as s:
        assert s.highest_nonce("main") == 5


# -- the webhook inbox ---------------------------------------------------------------------


def test_add_delivery_is_new_once_per_provider_account_and_id(store: StateStore, clock: FakeClock) -> None:
    now = clock.now
    first = store.add_delivery(delivery("d-1", now))
    assert first is not None
    assert store.add_delivery(delivery("d-1", now)) is None
    others = [
        store.add_delivery(delivery("d-1", now, account="other")),
        store.add_delivery(delivery("d-1", now, provider="zerohash", account="")),
        store.add_delivery(delivery("d-2", now)),
    ]
    seqs = [first, *(seq for seq in others if seq is not None)]
    assert len(seqs) == 4 and seqs == sorted(set(seqs))  # each new, each its own row
    assert store.delivery_seen("whitebit", "main", "d-1")
    assert store.delivery_seen("zerohash", "", "d-1")
    assert not store.delivery_seen("whitebit", "main", "d-3")
    assert not store.delivery_seen("zerohash", "main", "d-1")


def test_add_delivery_round_trips_every_field_in_the_order_received(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    sent = [
        delivery(
            "d-1",
            start,
            nonce=7,
            headers={"X-TXC-APIKEY": "key-1", "X-TXC-PAYLOAD": "eyJpZCI6ImQtMSJ9", "X-TXC-SIGNATURE": "ab12"},
        ),
        # The body exactly as received: its spacing, a trailing newline, bytes that are not UTF-8.
        delivery("d-2", start + 1.25, body=b'{"id": "d-2",\t"memo": "caf\xc3\xa9 \xff"}\n', nonce=3, verdict="late"),
        delivery(
            "d-3",
            start + 2.5,
            provider="zerohash",
            account="",
            method="account_balance.changed",
            headers={"X-ZH-Hook-Signature-256": "0f" * 32, "X-ZH-Hook-Timestamp": "1700000002"},
            status=202,
            verdict="nonce_regression",
        ),
        # Arrival order, not received_at, orders the rows (here a clock that stepped back).
        delivery("d-4", start + 2.0, headers={}),
    ]
    ttls = [DEFAULT_DELIVERY_TTL, MIN_DELIVERY_TTL, 30 * DAY, DEFAULT_DELIVERY_TTL]
    added = [store.add_delivery(d, ttl=ttl) for d, ttl in zip(sent, ttls, strict=True)]
    seqs = [seq for seq in added if seq is not None]
    assert len(seqs) == 4 and seqs == sorted(set(seqs))
    expected = [
        replace(d, seq=seq, expires_at=d.received_at + ttl) for d, seq, ttl in zip(sent, seqs, ttls, strict=True)
    ]
    assert inbox(store) == expected
    assert store.inbox_after(seqs[1], 1) == [expected[2]]
    assert store.inbox_after(seqs[3], 10) == []
    assert store.last_inbox_seq() == seqs[3]


def test_a_duplicate_is_counted_on_the_first_row_without_changing_it(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    first = delivery("d-1", start, nonce=7)
    seq = store.add_delivery(first)
    other = store.add_delivery(delivery("d-2", start + 1))
    assert seq is not None and other is not None
    rows = inbox(store)
    # Redeliveries with another body, nonce, verdict and expiry: only the count and the last time move.
    again = replace(first, received_at=start + 60, body=b'{"id":"d-1","retry":1}', nonce=8, verdict="late")
    assert store.add_delivery(again, ttl=30 * DAY) is None
    assert inbox(store) == [replace(rows[0], duplicates=1, last_duplicate_at=start + 60), rows[1]]
    assert store.add_delivery(replace(again, received_at=start + 120)) is None
    assert inbox(store) == [replace(rows[0], duplicates=2, last_duplicate_at=start + 120), rows[1]]
    assert store.last_inbox_seq() == other


def test_set_verdict_and_mark_derive_error_change_only_their_row(store: StateStore, clock: FakeClock) -> None:
    seqs = [store.add_delivery(delivery(f"d-{i}", clock.now + i)) for i in range(2)]
    assert seqs[0] is not None and seqs[1] is not None
    rows = inbox(store)
    store.set_verdict(seqs[0], "nonce_regression")
    store.mark_derive_error(seqs[1], "bad_json: params.amount is not a number")
    assert inbox(store) == [
        replace(rows[0], verdict="nonce_regression"),
        replace(rows[1], derive_error="bad_json: params.amount is not a number"),
    ]


def test_an_id_stays_a_duplicate_while_its_row_exists_and_is_new_again_once_purged(
    store: StateStore, clock: FakeClock
) -> None:
    start = clock.now
    assert DEFAULT_DELIVERY_TTL >= 2 * DAY
    first = store.add_delivery(delivery("d-1", start))
    assert first is not None
    derive_all(store)
    # Past the retention but inside its dedupe window: the purge empties the row and keeps the id.
    clock.now = start + DEFAULT_DELIVERY_TTL - 1
    assert store.purge_inbox(DAY) == 1
    assert store.delivery_seen("whitebit", "main", "d-1")
    assert store.add_delivery(delivery("d-1", clock.now)) is None
    # Past its expiry, but the row is still there: still a duplicate.
    clock.now = start + 2 * DEFAULT_DELIVERY_TTL
    assert store.delivery_seen("whitebit", "main", "d-1")
    assert store.add_delivery(delivery("d-1", clock.now)) is None
    assert store.purge_inbox(3 * DEFAULT_DELIVERY_TTL) == 0  # a longer retention keeps it
    assert store.add_delivery(delivery("d-1", clock.now)) is None
    # Past both: the row is deleted, after which the id is new again, with an expiry from now.
    assert store.purge_inbox(DAY) == 1
    assert not store.delivery_seen("whitebit", "main", "d-1")
    again = store.add_delivery(delivery("d-1", clock.now))
    assert again is not None and again > first
    assert store.inbox_backlog() == (1, clock.now)  # a new delivery, so one to derive
    assert inbox(store) == [replace(delivery("d-1", clock.now), seq=again, expires_at=clock.now + DEFAULT_DELIVERY_TTL)]


def test_add_delivery_honours_a_custom_ttl_and_refuses_one_below_48_hours(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    store.add_delivery(delivery("n-1", start, provider="zerohash", account=""), ttl=MIN_DELIVERY_TTL)
    store.add_delivery(delivery("n-2", start, provider="zerohash", account=""))
    assert [r.expires_at for r in inbox(store)] == [start + 2 * DAY, start + DEFAULT_DELIVERY_TTL]
    derive_all(store)
    clock.now = start + 2 * DAY
    assert store.purge_inbox(DAY) == 2  # n-1 is past its 48 h and deleted; n-2 is only emptied
    assert not store.delivery_seen("zerohash", "", "n-1")
    assert store.delivery_seen("zerohash", "", "n-2")
    last = store.last_inbox_seq()
    for bad in (MIN_DELIVERY_TTL - 1, 3600.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="at least"):
            store.add_delivery(delivery("n-3", clock.now), ttl=bad)
    assert not store.delivery_seen("whitebit", "main", "n-3")
    assert store.last_inbox_seq() == last


def test_purge_inbox_deletes_only_derived_rows_past_retention_and_expiry(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    store.add_delivery(delivery("old-1", start))
    store.add_delivery(delivery("old-2", start))
    young = delivery("young", start + DAY)
    young_seq = store.add_delivery(young)
    derive_all(store)
    clock.now = start + DEFAULT_DELIVERY_TTL
    # The old rows are past their expiry and the retention; the young one is inside both.
    retention = DEFAULT_DELIVERY_TTL - DAY / 2
    assert store.purge_inbox(retention) == 2
    assert store.purge_inbox(retention) == 0
    assert inbox(store) == [replace(young, seq=young_seq, expires_at=start + DAY + DEFAULT_DELIVERY_TTL)]


def test_purge_inbox_never_deletes_or_empties_a_row_not_yet_derived(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    sent = [delivery(f"d-{i}", start + i) for i in range(3)]
    seqs = [store.add_delivery(d) for d in sent]
    assert seqs[0] is not None
    pending = [
        replace(d, seq=seq, expires_at=d.received_at + DEFAULT_DELIVERY_TTL) for d, seq in zip(sent, seqs, strict=True)
    ][1:]
    store.set_inbox_cursor(seqs[0])
    # Past the retention, inside the dedupe window: only the derived row is emptied.
    clock.now = start + 2 * DAY
    assert store.purge_inbox(DAY) == 1
    assert inbox(store)[0].body is None and inbox(store)[1:] == pending
    # Past both: only the derived row is deleted; the others wait, whole, however old they are.
    clock.now = start + 10 * DEFAULT_DELIVERY_TTL
    assert store.purge_inbox(DAY) == 1
    assert store.purge_inbox(DAY) == 0
    assert inbox(store) == pending
    assert store.inbox_backlog() == (2, start + 1)
    store.set_inbox_cursor(pending[0].seq)
    assert store.purge_inbox(DAY) == 1
    assert inbox(store) == pending[1:]


def test_a_delivery_after_the_purge_deleted_the_newest_rows_is_still_to_be_derived(
    store: StateStore, clock: FakeClock
) -> None:
    start = clock.now
    for i in range(3):
        store.add_delivery(delivery(f"d-{i}", start))
    derive_all(store)
    derived_up_to = store.inbox_cursor()
    # A quiet month: every row is past the retention and its expiry, and the purge deletes them all.
    clock.now = start + 31 * DAY
    assert store.purge_inbox(30 * DAY) == 3
    assert inbox(store) == []
    seq = store.add_delivery(delivery("d-new", clock.now))
    # Its seq must come after every row already derived, or the consumer (which reads after the
    # cursor) never derives it.
    assert seq is not None and seq > derived_up_to == store.inbox_cursor()
    assert store.inbox_backlog() == (1, clock.now)
    assert [r.delivery_id for r in store.inbox_after(store.inbox_cursor(), 10)] == ["d-new"]


def test_purge_inbox_empties_a_row_past_retention_but_keeps_its_id_inside_the_dedupe_window(
    store: StateStore, clock: FakeClock
) -> None:
    start = clock.now
    old = delivery("d-old", start)
    old_seq = store.add_delivery(old)
    recent = delivery("d-recent", start + 1.5 * DAY)
    recent_seq = store.add_delivery(recent)
    derive_all(store)
    clock.now = start + 2 * DAY
    assert store.purge_inbox(DAY) == 1
    assert store.purge_inbox(DAY) == 0  # an emptied row is not counted again
    emptied = replace(old, seq=old_seq, expires_at=start + DEFAULT_DELIVERY_TTL, body=None, headers={})
    assert inbox(store) == [
        emptied,
        replace(recent, seq=recent_seq, expires_at=recent.received_at + DEFAULT_DELIVERY_TTL),
    ]
    with raw(store.path) as conn:
        assert conn.execute("SELECT delivery_id FROM inbox WHERE body IS NULL AND headers IS NULL").fetchall() == [
            ("d-old",)
        ]
    # Its id is still a duplicate, counted on the emptied row.
    assert store.delivery_seen("whitebit", "main", "d-old")
    assert store.add_delivery(delivery("d-old", clock.now)) is None
    assert inbox(store)[0] == replace(emptied, duplicates=1, last_duplicate_at=clock.now)
    # Past its expiry it is deleted (and the recent one, now past the retention too, emptied).
    clock.now = start + DEFAULT_DELIVERY_TTL
    assert store.purge_inbox(DAY) == 2
    assert [(r.delivery_id, r.body) for r in inbox(store)] == [("d-recent", None)]
    assert not store.delivery_seen("whitebit", "main", "d-old")
    assert store.add_delivery(delivery("d-old", clock.now)) is not None


def test_purge_inbox_works_in_batches_of_its_limit_and_keeps_last_deliveries(
    store: StateStore, clock: FakeClock
) -> None:
    start = clock.now
    # Seven rows past their expiry (deleted), received newest first so that later batches delete
    # older ones; then five rows inside their dedupe window (emptied).
    for i in range(7):
        account = ("main", "trading")[i % 2]
        store.add_delivery(delivery(f"gone-{i}", start + 7 - i, account=account), ttl=MIN_DELIVERY_TTL)
    for i in range(5):
        store.add_delivery(delivery(f"kept-{i}", start + i))
    derive_all(store)
    last = store.last_deliveries("whitebit")
    assert last == {"main": start + 7, "trading": start + 6}
    clock.now = start + 3 * DAY
    counts: list[int] = []
    for _ in range(10):
        bodies = sum(r.body is not None for r in inbox(store))
        count = store.purge_inbox(DAY, limit=3)
        counts.append(count)
        # Every row it counted lost its body (deleted or emptied), and the feeds' newest time stays.
        assert bodies - sum(r.body is not None for r in inbox(store)) == count
        assert store.last_deliveries("whitebit") == last
        if count == 0:
            break
    assert counts == [3, 3, 3, 3, 0]
    assert [(r.delivery_id, r.body) for r in inbox(store)] == [(f"kept-{i}", None) for i in range(5)]


def test_the_newest_delivery_of_each_feed_survives_the_purge(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    store.add_delivery(delivery("a", start))
    store.add_delivery(delivery("b", start + 10.5))
    store.add_delivery(delivery("c", start + 10.5, account="trading"))
    store.add_delivery(delivery("d", start + 10.5, provider="zerohash", account=""))
    assert store.last_deliveries("whitebit") == {"main": start + 10.5, "trading": start + 10.5}
    derive_all(store)
    clock.now = start + DEFAULT_DELIVERY_TTL + 11
    assert store.purge_inbox(DAY) == 4
    assert inbox(store) == []
    assert store.last_deliveries("whitebit") == {"main": start + 10.5, "trading": start + 10.5}
    assert store.last_deliveries("zerohash") == {"": start + 10.5}
    # A newer delivery wins; purging it later keeps the newer time, never an older one.
    newest = clock.now
    store.add_delivery(delivery("e", newest))
    assert store.last_deliveries("whitebit")["main"] == newest
    derive_all(store)
    clock.now += DEFAULT_DELIVERY_TTL + 1
    assert store.purge_inbox(DAY) == 1
    assert store.last_deliveries("whitebit") == {"main": newest, "trading": start + 10.5}
    store.add_delivery(delivery("f", start))  # received by a clock that stepped back
    derive_all(store)
    assert store.purge_inbox(DAY) == 1
    assert store.last_deliveries("whitebit") == {"main": newest, "trading": start + 10.5}


def test_first_watched_is_set_once_and_kept_across_reopening(db_path: Path, clock: FakeClock) -> None:
    with StateStore.open(db_path, clock=clock) as store:
        first = clock.now
        assert store.first_watched("main", "whitebit_webhook") == first
        clock.now += 100
        assert store.first_watched("main", "whitebit_webhook") == first
        assert store.first_watched("", "zerohash_webhook") == first + 100
    clock.now += 100
    with StateStore.open(db_path, clock=clock) as store:
        assert store.first_watched("main", "whitebit_webhook") == first


# -- nonces --------------------------------------------------------------------------------


def test_raise_nonce_keeps_the_highest_and_says_whether_it_was_raised(store: StateStore) -> None:
    assert store.highest_nonce("main") is None
    assert store.raise_nonce("main", 100) is True  # the first
    assert store.raise_nonce("main", 250) is True
    assert store.raise_nonce("main", 50) is False  # a regression does not lower the record
    assert store.raise_nonce("main", 250) is False  # nor does an equal one count as raised
    assert store.highest_nonce("main") == 250
    assert store.highest_nonce("other") is None
    big = 2**63 - 1
    assert store.raise_nonce("other", big) is True
    assert store.highest_nonce("other") == big
    with store.transaction():  # inside a caller's transaction too
        assert store.raise_nonce("main", 251) is True
        assert store.raise_nonce("main", 251) is False
    assert store.highest_nonce("main") == 251


@pytest.mark.parametrize("bad", [True, 1.5, "7", 2**63, -(2**63) - 1])
def test_raise_nonce_rejects_what_is_not_a_64_bit_integer(store: StateStore, bad: object) -> None:
    with pytest.raises(ValueError, match="nonce"):
        store.raise_nonce("main", bad)  # type: ignore[arg-type]
    assert store.highest_nonce("main") is None


# -- transfers -----------------------------------------------------------------------------


def test_put_transfer_round_trips_every_field(store: StateStore) -> None:
    record = transfer(
        final=True,
        outcome="successful",
        webhook_seen=True,
        history_seen=True,
        missed_counted=True,
        confirmations_actual=3,
        confirmations_required=6,
        webhook_status=7,
        history_pending_at=1_700_000_020.5,
        history_final_at=1_700_000_030.0,
        history_waived=2,
        details={"hash": "0xabc", "network": "ERC20", "fee": "0.1", "nested": [1, {"k": None}]},
    )
    store.put_transfer(record)
    assert store.get_transfer("main", "deposit", "tx-1") == record
    assert store.get_transfer("main", "withdraw", "tx-1") is None
    assert store.get_transfer("other", "deposit", "tx-1") is None


def test_amounts_are_stored_as_exact_decimal_text(store: StateStore) -> None:
    store.put_transfer(transfer(amount=Decimal("123456789.123456789012345678")))
    store.put_transfer(transfer("tx-2", amount=Decimal("1E-8")))
    store.apply_zerohash_balance(zh_balance("0.10"))
    stored = store.get_transfer("main", "deposit", "tx-1")
    assert stored is not None and stored.amount == Decimal("123456789.123456789012345678")
    assert store.zerohash_balances()[0].balance == Decimal("0.10")
    with raw(store.path) as conn:
        rows = conn.execute("SELECT typeof(amount), amount FROM transfers ORDER BY key").fetchall()
        assert rows == [("text", "123456789.123456789012345678"), ("text", "0.00000001")]
        assert conn.execute("SELECT typeof(balance), balance FROM zerohash_balances").fetchall() == [("text", "0.10")]


def test_put_transfer_replaces_the_record_with_the_same_key(store: StateStore) -> None:
    store.put_transfer(transfer())
    updated = transfer(status=3, status_name="successful", final=True, outcome="successful", updated_at=1_700_000_100.0)
    store.put_transfer(updated)
    assert store.transfers() == [updated]


def test_transfers_filter_by_account_and_open_only(store: StateStore) -> None:
    a1 = transfer("a1", created_at=3.0)
    a2 = transfer("a2", kind="withdraw", created_at=1.0, final=True, outcome="canceled")
    a3 = transfer("a3", created_at=2.0)
    b1 = transfer("b1", account="second", created_at=0.5)
    for r in (a1, a2, a3, b1):
        store.put_transfer(r)
    assert store.transfers() == [a2, a3, a1, b1]
    assert store.transfers("main") == [a2, a3, a1]
    assert store.transfers("main", open_only=True) == [a3, a1]
    assert store.transfers(open_only=True) == [a3, a1, b1]
    assert store.transfers("nobody") == []


def test_purge_final_transfers_removes_only_old_final_records(store: StateStore) -> None:
    old_final = transfer("old-final", final=True, outcome="successful", updated_at=100.0)
    new_final = transfer("new-final", final=True, outcome="successful", updated_at=300.0)
    old_open = transfer("old-open", updated_at=100.0)
    for r in (old_final, new_final, old_open):
        store.put_transfer(r)
    assert store.purge_final_transfers(older_than=200.0) == 1
    assert {r.key for r in store.transfers()} == {"new-final", "old-open"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "transfer"}, "kind"),
        ({"status": "15"}, "status"),
        ({"confirmations_actual": 1.0}, "confirmations_actual"),
        ({"details": ["not", "a", "dict"]}, "details"),
        ({"amount": 1.5}, "amount"),
        ({"amount": Decimal("NaN")}, "amount"),
        ({"amount": Decimal("Infinity")}, "amount"),
        ({"updated_at": float("inf")}, "updated_at"),
        ({"details": {"amount": Decimal("1")}}, "details"),
        ({"details": {"x": float("nan")}}, "details"),
        ({"webhook_status": "3"}, "webhook_status"),
        ({"history_pending_at": float("nan")}, "history_pending_at"),
        ({"history_final_at": "200"}, "history_final_at"),
        ({"history_waived": 3}, "history_waived"),
        ({"history_waived": True}, "history_waived"),
    ],
)
def test_put_transfer_rejects_bad_records_without_writing(
    store: StateStore, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        store.put_transfer(transfer(**changes))
    assert store.transfers() == []


# -- cursors -------------------------------------------------------------------------------


def test_cursors_are_stored_per_account_and_name(store: StateStore) -> None:
    assert store.get_cursor("main", "history") is None
    store.set_cursor("main", "history", "1700000000")
    store.set_cursor("main", "history", "1700000100")
    store.set_cursor("main", "other", "x")
    store.set_cursor("second", "history", "5")
    assert store.get_cursor("main", "history") == "1700000100"
    assert store.get_cursor("main", "other") == "x"
    assert store.get_cursor("second", "history") == "5"


# -- Zero Hash balances --------------------------------------------------------------------


def test_apply_zerohash_balance_ignores_older_events_and_applies_ties_and_newer(store: StateStore) -> None:
    assert store.apply_zerohash_balance(zh_balance("10", 1000.0))
    assert not store.apply_zerohash_balance(zh_balance("3", 999.999))
    assert store.zerohash_balances() == [zh_balance("10", 1000.0)]
    assert store.apply_zerohash_balance(zh_balance("11", 1000.0, run_id="run-2"))
    assert store.zerohash_balances() == [zh_balance("11", 1000.0, run_id="run-2")]
    assert store.apply_zerohash_balance(zh_balance("12", 1001.0, run_id=None))
    assert store.zerohash_balances() == [zh_balance("12", 1001.0, run_id=None)]


def test_zerohash_balances_are_kept_per_account_key(store: StateStore) -> None:
    base = zh_balance("1", 1000.0)
    others = [
        replace(base, participant_code="CUST43"),
        replace(base, account_group="PLATX2"),
        replace(base, account_label="savings"),
        replace(base, account_type="collateral"),
        replace(base, asset="USD"),
    ]
    for b in [base, *others]:
        assert store.apply_zerohash_balance(b)
    # A newer event for one account does not touch the others.
    assert store.apply_zerohash_balance(replace(base, balance=Decimal("2"), timestamp=2000.0))
    stored = store.zerohash_balances()
    assert len(stored) == 6
    assert replace(base, balance=Decimal("2"), timestamp=2000.0) in stored
    assert all(b in stored for b in others)


def test_apply_zerohash_balance_rejects_non_decimal_balances(store: StateStore) -> None:
    with pytest.raises(ValueError, match="balance"):
        store.apply_zerohash_balance(replace(zh_balance(), balance=0.5))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timestamp"):
        store.apply_zerohash_balance(zh_balance(timestamp=float("nan")))
    assert store.zerohash_balances() == []


# -- transactions --------------------------------------------------------------------------


def write_one_of_everything(s: StateStore, n: int = 1) -> None:
    assert s.add_delivery(delivery(f"d-{n}", 1_700_000_000.0 + n, nonce=n)) is not None
    s.raise_nonce("main", n)
    s.put_transfer(transfer(f"tx-{n}"))
    s.set_cursor("main", "history", str(n))
    s.apply_zerohash_balance(zh_balance(str(n), float(n)))


def test_nothing_inside_a_transaction_is_committed_before_it_ends(store: StateStore) -> None:
    tables = ("inbox", "nonces", "transfers", "cursors", "zerohash_balances")
    with raw(store.path) as observer:

        def counts() -> dict[str, int]:
            return {table: observer.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in tables}

        before = counts()
        with store.transaction():
            write_one_of_everything(store)
            with store.transaction():  # nested: still not committed
                store.set_cursor("main", "other", "x")
            assert counts() == before
            assert store.highest_nonce("main") == 1  # but visible to the store itself
            assert store.delivery_seen("whitebit", "main", "d-1")
        after = {table: before[table] + 1 for table in tables}
        after["cursors"] += 1  # "history" and "other"
        assert counts() == after
        assert observer.execute("SELECT highest FROM nonces").fetchone() == (1,)
        assert observer.execute("SELECT delivery_id, body FROM inbox").fetchall() == [("d-1", b'{"id":"d-1"}')]


def test_an_exception_inside_a_transaction_rolls_all_of_it_back(store: StateStore) -> None:
    def write_then_fail() -> None:
        with store.transaction():
            write_one_of_everything(store)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert not store.delivery_seen("whitebit", "main", "d-1")
    assert inbox(store) == []
    assert store.highest_nonce("main") is None
    assert store.transfers() == []
    assert store.get_cursor("main", "history") is None
    assert store.zerohash_balances() == []
    # The store is usable afterwards and the same writes now succeed and persist.
    with store.transaction():
        write_one_of_everything(store)
    assert store.delivery_seen("whitebit", "main", "d-1")


def test_an_exception_in_a_nested_transaction_caught_outside_undoes_only_the_nested_part(
    store: StateStore,
) -> None:
    def nested_then_fail() -> None:
        with store.transaction():
            store.set_cursor("main", "undone", "1")
            raise KeyError("inner")

    with store.transaction():
        store.set_cursor("main", "kept", "1")
        with pytest.raises(KeyError, match="inner"):
            nested_then_fail()
        store.set_cursor("main", "after", "1")
    assert store.get_cursor("main", "kept") == "1"
    assert store.get_cursor("main", "undone") is None
    assert store.get_cursor("main", "after") == "1"


def test_a_failed_call_inside_a_transaction_leaves_earlier_calls_in_it(store: StateStore) -> None:
    with store.transaction():
        store.raise_nonce("main", 7)
        with pytest.raises(ValueError, match="kind"):
            store.put_transfer(transfer(kind="bogus"))
    assert store.highest_nonce("main") == 7


# -- asyncio -------------------------------------------------------------------------------


async def test_many_tasks_on_one_loop_share_the_store_safely(store: StateStore, clock: FakeClock) -> None:
    ids = [f"d-{i}" for i in range(30)]
    bases = (0, 1000, 500, 2000)

    async def worker(nonce_base: int) -> list[str]:
        won = []
        for i, delivery_id in enumerate(ids):
            with store.transaction():
                if store.add_delivery(delivery(delivery_id, clock.now, nonce=nonce_base + i)) is not None:
                    won.append(delivery_id)
                store.raise_nonce("main", nonce_base + i)
            await asyncio.sleep(0)
        return won

    results = await asyncio.gather(*(worker(base) for base in bases))
    claimed = [d for won in results for d in won]
    assert sorted(claimed) == sorted(ids)  # each delivery is new to exactly one task
    # One row per id, and every other task's delivery counted on it as a duplicate.
    assert sorted((r.delivery_id, r.duplicates) for r in inbox(store)) == sorted((d, len(bases) - 1) for d in ids)
    assert store.highest_nonce("main") == 2000 + len(ids) - 1


async def test_another_task_cannot_join_a_transaction_left_open_across_an_await(store: StateStore) -> None:
    entered, other_done = asyncio.Event(), asyncio.Event()
    errors: list[BaseException] = []

    async def holder() -> None:
        with store.transaction():
            store.set_cursor("main", "holder", "1")
            entered.set()
            await asyncio.wait_for(other_done.wait(), timeout=5)

    async def intruder() -> None:
        await asyncio.wait_for(entered.wait(), timeout=5)
        try:
            store.raise_nonce("main", 1)
        except StateError as exc:
            errors.append(exc)
        finally:
            other_done.set()

    await asyncio.gather(holder(), intruder())
    assert len(errors) == 1 and "never await inside" in str(errors[0])
    assert store.get_cursor("main", "holder") == "1"
    assert store.highest_nonce("main") is None


# -- history evidence and the evidence horizon ---------------------------------------------------


def history_rows(store: StateStore) -> list[tuple[str, int, int, str]]:
    return [(e.account, e.first_feed, e.last_feed, e.record) for e in store.history_after(0, 100)]


def test_a_history_record_is_kept_once_and_each_feed_that_reads_it_moves_it_on(
    store: StateStore, clock: FakeClock
) -> None:
    first = store.record_history("main", [("d1", '{"a":1}'), ("d2", '{"a":2}')], observed_at=clock.now, baseline=True)
    second = store.record_history(
        "main", [("d2", '{"a":2}'), ("d3", '{"a":3}')], observed_at=clock.now + 60, baseline=False
    )
    other = store.record_history("other", [("d1", '{"a":1}')], observed_at=clock.now + 61, baseline=False)

    assert [(f.seq, f.account, f.at, f.baseline) for f in store.history_feeds_after(0, 10)] == [
        (first, "main", clock.now, True),
        (second, "main", clock.now + 60, False),
        (other, "other", clock.now + 61, False),
    ]
    assert history_rows(store) == [
        ("main", first, first, '{"a":1}'),
        ("main", first, second, '{"a":2}'),
        ("main", second, second, '{"a":3}'),
        ("other", other, other, '{"a":1}'),
    ]
    assert store.evidence_counts() == (0, 4)
    assert store.record_history("main", [], observed_at=clock.now + 120, baseline=False) > other  # a feed, no record


def test_purge_history_keeps_a_record_still_read_and_moves_the_horizon(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    store.record_history("main", [("old", "{}"), ("kept", "[]")], observed_at=start, baseline=True)
    store.record_history("main", [("kept", "[]")], observed_at=start + 20 * DAY, baseline=False)
    clock.now = start + 31 * DAY
    assert store.evidence_horizon() is None

    assert store.purge_history(30 * DAY) == 1  # the old record and the first feed
    # A record a poll still reads stays, however old its first reading: a transfer in flight for weeks.
    assert [row[3] for row in history_rows(store)] == ["[]"]
    assert [f.at for f in store.history_feeds_after(0, 10)] == [start + 20 * DAY]
    assert store.evidence_horizon() == clock.now - 30 * DAY
    assert store.purge_history(30 * DAY) == 0
    clock.now = start + 40 * DAY
    assert store.purge_history(60 * DAY) == 0
    assert store.evidence_horizon() == start + DAY  # never moved back


def test_purge_inbox_moves_the_horizon_when_it_removes_a_body(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    store.add_delivery(delivery("old", start))
    derive_all(store)
    clock.now = start + DAY
    assert store.purge_inbox(DAY / 2) == 1  # emptied (inside the dedupe window)
    assert store.evidence_horizon() == clock.now - DAY / 2


def test_reset_derived_state_keeps_older_transfers_and_rewinds_the_inbox(store: StateStore, clock: FakeClock) -> None:
    store.put_transfer(transfer("older", created_at=100.0))
    store.put_transfer(transfer("newer", created_at=200.0))
    store.apply_zerohash_balance(zh_balance())
    seq = store.add_delivery(delivery("d", clock.now))
    assert seq is not None
    derive_all(store)
    store.mark_derive_error(seq, "no")

    with store.transaction():
        assert store.reset_derived_state(keep_transfers_created_before=150.0) == (1, 1)

    assert [t.key for t in store.transfers()] == ["older"]
    assert store.zerohash_balances() == [] and store.inbox_cursor() == 0
    assert inbox(store)[0].derive_error is None


def test_upgrading_to_v4_sets_the_horizon_where_evidence_was_not_kept(db_path: Path, clock: FakeClock) -> None:
    with StateStore.open(db_path, clock=clock, migrations=MIGRATIONS[:3]):
        pass
    with raw(db_path) as conn:  # as a v2 id migrated into v3: no body
        conn.execute(
            "INSERT INTO inbox (provider, account, delivery_id, method, received_at, expires_at, status, verdict)"
            " VALUES ('whitebit', 'main', 'kept', '', 5.0, 9e9, 200, 'ok')"
        )
    with StateStore.open(db_path, clock=clock) as s:
        assert s.evidence_horizon() == 5.0  # no transfers: the body-less rows are all that is missing


def test_migrating_to_v5_indexes_the_derived_rows_and_keeps_every_id_a_duplicate(
    db_path: Path, clock: FakeClock
) -> None:
    with StateStore.open(db_path, clock=clock, migrations=MIGRATIONS[:4]):
        pass
    with raw(db_path) as conn:
        for n, delivery_id in enumerate(["derived-1", "derived-2", "pending-3", "purged-4"], start=1):
            conn.execute(
                "INSERT INTO inbox (seq, provider, account, delivery_id, method, received_at, expires_at, status,"
                " verdict, body) VALUES (?, 'whitebit', 'main', ?, 'deposit.processed', ?, 9e9, 200, 'ok', x'7b7d')",
                (n, delivery_id, clock.now + n),
            )
        conn.execute("DELETE FROM inbox WHERE seq = 4")  # the newest row was purged: its seq is never reused
        conn.execute(
            "INSERT INTO cursors (account, name, value, updated_at) VALUES ('', 'inbox:applied', '2', 0)"
            " ON CONFLICT (account, name) DO UPDATE SET value = '2'"
        )

    with StateStore.open(db_path, clock=clock) as s:
        assert s.schema_version == len(MIGRATIONS)
        with raw(db_path) as conn:
            rows = conn.execute("SELECT seq, delivery_id, digest FROM inbox ORDER BY seq").fetchall()
            indexed = conn.execute("SELECT seq, digest FROM inbox_ids ORDER BY seq").fetchall()
        assert [(seq, digest) for seq, _, digest in rows] == [
            (seq, delivery_digest("whitebit", "main", delivery_id)) for seq, delivery_id, _ in rows
        ]
        assert indexed == [(seq, digest) for seq, _, digest in rows if seq <= 2]
        for delivery_id in ("derived-1", "derived-2", "pending-3"):
            assert s.add_delivery(delivery(delivery_id, clock.now)) is None
        assert [r.duplicates for r in inbox(s)] == [1, 1, 1]
        assert s.add_delivery(delivery("new-5", clock.now)) == 5


def test_a_duplicate_is_found_before_and_after_its_row_is_derived_and_across_a_restart(
    db_path: Path, clock: FakeClock
) -> None:
    with StateStore.open(db_path, clock=clock) as s:
        first = s.add_delivery(delivery("a", clock.now))
        assert first is not None
        assert s.add_delivery(delivery("a", clock.now)) is None  # not derived yet: found in memory
        with s.transaction():  # a savepoint after it is undone, the row stays
            s.add_delivery(delivery("b", clock.now))
            with pytest.raises(ZeroDivisionError), s.transaction():
                raise ZeroDivisionError
        assert s.delivery_seen("whitebit", "main", "b")

        def store_then_fail() -> None:
            with s.transaction():
                s.add_delivery(delivery("c", clock.now))
                raise RuntimeError

        # Rolled back: the row it stored is gone, so its memory of it must not make "c" a duplicate.
        with pytest.raises(RuntimeError):
            store_then_fail()
        assert not s.delivery_seen("whitebit", "main", "c")
        assert s.add_delivery(delivery("c", clock.now)) is not None  # really new
        derive_all(s)
        assert s.add_delivery(delivery("a", clock.now)) is None  # derived: found by its digest in inbox_ids
        assert s.add_delivery(delivery("a", clock.now, account="other")) is not None  # another account's id
        pending = s.add_delivery(delivery("d", clock.now))
    with StateStore.open(db_path, clock=clock) as s:
        assert s.add_delivery(delivery("d", clock.now)) is None  # not derived before the restart
        assert s.add_delivery(delivery("c", clock.now)) is None
        assert [r.duplicates for r in inbox(s) if r.delivery_id == "a"] == [2, 0]
        assert pending is not None and s.get_delivery(pending) is not None


def test_two_deliveries_sharing_a_digest_are_both_kept(
    store: StateStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "delivery_digest", lambda provider, account, delivery_id: 42)
    assert store.add_delivery(delivery("x", clock.now)) is not None
    assert store.add_delivery(delivery("y", clock.now)) is not None
    assert store.add_delivery(delivery("y", clock.now)) is None
    derive_all(store)
    assert store.add_delivery(delivery("x", clock.now)) is None
    assert store.add_delivery(delivery("z", clock.now)) is not None
    assert [(r.delivery_id, r.duplicates) for r in inbox(store)] == [("x", 1), ("y", 1), ("z", 0)]
