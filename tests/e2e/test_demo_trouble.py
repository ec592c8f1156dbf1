"""The demo makes trouble on its own: missed webhooks, 429s and WebSocket reconnects all show up."""

from __future__ import annotations

from pathlib import Path

from exporter.demo import DEMO_ACCOUNT
from tests.bundle.harness import running_demo
from tests.helpers import scrape, wait_for


async def test_the_demo_shows_missed_webhooks_429s_and_websocket_reconnects(tmp_path: Path) -> None:
    async with running_demo(
        tmp_path, scenario_rate=30.0, forge_every=5, reconcile_grace=2.0, webhook_retry_window=5.0, seed=3
    ) as demo:
        assert demo.exporter is not None
        url = demo.exporter.metrics_url
        seen: dict[str, float] = {}

        async def trouble_shows() -> bool:
            result = await scrape(url)
            seen["missed"] = sum(
                v for labels, v in result.samples("whitebit_webhooks_missed_total") if labels["account"] == DEMO_ACCOUNT
            )
            seen["429"] = sum(
                v
                for labels, v in result.samples("whitebit_rest_rate_limited_total")
                if labels["account"] == DEMO_ACCOUNT
            )
            seen["reconnects"] = sum(
                v
                for labels, v in result.samples("whitebit_websocket_reconnects_total")
                if labels["account"] == DEMO_ACCOUNT
            )
            return all(value > 0 for value in seen.values()) and len(seen) == 3

        await wait_for(trouble_shows, timeout=150, interval=1.0, message=f"the demo never showed all of it: {seen}")
        counts = demo.simulator.scenario.counts()
        assert counts.get("force_429", 0) > 0 and counts.get("ws_drop", 0) > 0
