"""The demo relays: every delivery the exporter receives reaches the simulator's payment backend, whose own
check of the WhiteBIT or Zero Hash signature passes, and the relay's series say so."""

from __future__ import annotations

from pathlib import Path

from tests.bundle.harness import running_demo
from tests.helpers import scrape, wait_for


async def test_the_demo_relays_every_delivery_to_a_backend_that_verifies_it(tmp_path: Path) -> None:
    async with running_demo(tmp_path, scenario_rate=20.0, forge_every=None, seed=5) as demo:
        assert demo.exporter is not None
        backend = demo.simulator.backend
        await wait_for(
            lambda: len(backend.received["whitebit"]) >= 5 and len(backend.received["zerohash"]) >= 5,
            timeout=60,
            interval=0.5,
            message=f"the backend received too little: {backend.received}",
        )
        result = await scrape(demo.exporter.metrics_url)
        assert backend.rejected == 0  # every forwarded signature verified at the backend
        for target in ("payments", "balances"):
            delivered = result.value("whitebit_exporter_relay_deliveries_total", target=target, outcome="delivered")
            assert delivered is not None and delivered >= 5
            assert result.value("whitebit_exporter_relay_dead_letters", target=target) == 0
