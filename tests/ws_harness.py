"""A WebSocket source against the simulator over real sockets, scraped over real HTTP.

Shared by the ``test_ws_*`` modules: :func:`running` starts a :class:`Simulator`, the source(s)
under test and a metrics listener (the exporter's own ``create_metrics_app``) on loopback;
:func:`assert_matches` compares a parsed scrape with what the simulator's exchange holds.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from exporter.core.backoff import Backoff
from exporter.core.health import HealthRegistry, UpCollector
from exporter.http.metrics_listener import create_metrics_app
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from exporter.whitebit.balances import AccountBalances, BalancesCollector
from exporter.whitebit.signing import NonceSource, sign_request
from exporter.whitebit.websocket.collector import WebSocketCollector
from exporter.whitebit.websocket.orders import SIDE_NAMES, TYPE_NAMES, TYPE_OTHER
from exporter.whitebit.websocket.source import WebSocketSource
from tests.helpers import Scrape, scrape

MARKETS = ("BTC_USDT", "ETH_USDT")
TOKEN_PATH = "/api/v4/profile/websocket_token"

# Fast but not hair-trigger timings for tests on a shared 2-core machine.
FAST = {
    "ping_interval": 1.0,
    "pong_timeout": 2.0,
    "backoff": Backoff(0.05, 0.2),
}


def account(name: str) -> SimulatedAccount:
    return SimulatedAccount(
        name=name,
        api_key=f"key-{name}-0123456789",
        api_secret=f"secret-{name}-0123456789",
    )


def signed_token_provider(base_url: str, api_key: str, api_secret: str) -> Callable[[], Awaitable[str]]:
    """A real signed ``/api/v4/profile/websocket_token`` call (independent of the REST client)."""
    nonces = NonceSource()

    async def fetch() -> str:
        request = sign_request(TOKEN_PATH, {}, api_key=api_key, api_secret=api_secret, nonce=nonces.next())
        async with (
            aiohttp.ClientSession() as session,
            session.post(base_url + request.path, data=request.body, headers=request.headers) as response,
        ):
            document = await response.json()
            if response.status != 200:
                raise RuntimeError(f"token endpoint answered {response.status}: {document}")
            return str(document["websocket_token"])

    return fetch


@dataclass
class Harness:
    sim: Simulator
    sources: dict[str, WebSocketSource]
    balances: dict[str, AccountBalances]
    health: HealthRegistry
    metrics_url: str
    tokens_fetched: dict[str, int] = field(default_factory=dict)
    token_override: dict[str, Callable[[], Awaitable[str]]] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        """Start the sources (done on entry unless ``running(..., autostart=False)``)."""
        assert not self.tasks, "the sources are running"
        self.tasks = [asyncio.create_task(source.run(), name=source.name) for source in self.sources.values()]

    async def scrape(self) -> Scrape:
        return await scrape(self.metrics_url)

    async def ready(self) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.metrics_url + "/-/ready") as response,
        ):
            return response.status, await response.text()


@contextlib.asynccontextmanager
async def running(
    names: Sequence[str] = ("main",),
    *,
    markets: Sequence[str] = MARKETS,
    exporter_markets: Sequence[str] | None = None,
    autostart: bool = True,
    **source_options: Any,
) -> AsyncIterator[Harness]:
    """The simulator, a source per account and a metrics listener; the sources run unless ``autostart=False``."""
    sim = Simulator(SimulatorSettings(accounts=tuple(account(n) for n in names), markets=tuple(markets)))
    await sim.start()
    registry = CollectorRegistry()
    health = HealthRegistry()
    balances_collector = BalancesCollector()
    ws_collector = WebSocketCollector()
    registry.register(balances_collector)
    registry.register(ws_collector)
    registry.register(UpCollector(health, names))
    harness = Harness(sim, {}, {}, health, "")
    for name in names:
        creds = account(name)
        real = signed_token_provider(sim.url, creds.api_key, creds.api_secret)

        async def provider(name: str = name, real: Callable[[], Awaitable[str]] = real) -> str:
            harness.tokens_fetched[name] = harness.tokens_fetched.get(name, 0) + 1
            override = harness.token_override.get(name)
            return await (override or real)()

        balances = AccountBalances(name)
        source = WebSocketSource(
            name,
            sim.ws_url,
            tuple(exporter_markets if exporter_markets is not None else markets),
            provider,
            balances,
            health,
            **{**FAST, **source_options},
        )
        balances_collector.add(balances)
        ws_collector.add(source)
        harness.sources[name] = source
        harness.balances[name] = balances
    runner = web.AppRunner(create_metrics_app(registry, health, "test"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    harness.metrics_url = f"http://{host}:{port}"
    if autostart:
        harness.start()
    try:
        yield harness
    finally:
        for task in harness.tasks:
            task.cancel()
        results = await asyncio.gather(*harness.tasks, return_exceptions=True)
        await runner.cleanup()
        await sim.stop()
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result


# --- comparing a scrape with the simulator ------------------------------------------------------


def expected_state(sim: Simulator, name: str) -> dict[str, dict[tuple[str, ...], float]]:
    """What the scrape must show for account ``name``, computed from the exchange's snapshot."""
    snapshot = sim.exchange.snapshot(name)
    counts: dict[tuple[str, ...], float] = {}
    lefts: dict[tuple[str, ...], Decimal] = {}
    for order in snapshot["orders"]:
        side = SIDE_NAMES[order["side"]]
        key = (order["market"], side, TYPE_NAMES.get(order["type"], TYPE_OTHER))
        counts[key] = counts.get(key, 0) + 1
        lefts[(order["market"], side)] = lefts.get((order["market"], side), Decimal(0)) + Decimal(order["left"])
    spot_total = {(a,): float(Decimal(v["available"]) + Decimal(v["freeze"])) for a, v in snapshot["spot"].items()}
    spot_frozen = {(a,): float(Decimal(v["freeze"])) for a, v in snapshot["spot"].items()}
    collateral = {(a,): float(Decimal(v["balance"])) for a, v in snapshot["collateral"].items()}
    borrowed = {(a,): float(Decimal(v["borrow"])) for a, v in snapshot["collateral"].items()}
    return {
        "open_orders": counts,
        "left": {k: float(v) for k, v in lefts.items()},
        "spot": spot_total,
        "frozen": spot_frozen,
        "collateral": collateral,
        "borrowed": borrowed,
    }


