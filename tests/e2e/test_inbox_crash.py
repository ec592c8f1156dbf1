"""The webhook inbox under SIGKILL: the real command line killed at random points under 32 concurrent deliveries.

Every delivery answered 200 is in the inbox and derived exactly once after the restarts; replaying
every one of them yields only duplicates; and the derived transfers equal those of a run that was
never killed. Deliveries whose answer was lost to a kill are sent again, as WhiteBIT retries them.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import deque
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import aiohttp
import pytest

from benchmarks.bench_webhooks import deposit_body
from exporter.core.state import StateStore
from exporter.whitebit.signing import sign_body
from exporter.whitebit.transfers import record_events
from tests.e2e.command_line import Started, start_command_line

pytestmark = pytest.mark.slow

KEY = "PUBLIC-KEY-CRASH"
SECRET = "crash-webhook-secret-0123456789"
DELIVERIES = 3000
ROUNDS = 10
CONCURRENCY = 32
EXIT_TIMEOUT = 30.0


class Delivery(NamedTuple):
    delivery_id: str
    transaction_hash: str
    body: bytes
    headers: dict[str, str]


def deliveries() -> list[Delivery]:
    """Deposits as WhiteBIT sends them (the benchmark's body), one ``deposit.processed`` each, every one
    a transfer of its own."""
    made = []
    for n in range(DELIVERIES):
        delivery_id = f"crash-{n:05d}"
        amount = f"{n % 97 + 1}.500000000000000000"
        body = deposit_body(n, "crash", n + 1, delivery_id, amount=amount, created_at=1_700_000_000 + n)
        made.append(Delivery(delivery_id, f"0x{n:064x}", body, sign_body(body, key=KEY, secret=SECRET)))
    return made


def write_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "config.yaml"
    path.write_text(
        "web: {listen_address: '127.0.0.1:0'}\n"
        "webhooks: {listen_address: '127.0.0.1:0'}\n"
        f"state: {{path: '{directory / 'state.db'}'}}\n"
        "whitebit:\n"
        "  - name: main\n"
        f"    webhook: {{public_key: {KEY}, secrets: [{SECRET}]}}\n"
    )
    return path


class Running(NamedTuple):
    proc: asyncio.subprocess.Process
    webhooks: str


async def start(config: Path, log: Path, started: Started) -> Running:
    proc, listening = await start_command_line(config, log, started)
    return Running(proc, listening["webhooks"])


async def send_all(url: str, queue: deque[Delivery], answered: dict[str, str], *, stop_after: int | None) -> None:
    """Send from ``queue`` over CONCURRENCY connections until it is empty or ``stop_after`` more were
    answered 200; a delivery without an answer goes back to the queue (the sender retries it)."""
    target = len(answered) + stop_after if stop_after is not None else None
    done = asyncio.Event()

    async def sender(http: aiohttp.ClientSession) -> None:
        while queue and not done.is_set():
            delivery = queue.popleft()
            try:
                async with http.post(url + "/webhooks/whitebit", data=delivery.body, headers=delivery.headers) as r:
                    word = (await r.json())["status"] if r.status == 200 else ""
            except (TimeoutError, aiohttp.ClientError):
                queue.append(delivery)
                return
            if not word:
                queue.append(delivery)
                continue
            answered[delivery.delivery_id] = word
            if target is not None and len(answered) >= target:
                done.set()

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as http:
        await asyncio.gather(*(sender(http) for _ in range(CONCURRENCY)))


async def stop(running: Running) -> None:
    running.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(running.proc.wait(), timeout=EXIT_TIMEOUT) == 0


Derived = tuple[int, str | None, Decimal, bool, dict[str, int]]


def derived(path: Path) -> dict[str, Derived]:
    """The transfers of a state file, by transaction hash: (status, outcome, amount, final, the webhook
    events the record took in, each with how many times)."""
    with StateStore.open(path) as store:
        assert store.inbox_backlog() == (0, None)  # everything answered was derived
        transfers = store.transfers("main")
    by_hash = {
        str(r.details.get("transaction_hash")): (r.status, r.outcome, r.amount, r.final, record_events(r))
        for r in transfers
    }
    assert len(by_hash) == len(transfers)  # one record per transfer
    return by_hash


async def test_sigkill_under_load_keeps_every_answered_delivery_and_derives_each_once(
    tmp_path: Path, processes: Started
) -> None:
    made = deliveries()
    rng = random.Random(20261129)
    killed_dir, calm_dir = tmp_path / "killed", tmp_path / "calm"
    config, log = write_config(killed_dir), killed_dir / "exporter.log"
    queue: deque[Delivery] = deque(made)
    answered: dict[str, str] = {}
    kills = 0
    for _ in range(ROUNDS - 1):
        running = await start(config, log, processes)
        # Killed once a random number of further deliveries has been answered: mid-batch, mid-commit
        # or mid-derivation, wherever that falls.
        await send_all(running.webhooks, queue, answered, stop_after=rng.randint(50, 2 * DELIVERIES // ROUNDS))
        # Not a wait for anything: the kill lands at a random moment of the catch-up that follows the
        # burst, when derivation runs batch after batch (mid-batch, between commit and memory).
        await asyncio.sleep(rng.uniform(0.0, 0.15))
        running.proc.kill()
        await running.proc.wait()
        kills += 1
        # Whatever was in flight had no answer: the sender sends it again after the restart.
    running = await start(config, log, processes)
    await send_all(running.webhooks, queue, answered, stop_after=None)
    assert not queue and len(answered) == DELIVERIES and kills == ROUNDS - 1

    # Replaying every answered delivery: only duplicates, nothing derived again.
    replayed: dict[str, str] = {}
    await send_all(running.webhooks, deque(made), replayed, stop_after=None)
    assert set(replayed.values()) == {"duplicate"} and len(replayed) == DELIVERIES
    await stop(running)

    with StateStore.open(killed_dir / "state.db") as store:
        assert all(store.delivery_seen("whitebit", "main", d.delivery_id) for d in made)
        rows = store.inbox_after(0, DELIVERIES + 1)
    assert sorted(row.delivery_id for row in rows) == sorted(d.delivery_id for d in made)
    assert all(row.body == {d.delivery_id: d.body for d in made}[row.delivery_id] for row in rows)
    killed = derived(killed_dir / "state.db")
    assert set(killed) == {d.transaction_hash for d in made}
    assert all(outcome == "successful" and final for _, outcome, _, final, _ in killed.values())
    # Each delivery was derived once: a row derived twice would count its event twice on its record.
    assert all(list(events.values()) == [1] for *_, events in killed.values())

    # The same deliveries to an exporter that is never killed derive the same transfers.
    calm = await start(write_config(calm_dir), calm_dir / "exporter.log", processes)
    await send_all(calm.webhooks, deque(made), {}, stop_after=None)
    await stop(calm)
    assert derived(calm_dir / "state.db") == killed
