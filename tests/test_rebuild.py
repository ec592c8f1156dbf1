"""``whitebit-exporter state rebuild``: state derived by a wrong rule is derived again, right.

The derivation runs through the exporter's own parts (inbox consumer, transfer book, history poll),
driven by hand on a clock: a webhook delivery is stored in the inbox and derived, a poll reads
history records from a stand-in for the REST client. A "wrong rule" is the lifecycle's ticker
rule broken on purpose (a network-suffixed ticker taken for another asset), as an older version
with a matching bug would have derived.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.config.schema import Config
from exporter.core.state import InboxDelivery, StateStore, TransferRecord
from exporter.rebuild import (
    DERIVATION_RULES,
    Rebuilder,
    RebuildReport,
    RebuildSettings,
    WebhookWatch,
    rebuild_if_rules_changed,
)
from exporter.simulator.zerohash import ZerohashLedger
from exporter.state_cli import ProgressBar, main, render_bar
from exporter.webhooks.inbox import Deriver, InboxConsumer
from exporter.whitebit import reconcile, transfers
from exporter.whitebit.reconcile import HistoryPoll, MissedWebhooks
from exporter.whitebit.signing import compact_json
from exporter.whitebit.transfers import TransferBook
from exporter.whitebit.webhook import WhitebitDeriver
from exporter.zerohash.balances import ZerohashBalances
from exporter.zerohash.webhook import ZerohashDeriver
from tests.exporters import ACCOUNTS, ZEROHASH
from tests.helpers import collected

ACCOUNT = "main"
GRACE = 60.0
RETRY_WINDOW = 600.0
T0 = 1_800_000_000.0
SETTINGS = RebuildSettings((ACCOUNT,), {ACCOUNT: WebhookWatch(GRACE, RETRY_WINDOW)}, zerohash=True)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class History:
    """Stands in for the REST client: answers the history endpoint with ``records`` (newest first)."""

    def __init__(self) -> None:
        self.account = ACCOUNT
        self.records: list[Mapping[str, Any]] = []

    async def post(self, path: str, params: Mapping[str, Any]) -> dict[str, Any]:
        offset, limit, method = params["offset"], params["limit"], params["transactionMethod"]
        statuses = params.get("status")
        matching = [r for r in self.records if r["method"] == method and (statuses is None or r["status"] in statuses)]
        return {"limit": limit, "offset": offset, "total": len(matching), "records": matching[offset : offset + limit]}


@dataclass
class Deriving:
    """The parts of a running exporter that derive state, on one state file."""

    store: StateStore
    clock: Clock
    history: History
    consumer: InboxConsumer
    poll: HistoryPoll
    missed: MissedWebhooks


@dataclass(frozen=True)
class Webhook:
    provider: str
    method: str
    body: bytes
    delivery_id: str


@dataclass(frozen=True)
class Poll:
    records: tuple[Mapping[str, Any], ...]


def parts(store: StateStore, clock: Clock) -> Deriving:
    book = TransferBook(store, [ACCOUNT], clock=clock)
    derivers: list[Deriver] = [WhitebitDeriver(book), ZerohashDeriver(store, ZerohashBalances(()))]
    consumer = InboxConsumer(store, derivers, clock=clock)
    history = History()
    missed = MissedWebhooks([ACCOUNT])
    # HistoryPoll uses nothing of its client but ``account`` and ``post``.
    poll = HistoryPoll(
        history,  # type: ignore[arg-type]
        book,
        store,
        grace=GRACE,
        missed=missed,
        retry_window=RETRY_WINDOW,
        clock=clock,
    )
    return Deriving(store, clock, history, consumer, poll, missed)


async def play(exporter: Deriving, timeline: list[tuple[float, Webhook | Poll]]) -> None:
    """What the running exporter does: each webhook stored in the inbox and derived, each poll run."""
    for at, event in timeline:
        exporter.clock.now = at
        if isinstance(event, Webhook):
            account = ACCOUNT if event.provider == "whitebit" else ""
            delivery = InboxDelivery(event.provider, account, event.delivery_id, event.method, at, event.body)
            assert exporter.store.add_delivery(delivery) is not None
            exporter.consumer.drain()
        else:
            exporter.history.records = list(event.records)
            await exporter.poll()


def whitebit_webhook(event: str, delivery_id: str, params: Mapping[str, Any]) -> Webhook:
    return Webhook("whitebit", event, compact_json({"method": event, "params": params, "id": delivery_id}), delivery_id)


def history_record(method: int, status: int, **fields: Any) -> dict[str, Any]:
    return {"method": method, "status": status, "ticker": "USDT", "network": "TRC20", **fields}


def scenario() -> list[tuple[float, Webhook | Poll]]:
    """A day of an account: a deposit (its webhooks name the asset with its network), a withdrawal whose
    webhook came (named the same way), one whose webhook never came, and a Zero Hash balance."""
    old_final = history_record(1, 3, amount="1", address="x", createdAt=T0 - 86400, transactionId="T-X")
    w0 = history_record(2, 1, amount="2", address="w0", createdAt=T0 - 3600, uniqueId="u-w0")
    deposit = {"amount": "5", "address": "a1", "createdAt": T0 + 5, "transactionHash": "0xd1", "memo": ""}
    d1_webhook = {**deposit, "ticker": "USDT_TRC20", "network": "TRC20", "method": 1}
    d1 = history_record(1, 15, **deposit, transactionId="T-D1")
    w1 = history_record(2, 1, amount="7", address="w1", createdAt=T0 + 35, uniqueId="u-w1")
    w2 = history_record(2, 1, amount="9", address="w2", createdAt=T0 + 36, uniqueId="u-w2")
    w2_pending = {"amount": "9", "address": "w2", "createdAt": T0 + 36, "uniqueId": "u-w2", "method": 2, "status": 1}
    ledger = ZerohashLedger(clock=lambda: T0 + 15, rng=random.Random(7))
    [balance] = ledger.deposit("CUST42", "USD", Decimal("70"), account_group="G1")
    zerohash = Webhook("zerohash", "account_balance.changed", json.dumps(balance).encode(), "zh-1")
    later = T0 + 40 + RETRY_WINDOW + 1
    return [
        (T0, Poll((old_final, w0))),
        (T0 + 10, whitebit_webhook("deposit.accepted", "d1-accepted", {**d1_webhook, "status": 15})),
        (T0 + 15, zerohash),
        (T0 + 20, Poll((d1, old_final, w0))),
        (T0 + 30, whitebit_webhook("deposit.processed", "d1-processed", {**d1_webhook, "status": 3})),
        (T0 + 40, Poll((w2, w1, {**d1, "status": 3}, old_final, w0))),
        (
            T0 + 45,
            whitebit_webhook("withdraw.pending", "w2-pending", {**w2_pending, "ticker": "USDT_TRC20"}),
        ),
        (later, Poll((w2, w1, {**d1, "status": 3}, old_final, w0))),
    ]


@pytest.fixture
def wrong_rule(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The ticker rule of an older version with a bug: ``USDT_TRC20`` is another asset than ``USDT``."""

    def asset_of(ticker: str) -> str:
        return ticker.strip().upper()

    for module in (transfers, reconcile):
        monkeypatch.setattr(module, "asset_of", asset_of)
    yield
    monkeypatch.undo()


