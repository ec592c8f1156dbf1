"""End to end: a real Exporter whose state file lives on a real 2 MiB tmpfs that fills up and is freed again.

What the operator must see while the state cannot be written (every delivery 503 and counted as
``state_unavailable``, ``/-/ready`` 503 naming the state, ``whitebit_exporter_state_writable`` 0, the
alert's series) and that freeing space clears all of it without a restart. The volume is a tmpfs
mounted for the test (needs root, as in the test container); elsewhere the test is skipped with the
reason. Before filling it, the same volume takes many more deliveries than the 174 after which the
exporter used to wedge for good on 2 MiB (its WAL grew to ~4 MB before the first checkpoint).
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest

from exporter.app import Exporter
from exporter.config.schema import (
    Config,
    StateConfig,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
    ZerohashConfig,
    ZerohashWebhookConfig,
)
from exporter.core.state import RESERVE_BYTES, StateStore
from exporter.whitebit.signing import compact_json, sign_body
from exporter.zerohash.signing import hmac_signature
from tests.core.test_state_health import damage_page
from tests.helpers import Scrape, scrape, wait_for

KEY, SECRET = "whk-faults-PUBLIC", "whsec-faults-0123456789"
ZH_SECRET = "zh-faults-0123456789"
VOLUME_BYTES = 2 * 1024 * 1024
#: The WAL on VOLUME_BYTES stays under this: its checkpoint threshold is fitted to the free space.
SMALL_VOLUME_WAL_LIMIT = 1024 * 1024


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted under tmp_path, unmounted afterwards; skipped where mounting is not allowed."""
    where = tmp_path / "volume"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={VOLUME_BYTES}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path, name: str) -> Path:
    """Write a file in ``directory`` until the volume refuses (ENOSPC); the file stays."""
    filler = directory / name
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (64 * 1024, 4096, 512):  # then whatever smaller room is left
            while True:
                try:
                    os.write(fd, bytes(size))
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


def delivery(n: int) -> tuple[bytes, dict[str, str]]:
    body = compact_json({"method": "code.apply", "params": {"code": f"WBX-{n}", "nonce": n}, "id": f"fault-{n}"})
    return body, sign_body(body, key=KEY, secret=SECRET)


def zerohash_delivery(n: int) -> tuple[bytes, dict[str, str]]:
    body = compact_json({"n": n})
    timestamp = str(int(time.time() * 1000))
    return body, {
        "Content-Type": "application/json",
        "x-zh-hook-payload-type": "participant_status.changed",
        "x-zh-hook-notification-id": f"zh-{n}",
        "x-zh-hook-timestamp": timestamp,
        "x-zh-hook-signature": hmac_signature(ZH_SECRET, body, timestamp),
    }


class Faults:
    """A started exporter with its state on the small volume, and an HTTP session to drive it."""

    def __init__(self, exporter: Exporter, http: aiohttp.ClientSession, volume: Path) -> None:
        self.exporter = exporter
        self.http = http
        self.volume = volume

    async def post(self, provider: str, body: bytes, headers: dict[str, str]) -> int:
        async with self.http.post(f"{self.exporter.webhooks_url}/webhooks/{provider}", data=body, headers=headers) as r:
            await r.read()
            return r.status

    async def whitebit(self, n: int) -> int:
        return await self.post("whitebit", *delivery(n))

    async def zerohash(self, n: int) -> int:
        return await self.post("zerohash", *zerohash_delivery(n))

    async def ready(self) -> tuple[int, str]:
        async with self.http.get(self.exporter.metrics_url + "/-/ready") as r:
            return r.status, await r.text()

    async def metrics(self) -> Scrape:
        return await scrape(self.exporter.metrics_url)


@pytest.fixture
async def faults(small_volume: Path, make_config: Callable[..., Config]) -> AsyncIterator[Faults]:
    account = WhitebitAccountConfig(name="main", webhook=WhitebitWebhookConfig(public_key=KEY, secrets=(SECRET,)))
    zerohash = ZerohashConfig(ZerohashWebhookConfig(hmac_secrets=(ZH_SECRET,)))
    config = dataclasses.replace(
        make_config([account], zerohash=zerohash), state=StateConfig(path=str(small_volume / "state.db"))
    )
    exporter = Exporter(config)
    await exporter.start()
    try:
        async with aiohttp.ClientSession() as http:
            yield Faults(exporter, http, small_volume)
    finally:
        await exporter.stop()


def rejected(m: Scrape) -> tuple[float | None, float | None]:
    return (
        m.value("whitebit_webhooks_rejected_total", account="main", reason="state_unavailable"),
        m.value("zerohash_webhooks_rejected_total", reason="state_unavailable"),
    )


