"""Which targets each inbox row goes to, and that the inbox consumer owes each row to them once."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config.schema import RelayTargetConfig
from exporter.core.state import InboxDelivery, StateStore
from exporter.relay.routing import RelayEnqueuer, RelayRouter
from exporter.webhooks.inbox import Applied, Deriver, InboxConsumer

T0 = 1_700_000_000.0


def row(provider: str, account: str, method: str, body: bytes | None = b"{}", seq: int = 1) -> InboxDelivery:
    return InboxDelivery(provider, account, f"id-{seq}", method, T0, body, seq=seq)


ALL = RelayTargetConfig(name="all", url="https://a.example/")
DEPOSITS = RelayTargetConfig(
    name="deposits",
    url="https://b.example/",
    providers=("whitebit",),
    accounts=("main",),
    methods=("deposit.processed",),
)
BALANCES = RelayTargetConfig(name="balances", url="https://c.example/", providers=("zerohash",))


def test_a_row_goes_to_every_target_that_takes_its_provider_account_and_method() -> None:
    router = RelayRouter([ALL, DEPOSITS, BALANCES])
    assert router.targets_for(row("whitebit", "main", "deposit.processed")) == ["all", "deposits"]
    assert router.targets_for(row("whitebit", "other", "deposit.processed")) == ["all"]
    assert router.targets_for(row("whitebit", "main", "withdraw.pending")) == ["all"]
    assert router.targets_for(row("zerohash", "", "account_balance.changed")) == ["all", "balances"]
    # Nothing to send without a body (a dedupe record only).
    assert router.targets_for(row("whitebit", "main", "deposit.processed", body=None)) == []


class DerivesNothing:
    """A deriver that derives nothing from its provider's rows (the batch's one transaction, no savepoints)."""

    def __init__(self, provider: str) -> None:
        self.provider = provider

    def stage(self, delivery: InboxDelivery) -> Applied:
        return None


@pytest.mark.parametrize("derivers", ["every row", "no deriver: every row fails"])
def test_the_consumer_owes_each_row_to_its_targets_once_in_the_batch_that_derives_it(
    tmp_path: Path, derivers: str
) -> None:
    # With a deriver per provider the batch commits in one go; without, each row fails alone (a savepoint
    # each, marked with the reason): both ways, every row is owed to its targets, and once.
    chosen: list[Deriver] = [DerivesNothing("whitebit"), DerivesNothing("zerohash")] if derivers == "every row" else []
    with StateStore.open(tmp_path / "state.db", clock=lambda: T0) as store:
        for n, (provider, account, method) in enumerate(
            [("whitebit", "main", "deposit.processed"), ("whitebit", "other", "code.apply"), ("zerohash", "", "x")]
        ):
            store.add_delivery(InboxDelivery(provider, account, f"d{n}", method, T0, b"{}"))
        enqueue = RelayEnqueuer(store, RelayRouter([ALL, DEPOSITS]), clock=lambda: T0)
        consumer = InboxConsumer(store, chosen, taps=[enqueue], clock=lambda: T0)
        assert consumer.drain() == 3
        assert consumer.drain() == 0  # derived once, so owed once
        owed = [(i.target, i.seq) for i in store.relay_items("pending")]
        assert owed == [("all", 1), ("deposits", 1), ("all", 2), ("all", 3)]
        assert store.relay_backlog("all") == (3, T0, 0)
