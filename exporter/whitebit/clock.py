"""WhiteBIT's clock as seen from here: the offset to it, measured, and the time nonces are signed with.

With ``nonceWindow`` a private request's nonce must be a millisecond timestamp within ±5 s of
*WhiteBIT's* clock (docs/protocol.md#nonces), so a host whose clock is a few seconds off would have
every request refused. :class:`ExchangeClock` is local time plus the last measured offset; the
REST client's nonces come from it. :class:`ClockSync`, one supervised task per WhiteBIT base URL
(``rest:clock:<account>``, named after the first account on that URL), measures the offset with
``GET /api/v4/public/time`` at start, every :data:`SYNC_INTERVAL` seconds, and at once when a
request was refused for its nonce (a 429 under ``nonceWindow``, or a nonce error) and the last
measurement is older than :data:`RESYNC_MIN_GAP` seconds; the refused request then goes again,
signed on the new reading. So a refused nonce leads to one re-measure and one retry, not a storm,
and a host whose clock is off by more than 5 s loses one request at start, not every request.

**The measurement.** WhiteBIT answers with whole (or fractional) seconds. The offset is the answer
minus the midpoint of our send and receive times; its uncertainty is half the round trip plus the
answer's resolution (a second for a whole-second answer, which WhiteBIT may round or cut off),
which stays well inside the ±5 s window on any usable link. A measurement whose round trip is
longer than :data:`MAX_ROUND_TRIP` is discarded: it could be off by more than it corrects.

``whitebit_clock_offset_seconds{account}`` shows the offset (WhiteBIT's clock minus ours), so an
alert can fire when the host's clock drifts, whatever the correction hides.

A measurement that fails (after the REST client's retries) or is discarded is a failure of the source
``rest:clock``, which keeps an outage log (:mod:`exporter.core.outage`): one line when it starts
failing, a summary every 5 minutes at most, one when a measurement succeeds again. It has no health
entry: nonces are signed on the last offset meanwhile, and a refused nonce shows on the polls.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.backoff import DEFAULT_BACKOFF, Backoff
from exporter.core.metrics import WHITEBIT_CLOCK_OFFSET_SECONDS, WHITEBIT_CLOCK_SYNC_TIMESTAMP_SECONDS
from exporter.core.outage import OutageReporter
from exporter.whitebit.rest import PUBLIC_TIME, ResponseError, RestError

log = logging.getLogger(__name__)

#: Seconds between two measurements of the offset.
SYNC_INTERVAL = 600.0
#: A refused nonce asks for a new measurement; no sooner than this many seconds after the last one.
RESYNC_MIN_GAP = 30.0
#: Measurements whose round trip took longer than this (seconds) are discarded.
MAX_ROUND_TRIP = 5.0
#: How long a refused request waits for the new measurement it asked for (seconds).
REFRESH_WAIT = 10.0
#: A refused nonce further than this (seconds) from the current reading was signed on an older one.
STALE_SIGNATURE = 1.0


@dataclass(frozen=True)
class ClockReading:
    """One measurement: WhiteBIT's clock minus ours, how sure we are, and when (our clock)."""

    offset: float
    uncertainty: float
    measured_at: float


def reading_from(sent: float, server_time: Any, received: float) -> ClockReading:
    """The reading of a ``/public/time`` answer ``{"time": …}`` sent and received at our ``sent``/``received``.

    Raises :class:`ValueError` for an answer that is not a finite number of seconds.
    """
    if isinstance(server_time, bool) or not isinstance(server_time, (int, float)) or not math.isfinite(server_time):
        raise ValueError(f"time is not a number of seconds: {str(server_time)[:40]!r}")
    midpoint = (sent + received) / 2
    # Whole seconds may be rounded or cut off (undocumented), so such an answer is good to a second.
    resolution = 1.0 if float(server_time).is_integer() else 0.001
    return ClockReading(
        offset=float(server_time) - midpoint,
        uncertainty=(received - sent) / 2 + resolution,
        measured_at=received,
    )


