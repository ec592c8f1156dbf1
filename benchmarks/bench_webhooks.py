"""Webhook intake throughput relative to a bare aiohttp handler, measured in one run.

    python benchmarks/bench_webhooks.py [--seconds 3] [--rounds 3] [--connections 32] [--relay-down]

Several servers are measured in turn, each several rounds, under the same load:

* ``bare``: a handler that only reads the body and answers 200 (the baseline), mounted in the
  webhook listener's own aiohttp application (:func:`~exporter.http.webhook_listener.create_webhook_app`:
  same body limit, same response hook) in the same process and event loop as the exporter;
* ``verified``: a real :class:`~exporter.app.Exporter` receiving correctly signed WhiteBIT
  ``deposit.processed`` deliveries, each with a new UUID id and a higher nonce, as WhiteBIT sends
  them, in a saturating burst: verification, the inbox row and the nonce committed before the 200
  (durability included), the transfers derived from the inbox in the same process meanwhile (it
  falls behind during the burst, see :mod:`exporter.webhooks.inbox`); after each burst the run
  waits until derivation has caught up, and prints how much was left, how long it took and the
  server CPU per delivery derived;
* ``forged``: the same Exporter receiving deliveries signed with a wrong secret (401 ``bad_signature``,
  one warning log line each, written to /dev/null through the exporter's logfmt formatter);
* ``zerohash``: correctly signed Zero Hash ``account_balance.changed`` deliveries (informational);
* ``unlimited``: the ``forged`` load on a receiver mounted next to ``bare``, which is served without
  the listener's connection limits (:mod:`exporter.http.limits`): ``forged`` less this is what the
  limits cost a request (informational).

Two more servers break the verified path into stages, so the output shows where the time goes
(both mounted next to ``bare``, built from the real receiver, informational):

* ``checked``: the real WhiteBIT receiver's checks (headers, key, payload, HMAC) and JSON parse,
  answering 200 without touching any state: the ceiling of any verified path on this stack;
* ``inbox``: ``checked`` plus each delivery's inbox row (its body as received, which is also its
  dedupe record), committed through a :class:`~exporter.webhooks.commit.GroupCommitter` before the
  200: the cost of durability alone.

Last, a steady flow of :data:`STEADY_RATE` verified deliveries/s for :data:`STEADY_SECONDS`, paced
over 8 connections, with the inbox lag sampled every :data:`LAG_SAMPLE` s: its maximum is printed.

The exporter runs as its command line runs it: the garbage collector is tuned before it starts
(:mod:`exporter.core.gc_tuning`); ``--gc default`` leaves CPython's defaults instead, to show what
that tuning is worth.

``--relay-down`` measures intake while a relay target is down: the exporter is configured with one
relay target (``relay.targets``, every provider, account and method) whose URL is a loopback port
bound but never listening, so each connection is refused. Every verified delivery is then owed to
it as it is derived, and its sender (:class:`~exporter.relay.sender.RelaySender`) keeps looking for
what is due (after each derived batch and every idle poll) and trying each account's oldest delivery
again after its retry delay; the ``verified`` and ``zerohash`` ratios then show whether intake slows
while a target is down (compare with a run without the flag), and the relay's counts (attempts by
outcome, deliveries owed) are printed with the exporter's. Off by default: no relay target.

The load comes from a second process: ``--connections`` keep-alive HTTP/1.1 connections over
loopback, each sending its next request as soon as the previous answer arrived, written with raw
asyncio streams so the load generator is cheaper per request than the servers it measures. The
script prints rates (median of the rounds) and the ratios against ``bare``; it asserts nothing.
Goals: verified >= 0.4 under the burst, forged >= 0.7, inbox lag under a second at the steady flow.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import inspect
import itertools
import json
import math
import multiprocessing
import os
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import closing
from multiprocessing.connection import Connection
from pathlib import Path
from typing import NamedTuple

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from exporter.app import Exporter
from exporter.config.schema import (
    Config,
    ListenAddress,
    RelayConfig,
    RelayTargetConfig,
    StateConfig,
    WebConfig,
    WebhooksConfig,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
    ZerohashConfig,
    ZerohashWebhookConfig,
)
from exporter.core.gc_tuning import tune_garbage_collector
from exporter.core.logs import setup_logging
from exporter.core.state import InboxDelivery, StateStore
from exporter.http.webhook_listener import create_webhook_app
from exporter.webhooks.commit import GroupCommitter
from exporter.whitebit.signing import HEADER_APIKEY, HEADER_SIGNATURE, compact_json, encode_payload, sign_payload
from exporter.whitebit.webhook import PROVIDER, AccountWebhook, WhitebitReceiver, parse_envelope

KEY = "bench-webhook-key"
#: The steady flow after the bursts, and how often the inbox lag is sampled (s).
STEADY_RATE = 1000.0
STEADY_SECONDS = 10.0
LAG_SAMPLE = 0.05
SECRET = "bench-webhook-secret-0123456789abcdef"
ZH_SECRET = "bench-zerohash-secret-0123456789"
LOOPBACK = ListenAddress("127.0.0.1", 0)
#: The relay target of ``--relay-down``.
DOWN_TARGET = "down"


# --- the load generator (runs in a second process) ------------------------------------------------


def deposit_body(
    index: int,
    prefix: str,
    nonce: int,
    delivery_id: str,
    *,
    amount: str = "25.000000000000000000",
    created_at: int = 1_700_000_000,
) -> bytes:
    """A ``deposit.processed`` body as WhiteBIT documents it: 18-decimal amounts, a unique transaction
    hash per ``index``."""
    params = {
        "address": f"addr-{prefix}-{index}",
        "amount": amount,
        "createdAt": created_at,
        "currency": "Tether US",
        "description": "",
        "fee": "0.000000000000000000",
        "memo": "",
        "method": 1,
        "network": "TRC20",
        "status": 3,
        "ticker": "USDT",
        "transactionHash": f"0x{index:064x}",
        "uniqueId": None,
        "confirmations": {"actual": 3, "required": 3},
        "nonce": nonce,
    }
    return compact_json({"method": "deposit.processed", "params": params, "id": delivery_id})


def _whitebit_request(path: str, index: int, prefix: str, secret: str, nonce: int) -> bytes:
    # As WhiteBIT sends them: a UUID id (random, so the dedupe index sees random keys) and a
    # nonce above every earlier one (taken when the request is built, just before it is sent).
    body = deposit_body(index, prefix, nonce, str(uuid.uuid4()))
    payload = encode_payload(body)
    headers = {"X-TXC-APIKEY": KEY, "X-TXC-PAYLOAD": payload, "X-TXC-SIGNATURE": sign_payload(payload, secret)}
    return _http(path, body, headers)


def _zerohash_request(path: str, index: int, prefix: str, secret: str) -> bytes:
    body = json.dumps(
        {
            "participant_code": f"P{index % 500}",
            "account_group": "PLAT",
            "account_label": "general",
            "account_type": "available",
            "asset": "USD",
            "balance": str(index),
            "run_id": f"{prefix}-{index}",
            "run_type": "deposit",
            "timestamp": 1_760_000_000_000 + index,
            "movements": [{"movement_type": "deposit", "change": "1", "movement_id": f"{prefix}-{index}"}],
        },
        separators=(",", ":"),
    ).encode()
    headers = {
        "x-zh-hook-notification-id": f"{prefix}-{index}",
        "x-zh-hook-payload-type": "account_balance.changed",
        "x-zh-hook-signature-256": hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }
    return _http(path, body, headers)


def _http(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: 127.0.0.1",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _worker(
    port: int, make: object, start: int, step: int, deadline: float, statuses: Counter[int], interval: float
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    index = start
    due = time.monotonic()
    try:
        while time.monotonic() < deadline:
            if interval:
                # Paced: one request per interval on this connection, whatever the answers' speed.
                due += interval
                await asyncio.sleep(max(due - time.monotonic(), 0.0))
            writer.write(make(index))  # type: ignore[operator]
            index += step
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            statuses[status] += 1
    finally:
        writer.close()


async def _load(
    port: int, kind: str, path: str, prefix: str, seconds: float, connections: int, rate: float
) -> dict[int, int]:
    if kind == "zerohash":

        def make(i: int) -> bytes:
            return _zerohash_request(path, i, prefix, ZH_SECRET)
    else:
        secret = "wrong-secret" if kind == "forged" else SECRET
        # Microseconds since the epoch, then +1 per request: above every nonce of earlier rounds.
        nonces = itertools.count(time.time_ns() // 1000)

        def make(i: int) -> bytes:
            return _whitebit_request(path, i, prefix, secret, next(nonces))

    statuses: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    interval = connections / rate if rate else 0.0
    await asyncio.gather(
        *(_worker(port, make, n, connections, deadline, statuses, interval) for n in range(connections))
    )
    return dict(statuses)


def _load_process(conn: Connection, *args: object) -> None:
    conn.send(asyncio.run(_load(*args)))  # type: ignore[arg-type]
    conn.close()


async def measure(
    port: int, kind: str, path: str, prefix: str, seconds: float, connections: int, rate: float = 0.0
) -> tuple[float, dict[int, int], float]:
    """Requests/s the server at ``port`` answered during ``seconds`` of load from a second process,
    the statuses, and the server process's CPU microseconds per request. ``rate`` (requests/s over all
    connections) paces the load; 0 sends each request as soon as the previous answer arrived."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_load_process, args=(child, port, kind, path, prefix, seconds, connections, rate))
    process.start()
    child.close()
    loop = asyncio.get_running_loop()
    cpu = time.process_time()
    statuses: dict[int, int] = await loop.run_in_executor(None, parent.recv)
    cpu = time.process_time() - cpu
    await loop.run_in_executor(None, process.join)
    count = sum(statuses.values())
    return count / seconds, statuses, cpu * 1e6 / max(count, 1)


