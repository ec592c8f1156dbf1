"""The simulator's Zero Hash side: the balance ledger's payloads and the signed webhook sender."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.simulator.zerohash import AccountKey, LedgerError, ZerohashLedger, ZerohashSender
from exporter.zerohash.signing import (
    HEADER_NOTIFICATION_ID,
    HEADER_PAYLOAD_TYPE,
    HEADER_RSA_SIGNATURE,
    HEADER_RSA_SIGNATURE_LEGACY,
    HEADER_SIGNATURE,
    HEADER_SIGNATURE_LEGACY,
    HEADER_TIMESTAMP,
    hmac_matches,
    rsa_matches,
)
from tests.helpers import wait_for

SECRET = "zh-webhook-secret"
NOW = 1_760_000_000.123
GROUP = "PLATX1"

# The documented shape (docs/protocol.md#account-balance-events): top-level keys and each movement's keys.
PAYLOAD_KEYS = {
    "participant_code",
    "account_group",
    "account_label",
    "account_type",
    "asset",
    "balance",
    "run_id",
    "run_type",
    "timestamp",
    "movements",
}
MOVEMENT_KEYS = {"account_id", "movement_id", "movement_type", "movement_timestamp", "change"}


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(clock: Clock) -> ZerohashLedger:
    return ZerohashLedger(clock=clock, rng=random.Random(5))


def key(participant: str, account_type: str, asset: str) -> AccountKey:
    return AccountKey(participant, GROUP, "general", account_type, asset)


def assert_documented_shape(payload: dict[str, Any], id_fields: set[str]) -> None:
    assert set(payload) == PAYLOAD_KEYS
    assert isinstance(payload["balance"], str) and Decimal(payload["balance"]) >= 0
    assert isinstance(payload["run_id"], str) and payload["run_id"].isdigit()
    assert isinstance(payload["timestamp"], int)
    assert payload["account_type"] in ("available", "collateral")
    for movement in payload["movements"]:
        assert set(movement) - id_fields == MOVEMENT_KEYS
        assert id_fields & set(movement)
        assert uuid.UUID(movement["account_id"]).version == 4
        assert isinstance(movement["movement_timestamp"], int) and movement["movement_timestamp"] > 10**12
        Decimal(movement["change"])  # a signed decimal string


# --- ledger ---------------------------------------------------------------------------------------


def test_deposit_credits_available_in_the_documented_shape(ledger: ZerohashLedger) -> None:
    (payload,) = ledger.deposit("CUST42", "USDC.ETH", Decimal("200.5"), account_group=GROUP)

    assert_documented_shape(payload, {"deposit_reference_id"})
    assert payload["participant_code"] == "CUST42"
    assert payload["account_group"] == GROUP
    assert payload["account_label"] == "general"
    assert payload["account_type"] == "available"
    assert payload["asset"] == "USDC.ETH"
    assert payload["balance"] == "200.5"
    assert payload["run_type"] == "deposit"
    assert payload["timestamp"] == int(NOW * 1000)
    (movement,) = payload["movements"]
    assert movement["movement_type"] == "deposit"
    assert movement["change"] == "200.5"

    (again,) = ledger.deposit("CUST42", "USDC.ETH", Decimal("50"), account_group=GROUP)
    assert again["balance"] == "250.5"  # the new absolute balance
    assert int(again["run_id"]) > int(payload["run_id"])
    assert again["movements"][0]["account_id"] == movement["account_id"]  # one account, one id


def test_timestamp_can_be_written_in_seconds_like_one_documented_example(clock: Clock) -> None:
    ledger = ZerohashLedger(clock=clock, rng=random.Random(1), timestamp_in_seconds=True)
    (payload,) = ledger.deposit("CUST42", "USD", Decimal("10"), account_group=GROUP)
    assert payload["timestamp"] == int(NOW)
    assert payload["movements"][0]["movement_timestamp"] == int(NOW * 1000)


def test_withdrawal_request_moves_available_to_collateral_in_one_run(ledger: ZerohashLedger) -> None:
    ledger.deposit("CUST42", "BTC", Decimal("0.5"), account_group=GROUP)
    request_id, payloads = ledger.withdraw("CUST42", "BTC", Decimal("0.1"), account_group=GROUP)

    available, collateral = payloads
    for payload in payloads:
        assert_documented_shape(payload, {"withdrawal_request_id"})
        assert payload["run_type"] == "withdrawal"
        (movement,) = payload["movements"]
        assert movement["movement_type"] == "withdrawal_pending"
        assert movement["withdrawal_request_id"] == request_id
    assert available["account_type"] == "available" and collateral["account_type"] == "collateral"
    assert available["run_id"] == collateral["run_id"]
    assert available["movements"][0]["movement_id"] == collateral["movements"][0]["movement_id"]
    assert (available["movements"][0]["change"], available["balance"]) == ("-0.1", "0.4")
    assert (collateral["movements"][0]["change"], collateral["balance"]) == ("0.1", "0.1")
    assert ledger.pending_withdrawals() == [request_id]


def test_withdrawal_confirmation_releases_the_hold_and_nets_zero_on_available(ledger: ZerohashLedger) -> None:
    ledger.deposit("CUST42", "BTC", Decimal("0.5"), account_group=GROUP)
    request_id, requested = ledger.withdraw("CUST42", "BTC", Decimal("0.1"), account_group=GROUP)

    collateral, available = ledger.confirm_withdrawal(request_id)

    assert collateral["run_id"] == available["run_id"] != requested[0]["run_id"]
    assert collateral["account_type"] == "collateral"
    assert [(m["movement_type"], m["change"]) for m in collateral["movements"]] == [("withdrawal_confirmed", "-0.1")]
    assert collateral["balance"] == "0"
    assert [(m["movement_type"], m["change"]) for m in available["movements"]] == [
        ("withdrawal_confirmed", "0.1"),
        ("withdrawal", "-0.1"),
    ]
    assert available["balance"] == "0.4"
    for payload in (collateral, available):
        assert_documented_shape(payload, {"withdrawal_request_id"})
        assert all(m["withdrawal_request_id"] == request_id for m in payload["movements"])
    assert ledger.pending_withdrawals() == []
    with pytest.raises(LedgerError):
        ledger.confirm_withdrawal(request_id)


def test_transfer_moves_available_between_participants(ledger: ZerohashLedger) -> None:
    ledger.deposit("CUST42", "USD", Decimal("10"), account_group=GROUP)
    source, target = ledger.transfer("CUST42", "CUST43", "USD", Decimal("5"), account_group=GROUP)

    for payload in (source, target):
        assert_documented_shape(payload, {"transfer_request_id", "transfer_type"})
        assert payload["run_type"] == "transfer"
        assert payload["movements"][0]["transfer_type"] == "trade_allocation"
    assert source["run_id"] == target["run_id"]
    assert source["movements"][0]["transfer_request_id"] == target["movements"][0]["transfer_request_id"]
    assert (source["participant_code"], source["balance"]) == ("CUST42", "5")
    assert (target["participant_code"], target["balance"]) == ("CUST43", "5")


@pytest.mark.parametrize("outstanding", [False, True])
def test_trade_settles_both_legs_with_the_trade_id(ledger: ZerohashLedger, outstanding: bool) -> None:
    ledger.deposit("CUST42", "USD", Decimal("100"), account_group=GROUP)
    trade_id, (asset_leg, money_leg) = ledger.settle_trade(
        "CUST42",
        account_group=GROUP,
        side="buy",
        asset="BTC",
        quantity=Decimal("0.00005134"),
        quoted_currency="USD",
        notional=Decimal("3.08"),
        outstanding=outstanding,
    )
    expected_type = "final_settlement_outstanding" if outstanding else "final_settlement"
    for payload in (asset_leg, money_leg):
        assert_documented_shape(payload, {"trade_id"})
        assert payload["run_type"] == "settlement"
        assert payload["movements"][0]["movement_type"] == expected_type
        assert payload["movements"][0]["trade_id"] == trade_id
    assert (asset_leg["asset"], asset_leg["balance"]) == ("BTC", "0.00005134")
    assert (money_leg["asset"], money_leg["balance"], money_leg["movements"][0]["change"]) == ("USD", "96.92", "-3.08")

    status = ledger.trade_status_payload(trade_id)
    assert status["trade_id"] == trade_id
    assert status["symbol"] == "BTC/USD"
    assert status["total_notional"] == "3.08"
    assert {p["asset"] for p in status["parties"]} == {"BTC", "USD"}
    assert isinstance(status["timestamp"], int) and status["timestamp"] > 10**12


def test_ledger_refuses_an_overdraft_and_changes_nothing(ledger: ZerohashLedger) -> None:
    ledger.deposit("CUST42", "BTC", Decimal("0.1"), account_group=GROUP)
    before = dict(ledger.balances)
    with pytest.raises(LedgerError):
        ledger.withdraw("CUST42", "BTC", Decimal("0.2"), account_group=GROUP)
    with pytest.raises(LedgerError):
        ledger.transfer("CUST42", "CUST43", "BTC", Decimal("1"), account_group=GROUP)
    with pytest.raises(LedgerError):
        ledger.deposit("CUST42", "BTC", Decimal("0"), account_group=GROUP)
    assert ledger.balances == before
    assert ledger.pending_withdrawals() == []
    assert ledger.balance(key("CUST42", "available", "BTC")) == Decimal("0.1")


def test_participant_status_payload(ledger: ZerohashLedger) -> None:
    payload = ledger.participant_status_payload("CUST42", "approved")
    assert payload["participant_code"] == "CUST42"
    assert payload["participant_status"] == "approved"
    assert payload["timestamp"] == int(NOW * 1000)


# --- sender ---------------------------------------------------------------------------------------


@dataclass
class Received:
    body: bytes
    headers: dict[str, str]
    status: int


@dataclass
class Receiver:
    """A Zero Hash webhook endpoint that records what it gets and answers per ``policy``."""

    policy: Callable[[Received], int] = lambda item: 200
    received: list[Received] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        item = Received(await request.read(), {k.lower(): v for k, v in request.headers.items()}, 0)
        self.received.append(item)
        item.status = self.policy(item)
        return web.Response(status=item.status)


@pytest.fixture
async def receiver(aiohttp_server: Any) -> Receiver:
    recv = Receiver()
    app = web.Application()
    app.router.add_post("/webhooks/zerohash", recv.handle)
    server = await aiohttp_server(app)
    recv.url = str(server.make_url("/webhooks/zerohash"))
    return recv


class FakeSleep:
    """Records the retry delays asked for (advancing a clock if given) and returns at once."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.delays: list[float] = []
        self.clock = clock

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.clock is not None:
            self.clock.now += delay
        await asyncio.sleep(0)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def make_sender(receiver: Receiver, clock: Clock) -> Any:
    senders: list[ZerohashSender] = []

    async def build(start: bool = True, **kwargs: Any) -> ZerohashSender:
        kwargs.setdefault("hmac_secret", SECRET)
        kwargs.setdefault("rng", random.Random(9))
        sender = ZerohashSender(url=receiver.url, clock=clock, **kwargs)
        if start:
            await sender.start()
        senders.append(sender)
        return sender

    yield build
    for sender in senders:
        await sender.stop()


