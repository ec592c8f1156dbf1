"""How long ``whitebit-exporter state rebuild`` takes, against deriving the same evidence as it arrives.

    python -m benchmarks.bench_rebuild [--deposits 50000] [--per-poll 7]

Builds a state file the way a running exporter does: ``--deposits`` WhiteBIT deposits, each with a
``deposit.processed`` delivery (stored by :meth:`~exporter.core.state.StateStore.add_delivery`, derived by
the :class:`~exporter.webhooks.inbox.InboxConsumer`) and two history versions (pending, then credited),
fed by polls of ``--per-poll`` new deposits each (:func:`~exporter.whitebit.reconcile.stage_history`
and ``record_history`` in one transaction, as :class:`~exporter.whitebit.reconcile.HistoryPoll` does).
The floor is the time that live derivation took (the consumer's and the polls' staging, not the
storing of deliveries); then :class:`~exporter.rebuild.Rebuilder` derives the whole file again, and
the ratio says how much longer a rebuild takes than deriving the same evidence did. It also checks
that the rebuild changed nothing (the same evidence, the same rules). It asserts nothing else.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.bench_inbox_size import history_record
from benchmarks.bench_webhooks import deposit_body
from exporter.core.state import InboxDelivery, StateStore
from exporter.rebuild import Rebuilder, RebuildSettings, WebhookWatch
from exporter.webhooks.inbox import InboxConsumer
from exporter.whitebit.reconcile import (
    CURSOR_NAME,
    HistoryCursor,
    history_evidence,
    history_observations,
    stage_history,
)
from exporter.whitebit.transfers import TransferBook
from exporter.whitebit.webhook import PROVIDER, WhitebitDeriver

ACCOUNT = "main"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def created_at(index: int, per_poll: int) -> int:
    """When deposit ``index`` was made: ``per_poll`` of them a minute, as the polls find them."""
    return 1_700_000_000 + (index // per_poll) * 60 + index % per_poll


def build(path: Path, deposits: int, per_poll: int) -> tuple[float, int]:
    """Derive the evidence as the exporter would; (seconds spent deriving, evidence rows stored)."""
    clock = Clock()
    deriving = 0.0
    evidence = 0
    with StateStore.open(path, clock=clock) as store:
        book = TransferBook(store, [ACCOUNT], clock=clock)
        consumer = InboxConsumer(store, [WhitebitDeriver(book)], clock=clock)
        cursor: HistoryCursor | None = None
        page: list[dict[str, object]] = []
        for start in range(0, deposits, per_poll):
            fresh = range(start, min(start + per_poll, deposits))
            with store.transaction():
                for index in fresh:
                    delivery_id = str(uuid.uuid4())
                    # The history record's hash and address are the webhook's: one transfer, two views.
                    body = deposit_body(index, "size", index + 1, delivery_id, created_at=created_at(index, per_poll))
                    store.add_delivery(
                        InboxDelivery(PROVIDER, ACCOUNT, delivery_id, "deposit.processed", clock.now, body)
                    )
                    evidence += 1
            began = time.perf_counter()
            consumer.drain()
            deriving += time.perf_counter() - began
            clock.now += 30
            credited = [history_record(i, 3, created_at(i, per_poll)) for i in range(max(start - per_poll, 0), start)]
            page = ([history_record(i, 15, created_at(i, per_poll)) for i in fresh] + credited + page)[:100]
            began = time.perf_counter()
            observations, _ = history_observations(ACCOUNT, page, clock.now)
            with store.transaction():
                updates, cursor = stage_history(book, observations, cursor, clock.now)
                store.record_history(ACCOUNT, history_evidence(page), observed_at=clock.now, baseline=False)
                store.set_cursor(ACCOUNT, CURSOR_NAME, cursor.encode())
            for update in updates:
                book.apply(update)
            deriving += time.perf_counter() - began
            evidence += len(fresh) + len(credited)
            clock.now += 30
    return deriving, evidence


def main(deposits: int, per_poll: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-") as directory:
        path = Path(directory) / "state.db"
        deriving, evidence = build(path, deposits, per_poll)
        with StateStore.open(path) as store:
            before = store.transfers()
            settings = RebuildSettings((ACCOUNT,), {ACCOUNT: WebhookWatch(900.0, 86400.0)})
            began = time.perf_counter()
            report = Rebuilder(store, settings).run()
            rebuilding = time.perf_counter() - began
            unchanged = report.unchanged == len(before) and report.changed + report.merged + report.split == 0
    print(f"rebuild: {deposits} deposits, {evidence} pieces of evidence ({report.webhooks_replayed} deliveries,")
    print(f"  {report.history_records_replayed} history records in {report.history_feeds_replayed} polls)")
    for name, seconds in (("live derivation (floor)", deriving), ("rebuild", rebuilding)):
        print(f"  {name + ':':24} {seconds:7.2f} s  {seconds / evidence * 1e6:6.0f} us per piece of evidence")
    print(f"  rebuild / live:          {rebuilding / deriving:7.2f}")
    print(f"  state after the rebuild: {'unchanged' if unchanged else 'CHANGED'} ({len(before)} transfers)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deposits", type=int, default=50_000)
    parser.add_argument("--per-poll", type=int, default=7, help="new deposits a history poll reads")
    arguments = parser.parse_args()
    main(arguments.deposits, arguments.per_poll)
