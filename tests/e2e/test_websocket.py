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
from exporter.simulator.server import Simulator, SimulatorSettings
from tests.helpers import Scrape, scrape_text, wait_for
from tests.ws_harness import MARKETS, account, differences


async def test_exporter_runs_one_websocket_per_api_account_and_its_metrics_match_the_simulator(
    make_config,
) -> None:
    creds = account("acct")
    sim = Simulator(SimulatorSettings(accounts=(creds,), markets=MARKETS))
    await sim.start()
    config = make_config(
        [
            WhitebitAccountConfig(
                name="acct",
                rest_url=sim.url,
                ws_url=sim.ws_url,
                api_key=creds.api_key,
                api_secret=creds.api_secret,
                markets=MARKETS,
                poll=PollConfig(main_balance=5.0, collateral=5.0, history=60.0),
            ),
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


@pytest.mark.parametrize("name", ["whitebit_websocket_messages_invalid", "whitebit_websocket_errors"])
def test_own_websocket_counters_are_registered_metric_names(name: str) -> None:
    from exporter.core.metrics import METRICS

    [metric] = [m for m in METRICS if m.name == name]
    assert metric.type == "counter"
    assert metric.sample_names == (name + "_total",)