def balance_payload(ledger: ZerohashLedger) -> dict[str, Any]:
    return ledger.deposit("CUST42", "USD", Decimal("10"), account_group=GROUP)[0]


async def test_hmac_signatures_verify_with_the_timestamped_and_the_legacy_recipe(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger
) -> None:
    sender = await make_sender()
    payload = balance_payload(ledger)
    notification_id = sender.send("account_balance.changed", payload)
    await wait_for(lambda: sender.stats()["delivered"] == 1)

    (item,) = receiver.received
    assert json.loads(item.body) == payload
    assert item.body == json.dumps(payload, separators=(",", ":")).encode()
    headers = item.headers
    assert headers[HEADER_NOTIFICATION_ID] == notification_id
    assert uuid.UUID(notification_id).version == 4
    assert headers[HEADER_PAYLOAD_TYPE] == "account_balance.changed"
    assert headers[HEADER_TIMESTAMP] == str(int(NOW * 1000))
    assert hmac_matches([SECRET], item.body, headers[HEADER_TIMESTAMP], headers[HEADER_SIGNATURE]) == 0
    assert hmac_matches([SECRET], item.body, None, headers[HEADER_SIGNATURE_LEGACY]) == 0
    # The two recipes really differ: neither signature verifies under the other one.
    assert hmac_matches([SECRET], item.body, None, headers[HEADER_SIGNATURE]) is None
    assert hmac_matches([SECRET], item.body, headers[HEADER_TIMESTAMP], headers[HEADER_SIGNATURE_LEGACY]) is None
    assert HEADER_RSA_SIGNATURE not in headers


