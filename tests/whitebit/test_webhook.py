"""The WhiteBIT receiver on a real Exporter over loopback: the W3 matrix with status codes and counter deltas."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from exporter.app import Exporter
from exporter.config.schema import Config, WhitebitAccountConfig, WhitebitWebhookConfig
from exporter.core.state import StateStore
from exporter.simulator.model import Exchange
from exporter.simulator.webhooks import WebhookSender
from exporter.webhooks.intake import REJECT_REASONS
from exporter.whitebit.signing import (
    compact_json,
    encode_payload,
    sign_body,
    sign_payload,
)
from exporter.whitebit.webhook import METHODS, method_label
from tests.helpers import Scrape, scrape, wait_for

KEY = "whk-main-PUBLIC-0001"
OLD_SECRET = "whsec-main-OLD-0123456789abcdef"
NEW_SECRET = "whsec-main-NEW-fedcba9876543210"
STRICT_KEY = "whk-strict-PUBLIC-0002"
STRICT_SECRET = "whsec-strict-0123456789abcdef"

ACCOUNTS = (
    WhitebitAccountConfig(name="main", webhook=WhitebitWebhookConfig(public_key=KEY, secrets=(OLD_SECRET, NEW_SECRET))),
    WhitebitAccountConfig(
        name="strict",
        webhook=WhitebitWebhookConfig(public_key=STRICT_KEY, secrets=(STRICT_SECRET,), nonce_policy="strict"),
    ),
    WhitebitAccountConfig(name="trading", api_key="api-key-trading", api_secret="api-secret-trading"),
)

Key = tuple[str, tuple[tuple[str, str], ...]]


def k(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


def webhook_counters(result: Scrape) -> dict[Key, float]:
    return {
        k(name, **labels): value
        for family in result.values()
        for name in {s.name for s in family.samples}
        if name.startswith("whitebit_webhook") and name.endswith("_total")
        for labels, value in result.samples(name)
    }


def deltas(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


def accepted(account: str, method: str, **extra: float) -> dict[Key, float]:
    """The deltas of one delivery that was verified (and maybe more)."""
    out = {
        k("whitebit_webhooks_received_total", account=account, method=method): 1.0,
        k("whitebit_webhooks_verified_total", account=account, method=method): 1.0,
    }
    for name, value in extra.items():
        out[k(f"whitebit_{name}_total", account=account)] = value
    return out


def rejected(account: str, reason: str, method: str = "other") -> dict[Key, float]:
    return {
        k("whitebit_webhooks_received_total", account=account, method=method): 1.0,
        k("whitebit_webhooks_rejected_total", account=account, reason=reason): 1.0,
    }


def envelope(method: str, params: dict[str, Any], delivery_id: str, nonce: int | None = None) -> bytes:
    if nonce is not None:
        params = {**params, "nonce": nonce}
    return compact_json({"method": method, "params": params, "id": delivery_id})


def code_apply(delivery_id: str, nonce: int | None = None) -> bytes:
    return envelope("code.apply", {"code": "WBX-1"}, delivery_id, nonce)


DEPOSIT = {
    "address": "TAddr1",
    "amount": "25.000000000000000000",
    "createdAt": 1_700_000_000,
    "currency": "Tether US",
    "description": "",
    "fee": "0.000000000000000000",
    "memo": "",
    "method": 1,
    "network": "TRC20",
    "status": 15,
    "ticker": "USDT",
    "transactionHash": "0xdeadbeef",
    "uniqueId": None,
    "confirmations": {"actual": 1, "required": 3},
}


class Harness:
    """A started Exporter, an HTTP session and helpers to post and measure."""

    def __init__(self, exporter: Exporter, http: aiohttp.ClientSession) -> None:
        self.exporter = exporter
        self.http = http

    @property
    def url(self) -> str:
        return self.exporter.webhooks_url + "/webhooks/whitebit"

    async def post(self, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
        async with self.http.post(self.url, data=body, headers=headers) as response:
            return response.status, await response.text()

    async def signed(self, body: bytes, key: str = KEY, secret: str = NEW_SECRET) -> tuple[int, str]:
        return await self.post(body, sign_body(body, key=key, secret=secret))

    async def derived(self) -> None:
        """Wait until the inbox has derived every delivery answered so far (transfers come after the 200)."""
        await asyncio.wait_for(self.exporter.inbox.caught_up(), timeout=10)

    async def counters(self) -> dict[Key, float]:
        return webhook_counters(await scrape(self.exporter.metrics_url))

    async def measure(self, body: bytes, headers: dict[str, str]) -> tuple[int, dict[Key, float]]:
        before = await self.counters()
        status, _ = await self.post(body, headers)
        return status, deltas(before, await self.counters())


StartHarness = Callable[..., Awaitable[Harness]]


@contextlib.asynccontextmanager
async def exporters_started(default: Callable[[], Config]) -> AsyncIterator[StartHarness]:
    """``go(config=None)`` starts an Exporter (on ``default()`` without a config); all are stopped on exit."""
    exporters: list[Exporter] = []
    async with aiohttp.ClientSession() as http:

        async def go(config: Config | None = None) -> Harness:
            exporter = Exporter(config or default())
            exporters.append(exporter)
            await exporter.start()
            return Harness(exporter, http)

        try:
            yield go
        finally:
            for exporter in exporters:
                await exporter.stop()


@pytest.fixture
async def start(make_config: Callable[..., Config]) -> AsyncIterator[StartHarness]:
    async with exporters_started(lambda: make_config(ACCOUNTS, max_body_bytes=4096)) as go:
        yield go


# -- known-answer vector ------------------------------------------------------------------------

KAT_SECRET = "example-webhook-secret"
KAT_BODY = (
    b'{"method":"code.apply","params":{"code":"WBX-EXAMPLE","nonce":42},"id":"00000000-0000-4000-8000-000000000000"}'
)
KAT_PAYLOAD = (
    "eyJtZXRob2QiOiJjb2RlLmFwcGx5IiwicGFyYW1zIjp7ImNvZGUiOiJXQlgtRVhBTVBMRSIsIm5vbmNlIjo0Mn0sImlkIjoiMDAwMDAwMD"
    "AtMDAwMC00MDAwLTgwMDAtMDAwMDAwMDAwMDAwIn0="
)
KAT_SIGNATURE = (
    "01164789b8c97f2eb9c7334a36de5d8b1bf510ed9c556ab3e448ed185263650f"
    "1256e3ffa69677f9c224b110803fa92a8487797c983156dd33ace98118b2ca4d"
)


def test_signing_matches_the_reference_vector() -> None:
    assert encode_payload(KAT_BODY) == KAT_PAYLOAD
    assert sign_payload(KAT_PAYLOAD, KAT_SECRET) == KAT_SIGNATURE


async def test_the_reference_vector_delivery_is_accepted(
    start: StartHarness, make_config: Callable[..., Config]
) -> None:
    account = WhitebitAccountConfig(
        name="kat", webhook=WhitebitWebhookConfig(public_key="kat-key", secrets=(KAT_SECRET,))
    )
    h = await start(make_config([account]))
    headers = {"X-TXC-APIKEY": "kat-key", "X-TXC-PAYLOAD": KAT_PAYLOAD, "X-TXC-SIGNATURE": KAT_SIGNATURE}
    status, delta = await h.measure(KAT_BODY, headers)
    assert status == 200
    assert delta == accepted("kat", "code.apply")


# -- the W3 matrix -------------------------------------------------------------------------------

BODY = code_apply("11111111-0000-4000-8000-000000000001", nonce=1_000)


def without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in headers.items() if key != name}


def tampered() -> tuple[bytes, dict[str, str]]:
    body = envelope("deposit.processed", DEPOSIT, "t-1", 1)
    headers = sign_body(body, key=KEY, secret=NEW_SECRET)
    return body.replace(b'"25.', b'"925.'), headers


def payload_not_of_body() -> tuple[bytes, dict[str, str]]:
    # A correctly signed payload header paired with a different body.
    other = code_apply("22222222-0000-4000-8000-000000000002", 5)
    headers = sign_body(other, key=KEY, secret=NEW_SECRET)
    return BODY, headers


def padded_differently() -> tuple[bytes, dict[str, str]]:
    # Base64 of the body without its padding decodes to the same bytes, but is not byte for byte equal.
    body = code_apply("p-1", 7) + b" "
    payload = encode_payload(body).rstrip("=")
    assert payload != encode_payload(body)
    return body, {"X-TXC-APIKEY": KEY, "X-TXC-PAYLOAD": payload, "X-TXC-SIGNATURE": sign_payload(payload, NEW_SECRET)}


def signed_with(body: bytes, key: str = KEY, secret: str = NEW_SECRET) -> dict[str, str]:
    return sign_body(body, key=key, secret=secret)


MATRIX: list[tuple[str, Callable[[], tuple[bytes, dict[str, str]]], int, dict[Key, float]]] = [
    (
        "missing apikey",
        lambda: (BODY, without(signed_with(BODY), "X-TXC-APIKEY")),
        401,
        rejected("unknown", "missing_header"),
    ),
    (
        "missing payload",
        lambda: (BODY, without(signed_with(BODY), "X-TXC-PAYLOAD")),
        401,
        rejected("main", "missing_header"),
    ),
    (
        "missing signature",
        lambda: (BODY, without(signed_with(BODY), "X-TXC-SIGNATURE")),
        401,
        rejected("main", "missing_header"),
    ),
    (
        "empty signature",
        lambda: (BODY, {**signed_with(BODY), "X-TXC-SIGNATURE": ""}),
        401,
        rejected("main", "missing_header"),
    ),
    ("tampered body", tampered, 401, rejected("main", "payload_mismatch")),
    ("payload header not base64 of the body", payload_not_of_body, 401, rejected("main", "payload_mismatch")),
    ("payload header padded differently", padded_differently, 401, rejected("main", "payload_mismatch")),
    ("wrong key", lambda: (BODY, signed_with(BODY, key="whk-someone-else")), 401, rejected("unknown", "unknown_key")),
    (
        "wrong secret",
        lambda: (BODY, signed_with(BODY, secret="not-the-secret")),
        401,
        rejected("main", "bad_signature"),
    ),
    (
        "secret of another account",
        lambda: (BODY, signed_with(BODY, secret=STRICT_SECRET)),
        401,
        rejected("main", "bad_signature"),
    ),
    ("first of two secrets", lambda: (BODY, signed_with(BODY, secret=OLD_SECRET)), 200, accepted("main", "code.apply")),
    (
        "second of two secrets",
        lambda: (BODY, signed_with(BODY, secret=NEW_SECRET)),
        200,
        accepted("main", "code.apply"),
    ),
    (
        "upper-case hex signature",
        lambda: (BODY, {**signed_with(BODY), "X-TXC-SIGNATURE": signed_with(BODY)["X-TXC-SIGNATURE"].upper()}),
        200,
        accepted("main", "code.apply"),
    ),
    (
        "bad json after a valid signature",
        lambda: (b"{not json", signed_with(b"{not json")),
        400,
        rejected("main", "bad_json"),
    ),
    ("json that is not an object", lambda: (b"[1,2]", signed_with(b"[1,2]")), 400, rejected("main", "bad_json")),
    (
        "envelope without id",
        lambda: (b'{"method":"code.apply","params":{}}', signed_with(b'{"method":"code.apply","params":{}}')),
        400,
        rejected("main", "bad_json", "code.apply"),
    ),
    (
        "deposit without amount",
        lambda: (
            envelope("deposit.accepted", {**DEPOSIT, "amount": None}, "d-0"),
            signed_with(envelope("deposit.accepted", {**DEPOSIT, "amount": None}, "d-0")),
        ),
        400,
        rejected("main", "bad_json", "deposit.accepted"),
    ),
    ("oversized body", lambda: (b"x" * 4097, signed_with(b"x" * 4097)), 413, rejected("main", "body_too_large")),
    (
        "oversized body with an unknown key",
        lambda: (b"x" * 4097, signed_with(b"x" * 4097, key="nobody")),
        413,
        rejected("unknown", "body_too_large"),
    ),
    (
        "unknown method",
        lambda: (envelope("account.frozen", {"x": 1}, "u-1"), signed_with(envelope("account.frozen", {"x": 1}, "u-1"))),
        200,
        accepted("main", "other"),
    ),
    (
        "old spelling deposit.update",
        lambda: (envelope("deposit.update", DEPOSIT, "d-1"), signed_with(envelope("deposit.update", DEPOSIT, "d-1"))),
        200,
        accepted("main", "deposit.updated"),
    ),
]


@pytest.mark.parametrize(("case", "make", "status", "expected"), MATRIX, ids=[m[0] for m in MATRIX])
async def test_matrix_status_and_counter_deltas(
    start: StartHarness,
    case: str,
    make: Callable[[], tuple[bytes, dict[str, str]]],
    status: int,
    expected: dict[Key, float],
) -> None:
    h = await start()
    body, headers = make()
    got_status, delta = await h.measure(body, headers)
    assert (got_status, delta) == (status, expected)


async def test_rejections_store_nothing(start: StartHarness) -> None:
    h = await start()
    for _, make, status, _ in MATRIX:
        if status != 200:
            await h.post(*make())
    assert h.exporter.state.transfers() == []
    assert h.exporter.state.highest_nonce("main") is None


async def test_duplicate_id_answers_200_counted_and_not_processed_twice(start: StartHarness) -> None:
    h = await start()
    body = envelope("deposit.processed", DEPOSIT, "dup-1", 10)
    assert (await h.signed(body))[0] == 200
    status, delta = await h.measure(body, signed_with(body))
    assert status == 200
    assert delta == accepted("main", "deposit.processed", webhooks_duplicate=1)
    await h.derived()
    result = await scrape(h.exporter.metrics_url)
    assert (
        result.value("whitebit_transfers_total", account="main", kind="deposit", outcome="successful", asset="USDT")
        == 1
    )
    assert len(h.exporter.state.transfers("main")) == 1


async def test_replay_after_a_restart_is_a_duplicate(start: StartHarness, make_config: Callable[..., Config]) -> None:
    config = make_config(ACCOUNTS, max_body_bytes=4096)
    first = await start(config)
    body = envelope("deposit.processed", DEPOSIT, "replay-1", 20)
    assert (await first.signed(body))[0] == 200
    await first.exporter.stop()

    second = await start(config)
    status, delta = await second.measure(body, signed_with(body))
    assert status == 200
    assert delta == accepted("main", "deposit.processed", webhooks_duplicate=1)
    await second.derived()
    result = await scrape(second.exporter.metrics_url)
    # Counters restart at 0 and the replay does not count the deposit's outcome again.
    assert (
        result.value("whitebit_transfers_total", account="main", kind="deposit", outcome="successful", asset="USDT")
        == 0
    )
    [record] = second.exporter.state.transfers("main")
    assert record.final and record.outcome == "successful"


async def test_a_delivery_answered_200_is_already_in_the_state_file(start: StartHarness) -> None:
    h = await start()
    body = envelope("deposit.accepted", DEPOSIT, "durable-1", 30)
    assert (await h.signed(body))[0] == 200
    # A second connection sees only what has been committed.
    with StateStore.open(h.exporter.config.state.path) as reader:
        assert reader.delivery_seen("whitebit", "main", "durable-1")
        assert reader.highest_nonce("main") == 30
        [record] = reader.transfers("main")
        assert record.status_name == "pending" and record.confirmations_actual == 1


async def test_a_state_write_failure_answers_503_so_the_sender_retries(start: StartHarness) -> None:
    h = await start()
    h.exporter.state.close()
    status, delta = await h.measure(code_apply("s-1", 1), signed_with(code_apply("s-1", 1)))
    assert status == 503
    assert delta == {
        **accepted("main", "code.apply"),
        k("whitebit_webhooks_rejected_total", account="main", reason="state_unavailable"): 1.0,
    }


# -- nonces --------------------------------------------------------------------------------------


async def test_nonce_regression_under_count_is_accepted_and_counted(start: StartHarness) -> None:
    h = await start()
    assert (await h.signed(code_apply("n-1", 500)))[0] == 200
    status, delta = await h.measure(code_apply("n-2", 499), signed_with(code_apply("n-2", 499)))
    assert status == 200
    assert delta == accepted("main", "code.apply", webhook_nonce_regressions=1)
    status, delta = await h.measure(code_apply("n-3", 500), signed_with(code_apply("n-3", 500)))
    assert status == 200 and delta == accepted("main", "code.apply", webhook_nonce_regressions=1)
    assert h.exporter.state.highest_nonce("main") == 500


async def test_nonce_regression_under_strict_is_rejected_and_not_remembered(start: StartHarness) -> None:
    h = await start()
    assert (await h.signed(code_apply("s-1", 500), key=STRICT_KEY, secret=STRICT_SECRET))[0] == 200
    body = code_apply("s-2", 400)
    status, delta = await h.measure(body, signed_with(body, key=STRICT_KEY, secret=STRICT_SECRET))
    assert status == 409
    assert delta == {
        **accepted("strict", "code.apply", webhook_nonce_regressions=1),
        k("whitebit_webhooks_rejected_total", account="strict", reason="nonce_regression"): 1.0,
    }
    assert not h.exporter.state.delivery_seen("whitebit", "strict", "s-2")
    # The same id with a nonce above the highest is then accepted, not a duplicate.
    body = code_apply("s-2", 501)
    status, delta = await h.measure(body, signed_with(body, key=STRICT_KEY, secret=STRICT_SECRET))
    assert status == 200 and delta == accepted("strict", "code.apply")


async def test_a_missing_or_null_nonce_is_fine_under_strict(start: StartHarness) -> None:
    h = await start()
    assert (await h.signed(code_apply("m-1", 500), key=STRICT_KEY, secret=STRICT_SECRET))[0] == 200
    for delivery_id, body in (("m-2", code_apply("m-2")), ("m-3", envelope("code.apply", {"nonce": None}, "m-3"))):
        status, delta = await h.measure(body, signed_with(body, key=STRICT_KEY, secret=STRICT_SECRET))
        assert status == 200 and delta == accepted("strict", "code.apply"), delivery_id
    assert h.exporter.state.highest_nonce("strict") == 500


POLICIES = pytest.mark.parametrize(
    ("key", "secret", "account"),
    [(KEY, NEW_SECRET, "main"), (STRICT_KEY, STRICT_SECRET, "strict")],
    ids=["nonce_policy=count", "nonce_policy=strict"],
)


@POLICIES
async def test_nonce_0_and_no_nonce_are_never_compared_under_either_policy(
    start: StartHarness, key: str, secret: str, account: str
) -> None:
    h = await start()
    # On a fresh state, a documented nonce 0 or a missing nonce does not become the highest.
    for delivery_id, body in (("z-1", code_apply("z-1", 0)), ("z-2", code_apply("z-2"))):
        status, delta = await h.measure(body, signed_with(body, key=key, secret=secret))
        assert (status, delta) == (200, accepted(account, "code.apply")), delivery_id
    assert h.exporter.state.highest_nonce(account) is None

    assert (await h.signed(code_apply("z-3", 500), key=key, secret=secret))[0] == 200
    refund = envelope("refund.failed", {"transactionId": "T-1", "status": "failed", "nonce": 0}, "z-4")
    for delivery_id, body in (
        ("z-4", refund),
        ("z-5", code_apply("z-5", 0)),
        ("z-6", envelope("code.apply", {"code": "WBX", "nonce": "0"}, "z-6")),
        ("z-7", envelope("deposit.accepted", DEPOSIT, "z-7")),
    ):
        status, delta = await h.measure(body, signed_with(body, key=key, secret=secret))
        method = json.loads(body)["method"]
        assert (status, delta) == (200, accepted(account, method)), delivery_id
    assert h.exporter.state.highest_nonce(account) == 500
    # A real regression is still one: counted (and refused under strict).
    body = code_apply("z-8", 499)
    status, delta = await h.measure(body, signed_with(body, key=key, secret=secret))
    assert delta[k("whitebit_webhook_nonce_regressions_total", account=account)] == 1
    assert status == (409 if account == "strict" else 200)


@POLICIES
async def test_the_simulators_documented_nonce_forms_are_accepted_under_either_policy(
    start: StartHarness, key: str, secret: str, account: str
) -> None:
    h = await start()
    exchange = Exchange(["BTC_USDT"], rng=random.Random(5))
    exchange.add_account("sim", api_key="api-sim", api_secret="api-secret-sim", webhook_key=key, webhook_secret=secret)
    # The simulator's defaults: rising nonces for deposits, "nonce": 0 for codes and refunds.
    sender = WebhookSender(exchange, url=h.url, rng=random.Random(6), retry_delays=())
    await sender.start()
    try:
        before = await h.counters()
        deposit = exchange.start_deposit("sim", "USDT", Decimal("40"))
        exchange.apply_code("sim", "WBX-SIM")
        exchange.cancel_deposit("sim", deposit.transaction_id)
        exchange.apply_code("sim", "WBX-SIM-2")
        exchange.refund_deposit("sim", deposit.transaction_id)
        await wait_for(lambda: sender.stats()["delivered"] + sender.stats()["given_up"] == 5)
        assert sender.stats()["delivered"] == 5
        delta = deltas(before, await h.counters())
    finally:
        await sender.stop()
    sent = [(r["method"], r["nonce"]) for r in sender.history()]
    assert [nonce for method, nonce in sent if not method.startswith("deposit.")] == [0, 0, 0]
    assert delta == {
        **{k("whitebit_webhooks_received_total", account=account, method=m): n for m, n in RECEIVED_OF_SIM.items()},
        **{k("whitebit_webhooks_verified_total", account=account, method=m): n for m, n in RECEIVED_OF_SIM.items()},
    }
    assert h.exporter.state.highest_nonce(account) == max(nonce for method, nonce in sent if method.startswith("dep"))


RECEIVED_OF_SIM = {"deposit.accepted": 1.0, "deposit.canceled": 1.0, "code.apply": 2.0, "refund.successful": 1.0}


async def test_highest_nonce_survives_a_restart(start: StartHarness, make_config: Callable[..., Config]) -> None:
    config = make_config(ACCOUNTS)
    first = await start(config)
    assert (await first.signed(code_apply("r-1", 900), key=STRICT_KEY, secret=STRICT_SECRET))[0] == 200
    await first.exporter.stop()
    second = await start(config)
    body = code_apply("r-2", 800)
    status, delta = await second.measure(body, signed_with(body, key=STRICT_KEY, secret=STRICT_SECRET))
    assert status == 409
    assert delta[k("whitebit_webhooks_rejected_total", account="strict", reason="nonce_regression")] == 1


async def test_a_duplicate_with_an_old_nonce_is_a_duplicate_not_a_regression(start: StartHarness) -> None:
    h = await start()
    old = code_apply("o-1", 100)
    assert (await h.signed(old, key=STRICT_KEY, secret=STRICT_SECRET))[0] == 200
    assert (await h.signed(code_apply("o-2", 200), key=STRICT_KEY, secret=STRICT_SECRET))[0] == 200
    status, delta = await h.measure(old, signed_with(old, key=STRICT_KEY, secret=STRICT_SECRET))
    assert status == 200 and delta == accepted("strict", "code.apply", webhooks_duplicate=1)


# -- methods and payloads ------------------------------------------------------------------------


def test_method_labels_are_bounded() -> None:
    assert method_label("deposit.update") == "deposit.updated"
    assert [method_label(m) for m in METHODS] == list(METHODS)
    assert method_label("deposit.processed\x00") == "other" and method_label(None) == "other"


@pytest.mark.parametrize("method", METHODS)
async def test_every_documented_method_is_accepted(start: StartHarness, method: str) -> None:
    h = await start()
    if method.startswith("deposit."):
        params: dict[str, Any] = dict(DEPOSIT)
    elif method.startswith("withdraw."):
        params = {**DEPOSIT, "method": 2, "uniqueId": "payout-7", "confirmations": None}
    elif method.startswith("refund."):
        params = {
            "transactionId": "T-9",
            "status": "completed",
            "refundAddress": "A",
            "depositAmount": "1",
            "currency": "Tether US",
            "ticker": "USDT",
            "network": "TRC20",
            "createdAt": 1,
            "processedAt": 2,
            "nonce": 0,
        }
    else:
        params = {"code": "WBX"}
    body = envelope(method, params, f"m-{method}")
    status, delta = await h.measure(body, signed_with(body))
    assert status == 200 and delta == accepted("main", method)


async def test_counters_start_at_zero_for_every_method_reason_and_account(start: StartHarness) -> None:
    before = time.time()
    h = await start()
    result = await scrape(h.exporter.metrics_url)
    for account in ("main", "strict"):
        for method in (*METHODS, "other"):
            assert result.value("whitebit_webhooks_received_total", account=account, method=method) == 0
            assert result.value("whitebit_webhooks_verified_total", account=account, method=method) == 0
        assert result.value("whitebit_webhooks_duplicate_total", account=account) == 0
        assert result.value("whitebit_webhook_nonce_regressions_total", account=account) == 0
        for reason in REJECT_REASONS:
            assert result.value("whitebit_webhooks_rejected_total", account=account, reason=reason) == 0
    for reason in REJECT_REASONS:
        assert result.value("whitebit_webhooks_rejected_total", account="unknown", reason=reason) == 0
    # An account without a webhook key gets no webhook series; transfers are shown for every account.
    assert result.value("whitebit_webhooks_duplicate_total", account="trading") is None
    assert result.value("whitebit_transfers_in_flight", account="trading", kind="deposit", status="pending") == 0
    # Before any delivery, each webhook account's feed is "last heard of" when the state file started
    # watching it, so WhitebitWebhookSilent covers a feed that never delivers.
    last = {
        labels["account"]: value for labels, value in result.samples("whitebit_webhook_last_received_timestamp_seconds")
    }
    assert set(last) == {"main", "strict"}
    assert all(before <= value <= time.time() for value in last.values())


async def test_deposit_lifecycle_moves_transfer_metrics(start: StartHarness) -> None:
    h = await start()
    steps = [
        ("deposit.accepted", {**DEPOSIT, "confirmations": {"actual": 0, "required": 2}}),
        (
            "deposit.updated",
            {k: v for k, v in {**DEPOSIT, "confirmations": {"actual": 1, "required": 2}}.items() if k != "method"},
        ),
    ]
    for index, (method, params) in enumerate(steps):
        assert (await h.signed(envelope(method, params, f"life-{index}", 100 + index)))[0] == 200
    await h.derived()
    result = await scrape(h.exporter.metrics_url)
    assert result.value("whitebit_transfers_in_flight", account="main", kind="deposit", status="pending") == 1
    assert result.value("whitebit_deposits_awaiting_confirmations", account="main") == 1
    assert (
        result.value("whitebit_transfers_oldest_in_flight_timestamp_seconds", account="main", kind="deposit")
        == DEPOSIT["createdAt"]
    )
    assert (await h.signed(envelope("deposit.processed", DEPOSIT, "life-9", 200)))[0] == 200
    await h.derived()
    result = await scrape(h.exporter.metrics_url)
    assert result.value("whitebit_transfers_in_flight", account="main", kind="deposit", status="pending") == 0
    assert (
        result.value("whitebit_transfers_total", account="main", kind="deposit", outcome="successful", asset="USDT")
        == 1
    )
    assert result.value("whitebit_webhook_last_received_timestamp_seconds", account="main") is not None


# -- probes, verification, secrecy ------------------------------------------------------------------


async def test_head_is_200_and_other_methods_405(start: StartHarness) -> None:
    h = await start()
    async with h.http.head(h.url) as response:
        assert response.status == 200
    async with h.http.get(h.url) as response:
        assert response.status == 405
    async with h.http.get(h.exporter.webhooks_url + "/whiteBIT-verification") as response:
        assert response.status == 200 and await response.json() == [KEY, STRICT_KEY]


async def test_replies_and_logs_never_carry_secrets_or_signatures(
    start: StartHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start()
    caplog.set_level(logging.DEBUG)
    forged = signed_with(BODY, key="attacker-key-0123456789", secret="x")
    replies = [(await h.post(BODY, forged))[1]]
    for _, make, _, _ in MATRIX:
        body, headers = make()
        replies.append((await h.post(body, headers))[1])
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in (OLD_SECRET, NEW_SECRET, STRICT_SECRET, KEY, "attacker-key-0123456789", forged["X-TXC-SIGNATURE"]):
        assert secret not in logged
        assert all(secret not in reply for reply in replies)
    assert any(json.loads(reply).get("reason") == "unknown_key" for reply in replies)
    assert "atta…" in logged


async def test_base64_of_the_body_is_compared_not_decoded(start: StartHarness) -> None:
    # A body that decodes equal after whitespace normalization still fails: bytes are compared.
    h = await start()
    body = code_apply("b-1", 3)
    headers = signed_with(body)
    status, delta = await h.measure(body + b"\n", headers)
    assert status == 401 and delta == rejected("main", "payload_mismatch")
    assert base64.b64decode(headers["X-TXC-PAYLOAD"]) == body


async def test_accounts_sharing_a_key_are_told_apart_by_their_secret(
    start: StartHarness, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    shared = "shared-key"
    accounts = [
        WhitebitAccountConfig(name="a", webhook=WhitebitWebhookConfig(public_key=shared, secrets=("secret-a",))),
        WhitebitAccountConfig(name="b", webhook=WhitebitWebhookConfig(public_key=shared, secrets=("secret-b",))),
    ]
    h = await start(make_config(accounts))
    body = code_apply("share-1", 1)
    status, delta = await h.measure(body, signed_with(body, key=shared, secret="secret-b"))
    assert status == 200 and delta == accepted("b", "code.apply")
