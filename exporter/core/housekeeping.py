"""The state file's clean-up: old records purged every hour by one supervised task.

What may be forgotten, and when, is decided by the part that owns the records (delivery ids after
their dedupe window, final transfers after their retention); this task only runs those purges on a
schedule, off the path of any webhook delivery, and says what it removed. A purge that fails is
logged and tried again at the next round; nothing else depends on it.
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
    ) -> None:
        self._purges = dict(purges)
        self._interval = interval
        self._clock = clock

    async def run(self) -> None:
        """Purge, sleep, repeat, until cancelled."""
        while True:
            self.purge_once()
            await asyncio.sleep(self._interval)

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