# --- the servers ------------------------------------------------------------------------------------


class BareReceiver:
    """The baseline: reads the body and answers 200, nothing else."""

    path = "/bare"

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response()


class ChecksOnlyReceiver(WhitebitReceiver):
    """Stage ``checked``: the real receiver's checks and JSON parse, then 200; no state at all."""

    path = "/stage/checked"

    async def _process(self, webhook: AccountWebhook, body: bytes, key: str, signature: str) -> web.StreamResponse:
        parse_envelope(body, webhook.account)
        return self.reply(200, "ok")


class InboxRowReceiver(WhitebitReceiver):
    """Stage ``inbox``: ``checked`` plus the delivery's inbox row (its dedupe record) committed (grouped)
    before the 200: no nonce, and nothing derived from it."""

    path = "/stage/inbox"

    async def _process(self, webhook: AccountWebhook, body: bytes, key: str, signature: str) -> web.StreamResponse:
        delivery_id, method, _ = parse_envelope(body, webhook.account)
        headers = {HEADER_APIKEY: key, HEADER_SIGNATURE: signature}
        delivery = InboxDelivery(PROVIDER, webhook.account, delivery_id, method, time.time(), body, headers)
        store, ttl = self._store, self._ttl
        fresh = await self._committer.run(lambda: store.add_delivery(delivery, ttl=ttl) is not None)
        return self.reply(200, "ok" if fresh else "duplicate")


