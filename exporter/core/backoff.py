"""The one retry delay rule: doubling from an initial delay up to a cap, each delay shortened at random.

Every retry in the exporter waits by this rule: a supervised task that crashed, a REST call answered
429 or 5xx, a WebSocket that dropped. The nominal delays are ``initial``, ``2 × initial``,
``4 × initial`` … up to ``maximum``; each is shortened by up to ``jitter`` (a fraction) at random, so
callers that failed together do not retry together, and the nominal delay is never exceeded, so the
cap is a real cap.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

#: How much of a nominal delay may be cut at random.
DEFAULT_JITTER = 0.2


@dataclass(frozen=True)
class Backoff:
    """Delays of ``initial`` seconds doubling to ``maximum``, each shortened by up to ``jitter``."""

    initial: float = 1.0
    maximum: float = 30.0
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        if not (0 <= self.initial <= self.maximum and 0 <= self.jitter < 1):
            raise ValueError("need 0 <= initial <= maximum and 0 <= jitter < 1")

    def nominal(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0-based) without jitter."""
        # The exponent is capped so a long outage cannot overflow the float.
        return min(self.maximum, math.ldexp(self.initial, min(attempt, 32)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """The delay before retry number ``attempt``: the nominal one, shortened by up to ``jitter``."""
        return self.nominal(attempt) * (1.0 - self.jitter * rng.random())


#: 1 s doubling to 30 s, each cut by up to 20 %: every retry in the exporter unless a test says otherwise.
DEFAULT_BACKOFF = Backoff()
