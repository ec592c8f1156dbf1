"""Supervisor: crashes are logged, counted and restarted with backoff; stop() cancels everything."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import pytest
from prometheus_client.registry import CollectorRegistry

from exporter.core.backoff import Backoff
from exporter.core.metrics import EXPORTER_TASK_RESTARTS, EXPORTER_TASK_RUNNING
from exporter.core.supervisor import Supervisor, SupervisorCollector
from tests.helpers import wait_for

RESTARTS = EXPORTER_TASK_RESTARTS.sample_names[0]


def tiny_supervisor(**kwargs: object) -> Supervisor:
    """Backoffs of milliseconds so restarts happen at once in tests."""
    params: dict[str, object] = {"backoff": Backoff(0.001, 0.004), "rng": random.Random(1)}
    params.update(kwargs)
    return Supervisor(**params)  # type: ignore[arg-type]


@pytest.fixture
async def supervisor() -> AsyncIterator[Supervisor]:
    sup = tiny_supervisor()
    yield sup
    await sup.stop(timeout=5)


def status(sup: Supervisor, name: str):
    return next(s for s in sup.status() if s.name == name)


def restart_records(caplog: pytest.LogCaptureFixture, task: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "task", None) == task and hasattr(r, "restart_in_seconds")]


async def test_crashing_task_is_logged_counted_and_restarted(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    runs = 0
    steady = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise ConnectionError(f"lost connection #{runs}")
        steady.set()
        await asyncio.Event().wait()

    caplog.set_level(logging.INFO)
    supervisor.start("websocket:main", flaky)
    await wait_for(steady.is_set)
    assert runs == 4
    assert status(supervisor, "websocket:main").restarts == 3
    assert status(supervisor, "websocket:main").running
    records = restart_records(caplog, "websocket:main")
    assert len(records) == 3
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in records)
    assert "lost connection #1" in str(records[0].exc_info[1])  # type: ignore[index]


async def test_task_that_returns_is_restarted_too(supervisor: Supervisor, caplog: pytest.LogCaptureFixture) -> None:
    runs = 0

    async def returns_early() -> None:
        nonlocal runs
        runs += 1

    supervisor.start("poller", returns_early)
    await wait_for(lambda: runs >= 3)
    assert status(supervisor, "poller").restarts >= 2
    assert any("returned" in r.getMessage() for r in restart_records(caplog, "poller"))


async def test_task_without_restart_finishes_once_and_is_logged(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    supervisor.start("migration", once, restart=False)
    await wait_for(lambda: status(supervisor, "migration").finished)
    assert runs == 1
    assert status(supervisor, "migration").restarts == 0
    assert not status(supervisor, "migration").running
    assert any(r.getMessage() == "task finished" and r.task == "migration" for r in caplog.records)  # type: ignore[attr-defined]


async def test_crash_without_restart_is_logged_with_traceback(
    supervisor: Supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken() -> None:
        raise KeyError("missing")

    supervisor.start("one-shot", broken, restart=False)
    await wait_for(lambda: status(supervisor, "one-shot").finished)
    [record] = [r for r in caplog.records if getattr(r, "task", None) == "one-shot"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], KeyError)
    assert status(supervisor, "one-shot").restarts == 0


async def test_task_raising_cancelled_error_on_its_own_is_a_crash(supervisor: Supervisor) -> None:
    runs = 0

    async def cancelled_inside() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise asyncio.CancelledError()
        await asyncio.Event().wait()

    supervisor.start("inner-cancel", cancelled_inside)
    await wait_for(lambda: runs == 2 and status(supervisor, "inner-cancel").running)
    assert status(supervisor, "inner-cancel").restarts == 1


async def test_backoff_doubles_up_to_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    sup = tiny_supervisor(backoff=Backoff(0.001, 0.004))
    runs = 0

    async def always_fails() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("down")

    sup.start("down", always_fails)
    await wait_for(lambda: runs >= 6)
    await sup.stop(timeout=5)
    delays = [r.restart_in_seconds for r in restart_records(caplog, "down")][:5]  # type: ignore[attr-defined]
    expected = [0.001, 0.002, 0.004, 0.004, 0.004]
    for delay, base in zip(delays, expected, strict=True):
        # Each delay is the nominal one cut by up to 20 % at random, never more than nominal
        # (the log rounds it to the millisecond).
        assert base * 0.8 - 0.0005 <= delay <= base + 0.0005


async def test_backoff_resets_after_a_long_run(caplog: pytest.LogCaptureFixture) -> None:
    now = 0.0
    sup = tiny_supervisor(backoff=Backoff(0.001, 0.004), reset_after=60, clock=lambda: now)
    runs = 0

    async def fails_after_a_long_run() -> None:
        nonlocal runs, now
        runs += 1
        now += 61  # every run "lasts" longer than reset_after
        raise RuntimeError("down again")

    sup.start("long", fails_after_a_long_run)
    await wait_for(lambda: runs >= 4)
    await sup.stop(timeout=5)
    delays = [r.restart_in_seconds for r in restart_records(caplog, "long")]  # type: ignore[attr-defined]
    assert len(delays) >= 3
    assert all(d <= 0.001 + 0.0005 for d in delays)


async def test_stop_cancels_and_awaits_every_task() -> None:
    sup = tiny_supervisor()
    cancelled: list[str] = []
    started = asyncio.Event()

    async def forever(name: str) -> None:
        try:
            started.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(name)
            raise

    sup.start("a", lambda: forever("a"))
    sup.start("b", lambda: forever("b"))
    await wait_for(lambda: all(s.running for s in sup.status()))
    await sup.stop(timeout=5)
    assert sorted(cancelled) == ["a", "b"]
    assert all(s.finished and not s.running for s in sup.status())


async def test_stop_cancels_a_task_waiting_to_restart() -> None:
    sup = tiny_supervisor(backoff=Backoff(3600, 3600))
    runs = 0

    async def fails() -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("down")

    sup.start("sleeping", fails)
    await wait_for(lambda: status(sup, "sleeping").restarts == 1)
    await sup.stop(timeout=5)
    assert status(sup, "sleeping").finished
    assert runs == 1


async def test_stop_logs_a_task_that_ignores_cancellation(caplog: pytest.LogCaptureFixture) -> None:
    sup = tiny_supervisor()
    release = asyncio.Event()
    entered = asyncio.Event()

    async def stubborn() -> None:
        entered.set()
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # deliberately ignores cancellation

    sup.start("stubborn", stubborn)
    await wait_for(entered.is_set)
    await sup.stop(timeout=0.05)
    assert any(
        r.levelno == logging.ERROR
        and getattr(r, "task", None) == "stubborn"
        and "ignored cancellation" in r.getMessage()
        for r in caplog.records
    )
    release.set()
    await wait_for(lambda: status(sup, "stubborn").finished)


async def test_duplicate_name_and_start_after_stop_are_refused(supervisor: Supervisor) -> None:
    async def idle() -> None:
        await asyncio.Event().wait()

    supervisor.start("x", idle)
    with pytest.raises(ValueError, match="already supervised"):
        supervisor.start("x", idle)
    await supervisor.stop(timeout=5)
    with pytest.raises(RuntimeError, match="stopped"):
        supervisor.start("y", idle)


async def test_collector_exposes_restarts_and_running_per_task(supervisor: Supervisor) -> None:
    registry = CollectorRegistry()
    registry.register(SupervisorCollector(supervisor))
    runs = 0

    async def crash_twice() -> None:
        nonlocal runs
        runs += 1
        if runs <= 2:
            raise RuntimeError("down")
        await asyncio.Event().wait()

    async def idle() -> None:
        await asyncio.Event().wait()

    supervisor.start("idle", idle)
    supervisor.start("flaky", crash_twice)
    await wait_for(lambda: runs == 3 and status(supervisor, "flaky").running and status(supervisor, "idle").running)
    assert registry.get_sample_value(RESTARTS, {"task": "idle"}) == 0.0
    assert registry.get_sample_value(RESTARTS, {"task": "flaky"}) == 2.0
    assert registry.get_sample_value(EXPORTER_TASK_RUNNING.name, {"task": "flaky"}) == 1.0
    names = {s.name for m in registry.collect() for s in m.samples}
    assert not any(n.endswith("_created") for n in names)
    await supervisor.stop(timeout=5)
    assert registry.get_sample_value(EXPORTER_TASK_RUNNING.name, {"task": "idle"}) == 0.0