async def test_a_full_volume_is_visible_and_recovers_without_a_restart(faults: Faults) -> None:
    m = await faults.metrics()
    assert rejected(m) == (0.0, 0.0)  # the series exist from the start
    assert m.value("whitebit_exporter_state_writable") == 1.0
    assert m.value("whitebit_exporter_state_errors_total", kind="full") == 0.0
    assert (await faults.ready())[0] == 200
    reserve = faults.exporter.state.reserve_path
    assert reserve.stat().st_size == RESERVE_BYTES

    # Far more deliveries than the 174 that used to wedge a 2 MiB volume, 20 at a time.
    wal = faults.volume / "state.db-wal"
    for wave in range(20):
        statuses = await asyncio.gather(*(faults.whitebit(wave * 20 + i) for i in range(20)))
        assert statuses == [200] * 20
        # On a volume this small the checkpoint threshold is fitted down (README *Space it needs*).
        assert wal.stat().st_size <= SMALL_VOLUME_WAL_LIMIT

    # Fill the volume. The first failed write gives up the reserve and checkpoints, so a few
    # more deliveries may go through; once the freed room is filled too, every write fails.
    fillers = [fill(faults.volume, "filler-0")]
    n = 1000
    for attempt in range(1, 50):
        n += 1
        if await faults.whitebit(n) == 503:
            break
        fillers.append(fill(faults.volume, f"filler-{attempt}"))
    else:
        raise AssertionError("no delivery failed on a full volume")
    assert not reserve.exists()
    fillers.append(fill(faults.volume, "filler-last"))
    assert await faults.whitebit(n + 1) == 503
    assert await faults.zerohash(1) == 503

    m = await faults.metrics()
    wb, zh = rejected(m)
    assert wb is not None and wb >= 2 and zh == 1.0
    assert m.value("whitebit_exporter_state_writable") == 0.0
    full = m.value("whitebit_exporter_state_errors_total", kind="full")
    assert full is not None and full >= 2
    free = m.value("whitebit_exporter_state_volume_free_bytes")
    assert free is not None and free < RESERVE_BYTES
    status, text = await faults.ready()
    assert status == 503 and "state: state file not writable (full:" in text

    # Free the space: housekeeping's probe notices on its own, no delivery and no restart needed.
    for filler in fillers:
        filler.unlink()

    async def ready() -> bool:
        return (await faults.ready())[0] == 200

    await wait_for(ready, timeout=15)
    m = await faults.metrics()
    assert m.value("whitebit_exporter_state_writable") == 1.0
    free = m.value("whitebit_exporter_state_volume_free_bytes")
    assert free is not None and free > 2 * RESERVE_BYTES
    # The deliveries that were refused were not recorded: their retries are new, not duplicates.
    assert await faults.whitebit(n) == 200
    assert await faults.whitebit(n + 1) == 200
    assert await faults.zerohash(1) == 200
    m = await faults.metrics()
    assert m.value("whitebit_webhooks_duplicate_total", account="main") == 0.0
    # The reserve comes back once there is room for it.
    await wait_for(lambda: reserve.exists() and reserve.stat().st_size == RESERVE_BYTES, timeout=15)


async def test_a_delivery_table_damaged_while_running_turns_ready_503(make_config: Callable[..., Config]) -> None:
    account = WhitebitAccountConfig(name="main", webhook=WhitebitWebhookConfig(public_key=KEY, secrets=(SECRET,)))
    exporter = Exporter(make_config([account]))
    await exporter.start()
    try:
        async with aiohttp.ClientSession() as http:
            h = Faults(exporter, http, Path(exporter.config.state.path).parent)
            assert await asyncio.gather(*(h.whitebit(n) for n in range(50))) == [200] * 50
            path = Path(exporter.config.state.path)
            assert exporter.state.checkpoint(truncate=True)
            with sqlite3.connect(path) as conn:
                # The table every new delivery's dedupe lookup reads (exporter/core/state.py, add_delivery).
                [(root,)] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'inbox_ids'").fetchall()
            conn.close()
            with StateStore.open(path) as other:
                damage_page(path, int(root))
                # Another connection's commit makes the exporter's drop its page cache and read the file.
                other.probe()
            assert await h.whitebit(1000) == 503
            status, text = await h.ready()
            assert status == 503 and "state: state file damaged (database disk image is malformed)" in text
            m = await h.metrics()
            corrupt = m.value("whitebit_exporter_state_errors_total", kind="corrupt")
            assert corrupt is not None and corrupt >= 1
            assert m.value("whitebit_webhooks_rejected_total", account="main", reason="state_unavailable") == 1.0
    finally:
        await exporter.stop()
