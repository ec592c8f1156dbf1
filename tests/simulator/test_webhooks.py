"""The simulator's WhiteBIT webhook sender, delivering to a real aiohttp receiver on a loopback port."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web

from exporter.simulator.model import Exchange
from exporter.simulator.webhooks import WebhookSender
from exporter.whitebit.signing import (
    HEADER_APIKEY,
    HEADER_PAYLOAD,
    HEADER_SIGNATURE,
    compact_json,
    payload_matches_body,
    signature_matches,
)
from tests.helpers import wait_for

SECRETS = {"wh-key-main": "wh-secret-main", "wh-key-other": "wh-secret-other"}
START = 1_700_000_000.0


@dataclass
class Received:
    """One request as the receiver saw it."""

    body: bytes
    headers: dict[str, str]
    verified: bool
    payload_ok: bool
    status: int

    @property
    def document(self) -> dict[str, Any]:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A webhook endpoint that answers per ``policy`` and verifies as the docs describe.

    The recipe: docs/protocol.md#webhook-envelope-and-signature.
    """

    policy: Callable[[Received, int], int] | None = None  # (request, attempt number of its id) -> status
    hold: dict[str, asyncio.Event] = field(default_factory=dict)  # code -> released when set
    received: list[Received] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = dict(request.headers.items())
        key = headers.get(HEADER_APIKEY, "")
        payload = headers.get(HEADER_PAYLOAD, "")
        payload_ok = payload_matches_body(body, payload)
        verified = (
            key in SECRETS
            and payload_ok
            and signature_matches(payload, headers.get(HEADER_SIGNATURE, ""), [SECRETS[key]]) == 0
        )
        item = Received(body, headers, verified, payload_ok, 0)
        self.received.append(item)
        if verified and item.document["params"].get("code") in self.hold:
            await self.hold[item.document["params"]["code"]].wait()
        if not verified:
            item.status = 401
        elif self.policy is None:
            item.status = 200
        else:
            attempt = sum(1 for r in self.received if r.verified and r.document["id"] == item.document["id"])
            item.status = self.policy(item, attempt)
        return web.Response(status=item.status)

    def by_id(self, delivery_id: str) -> list[Received]:
        return [r for r in self.received if r.document.get("id") == delivery_id]


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/webhooks/whitebit", recv.handle)
    server = await aiohttp_server(app)
    recv.url = str(server.make_url("/webhooks/whitebit"))
    return recv


class Clock:
    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def exchange(clock: Clock) -> Exchange:
    exchange = Exchange(["BTC_USDT"], clock=clock, rng=random.Random(3))
    exchange.add_account(
        "main",
        api_key="api-main",
        api_secret="api-secret-main",
        webhook_key="wh-key-main",
        webhook_secret="wh-secret-main",
        main={"USDT": "1000"},
    )
    exchange.add_account(
        "other",
        api_key="api-other",
        api_secret="api-secret-other",
        webhook_key="wh-key-other",
        webhook_secret="wh-secret-other",
        main={"USDT": "1000"},
    )
    exchange.add_account("silent", api_key="api-silent", api_secret="api-secret-silent", main={"USDT": "1000"})
    return exchange


