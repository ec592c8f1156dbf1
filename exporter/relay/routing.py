"""Which relay targets each inbox row goes to, and the inbox tap that owes it to them.

A target takes the rows of its ``providers``, of its ``accounts`` (WhiteBIT's; every account when
None) and of its ``methods`` (every method or payload type when None). A row without a body (a
dedupe record kept from before the inbox, or one past the retention) has nothing to send. The
:class:`RelayEnqueuer` runs as a tap of the inbox consumer (:class:`~exporter.webhooks.inbox.InboxConsumer`),
in the transaction that derives a batch, so each row is owed to each of its targets exactly once,
whatever the process goes through. Targets come from the config only, never from a delivery.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from exporter.config.schema import RelayTargetConfig
from exporter.core.state import InboxDelivery
from exporter.core.storage import RelayLog


class RelayRouter:
    """The targets of each inbox row. Pure."""

    def __init__(self, targets: Sequence[RelayTargetConfig]) -> None:
        self._targets = tuple(targets)

    def targets_for(self, row: InboxDelivery) -> list[str]:
        """The names of the targets ``row`` goes to, in config order."""
        if row.body is None:
            return []
        return [target.name for target in self._targets if _takes(target, row)]


def _takes(target: RelayTargetConfig, row: InboxDelivery) -> bool:
    if row.provider not in target.providers:
        return False
    if target.accounts is not None and row.provider == "whitebit" and row.account not in target.accounts:
        return False
    return target.methods is None or row.method in target.methods


class RelayEnqueuer:
    """The inbox tap that owes each derived row to its targets (see the module docstring)."""

    def __init__(
        self,
        store: RelayLog,
        router: RelayRouter,
        *,
        clock: Callable[[], float] = time.time,
        on_owed: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._router = router
        self._clock = clock
        #: Called with each target that was owed something, once the batch has committed.
        self._on_owed = on_owed

    def __call__(self, rows: Sequence[InboxDelivery]) -> Callable[[], None] | None:
        """Owe ``rows`` to their targets (in the consumer's transaction); what to run after its commit."""
        owed: dict[str, list[InboxDelivery]] = {}
        for row in rows:
            for target in self._router.targets_for(row):
                owed.setdefault(target, []).append(row)
        now = self._clock()
        for target, batch in owed.items():
            self._store.enqueue_relay(target, batch, at=now)
        on_owed = self._on_owed
        if on_owed is None or not owed:
            return None

        def notify() -> None:
            for target in owed:
                on_owed(target)

        return notify
