"""Relay throughput relative to a bare aiohttp client, measured in one run; and a sender's turn with a backlog.

    python benchmarks/bench_relay.py [--deliveries 5000] [--rounds 3] [--heads-backlog 1000 100000]
                                     [--heads-calls 300] [--heads-seconds 3]

A backend (a bare aiohttp server that reads the body and answers 200) runs in a second process on
loopback; two clients send it the same ``--deliveries`` correctly signed WhiteBIT ``deposit.processed``
deliveries (the bodies :mod:`benchmarks.bench_webhooks` sends, each account's own increasing nonces),
spread round-robin over :data:`~exporter.relay.sender.MAX_IN_FLIGHT` accounts, with the same headers
(:func:`~exporter.relay.sender.request_headers`: the stored key and signature, WhiteBIT's base64
payload, the delivery id), each several rounds, in turn:

* ``bare`` (the floor): one :class:`aiohttp.ClientSession` with the sender's connector limit and
  timeout, one lane per account, each lane POSTing its account's deliveries one at a time, the next as
  soon as the previous answer was read: the concurrency the relay is allowed, with nothing else. Its
  headers are built before the clock starts.
* ``relay``: a real :class:`~exporter.core.state.StateStore` file under a temporary directory (a new one
  each round), holding the deliveries as inbox rows (stored with
  :meth:`~exporter.core.state.StateStore.add_delivery`, derived, then owed to the target with
  :meth:`~exporter.core.state.StateStore.enqueue_relay`, as the inbox tap owes them), and a
  :class:`~exporter.relay.sender.RelaySender` for that one target, draining it
  (:meth:`~exporter.relay.sender.RelaySender.drain`: the machinery of its ``run``, without the idle
  wait) from the first POST until nothing is owed. It pays for everything the exporter's sender does:
  a look at the queues' heads when a queue's task ends (``relay_heads``), each queue's next deliveries
  read with their inbox rows a few at a time (``relay_queue_run``), and the answers that came at the
  same moment committed together (``relay_answers``); the time in each is printed as a breakdown.

Rates are deliveries/s (median of the rounds); the client and backend CPU per delivery are printed so
it shows which side was busy. Goal: relay >= 0.5 of bare.

Last, the cost of one sender turn's query against a large backlog: ``--heads-backlog`` deliveries
(default 1k and 100k) owed to one target across ``MAX_IN_FLIGHT`` accounts in a fresh state file, and
:meth:`~exporter.core.state.StateStore.relay_heads` timed ``--heads-calls`` times (or until
``--heads-seconds`` have passed, at least 3 calls): once with every account's head due (the sender
running), once with every head waiting for its retry (a target that is down, between two retries: the
sender still looks after each derived batch and every idle poll). Microseconds per call are printed
for each backlog; the cost must follow the number of accounts, not the backlog. The script asserts
nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
from aiohttp import web

from benchmarks.bench_webhooks import KEY, SECRET, deposit_body
from exporter.config.schema import RelayTargetConfig
from exporter.core.state import InboxDelivery, RelayAnswer, RelayItem, StateStore
from exporter.relay.sender import MAX_ANSWER_BYTES, MAX_IN_FLIGHT, RelaySender, request_headers
from exporter.whitebit.signing import HEADER_APIKEY, HEADER_SIGNATURE, encode_payload, sign_payload
from exporter.whitebit.webhook import PROVIDER

TARGET = "bench"
#: Inbox rows stored (and owed) per transaction when a state file is filled.
FILL_BATCH = 1000
#: The goal printed: the relay's rate against the bare client's.
GOAL = 0.5


# --- the backend (runs in a second process) -----------------------------------------------------


async def _take(request: web.Request) -> web.Response:
    await request.read()
    return web.Response()


async def _backend(conn: Connection) -> None:
    app = web.Application()
    app.router.add_post("/hooks", _take)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    conn.send(int(runner.addresses[0][1]))
    loop = asyncio.get_running_loop()
    try:
        # Each message asks for the CPU seconds this process used so far; None (or a closed pipe) stops it.
        while await loop.run_in_executor(None, conn.recv) is not None:
            conn.send(time.process_time())
    except EOFError:
        pass
    finally:
        await runner.cleanup()


def _backend_process(conn: Connection) -> None:
    asyncio.run(_backend(conn))


class Backend:
    """The backend process: its URL, and the CPU it used."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_backend_process, args=(child,), daemon=True)
        self._process.start()
        child.close()
        self.url = f"http://127.0.0.1:{self._conn.recv()}/hooks"

    def cpu(self) -> float:
        """CPU seconds the backend process has used."""
        self._conn.send(True)
        seconds: float = self._conn.recv()
        return seconds

    def stop(self) -> None:
        self._conn.send(None)
        self._process.join(10)
        self._conn.close()


