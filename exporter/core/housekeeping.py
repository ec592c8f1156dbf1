"""The state file's clean-up: old records purged every hour, and its upkeep every few seconds, by one supervised task.

What may be forgotten, and when, is decided by the part that owns the records (delivery ids after
their dedupe window, final transfers after their retention); this task only runs those purges on a
schedule, off the path of any webhook delivery, and says what it removed. A purge that fails is
logged and tried again at the next round; nothing else depends on it.

The upkeep (:meth:`exporter.core.state.StateStore.upkeep`) runs every ``upkeep_interval`` seconds:
it measures the volume's free space, probes with a tiny write while writes fail (so ``/-/ready``
recovers without waiting for a delivery), checkpoints the WAL and restores the space reserve.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from exporter.core.state import StateError

log = logging.getLogger(__name__)

#: Seconds between two rounds of purges.
HOUSEKEEPING_INTERVAL = 3600.0
#: Seconds between two rounds of upkeep (a statvfs, a checkpoint of a short WAL; a probe when needed).
UPKEEP_INTERVAL = 5.0

#: A purge: given the clock's time, delete what has expired and return how many records went.
Purge = Callable[[float], int]


class Housekeeping:
    """Runs every purge at start and then every ``interval`` seconds, as the task ``state:housekeeping``."""

    name = "state:housekeeping"

    def __init__(
        self,
        purges: Mapping[str, Purge],
        *,
        interval: float = HOUSEKEEPING_INTERVAL,
        clock: Callable[[], float] = time.time,
        upkeep: Callable[[], None] | None = None,
        upkeep_interval: float = UPKEEP_INTERVAL,
        batched: Mapping[str, tuple[Purge, int]] | None = None,
    ) -> None:
        self._purges = dict(purges)
        self._batched = dict(batched or {})
        self._interval = interval
        self._clock = clock
        self._upkeep = upkeep
        self._upkeep_interval = upkeep_interval

    async def run(self) -> None:
        """Purge and keep up, sleep, repeat, until cancelled."""
        loop = asyncio.get_running_loop()
        next_purge = loop.time()
        while True:
            now = loop.time()
            if now >= next_purge:
                self.purge_once()
                await self.purge_in_batches()
                next_purge = now + self._interval
            if self._upkeep is not None:
                self.upkeep_once()
            step = next_purge - loop.time()
            if self._upkeep is not None:
                step = min(step, self._upkeep_interval)
            await asyncio.sleep(max(step, 0.0))

    def upkeep_once(self) -> None:
        """One round of upkeep; a failure is logged and the next round tries again."""
        if self._upkeep is None:
            return
        try:
            self._upkeep()
        except (StateError, OSError) as exc:
            log.warning("state upkeep failed", extra={"error": str(exc)})

    async def purge_in_batches(self) -> dict[str, int]:
        """Run every batched purge until it removes less than its batch, letting every other task run
        between two batches (one batch holds the event loop only briefly); how many each removed (one
        that failed before removing anything is left out, as in :meth:`purge_once`)."""
        removed: dict[str, int] = {}
        for what, (purge, batch) in self._batched.items():
            total, failed = 0, False
            while True:
                try:
                    count = purge(self._clock())
                except StateError as exc:
                    log.warning("purging old state failed", extra={"records": what, "error": str(exc)})
                    failed = True
                    break
                total += count
                if count < batch:
                    break
                await asyncio.sleep(0)
            if total or not failed:
                removed[what] = total
        if any(removed.values()):
            log.info("purged old state", extra=removed)
        return removed

    def purge_once(self) -> dict[str, int]:
        """Run every purge now; the number of records each removed (failed ones are left out)."""
        now = self._clock()
        removed: dict[str, int] = {}
        for what, purge in self._purges.items():
            try:
                removed[what] = purge(now)
            except StateError as exc:
                log.warning("purging old state failed", extra={"records": what, "error": str(exc)})
        if any(removed.values()):
            log.info("purged old state", extra=removed)
        return removed
