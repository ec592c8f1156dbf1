"""The relay through trouble: a backend that answers 500 at random, holds answers past the timeout and goes
away for two days, and an exporter SIGKILLed along the way.

The exporter is the real command line in a subprocess, under a clock the test controls: libfaketime
(``LD_PRELOAD``) shifts its wall clock by the offset in a file the test rewrites, so the exporter's
``time.time()`` (due times, retry deadlines, ages) moves as the test says while its monotonic
clock, which asyncio's timers use, stays real. The test runs that clock 100 times faster than real
time, so retry delays of minutes pass in a second, and jumps it a day at a time through the outage.

At the end: every delivery the exporter answered 200 reached the backend; per account, the copies
came in the order the exporter received them; each verified at the backend with the provider's own
signature (none refused, no nonce went backwards); a delivery came twice only where an answer was
lost (held past the timeout, or cut by a kill); and the last exporter's counters add up to what the
backend answered it.
"""

from __future__ import annotations

import asyncio
import glob
import hashlib
import random
import signal
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest

from benchmarks.bench_webhooks import deposit_body
from exporter.simulator.backend import BackendTrouble, Copy, PaymentBackend
from exporter.whitebit.signing import sign_body
from exporter.zerohash.signing import hmac_signature
from tests.e2e.command_line import Started, start_command_line
from tests.helpers import scrape, wait_for

pytestmark = pytest.mark.slow

ACCOUNTS = {f"acct{n}": (f"CHAOS-KEY-{n}", f"chaos-webhook-secret-{n}-0123456789") for n in range(3)}
ZH_SECRET = "chaos-zerohash-secret-0123456789"
#: Deliveries sent in each of the two sending phases (round robin over the three accounts and Zero Hash).
PER_PHASE = 100
#: Real seconds between two ticks of the exporter's clock, and the fake seconds each tick adds.
TICK, TICK_STEP = 0.1, 10
DAY = 86_400
DRAIN_TIMEOUT = 120.0


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    if not found:
        raise AssertionError("libfaketime is not installed (bash .ci/run installs the faketime package)")
    return found[0]


class FakeClock:
    """The exporter's wall clock: real time plus :attr:`offset` seconds, written where libfaketime reads it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.write()

    def write(self) -> None:
        spare = self.path.with_suffix(".new")
        spare.write_text(f"+{self.offset}s\n")
        spare.replace(self.path)  # atomic: the exporter never reads half a file

    def advance(self, seconds: int) -> None:
        self.offset += seconds
        self.write()

    def now(self) -> float:
        return time.time() + self.offset

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.advance(TICK_STEP)


class Sent(NamedTuple):
    provider: str
    account: str  # the WhiteBIT key, or "" for Zero Hash (as the backend knows them)
    delivery_id: str
    body: bytes


class Running(NamedTuple):
    proc: asyncio.subprocess.Process
    webhooks: str
    metrics: str


def write_config(directory: Path, backend: str) -> Path:
    accounts = "".join(
        f"  - name: {name}\n    webhook: {{public_key: {key}, secrets: [{secret}]}}\n"
        for name, (key, secret) in ACCOUNTS.items()
    )
    path = directory / "config.yaml"
    path.write_text(
        "web: {listen_address: '127.0.0.1:0'}\n"
        "webhooks: {listen_address: '127.0.0.1:0'}\n"
        f"state: {{path: '{directory / 'state.db'}'}}\n"
        f"whitebit:\n{accounts}"
        f"zerohash: {{webhook: {{hmac_secrets: [{ZH_SECRET}]}}}}\n"
        "relay:\n"
        "  targets:\n"
        f"    - {{name: payments, url: '{backend}/whitebit', providers: [whitebit], timeout: 1s, max_backoff: 10m}}\n"
        f"    - {{name: balances, url: '{backend}/zerohash', providers: [zerohash], timeout: 1s, max_backoff: 10m}}\n"
    )
    return path


async def start(config: Path, clock: FakeClock, log: Path, started: Started) -> Running:
    """The command line under ``clock`` (libfaketime reads its offset from the file at every clock read)."""
    env = {
        "LD_PRELOAD": libfaketime(),
        "FAKETIME_TIMESTAMP_FILE": str(clock.path),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    proc, listening = await start_command_line(config, log, started, env=env)
    return Running(proc, listening["webhooks"], listening["metrics"])


async def kill(running: Running, kills: list[float]) -> None:
    running.proc.send_signal(signal.SIGKILL)
    await running.proc.wait()
    kills.append(time.monotonic())


def make_delivery(n: int, clock: FakeClock) -> tuple[Sent, dict[str, str]]:
    """The ``n``th delivery: WhiteBIT deposits of the three accounts in turn (nonces rising), then Zero Hash."""
    delivery_id = str(uuid.uuid4())
    if n % 4 == 3:
        body = (
            b'{"participant_code":"CHAOS1","account_group":"PLAT","account_label":"general","account_type":'
            b'"available","asset":"USD","balance":"%d","run_id":"%s","run_type":"deposit","timestamp":%d,'
            b'"movements":[{"movement_type":"deposit","change":"1","movement_id":"%s"}]}'
            % (n, delivery_id.encode(), int(clock.now() * 1000), delivery_id.encode())
        )
        timestamp = str(int(clock.now() * 1000))
        headers = {
            "x-zh-hook-notification-id": delivery_id,
            "x-zh-hook-payload-type": "account_balance.changed",
            "x-zh-hook-timestamp": timestamp,
            "x-zh-hook-signature": hmac_signature(ZH_SECRET, body, timestamp),
        }
        # The exporter names a Zero Hash delivery by the SHA-256 of its body (it has no signed id).
        return Sent("zerohash", "", hashlib.sha256(body).hexdigest(), body), headers
    key, secret = list(ACCOUNTS.values())[n % 4]
    body = deposit_body(n, "chaos", n + 1, delivery_id, created_at=1_700_000_000 + n)
    return Sent("whitebit", key, delivery_id, body), sign_body(body, key=key, secret=secret)


async def send(running: Running, first: int, count: int, clock: FakeClock, sent: list[Sent]) -> None:
    """Deliveries ``first`` .. ``first + count - 1``, one at a time, each until the exporter answers 200."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for n in range(first, first + count):
            delivery, headers = make_delivery(n, clock)
            path = "/webhooks/whitebit" if delivery.provider == "whitebit" else "/webhooks/zerohash"
            async with http.post(running.webhooks + path, data=delivery.body, headers=headers) as answer:
                assert answer.status == 200, await answer.text()
            sent.append(delivery)


