"""``whitebit-exporter relay list`` and ``relay retry``: what is owed and dead, and dead letters owed again."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from exporter.core.state import InboxDelivery, StateStore
from exporter.relay_cli import main

T0 = 1_764_400_000.0


def prepared(path: Path) -> tuple[int, int]:
    """A state file owing "backend" one delivery and holding one dead letter: their seqs."""
    with StateStore.open(path, clock=lambda: T0) as store:
        seqs = []
        for n in range(2):
            headers = {"X-TXC-SIGNATURE": "f" * 128}
            seq = store.add_delivery(
                InboxDelivery("whitebit", "main", f"d{n}", "deposit.processed", T0, b"{}", headers)
            )
            assert seq is not None
            seqs.append(seq)
        store.set_inbox_cursor(seqs[-1])
        rows = [store.get_delivery(seq) for seq in seqs]
        store.enqueue_relay("backend", [row for row in rows if row is not None], at=T0)
        store.relay_answered("backend", seqs[0], at=T0 + 10, delivered=False, status=500, error="HTTP 500")
        store.relay_answered("backend", seqs[1], at=T0 + 10, delivered=False, status=503, retry_at=T0 + 20)
        return seqs[0], seqs[1]


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_list_shows_what_is_owed_and_what_is_dead_without_bodies_or_headers(tmp_path: Path) -> None:
    dead_seq, owed_seq = prepared(tmp_path / "state.db")
    status, out, _ = run("list", "--state.path", str(tmp_path / "state.db"), "--format", "json")
    [owed] = [json.loads(line) for line in out.splitlines()]
    assert status == 0
    assert (owed["seq"], owed["state"], owed["attempts"], owed["last_status"]) == (owed_seq, "pending", 1, 503)
    status, out, _ = run("list", "--state.path", str(tmp_path / "state.db"), "--state", "dead")
    lines = out.splitlines()
    assert status == 0 and lines[0].startswith("SEQ  TARGET   ACCOUNT")
    assert lines[1].split()[:5] == [str(dead_seq), "backend", "whitebit:main", "dead", "1"]
    assert "f" * 16 not in out
    status, _, _ = run("list", "--state.path", str(tmp_path / "state.db"), "--state", "delivered")
    assert status == 1  # nothing delivered yet


def test_retry_owes_a_dead_letter_again(tmp_path: Path) -> None:
    dead_seq, _ = prepared(tmp_path / "state.db")
    status, _, err = run("retry", "--state.path", str(tmp_path / "state.db"))
    assert status == 2 and "name a --target or a seq" in err
    done = subprocess.run(
        [sys.executable, "-m", "exporter", "relay", "retry", "--state.path", str(tmp_path / "state.db"), str(dead_seq)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "1 dead letter owed again\n"), done.stderr
    with StateStore.open(tmp_path / "state.db") as store:
        assert store.relay_backlog("backend")[0::2] == (2, 0)
    status, out, _ = run("retry", "--state.path", str(tmp_path / "state.db"), "--target", "backend")
    assert (status, out) == (1, "0 dead letters owed again\n")