# --- the deliveries and the state file ----------------------------------------------------------


def deliveries(count: int, prefix: str) -> Iterator[InboxDelivery]:
    """``count`` WhiteBIT deliveries as the receiver stores them (body, key and signature headers),
    spread round-robin over MAX_IN_FLIGHT accounts, each account's nonces increasing."""
    now = time.time()
    for index in range(count):
        account = f"account-{index % MAX_IN_FLIGHT}"
        delivery_id = str(uuid.uuid4())
        nonce = 1_700_000_000_000 + index
        body = deposit_body(index, prefix, nonce, delivery_id)
        headers = {HEADER_APIKEY: KEY, HEADER_SIGNATURE: sign_payload(encode_payload(body), SECRET)}
        yield InboxDelivery(PROVIDER, account, delivery_id, "deposit.processed", now, body, headers, nonce)


def owed_store(path: Path, rows: Iterator[InboxDelivery], target: str) -> tuple[TimedStore, int]:
    """A state file holding ``rows`` as derived inbox rows, each owed to ``target``; and how many."""
    store = TimedStore.open(path)
    assert isinstance(store, TimedStore)
    count = 0
    batch: list[InboxDelivery] = []

    def flush() -> None:
        with store.transaction():
            owed: list[InboxDelivery] = []
            for row in batch:
                seq = store.add_delivery(row)
                if seq is not None:
                    owed.append(replace(row, seq=seq))
            if owed:
                # As the inbox consumer does: the cursor moves past the rows and the tap owes them, together.
                store.set_inbox_cursor(owed[-1].seq)
                store.enqueue_relay(target, owed, at=time.time())
        batch.clear()

    for row in rows:
        batch.append(row)
        count += 1
        if len(batch) == FILL_BATCH:
            flush()
    if batch:
        flush()
    return store, count


class TimedStore(StateStore):
    """The state file, timing the three calls a sender makes on it."""

    heads_seconds = 0.0
    heads_calls = 0
    run_seconds = 0.0
    run_calls = 0
    answered_seconds = 0.0
    answered_calls = 0
    answer_commits = 0

    def relay_heads(
        self, target: str, now: float, limit: int, *, skip: Collection[tuple[str, str]] = ()
    ) -> list[RelayItem]:
        started = time.perf_counter()
        try:
            return super().relay_heads(target, now, limit, skip=skip)
        finally:
            self.heads_seconds += time.perf_counter() - started
            self.heads_calls += 1

    def relay_queue_run(self, target: str, provider: str, account: str, now: float, limit: int) -> list[RelayItem]:
        started = time.perf_counter()
        try:
            return super().relay_queue_run(target, provider, account, now, limit)
        finally:
            self.run_seconds += time.perf_counter() - started
            self.run_calls += 1

    def relay_answers(self, target: str, answers: Sequence[RelayAnswer]) -> None:
        started = time.perf_counter()
        try:
            super().relay_answers(target, answers)
        finally:
            self.answered_seconds += time.perf_counter() - started
            self.answered_calls += len(answers)
            self.answer_commits += 1


def relay_target(url: str) -> RelayTargetConfig:
    return RelayTargetConfig(name=TARGET, url=url)


