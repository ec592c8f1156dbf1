"""The outage log: which lines a source's failures and successes call for, and how they are written."""

from __future__ import annotations

import logging

import pytest

from exporter.core.health import HealthRegistry
from exporter.core.outage import (
    FAILING,
    RECOVERED,
    STILL_FAILING,
    SUMMARY_INTERVAL,
    OutageLine,
    OutageLog,
    OutageReporter,
    SourceStatus,
)
from tests.helpers import logfmt_lines

LOGGER = "tests.outage"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    return logfmt_lines(r for r in caplog.records if r.name == LOGGER)


def picked(line: dict[str, str], *keys: str) -> dict[str, str | None]:
    return {key: line.get(key) for key in keys}


# --- the state machine ------------------------------------------------------------------------


def test_the_first_failure_is_one_line_and_the_next_ones_within_the_interval_none() -> None:
    outage = OutageLog()
    assert outage.failed("connection refused", 100.0) == OutageLine(FAILING, "connection refused", 1, 0.0)
    assert [outage.failed("connection refused", 100.0 + t) for t in (1, 2, 60, 299.9)] == [None] * 4
    assert outage.failing and outage.failures == 5


def test_a_summary_comes_with_the_failure_that_completes_the_interval() -> None:
    outage = OutageLog()
    outage.failed("refused", 100.0)
    outage.failed("refused", 150.0)
    outage.failed("timed out after 10s", 250.0)
    summary = outage.failed("closed by peer", 400.0)
    # The failures since the previous line (three), the last reason, down since the first failure.
    assert summary == OutageLine(STILL_FAILING, "closed by peer", 3, 300.0)
    # The next one only an interval after that summary, whatever happened before.
    assert outage.failed("refused", 699.0) is None
    assert outage.failed("refused", 700.0) == OutageLine(STILL_FAILING, "refused", 2, 600.0)


def test_the_first_success_after_failures_is_the_recovery_line_with_the_whole_outage() -> None:
    outage = OutageLog(summary_interval=60.0)
    for t in range(0, 130, 10):  # 13 failures, two summaries on the way
        outage.failed(f"refused {t}", 1000.0 + t)
    assert outage.succeeded(1200.0) == OutageLine(RECOVERED, "refused 120", 13, 200.0)
    assert not outage.failing and outage.failures == 0
    assert outage.succeeded(1201.0) is None


def test_success_without_an_outage_is_silent_and_a_new_outage_starts_over() -> None:
    outage = OutageLog()
    assert outage.succeeded(10.0) is None
    outage.failed("a", 20.0)
    outage.failed("b", 21.0)
    outage.succeeded(22.0)
    assert outage.failed("c", 23.0) == OutageLine(FAILING, "c", 1, 0.0)
    assert outage.failed("d", 23.0 + SUMMARY_INTERVAL) == OutageLine(STILL_FAILING, "d", 1, SUMMARY_INTERVAL)


def test_a_clock_stepped_back_never_gives_a_negative_duration_nor_silences_the_source() -> None:
    outage = OutageLog()
    outage.failed("a", 1000.0)
    assert outage.failed("b", 100.0) is None  # stepped back 900 s: the interval counts from here
    assert outage.failed("c", 399.0) is None
    assert outage.failed("d", 400.0) == OutageLine(STILL_FAILING, "d", 3, 0.0)
    assert outage.succeeded(50.0) == OutageLine(RECOVERED, "d", 4, 0.0)


# --- the lines written -------------------------------------------------------------------------