class ExchangeClock:
    """Our clock plus the last measured offset to WhiteBIT's (zero until the first measurement)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.time,
        *,
        min_gap: float = RESYNC_MIN_GAP,
        refresh_wait: float = REFRESH_WAIT,
    ) -> None:
        self._clock = clock
        self._min_gap = min_gap
        self._refresh_wait = refresh_wait
        self.reading: ClockReading | None = None
        self._resync = asyncio.Event()
        self._measured = asyncio.Condition()

    @property
    def offset(self) -> float:
        """WhiteBIT's clock minus ours, in seconds (0 before the first measurement)."""
        return 0.0 if self.reading is None else self.reading.offset

    def now(self) -> float:
        """WhiteBIT's time as best we know it, in Unix seconds."""
        return self._clock() + self.offset

    async def record(self, reading: ClockReading) -> None:
        """Keep a new measurement and wake every caller waiting for one."""
        self.reading = reading
        self._resync.clear()  # whoever asked for a measurement has one now
        async with self._measured:
            self._measured.notify_all()

    async def nonce_refused(self, nonce: int) -> bool:
        """The request signed with ``nonce`` (ms) was refused: True when it may go again on a newer reading.

        True at once when the nonce was signed on an older reading than the current one (it left
        before a measurement came in). Otherwise a new measurement is asked for and awaited, unless
        the last one is younger than ``min_gap`` (then the clock is not what a new measurement would
        fix: False at once); False too when none came within ``refresh_wait`` seconds. So a refusal
        costs at most one measurement and one retry.
        """
        if abs(nonce / 1000 - self.now()) > STALE_SIGNATURE:
            return True
        if self.reading is not None and self._clock() - self.reading.measured_at < self._min_gap:
            return False
        before = self.reading
        self._resync.set()
        async with self._measured:
            try:
                async with asyncio.timeout(self._refresh_wait):
                    await self._measured.wait_for(lambda: self.reading is not before)
            except TimeoutError:
                return False
        return True

    async def resync_requested(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for :meth:`nonce_refused`; True when it was called."""
        try:
            async with asyncio.timeout(timeout):
                await self._resync.wait()
        except TimeoutError:
            return False
        self._resync.clear()
        return True


class ClockSync:
    """Measures one WhiteBIT base URL's clock offset, as the supervised task ``rest:clock:<account>``."""

    def __init__(
        self,
        account: str,
        clock: ExchangeClock,
        fetch_time: Callable[[], Awaitable[Any]],
        *,
        local_clock: Callable[[], float] = time.time,
        outage_clock: Callable[[], float] = time.time,
        interval: float = SYNC_INTERVAL,
        backoff: Backoff = DEFAULT_BACKOFF,
        rng: random.Random | None = None,
    ) -> None:
        self.account = account
        #: Failed measurements; ``outage_clock`` is the exporter's clock, for how long they lasted.
        self.outage = OutageReporter("rest:clock", account, clock=outage_clock, logger=log)
        self._clock = clock
        self._fetch_time = fetch_time
        self._local = local_clock
        self._interval = interval
        self._backoff = backoff
        self._rng = rng if rng is not None else random.Random()

    @property
    def name(self) -> str:
        """The supervisor task name."""
        return f"rest:clock:{self.account}"

    async def run(self) -> None:
        """Measure now, then every interval, and soon after a refused nonce; until cancelled."""
        failures = 0
        while True:
            measured = await self.measure_once()
            failures = 0 if measured else failures + 1
            # A failed measurement is retried on the backoff schedule, never later than the interval.
            wait = self._interval if measured else min(self._interval, self._backoff.delay(failures - 1, self._rng))
            # A refused nonce cuts the wait short (ExchangeClock.nonce_refused keeps those rare).
            await self._clock.resync_requested(wait)

    async def measure_once(self) -> bool:
        """One measurement; True when it was taken (a failure is logged and changes nothing)."""
        sent = self._local()
        try:
            document = await self._fetch_time()
        except RestError as error:
            return self._failed(str(error))
        received = self._local()
        try:
            server_time = document.get("time") if isinstance(document, dict) else None
            reading = reading_from(sent, server_time, received)
        except ValueError as exc:
            return self._failed(str(ResponseError(PUBLIC_TIME, str(exc))))
        if received - sent > MAX_ROUND_TRIP:
            return self._failed(
                f"measurement discarded: the round trip took {received - sent:.1f}s (limit {MAX_ROUND_TRIP:g}s)"
            )
        self.outage.recovered()
        first = self._clock.reading is None
        previous = self._clock.offset
        await self._clock.record(reading)
        if first or abs(reading.offset - previous) >= 1.0:
            log.info(
                "clock offset to WhiteBIT measured",
                extra={
                    "account": self.account,
                    "offset_seconds": round(reading.offset, 3),
                    "uncertainty_seconds": round(reading.uncertainty, 3),
                },
            )
        return True

    def _failed(self, reason: str) -> bool:
        self.outage.failed(reason)
        log.debug("clock measurement failed", extra={"account": self.account, "reason": reason})
        return False


class ClockCollector(Collector):
    """The measured offset of every account's WhiteBIT clock.

    ::

        whitebit_clock_offset_seconds{account="main"} -3.2
        whitebit_clock_sync_timestamp_seconds{account="main"} 1.7e+09
    """

    def __init__(self, clocks: Iterable[tuple[str, ExchangeClock]] = ()) -> None:
        self._clocks = list(clocks)

    def add(self, account: str, clock: ExchangeClock) -> None:
        """Render ``account``'s clock too."""
        self._clocks.append((account, clock))

    def collect(self) -> Iterator[Metric]:
        measured = [(account, clock.reading) for account, clock in self._clocks if clock.reading is not None]
        yield WHITEBIT_CLOCK_OFFSET_SECONDS.render({(account,): r.offset for account, r in measured})
        yield WHITEBIT_CLOCK_SYNC_TIMESTAMP_SECONDS.render({(account,): r.measured_at for account, r in measured})
