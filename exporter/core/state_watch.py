"""The state file's health made visible: ``/-/ready`` and the ``whitebit_exporter_state_*`` series.

The store notes what each of its reads and writes says about the file
(:class:`exporter.core.state.StateCondition`); this module turns that into a readiness source named
``state`` (503 with the reason while writes fail or once the file is found damaged, 200 again as
soon as a write succeeds) and into the series an alert watches. Free space is measured with one
``statvfs`` at each scrape, so it is never older than the scrape that shows it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.core.health import HealthRegistry
from exporter.core.metrics import EXPORTER_STATE_ERRORS, EXPORTER_STATE_VOLUME_FREE_BYTES, EXPORTER_STATE_WRITABLE
from exporter.core.state import StateStore

#: The readiness source of the state file (``/-/ready`` says ``state: …``).
SOURCE = "state"


class StateWatch(Collector):
    """Keeps the ``state`` readiness source in step with the store and renders the state series.

    ::

        # TYPE whitebit_exporter_state_writable gauge
        whitebit_exporter_state_writable 1.0
        # TYPE whitebit_exporter_state_volume_free_bytes gauge
        whitebit_exporter_state_volume_free_bytes 1.2e+09
        # TYPE whitebit_exporter_state_errors_total counter
        whitebit_exporter_state_errors_total{kind="full"} 0.0
    """

    def __init__(self, store: StateStore, health: HealthRegistry) -> None:
        self._store = store
        self._health = health.register(SOURCE, None)
        store.condition.on_change = self.refresh
        self.refresh()

    def refresh(self) -> None:
        """Report the store's current condition to readiness."""
        problem = self._store.condition.problem
        if problem:
            self._health.failing(problem)
        else:
            self._health.ok()

    def collect(self) -> Iterator[Metric]:
        condition = self._store.condition
        yield EXPORTER_STATE_WRITABLE.render({(): 1.0 if condition.writable else 0.0})
        yield EXPORTER_STATE_VOLUME_FREE_BYTES.render({(): self._store.volume_free_bytes()})
        yield EXPORTER_STATE_ERRORS.render({(kind,): float(n) for kind, n in condition.errors.items()})