async def derive(path: Path) -> Deriving:
    clock = Clock()
    store = StateStore.open(path, clock=clock)
    exporter = parts(store, clock)
    await play(exporter, scenario())
    return exporter


def missed_total(exporter: Deriving, kind: str) -> float | None:
    return collected(exporter.missed, "whitebit_webhooks_missed_total", account=ACCOUNT, kind=kind)


def snapshot(store: StateStore) -> tuple[list[TransferRecord], list[Any], int]:
    return store.transfers(), store.zerohash_balances(), store.inbox_cursor()


async def test_a_file_derived_by_a_wrong_rule_is_rebuilt_to_what_the_right_rule_derives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    right = await derive(tmp_path / "right.db")
    with monkeypatch.context() as patch:
        for module in (transfers, reconcile):
            patch.setattr(module, "asset_of", lambda ticker: ticker.strip().upper())
        wrong = await derive(tmp_path / "wrong.db")

    # The right rule: one record per transfer, and only the withdrawal whose webhook never came is missed.
    assert [(r.kind, r.amount, r.webhook_seen, r.history_seen) for r in right.store.transfers()] == [
        ("withdraw", Decimal(2), False, True),
        ("deposit", Decimal(5), True, True),
        ("withdraw", Decimal(7), False, True),
        ("withdraw", Decimal(9), True, True),
    ]
    assert [r.amount for r in right.store.transfers() if r.missed_counted] == [Decimal(7)]
    assert (missed_total(right, "deposit"), missed_total(right, "withdraw")) == (0, 1)
    # The wrong rule split the deposit and the answered withdrawal in two, and paged for both halves.
    assert len(wrong.store.transfers()) == 6
    assert sorted(r.amount for r in wrong.store.transfers() if r.missed_counted) == [5, 7, 9]
    assert (missed_total(wrong, "deposit"), missed_total(wrong, "withdraw")) == (1, 2)

    report = Rebuilder(wrong.store, SETTINGS, clock=wrong.clock).run()

    assert snapshot(wrong.store) == snapshot(right.store)
    assert (report.transfers_before, report.transfers_after) == (6, 4)
    assert (report.merged, report.merged_from, report.split, report.new, report.removed) == (2, 4, 0, 0, 0)
    assert (report.unchanged, report.changed) == (2, 0)
    assert (report.missed_before, report.missed_kept, report.newly_missed) == (3, 1, 0)
    assert (report.webhooks_replayed, report.history_records_replayed, report.not_derivable) == (4, 6, 0)
    assert (report.balances_before, report.balances_after, report.balances_changed) == (1, 1, 0)
    assert report.carried == 0 and report.horizon is None

    # Rebuilding what is right changes nothing.
    again = Rebuilder(wrong.store, SETTINGS, clock=wrong.clock).run()
    assert snapshot(wrong.store) == snapshot(right.store)
    assert (again.unchanged, again.changed, again.merged, again.split, again.new, again.removed) == (4, 0, 0, 0, 0, 0)
    right.store.close()
    wrong.store.close()


