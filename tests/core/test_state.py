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

from exporter.core.state import (
    DEFAULT_DELIVERY_TTL,
    MIGRATIONS,
    StateError,
    StateStore,
    TransferRecord,
    ZerohashBalance,
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
    with StateStore.open(db_path, clock=clock) as s:
        assert s.remember_delivery("whitebit", "main", "d-1")
        s.raise_nonce("main", 42)
        s.put_transfer(transfer(details={"address": "bc1q", "memo": None}))
        s.set_cursor("main", "history", "offset=100")
        s.apply_zerohash_balance(zh_balance("7.000000001"))
    clock.now += 2 * DAY  # at least 48 h of dedupe memory across restarts (README.md#durable-state)
    with StateStore.open(db_path, clock=clock) as s:
        assert s.delivery_seen("whitebit", "main", "d-1")
        assert not s.remember_delivery("whitebit", "main", "d-1")
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


# -- webhook deliveries --------------------------------------------------------------------


def test_remember_delivery_reports_new_once_per_provider_account_and_id(store: StateStore) -> None:
    assert store.remember_delivery("whitebit", "main", "d-1")
    assert not store.remember_delivery("whitebit", "main", "d-1")
    assert store.remember_delivery("whitebit", "other", "d-1")
    assert store.remember_delivery("zerohash", "main", "d-1")
    assert store.remember_delivery("whitebit", "main", "d-2")
    assert store.delivery_seen("whitebit", "main", "d-1")
    assert not store.delivery_seen("whitebit", "main", "d-3")


def test_a_delivery_is_remembered_until_its_ttl_then_counts_as_new(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    assert DEFAULT_DELIVERY_TTL >= 2 * DAY
    assert store.remember_delivery("whitebit", "main", "d-1")
    clock.now = start + DEFAULT_DELIVERY_TTL - 1
    assert store.delivery_seen("whitebit", "main", "d-1")
    assert not store.remember_delivery("whitebit", "main", "d-1")
    clock.now = start + DEFAULT_DELIVERY_TTL
    assert not store.delivery_seen("whitebit", "main", "d-1")
    assert store.remember_delivery("whitebit", "main", "d-1")  # refreshed with a new expiry
    clock.now = start + 2 * DEFAULT_DELIVERY_TTL - 1
    assert store.delivery_seen("whitebit", "main", "d-1")


def test_remember_delivery_honours_a_custom_ttl_and_refuses_one_below_48_hours(
    store: StateStore, clock: FakeClock
) -> None:
    assert store.remember_delivery("zerohash", "", "n-1", ttl=2 * DAY)
    clock.now += 2 * DAY
    assert not store.delivery_seen("zerohash", "", "n-1")
    with pytest.raises(ValueError, match="at least"):
        store.remember_delivery("zerohash", "", "n-2", ttl=3600)
    with pytest.raises(ValueError, match="at least"):
        store.remember_delivery("zerohash", "", "n-2", ttl=float("nan"))


def test_purge_expired_deliveries_deletes_only_expired_ids(store: StateStore, clock: FakeClock) -> None:
    store.remember_delivery("whitebit", "main", "old-1")
    store.remember_delivery("whitebit", "main", "old-2")
    clock.now += DAY
    store.remember_delivery("whitebit", "main", "young")
    clock.now += DEFAULT_DELIVERY_TTL - DAY
    assert store.purge_expired_deliveries() == 2
    assert store.purge_expired_deliveries() == 0
    assert store.delivery_seen("whitebit", "main", "young")
    with raw(store.path) as conn:
        assert conn.execute("SELECT delivery_id FROM webhook_deliveries").fetchall() == [("young",)]


def test_the_newest_delivery_of_each_feed_survives_the_purge(store: StateStore, clock: FakeClock) -> None:
    start = clock.now
    store.remember_delivery("whitebit", "main", "a")
    clock.now += 10.5
    store.remember_delivery("whitebit", "main", "b")
    store.remember_delivery("whitebit", "trading", "c")
    store.remember_delivery("zerohash", "", "d")
    assert store.last_deliveries("whitebit") == {"main": start + 10.5, "trading": start + 10.5}
    clock.now += DEFAULT_DELIVERY_TTL + 1
    assert store.purge_expired_deliveries() == 4
    assert store.last_deliveries("whitebit") == {"main": start + 10.5, "trading": start + 10.5}
    assert store.last_deliveries("zerohash") == {"": start + 10.5}
    # A newer delivery wins; purging it later keeps the newer time, never an older one.
    store.remember_delivery("whitebit", "main", "e")
    assert store.last_deliveries("whitebit")["main"] == clock.now
    newest = clock.now
    clock.now += DEFAULT_DELIVERY_TTL + 1
    store.purge_expired_deliveries()
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
    assert s.remember_delivery("whitebit", "main", f"d-{n}")
    s.raise_nonce("main", n)
    s.put_transfer(transfer(f"tx-{n}"))
    s.set_cursor("main", "history", str(n))
    s.apply_zerohash_balance(zh_balance(str(n), float(n)))


def test_nothing_inside_a_transaction_is_committed_before_it_ends(store: StateStore) -> None:
    with raw(store.path) as observer:
        with store.transaction():
            write_one_of_everything(store)
            with store.transaction():  # nested: still not committed
                store.set_cursor("main", "other", "x")
            for table in ("webhook_deliveries", "nonces", "transfers", "cursors", "zerohash_balances"):
                assert observer.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table
            assert store.highest_nonce("main") == 1  # but visible to the store itself
        assert observer.execute("SELECT count(*) FROM cursors").fetchone() == (2,)
        assert observer.execute("SELECT highest FROM nonces").fetchone() == (1,)


def test_an_exception_inside_a_transaction_rolls_all_of_it_back(store: StateStore) -> None:
    def write_then_fail() -> None:
        with store.transaction():
            write_one_of_everything(store)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        write_then_fail()
    assert not store.delivery_seen("whitebit", "main", "d-1")
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


async def test_many_tasks_on_one_loop_share_the_store_safely(store: StateStore) -> None:
    ids = [f"d-{i}" for i in range(30)]

    async def worker(nonce_base: int) -> list[str]:
        won = []
        for i, delivery_id in enumerate(ids):
            with store.transaction():
                if store.remember_delivery("whitebit", "main", delivery_id):
                    won.append(delivery_id)
                store.raise_nonce("main", nonce_base + i)
            await asyncio.sleep(0)
        return won

    results = await asyncio.gather(*(worker(base) for base in (0, 1000, 500, 2000)))
    claimed = [d for won in results for d in won]
    assert sorted(claimed) == sorted(ids)  # each delivery is new to exactly one task
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
