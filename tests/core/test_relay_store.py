"""What the state file keeps of the relay: the deliveries owed to each target, in order per account."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.core.state import InboxDelivery, StateStore

T0 = 1_700_000_000.0
DAY = 86400.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.db", clock=clock) as s:
        yield s


def stored(store: StateStore, delivery_id: str, account: str = "main", provider: str = "whitebit") -> InboxDelivery:
    """An inbox row as a receiver stores it, derived (its cursor passed), as the relay sees it."""
    seq = store.add_delivery(
        InboxDelivery(provider, account, delivery_id, "deposit.processed", T0, b'{"id":"%s"}' % delivery_id.encode())
    )
    assert seq is not None
    store.set_inbox_cursor(seq)
    row = store.get_delivery(seq)
    assert row is not None
    return row


def heads(store: StateStore, target: str, now: float) -> list[tuple[str, str]]:
    return [
        (item.account, item.delivery.delivery_id if item.delivery else "")
        for item in store.relay_heads(target, now, 10)
    ]


def test_each_account_sends_its_oldest_owed_delivery_first(store: StateStore) -> None:
    a1, b1, a2 = stored(store, "a1"), stored(store, "b1", "other"), stored(store, "a2")
    store.enqueue_relay("backend", [a1, b1, a2], at=T0)
    store.enqueue_relay("audit", [a2], at=T0)
    store.enqueue_relay("backend", [a1], at=T0)  # enqueued twice: owed once

    assert heads(store, "backend", T0) == [("main", "a1"), ("other", "b1")]
    assert heads(store, "audit", T0) == [("main", "a2")]
    assert store.relay_backlog("backend") == (3, T0, 0)

    # a1 failed: tried again in 10 s; a2 waits behind it (a backend must never see a2 before a1).
    store.relay_answered("backend", a1.seq, at=T0, delivered=False, status=500, retry_at=T0 + 10)
    assert heads(store, "backend", T0 + 5) == [("other", "b1")]
    assert heads(store, "backend", T0 + 10) == [("main", "a1"), ("other", "b1")]
    store.relay_answered("backend", a1.seq, at=T0 + 10, delivered=True, status=204)
    assert heads(store, "backend", T0 + 10) == [("other", "b1"), ("main", "a2")]  # oldest first
    [item] = store.relay_items("delivered")
    assert (item.seq, item.attempts, item.last_status, item.finished_at) == (a1.seq, 2, 204, T0 + 10)
    assert store.relay_backlog("backend") == (2, T0, 0)


def test_a_dead_letter_is_kept_counted_and_no_longer_holds_back_its_account(store: StateStore) -> None:
    a1, a2 = stored(store, "a1"), stored(store, "a2")
    store.enqueue_relay("backend", [a1, a2], at=T0)
    store.relay_answered("backend", a1.seq, at=T0 + 7 * DAY, delivered=False, error="timeout")  # out of time
    assert heads(store, "backend", T0 + 7 * DAY) == [("main", "a2")]
    assert store.relay_backlog("backend") == (1, T0, 1)
    [dead] = store.relay_items("dead", "backend")
    assert (dead.seq, dead.last_error, dead.finished_at) == (a1.seq, "timeout", T0 + 7 * DAY)
    # relay retry: owed again, due now, and first in line again.
    assert store.retry_dead(target="backend", at=T0 + 8 * DAY) == 1
    assert heads(store, "backend", T0 + 8 * DAY) == [("main", "a1")]
    assert store.relay_backlog("backend") == (2, T0, 0)  # the oldest owed (a2) waits since T0
    [revived] = [i for i in store.relay_items("pending", "backend") if i.seq == a1.seq]
    assert revived.enqueued_at == T0 + 8 * DAY  # a whole retry_for again, not one last try
    assert store.retry_dead(at=T0) == 0


def test_heads_skip_the_queues_in_flight_and_come_oldest_first_up_to_the_limit(store: StateStore) -> None:
    rows = [stored(store, f"d{n}", account=f"acct{n % 3}") for n in range(9)]
    rows.append(stored(store, "z0", account="", provider="zerohash"))
    store.enqueue_relay("backend", rows, at=T0)
    assert heads(store, "backend", T0) == [("acct0", "d0"), ("acct1", "d1"), ("acct2", "d2"), ("", "z0")]
    busy = [("whitebit", "acct1"), ("zerohash", "")]
    assert [i.account for i in store.relay_heads("backend", T0, 10, skip=busy)] == ["acct0", "acct2"]
    assert [i.account for i in store.relay_heads("backend", T0, 1)] == ["acct0"]


def test_the_inbox_purge_keeps_a_row_still_owed_and_a_dead_letter(store: StateStore, clock: Clock) -> None:
    owed, done, dead = stored(store, "owed"), stored(store, "done"), stored(store, "dead", "other")
    store.enqueue_relay("backend", [owed, done, dead], at=T0)
    store.relay_answered("backend", done.seq, at=T0, delivered=True, status=200)
    store.relay_answered("backend", dead.seq, at=T0 + 7 * DAY, delivered=False, error="timeout")
    clock.now = T0 + 40 * DAY
    assert store.purge_inbox(30 * DAY) == 1
    kept = store.get_delivery(owed.seq)
    assert kept is not None and kept.body == owed.body  # the body it must still send
    letter = store.get_delivery(dead.seq)
    assert letter is not None and letter.body == dead.body  # relay retry has it to send
    assert store.get_delivery(done.seq) is None
    assert store.relay_items("delivered") == []  # what the relay did with a row goes with it
    store.relay_answered("backend", owed.seq, at=clock.now, delivered=True, status=200)
    assert store.purge_inbox(30 * DAY) == 1
