"""Quiet, exact logs while a source is down: one line when it fails, a summary now and then, one when it recovers.

A source that cannot reach WhiteBIT fails again at every retry, poll and reconnect; a line per
attempt would bury everything else. So each source (a REST poll kind of an account, the WebSocket of
an account and each of its channels, history reconciliation, WhiteBIT's clock) keeps an
:class:`OutageLog`, a pure state machine that turns its failures and successes, with the time, into
the few lines worth writing:

- the first failure after a success (or at start): ``source failing`` (warning) with the reason;
- while it keeps failing, at most one ``source still failing`` (warning) per :data:`SUMMARY_INTERVAL`
  (5 minutes), written with the failure that completes the interval: the failures since the
  previous line, the last reason and how long the source has been down;
- the first success after failures: ``source recovered`` (info), how long it was down and how many
  failures the outage counted.

Every attempt stays in the log at ``debug`` level, where the code that makes it writes it.

:class:`OutageReporter` is the part with I/O: it writes an :class:`OutageLog`'s lines to a logger,
with the fields that name the source. :class:`SourceStatus` tells a source's health entry
(:mod:`exporter.core.health`, for ``/-/ready`` and ``whitebit_up``) and its outage log the same
thing at once, so what readiness shows and what the log says never disagree.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from exporter.core.health import SourceHealth

log = logging.getLogger(__name__)

#: Seconds between two ``source still failing`` lines of one source, at least.
SUMMARY_INTERVAL = 300.0

#: What an :class:`OutageLine` says.
FAILING = "failing"
STILL_FAILING = "still failing"
RECOVERED = "recovered"

_MESSAGES = {FAILING: "source failing", STILL_FAILING: "source still failing", RECOVERED: "source recovered"}


@dataclass(frozen=True)
class OutageLine:
    """One line to write about a source's outage."""

    event: str
    #: The failure's reason (``failing``), or the last failure's (``still failing``, ``recovered``).
    reason: str
    #: ``failing``: 1; ``still failing``: the failures since the previous line; ``recovered``: the outage's.
    failures: int
    #: Seconds since the outage's first failure.
    down_seconds: float


class OutageLog:
    """Which line, if any, each failure or success of one source calls for (no I/O; the caller passes the time)."""

    def __init__(self, summary_interval: float = SUMMARY_INTERVAL) -> None:
        self.summary_interval = summary_interval
        self._since: float | None = None  # the outage's first failure; None while the source is up
        self._last_line_at = 0.0
        self._failures = 0
        self._unreported = 0  # failures since the previous line
        self._reason = ""

    @property
    def failing(self) -> bool:
        """True from a failure until the next success."""
        return self._since is not None

    @property
    def failures(self) -> int:
        """Failures of the current outage (0 while the source is up)."""
        return self._failures

    def failed(self, reason: str, now: float) -> OutageLine | None:
        """One failure at ``now``: the ``failing`` line for the first, a ``still failing`` summary once an
        interval has passed since the previous line, else nothing."""
        self._reason = reason
        if self._since is None:
            self._since = self._last_line_at = now
            self._failures = 1
            self._unreported = 0
            return OutageLine(FAILING, reason, 1, 0.0)
        self._failures += 1
        self._unreported += 1
        # A clock stepped back starts the interval over rather than silencing the source for as long.
        self._last_line_at = min(self._last_line_at, now)
        if now - self._last_line_at < self.summary_interval:
            return None
        line = OutageLine(STILL_FAILING, reason, self._unreported, max(0.0, now - self._since))
        self._last_line_at = now
        self._unreported = 0
        return line

    def succeeded(self, now: float) -> OutageLine | None:
        """One success at ``now``: the ``recovered`` line when it ends an outage, else nothing."""
        if self._since is None:
            return None
        line = OutageLine(RECOVERED, self._reason, self._failures, max(0.0, now - self._since))
        self._since = None
        self._failures = self._unreported = 0
        self._reason = ""
        return line


