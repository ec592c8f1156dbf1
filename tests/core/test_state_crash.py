"""A SIGKILLed writer leaves a state file that opens cleanly with everything it had committed.

A child process writes one transaction after another as fast as it can (an inbox row with its
body, a nonce, a transfer, a cursor and a Zero Hash balance per transaction) and prints each
transaction's number only after the commit has returned. The parent kills it with SIGKILL at varying points, reopens
the file and checks that every reported transaction is there, whole, and nothing half-written is.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path
from typing import IO

import pytest

from exporter.core.state import StateStore

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX SIGKILL")

REPO = Path(__file__).resolve().parents[2]
ACCOUNT = "crash"
# Generous: the machine is shared and slow; these bound waiting, they are not timed assertions.
TIMEOUT = 120.0

CHILD = """
import sys
from decimal import Decimal
from exporter.core.state import InboxDelivery, StateStore, TransferRecord, ZerohashBalance

path, durability, account = sys.argv[1], sys.argv[2], sys.argv[3]
with StateStore.open(path, durability=durability) as store:
    n = (store.highest_nonce(account) or 0) + 1
    while True:
        with store.transaction():
            assert store.add_delivery(InboxDelivery(
                provider="whitebit", account=account, delivery_id=f"d-{n}", method="deposit.processed",
                received_at=1_700_000_000.0 + n, body=('{"id":"d-%d"}' % n).encode(),
                headers={"X-TXC-APIKEY": "key", "X-TXC-SIGNATURE": f"sig-{n}"}, nonce=n,
            )) is not None
            store.raise_nonce(account, n)
            store.put_transfer(TransferRecord(
                account=account, kind="deposit", key=f"t-{n}", status=15, status_name="pending",
                ticker="BTC", amount=Decimal(n) / 1000, created_at=float(n), updated_at=float(n),
                details={"padding": "x" * 500},  # grow the WAL so checkpoints happen mid-run
            ))
            store.set_cursor(account, "history", str(n))
            store.apply_zerohash_balance(ZerohashBalance(
                participant_code="P", account_group="G", account_label="general",
                account_type="available", asset="BTC", balance=Decimal(n), timestamp=float(n),
                run_id=str(n),
            ))
        print(n, flush=True)
        n += 1
"""


class CommitLog:
    """Collects the numbers a child reports as committed, read on a thread until EOF."""

    def __init__(self, stream: IO[str]) -> None:
        self._cond = threading.Condition()
        self.numbers: list[int] = []
        self.eof = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            if line.endswith("\n"):  # a line cut short by the kill was never fully reported
                with self._cond:
                    self.numbers.append(int(line))
                    self._cond.notify_all()
        with self._cond:
            self.eof = True
            self._cond.notify_all()

    def wait_for_count(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` commits were reported; False on timeout or if output ended."""
        with self._cond:
            self._cond.wait_for(lambda: len(self.numbers) >= count or self.eof, timeout)
            return len(self.numbers) >= count

    def wait_for_eof(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.eof, timeout)


def run_and_kill(path: Path, durability: str, commits: int, stderr_path: Path) -> list[int]:
    """Start the writer, SIGKILL it once ``commits`` commits were reported; return all reported."""
    with stderr_path.open("w") as stderr:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), durability, ACCOUNT],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert child.stdout is not None
    log = CommitLog(child.stdout)
    try:
        reached = log.wait_for_count(commits, TIMEOUT)
        os.kill(child.pid, signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(timeout=TIMEOUT)
    assert reached, f"writer reported {len(log.numbers)} commits, not {commits}: {stderr_path.read_text()}"
    assert child.returncode == -signal.SIGKILL, stderr_path.read_text()
    assert log.wait_for_eof(TIMEOUT)
    child.stdout.close()
    return list(log.numbers)


def assert_exactly_first_n_transactions(store: StateStore, n: int) -> None:
    """Transactions 1..n are all there in full, and no part of any later one is."""
    assert store.highest_nonce(ACCOUNT) == n
    assert store.get_cursor(ACCOUNT, "history") == str(n)
    assert {t.key for t in store.transfers(ACCOUNT)} == {f"t-{i}" for i in range(1, n + 1)}
    assert all(store.delivery_seen("whitebit", ACCOUNT, f"d-{i}") for i in range(1, n + 1))
    assert not store.delivery_seen("whitebit", ACCOUNT, f"d-{n + 1}")
    rows = store.inbox_after(0, n + 1)
    assert [(r.delivery_id, r.received_at, r.body, r.nonce) for r in rows] == [
        (f"d-{i}", 1_700_000_000.0 + i, f'{{"id":"d-{i}"}}'.encode(), i) for i in range(1, n + 1)
    ]
    assert [r.headers for r in rows] == [
        {"X-TXC-APIKEY": "key", "X-TXC-SIGNATURE": f"sig-{i}"} for i in range(1, n + 1)
    ]
    [balance] = store.zerohash_balances()
    assert (balance.balance, balance.timestamp) == (n, float(n))


@pytest.mark.parametrize(
    ("durability", "kill_after"),
    [("process", (1, 60, 7, 400, 150)), ("power", (1, 25, 3, 60, 12))],
)
def test_sigkilled_writer_leaves_a_clean_file_with_every_reported_commit(
    tmp_path: Path, durability: str, kill_after: tuple[int, ...]
) -> None:
    path = tmp_path / "state.db"
    last_committed = 0
    for round_no, commits in enumerate(kill_after):
        reported = run_and_kill(path, durability, commits, tmp_path / f"child-{round_no}.err")
        # Each round continues numbering from what the previous round left in the file.
        assert reported == list(range(last_committed + 1, last_committed + len(reported) + 1))
        highest_reported = reported[-1]

        with StateStore.open(path, durability=durability) as store:
            with closing(sqlite3.connect(path)) as check:
                assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            found = store.highest_nonce(ACCOUNT)
            assert found is not None
            # The kill may land between a commit and its report, never further ahead.
            assert found in (highest_reported, highest_reported + 1), (round_no, found, highest_reported)
            assert_exactly_first_n_transactions(store, found)
        last_committed = found