def scraped_state(result: Scrape, name: str) -> dict[str, dict[tuple[str, ...], float]]:
    """The same shape from a parsed scrape (series at 0 for orders are the same as absent)."""

    def pick(sample: str, keys: Sequence[str], **fixed: str) -> dict[tuple[str, ...], float]:
        out: dict[tuple[str, ...], float] = {}
        for labels, value in result.samples(sample):
            if labels.get("account") != name or any(labels.get(k) != v for k, v in fixed.items()):
                continue
            out[tuple(labels[k] for k in keys)] = value
        return out

    counts = {k: v for k, v in pick("whitebit_open_orders", ("market", "side", "type")).items() if v != 0}
    lefts = {k: v for k, v in pick("whitebit_open_orders_left", ("market", "side")).items() if v != 0}
    return {
        "open_orders": counts,
        "left": lefts,
        "spot": pick("whitebit_balance", ("asset",), wallet="spot"),
        "frozen": pick("whitebit_balance_frozen", ("asset",)),
        "collateral": pick("whitebit_balance", ("asset",), wallet="collateral"),
        "borrowed": pick("whitebit_collateral_borrowed", ("asset",)),
    }


def differences(result: Scrape, sim: Simulator, name: str, parts: Sequence[str] | None = None) -> list[str]:
    """What the scrape shows differently from the simulator (``parts``: only these, e.g. ``("spot",)``)."""
    expected = expected_state(sim, name)
    seen = scraped_state(result, name)
    problems = []
    for part, want in expected.items():
        if parts is not None and part not in parts:
            continue
        got = seen[part]
        if got != want:
            problems.append(f"{part}: scraped {got} but the simulator holds {want}")
    return problems


async def assert_matches(
    harness: Harness, name: str = "main", timeout: float = 10.0, parts: Sequence[str] | None = None
) -> Scrape:
    """Wait until the scrape of ``name`` equals the simulator (in ``parts``, default all) and the
    source is connected, then return that scrape; fail with the diff."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await harness.scrape()
        problems = differences(result, harness.sim, name, parts)
        if not problems and result.value("whitebit_websocket_connected", account=name) == 1.0:
            return result
        if loop.time() >= deadline:
            raise AssertionError("scrape does not match the simulator:\n" + "\n".join(problems))
        await asyncio.sleep(0.02)
