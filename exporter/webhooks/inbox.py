"""The webhook inbox's consumer: the state every accepted delivery implies, derived after its 200.

A receiver verifies a delivery, stores it as received in the inbox (:meth:`StateStore.add_delivery`:
the row is also its dedupe record), decides what must be decided before answering (WhiteBIT's strict
nonce rule, Zero Hash's downgrade marker), commits, and answers. What the delivery teaches about
transfers and Zero Hash balances is derived afterwards by :class:`InboxConsumer`, one task per
process, from the inbox rows in the order they were received:

- in batches of up to ``batch_size`` rows, each batch ONE transaction holding every row's derived
  writes and the move of the durable cursor (the cursor ``inbox:applied``) past the batch. A process
  killed at any point restarts from the cursor and derives what was not derived, each row once; the
  in-memory view (transfers in flight, outcome counters, Zero Hash balances) follows each commit.
- per provider by a :class:`Deriver` (:class:`exporter.whitebit.webhook.WhitebitDeriver`,
  :class:`exporter.zerohash.webhook.ZerohashDeriver`), which reads nothing but the row, so that the
  same rows derive the same state again (``whitebit-exporter state rebuild`` does exactly that).
- a row its deriver cannot derive (:class:`DeriveError`, or an exception none expected: a bug of
  ours) keeps its place in the inbox with the reason (``derive_error``), is counted in
  ``whitebit_exporter_inbox_derive_failures_total`` and logged (rate-limited), and the cursor moves
  on: one bad row never holds back the ones after it. A failed write of the state file
  (:class:`StateError` from SQLite) undoes the whole batch, which is tried again after a pause.

Receivers call :meth:`InboxConsumer.notify` after a commit that stored a row; the consumer also looks
every ``idle_poll`` seconds. Nothing about derivation has to be decided before a sender gets its
answer, so while rows keep arriving derivation takes at most :data:`BUSY_SHARE` of the event loop
(enough to follow a steady flow), only :data:`BURST_SHARE` while rows arrive faster than that
share can derive them (a burst: it is answered first and derivation falls behind), half of it once it
is :data:`LAG_LIMIT` seconds behind (so that a long, heavy flow cannot leave it behind for good),
and all it needs as soon as they stop; the backlog is exported
(``whitebit_exporter_inbox_pending_deliveries``, ``whitebit_exporter_inbox_lag_seconds``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from functools import partial
from typing import Protocol

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.errors import exception_text
from exporter.core.metrics import (
    EXPORTER_INBOX_DERIVE_FAILURES,
    EXPORTER_INBOX_DERIVED,
    EXPORTER_INBOX_LAG_SECONDS,
    EXPORTER_INBOX_PENDING,
)
from exporter.core.state import InboxDelivery, StateError
from exporter.core.storage import InboxLog
from exporter.webhooks.intake import RejectionLog

log = logging.getLogger(__name__)

#: Inbox rows derived in one transaction at most.
BATCH_SIZE = 256
#: Seconds between two looks at the inbox when no receiver said anything (a missed notify costs this).
IDLE_POLL = 1.0
#: Seconds before a batch whose state write failed is tried again.
RETRY_PAUSE = 1.0
#: The share of the event loop's time derivation takes at least while rows keep arriving.
BUSY_SHARE = 0.1
#: The most it takes to follow a steady flow: what the flow needs (the rate of arrivals times the cost
#: per row) with :data:`FOLLOW_MARGIN` to spare. A flow that needs more is a burst. The margin keeps a
#: flow that needs nearly ``BUSY_SHARE`` (each row's cost grows with what derivation does, a relay's
#: enqueue for one) from being taken for a burst and left seconds behind by a noisy measurement.
FOLLOW_LIMIT = 0.25
FOLLOW_MARGIN = 1.5
#: The most it takes while rows arrive faster than it derives them at :data:`BUSY_SHARE` (a full batch,
#: and the rate of arrivals times its cost per row above that share): a saturating burst. Following one
#: is impossible at any share short of most of the loop, and every bit taken from intake slows the
#: answers, so it takes little until the burst ends or it is :data:`LAG_LIMIT` behind. Only a full
#: batch tells: a small one's cost per row is mostly the batch's own (a query and a commit).
BURST_SHARE = 0.02
#: Seconds over which the rate of arrivals is measured: the answers to a burst reach the consumer in
#: lumps (those queued while a batch held the loop), which a shorter window would take for a burst.
RATE_WINDOW = 0.5
#: The longest pause between two batches while rows keep coming: a batch slowed by a WAL checkpoint
#: would otherwise buy a pause many times its length.
MAX_PAUSE = 1.0
#: Full batches whose cost per row is remembered; the cheapest is taken as the cost.
COST_SAMPLES = 3
#: Seconds behind (the oldest row of a batch) from which derivation takes :data:`CATCH_UP_SHARE` instead.
LAG_LIMIT = 10.0
CATCH_UP_SHARE = 0.5

#: What a deriver hands back: the in-memory update to run once its writes are committed, or None.
Applied = Callable[[], None] | None


class DeriveError(ValueError):
    """A row whose content cannot be derived into state; the message says why (never a secret)."""


class Deriver(Protocol):
    """Derives one provider's state from its inbox rows."""

    #: The ``provider`` of the rows it derives.
    provider: str

    def stage(self, delivery: InboxDelivery) -> Applied:
        """Write the state ``delivery`` implies (inside the consumer's transaction; nothing but the
        state store may change here) and return what to update in memory once that has committed.

        Raises :class:`DeriveError` for content it cannot derive.
        """
        ...


