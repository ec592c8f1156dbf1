"""``whitebit-exporter inbox list`` and ``inbox show``: filters, formats, read-only access, nothing secret printed."""

from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from decimal import Decimal
from pathlib import Path

import pytest

from exporter.core.state import MIGRATIONS, InboxDelivery, StateStore, TransferRecord
from exporter.inbox_cli import main, when
from exporter.whitebit.signing import compact_json

KEY = "PUBLIC-KEY-0123456789ABCDEF"
SIGNATURE = "f" * 128
ZH_SIGNATURE = "e" * 64
T0 = 1_764_400_000.0  # 2025-11-29T07:06:40Z


def body(n: int, tx_hash: str) -> bytes:
    params = {"amount": "1.5", "ticker": "USDT", "transactionHash": tx_hash, "status": 3}
    return compact_json({"method": "deposit.processed", "params": params, "id": f"id-{n}"})


@pytest.fixture
def state(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    with StateStore.open(path) as store:
        for n in range(4):
            headers = {"X-TXC-APIKEY": KEY, "X-TXC-SIGNATURE": SIGNATURE}
            account = "main" if n < 3 else "other"
            delivery = InboxDelivery(
                "whitebit", account, f"id-{n}", "deposit.processed", T0 + n * 60, body(n, f"0xhash{n}"), headers, n + 1
            )
            store.add_delivery(delivery)
        zh_headers = {"x-zh-hook-notification-id": "note-1", "x-zh-hook-signature": ZH_SIGNATURE}
        store.add_delivery(
            InboxDelivery("zerohash", "", "d" * 64, "account_balance.changed", T0 + 600, b"\xff\xfe", zh_headers)
        )
        store.set_inbox_cursor(2)
        store.mark_derive_error(2, "transfer amount is not a decimal")
        store.put_transfer(
            TransferRecord(
                account="main",
                kind="deposit",
                key="k1:abc:0",
                status=3,
                status_name="successful",
                ticker="USDT",
                amount=Decimal("1.5"),
                created_at=T0,
                updated_at=T0,
                details={"transaction_hash": "0xhash1"},
            )
        )
    return path


def run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(args), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def listed(state: Path, *args: str) -> list[dict[str, object]]:
    status, out, err = run("list", "--state.path", str(state), "--format", "json", *args)
    assert status in (0, 1) and err == ""
    return [json.loads(line) for line in out.splitlines()]


def test_list_prints_newest_first_with_what_was_answered_and_how_far_it_was_derived(state: Path) -> None:
    rows = listed(state)
    assert [r["seq"] for r in rows] == [5, 4, 3, 2, 1]
    by_seq = {r["seq"]: r for r in rows}
    assert by_seq[1]["derivation"] == "derived" and by_seq[2]["derivation"] == "failed"
    assert by_seq[3]["derivation"] == "pending"
    assert by_seq[2]["derive_error"] == "transfer amount is not a decimal"
    assert by_seq[1]["received_at"] == "2025-11-29T07:06:40.000+00:00" and by_seq[1]["nonce"] == 1
    assert by_seq[1]["body"] == body(0, "0xhash0").decode()
    assert by_seq[5]["body_base64"] == "//4=" and "body" not in by_seq[5]  # not UTF-8: base64


def test_list_filters_by_provider_account_method_time_hash_and_transfer_key(state: Path) -> None:
    assert [r["seq"] for r in listed(state, "--provider", "zerohash")] == [5]
    assert [r["seq"] for r in listed(state, "--account", "other")] == [4]
    assert [r["seq"] for r in listed(state, "--method", "account_balance.changed")] == [5]
    assert [r["seq"] for r in listed(state, "--since", str(T0 + 60), "--until", "2025-11-29T07:09:40Z")] == [3, 2]
    assert [r["seq"] for r in listed(state, "--transaction-hash", "0xhash2")] == [3]
    assert [r["seq"] for r in listed(state, "--transfer-key", "k1:abc:0")] == [2]
    assert [r["seq"] for r in listed(state, "--limit", "2")] == [5, 4]
    status, out, _ = run("list", "--state.path", str(state), "--account", "nobody")
    assert status == 1 and out.splitlines()[0].split()[:2] == ["SEQ", "RECEIVED"]  # the header, no rows


def test_the_table_has_one_line_per_delivery_under_its_header(state: Path) -> None:
    status, out, _ = run("list", "--state.path", str(state))
    lines = out.splitlines()
    assert status == 0 and len(lines) == 6
    assert lines[0].split() == [
        "SEQ",
        "RECEIVED",
        "(UTC)",
        "PROVIDER",
        "ACCOUNT",
        "METHOD",
        "VERDICT",
        "DUPS",
        "STATE",
        "ID",
    ]
    assert lines[-1].split() == [
        "1",
        "2025-11-29T07:06:40",
        "whitebit",
        "main",
        "deposit.processed",
        "ok",
        "0",
        "derived",
        "id-0",
    ]


def test_show_prints_one_delivery_whole_by_seq_or_id_and_raw_byte_for_byte(state: Path) -> None:
    status, out, _ = run("show", "2", "--state.path", str(state))
    assert status == 0 and "delivery_id:        id-1" in out.splitlines()
    assert json.loads(out.split("body:\n", 1)[1]) == json.loads(body(1, "0xhash1"))
    status, by_id, _ = run("show", "id-1", "--state.path", str(state))
    assert status == 0 and by_id == out
    status, raw, _ = run("show", "id-1", "--raw", "--state.path", str(state))
    assert raw == body(1, "0xhash1").decode() + "\n"
    status, _, err = run("show", "id-404", "--state.path", str(state))
    assert status == 1 and "no delivery with seq or id 'id-404'" in err


def test_no_key_or_signature_is_ever_printed_whole(state: Path) -> None:
    outputs = [
        run("list", "--state.path", str(state), "--format", "json")[1],
        run("show", "2", "--state.path", str(state))[1],
        run("show", "5", "--state.path", str(state), "--format", "json")[1],
    ]
    for out in outputs:
        assert KEY not in out and SIGNATURE not in out and ZH_SIGNATURE not in out
    shown = listed(state, "--account", "main", "--limit", "1")[0]["headers"]
    assert shown == {"X-TXC-APIKEY": "PUBL…", "X-TXC-SIGNATURE": "ffffffff…"}


def test_it_reads_beside_a_running_exporter_and_writes_nothing(state: Path) -> None:
    reserve = state.with_name(state.name + ".reserve")
    with StateStore.open(state, exclusive=True) as writer:  # as the exporter holds it
        reserve.unlink()
        writer.set_cursor("x", "y", "z")
        assert [r["seq"] for r in listed(state, "--limit", "1")] == [5]
        assert not reserve.exists()  # the reader made no room for itself
    with closing(sqlite3.connect(state)) as conn:
        conn.execute("PRAGMA user_version = 2")
        conn.commit()
    status, _, err = run("list", "--state.path", str(state))
    assert status == 1 and f"has schema version 2, this version reads {len(MIGRATIONS)}" in err


def test_a_missing_file_or_a_bad_time_is_one_line_and_status_1(tmp_path: Path, state: Path) -> None:
    status, _, err = run("list", "--state.path", str(tmp_path / "none.db"))
    assert status == 1 and err == f"whitebit-exporter inbox: no state file at {tmp_path / 'none.db'}\n"
    status, _, err = run("list", "--state.path", str(state), "--since", "yesterday")
    assert status == 1 and "not a time: 'yesterday'" in err


def test_when_reads_rfc3339_unix_seconds_and_durations_ago() -> None:
    assert when("2025-11-29T07:06:40Z", 0.0) == T0
    assert when("2025-11-29T07:06:40", 0.0) == T0  # no zone: UTC
    assert when(str(T0), 0.0) == T0
    assert when("2h", T0) == T0 - 7200


def test_the_command_line_runs_it(state: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "inbox", "list", "--state.path", str(state), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["seq"] for line in result.stdout.splitlines()] == [5, 4, 3, 2, 1]