async def test_rsa_signatures_verify_with_the_public_key(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger, rsa_key: rsa.RSAPrivateKey
) -> None:
    sender = await make_sender(hmac_secret=None, rsa_private_key=rsa_key)
    sender.send("account_balance.changed", balance_payload(ledger))
    await wait_for(lambda: sender.stats()["delivered"] == 1)

    (item,) = receiver.received
    public = rsa_key.public_key()
    timestamp = item.headers[HEADER_TIMESTAMP]
    assert rsa_matches([public], item.body, timestamp, item.headers[HEADER_RSA_SIGNATURE]) == 0
    assert rsa_matches([public], item.body, None, item.headers[HEADER_RSA_SIGNATURE_LEGACY]) == 0
    assert rsa_matches([public], item.body, None, item.headers[HEADER_RSA_SIGNATURE]) is None
    assert HEADER_SIGNATURE not in item.headers and HEADER_SIGNATURE_LEGACY not in item.headers


@pytest.mark.parametrize(
    ("scheme", "present", "absent"),
    [
        ("timestamped", {HEADER_TIMESTAMP, HEADER_SIGNATURE}, {HEADER_SIGNATURE_LEGACY}),
        ("legacy", {HEADER_SIGNATURE_LEGACY}, {HEADER_TIMESTAMP, HEADER_SIGNATURE}),
        ("both", {HEADER_TIMESTAMP, HEADER_SIGNATURE, HEADER_SIGNATURE_LEGACY}, set()),
    ],
)
async def test_scheme_selects_which_signature_headers_are_sent(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger, scheme: str, present: set[str], absent: set[str]
) -> None:
    sender = await make_sender(scheme=scheme)
    sender.send("account_balance.changed", balance_payload(ledger))
    await wait_for(lambda: len(receiver.received) == 1)
    headers = set(receiver.received[0].headers)
    assert present <= headers
    assert not absent & headers
    assert sender.stats()["delivered"] == 1


