"""How big the state file grows with the webhook inbox, per delivery and per million deliveries.

    python -m benchmarks.bench_inbox_size [--deliveries 100000]

Stores ``--deliveries`` WhiteBIT ``deposit.processed`` deliveries as the receiver does (the body
WhiteBIT documents, 18-decimal amounts, a UUID id, the key and signature headers) through
:meth:`~exporter.core.state.StateStore.add_delivery`, in batches of 32 as the group commit makes
them, derives their transfers as the exporter does (:class:`~exporter.webhooks.inbox.InboxConsumer`
with :class:`~exporter.whitebit.webhook.WhitebitDeriver`), checkpoints the WAL, and prints the file
size per delivery: for the inbox alone (rows and indexes) and with the derived transfers (kept 30
days after they are final). ``VACUUM`` is not run: the figures are what a running exporter's file
holds. It asserts nothing.

Then the history evidence a rebuild replays (``history_records``, ``history_feeds``): for each deposit, the
two versions history shows of it (pending, then credited), in the documented record form, fed as
the polls feed them: a poll every minute reads the newest 100 records, of which a few are new
(``--per-poll``, default 7, about 10,000 a day); a record read again costs an update, not a row.
Printed per transfer, and per day of polls for the feed rows alone.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.bench_webhooks import deposit_body
from exporter.core.state import InboxDelivery, StateStore
from exporter.webhooks.inbox import InboxConsumer
from exporter.whitebit.reconcile import history_evidence
from exporter.whitebit.signing import HEADER_APIKEY, HEADER_SIGNATURE, encode_payload, sign_payload
from exporter.whitebit.transfers import TransferBook
from exporter.whitebit.webhook import PROVIDER, WhitebitDeriver

BATCH = 32
SECRET = "size-webhook-secret-0123456789abcdef"


def delivery(index: int, now: float) -> InboxDelivery:
    """One deposit.processed delivery as WhiteBIT sends it (the body benchmarks/bench_webhooks.py sends)."""
    delivery_id = str(uuid.uuid4())
    body = deposit_body(index, "size", index + 1, delivery_id)
    signature = sign_payload(encode_payload(body), SECRET)
    headers = {HEADER_APIKEY: "size-webhook-public-key-0123456789", HEADER_SIGNATURE: signature}
    return InboxDelivery(PROVIDER, "main", delivery_id, "deposit.processed", now, body, headers, index + 1)


def file_bytes(path: Path) -> int:
    return path.stat().st_size


def history_record(index: int, status: int, created_at: int | None = None) -> dict[str, object]:
    """The history record of deposit ``index`` as WhiteBIT documents one (docs/protocol.md); the
    address and hash of the webhook ``deposit_body(index, "size", ...)`` sends."""
    return {
        "address": f"addr-size-{index}",
        "uniqueId": None,
        "createdAt": 1_700_000_000 + index if created_at is None else created_at,
        "currency": "Tether US",
        "ticker": "USDT",
        "method": 1,
        "amount": "25",
        "description": "",
        "memo": "",
        "fee": "0",
        "status": status,
        "network": "TRC20",
        "transactionHash": f"0x{index:064x}",
        "transactionId": str(uuid.UUID(int=index)),
        "details": {"partial": None},
        "confirmations": {"actual": 3 if status == 3 else 1, "required": 3},
    }


def history_size(store: StateStore, path: Path, count: int, per_poll: int) -> tuple[float, float]:
    """(bytes per transfer of history evidence, the feeds of the polls that read it included; bytes per
    day of the feed rows of polls that read nothing new, one a minute)."""
    before = file_bytes(path)
    newest: list[dict[str, object]] = []
    now = time.time()
    for start in range(0, count, per_poll):
        # Each poll: the new deposits pending, the previous poll's credited, and the rest of the page again.
        fresh = [history_record(i, 15) for i in range(start, min(start + per_poll, count))]
        credited = [history_record(i, 3) for i in range(max(start - per_poll, 0), start)]
        newest = (fresh + credited + newest)[:100]
        with store.transaction():
            store.record_history("main", history_evidence(newest), observed_at=now, baseline=False)
        now += 60
    store.checkpoint(truncate=True)
    per_transfer = (file_bytes(path) - before) / count
    # A feed row alone, measured apart: a day of polls that read nothing new.
    before = file_bytes(path)
    for _ in range(1440 * 10):
        with store.transaction():
            store.record_history("main", [], observed_at=now, baseline=False)
        now += 60
    store.checkpoint(truncate=True)
    per_day = (file_bytes(path) - before) / 10
    return per_transfer, per_day


def main(count: int, per_poll: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-inbox-size-") as directory:
        path = Path(directory) / "state.db"
        with StateStore.open(path) as store:
            store.checkpoint(truncate=True)
            empty = file_bytes(path)
            now = time.time()
            body_bytes = 0
            for start in range(0, count, BATCH):
                with store.transaction():
                    for index in range(start, min(start + BATCH, count)):
                        d = delivery(index, now + index / 1000)
                        body_bytes += len(d.body or b"")
                        store.add_delivery(d)
            store.checkpoint(truncate=True)
            inbox = file_bytes(path) - empty
            consumer = InboxConsumer(store, [WhitebitDeriver(TransferBook(store, ["main"]))])
            derived = consumer.drain()
            store.checkpoint(truncate=True)
            total = file_bytes(path) - empty
            evidence, feeds = history_size(store, path, count, per_poll)
    print(f"inbox size: {count} deposit.processed deliveries ({body_bytes / count:.0f}-byte bodies), {derived} derived")
    print(f"  inbox rows and indexes: {inbox / count:6.0f} bytes per delivery, {inbox / count:6.0f} MB per million")
    print(f"  with derived transfers: {total / count:6.0f} bytes per delivery, {total / count:6.0f} MB per million")
    print(f"  history evidence:       {evidence:6.0f} bytes per transfer (two versions, {per_poll} new per poll)")
    print(f"  history feeds:          {feeds / 1024:6.1f} KiB per account per day of polls at one a minute")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    parser.add_argument("--per-poll", type=int, default=7, help="new deposits a history poll reads")
    arguments = parser.parse_args()
    main(arguments.deliveries, arguments.per_poll)