async def test_a_dry_run_reports_the_same_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as patch:
        for module in (transfers, reconcile):
            patch.setattr(module, "asset_of", lambda ticker: ticker.strip().upper())
        wrong = await derive(tmp_path / "wrong.db")
    before = snapshot(wrong.store)

    report = Rebuilder(wrong.store, SETTINGS, clock=wrong.clock).run(dry_run=True)

    assert report.dry_run and (report.merged, report.missed_before, report.missed_kept) == (2, 3, 1)
    assert snapshot(wrong.store) == before
    wrong.store.close()


async def test_a_miss_the_old_rule_never_counted_is_left_for_the_exporter_to_count(tmp_path: Path) -> None:
    exporter = await derive(tmp_path / "state.db")
    store = exporter.store
    [counted] = [r for r in store.transfers() if r.missed_counted]
    store.put_transfer(replace(counted, missed_counted=False))  # as a version that failed to count it

    report = Rebuilder(store, SETTINGS, clock=exporter.clock).run()

    assert (report.missed_before, report.missed_kept, report.newly_missed) == (0, 0, 1)
    assert not any(r.missed_counted for r in store.transfers())
    # The exporter's next poll counts it, once: the alert fires for a webhook that was really missed.
    restarted = parts(store, exporter.clock)
    restarted.history.records = exporter.history.records
    await restarted.poll()
    await restarted.poll()
    assert (missed_total(restarted, "deposit"), missed_total(restarted, "withdraw")) == (0, 1)
    store.close()


