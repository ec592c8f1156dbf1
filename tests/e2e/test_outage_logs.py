"""WhiteBIT away and back (tests/e2e/outage.py): one line per source when it fails, a summary per five
minutes at most, one when it recovers, and ``/-/ready`` naming the cause from the first failed attempt."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from exporter.core.outage import SUMMARY_INTERVAL
from tests.e2e.outage import (
    ACCOUNT,
    CALL,
    CLOCK_ENDPOINT,
    COLLATERAL_WALLET,
    JUMP,
    POLLS,
    RETRIES,
    WEBSOCKET_TOKEN,
    OutageRun,
    run_outage,
)

#: The sources of the account as the outage lines name them.
POLL_SOURCES = tuple(POLLS)
AT_START = ("websocket", *POLL_SOURCES, "rest:clock")
AWAY = ("websocket", *POLL_SOURCES)


def outage_lines(run: OutageRun, msg: str, *phases: str) -> Counter[str]:
    """source -> lines ``msg`` written during ``phases``, each checked to name the account."""
    lines = [line for line in run.in_phase(*phases) if line["msg"] == msg]
    assert all(line["account"] == ACCOUNT and "channel" not in line for line in lines), lines
    return Counter(line["source"] for line in lines)


def by_source(run: OutageRun, msg: str, *phases: str) -> dict[str, dict[str, str]]:
    return {line["source"]: line for line in run.in_phase(*phases) if line["msg"] == msg}


async def test_an_outage_is_one_line_per_source_a_summary_and_one_recovery_with_the_cause_on_ready(
    tmp_path: Path,
) -> None:
    run = await run_outage(tmp_path)
    refused = f"connection refused (127.0.0.1:{run.port})"
    # /-/ready named the cause before any poll had spent its retries (a whole call is CALL attempts).
    assert all(run.errors_at_first_reason[endpoint] < CALL for endpoint in POLLS.values()), run.errors_at_first_reason
    websocket, *polls = run.first_reasons
    assert websocket.startswith(
        f"websocket {ACCOUNT}: disconnected: token request failed: {WEBSOCKET_TOKEN}: {refused}; reconnecting in "
    )
    assert polls == [f"{source} {ACCOUNT}: {endpoint}: {refused}" for source, endpoint in POLLS.items()]

    # Away at start, then up: each source failed once and recovered once; nothing else warned.
    assert outage_lines(run, "source failing", "away at start") == Counter(AT_START)
    assert outage_lines(run, "source recovered", "away at start", "up") == Counter(AT_START)
    failing = by_source(run, "source failing", "away at start")
    assert failing["rest:clock"]["reason"] == f"{CLOCK_ENDPOINT}: {refused}"
    assert all(failing[source]["reason"] == f"{endpoint}: {refused}" for source, endpoint in POLLS.items())
    assert failing["websocket"]["reason"] == f"token request failed: {WEBSOCKET_TOKEN}: {refused}"
    # The first minutes have no summary: none was due.
    assert not outage_lines(run, "source still failing", "away at start", "up")

    # Away (the clock jumped past five minutes midway), then back.
    assert outage_lines(run, "source failing", "away", "back") == Counter(AWAY)
    summaries = by_source(run, "source still failing", "away", "back")
    assert outage_lines(run, "source still failing", "away", "back") == Counter(AWAY)  # one each, not more
    recovered = by_source(run, "source recovered", "away", "back")
    assert outage_lines(run, "source recovered", "away", "back") == Counter(AWAY)
    for source in AWAY:
        assert JUMP <= float(summaries[source]["down_seconds"]) < 2 * SUMMARY_INTERVAL
        assert float(recovered[source]["down_seconds"]) >= float(summaries[source]["down_seconds"])
    assert summaries["websocket"]["reason"] == f"token request failed: {WEBSOCKET_TOKEN}: {refused}"
    # A poll source fails with its first whole call (the attempts before are detail: it was serving), and
    # counts every failed attempt after it; the WebSocket counts its disconnect and every token request.
    failed = {
        endpoint: run.errors_when_back[endpoint] - run.errors_when_away[endpoint] for endpoint in run.errors_when_back
    }
    # A collateral poll whose summary was answered just before WhiteBIT went may fail on the wallet's endpoint.
    failed[POLLS["rest:collateral"]] += failed.pop(COLLATERAL_WALLET)
    for source, endpoint in POLLS.items():
        assert summaries[source]["reason"] == f"{endpoint}: {refused}"
        assert int(recovered[source]["failures"]) == failed[endpoint] - RETRIES
        assert 0 < int(summaries[source]["failures"]) < int(recovered[source]["failures"])
    assert int(recovered["websocket"]["failures"]) == 1 + failed[WEBSOCKET_TOKEN]
    # And that is all the exporter had to say: no line per attempt, poll or reconnect.
    assert run.counts("away", "back") == Counter(
        {
            ("warning", "source failing"): len(AWAY),
            ("warning", "source still failing"): len(AWAY),
            ("info", "source recovered"): len(AWAY),
            ("info", "websocket synced"): 1,
        }
    )