def test_the_reporter_writes_each_line_once_with_the_fields_naming_the_source(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    clock = FakeClock()
    reporter = OutageReporter(
        "websocket", "main", clock=clock, logger=logging.getLogger(LOGGER), fields={"channel": "balanceMargin"}
    )
    reporter.recovered()  # nothing to recover from
    for _ in range(40):
        reporter.failed("balanceMargin_subscribe failed: error 1 not allowed")
        clock.now += 10.0  # 400 s of failures: one summary, at 300 s
    reporter.recovered()
    named = {"source": "websocket", "account": "main", "channel": "balanceMargin"}
    reason = "balanceMargin_subscribe failed: error 1 not allowed"
    failing, summary, recovered = lines(caplog)
    assert picked(failing, "level", "msg", *named, "reason") == {
        "level": "warning",
        "msg": "source failing",
        **named,
        "reason": reason,
    }
    assert picked(summary, "level", "msg", *named, "failures", "down_seconds", "reason") == {
        "level": "warning",
        "msg": "source still failing",
        **named,
        "failures": "30",
        "down_seconds": "300.0",
        "reason": reason,
    }
    assert picked(recovered, "level", "msg", *named, "failures", "down_seconds") == {
        "level": "info",
        "msg": "source recovered",
        **named,
        "failures": "40",
        "down_seconds": "400.0",
    }
    assert "reason" not in recovered and "failures" not in failing


def test_a_source_without_an_account_is_named_by_its_source_alone(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    OutageReporter("inbox", clock=FakeClock(), logger=logging.getLogger(LOGGER)).failed("state file not writable")
    [line] = lines(caplog)
    assert line["source"] == "inbox" and "account" not in line


# --- a source's health and outage log together ---------------------------------------------------


def test_a_failed_attempt_of_a_starting_source_replaces_starting_with_its_reason_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    health = HealthRegistry(clock=FakeClock())
    status = SourceStatus(health.register("rest:main_balance", "main"), logger=logging.getLogger(LOGGER))
    assert health.readiness() == (False, ["rest:main_balance main: starting"])
    status.attempt_failed("/api/v4/main-account/balance: connection refused (127.0.0.1:9)")
    assert health.readiness() == (
        False,
        ["rest:main_balance main: /api/v4/main-account/balance: connection refused (127.0.0.1:9)"],
    )
    status.attempt_failed("/api/v4/main-account/balance: timed out after 10s (127.0.0.1:9)")
    status.failed("/api/v4/main-account/balance: timed out after 10s (127.0.0.1:9)")
    assert health.readiness()[1] == [
        "rest:main_balance main: /api/v4/main-account/balance: timed out after 10s (127.0.0.1:9)"
    ]
    status.ok()
    assert health.readiness() == (True, [])
    assert [(line["msg"], line.get("failures")) for line in lines(caplog)] == [
        ("source failing", None),
        ("source recovered", "3"),
    ]


def test_a_failed_attempt_of_a_source_that_serves_is_only_detail(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    health = HealthRegistry(clock=FakeClock())
    status = SourceStatus(health.register("rest:history", "main"), logger=logging.getLogger(LOGGER))
    status.ok()
    status.attempt_failed("/api/v4/main-account/history: unavailable error (HTTP 502): Bad Gateway")
    assert health.readiness() == (True, [])  # the retry may still succeed; the data is fresh
    assert lines(caplog) == []
    status.failed("/api/v4/main-account/history: unavailable error (HTTP 502): Bad Gateway")
    assert health.readiness() == (
        False,
        ["rest:history main: /api/v4/main-account/history: unavailable error (HTTP 502): Bad Gateway"],
    )
    assert [line["msg"] for line in lines(caplog)] == ["source failing"]


def test_the_outage_is_timed_by_the_health_registrys_clock(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = FakeClock()
    status = SourceStatus(
        HealthRegistry(clock=clock).register("rest:collateral", "main"), logger=logging.getLogger(LOGGER)
    )
    status.failed("refused")
    clock.now += 301.0
    status.failed("refused")
    clock.now += 9.5
    status.ok()
    assert [(line["msg"], line.get("down_seconds")) for line in lines(caplog)] == [
        ("source failing", None),
        ("source still failing", "301.0"),
        ("source recovered", "310.5"),
    ]