async def test_transfers_older_than_the_evidence_kept_are_carried_as_they_are(tmp_path: Path) -> None:
    exporter = await derive(tmp_path / "state.db")
    store = exporter.store
    before = store.transfers()
    # Evidence before T0 - 1000 is gone (the retention purged it), which leaves the withdrawal of an
    # hour before T0 older than the horizon (less the createdAt tolerance): its first webhooks or
    # history may be gone, so it cannot be derived again.
    store._conn().execute(
        "INSERT INTO cursors (account, name, value, updated_at) VALUES ('', 'evidence:horizon', ?, 0)",
        (repr(T0 - 1000),),
    )
    [old] = [r for r in before if r.created_at < T0 - 1000 + transfers.CREATED_AT_TOLERANCE]
    store.put_transfer(replace(old, status_name="as an older version named it"))

    report = Rebuilder(store, SETTINGS, clock=exporter.clock).run()

    # Kept as it was, and the history that joined it was not replayed into it a second time.
    assert (report.carried, report.joined_carried) == (1, 1)
    assert store.get_transfer(ACCOUNT, old.kind, old.key) == replace(old, status_name="as an older version named it")
    assert [r for r in store.transfers() if r.key != old.key] == [r for r in before if r.key != old.key]
    assert (report.unchanged, report.changed, report.new, report.removed) == (3, 0, 0, 0)
    assert report.horizon == T0 - 1000
    store.close()


async def test_the_purges_move_the_horizon_past_what_they_remove(tmp_path: Path) -> None:
    exporter = await derive(tmp_path / "state.db")
    store = exporter.store
    assert store.evidence_horizon() is None
    exporter.clock.now = T0 + 86400 * 40
    assert store.purge_history(86400 * 30) > 0
    assert store.evidence_horizon() == exporter.clock.now - 86400 * 30
    store.close()


def test_an_upgraded_file_with_transfers_has_its_horizon_at_the_upgrade(tmp_path: Path) -> None:
    from exporter.core.state import MIGRATIONS

    path = tmp_path / "v3.db"
    with StateStore.open(path, migrations=MIGRATIONS[:3]) as old:
        old.put_transfer(
            TransferRecord(
                account=ACCOUNT,
                kind="deposit",
                key="m:abc:0",
                status=3,
                status_name="successful",
                ticker="USDT",
                amount=Decimal(1),
                created_at=1_700_000_000.0,
                updated_at=1_700_000_000.0,
            )
        )
    with StateStore.open(path) as store:
        horizon = store.evidence_horizon()
        assert horizon is not None and abs(horizon - time.time()) < 60
        report = Rebuilder(store, SETTINGS).run()
        assert report.carried == 1 and len(store.transfers()) == 1


