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

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.core.metrics import EXPORTER_TASK_RESTARTS, EXPORTER_TASK_RUNNING

log = logging.getLogger(__name__)

TaskFactory = Callable[[], Awaitable[None]]


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

    The backoff before a restart is ``initial_backoff`` doubled per consecutive failure,
    capped at ``max_backoff``, with ±10 % jitter so several failing sources do not retry in
    lock-step; it resets once a run lasted ``reset_after`` seconds.
    """

    def __init__(
        self,
        *,
        initial_backoff: float = 1.0,
        max_backoff: float = 30.0,
        reset_after: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if initial_backoff < 0 or max_backoff < initial_backoff:
            raise ValueError("need 0 <= initial_backoff <= max_backoff")
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
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
            delay = self._backoff(consecutive_failures)
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

    def _backoff(self, consecutive_failures: int) -> float:
        # Cap the exponent so a long outage does not overflow the float.
        base = self._initial_backoff * 2 ** min(consecutive_failures, 32)
        return min(self._max_backoff, base * self._rng.uniform(0.9, 1.1))

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
        restarts = CounterMetricFamily(
            EXPORTER_TASK_RESTARTS,
            "Times a supervised task crashed or ended and was restarted.",
            labels=["task"],
        )
        running = GaugeMetricFamily(
            EXPORTER_TASK_RUNNING,
            "1 while the supervised task runs, 0 while it waits to restart or has ended.",
            labels=["task"],
        )
        for status in self._supervisor.status():
            restarts.add_metric([status.name], float(status.restarts))
            running.add_metric([status.name], 1.0 if status.running else 0.0)
        yield restarts
        yield running
