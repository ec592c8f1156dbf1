"""The demo, with every documented variation on, still shows the simulator's numbers.

The simulator under the demo answers balances with and without zero assets, lists open orders newest
first, lets replies and pushes overtake each other, runs its clock 6.5 s off ours, refuses
``balanceMargin`` on the ``demo-spot`` account and keeps making activity with its own trouble
(dropped sockets, 429s, dropped webhooks). Once the activity stops, every balance and every open
order the exporter shows must equal the simulator's, on both accounts, and both accounts are up.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from exporter.demo import DEMO_ACCOUNT, DEMO_SPOT_ACCOUNT
from exporter.simulator.model import SIDE_BUY
from exporter.simulator.server import Simulator
from tests.bundle.harness import running_demo
from tests.helpers import Scrape, scrape, wait_for

ACCOUNTS = (DEMO_ACCOUNT, DEMO_SPOT_ACCOUNT)


def simulated(sim: Simulator, account: str) -> dict[str, dict[tuple[str, ...], float]]:
    """Every number the exporter shows for ``account``, from the simulator (zero balances left out)."""
    wallet = sim.exchange.accounts[account]
    orders: dict[tuple[str, ...], float] = {}
    lefts: dict[tuple[str, ...], Decimal] = {}
    for order in wallet.orders.values():
        key = (order.market, "buy" if order.side == SIDE_BUY else "sell")
        orders[key] = orders.get(key, 0) + 1
        lefts[key] = lefts.get(key, Decimal(0)) + order.left
    return {
        "main": {(a,): float(v) for a, v in wallet.main.items() if v},
        "spot": {(a,): float(b.available + b.freeze) for a, b in wallet.spot.items() if b.available + b.freeze},
        "frozen": {(a,): float(b.freeze) for a, b in wallet.spot.items() if b.freeze},
        "collateral": {(a,): float(b.balance) for a, b in wallet.collateral.items() if b.balance},
        "borrowed": {(a,): float(b.borrow) for a, b in wallet.collateral.items() if b.borrow},
        "orders": orders,
        "left": {k: float(v) for k, v in lefts.items() if v},
    }


def scraped(result: Scrape, account: str) -> dict[str, dict[tuple[str, ...], float]]:
    """The same numbers from a scrape (zero values left out: an emptied asset stays at 0)."""

    def pick(name: str, keys: tuple[str, ...], **fixed: str) -> dict[tuple[str, ...], float]:
        return {
            tuple(labels[k] for k in keys): value
            for labels, value in result.samples(name)
            if labels.get("account") == account and value and all(labels.get(k) == v for k, v in fixed.items())
        }

    orders: dict[tuple[str, ...], float] = {}
    for (market, side, _), value in pick("whitebit_open_orders", ("market", "side", "type")).items():
        orders[(market, side)] = orders.get((market, side), 0) + value
    return {
        "main": pick("whitebit_balance", ("asset",), wallet="main"),
        "spot": pick("whitebit_balance", ("asset",), wallet="spot"),
        "frozen": pick("whitebit_balance_frozen", ("asset",)),
        "collateral": pick("whitebit_balance", ("asset",), wallet="collateral"),
        "borrowed": pick("whitebit_collateral_borrowed", ("asset",)),
        "orders": orders,
        "left": pick("whitebit_open_orders_left", ("market", "side")),
    }


def differences(result: Scrape, sim: Simulator) -> list[str]:
    problems = []
    for account in ACCOUNTS:
        want, got = simulated(sim, account), scraped(result, account)
        problems.extend(
            f"{account} {part}: scraped {got[part]} but the simulator holds {want[part]}"
            for part in want
            if not _close(want[part], got[part])
        )
    return problems


def _close(want: dict[tuple[str, ...], float], got: dict[tuple[str, ...], float]) -> bool:
    # Sums of float-rendered Decimals may differ in the last bits; anything else is a wrong number.
    return want.keys() == got.keys() and all(abs(want[k] - got[k]) <= 1e-9 * max(1.0, abs(want[k])) for k in want)


async def test_the_demo_with_every_variation_on_shows_the_simulators_numbers(tmp_path: Path) -> None:
    async with running_demo(tmp_path, scenario_rate=25.0, forge_every=40, seed=17) as demo:
        assert demo.exporter is not None
        exporter, sim = demo.exporter, demo.simulator
        await wait_for(lambda: sum(sim.scenario.counts().values()) > 400, timeout=60, interval=0.5)
        await sim.stop_scenario()
        problems: list[str] = []

        async def settled() -> bool:
            result = await scrape(exporter.metrics_url)
            problems[:] = differences(result, sim)
            up = [result.value("whitebit_up", account=account) for account in ACCOUNTS]
            return not problems and up == [1.0, 1.0]

        # Main balances and demo-spot's collateral are polled every 5 s; the WebSocket may be between
        # reconnects after a dropped socket.
        try:
            await wait_for(settled, timeout=40, interval=0.5)
        except AssertionError:
            raise AssertionError("the demo's numbers never matched the simulator:\n" + "\n".join(problems)) from None
        result = await scrape(exporter.metrics_url)
        # demo-spot has no collateral trading: its balanceMargin channel is refused and the account is served.
        synced = result.value("whitebit_websocket_channel_synced", account=DEMO_SPOT_ACCOUNT, channel="balanceMargin")
        assert synced == 0
        assert result.value("whitebit_websocket_channel_synced", account=DEMO_ACCOUNT, channel="balanceMargin") == 1
        assert any(
            note.startswith(f"websocket {DEMO_SPOT_ACCOUNT}: channel balanceMargin") for note in exporter.health.notes()
        )
        # Hundreds of listed zero assets add no series.
        assets = {labels["asset"] for labels, _ in result.samples("whitebit_balance")}
        assert not [asset for asset in assets if asset.startswith("COIN")]
        # The activity reached both accounts: each has had orders.
        assert all(
            result.value("whitebit_order_events_total", account=account, market=market, event="new")
            for account in ACCOUNTS
            for market in ("BTC_USDT",)
        )