async def test_failed_notification_gets_four_fast_and_three_backoff_retries_then_is_dropped(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger
) -> None:
    receiver.policy = lambda item: 500
    sleep = FakeSleep()
    sender = await make_sender(sleep=sleep)  # the default schedule
    sender.send("account_balance.changed", balance_payload(ledger))
    await wait_for(lambda: sender.stats()["given_up"] == 1)

    assert len(receiver.received) == 8
    assert sleep.delays == [0.25] * 4 + [120.0, 240.0, 480.0]  # then exponential backoff: 2, 4, 8 minutes
    assert len({item.body for item in receiver.received}) == 1
    identities = {(i.headers[HEADER_NOTIFICATION_ID], i.headers[HEADER_SIGNATURE]) for i in receiver.received}
    assert len(identities) == 1  # same notification id and, by default, the same timestamp and signature
    (record,) = sender.history()
    assert record["attempts"] == [500] * 8
    assert record["outcome"] == "given_up"
    stats = sender.stats()
    assert (stats["sent"], stats["failed_attempts"], stats["retried"], stats["delivered"]) == (1, 8, 7, 0)


async def test_late_retries_keep_the_original_timestamp_long_after_five_minutes(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger, clock: Clock
) -> None:
    arrivals: list[float] = []

    def policy(item: Received) -> int:
        arrivals.append(clock.now)
        return 503 if len(arrivals) < 7 else 200  # down until the second backoff retry

    receiver.policy = policy
    sender = await make_sender(sleep=FakeSleep(clock))  # the default schedule, on a clock it advances
    sender.send("account_balance.changed", balance_payload(ledger))
    await wait_for(lambda: sender.stats()["delivered"] == 1)

    assert len(receiver.received) == 7
    assert {item.headers[HEADER_TIMESTAMP] for item in receiver.received} == {str(int(NOW * 1000))}
    assert {item.headers[HEADER_SIGNATURE] for item in receiver.received} == {
        receiver.received[0].headers[HEADER_SIGNATURE]
    }
    ages = [arrival - NOW for arrival in arrivals]
    assert ages == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 121.0, 361.0])
    assert ages[-1] > 300  # the acknowledged retry is older than a 5-minute timestamp window
    assert sender.history()[0]["attempts"] == [503] * 6 + [200]


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_any_2xx_acknowledges(receiver: Receiver, make_sender: Any, ledger: ZerohashLedger, status: int) -> None:
    receiver.policy = lambda item: status
    sender = await make_sender()
    sender.send("account_balance.changed", balance_payload(ledger))
    await wait_for(lambda: sender.stats()["delivered"] == 1)
    assert sender.history()[0]["attempts"] == [status]


