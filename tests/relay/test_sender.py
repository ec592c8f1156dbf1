"""The relay sender against a real backend over loopback: order per account, retries, redirects, timeouts,
dead letters; the provider's own headers and body arrive as received."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from exporter.config.schema import RelayTargetConfig
from exporter.core.logs import LogfmtFormatter
from exporter.core.state import InboxDelivery, RelayAnswer, RelayItem, StateError, StateStore
from exporter.relay.sender import (
    DELIVERY_ID_HEADER,
    MAX_IN_FLIGHT,
    QUEUE_RUN,
    Attempt,
    NextStep,
    RelaySender,
    next_step,
)
from tests.helpers import parse_logfmt, wait_for

T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Backend:
    """A payment backend: records what it receives; ``script`` says how to answer each delivery id's tries."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes, dict[str, str]]] = []
        self.script: dict[str, list[int]] = {}
        self.slow: set[str] = set()
        #: Deliveries whose answer waits for ``gate``.
        self.gated: set[str] = set()
        self.gate = asyncio.Event()
        self.elsewhere = 0

    async def handle(self, request: web.Request) -> web.Response:
        delivery_id = request.headers[DELIVERY_ID_HEADER]
        self.received.append((delivery_id, await request.read(), dict(request.headers)))
        if delivery_id in self.slow:
            await asyncio.sleep(1)
        if delivery_id in self.gated:
            await self.gate.wait()
        answers = self.script.get(delivery_id, [])
        status = answers.pop(0) if answers else 204
        if status == 302:
            raise web.HTTPFound("/elsewhere")
        return web.Response(status=status)

    async def other(self, request: web.Request) -> web.Response:
        self.elsewhere += 1
        return web.Response(status=200)


@pytest.fixture
async def backend() -> AsyncIterator[tuple[Backend, str]]:
    recorder = Backend()
    app = web.Application()
    app.router.add_post("/hooks", recorder.handle)
    app.router.add_post("/elsewhere", recorder.other)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield recorder, f"http://127.0.0.1:{port}/hooks"
    await runner.cleanup()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> Iterator[StateStore]:
    with StateStore.open(tmp_path / "state.db", clock=clock) as s:
        yield s


def owe(store: StateStore, target: str, delivery_id: str, account: str = "main") -> InboxDelivery:
    body = b'{"method":"deposit.processed","id":"%s"}' % delivery_id.encode()
    headers = {"X-TXC-APIKEY": "public-key", "X-TXC-PAYLOAD": "cGF5bG9hZA==", "X-TXC-SIGNATURE": "f" * 128}
    seq = store.add_delivery(InboxDelivery("whitebit", account, delivery_id, "deposit.processed", T0, body, headers))
    assert seq is not None
    store.set_inbox_cursor(seq)
    row = store.get_delivery(seq)
    assert row is not None
    store.enqueue_relay(target, [row], at=T0)
    return row


def target(url: str, **changes: object) -> RelayTargetConfig:
    fields: dict[str, object] = {
        "name": "backend",
        "url": url,
        "timeout": 1.0,
        "retry_for": 3600.0,
        "max_backoff": 60.0,
    }
    fields.update(changes)
    return RelayTargetConfig(**fields)  # type: ignore[arg-type]


async def send(sender: RelaySender) -> int:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=sender.target.timeout)) as session:
        return await sender.drain(session)


async def test_deliveries_arrive_in_order_per_account_with_their_own_headers_after_retries(
    backend: tuple[Backend, str], store: StateStore, clock: Clock
) -> None:
    recorder, url = backend
    rows = [owe(store, "backend", "a1"), owe(store, "backend", "b1", "other"), owe(store, "backend", "a2")]
    recorder.script = {"a1": [500, 503]}
    sender = RelaySender(
        target(url, headers=(("Authorization", "Bearer t"),)), store, first_retry=1.0, clock=clock, rng=random.Random(1)
    )

    assert await send(sender) == 2  # a1 (refused) and b1 (taken); a2 waits behind a1
    assert await send(sender) == 0  # a1 is not due yet
    for _ in range(3):  # a1 again; a1 taken, and a2 at once behind it
        clock.now += 60
        await send(sender)
    assert [delivery_id for delivery_id, _, _ in recorder.received] == ["a1", "b1", "a1", "a1", "a2"]
    assert store.relay_backlog("backend") == (0, None, 0)
    [a1] = [i for i in store.relay_items("delivered") if i.seq == rows[0].seq]
    assert (a1.attempts, a1.last_status) == (3, 204)
    # The body and the provider's headers as received, so the backend verifies WhiteBIT's signature itself.
    _, body, headers = recorder.received[-1]
    assert body == rows[2].body
    assert {k: headers[k] for k in ("X-TXC-APIKEY", "X-TXC-PAYLOAD", "X-TXC-SIGNATURE")} == rows[2].headers
    assert (headers[DELIVERY_ID_HEADER], headers["Authorization"]) == ("a2", "Bearer t")


