"""The one retry delay rule: doubling to a cap, each delay cut at random, never above nominal."""

from __future__ import annotations

import random

import pytest

from exporter.core.backoff import Backoff


def test_nominal_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(1.0, 30.0)
    assert [backoff.nominal(n) for n in range(7)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff.nominal(10_000) == 30.0  # a long outage never overflows


def test_each_delay_is_the_nominal_one_cut_by_at_most_the_jitter() -> None:
    backoff = Backoff(1.0, 30.0, jitter=0.2)
    rng = random.Random(3)
    delays = [[backoff.delay(n, rng) for _ in range(200)] for n in range(8)]
    for n, sample in enumerate(delays):
        nominal = backoff.nominal(n)
        assert all(0.8 * nominal <= d <= nominal for d in sample)
        assert max(sample) - min(sample) > 0.1 * nominal  # really spread, not a constant


def test_no_jitter_gives_the_nominal_delays() -> None:
    backoff = Backoff(0.5, 2.0, jitter=0.0)
    assert [backoff.delay(n, random.Random(1)) for n in range(4)] == [0.5, 1.0, 2.0, 2.0]


@pytest.mark.parametrize(("initial", "maximum", "jitter"), [(-1.0, 1.0, 0.2), (2.0, 1.0, 0.2), (1.0, 2.0, 1.0)])
def test_impossible_rules_are_refused(initial: float, maximum: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="initial <= maximum"):
        Backoff(initial, maximum, jitter)