class FakeSleep:
    """Records the retry delays asked for and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


@pytest.fixture
async def make_sender(exchange: Exchange, receiver: Receiver, clock: Clock) -> Any:
    senders: list[WebhookSender] = []

    async def build(**kwargs: Any) -> WebhookSender:
        kwargs.setdefault("rng", random.Random(11))
        sender = WebhookSender(exchange, url=receiver.url, clock=clock, **kwargs)
        await sender.start()
        senders.append(sender)
        return sender

    yield build
    for sender in senders:
        await sender.stop()


def outcome(sender: WebhookSender, delivery_id: str) -> str:
    return next(r["outcome"] for r in sender.history() if r["id"] == delivery_id)


async def test_deliveries_are_compact_json_signed_with_the_webhook_secret(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    sender = await make_sender()
    exchange.apply_code("main", "WBX-1")
    deposit = exchange.start_deposit("main", "USDT", Decimal("12.5"))
    exchange.confirm_deposit("main", deposit.transaction_id)
    await wait_for(lambda: len(receiver.received) == 3)

    assert all(r.verified for r in receiver.received)
    methods = [r.document["method"] for r in receiver.received]
    assert methods == ["code.apply", "deposit.accepted", "deposit.updated"]
    for item in receiver.received:
        document = item.document
        assert set(document) == {"method", "params", "id"}
        assert item.body == compact_json(document)  # serialized once, compactly
        assert uuid.UUID(document["id"]).version == 4
        assert isinstance(document["params"]["nonce"], int)
        assert item.headers[HEADER_APIKEY] == "wh-key-main"
        assert item.headers["Content-Type"] == "application/json"
    code_params = receiver.received[0].document["params"]
    assert code_params == {"code": "WBX-1", "nonce": code_params["nonce"]}  # nonce added last, inside params
    assert list(code_params) == ["code", "nonce"]
    assert receiver.received[1].document["params"]["amount"] == "12.500000000000000000"
    assert sender.stats()["delivered"] == 3
    assert sender.stats()["sent"] == 3


async def test_nonces_are_millisecond_scale_and_strictly_increase_per_key(
    exchange: Exchange, receiver: Receiver, make_sender: Any, clock: Clock
) -> None:
    await make_sender(zero_nonce_methods=())  # every code.apply takes a nonce of the rising sequence
    for index in range(30):
        if index % 10 == 0:
            clock.now += 0.001  # sometimes the clock moves on, mostly events share a millisecond
        exchange.apply_code("main" if index % 3 else "other", f"WBX-{index}")
    await wait_for(lambda: len(receiver.received) == 30)

    assert all(r.verified for r in receiver.received)
    for key in SECRETS:
        nonces = [r.document["params"]["nonce"] for r in receiver.received if r.headers[HEADER_APIKEY] == key]
        assert nonces == sorted(set(nonces)), f"nonces of {key} arrived out of order or repeated"
        assert nonces[0] >= int(START * 1000)
    # Arrival order follows event order for each key.
    codes = [r.document["params"]["code"] for r in receiver.received if r.headers[HEADER_APIKEY] == "wh-key-main"]
    assert codes == [f"WBX-{i}" for i in range(30) if i % 3]


async def test_code_and_refund_deliveries_carry_the_documented_nonce_0_by_default(
    exchange: Exchange, receiver: Receiver, make_sender: Any, clock: Clock
) -> None:
    sender = await make_sender()
    deposit = exchange.start_deposit("main", "USDT", Decimal("5"))
    clock.now += 0.001
    exchange.apply_code("main", "WBX-ZERO")
    clock.now += 0.001
    exchange.cancel_deposit("main", deposit.transaction_id)
    exchange.refund_deposit("main", deposit.transaction_id, succeed=False)
    exchange.refund_deposit("main", deposit.transaction_id)
    await wait_for(lambda: sender.stats()["delivered"] == 5)

    assert all(r.verified for r in receiver.received)
    nonces = [(r.document["method"], r.document["params"]["nonce"]) for r in receiver.received]
    assert [method for method, _ in nonces] == [
        "deposit.accepted",
        "code.apply",
        "deposit.canceled",
        "refund.failed",
        "refund.successful",
    ]
    assert [nonce for method, nonce in nonces if method in ("code.apply", "refund.failed", "refund.successful")] == [
        0,
        0,
        0,
    ]
    rising = [nonce for method, nonce in nonces if method.startswith("deposit.")]
    assert rising[0] >= int(START * 1000) and rising[1] > rising[0]
    assert [r["nonce"] for r in sender.history()] == [nonce for _, nonce in nonces]


async def test_methods_can_be_delivered_without_a_nonce_as_the_deposit_examples_show(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    sender = await make_sender(nonceless_methods=("deposit.accepted", "deposit.updated"))
    deposit = exchange.start_deposit("main", "USDT", Decimal("5"))
    exchange.confirm_deposit("main", deposit.transaction_id)
    exchange.credit_deposit("main", deposit.transaction_id)
    await wait_for(lambda: sender.stats()["delivered"] == 3)

    params = {r.document["method"]: r.document["params"] for r in receiver.received}
    assert set(params) == {"deposit.accepted", "deposit.updated", "deposit.processed"}
    assert "nonce" not in params["deposit.accepted"] and "nonce" not in params["deposit.updated"]
    assert params["deposit.processed"]["nonce"] >= int(START * 1000)
    assert all(r.verified for r in receiver.received)
    with pytest.raises(ValueError, match="both in zero_nonce_methods and in nonceless_methods"):
        WebhookSender(exchange, url=receiver.url, nonceless_methods=("code.apply",))


async def test_account_without_webhook_key_gets_no_deliveries(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    sender = await make_sender()
    exchange.apply_code("silent", "WBX-SILENT")
    exchange.apply_code("main", "WBX-MAIN")
    await wait_for(lambda: len(receiver.received) == 1)
    assert receiver.received[0].document["params"]["code"] == "WBX-MAIN"
    assert [r["account"] for r in sender.history()] == ["main"]


async def test_failed_delivery_is_retried_with_the_identical_body_until_a_200(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    receiver.policy = lambda item, attempt: 500 if attempt < 3 else 200
    sleep = FakeSleep()
    sender = await make_sender(sleep=sleep)  # the default policy: 5 retries, 600 s apart
    exchange.apply_code("main", "WBX-RETRY")
    await wait_for(lambda: sender.stats()["delivered"] == 1)

    delivery_id = receiver.received[0].document["id"]
    attempts = receiver.by_id(delivery_id)
    assert [a.status for a in attempts] == [500, 500, 200]
    assert len({a.body for a in attempts}) == 1
    assert len({(a.headers[HEADER_PAYLOAD], a.headers[HEADER_SIGNATURE]) for a in attempts}) == 1
    assert sleep.delays == [600.0, 600.0]
    record = sender.history()[-1]
    assert record["attempts"] == [500, 500, 200]
    assert record["outcome"] == "delivered"
    stats = sender.stats()
    assert (stats["retried"], stats["failed_attempts"], stats["given_up"]) == (2, 2, 0)


async def test_delivery_is_given_up_after_the_last_retry(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    receiver.policy = lambda item, attempt: 503
    sleep = FakeSleep()
    sender = await make_sender(sleep=sleep)
    exchange.apply_code("main", "WBX-NEVER")
    await wait_for(lambda: sender.stats()["given_up"] == 1)

    delivery_id = receiver.received[0].document["id"]
    assert len(receiver.by_id(delivery_id)) == 6  # the first attempt and 5 retries
    assert sleep.delays == [600.0] * 5
    assert outcome(sender, delivery_id) == "given_up"
    assert sender.stats()["failed_attempts"] == 6
    assert sender.stats()["delivered"] == 0


@pytest.mark.parametrize("status", [201, 204, 302, 404, 500])
async def test_only_http_200_counts_as_delivered(
    exchange: Exchange, receiver: Receiver, make_sender: Any, status: int
) -> None:
    receiver.policy = lambda item, attempt: status if attempt == 1 else 200
    sender = await make_sender(retry_delays=(0.0,))
    exchange.apply_code("main", "WBX-STATUS")
    await wait_for(lambda: sender.stats()["delivered"] == 1)
    assert sender.history()[-1]["attempts"] == [status, 200]


async def test_timeout_is_a_failed_attempt(exchange: Exchange, receiver: Receiver, make_sender: Any) -> None:
    never = asyncio.Event()
    receiver.hold["WBX-SLOW"] = never
    sender = await make_sender(retry_delays=(0.0,), timeout=0.2)
    exchange.apply_code("main", "WBX-SLOW")
    await wait_for(lambda: sender.stats()["given_up"] == 1)
    assert sender.history()[-1]["attempts"] == [None, None]
    never.set()


async def test_retry_can_carry_a_fresh_nonce_instead_of_the_identical_body(
    exchange: Exchange, receiver: Receiver, make_sender: Any, clock: Clock
) -> None:
    receiver.policy = lambda item, attempt: 500 if attempt == 1 else 200
    sender = await make_sender(retry_delays=(0.0,), retry_keeps_body=False, zero_nonce_methods=())
    exchange.apply_code("main", "WBX-FRESH")
    await wait_for(lambda: sender.stats()["delivered"] == 1)

    first, second = receiver.received
    assert first.verified and second.verified
    assert first.document["id"] == second.document["id"]
    assert second.document["params"]["nonce"] > first.document["params"]["nonce"]


async def test_a_receiver_stalling_on_one_delivery_does_not_hold_back_the_next(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    release = asyncio.Event()
    receiver.hold["WBX-HELD"] = release
    sender = await make_sender()
    exchange.apply_code("main", "WBX-HELD")
    await wait_for(lambda: len(receiver.received) == 1)
    exchange.apply_code("main", "WBX-NEXT")
    await wait_for(lambda: sender.stats()["delivered"] == 1)

    assert [r.document["params"]["code"] for r in receiver.received] == ["WBX-HELD", "WBX-NEXT"]
    release.set()
    await wait_for(lambda: sender.stats()["delivered"] == 2)


async def test_drop_next_loses_the_matching_delivery_and_all_its_retries(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    sender = await make_sender(retry_delays=(0.0,) * 5)
    sender.drop_next(1, method_prefix="deposit.")
    exchange.apply_code("main", "WBX-KEPT")
    deposit = exchange.start_deposit("main", "USDT", Decimal("5"))  # dropped
    exchange.confirm_deposit("main", deposit.transaction_id)  # the rule is used up: delivered
    await wait_for(lambda: sender.stats()["delivered"] == 2)

    history = sender.history()
    dropped = [r for r in history if r["outcome"] == "dropped"]
    assert [r["method"] for r in dropped] == ["deposit.accepted"]
    assert receiver.by_id(dropped[0]["id"]) == []
    assert [r.document["method"] for r in receiver.received] == ["code.apply", "deposit.updated"]
    assert sender.stats()["dropped"] == 1
    assert sender.stats()["sent"] == 2


async def test_drop_probability_one_sends_nothing(exchange: Exchange, receiver: Receiver, make_sender: Any) -> None:
    sender = await make_sender()
    sender.drop_probability = 1.0
    for index in range(5):
        exchange.apply_code("main", f"WBX-{index}")
    assert sender.stats()["dropped"] == 5
    sender.drop_probability = 0.0
    exchange.apply_code("main", "WBX-LAST")
    await wait_for(lambda: len(receiver.received) == 1)
    assert receiver.received[0].document["params"]["code"] == "WBX-LAST"


async def test_forged_delivery_fails_signature_verification(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    sender = await make_sender()
    record = await sender.send_forged("main")

    (item,) = receiver.received
    assert item.headers[HEADER_APIKEY] == "wh-key-main"
    assert item.payload_ok  # the payload header matches the body; only the secret is wrong
    assert not item.verified
    assert record["attempts"] == [401]
    assert record["outcome"] == "failed"
    assert record["kind"] == "forged"
    assert sender.stats()["forged"] == 1


async def test_tampered_delivery_carries_a_valid_signature_over_a_different_body(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    sender = await make_sender()
    record = await sender.send_tampered("main")

    (item,) = receiver.received
    assert not item.payload_ok
    assert not item.verified
    payload = item.headers[HEADER_PAYLOAD]
    assert signature_matches(payload, item.headers[HEADER_SIGNATURE], [SECRETS["wh-key-main"]]) == 0
    signed = json.loads(base64.b64decode(payload))
    assert signed["id"] == item.document["id"]
    assert signed["params"]["amount"] != item.document["params"]["amount"]
    assert record["outcome"] == "failed"
    assert sender.stats()["tampered"] == 1


async def test_replay_last_resends_the_delivered_body_byte_for_byte(
    exchange: Exchange, receiver: Receiver, make_sender: Any
) -> None:
    sender = await make_sender()
    assert await sender.replay_last("main") is None
    assert not sender.can_replay("main")
    exchange.apply_code("main", "WBX-ORIGINAL")
    await wait_for(lambda: sender.stats()["delivered"] == 1)
    assert sender.can_replay("main")

    record = await sender.replay_last("main")

    original, replay = receiver.received
    assert replay.body == original.body
    for header in (HEADER_APIKEY, HEADER_PAYLOAD, HEADER_SIGNATURE):
        assert replay.headers[header] == original.headers[header]
    assert replay.verified
    assert record is not None and record["kind"] == "replayed" and record["id"] == original.document["id"]
    assert sender.stats()["replayed"] == 1


async def test_stop_abandons_deliveries_waiting_to_be_retried(
    exchange: Exchange, receiver: Receiver, clock: Clock
) -> None:
    receiver.policy = lambda item, attempt: 500
    sender = WebhookSender(exchange, url=receiver.url, clock=clock, rng=random.Random(1))
    await sender.start()
    exchange.apply_code("main", "WBX-STUCK")
    await wait_for(lambda: sender.stats()["failed_attempts"] == 1)  # now sleeping 600 s before a retry

    await asyncio.wait_for(sender.stop(), timeout=5)

    assert sender.history()[-1]["outcome"] == "abandoned"
    exchange.apply_code("main", "WBX-AFTER")  # no longer subscribed: nothing happens
    assert len(sender.history()) == 1