async def test_an_account_waiting_for_its_answer_holds_back_only_itself(
    backend: tuple[Backend, str], store: StateStore, clock: Clock
) -> None:
    recorder, url = backend
    owe(store, "backend", "stuck", "slow")
    owe(store, "backend", "stuck-next", "slow")
    others = [owe(store, "backend", f"fast{n}", "fast") for n in range(5)]
    recorder.gated = {"stuck"}
    sender = RelaySender(target(url, timeout=30.0), store, clock=clock, rng=random.Random(1))
    sending = asyncio.create_task(send(sender))
    delivered = {row.seq for row in others}
    await wait_for(
        lambda: {i.seq for i in store.relay_items("delivered")} == delivered,
        timeout=10.0,
        message="the other account's deliveries went out while one account waited",
    )
    assert [d for d, _, _ in recorder.received][-1] == "fast4" and "stuck-next" not in {
        d for d, _, _ in recorder.received
    }
    recorder.gate.set()
    assert await asyncio.wait_for(sending, 10.0) == 7
    assert [d for d, _, _ in recorder.received if d.startswith("stuck")] == ["stuck", "stuck-next"]


async def test_a_redirect_is_not_followed_and_a_timeout_is_tried_again(
    backend: tuple[Backend, str], store: StateStore, clock: Clock
) -> None:
    recorder, url = backend
    owe(store, "backend", "moved")
    owe(store, "backend", "slow", "other")
    recorder.script = {"moved": [302]}
    recorder.slow = {"slow"}
    sender = RelaySender(target(url, timeout=0.2), store, clock=clock, rng=random.Random(1))
    assert await send(sender) == 2
    assert recorder.elsewhere == 0  # never followed
    errors = {i.last_error for i in store.relay_items("pending")}
    assert errors == {"HTTP 302", f"timed out after 0.2s ({url.split('/')[2]})"}


