"""Supervised long-lived asyncio tasks: a crash is logged, counted and restarted, never silent.

Every data source runs as a named task under one :class:`Supervisor`. A task that raises is
logged with its traceback, counted in ``whitebit_exporter_task_restarts_total{task}`` and
started again after an exponential backoff with jitter; a task that returns is restarted too,
because a long-lived task that quietly ends would freeze its metrics. ``stop()`` cancels and
awaits everything, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.backoff import DEFAULT_BACKOFF, Backoff
from exporter.core.metrics import EXPORTER_TASK_RESTARTS, EXPORTER_TASK_RUNNING

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


class Source(Protocol):
    """A long-lived data source (a WebSocket, a REST poller, the state clean-up) run under the supervisor."""

    @property
    def name(self) -> str:
        """The supervisor task name, e.g. ``websocket:main``; unique per exporter."""
        ...

    async def run(self) -> None:
        """Run until cancelled; raising gets the source restarted with backoff."""
        ...


@dataclass(frozen=True)
class TaskStatus:
    """A point-in-time view of one supervised task, for metrics and tests."""

    name: str
    running: bool
    restarts: int
    finished: bool


class _Supervised:
    """Book-keeping for one named task; mutated only by its runner on the event loop."""

    def __init__(self, name: str, factory: TaskFactory, restart: bool) -> None:
        self.name = name
        self.factory = factory
        self.restart = restart
        self.running = False
        self.restarts = 0
        self.runner: asyncio.Task[None] | None = None


class Supervisor:
    """Runs named coroutines, restarting them with backoff until :meth:`stop`.

    The wait before a restart follows ``backoff`` (:class:`~exporter.core.backoff.Backoff`: 1 s
    doubling per consecutive failure up to 30 s, each cut at random so several failing sources do
    not retry in lock-step); it starts over once a run lasted ``reset_after`` seconds.
    """

    def __init__(
        self,
        *,
        backoff: Backoff = DEFAULT_BACKOFF,
        reset_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._backoff = backoff
        self._reset_after = reset_after
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._tasks: dict[str, _Supervised] = {}
        self._stopping = False

    def start(self, name: str, factory: TaskFactory, *, restart: bool = True) -> None:
        """Run ``factory()`` as the task ``name`` (unique), now, on the running loop."""
        if self._stopping:
            raise RuntimeError(f"supervisor is stopped; cannot start task {name!r}")
        if name in self._tasks:
            raise ValueError(f"a task named {name!r} is already supervised")
        supervised = _Supervised(name, factory, restart)
        supervised.runner = asyncio.get_running_loop().create_task(self._run(supervised), name=f"supervised:{name}")
        supervised.runner.add_done_callback(self._runner_done)
        self._tasks[name] = supervised
        log.debug("task started", extra={"task": name})

    def status(self) -> list[TaskStatus]:
        """Every task ever started, in start order."""
        return [
            TaskStatus(
                name=t.name,
                running=t.running,
                restarts=t.restarts,
                finished=t.runner is not None and t.runner.done(),
            )
            for t in self._tasks.values()
        ]

    async def stop(self, timeout: float) -> None:
        """Cancel every task and wait up to ``timeout`` seconds for them to finish."""
        self._stopping = True
        runners = [t.runner for t in self._tasks.values() if t.runner is not None and not t.runner.done()]
        for runner in runners:
            runner.cancel()
        if not runners:
            return
        _, pending = await asyncio.wait(runners, timeout=timeout)
        for supervised in self._tasks.values():
            if supervised.runner in pending:
                log.error(
                    "task ignored cancellation; abandoning it",
                    extra={"task": supervised.name, "waited_seconds": timeout},
                )

    async def _run(self, supervised: _Supervised) -> None:
        consecutive_failures = 0
        while True:
            started = self._clock()
            error: BaseException | None = None
            supervised.running = True
            try:
                await supervised.factory()
            except asyncio.CancelledError as exc:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    supervised.running = False
                    raise
                # The task's own code raised CancelledError (e.g. a library cancelled an
                # inner future it did not own): a crash, not a shutdown.
                error = exc
            except Exception as exc:
                error = exc
            finally:
                supervised.running = False

            if self._stopping:
                # The task swallowed stop()'s cancellation or failed while cleaning up: log it,
                # never restart it.
                if error is None:
                    log.info("task ended after stop", extra={"task": supervised.name})
                else:
                    log.error("task failed while stopping", exc_info=error, extra={"task": supervised.name})
                return
            if not supervised.restart:
                if error is None:
                    log.info("task finished", extra={"task": supervised.name})
                else:
                    log.error(
                        "task crashed and is not restarted",
                        exc_info=error,
                        extra={"task": supervised.name},
                    )
                return

            if self._clock() - started >= self._reset_after:
                consecutive_failures = 0
            delay = self._backoff.delay(consecutive_failures, self._rng)
            consecutive_failures += 1
            supervised.restarts += 1
            fields = {
                "task": supervised.name,
                "restart_in_seconds": round(delay, 3),
                "restarts": supervised.restarts,
            }
            if error is None:
                log.error("task returned although it should run until stopped; restarting", extra=fields)
            else:
                log.error("task crashed; restarting", exc_info=error, extra=fields)
            await asyncio.sleep(delay)

    def _runner_done(self, runner: asyncio.Task[None]) -> None:
        # The runner loop catches everything its task raises; reaching here with an error
        # means the supervisor itself failed, which must never go unnoticed.
        if not runner.cancelled() and runner.exception() is not None:
            log.error("supervisor runner failed", exc_info=runner.exception(), extra={"task": runner.get_name()})


class SupervisorCollector(Collector):
    """The supervisor's own health.

    ::

        # TYPE whitebit_exporter_task_restarts_total counter
        whitebit_exporter_task_restarts_total{task="websocket:main"} 2.0
        # TYPE whitebit_exporter_task_running gauge
        whitebit_exporter_task_running{task="websocket:main"} 1.0
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self._supervisor = supervisor

    def collect(self) -> Iterator[Metric]:
        tasks = self._supervisor.status()
        yield EXPORTER_TASK_RESTARTS.render({(task.name,): task.restarts for task in tasks})
        yield EXPORTER_TASK_RUNNING.render({(task.name,): 1.0 if task.running else 0.0 for task in tasks})
