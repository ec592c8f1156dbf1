"""Group commit: the state work of deliveries that arrive together, committed together before their 200s.

 A delivery may be answered 200 only once what it taught us is committed to the
state file. Committing each delivery on its own costs one SQLite commit per request; under load
(WhiteBIT retries, a burst of deposits, a flood of replays) the deliveries that arrive together
are instead committed together: each receiver hands its synchronous state work to
:meth:`GroupCommitter.run`, which queues it and, on a following turn of the event loop (it waits
up to ``MAX_WAIT_TURNS`` turns while each turn brings more deliveries, so a burst shares one
commit; a lone delivery goes on the next turn), runs every queued job in ONE transaction with
:meth:`StateStore.run_batch` (as if each job had its own savepoint: a job that raises is undone
alone, and its caller gets the exception), commits, runs each job's ``on_commit`` (which brings
memory, counters and logs up to date, whether or not its caller is still waiting), and only then
wakes the callers. Nothing awaits
inside the transaction, and a failed commit fails every caller of the batch (they answer 503 and
the sender retries). A delivery is therefore never answered 200 before its batch has committed.

"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from exporter.core.state import StateError
from exporter.core.storage import Transactions

T = TypeVar("T")
log = logging.getLogger(__name__)

#: A batch never grows beyond this many deliveries (bounds the time one commit holds the loop).
MAX_BATCH = 512
#: Loop turns a batch may wait for more deliveries while they keep arriving (bounds the added latency).
MAX_WAIT_TURNS = 4


class GroupCommitter:
    """Runs synchronous state jobs of concurrent deliveries in one transaction per event-loop turn."""

    def __init__(self, store: Transactions, *, max_batch: int = MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._store = store
        self._max_batch = max_batch
        self._pending: list[tuple[Callable[[], Any], Callable[[Any], None] | None, asyncio.Future[Any]]] = []
        self._scheduled = False
        self._waited = 0
        self._seen = 0
        self.batches = 0  # committed batches, for tests and benchmarks
        self.jobs = 0

    async def run(self, job: Callable[[], T], on_commit: Callable[[T], None] | None = None) -> T:
        """Run ``job`` (no awaits inside) in the next batch's transaction; return once committed.

        ``on_commit(result)`` runs right after the commit, before the caller resumes. Raises what
        ``job`` raised (its writes undone, the rest of the batch unaffected) or a
        :class:`StateError` when the batch could not be committed. ``job`` may run twice (see
        :meth:`StateStore.run_batch`): it must act on the state store only.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append((job, on_commit, future))
        if not self._scheduled:
            self._scheduled = True
            self._waited = 0
            self._seen = len(self._pending)
            loop.call_soon(self._tick)
        return await future

    def _tick(self) -> None:
        # Deliveries that arrive together reach the receiver over a few loop turns (one socket read
        # each); while the last turn brought more of them, wait one more turn so they share the
        # commit. An isolated delivery is committed on the very next turn.
        count = len(self._pending)
        if count > self._seen and count < self._max_batch and self._waited < MAX_WAIT_TURNS:
            self._seen = count
            self._waited += 1
            asyncio.get_running_loop().call_soon(self._tick)
            return
        self._flush()

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        if self._pending:
            self._scheduled = True
            self._waited = MAX_WAIT_TURNS  # the rest waited already: next turn
            asyncio.get_running_loop().call_soon(self._tick)
        live = [entry for entry in batch if not entry[2].cancelled()]
        try:
            results = self._store.run_batch([job for job, _, _ in live])
            # One result per job; a mismatch fails the whole batch (503, retried, then a duplicate)
            # rather than leaving some callers without an answer.
            outcomes = [
                (future, on_commit if exc is None else None, value, exc)
                for (_, on_commit, future), (value, exc) in zip(live, results, strict=True)
            ]
        except Exception as exc:
            error = exc if isinstance(exc, StateError) else StateError(f"state commit failed: {exc}")
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        self.batches += 1
        self.jobs += len(outcomes)
        for future, on_commit, value, failure in outcomes:
            if on_commit is not None:
                try:
                    on_commit(value)
                except Exception:  # bookkeeping must never turn a committed delivery into a failure
                    log.exception("after-commit bookkeeping failed")
            if future.done():  # the caller went away (client disconnected); the state is committed anyway
                continue
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(value)
