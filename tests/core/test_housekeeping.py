"""The hourly clean-up of the state file: every purge runs, a failing one is logged and retried."""

from __future__ import annotations

import asyncio
import logging

import pytest

from exporter.core.housekeeping import Housekeeping
from exporter.core.state import StateError
from tests.helpers import wait_for


def test_every_purge_gets_the_time_and_reports_what_it_removed(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[str, float]] = []

    def purge(what: str, count: int):  # type: ignore[no-untyped-def]
        def run(now: float) -> int:
            seen.append((what, now))
            return count

        return run

    caplog.set_level(logging.INFO, logger="exporter.core.housekeeping")
    housekeeping = Housekeeping({"ids": purge("ids", 3), "transfers": purge("transfers", 0)}, clock=lambda: 500.0)
    assert housekeeping.purge_once() == {"ids": 3, "transfers": 0}
    assert seen == [("ids", 500.0), ("transfers", 500.0)]
    [record] = [r for r in caplog.records if r.getMessage() == "purged old state"]
    assert record.__dict__["ids"] == 3


def test_a_failing_purge_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    def broken(now: float) -> int:
        raise StateError("disk I/O error")

    housekeeping = Housekeeping({"broken": broken, "ids": lambda now: 1})
    assert housekeeping.purge_once() == {"ids": 1}
    assert any(
        r.getMessage() == "purging old state failed" and r.__dict__["records"] == "broken" for r in caplog.records
    )


async def test_the_task_purges_at_start_and_then_every_interval() -> None:
    rounds = 0

    def count(now: float) -> int:
        nonlocal rounds
        rounds += 1
        return 0

    task = asyncio.create_task(Housekeeping({"n": count}, interval=0.01).run())
    try:
        await wait_for(lambda: rounds >= 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_batched_purge_runs_batch_after_batch_until_one_is_short_letting_others_run_between() -> None:
    left = [1250]  # rows due: two full batches of 500, then 250
    calls: list[int] = []
    between: list[int] = []

    def purge(now: float) -> int:
        calls.append(len(between))
        removed = min(left[0], 500)
        left[0] -= removed
        return removed

    async def other_task() -> None:
        while len(calls) < 3:
            between.append(len(calls))
            await asyncio.sleep(0)

    housekeeping = Housekeeping({}, batched={"inbox": (purge, 500)}, clock=lambda: 1.0)
    other = asyncio.create_task(other_task())
    removed = await housekeeping.purge_in_batches()
    await other
    assert removed == {"inbox": 1250} and left == [0] and len(calls) == 3
    # The other task ran between every two batches: each batch saw more of its turns than the last.
    assert calls[0] < calls[1] < calls[2]


async def test_a_failing_batched_purge_is_logged_and_stops_until_the_next_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def purge(now: float) -> int:
        raise StateError("disk I/O error", "io")

    housekeeping = Housekeeping({}, batched={"inbox": (purge, 500)})
    assert await housekeeping.purge_in_batches() == {}
    assert [r.getMessage() for r in caplog.records] == ["purging old state failed"]