class OutageReporter:
    """Writes one source's :class:`OutageLog` lines to ``logger``, with the fields that name the source.

    ::

        msg="source failing" source=rest:main_balance account=main reason="…: connection refused (127.0.0.1:9)"
        msg="source still failing" source=rest:main_balance account=main failures=27 down_seconds=300.4 reason="…"
        msg="source recovered" source=rest:main_balance account=main failures=36 down_seconds=412.9
    """

    def __init__(
        self,
        source: str,
        account: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger = log,
        summary_interval: float = SUMMARY_INTERVAL,
        fields: Mapping[str, str] | None = None,
    ) -> None:
        self._fields: dict[str, Any] = {"source": source}
        if account is not None:
            self._fields["account"] = account
        self._fields.update(fields or {})
        self._clock = clock
        self._log = logger
        self.outage = OutageLog(summary_interval)

    @property
    def failing(self) -> bool:
        """True from a failure until the next success."""
        return self.outage.failing

    def failed(self, reason: str) -> None:
        """The source failed (never put a secret in ``reason``)."""
        self._write(self.outage.failed(reason, self._clock()))

    def recovered(self) -> None:
        """The source works (again); a no-op unless it was failing."""
        self._write(self.outage.succeeded(self._clock()))

    def _write(self, line: OutageLine | None) -> None:
        if line is None:
            return
        fields = dict(self._fields)
        if line.event != FAILING:
            fields["failures"] = line.failures
            fields["down_seconds"] = round(line.down_seconds, 1)
        if line.event != RECOVERED:
            fields["reason"] = line.reason
        level = logging.INFO if line.event == RECOVERED else logging.WARNING
        self._log.log(level, _MESSAGES[line.event], extra=fields)


class SourceStatus:
    """A source's health entry and its outage log, told the same thing at once.

    What :class:`~exporter.whitebit.pollers.Poller` reports: ``failed`` when a poll failed, ``ok`` when
    one succeeded, and ``attempt_failed`` for each attempt its REST client is about to retry. A source
    that is no account's data (the public ticker's prices) has no health entry (:meth:`unlisted`): it
    logs its outages like any other but never makes the exporter unready.
    """

    def __init__(
        self,
        health: SourceHealth,
        *,
        logger: logging.Logger = log,
        summary_interval: float = SUMMARY_INTERVAL,
    ) -> None:
        self.health: SourceHealth | None = health
        self._ok = False
        # The health registry's clock: the exporter's, which tests move by hand.
        self.outage = OutageReporter(
            health.source, health.account, clock=health.clock, logger=logger, summary_interval=summary_interval
        )

    @classmethod
    def unlisted(
        cls,
        source: str,
        account: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
        logger: logging.Logger = log,
        summary_interval: float = SUMMARY_INTERVAL,
    ) -> SourceStatus:
        """A status that only logs: no health entry, so ``/-/ready`` and ``whitebit_up`` never hear of it."""
        status = cls.__new__(cls)
        status.health = None
        status._ok = False
        status.outage = OutageReporter(source, account, clock=clock, logger=logger, summary_interval=summary_interval)
        return status

    def ok(self, note: str = "") -> None:
        """The source is connected and fresh (see :meth:`SourceHealth.ok`); ends an outage."""
        if self.health is not None:
            self.health.ok(note)
        self._ok = True
        self.outage.recovered()

    def failed(self, reason: str) -> None:
        """The source failed: ``/-/ready`` shows ``reason`` and the outage log counts it."""
        if self.health is not None:
            self.health.failing(reason)
        self._ok = False
        self.outage.failed(reason)

    def attempt_failed(self, reason: str) -> None:
        """An attempt failed and is about to be retried.

        While the source is OK (its data still fresh) that is detail, logged at debug by whoever retries.
        While it is not (starting, or already failing), it is a failure like any other, so ``/-/ready``
        names the real reason from the first failed attempt, not ``starting`` until every retry is spent.
        """
        is_ok = self.health.is_ok if self.health is not None else self._ok
        if not is_ok:
            self.failed(reason)
