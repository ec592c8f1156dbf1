"""WhiteBIT's clock: measured against /api/v4/public/time, and nonces signed on it.

The simulator's exchange clock runs seconds away from ours (``clock_offset``), beyond the ±5 s
``nonceWindow``, as a real exchange's may; requests go to it over real sockets.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from exporter.app import Exporter
from exporter.config.schema import Config, PollConfig, WhitebitAccountConfig
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from exporter.whitebit.clock import ClockSync, ExchangeClock, reading_from
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.rest import MAIN_BALANCE, PUBLIC_TIME, NonceError, RestClient, RestMetrics, RestTransport
from exporter.whitebit.signing import NonceSource
from tests.helpers import logfmt_lines, scrape, wait_for

KEY, SECRET = "clock-test-key", "clock-test-secret"


def test_a_reading_is_the_answer_minus_the_midpoint_of_the_round_trip() -> None:
    reading = reading_from(sent=100.0, server_time=110, received=100.4)
    assert reading.offset == pytest.approx(9.8)
    # Half the round trip plus a second for an answer in whole seconds (rounded or cut off).
    assert reading.uncertainty == pytest.approx(1.2)
    assert reading.measured_at == 100.4
    assert reading_from(100.0, 110.25, 100.0).uncertainty == pytest.approx(0.001)
    for bad in (None, "110", True, float("nan")):
        with pytest.raises(ValueError, match="not a number of seconds"):
            reading_from(100.0, bad, 100.1)


def test_window_nonces_follow_the_clock_back_and_are_never_repeated() -> None:
    now = [1000.0]
    nonces = NonceSource(lambda: now[0])
    first = nonces.next()
    assert first == 1_000_000
    assert nonces.next() == first + 1  # the same millisecond
    now[0] += 7.0
    late = nonces.next()
    assert late == 1_007_000
    now[0] -= 7.0  # a new reading moved WhiteBIT's clock back: follow it, skipping what was handed out
    assert nonces.next() == first + 2
    now[0] += 60.0  # long after: the old values are forgotten, memory stays bounded
    assert nonces.next() == 1_060_000
    assert len(nonces._recent) == 1


def test_nonces_without_a_window_never_step_back() -> None:
    now = [1000.0]
    nonces = NonceSource(lambda: now[0], window=False)
    first = nonces.next()
    now[0] -= 7.0
    assert nonces.next() == first + 1
    now[0] += 20.0
    assert nonces.next() == 1_013_000


def skewed_simulator(offset: float) -> Simulator:
    return Simulator(
        SimulatorSettings(
            accounts=(SimulatedAccount("acct", api_key=KEY, api_secret=SECRET),), clock_offset=offset, seed=2
        )
    )


@pytest.fixture
async def transport() -> AsyncIterator[RestTransport]:
    limiter = RateLimiter()
    made = RestTransport(limiter, RestMetrics(limiter))
    yield made
    await made.close()


def client_on(sim: Simulator, transport: RestTransport, clock: ExchangeClock | None) -> RestClient:
    return RestClient(
        account="acct",
        base_url=sim.url,
        api_key=KEY,
        api_secret=SECRET,
        transport=transport,
        nonces=NonceSource(clock.now) if clock is not None else NonceSource(),
        on_nonce_refused=clock.nonce_refused if clock is not None else None,
    )


def requests(sim: Simulator, path: str) -> dict[str, int]:
    entry = sim.rest.stats().get(path)
    return {} if entry is None else dict(entry["statuses"])


@pytest.mark.parametrize("offset", [7.0, -7.0])
async def test_an_unmeasured_clock_gets_every_nonce_window_request_refused(
    offset: float, transport: RestTransport
) -> None:
    sim = skewed_simulator(offset)
    await sim.start()
    try:
        client = client_on(sim, transport, None)
        with pytest.raises(NonceError, match="more than 5 seconds"):
            await client.post(MAIN_BALANCE)
    finally:
        await sim.stop()


@pytest.mark.parametrize("offset", [7.0, -7.0])
async def test_a_refused_nonce_measures_the_clock_once_and_the_request_goes_again(
    offset: float, transport: RestTransport
) -> None:
    sim = skewed_simulator(offset)
    await sim.start()
    clock = ExchangeClock()
    client = client_on(sim, transport, clock)
    sync = ClockSync("acct", clock, lambda: client.get_public(PUBLIC_TIME), interval=3600)
    task = asyncio.create_task(sync.run())
    try:
        balance = await client.post(MAIN_BALANCE)
        assert "USDT" in balance
        assert clock.reading is not None
        assert abs(clock.offset - offset) <= clock.reading.uncertainty
        # At most the one request signed before the first measurement was refused.
        assert requests(sim, MAIN_BALANCE).get("401", 0) <= 1
        for _ in range(5):
            await client.post(MAIN_BALANCE)
        assert requests(sim, MAIN_BALANCE).get("401", 0) <= 1
        assert requests(sim, PUBLIC_TIME) == {"200": 1}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()


async def test_failed_measurements_are_one_line_naming_the_cause_then_one_when_measured_again(
    transport: RestTransport, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="exporter.whitebit.clock")
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sim = skewed_simulator(2.0)
    await sim.start()
    try:
        refused = RestClient(
            account="acct",
            base_url=f"http://127.0.0.1:{port}",
            api_key=KEY,
            api_secret=SECRET,
            transport=transport,
            max_retries=0,
        )
        answering = client_on(sim, transport, None)
        via = [refused]
        clock = ExchangeClock()
        sync = ClockSync("acct", clock, lambda: via[0].get_public(PUBLIC_TIME))
        assert [await sync.measure_once() for _ in range(3)] == [False] * 3
        via[0] = answering
        assert await sync.measure_once()
    finally:
        await sim.stop()
    lines = [line for line in logfmt_lines(caplog.records) if line["level"] != "debug"]
    assert [(line["level"], line["msg"], line.get("reason"), line.get("failures")) for line in lines] == [
        ("warning", "source failing", f"{PUBLIC_TIME}: connection refused (127.0.0.1:{port})", None),
        ("info", "source recovered", None, "3"),
        ("info", "clock offset to WhiteBIT measured", None, None),
    ]
    assert all((line.get("source", "rest:clock"), line["account"]) == ("rest:clock", "acct") for line in lines)


async def test_a_429_soon_after_a_measurement_does_not_measure_again(transport: RestTransport) -> None:
    sim = skewed_simulator(7.0)
    await sim.start()
    clock = ExchangeClock()
    sleeps: list[float] = []

    async def no_wait(seconds: float) -> None:
        sleeps.append(seconds)

    client = RestClient(
        account="acct",
        base_url=sim.url,
        api_key=KEY,
        api_secret=SECRET,
        transport=transport,
        nonces=NonceSource(clock.now),
        on_nonce_refused=clock.nonce_refused,
        sleep=no_wait,
        rng=random.Random(3),
    )
    sync = ClockSync("acct", clock, lambda: client.get_public(PUBLIC_TIME), interval=3600)
    task = asyncio.create_task(sync.run())
    try:
        await wait_for(lambda: clock.reading is not None)
        sim.rest.force_rate_limit(MAIN_BALANCE, 3)
        assert "USDT" in await client.post(MAIN_BALANCE)
        # Three 429s were retried on the backoff schedule; the clock, measured moments ago, was not asked again.
        assert requests(sim, MAIN_BALANCE) == {"429": 3, "200": 1}
        assert len(sleeps) == 3
        assert requests(sim, PUBLIC_TIME) == {"200": 1}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sim.stop()


async def test_the_exporter_signs_on_the_exchanges_clock_and_exposes_the_offset(
    make_config: Callable[..., Config],
) -> None:
    sim = skewed_simulator(-6.5)
    await sim.start()
    config = make_config(
        [
            WhitebitAccountConfig(
                name="acct",
                rest_url=sim.url,
                ws_url=sim.ws_url,
                api_key=KEY,
                api_secret=SECRET,
                poll=PollConfig(main_balance=1.0, collateral=1.0, history=1.0, trade_balance=1.0),
            )
        ]
    )
    exporter = Exporter(config)
    await exporter.start()
    try:
        shown: dict[str, Any] = {}

        async def up_with_an_offset() -> bool:
            result = await scrape(exporter.metrics_url)
            shown["up"] = result.value("whitebit_up", account="acct")
            shown["offset"] = result.value("whitebit_clock_offset_seconds", account="acct")
            shown["main"] = result.value("whitebit_balance", account="acct", wallet="main", asset="USDT")
            return shown["up"] == 1.0 and shown["offset"] is not None and shown["main"] is not None

        await wait_for(up_with_an_offset, timeout=20, message=f"never up with an offset: {shown}")
        assert shown["offset"] == pytest.approx(-6.5, abs=1.25)
        assert shown["main"] == float(sim.exchange.accounts["acct"].main["USDT"])
        result = await scrape(exporter.metrics_url)
        assert result.value("whitebit_clock_sync_timestamp_seconds", account="acct") is not None
    finally:
        await exporter.stop()
        await sim.stop()
