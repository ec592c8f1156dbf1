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


def main(count: int) -> None:
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
    print(f"inbox size: {count} deposit.processed deliveries ({body_bytes / count:.0f}-byte bodies), {derived} derived")
    print(f"  inbox rows and indexes: {inbox / count:6.0f} bytes per delivery, {inbox / count:6.0f} MB per million")
    print(f"  with derived transfers: {total / count:6.0f} bytes per delivery, {total / count:6.0f} MB per million")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=100_000)
    main(parser.parse_args().deliveries)
