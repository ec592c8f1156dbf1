"""The garbage collector's settings the command line applies before the exporter starts."""

from __future__ import annotations

import json
import subprocess
import sys

from exporter.core.gc_tuning import YOUNG_THRESHOLD

# Run in a child: the settings are the process's, and this test process must keep CPython's.
_PROBE = """
import gc, json
from exporter.core.gc_tuning import tune_garbage_collector
before = gc.get_threshold()
start_up = [[n] for n in range(1000)]  # containers alive before the start, as the imports leave them
tune_garbage_collector()
garbage = []
garbage.append(garbage)  # a cycle made after start, then dropped: still collectable
del garbage
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": gc.get_freeze_count(),
                  "collected": gc.collect(), "tracked": len(gc.get_objects())}))
"""


def test_start_up_objects_are_frozen_the_young_threshold_raised_and_later_garbage_collected() -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(result.stdout)
    assert seen["after"] == [YOUNG_THRESHOLD, *seen["before"][1:]]
    assert seen["before"][0] < YOUNG_THRESHOLD
    assert seen["frozen"] >= 1000  # the start-up containers went to the permanent generation
    assert seen["tracked"] < 1000  # ... so no collection walks them any more
    assert seen["collected"] >= 1  # the cycle made after start was freed
