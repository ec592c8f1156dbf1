"""Every poller at 100 ms against the simulator's real per-IP limits: no 429 ever; forced 429s back off.

The burst runs for ``WHITEBIT_BURST_SECONDS`` (default 60, a full minute of load; set it lower for a
quick local run). Besides the pollers of two accounts, extra callers push two families to their
documented limits through the same shared limiter: the main-account family (1,000 / 10 s) and the
WebSocket token (10 / 60 s), so the test shows callers waiting for room at the real limits, not
merely polling below them. The simulator's own per-endpoint stats are the witness: no 429 at all.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from exporter.config.schema import DOCUMENTED_LIMITS, PollConfig
from exporter.core.health import HealthRegistry
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from exporter.whitebit.balances import AccountBalances
from exporter.whitebit.pollers import CollateralSummaries, Poller, build_pollers
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.rest import (
    COLLATERAL_SUMMARY,
    MAIN_BALANCE,
    TRADE_BALANCE,
    WEBSOCKET_TOKEN,
    RestClient,
    RestMetrics,
    RestTransport,
)
from tests.helpers import collected, wait_for

BURST_SECONDS = float(os.environ.get("WHITEBIT_BURST_SECONDS", "60"))
INTERVAL = 0.1
#: What each kind of poll requests (the collateral poll reads both while no WebSocket supplies the wallet).
POLL_ENDPOINTS = {
    "main_balance": (MAIN_BALANCE,),
    "collateral": (COLLATERAL_SUMMARY,),
    "trade_balance": (TRADE_BALANCE,),
}
ACCOUNTS = ("alpha", "beta")


class Rig:
    """Simulator, one shared limiter and transport, and per account a client and its pollers."""

    def __init__(self, sim: Simulator, accounts: tuple[str, ...]) -> None:
        self.sim = sim
        self.health = HealthRegistry()
        self.limiter = RateLimiter()
        self.metrics = RestMetrics(self.limiter)
        self.transport = RestTransport(self.limiter, self.metrics)
        self.summaries = CollateralSummaries()
        self.clients: dict[str, RestClient] = {}
        self.pollers: list[Poller] = []
        rng = random.Random(11)
        for name in accounts:
            client = RestClient(
                account=name,
                base_url=sim.url,
                api_key=f"{name}-key",
                api_secret=f"{name}-secret",
                transport=self.transport,
            )
            self.clients[name] = client
            self.pollers += build_pollers(
                client,
                AccountBalances(name),
                PollConfig(main_balance=INTERVAL, collateral=INTERVAL, trade_balance=INTERVAL),
                health=self.health,
                summaries=self.summaries,
                websocket_supplies=lambda wallet: False,  # no WebSocket here: every poll has work to do
                rng=rng,
            )
        self.tasks: list[asyncio.Task[Any]] = []

    def start(self, *extra: Any) -> None:
        self.tasks += [asyncio.create_task(p.run()) for p in self.pollers]
        self.tasks += [asyncio.create_task(coroutine) for coroutine in extra]

    async def stop(self) -> None:
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.transport.close()
        unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)]
        assert not unexpected, unexpected

    def statuses(self) -> dict[str, dict[str, int]]:
        return {endpoint: entry["statuses"] for endpoint, entry in self.sim.rest.stats().items()}

    def client_429s(self) -> int:
        return sum(
            collected(self.metrics, "whitebit_rest_requests_total", account=account, endpoint=endpoint, code="429") or 0
            for account in self.clients
            for endpoint in self.sim.rest.stats()
        )

    def attempts(self, poller: Poller) -> float:
        """Requests the poller's account sent to the endpoints of the poller's kind (its polls, with retries)."""
        return sum(
            collected(
                self.metrics, "whitebit_rest_requests_total", account=poller.account, endpoint=endpoint, code=code
            )
            or 0
            for endpoint in POLL_ENDPOINTS[poller.kind]
            for code in ("200", "429")
        )


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    settings = SimulatorSettings(
        accounts=tuple(SimulatedAccount(name, api_key=f"{name}-key", api_secret=f"{name}-secret") for name in ACCOUNTS),
        seed=3,
    )
    sim = Simulator(settings)  # the simulator's real, documented limits
    await sim.start()
    rig = Rig(sim, ACCOUNTS)
    yield rig
    await rig.stop()
    await sim.stop()


async def forever(call: Any) -> None:
    while True:
        await call()


@pytest.mark.slow  # a minute of load against the simulator
@pytest.mark.timeout(BURST_SECONDS + 180)
async def test_pollers_at_100ms_and_callers_at_the_limits_never_get_a_429(
    rig: Rig,
) -> None:
    main_family = rig.limiter.family(MAIN_BALANCE)
    peak = 0

    async def watch_usage() -> None:
        nonlocal peak
        while True:
            peak = max(peak, sum(main_family.usage_by_key().values()))
            await asyncio.sleep(0.05)

    alpha = rig.clients["alpha"]
    rig.start(
        watch_usage(),
        *(forever(lambda: alpha.post(MAIN_BALANCE)) for _ in range(8)),
        *(forever(alpha.websocket_token) for _ in range(3)),
    )
    await asyncio.sleep(BURST_SECONDS)  # the burst itself: its length is the point of the test

    statuses = rig.statuses()
    assert all("429" not in by_status for by_status in statuses.values()), statuses
    assert rig.client_429s() == 0
    # Only successes: nothing refused for auth, nonce or anything else either.
    assert all(set(by_status) <= {"200"} for by_status in statuses.values()), statuses
    # The limits were really reached, and every poller kept polling.
    main_limit = DOCUMENTED_LIMITS["main-account"].limit
    assert peak >= main_limit * 0.9, f"main-account usage peaked at {peak}/{main_limit}"
    # Tokens: half the limit at once, then one per window / limit (6 s) until the limit is reached.
    assert rig.sim.rest.stats()[WEBSOCKET_TOKEN]["requests"] >= DOCUMENTED_LIMITS["profile/websocket_token"].limit // 2
    token_usage = sum(rig.limiter.family(WEBSOCKET_TOKEN).usage_by_key().values())
    assert token_usage <= DOCUMENTED_LIMITS["profile/websocket_token"].limit
    assert all(rig.attempts(p) >= 10 for p in rig.pollers), [(p.name, rig.attempts(p)) for p in rig.pollers]
    ready, failing = rig.health.readiness()
    assert ready, failing


@pytest.mark.timeout(180)
async def test_forced_429s_are_backed_off_then_polling_recovers(rig: Rig) -> None:
    alpha = [p for p in rig.pollers if p.account == "alpha"]
    main_poller = next(p for p in alpha if p.kind == "main_balance")
    collateral_poller = next(p for p in alpha if p.kind == "collateral")
    rig.pollers = alpha  # one account: every main-account request is this poller's
    rig.start()
    await wait_for(lambda: main_poller.health.is_ok, timeout=10)

    def successes() -> int:
        return rig.statuses().get(MAIN_BALANCE, {}).get("200", 0)

    def rate_limited() -> int:
        return rig.statuses().get(MAIN_BALANCE, {}).get("429", 0)

    collateral_before = rig.attempts(collateral_poller)
    forced = 3
    rig.sim.rest.force_rate_limit(MAIN_BALANCE, forced)
    # The next main-balance poll gets the first 429 and retries inside the same poll: ~1 s later
    # into the second, ~2 s later into the third, ~4 s later it succeeds. Nothing else is sent to
    # the family meanwhile (it is paused), so the 429s counted are exactly the forced ones.
    await wait_for(lambda: rate_limited() >= 1, timeout=10)
    seen = rate_limited()
    observed = time.monotonic()
    successes_then = successes()
    await wait_for(lambda: successes() > successes_then, timeout=60)
    elapsed = time.monotonic() - observed

    assert rate_limited() == forced
    assert (
        collected(rig.metrics, "whitebit_rest_requests_total", account="alpha", endpoint=MAIN_BALANCE, code="429")
        == forced
    )
    # 429 number seen+1 had not come when we looked, so every backoff after it lies in `elapsed`:
    # each at least 0.8 × its nominal 1, 2, 4 s.
    assert elapsed >= sum(0.8 * 2 ** (number - 1) for number in range(seen + 1, forced + 1))
    # The other polls went on meanwhile, on their own schedule.
    assert rig.attempts(collateral_poller) > collateral_before
    # Recovered: polling resumes at its interval and no further 429 comes.
    await wait_for(lambda: successes() > successes_then + 5, timeout=10)
    assert main_poller.health.is_ok
    assert rate_limited() == forced