# --- the two clients ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One round of one client: deliveries/s, statuses other than 2xx, CPU per delivery (us) of the
    client (this process) and of the backend."""

    rate: float
    failures: int
    client_cpu: float
    backend_cpu: float
    detail: str = ""


async def bare_run(backend: Backend, rows: Sequence[InboxDelivery]) -> Run:
    """The floor: the same POSTs, one lane per account, MAX_IN_FLIGHT connections at most."""
    target = relay_target(backend.url)
    lanes: dict[str, list[tuple[bytes, dict[str, str]]]] = {}
    for row in rows:
        assert row.body is not None
        lanes.setdefault(row.account, []).append((row.body, request_headers(row, target)))
    failures = 0

    async def lane(session: aiohttp.ClientSession, requests: list[tuple[bytes, dict[str, str]]]) -> None:
        nonlocal failures
        for body, headers in requests:
            async with session.post(target.url, data=body, headers=headers, allow_redirects=False) as answer:
                await answer.content.read(MAX_ANSWER_BYTES)
                if not 200 <= answer.status < 300:
                    failures += 1

    backend_cpu, cpu = backend.cpu(), time.process_time()
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=target.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(lane(session, requests) for requests in lanes.values()))
    took = time.perf_counter() - started
    cpu, backend_cpu = time.process_time() - cpu, backend.cpu() - backend_cpu
    count = len(rows)
    return Run(count / took, failures, cpu * 1e6 / count, backend_cpu * 1e6 / count)


async def relay_run(backend: Backend, store: TimedStore, count: int) -> Run:
    """A RelaySender for the one target, from its first turn until the store says nothing is owed."""
    sender = RelaySender(relay_target(backend.url), store)
    backend_cpu, cpu = backend.cpu(), time.process_time()
    started = time.perf_counter()
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=sender.target.timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await sender.drain(session)
    took = time.perf_counter() - started
    assert store.relay_backlog(TARGET)[0] == 0, "the sender stopped with deliveries still owed"
    cpu, backend_cpu = time.process_time() - cpu, backend.cpu() - backend_cpu
    looks, reads, commits = (max(n, 1) for n in (store.heads_calls, store.run_calls, store.answer_commits))
    spent = store.heads_seconds + store.run_seconds + store.answered_seconds
    detail = (
        f"relay_heads {looks} looks, {store.heads_seconds * 1e6 / looks:.0f} us each;"
        f" relay_queue_run {reads} reads, {store.run_seconds * 1e6 / reads:.0f} us each;"
        f" relay_answers {commits} commits ({store.answered_calls / commits:.1f} answers each),"
        f" {store.answered_seconds * 1e6 / commits:.0f} us each: {spent / took:.0%} of the run;"
        f" outcomes {sender.outcomes}"
    )
    failures = sender.outcomes["retry"] + sender.outcomes["dead"]
    return Run(count / took, failures, cpu * 1e6 / count, backend_cpu * 1e6 / count, detail)


# --- relay_heads against a large backlog --------------------------------------------------------


@dataclass(frozen=True)
class HeadsCost:
    """Microseconds per relay_heads call with ``backlog`` owed: heads due, and heads all waiting."""

    backlog: int
    due: float
    due_calls: int
    waiting: float
    waiting_calls: int
    fill_seconds: float


def _time_calls(store: StateStore, now: float, calls: int, budget: float) -> tuple[float, int, int]:
    """(us per call, calls made, heads the last call returned)."""
    made, found = 0, 0
    started = time.perf_counter()
    while made < calls and (made < 3 or time.perf_counter() - started < budget):
        found = len(store.relay_heads(TARGET, now, MAX_IN_FLIGHT))
        made += 1
    return (time.perf_counter() - started) * 1e6 / made, made, found


def heads_cost(directory: Path, backlog: int, calls: int, budget: float) -> HeadsCost:
    started = time.perf_counter()
    store, count = owed_store(directory / f"heads-{backlog}.db", deliveries(backlog, f"heads{backlog}"), TARGET)
    fill = time.perf_counter() - started
    try:
        now = time.time()
        due, due_calls, found = _time_calls(store, now, calls, budget)
        if found != MAX_IN_FLIGHT:
            print(f"  (backlog {count}: relay_heads returned {found} due heads, not {MAX_IN_FLIGHT})")
        # The target refused every head: each waits for its retry, and nothing behind it may go first.
        for item in store.relay_heads(TARGET, now, MAX_IN_FLIGHT):
            store.relay_answered(
                TARGET, item.seq, at=now, delivered=False, error="ClientConnectorError", retry_at=now + 3600
            )
        waiting, waiting_calls, found = _time_calls(store, now, calls, budget)
        if found:
            print(f"  (backlog {count}: relay_heads returned {found} heads while every head waits)")
    finally:
        store.close()
    return HeadsCost(count, due, due_calls, waiting, waiting_calls, fill)


# --- the run ------------------------------------------------------------------------------------


async def main(count: int, rounds: int, heads_backlogs: Sequence[int], heads_calls: int, heads_seconds: float) -> None:
    backend = Backend()
    runs: dict[str, list[Run]] = {"bare": [], "relay": []}
    try:
        with tempfile.TemporaryDirectory(prefix="bench-relay-") as directory:
            for round_number in range(rounds):
                rows = list(deliveries(count, f"r{round_number}"))
                store, owed = owed_store(Path(directory) / f"relay-{round_number}.db", iter(rows), TARGET)
                try:
                    runs["bare"].append(await bare_run(backend, rows))
                    runs["relay"].append(await relay_run(backend, store, owed))
                finally:
                    store.close()
            costs = [heads_cost(Path(directory), backlog, heads_calls, heads_seconds) for backlog in heads_backlogs]
    finally:
        backend.stop()
    median = {name: statistics.median(r.rate for r in values) for name, values in runs.items()}
    print(
        f"relay benchmark: {rounds} rounds x {count} deliveries over {MAX_IN_FLIGHT} accounts,"
        f" backend in a second process, python {sys.version.split()[0]}, {os.cpu_count()} cpus"
    )
    for name, values in runs.items():
        rates = " ".join(f"{r.rate:.0f}" for r in values)
        client = statistics.median(r.client_cpu for r in values)
        server = statistics.median(r.backend_cpu for r in values)
        failures = sum(r.failures for r in values)
        print(
            f"  {name:5s} {median[name]:7.0f} deliveries/s (median; rounds {rates}) client cpu {client:4.0f} us,"
            f" backend cpu {server:4.0f} us per delivery, not 2xx: {failures}"
        )
    for run in runs["relay"]:
        print(f"    relay round: {run.detail}")
    print(f"  relay / bare = {median['relay'] / median['bare']:.2f}   (goal >= {GOAL})")
    print(f"  relay_heads (one sender turn's query), {MAX_IN_FLIGHT} accounts, one target:")
    for cost in costs:
        print(
            f"    backlog {cost.backlog:7d}: {cost.due:8.0f} us/call with the heads due ({cost.due_calls} calls),"
            f" {cost.waiting:8.0f} us/call with every head waiting for its retry ({cost.waiting_calls} calls)"
            f"   [filled in {cost.fill_seconds:.2f} s]"
        )
    if len(costs) > 1:
        first, last = costs[0], costs[-1]
        print(
            f"    x{last.backlog / first.backlog:.0f} the backlog: x{last.due / first.due:.1f} the cost with the heads"
            f" due, x{last.waiting / first.waiting:.1f} with them waiting"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--heads-backlog", type=int, nargs="+", default=[1000, 100_000])
    parser.add_argument("--heads-calls", type=int, default=300)
    parser.add_argument(
        "--heads-seconds", type=float, default=3.0, help="stop timing relay_heads after this long (at least 3 calls)"
    )
    options = parser.parse_args()
    asyncio.run(
        main(options.deliveries, options.rounds, options.heads_backlog, options.heads_calls, options.heads_seconds)
    )