async def bare_server(config: Config, stage_store: StateStore) -> tuple[web.AppRunner, int]:
    # The listener's application with the bare handler (and the stage receivers, on their own state
    # file), so the floor pays for the same aiohttp setup as the receivers measured against it. The
    # exporter's access log is at debug level, off at info as here.
    committer = GroupCommitter(stage_store)
    stages = [
        ChecksOnlyReceiver(config.whitebit, stage_store, committer, on_stored=lambda: None),
        InboxRowReceiver(config.whitebit, stage_store, committer, on_stored=lambda: None),
    ]
    app = create_webhook_app(config.webhooks, config.whitebit, [BareReceiver(), *stages])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, int(runner.addresses[0][1])


def refused_port() -> socket.socket:
    """A loopback port bound but never listening: a connection to it is refused, and as long as the
    socket is open no other process can take the port and answer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def exporter_config(state_dir: Path, relay_url: str | None = None) -> Config:
    """The measured exporter's config; with ``relay_url``, one relay target there that takes everything."""
    relay = RelayConfig((RelayTargetConfig(name=DOWN_TARGET, url=relay_url),) if relay_url else ())
    return Config(
        web=WebConfig(listen_address=LOOPBACK),
        webhooks=WebhooksConfig(listen_address=LOOPBACK),
        state=StateConfig(path=str(state_dir / "bench.db")),
        whitebit=(
            WhitebitAccountConfig(name="bench", webhook=WhitebitWebhookConfig(public_key=KEY, secrets=(SECRET,))),
        ),
        zerohash=ZerohashConfig(ZerohashWebhookConfig(hmac_secrets=(ZH_SECRET,))),
        relay=relay,
    )