def loop_share(
    *,
    took: float,
    derived: int,
    full: bool,
    rate: float,
    behind: bool,
    busy_share: float,
    burst_share: float,
) -> float:
    """The share of the event loop derivation takes next while rows keep arriving. Pure.

    ``took``: seconds a batch of ``derived`` rows takes (the cheapest of the last few full ones: one
    that paid for a WAL checkpoint is not the cost of a row); ``full``: the last batch was full;
    ``rate``: rows stored per second, measured over at least :data:`RATE_WINDOW`; ``behind``: the
    oldest row is past the lag limit. Half the loop when behind; ``busy_share`` after a batch that
    was not full (derivation keeps up); after a full one, ``burst_share`` when following the arrivals
    would take more than :data:`FOLLOW_LIMIT` (a burst), else what following needs with
    :data:`FOLLOW_MARGIN` to spare, at least ``busy_share`` and at most ``FOLLOW_LIMIT``.
    """
    if behind:
        return CATCH_UP_SHARE
    if not full:
        return busy_share
    needed = rate * took / max(derived, 1)
    if needed > FOLLOW_LIMIT:
        return burst_share
    return min(max(busy_share, needed * FOLLOW_MARGIN), max(FOLLOW_LIMIT, busy_share))


class TapError(StateError):
    """A tap (the relay's enqueue) failed a batch. The batch is rolled back and tried again, so that
    derivation waits rather than derive a row the relay would never owe."""


