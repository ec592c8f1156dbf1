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


def differences(before: list[TransferRecord], after: list[TransferRecord]) -> list[str]:
    """Each field a rebuilt transfer has otherwise than the exporter left it (updated_at within 1 s)."""
    if [(r.account, r.kind, r.key) for r in before] != [(r.account, r.kind, r.key) for r in after]:
        return [f"other transfers: {len(before)} before, {len(after)} after"]
    found = []
    for old, new in zip(before, after, strict=True):
        for f in dataclasses.fields(TransferRecord):
            was, now = getattr(old, f.name), getattr(new, f.name)
            if was != now and not (f.name == "updated_at" and abs(was - now) < 1.0):
                found.append(f"{old.kind} {old.key} ({old.amount} {old.ticker}): {f.name} {was!r} -> {now!r}")
    return found


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

        assert differences(before, after) == []
        assert store.zerohash_balances() == balances and balances
        assert store.inbox_cursor() == store.last_inbox_seq()
    assert report.unchanged == len(before) > 0
    assert (report.changed, report.merged, report.split, report.regrouped, report.new, report.removed) == (0,) * 6
    assert report.missed_kept == report.missed_before >= 2 and report.newly_missed == 0
    assert report.webhooks_replayed > 0 and report.history_records_replayed > 0 and report.not_derivable == 0