async def main(seconds: float, rounds: int, connections: int, gc_settings: str, relay_down: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as state_dir, closing(refused_port()) as down:
        relay_url = f"http://127.0.0.1:{down.getsockname()[1]}/hooks" if relay_down else None
        config = exporter_config(Path(state_dir), relay_url)
        stage_store = StateStore.open(Path(state_dir) / "stages.db")
        runner, bare_port = await bare_server(config, stage_store)
        exporter = Exporter(config)
        if gc_settings == "exporter":
            tune_garbage_collector()  # what exporter.cli does before the exporter starts
        await exporter.start()
        exporter_port = int(exporter.webhooks_url.rsplit(":", 1)[1])
        targets = {
            "bare": (bare_port, "bare", "/bare"),
            "checked": (bare_port, "verified", ChecksOnlyReceiver.path),
            "inbox": (bare_port, "verified", InboxRowReceiver.path),
            "verified": (exporter_port, "verified", "/webhooks/whitebit"),
            "forged": (exporter_port, "forged", "/webhooks/whitebit"),
            "unlimited": (bare_port, "forged", ChecksOnlyReceiver.path),
            "zerohash": (exporter_port, "zerohash", "/webhooks/zerohash"),
        }
        rates: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        statuses: dict[str, Counter[int]] = {name: Counter() for name in targets}
        catch_ups: dict[str, list[CatchUp]] = {"verified": [], "zerohash": []}
        try:
            for round_number in range(rounds):
                for name, (port, kind, path) in targets.items():
                    rate, got, micros = await measure(port, kind, path, f"r{round_number}", seconds, connections)
                    rates[name].append(rate)
                    cpu[name].append(micros)
                    statuses[name].update(got)
                    if name in catch_ups:
                        # What the burst left to derive is derived before the next target is measured.
                        catch_ups[name].append(await catch_up(exporter))
            steady = await steady_lag(exporter, exporter_port, STEADY_RATE, STEADY_SECONDS)
            result = await _scrape_counts(exporter, relay_down)
            durability = _durability(exporter.state.path)
        finally:
            await exporter.stop()
            await runner.cleanup()
            stage_store.close()
    median = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"webhook intake benchmark: {rounds} rounds x {seconds:g}s, {connections} connections, "
        f"load from a second process, python {sys.version.split()[0]}, {os.cpu_count()} cpus, gc {gc_settings}"
    )
    print(f"  state file: {durability}")
    if relay_url is not None:
        print(
            f"  relay: one target, {DOWN_TARGET!r} at {relay_url} (bound, not listening: every connection refused),"
            " owed every verified delivery"
        )
    for name in targets:
        codes = ", ".join(f"{code}: {count}" for code, count in sorted(statuses[name].items()))
        runs = " ".join(f"{r:.0f}" for r in rates[name])
        print(
            f"  {name:9s} {median[name]:8.0f} req/s (median; rounds {runs}) "
            f"server cpu {statistics.median(cpu[name]):5.0f} us/req, statuses {{{codes}}}"
        )
    print(f"  checked  / bare = {median['checked'] / median['bare']:.2f}   (stage: checks and parse only, no state)")
    print(f"  inbox    / bare = {median['inbox'] / median['bare']:.2f}   (stage: checked + the durable inbox row)")
    print(f"  verified / bare = {median['verified'] / median['bare']:.2f}   (goal >= 0.4, inbox row and nonce durable)")
    print(f"  forged   / bare = {median['forged'] / median['bare']:.2f}   (goal >= 0.7)")
    print(
        f"  unlimited/ bare = {median['unlimited'] / median['bare']:.2f}   (forged, served without the listener's"
        " connection limits: what they cost)"
    )
    print(f"  zerohash / bare = {median['zerohash'] / median['bare']:.2f}   (informational)")
    for name, bursts in catch_ups.items():
        left = " ".join(f"{c.pending}" for c in bursts)
        took = " ".join(f"{c.seconds:.2f}" for c in bursts)
        cost = statistics.median(c.micros_per_delivery for c in bursts)
        print(
            f"  {name} derivation: left {left} deliveries after each burst, derived in {took} s;"
            f" {cost:.0f} us of server cpu per delivery derived (median)"
        )
    print(
        f"  steady {STEADY_RATE:.0f} deliveries/s for {STEADY_SECONDS:g} s: {steady.rate:.0f}/s answered,"
        f" statuses {steady.statuses}, inbox lag at most {steady.max_lag:.3f} s"
        f" ({steady.max_pending} deliveries; sampled every {LAG_SAMPLE:g} s)"
    )
    print(f"  exporter counted: {result}")


