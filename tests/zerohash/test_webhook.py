"""The Zero Hash receiver on a real Exporter over loopback: the W3 matrix with status codes and counter deltas."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.app import Exporter
from exporter.config.load import load_config
from exporter.config.schema import Config, ZerohashConfig, ZerohashWebhookConfig
from exporter.core.state import DEFAULT_DELIVERY_TTL, StateStore
from exporter.simulator.zerohash import ZerohashLedger, ZerohashSender
from exporter.webhooks.commit import GroupCommitter
from exporter.zerohash.signing import hmac_signature, rsa_signature
from exporter.zerohash.webhook import LATE_MARGIN, PAYLOAD_TYPES, REJECT_REASONS, ZerohashReceiver, payload_type_label
from tests.helpers import Scrape, scrape, wait_for

NOW = 1_760_000_000.0
TOLERANCE = 300.0
OLD_SECRET = "zh-secret-OLD-0123456789abcdef"
NEW_SECRET = "zh-secret-NEW-fedcba9876543210"

Key = tuple[str, tuple[tuple[str, str], ...]]


def k(name: str, **labels: str) -> Key:
    return (name, tuple(sorted(labels.items())))


def zerohash_counters(result: Scrape) -> dict[Key, float]:
    names = {s.name for family in result.values() for s in family.samples}
    return {
        k(name, **labels): value
        for name in names
        if name.startswith("zerohash_webhook") and name.endswith("_total")
        for labels, value in result.samples(name)
    }


def deltas(before: dict[Key, float], after: dict[Key, float]) -> dict[Key, float]:
    return {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}


def accepted(
    payload_type: str = "account_balance.changed", duplicate: bool = False, late: bool = False
) -> dict[Key, float]:
    out = {
        k("zerohash_webhooks_received_total", payload_type=payload_type): 1.0,
        k("zerohash_webhooks_verified_total", payload_type=payload_type): 1.0,
    }
    if duplicate:
        out[k("zerohash_webhooks_duplicate_total")] = 1.0
    if late:
        out[k("zerohash_webhooks_late_total")] = 1.0
    return out


def rejected(reason: str, payload_type: str = "account_balance.changed") -> dict[Key, float]:
    return {
        k("zerohash_webhooks_received_total", payload_type=payload_type): 1.0,
        k("zerohash_webhooks_rejected_total", reason=reason): 1.0,
    }


def balance_payload(
    balance: str = "250.5", timestamp: int = int(NOW * 1000), participant: str = "CUST42", **overrides: Any
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "participant_code": participant,
        "account_group": "PLATX1",
        "account_label": "general",
        "account_type": "available",
        "asset": "USDC.ETH",
        "balance": balance,
        "run_id": "9000123",
        "run_type": "deposit",
        "timestamp": timestamp,
        "movements": [
            {
                "account_id": "0b7d2c1e-0000-4a00-8000-000000000001",
                "movement_id": "6f1e9a20-0000-4b00-9000-000000000002",
                "movement_type": "deposit",
                "movement_timestamp": timestamp,
                "change": "200.5",
                "deposit_reference_id": "dep-ref-7788",
            }
        ],
    }
    payload.update(overrides)
    return payload


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


BODY = body_of(balance_payload())


def headers(
    body: bytes = BODY,
    *,
    secret: str | None = NEW_SECRET,
    timestamp: str | None = str(int(NOW * 1000)),
    legacy: bool = False,
    rsa_key: rsa.RSAPrivateKey | None = None,
    pss: bool = True,
    payload_type: str = "account_balance.changed",
    notification_id: str = "n-1",
) -> dict[str, str]:
    out = {
        "Content-Type": "application/json",
        "x-zh-hook-payload-type": payload_type,
        "x-zh-hook-notification-id": notification_id,
    }
    if timestamp is not None:
        out["x-zh-hook-timestamp"] = timestamp
    signed_ts = None if legacy else timestamp
    if secret is not None:
        out["x-zh-hook-signature-256" if legacy else "x-zh-hook-signature"] = hmac_signature(secret, body, signed_ts)
    if rsa_key is not None:
        out["x-zh-hook-rsa-signature-256" if legacy else "x-zh-hook-rsa-signature"] = rsa_signature(
            rsa_key, body, signed_ts, pss=pss
        )
    return out


@pytest.fixture(scope="module")
def zh_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def keys_file(tmp_path: Path, zh_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> Path:
    # Two blocks in the two forms Zero Hash may hand out: PKCS#1 (BEGIN RSA PUBLIC KEY) and SPKI.
    path = tmp_path / "zerohash.pem"
    decoy = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        decoy.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        + zh_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    assert other_key.public_key() != zh_key.public_key()
    return path


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, exporter: Exporter, http: aiohttp.ClientSession) -> None:
        self.exporter = exporter
        self.http = http

    @property
    def url(self) -> str:
        return self.exporter.webhooks_url + "/webhooks/zerohash"

    async def post(self, body: bytes, hdrs: dict[str, str]) -> tuple[int, str]:
        async with self.http.post(self.url, data=body, headers=hdrs) as response:
            return response.status, await response.text()

    async def counters(self) -> dict[Key, float]:
        return zerohash_counters(await scrape(self.exporter.metrics_url))

    async def measure(self, body: bytes, hdrs: dict[str, str]) -> tuple[int, dict[Key, float]]:
        before = await self.counters()
        status, _ = await self.post(body, hdrs)
        return status, deltas(before, await self.counters())


StartHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
def zh_config(keys_file: Path) -> ZerohashConfig:
    return ZerohashConfig(
        ZerohashWebhookConfig(
            hmac_secrets=(OLD_SECRET, NEW_SECRET),
            rsa_public_keys_file=str(keys_file),
            rsa_public_keys=rsa_keys_in(keys_file),
            timestamp_tolerance=TOLERANCE,
            participants=("CUST42",),
        )
    )


@pytest.fixture
async def start(make_config: Callable[..., Config], zh_config: ZerohashConfig) -> AsyncIterator[StartHarness]:
    exporters: list[Exporter] = []
    async with aiohttp.ClientSession() as http:

        async def go(config: Config | None = None, clock: Callable[[], float] | None = None) -> Harness:
            exporter = Exporter(config or make_config(zerohash=zh_config, max_body_bytes=4096), clock=clock or Clock())
            exporters.append(exporter)
            await exporter.start()
            return Harness(exporter, http)

        yield go
        for exporter in exporters:
            await exporter.stop()


# -- known answers --------------------------------------------------------------------------------


def test_hmac_signatures_match_known_answers() -> None:
    # Computed independently: printf '%s' BODY[TS] | openssl dgst -sha256 -hmac example-zerohash-secret
    body = b'{"participant_code":"CUST42","balance":"250.5"}'
    assert hmac_signature("example-zerohash-secret", body, "1760000000123") == (
        "fbc8dec0042bdf3a50acd97041c39ac6218b88c715b2c8e9d1b7d1f3d271ffea"
    )
    assert hmac_signature("example-zerohash-secret", body, None) == (
        "eef61da7455205b88b6355cfe871539f130229f37799cfa1285e93c699f1be66"
    )


def rsa_keys_in(keys_file: Path) -> tuple[rsa.RSAPublicKey, ...]:
    """The RSA public keys of ``keys_file`` as the config loader reads them."""
    config_file = keys_file.parent / "zerohash-keys.yaml"
    config_file.write_text(f"zerohash:\n  webhook:\n    rsa_public_keys_file: {keys_file.name}\n")
    zerohash = load_config(config_file, {}).zerohash
    assert zerohash is not None
    return zerohash.webhook.rsa_public_keys


def test_rsa_keys_load_in_both_pem_forms(keys_file: Path, zh_key: rsa.RSAPrivateKey) -> None:
    loaded = rsa_keys_in(keys_file)
    assert len(loaded) == 2
    assert loaded[1].public_numbers() == zh_key.public_key().public_numbers()


# -- the W3 matrix --------------------------------------------------------------------------------

TS_MS = int(NOW * 1000)
#: The dedupe retention of the state file (DEFAULT_DELIVERY_TTL), and the oldest accepted timestamp age.
RETENTION = DEFAULT_DELIVERY_TTL
MAX_AGE = RETENTION - TOLERANCE - LATE_MARGIN


def drop(hdrs: dict[str, str], name: str) -> dict[str, str]:
    return {key: value for key, value in hdrs.items() if key != name}


MatrixCase = tuple[
    str, Callable[[rsa.RSAPrivateKey, rsa.RSAPrivateKey], tuple[bytes, dict[str, str]]], int, dict[Key, float]
]
MATRIX: list[MatrixCase] = [
    (
        "missing notification id",
        lambda z, o: (BODY, drop(headers(), "x-zh-hook-notification-id")),
        401,
        rejected("missing_header"),
    ),
    (
        "missing payload type",
        lambda z, o: (BODY, drop(headers(), "x-zh-hook-payload-type")),
        401,
        rejected("missing_header", "other"),
    ),
    ("no signature header", lambda z, o: (BODY, headers(secret=None)), 401, rejected("missing_header")),
    (
        "timestamped signature without timestamp",
        lambda z, o: (BODY, drop(headers(), "x-zh-hook-timestamp")),
        401,
        rejected("missing_header"),
    ),
    ("tampered body", lambda z, o: (BODY.replace(b"250.5", b"9250.5"), headers()), 401, rejected("bad_signature")),
    ("wrong secret", lambda z, o: (BODY, headers(secret="nope")), 401, rejected("bad_signature")),
    (
        "signature over another timestamp",
        lambda z, o: (BODY, {**headers(), "x-zh-hook-timestamp": str(TS_MS + 1)}),
        401,
        rejected("bad_signature"),
    ),
    ("rsa with the wrong key", lambda z, o: (BODY, headers(secret=None, rsa_key=o)), 401, rejected("bad_signature")),
    (
        "not hex",
        lambda z, o: (BODY, {**headers(secret=None), "x-zh-hook-rsa-signature": "zz"}),
        401,
        rejected("bad_signature"),
    ),
    ("first of two secrets", lambda z, o: (BODY, headers(secret=OLD_SECRET)), 200, accepted()),
    ("second of two secrets", lambda z, o: (BODY, headers(secret=NEW_SECRET)), 200, accepted()),
    ("legacy hmac without timestamp", lambda z, o: (BODY, headers(legacy=True, timestamp=None)), 200, accepted()),
    ("legacy hmac next to a timestamp", lambda z, o: (BODY, headers(legacy=True)), 200, accepted()),
    ("rsa pss over body and timestamp", lambda z, o: (BODY, headers(secret=None, rsa_key=z)), 200, accepted()),
    (
        "rsa pkcs1v15 over body and timestamp",
        lambda z, o: (BODY, headers(secret=None, rsa_key=z, pss=False)),
        200,
        accepted(),
    ),
    ("legacy rsa", lambda z, o: (BODY, headers(secret=None, rsa_key=z, legacy=True, timestamp=None)), 200, accepted()),
    ("timestamp in seconds", lambda z, o: (BODY, headers(timestamp=str(int(NOW)))), 200, accepted()),
    (
        "timestamp older than the tolerance: a late retry",
        lambda z, o: (BODY, headers(timestamp=str(TS_MS - int(TOLERANCE * 1000) - 1000))),
        200,
        accepted(late=True),
    ),
    (
        "timestamp a day old",
        lambda z, o: (BODY, headers(timestamp=str(TS_MS - 86_400_000))),
        200,
        accepted(late=True),
    ),
    (
        "timestamp older than the dedupe retention",
        lambda z, o: (BODY, headers(timestamp=str(TS_MS - int(RETENTION * 1000)))),
        401,
        rejected("stale_timestamp"),
    ),
    (
        "timestamp just younger than the oldest accepted age",
        lambda z, o: (BODY, headers(timestamp=str(TS_MS - int(MAX_AGE * 1000) + 1))),
        200,
        accepted(late=True),
    ),
    (
        "timestamp at the oldest accepted age",
        lambda z, o: (BODY, headers(timestamp=str(TS_MS - int(MAX_AGE * 1000)))),
        401,
        rejected("stale_timestamp"),
    ),
    (
        "future timestamp",
        lambda z, o: (BODY, headers(timestamp=str(TS_MS + int(TOLERANCE * 1000) + 1000))),
        401,
        rejected("stale_timestamp"),
    ),
    (
        "timestamp at the edge of the tolerance",
        lambda z, o: (BODY, headers(timestamp=str(TS_MS - int(TOLERANCE * 1000)))),
        200,
        accepted(),
    ),
    (
        "late timestamp next to a legacy signature",
        lambda z, o: (BODY, headers(legacy=True, timestamp=str(TS_MS - 3_600_000))),
        200,
        accepted(late=True),
    ),
    (
        "stale timestamp next to a legacy signature",
        lambda z, o: (BODY, headers(legacy=True, timestamp=str(TS_MS - int(RETENTION * 1000)))),
        401,
        rejected("stale_timestamp"),
    ),
    (
        "timestamp that is not a number",
        lambda z, o: (BODY, headers(timestamp="soon")),
        401,
        rejected("stale_timestamp"),
    ),
    (
        "forged signature with a stale timestamp",
        lambda z, o: (BODY, headers(secret="x", timestamp="1")),
        401,
        rejected("bad_signature"),
    ),
    ("bad json after a valid signature", lambda z, o: (b"{nope", headers(b"{nope")), 400, rejected("bad_json")),
    (
        "balance event without balance",
        lambda z, o: (body_of(balance_payload(balance=None)), headers(body_of(balance_payload(balance=None)))),
        400,
        rejected("bad_json"),
    ),
    ("oversized body", lambda z, o: (b"x" * 4097, headers(b"x" * 4097)), 413, rejected("body_too_large")),
    (
        "other documented payload type",
        lambda z, o: (b'{"trade_id":"t"}', headers(b'{"trade_id":"t"}', payload_type="trade.status_changed")),
        200,
        accepted("trade.status_changed"),
    ),
    (
        "undocumented payload type",
        lambda z, o: (b'{"x":1}', headers(b'{"x":1}', payload_type="brand_new.thing")),
        200,
        accepted("other"),
    ),
]


@pytest.mark.parametrize(("case", "make", "status", "expected"), MATRIX, ids=[m[0] for m in MATRIX])
async def test_matrix_status_and_counter_deltas(
    start: StartHarness,
    zh_key: rsa.RSAPrivateKey,
    other_key: rsa.RSAPrivateKey,
    case: str,
    make: Any,
    status: int,
    expected: dict[Key, float],
) -> None:
    h = await start()
    body, hdrs = make(zh_key, other_key)
    assert await h.measure(body, hdrs) == (status, expected)


async def test_rsa_header_without_configured_keys_is_a_bad_signature(
    start: StartHarness, make_config: Callable[..., Config], zh_key: rsa.RSAPrivateKey
) -> None:
    config = make_config(zerohash=ZerohashConfig(ZerohashWebhookConfig(hmac_secrets=(NEW_SECRET,))))
    h = await start(config)
    assert await h.measure(BODY, headers(secret=None, rsa_key=zh_key)) == (401, rejected("bad_signature"))


async def test_duplicate_and_swapped_notification_id_are_duplicates(start: StartHarness) -> None:
    h = await start()
    assert (await h.post(BODY, headers()))[0] == 200
    assert await h.measure(BODY, headers()) == (200, accepted(duplicate=True))
    # The notification id is not signed: a replay under a fresh id is still the same signed content.
    assert await h.measure(BODY, headers(notification_id="n-999")) == (200, accepted(duplicate=True))
    result = await scrape(h.exporter.metrics_url)
    assert (
        result.value(
            "zerohash_balance_movements_total", account_type="available", asset="USDC.ETH", movement_type="deposit"
        )
        == 1
    )


async def test_replay_after_a_restart_is_a_duplicate(
    start: StartHarness, make_config: Callable[..., Config], zh_config: ZerohashConfig
) -> None:
    config = make_config(zerohash=zh_config)
    first = await start(config)
    assert (await first.post(BODY, headers()))[0] == 200
    await first.exporter.stop()
    second = await start(config)
    assert await second.measure(BODY, headers()) == (200, accepted(duplicate=True))
    result = await scrape(second.exporter.metrics_url)
    assert (
        result.value(
            "zerohash_balance",
            account_group="PLATX1",
            account_label="general",
            account_type="available",
            asset="USDC.ETH",
        )
        == 250.5
    )
    assert (
        result.value(
            "zerohash_balance_movements_total", account_type="available", asset="USDC.ETH", movement_type="deposit"
        )
        == 0
    )


async def test_counters_start_at_zero(start: StartHarness) -> None:
    h = await start()
    result = await scrape(h.exporter.metrics_url)
    for payload_type in (*PAYLOAD_TYPES, "other"):
        assert result.value("zerohash_webhooks_received_total", payload_type=payload_type) == 0
        assert result.value("zerohash_webhooks_verified_total", payload_type=payload_type) == 0
    for reason in REJECT_REASONS:
        assert result.value("zerohash_webhooks_rejected_total", reason=reason) == 0
    assert result.value("zerohash_webhooks_duplicate_total") == 0
    # Before any delivery the feed is "last heard of" when the state file started watching it (the
    # exporter's clock, fixed at NOW here), so WhitebitZerohashFeedSilent covers a feed that never delivers.
    assert result.samples("zerohash_webhook_last_received_timestamp_seconds") == [({}, NOW)]


async def test_the_last_delivery_time_survives_a_restart(
    start: StartHarness, make_config: Callable[..., Config], zh_config: ZerohashConfig
) -> None:
    # WhitebitZerohashFeedSilent must not be reset (or fired) by a restart: the time comes from the state file.
    config = make_config(zerohash=zh_config, max_body_bytes=4096)
    clock = Clock()
    first = await start(config, clock)
    clock.now = NOW + 30
    assert (await first.post(BODY, headers()))[0] == 200
    await first.exporter.stop()
    clock.now = NOW + 3600
    second = await start(config, clock)
    result = await scrape(second.exporter.metrics_url)
    assert result.samples("zerohash_webhook_last_received_timestamp_seconds") == [({}, NOW + 30)]


async def test_the_clock_moving_makes_an_old_delivery_late_then_stale(start: StartHarness) -> None:
    clock = Clock()
    h = await start(clock=clock)
    clock.now = NOW + MAX_AGE
    assert await h.measure(BODY, headers()) == (401, rejected("stale_timestamp"))
    clock.now = NOW - TOLERANCE - 1  # our clock behind the sender's: the delivery is from the future
    assert await h.measure(BODY, headers()) == (401, rejected("stale_timestamp"))
    clock.now = NOW + TOLERANCE
    assert await h.measure(BODY, headers()) == (200, accepted())
    other = body_of(balance_payload(balance="251"))
    clock.now = NOW + TOLERANCE + 1
    assert await h.measure(other, headers(other)) == (200, accepted(late=True))


async def test_a_late_delivery_is_accepted_once_and_its_replays_are_duplicates_then_stale(start: StartHarness) -> None:
    # The worst case of the safety argument: a body whose timestamp is `tolerance` in the future is
    # accepted at once; the dedupe remembers it for the retention from then, and its timestamp turns
    # stale before the dedupe forgets it. A replay is never accepted as new, at any time.
    clock = Clock()
    h = await start(clock=clock)
    body = body_of(balance_payload(timestamp=TS_MS + int(TOLERANCE * 1000)))
    hdrs = headers(body, timestamp=str(TS_MS + int(TOLERANCE * 1000)))
    assert await h.measure(body, hdrs) == (200, accepted())
    outcomes = []
    for offset in (TOLERANCE + 1, 86400.0, MAX_AGE, RETENTION - 1, RETENTION, RETENTION + 86400.0):
        clock.now = NOW + offset
        status, delta = await h.measure(body, {**hdrs, "x-zh-hook-notification-id": f"n-{offset}"})
        outcomes.append(status)
        assert delta in (accepted(duplicate=True), rejected("stale_timestamp")), offset
    assert outcomes == [200, 200, 200, 401, 401, 401]
    # The hourly housekeeping, with an inbox retention no longer than the dedupe window: the row goes.
    assert h.exporter.state.purge_inbox(RETENTION) == 1
    assert not h.exporter.state.delivery_seen("zerohash", "", hashlib.sha256(body).hexdigest())
    assert await h.measure(body, hdrs) == (401, rejected("stale_timestamp"))
    result = await scrape(h.exporter.metrics_url)
    assert (
        result.value(
            "zerohash_balance_movements_total", account_type="available", asset="USDC.ETH", movement_type="deposit"
        )
        == 1
    )


async def test_a_late_duplicate_is_a_duplicate_not_late(start: StartHarness) -> None:
    clock = Clock()
    h = await start(clock=clock)
    assert await h.measure(BODY, headers()) == (200, accepted())
    clock.now = NOW + 3600
    assert await h.measure(BODY, headers(notification_id="n-2")) == (200, accepted(duplicate=True))


def test_a_tolerance_that_leaves_no_room_in_the_retention_is_refused(tmp_path: Path) -> None:
    store = StateStore.open(tmp_path / "state.db")
    try:
        config = ZerohashWebhookConfig(hmac_secrets=(NEW_SECRET,), timestamp_tolerance=(RETENTION - LATE_MARGIN) / 2)
        with pytest.raises(ValueError, match="leaves no room in the 604800 s dedupe retention"):
            ZerohashReceiver(config, store, GroupCommitter(store), on_stored=lambda: None)
        config = ZerohashWebhookConfig(hmac_secrets=(NEW_SECRET,), timestamp_tolerance=86400.0)
        ZerohashReceiver(config, store, GroupCommitter(store), on_stored=lambda: None)
    finally:
        store.close()


async def test_a_retry_older_than_the_tolerance_from_the_simulator_is_accepted_once(start: StartHarness) -> None:
    # Zero Hash retries while the receiver is unreachable; the queued, backed-off retries keep the
    # original timestamp (the simulator's default), so the one that finally gets through is late.
    clock = Clock()
    h = await start(clock=clock)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}/webhooks/zerohash"  # closed once the block ends
    sleep = AdvancingSleep(clock)
    # The simulator's default retry schedule: 4 fast retries, then backoff of 2, 4 and 8 minutes.
    sender = ZerohashSender(url=down, hmac_secret=NEW_SECRET, clock=clock, rng=random.Random(4), sleep=sleep)
    ledger = ZerohashLedger(clock=clock, rng=random.Random(5))
    await sender.start()
    try:
        before = await h.counters()

        def receiver_is_back() -> None:
            sender.url = h.url

        sleep.on_elapsed(TOLERANCE + 1, receiver_is_back)
        sender.send("account_balance.changed", ledger.deposit("CUST42", "USD", Decimal("70"), account_group="G1")[0])
        await wait_for(lambda: sender.stats()["delivered"] + sender.stats()["given_up"] == 1)
        (record,) = sender.history()
        assert record["outcome"] == "delivered"
        assert record["attempts"] == [None] * 6 + [200]  # no answer while down, then the 2nd backoff retry
        assert record["timestamp"] == str(int(NOW * 1000))  # the original timestamp, now 361 s old
        assert clock.now == pytest.approx(NOW + 361.0)
        assert deltas(before, await h.counters()) == accepted(late=True)

        replay = await sender.replay_last()
        assert replay is not None and replay["attempts"] == [200]
        assert deltas(before, await h.counters()) == {
            k("zerohash_webhooks_received_total", payload_type="account_balance.changed"): 2.0,
            k("zerohash_webhooks_verified_total", payload_type="account_balance.changed"): 2.0,
            k("zerohash_webhooks_late_total"): 1.0,
            k("zerohash_webhooks_duplicate_total"): 1.0,
        }
    finally:
        await sender.stop()
    result = await scrape(h.exporter.metrics_url)
    assert (
        result.value(
            "zerohash_balance", account_group="G1", account_label="general", account_type="available", asset="USD"
        )
        == 70
    )
    assert (
        result.value("zerohash_balance_movements_total", account_type="available", asset="USD", movement_type="deposit")
        == 1
    )


class AdvancingSleep:
    """A retry sleep that advances the shared clock instead of waiting, and runs a callback once it has
    advanced past a threshold (e.g. the receiver coming back)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.elapsed = 0.0
        self._pending: list[tuple[float, Callable[[], object]]] = []

    def on_elapsed(self, seconds: float, callback: Callable[[], object]) -> None:
        self._pending.append((seconds, callback))

    async def __call__(self, delay: float) -> None:
        self.elapsed += delay
        self.clock.now += delay
        for entry in [e for e in self._pending if e[0] <= self.elapsed]:
            self._pending.remove(entry)
            entry[1]()
        await asyncio.sleep(0)


def test_payload_type_labels_are_bounded() -> None:
    assert payload_type_label("trade_status_changed") == "trade_status_changed"
    assert payload_type_label("account_balance.changed ") == "other"
    assert payload_type_label(None) == "other"


async def test_replies_never_echo_secrets(
    start: StartHarness, zh_key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    h = await start()
    for _, make, _, _ in MATRIX:
        body, hdrs = make(zh_key, other_key)
        _, reply = await h.post(body, hdrs)
        for value in (OLD_SECRET, NEW_SECRET, *[v for n, v in hdrs.items() if "signature" in n]):
            assert value not in reply