async def test_past_retry_for_a_delivery_is_a_dead_letter_and_its_account_goes_on(
    backend: tuple[Backend, str], store: StateStore, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    recorder, url = backend
    lost = owe(store, "backend", "lost")
    owe(store, "backend", "next")
    recorder.script = {"lost": [500] * 100}
    sender = RelaySender(target(url, retry_for=600.0), store, first_retry=1.0, clock=clock, rng=random.Random(1))
    caplog.set_level(logging.DEBUG, logger="exporter.relay.sender")
    while store.relay_backlog("backend")[2] == 0:
        await send(sender)
        clock.now += 60
    assert [i.last_status for i in store.relay_items("dead")] == [500]
    await send(sender)
    assert recorder.received[-1][0] == "next" and store.relay_backlog("backend") == (0, None, 1)
    lines = [(r.levelname, parse_logfmt(LogfmtFormatter().format(r))) for r in caplog.records]
    # Each failed attempt at debug, its values in fields of their own; the last one, dead, at error.
    attempts = [line for _, line in lines if line["msg"] in ("relay attempt failed", "relay delivery is a dead letter")]
    assert [line["attempts"] for line in attempts] == [str(n) for n in range(1, len(attempts) + 1)]
    for line in attempts:
        assert (line["target"], line["seq"], line["provider"], line["account"], line["error"]) == (
            "backend",
            str(lost.seq),
            "whitebit",
            "main",
            "HTTP 500",
        )
    *retried, dead = attempts
    assert retried and all(line["outcome"] == "retry" and int(line["retry_in_seconds"]) >= 0 for line in retried)
    assert dead["outcome"] == "dead" and "retry_in_seconds" not in dead
    # Above debug: the target failing (after three failures in a row), a summary at most every 5 minutes
    # of the 10 it failed, the dead letter, and the target answering again when "next" got through; not
    # one line per attempt.
    loud = [(level, line["msg"]) for level, line in lines if level != "DEBUG"]
    summaries = loud.count(("WARNING", "source still failing"))
    assert 1 <= summaries <= 2 and len(retried) > 2 * summaries + 1
    assert loud == [
        ("WARNING", "source failing"),
        *[("WARNING", "source still failing")] * summaries,
        ("ERROR", "relay delivery is a dead letter"),
        ("INFO", "source recovered"),
    ]
    assert {line.get("source") for _, line in lines if line["msg"].startswith("source ")} == {"relay:backend"}


class FailingReads:
    """The store, except that reading what a target is owed fails as a broken disk makes it fail."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self.reads = 0

    def relay_heads(self, *args: object, **kwargs: object) -> list[RelayItem]:
        self.reads += 1
        raise StateError("disk I/O error", "io")

    def __getattr__(self, name: str) -> object:
        return getattr(self._store, name)


async def test_a_state_file_that_fails_pauses_the_sender_with_one_line_naming_the_step(
    store: StateStore, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    failing = FailingReads(store)
    sender = RelaySender(target("http://127.0.0.1:9/hooks"), failing, clock=clock, rng=random.Random(1))
    caplog.set_level(logging.ERROR, logger="exporter.relay.sender")
    async with aiohttp.ClientSession() as session:
        assert sender.start_due(session) == 0
        assert sender.start_due(session) == 0  # paused: the store is not asked again at once
    assert failing.reads == 1
    [line] = [parse_logfmt(LogfmtFormatter().format(r)) for r in caplog.records]
    assert line["msg"] == "relay paused: the state file failed; trying again shortly"
    assert (line["target"], line["step"], line["error"]) == ("backend", "read what it is owed", "disk I/O error")
    assert float(line["retry_in_seconds"]) > 0


def test_a_retry_never_falls_after_the_deadline() -> None:
    item = RelayItem(1, "backend", "whitebit", "main", "pending", 3, T0, T0)
    config = target("https://b.example/", retry_for=100.0)
    refused = Attempt(False, 500, "HTTP 500")
    assert next_step(item, Attempt(True, 200), T0 + 500, config, 10.0) == NextStep(True, None)
    assert next_step(item, refused, T0 + 10, config, 10.0) == NextStep(False, T0 + 20)
    assert next_step(item, refused, T0 + 95, config, 10.0) == NextStep(False, T0 + 100)  # the last try at it
    assert next_step(item, refused, T0 + 100, config, 10.0) == NextStep(False, None)  # dead


async def test_more_accounts_than_slots_all_get_their_turn_each_in_order(
    backend: tuple[Backend, str], store: StateStore, clock: Clock
) -> None:
    recorder, url = backend
    accounts = [f"acct{n:02d}" for n in range(MAX_IN_FLIGHT + 4)]
    per_account = QUEUE_RUN + 16
    for n in range(per_account):
        for account in accounts:
            owe(store, "backend", f"{account}-{n:03d}", account)
    sender = RelaySender(target(url), store, clock=clock, rng=random.Random(1))
    assert await send(sender) == len(accounts) * per_account
    arrived = [delivery_id for delivery_id, _, _ in recorder.received]
    for account in accounts:
        mine = [d for d in arrived if d.startswith(f"{account}-")]
        assert mine == sorted(mine) and len(mine) == per_account  # in order, each once
    # No queue ran to its end while others waited: a queue goes back in line after QUEUE_RUN deliveries.
    firsts = max(arrived.index(f"{account}-000") for account in accounts)
    lasts = min(arrived.index(f"{account}-{per_account - 1:03d}") for account in accounts)
    assert firsts < lasts


async def test_a_target_back_after_an_outage_gets_every_waiting_queue_at_once(
    backend: tuple[Backend, str], store: StateStore, clock: Clock
) -> None:
    recorder, url = backend
    a1, b1 = owe(store, "backend", "a1", "a"), owe(store, "backend", "b1", "b")
    recorder.script = {"a1": [500, 500], "b1": [500, 500]}  # down for two rounds
    sender = RelaySender(target(url), store, first_retry=10.0, clock=clock, rng=random.Random(1))
    assert await send(sender) == 2
    clock.now += 10
    assert await send(sender) == 2  # four failures in a row
    # b1 was told to wait much longer than a1 (as after a long outage, up to max_backoff).
    store.relay_answers("backend", [RelayAnswer(b1.seq, clock.now, False, 500, "HTTP 500", retry_at=T0 + 50)])
    clock.now += 20  # a1 is due, b1 is not
    assert await send(sender) == 2  # a1 taken: the target is back, so b1 goes at once
    assert {i.seq for i in store.relay_items("delivered")} == {a1.seq, b1.seq} and clock.now < T0 + 50


async def test_one_delivery_the_target_keeps_refusing_is_not_tried_early_at_every_success(
    backend: tuple[Backend, str], store: StateStore, clock: Clock
) -> None:
    recorder, url = backend
    owe(store, "backend", "bad", "a")
    for n in range(5):
        owe(store, "backend", f"good{n}", "b")
    recorder.script = {"bad": [400] * 10}
    sender = RelaySender(target(url), store, first_retry=10.0, clock=clock, rng=random.Random(1))
    assert await send(sender) == 6
    assert [d for d, _, _ in recorder.received].count("bad") == 1  # waits out its delay
