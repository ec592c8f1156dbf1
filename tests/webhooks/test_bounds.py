"""The bounds a delivery's content is read within (exporter/webhooks/bounds.py), and Zero Hash's run order."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest

from exporter.core.state import ZerohashBalance
from exporter.core.state import run_id_sort_key as run_order
from exporter.webhooks.bounds import (
    MAX_JSON_DEPTH,
    OutOfBounds,
    bounded_decimal,
    bounded_seconds,
    json_depth_exceeds,
)
from exporter.whitebit.transfers import created_at_of, int_or_none
from exporter.zerohash.balances import supersedes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("25.000000000000000000", Decimal("25.000000000000000000")),  # WhiteBIT's 18 decimals
        ("1000000000000000.000000000000000001", Decimal("1000000000000000.000000000000000001")),  # 1e15, 18 places
        (" 250.5 ", Decimal("250.5")),
        (10**15, Decimal(10**15)),
        (0.5, Decimal("0.5")),
        ("-0", Decimal("-0")),
        ("1e40", Decimal("1e40")),
        ("1e-40", Decimal("1e-40")),
    ],
)
def test_genuine_numbers_are_within_the_bounds(value: Any, expected: Decimal) -> None:
    number = bounded_decimal(value, "amount")
    assert number == expected and str(number) == str(expected)


@pytest.mark.parametrize(
    "value",
    [
        "1e-999999999",
        "1e999999999",
        "1e41",
        "1e-41",
        "1" * 41,
        "1" * 65,
        10**40,
        10**400,
        "NaN",
        "sNaN",
        "Infinity",
        float("inf"),
        True,
        None,
        [],
        "ten",
    ],
)
def test_numbers_beyond_the_bounds_are_refused_at_once(value: Any) -> None:
    started = time.perf_counter()
    with pytest.raises(OutOfBounds):
        bounded_decimal(value, "amount")
    assert time.perf_counter() - started < 0.01


def test_times_outside_2000_to_2100_are_refused() -> None:
    assert bounded_seconds(1_760_000_000.0, "t") == 1_760_000_000.0
    for value in (5.0, 946_684_799.0, 4_102_444_800.0, float("nan"), float("inf")):
        with pytest.raises(OutOfBounds):
            bounded_seconds(value, "t")


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize(
    ("body", "too_deep"),
    [
        (nested(MAX_JSON_DEPTH), False),
        (nested(MAX_JSON_DEPTH + 1), True),
        (b'{"a":' * 40 + b"1" + b"}" * 40, True),
        # Brackets inside strings, escaped quotes included, do not count.
        (json.dumps({"s": "[" * 500, "t": '\\"[[[' + "{" * 100}).encode(), False),
        (json.dumps([{"a": [1, 2, {"b": "]]]]"}]}] * 500).encode(), False),
        (b"[" * 10_000, True),
    ],
)
def test_json_depth_is_measured_on_the_bytes(body: bytes, too_deep: bool) -> None:
    assert json_depth_exceeds(body) is too_deep


def test_the_depth_scan_of_a_64_kib_body_takes_milliseconds() -> None:
    body = b"[" * 65_536
    started = time.perf_counter()
    assert json_depth_exceeds(body)
    assert time.perf_counter() - started < 0.05


def test_int_or_none_takes_ascii_digits_of_64_bits_only() -> None:
    assert int_or_none("42") == 42 and int_or_none(" -7 ") == -7
    for value in ("\u00b2", "\u0661\u0662", "9" * 5000, "1_000", str(2**63), 2**63, True, 1.5):
        assert int_or_none(value) is None


def test_created_at_outside_any_time_is_none() -> None:
    assert created_at_of(1_700_000_000) == 1_700_000_000.0
    for value in (10**400, "1e999", float("nan"), -1, "9" * 100):
        assert created_at_of(value) is None


def balance(timestamp: float, run_id: str | None) -> ZerohashBalance:
    return ZerohashBalance("P", "G", "general", "available", "USD", Decimal(1), timestamp, run_id)


def test_run_ids_order_by_value_then_text() -> None:
    assert run_order("99") < run_order("100") < run_order("0101") < run_order("abc")
    assert run_order(None) < run_order("0")
    assert run_order("007") == run_order("7")


def test_supersedes_newer_time_then_higher_run_then_later_arrival() -> None:
    assert supersedes(balance(2, "1"), balance(1, "9"))
    assert not supersedes(balance(1, "9"), balance(2, "1"))
    assert supersedes(balance(1, "100"), balance(1, "99"))
    assert not supersedes(balance(1, "99"), balance(1, "100"))
    assert supersedes(balance(1, "5"), balance(1, "5"))  # equal both ways: the later arrival
    assert supersedes(balance(1, "5"), None)
