"""The inbox consumer: state derived from inbox rows in order, once each, with a durable cursor."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from exporter.core.state import InboxDelivery, StateError, StateStore
from exporter.webhooks.inbox import (
    CATCH_UP_SHARE,
    FOLLOW_LIMIT,
    Applied,
    DeriveError,
    InboxConsumer,
    TapError,
    loop_share,
)
from tests.helpers import collected, wait_for


class Recorder:
    """A deriver that writes each row's body into a cursor (so its writes are part of the batch)
    and notes in memory what was applied after the commit."""

    provider = "test"

    def __init__(self, store: StateStore, *, fail_on: frozenset[str] = frozenset(), state_error_on: str = "") -> None:
        self.store = store
        self.fail_on = fail_on
        self.state_error_on = state_error_on
        self.applied: list[str] = []

    def stage(self, delivery: InboxDelivery) -> Applied:
        assert delivery.body is not None
        text = json.loads(delivery.body)["n"]
        self.store.set_cursor("derived", text, str(delivery.seq))
        if text in self.fail_on:
            raise DeriveError(f"cannot derive {text}")
        if text == self.state_error_on:
            raise StateError("disk full", "full")
        return lambda: self.applied.append(text)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.db") as s:
        yield s


def add(store: StateStore, n: str, *, provider: str = "test", at: float = 1_700_000_000.0) -> int | None:
    body = json.dumps({"n": n}).encode()
    return store.add_delivery(InboxDelivery(provider, "acct", f"id-{n}", "m", at, body, {"h": "v"}))


def derived(store: StateStore) -> dict[str, str | None]:
    return {n: store.get_cursor("derived", n) for n in ("1", "2", "3", "4", "5")}


def test_rows_are_derived_in_the_order_received_once_each_and_the_cursor_follows(store: StateStore) -> None:
    seqs = [add(store, n) for n in ("1", "2", "3")]
    recorder = Recorder(store)
    consumer = InboxConsumer(store, [recorder], batch_size=2)
    assert consumer.derive_batch() == 2 and recorder.applied == ["1", "2"]
    assert store.inbox_cursor() == seqs[1]
    assert consumer.drain() == 1 and recorder.applied == ["1", "2", "3"]
    assert consumer.drain() == 0 and recorder.applied == ["1", "2", "3"]
    assert store.inbox_cursor() == seqs[2] and consumer.derived == {"test": 3}


def test_a_restarted_consumer_derives_only_what_was_not_derived(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with StateStore.open(path) as store:
        for n in ("1", "2", "3"):
            add(store, n)
        first = Recorder(store)
        InboxConsumer(store, [first], batch_size=2).derive_batch()
    with StateStore.open(path) as store:
        add(store, "4")
        second = Recorder(store)
        assert InboxConsumer(store, [second]).drain() == 2
        assert first.applied == ["1", "2"] and second.applied == ["3", "4"]


def test_a_row_that_cannot_be_derived_is_kept_with_its_reason_and_the_rest_go_on(store: StateStore) -> None:
    for n in ("1", "2", "3"):
        add(store, n)
    recorder = Recorder(store, fail_on=frozenset({"2"}))
    consumer = InboxConsumer(store, [recorder])
    assert consumer.drain() == 3
    assert recorder.applied == ["1", "3"]
    # The failed row's own writes are undone; its neighbours' are kept.
    assert derived(store) == {"1": "1", "2": None, "3": "3", "4": None, "5": None}
    failed = [row for row in store.inbox_after(0, 10) if row.derive_error]
    assert [(row.delivery_id, row.derive_error) for row in failed] == [("id-2", "cannot derive 2")]
    assert consumer.failures == {"test": 1} and consumer.derived == {"test": 2}
    assert collected(consumer, "whitebit_exporter_inbox_derive_failures_total", provider="test") == 1


def test_a_row_of_a_provider_no_longer_configured_is_kept_with_its_reason(store: StateStore) -> None:
    add(store, "1", provider="gone")
    consumer = InboxConsumer(store, [Recorder(store)])
    assert consumer.drain() == 1
    (row,) = store.inbox_after(0, 10)
    assert row.derive_error is not None and "gone" in row.derive_error
    assert consumer.failures == {"test": 0, "gone": 1}


def test_a_failed_state_write_undoes_the_whole_batch_and_it_is_derived_again_later(store: StateStore) -> None:
    for n in ("1", "2", "3"):
        add(store, n)
    failing = Recorder(store, state_error_on="2")
    with pytest.raises(StateError):
        InboxConsumer(store, [failing]).derive_batch()
    assert failing.applied == [] and store.inbox_cursor() == 0
    assert derived(store)["1"] is None  # row 1's write went with the batch
    recovered = Recorder(store)
    assert InboxConsumer(store, [recovered]).drain() == 3 and recovered.applied == ["1", "2", "3"]


def test_rows_without_a_body_are_passed_over(store: StateStore) -> None:
    store.add_delivery(InboxDelivery("test", "acct", "id-old", "m", 1_700_000_000.0, None))
    add(store, "1")
    recorder = Recorder(store)
    assert InboxConsumer(store, [recorder]).drain() == 2 and recorder.applied == ["1"]


def test_the_backlog_is_exported_in_rows_and_seconds(store: StateStore) -> None:
    now = 1_700_000_100.0
    consumer = InboxConsumer(store, [Recorder(store)], clock=lambda: now)
    assert collected(consumer, "whitebit_exporter_inbox_pending_deliveries") == 0
    assert collected(consumer, "whitebit_exporter_inbox_lag_seconds") == 0
    add(store, "1", at=now - 40)
    add(store, "2", at=now - 10)
    assert collected(consumer, "whitebit_exporter_inbox_pending_deliveries") == 2
    assert collected(consumer, "whitebit_exporter_inbox_lag_seconds") == 40
    consumer.drain()
    assert collected(consumer, "whitebit_exporter_inbox_pending_deliveries") == 0
    assert collected(consumer, "whitebit_exporter_inbox_lag_seconds") == 0
    assert collected(consumer, "whitebit_exporter_inbox_derived_total", provider="test") == 2


async def test_a_notify_wakes_the_running_consumer_at_once(store: StateStore) -> None:
    recorder = Recorder(store)
    # An idle poll far beyond the wait below: only the notify can make it derive in time.
    consumer = InboxConsumer(store, [recorder], idle_poll=3600.0)
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: consumer.drain() == 0)
        add(store, "1")
        consumer.notify()
        await wait_for(lambda: recorder.applied == ["1"], timeout=5.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_the_running_consumer_pauses_on_a_failed_write_and_resumes(store: StateStore) -> None:
    add(store, "1")
    recorder = Recorder(store, state_error_on="1")
    consumer = InboxConsumer(store, [recorder], retry_pause=0.05)
    task = asyncio.create_task(consumer.run())
    try:
        await asyncio.sleep(0)
        recorder.state_error_on = ""  # the disk has room again
        await wait_for(lambda: recorder.applied == ["1"], timeout=5.0)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_failing_tap_holds_derivation_back_with_its_own_reason_until_it_works(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    add(store, "1")
    recorder = Recorder(store)
    broken = True

    def tap(rows: Sequence[InboxDelivery]) -> Applied:
        if broken:
            raise KeyError("a bug in the relay's routing")
        return None

    consumer = InboxConsumer(store, [recorder], retry_pause=0.05, taps=[tap])
    with pytest.raises(TapError):
        consumer.derive_batch()
    assert recorder.applied == [] and store.inbox_cursor() == 0  # nothing derived that the relay did not owe
    task = asyncio.create_task(consumer.run())
    try:
        await wait_for(lambda: "the relay could not owe the batch" in caplog.text, timeout=5.0)
        assert "the state file failed a write" not in caplog.text
        broken = False
        await wait_for(lambda: recorder.applied == ["1"], timeout=5.0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_derivation_yields_to_a_burst_then_catches_up_once_it_is_over(store: StateStore) -> None:
    recorder = Recorder(store)
    # The rows are received "now" by the consumer's clock: it is never lag_limit behind.
    consumer = InboxConsumer(store, [recorder], batch_size=16, busy_share=0.01, clock=lambda: 1_700_000_000.0)
    task = asyncio.create_task(consumer.run())
    try:
        for n in range(400):  # a burst: a new row at every turn of the loop
            add(store, f"b{n}")
            consumer.notify()
            await asyncio.sleep(0)
        behind, _ = store.inbox_backlog()
        assert behind > 200  # intake went first
        async with asyncio.timeout(10.0):
            await consumer.caught_up()
        assert store.inbox_backlog() == (0, None) and len(recorder.applied) == 400
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def share(
    *, took: float = 0.016, derived: int = 256, full: bool = True, rate: float = 0.0, behind: bool = False
) -> float:
    return loop_share(
        took=took,
        derived=derived,
        full=full,
        rate=rate,
        behind=behind,
        busy_share=0.1,
        burst_share=0.02,
    )


def test_the_share_of_the_loop_follows_a_steady_flow_and_yields_to_a_burst() -> None:
    # 256 rows in 16 ms (62.5 us each). 1,000 rows/s need 6 % of the loop: a steady flow, followed.
    assert share(rate=1000) == 0.1
    # 2,500 rows/s need 16 %: still a flow, followed with half as much again to spare.
    assert share(rate=2_500) == pytest.approx(0.234375)
    # 3,600 rows/s need 22.5 %: followed at the most a flow is given, a quarter of the loop.
    assert share(rate=3_600) == FOLLOW_LIMIT
    # 12,000 rows/s would need 75 %: a burst, answered first.
    assert share(rate=12_000) == 0.02
    # A small batch says nothing about the cost per row (its query and commit dominate): followed.
    assert share(took=0.003, derived=10, full=False, rate=12_000) == 0.1
    # Past the lag limit: half the loop, burst or not.
    assert share(rate=12_000, behind=True) == CATCH_UP_SHARE


async def test_past_the_lag_limit_derivation_takes_half_the_loop(store: StateStore) -> None:
    recorder = Recorder(store)
    # Every row is "old" at once (lag_limit 0): the share rises from 1 % to half.
    consumer = InboxConsumer(
        store, [recorder], batch_size=16, busy_share=0.01, lag_limit=0.0, clock=lambda: 1_700_000_000.0
    )
    task = asyncio.create_task(consumer.run())
    try:
        for n in range(400):
            add(store, f"b{n}")
            consumer.notify()
            await asyncio.sleep(0)
        behind, _ = store.inbox_backlog()
        assert behind < 200
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_a_drain_with_a_budget_stops_starting_batches_once_it_is_spent(store: StateStore) -> None:
    for n in ("1", "2", "3", "4", "5"):
        add(store, n)
    recorder = Recorder(store)
    consumer = InboxConsumer(store, [recorder], batch_size=2)
    assert consumer.drain(budget=0.0) == 2  # a batch is never cut short, but no second one starts
    assert consumer.drain() == 3 and recorder.applied == ["1", "2", "3", "4", "5"]
