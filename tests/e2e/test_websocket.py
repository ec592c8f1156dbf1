"""The whole Exporter with its WebSocket source against the simulator (token from the REST client)."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from decimal import Decimal as D

import pytest

from exporter.app import Exporter
from exporter.config.schema import PollConfig, WhitebitAccountConfig
from exporter.simulator.model import SIDE_BUY, TYPE_STOP_LIMIT
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from tests.helpers import Scrape, scrape_text, wait_for
from tests.ws_harness import MARKETS, account, differences


def watching(sim: Simulator, creds: SimulatedAccount, *, collateral: float) -> WhitebitAccountConfig:
    """The exporter's config for the simulated account ``creds``, its collateral polled every ``collateral`` s."""
    return WhitebitAccountConfig(
        name=creds.name,
        rest_url=sim.url,
        ws_url=sim.ws_url,
        api_key=creds.api_key,
        api_secret=creds.api_secret,
        markets=MARKETS,
        poll=PollConfig(main_balance=5.0, collateral=collateral, history=60.0),
    )


async def test_exporter_runs_one_websocket_per_api_account_and_its_metrics_match_the_simulator(
    make_config,
) -> None:
    creds = account("acct")
    sim = Simulator(SimulatorSettings(accounts=(creds,), markets=MARKETS))
    await sim.start()
    config = make_config(
        [
            watching(sim, creds, collateral=5.0),
            WhitebitAccountConfig(name="hooks-only"),
        ]
    )
    exporter = Exporter(config)
    try:
        await exporter.start()
        sim.exchange.place_order("acct", "BTC_USDT", SIDE_BUY, D("0.2"), price=D(50000), client_order_id="a")
        sim.exchange.place_order(
            "acct",
            "ETH_USDT",
            SIDE_BUY,
            D(1),
            order_type=TYPE_STOP_LIMIT,
            price=D(3100),
            activation_price=D(3050),
        )

        async def consistent() -> bool:
            result = Scrape(await scrape_text(exporter.metrics_url))
            return result.value("whitebit_websocket_connected", account="acct") == 1 and not differences(
                result, sim, "acct"
            )

        await wait_for(consistent, timeout=15)
        text = await scrape_text(exporter.metrics_url)
        result = Scrape(text)
        # Exactly one connection for the account with credentials, none for the webhooks-only one.
        assert sim.ws.connections("acct") == 1 and sim.ws.connections() == 1
        assert result.value("whitebit_websocket_connected", account="hooks-only") is None
        assert result.value("whitebit_websocket_reconnects_total", account="acct") == 0
        assert sim.rest.stats()["/api/v4/profile/websocket_token"]["requests"] == 1
        await wait_for(lambda: exporter.health.readiness()[0], timeout=15)
        if shutil.which("promtool"):
            lint = await asyncio.to_thread(
                subprocess.run,
                ["promtool", "check", "metrics"],
                input=text.encode(),
                capture_output=True,
                check=False,
            )
            assert lint.returncode == 0 and not lint.stdout and not lint.stderr, lint.stdout + lint.stderr
        await exporter.stop()
        # Stopping the exporter closes its connection.
        await wait_for(lambda: sim.ws.connections() == 0, timeout=5)
    finally:
        await exporter.stop()
        await sim.stop()


async def test_a_failing_balance_margin_channel_leaves_the_account_served_and_says_why(make_config) -> None:
    creds = account("acct")
    sim = Simulator(SimulatorSettings(accounts=(creds,), markets=MARKETS))
    await sim.start()
    sim.ws.fail_channel("acct", "balanceMargin", 2, "collateral trading is not enabled")
    config = make_config([watching(sim, creds, collateral=0.5)])
    exporter = Exporter(config)
    try:
        await exporter.start()
        sim.exchange.place_order("acct", "BTC_USDT", SIDE_BUY, D("0.2"), price=D(50000))
        sim.exchange.borrow("acct", "USDT", D(40))

        async def served() -> bool:
            result = Scrape(await scrape_text(exporter.metrics_url))
            return result.value("whitebit_websocket_connected", account="acct") == 1 and not differences(
                result, sim, "acct"
            )

        # Spot and orders from the WebSocket; the collateral wallet from the REST fallback poll, since
        # the WebSocket cannot supply it.
        await wait_for(served, timeout=15)
        # Every poll has had its first turn (each starts within its first 5 s).
        await wait_for(lambda: exporter.health.readiness()[0], timeout=15)
        result = Scrape(await scrape_text(exporter.metrics_url))
        assert result.value("whitebit_websocket_channel_synced", account="acct", channel="balanceMargin") == 0
        assert result.value("whitebit_websocket_channel_synced", account="acct", channel="ordersPending") == 1
        # Every number is served, so the account is up and ready; /-/ready lists the lost channel.
        assert result.value("whitebit_up", account="acct") == 1
        assert exporter.health.readiness() == (True, [])
        [note] = exporter.health.notes()
        assert note.startswith("websocket acct: channel balanceMargin: balanceMargin_subscribe failed")
        # The wallet the poll keeps is fresh while the poll succeeds.
        polled_at = result.value("whitebit_balance_last_update_timestamp_seconds", account="acct", wallet="collateral")

        async def polled_again() -> bool:
            result = Scrape(await scrape_text(exporter.metrics_url))
            age = result.value("whitebit_balance_last_update_timestamp_seconds", account="acct", wallet="collateral")
            return age is not None and polled_at is not None and age > polled_at

        await wait_for(polled_again, timeout=10)
        sim.ws.fail_channel("acct", "balanceMargin", None)

        async def recovered() -> bool:
            result = Scrape(await scrape_text(exporter.metrics_url))
            channel = result.value("whitebit_websocket_channel_synced", account="acct", channel="balanceMargin")
            return channel == 1 and not differences(result, sim, "acct")

        await wait_for(recovered, timeout=15)
        assert exporter.health.readiness() == (True, [])
        assert exporter.health.notes() == []
        assert sim.ws.connections("acct") == 1
    finally:
        await exporter.stop()
        await sim.stop()


@pytest.mark.parametrize("name", ["whitebit_websocket_messages_invalid", "whitebit_websocket_errors"])
def test_own_websocket_counters_are_registered_metric_names(name: str) -> None:
    from exporter.core.metrics import METRICS

    [metric] = [m for m in METRICS if m.name == name]
    assert metric.type == "counter"
    assert metric.sample_names == (name + "_total",)
