"""The state file under faults: one writer per file, damage refused at start or seen later, a short WAL."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from exporter.core.housekeeping import Housekeeping
from exporter.core.state import (
    RESERVE_BYTES,
    WAL_LIMIT,
    InboxDelivery,
    StateError,
    StateStore,
    TransferRecord,
    lock_path,
)
from exporter.webhooks.commit import GroupCommitter
from tests.helpers import wait_for

HOLD = textwrap.dedent(
    """
    import sys
    from exporter.core.state import StateStore
    store = StateStore.open(sys.argv[1], exclusive=True)
    print("locked", flush=True)
    sys.stdin.read()
    """
)


def hold_lock(path: Path) -> subprocess.Popen[str]:
    """Another process holding the state file open (and locked) until its stdin closes or it is killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    holder = hold_lock(path)
    try:
        with pytest.raises(StateError) as refused:
            StateStore.open(path, exclusive=True)
        message = str(refused.value)
        assert f"in use by another whitebit-exporter (pid {holder.pid})" in message
        assert "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    # The holder died without cleaning up: its lock file and pid are still there, and do not block.
    assert lock_path(path).read_text().strip() == str(holder.pid)
    with StateStore.open(path, exclusive=True) as store:
        assert lock_path(path).read_text().strip() == str(os.getpid())
        assert store.schema_version >= 1


