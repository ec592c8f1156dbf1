"""Group commit of delivery state, and rejection logs that a flood cannot flood."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.core.state import InboxDelivery, StateError, StateStore
from exporter.webhooks.commit import GroupCommitter


def delivery(delivery_id: str) -> InboxDelivery:
    """An accepted delivery as a receiver stores it."""
    body = f'{{"id":"{delivery_id}"}}'.encode()
    return InboxDelivery("p", "a", delivery_id, "deposit.processed", 1_700_000_000.0, body, {"X-Sig": "s"})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.db") as s:
        yield s


async def test_concurrent_jobs_share_one_commit_and_each_gets_its_result(store: StateStore) -> None:
    committer = GroupCommitter(store)
    seen: list[bool] = []

    def job(i: int) -> bool:
        return store.add_delivery(delivery(f"id-{i % 5}")) is not None

    results = await asyncio.gather(*(committer.run(lambda i=i: job(i), seen.append) for i in range(20)))
    assert committer.batches == 1 and committer.jobs == 20
    # Jobs run in arrival order inside the batch: the first of each id is new, the rest duplicates.
    assert results == [True] * 5 + [False] * 15 and seen == results
    with StateStore.open(store.path) as reader:
        assert all(reader.delivery_seen("p", "a", f"id-{i}") for i in range(5))
        assert [(r.delivery_id, r.duplicates) for r in reader.inbox_after(0, 100)] == [(f"id-{i}", 3) for i in range(5)]


async def test_a_failing_job_is_undone_alone(store: StateStore) -> None:
    committer = GroupCommitter(store)

    def failing() -> None:
        store.add_delivery(delivery("bad"))
        raise ValueError("nope")

    good = committer.run(lambda: store.add_delivery(delivery("good")) is not None)
    results = await asyncio.gather(committer.run(failing), good, return_exceptions=True)
    assert isinstance(results[0], ValueError) and results[1] is True
    assert store.delivery_seen("p", "a", "good") and not store.delivery_seen("p", "a", "bad")
    assert [r.delivery_id for r in store.inbox_after(0, 100)] == ["good"]


async def test_a_failed_commit_fails_every_caller_and_skips_bookkeeping(store: StateStore) -> None:
    committer = GroupCommitter(store)
    store.close()
    called: list[object] = []
    results = await asyncio.gather(
        *(committer.run(lambda: True, called.append) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, StateError) for r in results) and called == []


async def test_batches_are_bounded(store: StateStore) -> None:
    committer = GroupCommitter(store, max_batch=4)
    await asyncio.gather(*(committer.run(lambda i=i: i) for i in range(10)))
    assert committer.batches == 3 and committer.jobs == 10
