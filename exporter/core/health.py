"""Health of each data source, feeding ``/-/ready`` and ``whitebit_up{account}``.

A source (the WebSocket of account ``main``, its REST poller, …) registers once and then
reports ``ok()`` or ``failing(reason)`` as its connection comes and goes. It is ``starting`` only
until its first attempt: a failed attempt replaces that with its reason at once (a REST poll's,
through :class:`exporter.core.outage.SourceStatus`, before any retry). A registration with
``max_age`` also turns stale on its own when ``ok()`` has not been repeated for that long, so a
poller that silently hangs cannot keep the exporter "ready".

A source that serves but has lost a part another source stands in for (a WebSocket channel whose
wallet a REST poll keeps current) reports ``ok(note=...)``: it counts as OK (``whitebit_up`` stays
1, ``/-/ready`` 200), and the note is listed on ``/-/ready`` under the ``ready`` line, so the
operator still sees what is missing and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.metrics import WHITEBIT_UP

STARTING = "starting"


class SourceHealth:
    """The current state of one registered source; only its owner calls ``ok``/``failing``."""

    def __init__(
        self,
        source: str,
        account: str | None,
        *,
        max_age: float | None,
        clock: Callable[[], float],
    ) -> None:
        self.source = source
        self.account = account
        self._max_age = max_age
        self._clock = clock
        self._ok = False
        self._reason = STARTING
        self._note = ""
        self._last_ok: float | None = None

    @property
    def clock(self) -> Callable[[], float]:
        """The clock this entry measures staleness by (the registry's)."""
        return self._clock

    @property
    def label(self) -> str:
        """How readiness names this source: ``websocket main`` or just ``zerohash``."""
        return self.source if self.account is None else f"{self.source} {self.account}"

    def ok(self, note: str = "") -> None:
        """The source is connected and its data is fresh (as of now).

        ``note`` says what it does without (another source covering it); shown on ``/-/ready``.
        """
        self._ok = True
        self._reason = ""
        self._note = note
        self._last_ok = self._clock()

    def failing(self, reason: str) -> None:
        """The source is not usable; ``reason`` is shown on ``/-/ready`` (never put a secret in it)."""
        self._ok = False
        self._reason = reason
        self._note = ""

    @property
    def note(self) -> str:
        """What an OK source does without, or empty."""
        return self._note if self.is_ok else ""

    @property
    def is_ok(self) -> bool:
        """True after ``ok()`` unless a later ``failing()`` or ``max_age`` has passed."""
        return self._ok and not self._stale()

    @property
    def reason(self) -> str:
        """Why the source is not OK; empty while it is."""
        if not self._ok:
            return self._reason
        age = self._age_over_limit()
        if age is not None:
            return f"stale: no fresh data for {age:.0f}s (limit {self._max_age:.0f}s)"
        return ""

    def _stale(self) -> bool:
        return self._age_over_limit() is not None

    def _age_over_limit(self) -> float | None:
        """Seconds since the last ``ok()`` when that exceeds ``max_age``, else None."""
        if self._max_age is None or self._last_ok is None:
            return None
        age = self._clock() - self._last_ok
        return age if age > self._max_age else None


class HealthRegistry:
    """Every source's health, keyed by ``(source, account)``."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._sources: dict[tuple[str, str | None], SourceHealth] = {}

    def register(self, source: str, account: str | None, *, max_age: float | None = None) -> SourceHealth:
        """Track a source; it starts failing with reason "starting".

        Registering the same ``(source, account)`` again returns the existing handle, so a
        source restarted by the supervisor keeps one entry.
        """
        key = (source, account)
        existing = self._sources.get(key)
        if existing is not None:
            return existing
        health = SourceHealth(source, account, max_age=max_age, clock=self._clock)
        self._sources[key] = health
        return health

    def sources(self) -> list[SourceHealth]:
        """Every registered source, in registration order."""
        return list(self._sources.values())

    def account_ok(self, account: str) -> bool:
        """True when every source registered for ``account`` is OK (vacuously for none)."""
        return all(h.is_ok for h in self._sources.values() if h.account == account)

    def readiness(self) -> tuple[bool, list[str]]:
        """``(ready, lines)``: one ``"<source> [<account>]: <reason>"`` line per failing source."""
        lines = [f"{h.label}: {h.reason}" for h in self._sources.values() if not h.is_ok]
        return (not lines, lines)

    def notes(self) -> list[str]:
        """One ``"<source> [<account>]: <note>"`` line per OK source that does without a part."""
        return [f"{h.label}: {h.note}" for h in self._sources.values() if h.note]


class UpCollector(Collector):
    """``whitebit_up{account}`` for every configured WhiteBIT account.

    ::

        # TYPE whitebit_up gauge
        whitebit_up{account="main"} 1.0
        whitebit_up{account="ops"} 0.0

    An account with no registered sources (webhooks only) is up: nothing it depends on is down.
    """

    def __init__(self, health: HealthRegistry, accounts: Iterable[str]) -> None:
        self._health = health
        self._accounts = tuple(accounts)

    def collect(self) -> Iterator[Metric]:
        family = WHITEBIT_UP.family()
        for account in self._accounts:
            family.add_metric([account], 1.0 if self._health.account_ok(account) else 0.0)
        yield family