def config_file(tmp_path: Path, state: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(
        f"state: {{path: {json.dumps(str(state))}}}\n"
        "whitebit:\n"
        f"  - name: {ACCOUNT}\n    api_key: k\n    api_secret: s\n"
        f"    reconcile_grace: {GRACE:.0f}\n    webhook_retry_window: {RETRY_WINDOW:.0f}\n"
        "    webhook: {public_key: pk, secrets: [sk]}\n"
        "zerohash:\n  webhook: {hmac_secrets: [zs]}\n"
    )
    return path


def test_the_command_rebuilds_a_stopped_exporters_file_and_refuses_a_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        for module in (transfers, reconcile):
            patch.setattr(module, "asset_of", lambda ticker: ticker.strip().upper())
        wrong = asyncio.run(derive(tmp_path / "state.db"))
    wrong.store.close()
    config = config_file(tmp_path, tmp_path / "state.db")

    with StateStore.open(tmp_path / "state.db", exclusive=True):  # the exporter still has the file
        err = io.StringIO()
        assert main(["rebuild", "--config.file", str(config)], out=io.StringIO(), err=err) == 1
        assert "in use by another whitebit-exporter" in err.getvalue()

    dry = subprocess.run(
        [sys.executable, "-m", "exporter", "state", "rebuild", "--config.file", str(config), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert "dry run: nothing was written" in dry.stdout
    assert dry.stderr == ""  # not a terminal: no progress bar
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in dry.stdout.splitlines()[1:])
    assert lines["merged"] == "2 (from 4 records)"
    assert lines["transfers"] == "6 before, 4 after"

    done = subprocess.run(
        [sys.executable, "-m", "exporter", "state", "rebuild", "--config.file", str(config), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["state_path"] == str(tmp_path / "state.db")
    assert (report["dry_run"], report["merged"], report["missed_before"], report["missed_kept"]) == (False, 2, 3, 1)
    assert set(report) == {"state_path", *RebuildReport().as_dict()}
    with StateStore.open(tmp_path / "state.db") as store:
        assert len(store.transfers()) == 4


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_a_terminal_gets_a_progress_bar(tmp_path: Path) -> None:
    exporter = await derive(tmp_path / "state.db")
    exporter.store.close()
    config = config_file(tmp_path, tmp_path / "state.db")
    err, out = Terminal(), io.StringIO()

    assert main(["rebuild", "--config.file", str(config)], out=out, err=err) == 0

    frames = err.getvalue().split("\r")[1:]
    assert frames and frames[-1] == render_bar(10, 10) + "\n"
    assert out.getvalue().startswith("state rebuild of")


def test_the_bar_is_drawn_at_most_every_tenth_of_a_second_and_always_at_the_end() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar(stream, clock=lambda: now[0])
    for done in range(1, 1001):
        now[0] += 0.001
        bar(done, 1000)
    bar.finish()
    frames = stream.getvalue().split("\r")[1:]
    assert 10 <= len(frames) <= 12
    assert frames[-1] == render_bar(1000, 1000) + "\n"
    assert render_bar(0, 0).startswith("replaying [" + "#" * 30 + "] 100%")
    assert render_bar(1, 4) == "replaying [########......................]  25%  1/4"


async def test_an_exporter_whose_rules_are_newer_than_the_files_rebuilds_it_at_start(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_config: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The scenario's timing: the withdrawal whose webhook never came is missed under it.
    main = dataclasses.replace(ACCOUNTS[0], reconcile_grace=GRACE, webhook_retry_window=RETRY_WINDOW)
    config = make_config((main, *ACCOUNTS[1:]), zerohash=ZEROHASH)
    with monkeypatch.context() as patch:
        for module in (transfers, reconcile):
            patch.setattr(module, "asset_of", lambda ticker: ticker.strip().upper())
        wrong = await derive(Path(config.state.path))
    # As an older version left it: derived by rules older than this version's.
    wrong.store.set_cursor("", "derivation:rules", str(DERIVATION_RULES - 1))
    wrong.store.close()

    exporter = Exporter(config)
    with caplog.at_level(logging.WARNING, logger="exporter.app"):
        await exporter.start()
    try:
        assert len(exporter.state.transfers()) == 4
        [line] = [r for r in caplog.records if r.getMessage().startswith("state derived again")]
        assert (line.__dict__["merged"], line.__dict__["missed_kept"], line.__dict__["rules"]) == (
            2,
            1,
            DERIVATION_RULES,
        )
        assert exporter.state.get_cursor("", "derivation:rules") == str(DERIVATION_RULES)
    finally:
        await exporter.stop()

    caplog.clear()
    again = Exporter(config)
    await again.start()  # derived by these rules now: nothing is rebuilt
    await again.stop()
    assert not [r for r in caplog.records if r.getMessage().startswith("state derived again")]


def test_a_new_file_records_the_rules_it_is_derived_by_and_is_not_rebuilt(tmp_path: Path) -> None:
    with StateStore.open(tmp_path / "state.db") as store:
        assert rebuild_if_rules_changed(store, SETTINGS) is None
        assert store.get_cursor("", "derivation:rules") == str(DERIVATION_RULES)
        store.set_cursor("", "derivation:rules", str(DERIVATION_RULES + 1))  # a newer version's file
        assert rebuild_if_rules_changed(store, SETTINGS) is None
        store.set_cursor("", "derivation:rules", "garbage")
        report = rebuild_if_rules_changed(store, SETTINGS)
        assert report is not None and report.transfers_after == 0
        assert store.get_cursor("", "derivation:rules") == str(DERIVATION_RULES)