class InboxConsumer(Collector):
    """Derives state from the inbox in the order received, with a durable cursor; renders its progress.

    ::

        # TYPE whitebit_exporter_inbox_pending_deliveries gauge
        whitebit_exporter_inbox_pending_deliveries 0.0
        # TYPE whitebit_exporter_inbox_lag_seconds gauge
        whitebit_exporter_inbox_lag_seconds 0.0
        # TYPE whitebit_exporter_inbox_derived_total counter
        whitebit_exporter_inbox_derived_total{provider="whitebit"} 12.0
    """

    name = "inbox"

    def __init__(
        self,
        store: InboxLog,
        derivers: Iterable[Deriver],
        *,
        batch_size: int = BATCH_SIZE,
        idle_poll: float = IDLE_POLL,
        retry_pause: float = RETRY_PAUSE,
        busy_share: float = BUSY_SHARE,
        burst_share: float = BURST_SHARE,
        lag_limit: float = LAG_LIMIT,
        clock: Callable[[], float] = time.time,
        taps: Sequence[Callable[[Sequence[InboxDelivery]], Applied]] = (),
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0 < busy_share <= 1 or not 0 < burst_share <= 1:
            raise ValueError("busy_share and burst_share must be in (0, 1]")
        self._busy_share = busy_share
        self._burst_share = burst_share
        self._lag_limit = lag_limit
        self._stored = 0
        self._batch_lag = 0.0
        self._store = store
        self._derivers = {deriver.provider: deriver for deriver in derivers}
        #: Called with each batch's rows in its transaction, once they are derived (the relay enqueues
        #: them there, so each row is owed to its targets exactly once). A tap writes through the store
        #: only, and returns what to run once the batch has committed; what it raises fails the batch
        #: like a failed write.
        self._taps = tuple(taps)
        self._batch_size = batch_size
        self._idle_poll = idle_poll
        self._retry_pause = retry_pause
        self._clock = clock
        self._wake = asyncio.Event()
        self._caught_up = asyncio.Event()
        self._failure_log = RejectionLog(log, message="inbox delivery not derived; kept with the reason")
        self._state_log = RejectionLog(log, message="inbox derivation paused: the state file failed a write")
        self._tap_log = RejectionLog(log, message="inbox derivation paused: the relay could not owe the batch")
        providers = sorted(self._derivers)
        self.derived: dict[str, int] = dict.fromkeys(providers, 0)
        self.failures: dict[str, int] = dict.fromkeys(providers, 0)

    def notify(self) -> None:
        """A receiver committed a new inbox row: derive it soon."""
        self._stored += 1
        self._caught_up.clear()
        self._wake.set()

    async def caught_up(self) -> None:
        """Return once the running consumer has found nothing left to derive (after the last notify)."""
        await self._caught_up.wait()

    async def run(self) -> None:
        """Derive batches while there are rows, wait for a notify (or ``idle_poll``) when there are none.

        While receivers keep storing rows, derivation takes at most ``busy_share`` of the event loop's
        time (after a batch that took t seconds it pauses ``t * (1 - share) / share``), less during a
        burst or more when far behind (:func:`loop_share`); once they stop, it derives batch after
        batch, each after every ready callback has run.
        """
        loop = asyncio.get_running_loop()
        share = self._busy_share
        stored = self._stored
        rate, window_start, window_stored = 0.0, loop.time(), stored  # arrivals per second, measured
        costs: deque[float] = deque(maxlen=COST_SAMPLES)  # seconds per row of the last full batches
        while True:
            self._wake.clear()
            started = loop.time()
            try:
                derived = self.derive_batch()
            except TapError as exc:
                self._tap_log.rejected(("inbox", "", "tap"), partial(dict, error=str(exc)))
                await asyncio.sleep(self._retry_pause)
                continue
            except StateError as exc:
                self._state_log.rejected(("inbox", "", "state"), partial(dict, error=str(exc)))
                await asyncio.sleep(self._retry_pause)
                continue
            if derived:
                if self._stored != stored:
                    # Rows keep coming (stored since the previous batch): intake first; derivation
                    # falls behind during a burst and catches up once it is over. Past lag_limit it
                    # takes half the loop, so that a flow it cannot follow at its share never leaves
                    # it behind for good.
                    stored = self._stored
                    now = loop.time()
                    took = now - started
                    if now - window_start >= RATE_WINDOW:
                        rate = (stored - window_stored) / (now - window_start)
                        window_start, window_stored = now, stored
                    full = derived >= self._batch_size
                    if full:
                        costs.append(took / derived)
                    part = loop_share(
                        took=min(costs, default=took / derived) * derived,
                        derived=derived,
                        full=full,
                        rate=rate,
                        behind=self._batch_lag >= self._lag_limit,
                        busy_share=share,
                        burst_share=self._burst_share,
                    )
                    await asyncio.sleep(min(took * (1 - part) / part, MAX_PAUSE))
                else:
                    await asyncio.sleep(0)  # every ready callback runs before the next batch
                continue
            if not self._wake.is_set():
                self._caught_up.set()
            with suppress(TimeoutError):
                async with asyncio.timeout(self._idle_poll):
                    await self._wake.wait()

    def drain(self, *, budget: float | None = None) -> int:
        """Derive the rows not derived yet, now (at start, at a stop); how many rows.

        ``budget``: stop starting new batches once this many seconds have passed (a stop has a
        deadline; what is left is derived at the next start). None derives every row.
        """
        deadline = None if budget is None else time.monotonic() + budget
        total = 0
        while derived := self.derive_batch():
            total += derived
            if deadline is not None and time.monotonic() >= deadline:
                break
        return total

    def derive_batch(self) -> int:
        """Derive the next batch in one transaction; how many rows it covered (0: none waited).

        Raises :class:`StateError` when the state file failed a write: nothing of the batch stays.
        """
        store = self._store
        rows = store.inbox_after(store.inbox_cursor(), self._batch_size, headers=False)
        if not rows:
            return 0
        self._batch_lag = self._clock() - rows[0].received_at
        try:
            # Every row derives in the common case: one transaction, no savepoint per row.
            with store.transaction():
                applied = [(row.provider, self._stage(row)) for row in rows]
                tapped = self._tap(rows)
                store.set_inbox_cursor(rows[-1].seq)
            failed: list[tuple[InboxDelivery, str]] = []
        except StateError as exc:
            if exc.kind is not None:
                raise  # the file failed, not a row: the whole batch is tried again later
            applied, failed, tapped = self._derive_isolated(rows)
        except Exception:
            # A row failed and took the batch with it (rolled back, memory untouched): again, with a
            # savepoint per row, so that only that row is passed over.
            applied, failed, tapped = self._derive_isolated(rows)
        for after in tapped:
            if after is not None:
                try:
                    after()
                except Exception:  # bookkeeping after the commit must never undo it
                    log.exception("after-tap bookkeeping failed")
        for provider, update in applied:
            if update is not None:
                try:
                    update()
                except Exception:  # memory bookkeeping must never undo a committed derivation
                    log.exception("after-derivation bookkeeping failed", extra={"provider": provider})
            self.derived[provider] = self.derived.get(provider, 0) + 1
        for row, error in failed:
            self.failures[row.provider] = self.failures.get(row.provider, 0) + 1
            self._log_failure(row, error)
        return len(rows)

    def _derive_isolated(
        self, rows: list[InboxDelivery]
    ) -> tuple[list[tuple[str, Applied]], list[tuple[InboxDelivery, str]], list[Applied]]:
        """:meth:`derive_batch`'s transaction with a savepoint per row: rows that fail are marked, not derived."""
        store = self._store
        applied: list[tuple[str, Applied]] = []
        failed: list[tuple[InboxDelivery, str]] = []
        with store.transaction():
            for row in rows:
                try:
                    with store.transaction():  # a savepoint: a row that fails leaves nothing behind
                        applied.append((row.provider, self._stage(row)))
                except StateError as exc:
                    if exc.kind is not None:
                        raise  # the file failed, not the row: the whole batch is tried again later
                    failed.append((row, exception_text(exc)))
                except DeriveError as exc:
                    failed.append((row, str(exc)))
                except Exception as exc:
                    failed.append((row, exception_text(exc)))
            for row, error in failed:
                store.mark_derive_error(row.seq, error)
            tapped = self._tap(rows)
            store.set_inbox_cursor(rows[-1].seq)
        return applied, failed, tapped

    def _tap(self, rows: Sequence[InboxDelivery]) -> list[Applied]:
        tapped: list[Applied] = []
        for tap in self._taps:
            try:
                tapped.append(tap(rows))
            except StateError:
                raise
            except Exception as exc:  # a bug of the tap's: the batch is tried again later, not lost
                raise TapError(exception_text(exc), "other") from exc
        return tapped

    def _stage(self, row: InboxDelivery) -> Applied:
        deriver = self._derivers.get(row.provider)
        if deriver is None:
            raise DeriveError(f"no deriver for provider {row.provider!r} (not configured now)")
        if row.body is None:
            return None  # kept as a dedupe record only (migrated, or past the retention): nothing to derive
        return deriver.stage(row)

    def _log_failure(self, row: InboxDelivery, error: str) -> None:
        self._failure_log.rejected(
            (row.provider, row.account, "derive"),
            lambda: {
                "provider": row.provider,
                "account": row.account,
                "method": row.method,
                "seq": row.seq,
                "error": error,
            },
        )

    def collect(self) -> Iterator[Metric]:
        pending = lag = math.nan
        with suppress(StateError):  # the state's own series say why it cannot be read
            count, oldest = self._store.inbox_backlog()
            pending = float(count)
            lag = max(self._clock() - oldest, 0.0) if oldest is not None else 0.0
        yield EXPORTER_INBOX_PENDING.render({(): pending})
        yield EXPORTER_INBOX_LAG_SECONDS.render({(): lag})
        yield EXPORTER_INBOX_DERIVED.render({(p,): float(n) for p, n in self.derived.items()})
        yield EXPORTER_INBOX_DERIVE_FAILURES.render({(p,): float(n) for p, n in self.failures.items()})