class CatchUp(NamedTuple):
    """How a burst's derivation backlog was caught up."""

    pending: int
    seconds: float
    micros_per_delivery: float


async def catch_up(exporter: Exporter) -> CatchUp:
    """Wait until the inbox has nothing left to derive; what was left, how long it took, CPU per delivery."""
    state = exporter.state
    pending, _ = state.inbox_backlog()
    started, cpu = time.monotonic(), time.process_time()
    await exporter.inbox.caught_up()
    took, cpu = time.monotonic() - started, time.process_time() - cpu
    return CatchUp(pending, took, cpu * 1e6 / pending if pending else math.nan)


class SteadyLag(NamedTuple):
    """The inbox lag under a steady flow of deliveries."""

    rate: float
    statuses: dict[int, int]
    max_lag: float
    max_pending: int


async def steady_lag(exporter: Exporter, port: int, rate: float, seconds: float) -> SteadyLag:
    """Send ``rate`` verified deliveries/s for ``seconds`` while sampling the inbox lag."""
    state = exporter.state
    worst = [0.0, 0]

    async def sample() -> None:
        while True:
            pending, oldest = state.inbox_backlog()
            if oldest is not None:
                worst[0] = max(worst[0], time.time() - oldest)
            worst[1] = max(worst[1], pending)
            await asyncio.sleep(LAG_SAMPLE)

    sampler = asyncio.create_task(sample())
    try:
        answered, statuses, _ = await measure(port, "verified", "/webhooks/whitebit", "steady", seconds, 8, rate=rate)
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    await catch_up(exporter)
    return SteadyLag(answered, statuses, worst[0], int(worst[1]))


def _durability(path: Path) -> str:
    """How the exporter's state file commits: the production default, stated from the code."""
    default = inspect.signature(StateStore.open).parameters["durability"].default
    with closing(sqlite3.connect(path)) as conn:
        mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    return (
        f"journal_mode={mode}, durability={default!r} (the default the exporter opens it with: each batch"
        " committed before its 200s, surviving a kill of the process)"
    )


async def _scrape_counts(exporter: Exporter, relay_down: bool = False) -> str:
    async with aiohttp.ClientSession() as http, http.get(exporter.metrics_url + "/metrics") as response:
        text = await response.text()
    wanted = {
        "whitebit_webhooks_verified_total": {"account": "bench", "method": "deposit.processed"},
        "whitebit_webhooks_rejected_total": {"account": "bench", "reason": "bad_signature"},
        "whitebit_webhook_nonce_regressions_total": {"account": "bench"},
        "whitebit_transfers_total": {"account": "bench", "kind": "deposit", "outcome": "successful", "asset": "USDT"},
        "zerohash_webhooks_verified_total": {"payload_type": "account_balance.changed"},
    }
    relay: dict[tuple[str, str], str] = {}
    if relay_down:
        for outcome in ("delivered", "retry", "dead"):
            relay[("whitebit_exporter_relay_deliveries_total", outcome)] = f"relay_{outcome}"
        relay[("whitebit_exporter_relay_pending_deliveries", "")] = "relay_pending"
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = wanted.get(sample.name)
            if labels is not None and sample.labels == labels:
                found[sample.name.removesuffix("_total")] = int(sample.value)
            elif sample.labels.get("target") == DOWN_TARGET:
                name = relay.get((sample.name, sample.labels.get("outcome", "")))
                if name is not None:
                    found[name] = int(sample.value)
    return ", ".join(f"{k}={v}" for k, v in found.items())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--gc",
        choices=("exporter", "default"),
        default="exporter",
        help="the exporter's garbage-collector settings (default) or CPython's defaults",
    )
    parser.add_argument(
        "--relay-down",
        action="store_true",
        help="configure one relay target that refuses every connection (intake while a target is down)",
    )
    options = parser.parse_args()
    with open(os.devnull, "w") as devnull:
        # Real log formatting, discarded: the cost of a rejection's log line is part of the measure.
        setup_logging("info", "logfmt", stream=devnull)
        asyncio.run(main(options.seconds, options.rounds, options.connections, options.gc, options.relay_down))