async def test_retry_can_be_re_signed_with_a_fresh_timestamp(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger, clock: Clock
) -> None:
    receiver.policy = lambda item: 503 if len(receiver.received) == 1 else 200
    sender = await make_sender(sleep=FakeSleep(clock), retry_keeps_timestamp=False)
    sender.send("account_balance.changed", balance_payload(ledger))
    await wait_for(lambda: sender.stats()["delivered"] == 1)

    first, second = receiver.received
    assert first.headers[HEADER_NOTIFICATION_ID] == second.headers[HEADER_NOTIFICATION_ID]
    assert int(second.headers[HEADER_TIMESTAMP]) == int(first.headers[HEADER_TIMESTAMP]) + 250
    for item in (first, second):
        assert hmac_matches([SECRET], item.body, item.headers[HEADER_TIMESTAMP], item.headers[HEADER_SIGNATURE]) == 0


async def test_notifications_sent_before_start_go_out_on_start(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger
) -> None:
    sender = await make_sender(start=False)
    sender.send("account_balance.changed", balance_payload(ledger))
    sender.send("participant_status_changed", ledger.participant_status_payload("CUST42", "approved"))
    assert receiver.received == []
    await sender.start()
    await wait_for(lambda: sender.stats()["delivered"] == 2)
    assert sorted(i.headers[HEADER_PAYLOAD_TYPE] for i in receiver.received) == [
        "account_balance.changed",
        "participant_status_changed",
    ]


async def test_other_payload_types_are_delivered_with_their_type_header(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger
) -> None:
    sender = await make_sender()
    ledger.deposit("CUST42", "USD", Decimal("100"), account_group=GROUP)
    trade_id, _ = ledger.settle_trade(
        "CUST42",
        account_group=GROUP,
        side="buy",
        asset="BTC",
        quantity=Decimal("0.001"),
        quoted_currency="USD",
        notional=Decimal("60"),
    )
    sender.send("trade.status_changed", ledger.trade_status_payload(trade_id))
    await wait_for(lambda: sender.stats()["delivered"] == 1)
    (item,) = receiver.received
    assert item.headers[HEADER_PAYLOAD_TYPE] == "trade.status_changed"
    assert json.loads(item.body)["trade_id"] == trade_id


