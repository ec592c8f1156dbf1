"""The garbage collector's settings for the exporter's process, applied once before it starts.

CPython collects its youngest generation whenever the container objects allocated since the last
collection, less those freed, exceed 700 (``gc.get_threshold()``). A delivery in flight holds a few
dozen containers (its request, coroutine frames, parsed JSON), so with 32 deliveries in flight that
count crosses 700 every few dozen deliveries although almost none of it is garbage: each is freed as
soon as its answer is written. Every tenth young collection also collects the middle generation,
and every so often a full collection walks every object alive, most of them (~47,000) made by the
imports at start-up. ``python -m benchmarks.bench_webhooks --gc default`` measures intake without
these settings.

So :func:`tune_garbage_collector`, called by the command line (``exporter.cli`` and the demo) once
the modules are imported and before anything listens:

- moves everything alive then to the permanent generation (``gc.freeze()``, after one full
  collection so that no start-up garbage is kept): it lives as long as the process, and no later
  collection walks it again;
- raises the young generation's threshold to :data:`YOUNG_THRESHOLD`, above what the deliveries in
  flight hold at once, so collections run when garbage builds up, not at every burst. Cyclic
  garbage, which is all a collection can free, waits a little longer: at most that many objects.

Done before the listeners bind, so the full collection's pause delays no connection. The settings
are the process's, so a library caller or a test of :class:`exporter.app.Exporter` never applies
them. See https://docs.python.org/3/library/gc.html#gc.freeze and #gc.set_threshold.
"""

from __future__ import annotations

import gc

#: Young-generation threshold: net container allocations between two young collections.
YOUNG_THRESHOLD = 10_000


def tune_garbage_collector() -> None:
    """Freeze what is alive now and raise the young generation's threshold (see the module docstring)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
