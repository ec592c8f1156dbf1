"""A rebuild of the demo's state file derives what the running exporter derived.

The demo runs with its trouble on (dropped webhooks that are counted missed, 429s, dropped sockets,
every documented payload form), the exporter is stopped, and ``state rebuild`` derives the file
again from its inbox and history records: every transfer and Zero Hash balance must come out as
the exporter left it. Only ``updated_at`` may differ, by the moment between receiving a delivery
and deriving it (the replay dates each change at the evidence's own time).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from exporter.core.state import StateStore, TransferRecord
from exporter.demo import DEMO_ACCOUNT
from exporter.rebuild import Rebuilder, settings_from_config
from tests.bundle.harness import running_demo
from tests.helpers import wait_for


def without_updated_at(records: list[TransferRecord]) -> list[TransferRecord]:
    return [dataclasses.replace(r, updated_at=0.0) for r in records]


async def test_a_rebuild_of_the_demos_file_derives_what_the_exporter_derived(tmp_path: Path) -> None:
    async with running_demo(
        tmp_path, scenario_rate=30.0, forge_every=5, reconcile_grace=2.0, webhook_retry_window=5.0, seed=11
    ) as demo:
        assert demo.exporter is not None
        exporter = demo.exporter
        config = exporter.config

        def busy_enough() -> bool:
            transfers = exporter.state.transfers(DEMO_ACCOUNT)
            feeds = exporter.state.history_feeds_after(0, 1000)
            return (
                sum(r.missed_counted for r in transfers) >= 2
                and sum(r.webhook_seen and r.history_seen for r in transfers) >= 20
                and len(feeds) >= 8
            )

        await wait_for(busy_enough, timeout=150, interval=1.0, message="the demo never had enough transfers")

    with StateStore.open(config.state.path) as store:
        before = store.transfers()
        balances = store.zerohash_balances()
        report = Rebuilder(store, settings_from_config(config)).run()
        after = store.transfers()

        assert without_updated_at(after) == without_updated_at(before)
        assert all(abs(a.updated_at - b.updated_at) < 1.0 for a, b in zip(after, before, strict=True))
        assert store.zerohash_balances() == balances and balances
        assert store.inbox_cursor() == store.last_inbox_seq()
    assert report.unchanged == len(before) > 0
    assert (report.changed, report.merged, report.split, report.regrouped, report.new, report.removed) == (0,) * 6
    assert report.missed_kept == report.missed_before >= 2 and report.newly_missed == 0
    assert report.webhooks_replayed > 0 and report.history_records_replayed > 0 and report.not_derivable == 0