async def test_drop_next_loses_the_notification(receiver: Receiver, make_sender: Any, ledger: ZerohashLedger) -> None:
    sender = await make_sender()
    sender.drop_next(1, "account_balance.changed")
    dropped = sender.send("account_balance.changed", balance_payload(ledger))
    kept = sender.send("account_balance.changed", balance_payload(ledger))
    await wait_for(lambda: sender.stats()["delivered"] == 1)
    assert [i.headers[HEADER_NOTIFICATION_ID] for i in receiver.received] == [kept]
    assert {r["notification_id"]: r["outcome"] for r in sender.history()}[dropped] == "dropped"
    assert sender.stats()["dropped"] == 1


async def test_forged_notification_verifies_under_neither_hmac_nor_rsa(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger, rsa_key: rsa.RSAPrivateKey
) -> None:
    sender = await make_sender(rsa_private_key=rsa_key)
    sender.send("account_balance.changed", balance_payload(ledger))
    await wait_for(lambda: sender.stats()["delivered"] == 1)
    record = await sender.send_forged()

    forged = receiver.received[-1]
    timestamp = forged.headers[HEADER_TIMESTAMP]
    assert hmac_matches([SECRET], forged.body, timestamp, forged.headers[HEADER_SIGNATURE]) is None
    assert hmac_matches([SECRET], forged.body, None, forged.headers[HEADER_SIGNATURE_LEGACY]) is None
    public = rsa_key.public_key()
    assert rsa_matches([public], forged.body, timestamp, forged.headers[HEADER_RSA_SIGNATURE]) is None
    assert rsa_matches([public], forged.body, None, forged.headers[HEADER_RSA_SIGNATURE_LEGACY]) is None
    assert json.loads(forged.body)["participant_code"] == "CUST42"  # it imitates a real account
    assert record["kind"] == "forged"
    assert sender.stats()["forged"] == 1


async def test_stale_notification_is_correctly_signed_over_an_old_timestamp(
    receiver: Receiver, make_sender: Any
) -> None:
    sender = await make_sender(scheme="legacy")
    record = await sender.send_stale()

    (item,) = receiver.received
    timestamp = item.headers[HEADER_TIMESTAMP]
    assert int(timestamp) == int((NOW - 8 * 86400) * 1000)  # a day beyond a 7-day dedupe retention
    assert hmac_matches([SECRET], item.body, timestamp, item.headers[HEADER_SIGNATURE]) == 0
    assert record["kind"] == "stale"
    assert sender.stats()["stale"] == 1


async def test_tampered_notification_no_longer_matches_its_signature(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger
) -> None:
    sender = await make_sender()
    await sender.send_tampered(balance_payload(ledger))

    (item,) = receiver.received
    timestamp = item.headers[HEADER_TIMESTAMP]
    assert hmac_matches([SECRET], item.body, timestamp, item.headers[HEADER_SIGNATURE]) is None
    assert json.loads(item.body)["balance"] == "110"
    assert sender.stats()["tampered"] == 1


async def test_replay_last_resends_the_acknowledged_notification_byte_for_byte(
    receiver: Receiver, make_sender: Any, ledger: ZerohashLedger
) -> None:
    sender = await make_sender()
    assert await sender.replay_last() is None
    sender.send("account_balance.changed", balance_payload(ledger))
    await wait_for(lambda: sender.stats()["delivered"] == 1)

    record = await sender.replay_last()

    original, replay = receiver.received
    assert replay.body == original.body
    for header in (HEADER_NOTIFICATION_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE, HEADER_SIGNATURE_LEGACY):
        assert replay.headers[header] == original.headers[header]
    assert record is not None and record["kind"] == "replayed"
    assert sender.stats()["replayed"] == 1


def test_sender_needs_a_key(receiver: Receiver) -> None:
    with pytest.raises(ValueError, match="needs an HMAC secret, an RSA private key, or both"):
        ZerohashSender(url="http://127.0.0.1:9/", hmac_secret=None)
    with pytest.raises(ValueError, match="scheme must be timestamped, legacy or both"):
        ZerohashSender(url="http://127.0.0.1:9/", hmac_secret=SECRET, scheme="sometimes")  # type: ignore[arg-type]