async def relay_series(running: Running) -> dict[str, dict[str, float]]:
    scraped = await scrape(running.metrics)
    series: dict[str, dict[str, float]] = {}
    for target in ("payments", "balances"):
        series[target] = {
            "pending": scraped.value("whitebit_exporter_relay_pending_deliveries", target=target) or 0.0,
            "oldest": scraped.value("whitebit_exporter_relay_oldest_pending_seconds", target=target) or 0.0,
            "dead": scraped.value("whitebit_exporter_relay_dead_letters", target=target) or 0.0,
            **{
                outcome: scraped.value("whitebit_exporter_relay_deliveries_total", target=target, outcome=outcome)
                or 0.0
                for outcome in ("delivered", "retry", "dead")
            },
        }
    return series


def answer_was_lost(earlier: Copy, later: Copy, kills: list[float]) -> bool:
    """Whether the exporter could not have known ``earlier`` was taken when it sent ``later``: the answer
    was held past its timeout, or the exporter was killed after sending it (before or after the answer
    came, but before it could record it) and before sending ``later``."""
    if earlier.outcome == "hung":
        return True
    return any(earlier.arrived <= k <= later.arrived for k in kills)


async def test_every_delivery_arrives_in_order_through_500s_timeouts_an_outage_and_sigkills(
    tmp_path: Path, processes: Started
) -> None:
    clock = FakeClock(tmp_path / "faketime")
    backend = PaymentBackend(dict(ACCOUNTS.values()), ZH_SECRET, rng=random.Random(14))
    await backend.start()
    ticking = asyncio.create_task(clock.run())
    config, log = write_config(tmp_path, backend.url), tmp_path / "exporter.log"
    sent: list[Sent] = []
    kills: list[float] = []
    try:
        # 1. A flaky backend: 500s at random, some answers held past the exporter's 1 s timeout. The
        #    exporter is killed halfway through the sending.
        await backend.set_trouble(BackendTrouble(fail_rate=0.25, hang_rate=0.05, hang_seconds=3, strict_nonces=True))
        running = await start(config, clock, log, processes)
        await send(running, 0, PER_PHASE // 2, clock, sent)
        await wait_for(lambda: len(backend.copies) >= 10, timeout=DRAIN_TIMEOUT, message="nothing relayed")
        await kill(running, kills)
        running = await start(config, clock, log, processes)
        await send(running, PER_PHASE // 2, PER_PHASE // 2, clock, sent)

        # 2. The backend goes away for two days (WhiteBIT's own retries would have ended after one).
        await backend.set_trouble(BackendTrouble(down=True, strict_nonces=True))
        await send(running, PER_PHASE, PER_PHASE, clock, sent)
        clock.advance(DAY)
        await kill(running, kills)
        running = await start(config, clock, log, processes)
        clock.advance(DAY)
        owed_copies = len(backend.copies)

        undelivered = {d.delivery_id for d in sent} - {i for ids in backend.received.values() for i in ids}

        async def backlog_shows_the_outage() -> bool:
            # Owed: at least what never got through (and what got through with its answer lost), once
            # the restarted exporter has derived (and so owed) every delivery it had answered.
            series = await relay_series(running)
            owed = sum(s["pending"] for s in series.values())
            return (
                owed >= len(undelivered)
                and all(s["oldest"] >= 2 * DAY and s["pending"] > 0 for s in series.values())
                and any(s["retry"] > 0 for s in series.values())
            )

        await wait_for(backlog_shows_the_outage, timeout=DRAIN_TIMEOUT, message="the backlog does not show")
        during = await relay_series(running)
        assert all(s["dead"] == 0 and s["delivered"] == 0 for s in during.values())
        assert len(backend.copies) == owed_copies  # nothing got through a closed port

        # 3. It comes back, still flaky; the exporter is killed once more while it catches up.
        await backend.set_trouble(BackendTrouble(fail_rate=0.1, hang_rate=0.05, hang_seconds=3, strict_nonces=True))
        taken = sum(len(ids) for ids in backend.received.values())
        await wait_for(lambda: len(backend.copies) > owed_copies + 20, timeout=DRAIN_TIMEOUT, message="no catching up")
        await kill(running, kills)
        running = await start(config, clock, log, processes)

        async def caught_up() -> bool:
            series = await relay_series(running)
            return all(s["pending"] == 0 for s in series.values())

        await wait_for(caught_up, timeout=DRAIN_TIMEOUT, message="the backlog did not drain")
        after = await relay_series(running)
    finally:
        ticking.cancel()
        await backend.stop()

    assert sum(len(ids) for ids in backend.received.values()) > taken and len(kills) == 3
    # Every delivery arrived, each verified with the provider's own signature, no nonce went backwards.
    by_provider = {p: {d.delivery_id for d in sent if d.provider == p} for p in ("whitebit", "zerohash")}
    assert {p: set(ids) for p, ids in backend.received.items()} == by_provider
    assert backend.rejected == 0 and backend.nonce_regressions == 0
    # In order per account: the copies of one account never go back to an earlier delivery.
    place = {d.delivery_id: n for n, d in enumerate(sent)}
    for account in {d.account for d in sent}:
        places = [place[c.delivery_id] for c in backend.copies if c.account == account]
        assert places == sorted(places), f"out of order for {account or 'zerohash'}"
    # A second copy only where the answer to an earlier one was lost.
    last_taken: dict[str, Copy] = {}
    duplicates = after_kill = 0
    for copy in backend.copies:
        if copy.outcome == "duplicate":
            duplicates += 1
            after_kill += last_taken[copy.delivery_id].outcome != "hung"
            assert answer_was_lost(last_taken[copy.delivery_id], copy, kills), copy
        if copy.outcome in ("taken", "hung", "duplicate"):
            last_taken[copy.delivery_id] = copy
    assert backend.hung > 0 and duplicates >= backend.hung  # each held answer was followed by another copy
    print(  # what the run went through (pytest -s shows it)
        f"relay chaos: {len(sent)} deliveries, {len(backend.copies)} copies, {backend.failed} answered 500,"
        f" {backend.hung} held past the timeout, {duplicates} duplicates ({after_kill} after a kill),"
        f" {len(kills)} SIGKILLs, outage {during['payments']['oldest'] / DAY:.1f} days"
        f" ({sum(s['pending'] for s in during.values()):.0f} owed)"
    )
    # The last exporter's counters are what the backend answered it; nothing is owed or dead.
    since = [c for c in backend.copies if c.arrived > kills[-1]]  # the last exporter's copies
    delivered = sum(s["delivered"] for s in after.values())
    retried = sum(s["retry"] for s in after.values())
    assert delivered == sum(c.outcome in ("taken", "duplicate") for c in since)
    assert retried == sum(c.outcome in ("failed", "hung") for c in since)
    assert all(s["pending"] == 0 and s["dead"] == 0 and s["oldest"] == 0 for s in after.values())