def test_the_lock_is_released_on_close_and_held_until_then(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    first = StateStore.open(path, exclusive=True)
    with pytest.raises(StateError, match=f"pid {os.getpid()}"):
        StateStore.open(path, exclusive=True)
    # An inspecting connection takes no lock (the tests read a running exporter's file this way).
    StateStore.open(path).close()
    first.close()
    StateStore.open(path, exclusive=True).close()


def transfer(n: int) -> TransferRecord:
    return TransferRecord(
        account="main",
        kind="deposit",
        key=f"tx-{n:06d}",
        status=15,
        status_name="pending",
        ticker="USDT",
        amount=Decimal("25.5"),
        created_at=1_700_000_000.0 + n,
        updated_at=1_700_000_000.0 + n,
        details={"transaction_hash": f"0x{n:064x}"},
    )


def whitebit_delivery(n: int) -> InboxDelivery:
    """A deposit webhook as WhiteBIT sends it, stored as received (its body and signed headers)."""
    params = {
        "address": f"T{n:033d}",
        "amount": "25.500000000000000000",
        "createdAt": 1_700_000_000 + n,
        "currency": "Tether US",
        "fee": "0.000000000000000000",
        "method": 1,
        "network": "TRC20",
        "status": 3,
        "ticker": "USDT",
        "transactionHash": f"0x{n:064x}",
        "uniqueId": None,
        "confirmations": {"actual": 3, "required": 3},
        "nonce": n,
    }
    delivery_id = f"delivery-{n:08d}"
    body = json.dumps({"method": "deposit.processed", "params": params, "id": delivery_id}).encode()
    headers = {"X-TXC-APIKEY": "public-key", "X-TXC-SIGNATURE": f"{n:0128x}"}
    return InboxDelivery("whitebit", "main", delivery_id, "deposit.processed", 1_700_000_000.0 + n, body, headers, n)


def damage_page(path: Path, page: int, page_size: int = 4096) -> None:
    """Overwrite one page of the (checkpointed) file with garbage, as a failing disk might."""
    with path.open("r+b") as f:
        f.seek((page - 1) * page_size)
        f.write(b"\xa5" * page_size)


def filled_store(path: Path) -> int:
    """A closed state file with a few hundred transfers; the root page of its transfers table."""
    with StateStore.open(path) as store:
        with store.transaction():
            for n in range(400):
                store.put_transfer(transfer(n))
        assert store.checkpoint(truncate=True)
    with sqlite3.connect(path) as conn:
        [(root,)] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'transfers'").fetchall()
    conn.close()
    return int(root)


def test_a_damaged_file_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    root = filled_store(path)
    damage_page(path, root + 3)  # a leaf of transfers: the header and schema still read fine
    with pytest.raises(StateError) as refused:
        StateStore.open(path)
    message = str(refused.value)
    assert "is damaged (quick_check:" in message and "restore it from a backup" in message
    assert "\n" not in message


def test_damage_found_while_running_marks_the_file_and_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    root = filled_store(path)
    store = StateStore.open(path)
    other = StateStore.open(path)
    try:
        changes: list[str] = []
        store.condition.on_change = lambda: changes.append(store.condition.problem)
        damage_page(path, root)
        # Another connection's commit makes this one drop its page cache and read the file again.
        other.probe()
        with pytest.raises(StateError, match="malformed"):
            store.transfers("main")
        assert store.condition.errors["corrupt"] == 1
        assert store.condition.damage and changes and "state file damaged" in changes[-1]
        # A later successful write does not make a damaged file healthy.
        store.probe()
        assert "state file damaged" in store.condition.problem
        with pytest.raises(StateError, match="malformed"):
            store.put_transfer(transfer(9999))
        assert store.condition.errors["corrupt"] == 2 and not store.condition.writable
    finally:
        store.close()
        other.close()


async def test_the_wal_stays_under_its_limit_through_10000_deliveries(tmp_path: Path) -> None:
    """The receivers' write path (group commit of the inbox row with its body and the nonce per delivery),
    and the transfer derived from it, 50 at a time."""
    store = StateStore.open(tmp_path / "state.db")
    committer = GroupCommitter(store)
    wal = tmp_path / "state.db-wal"
    largest = 0

    def deliver(n: int) -> bool:
        fresh = store.add_delivery(whitebit_delivery(n)) is not None
        store.raise_nonce("main", n)
        store.add_transfer(transfer(n))
        return fresh

    try:
        for wave in range(200):
            results = await asyncio.gather(*(committer.run(lambda n=wave * 50 + i: deliver(n)) for i in range(50)))
            assert all(results)
            largest = max(largest, wal.stat().st_size)
        assert committer.jobs == 10_000
        assert 0 < largest <= WAL_LIMIT, largest
        assert store.highest_nonce("main") == 9_999
        assert len(store.inbox_after(0, 20_000)) == 10_000
    finally:
        store.close()


async def test_housekeeping_runs_the_upkeep_often_and_purges_on_its_own_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    purges = upkeeps = 0

    def purge(now: float) -> int:
        nonlocal purges
        purges += 1
        return 0

    def upkeep() -> None:
        nonlocal upkeeps
        upkeeps += 1
        if upkeeps == 2:
            raise StateError("disk I/O error", "io")

    housekeeping = Housekeeping({"n": purge}, interval=3600, upkeep=upkeep, upkeep_interval=0.01)
    task = asyncio.create_task(housekeeping.run())
    try:
        await wait_for(lambda: upkeeps >= 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert purges == 1  # the failing round did not stop the task, and the hourly purge ran once
    assert any(r.getMessage() == "state upkeep failed" for r in caplog.records)


def test_upkeep_probes_while_unwritable_and_restores_the_reserve(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "state.db", exclusive=True)
    try:
        assert store.reserve_path.exists()
        store.reserve_path.unlink()
        # As a failed write leaves it (a real full volume is in tests/e2e/test_state_faults.py).
        store.condition.writable, store.condition.write_error = False, "full: database or disk is full"
        store.upkeep()
        assert store.condition.writable and not store.condition.problem
        assert store.reserve_path.exists()
        assert store.volume_free_bytes() > 0
    finally:
        store.close()


def test_the_checkpoint_threshold_follows_the_free_space(tmp_path: Path) -> None:
    # A roomy volume checkpoints every 1000 pages (SQLite's default) (each checkpoint syncs the file); a small one more
    # often, so the WAL never takes more than an eighth of what is free (README *Space it needs*).
    with StateStore.open(tmp_path / "state.db") as store:

        def threshold() -> int:
            return int(store._conn().execute("PRAGMA wal_autocheckpoint").fetchone()[0])

        assert threshold() == 1000  # the test volume has room
        for free, pages in ((8 * 2**20, 256), (1.5 * 2**20, 64), (float("nan"), 1000), (2**40, 1000)):
            store.fit_checkpoints(free)
            assert threshold() == pages, free
            limit = int(store._conn().execute("PRAGMA journal_size_limit").fetchone()[0])
            assert limit == pages * 4096, free


def test_only_the_exporters_exclusive_store_keeps_a_reserve(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore.open(path) as other:
        assert not other.reserve_path.exists()  # a second connection (tests, benchmarks) writes none
    with StateStore.open(path, exclusive=True) as own:
        assert own.reserve_path.stat().st_size == RESERVE_BYTES
