"""The Zero Hash webhook receiver at ``POST /webhooks/zerohash``.

Order of checks, each rejection counted by reason:

1. read the raw body once, bounded by ``webhooks.max_body_bytes``  -> 413 ``body_too_large``
2. ``x-zh-hook-notification-id``, ``x-zh-hook-payload-type`` and at least one signature header;
   a timestamped signature without ``x-zh-hook-timestamp`` counts as missing  -> 401 ``missing_header``
3. a signature verifies, tried in this order with every configured key: ``x-zh-hook-signature``
   (HMAC-SHA256 of body + timestamp), ``x-zh-hook-rsa-signature`` (RSA over body + timestamp, PSS
   or PKCS#1 v1.5), then the legacy ``x-zh-hook-signature-256`` and ``x-zh-hook-rsa-signature-256``
   over the body alone  -> 401 ``bad_signature``
4. when ``x-zh-hook-timestamp`` is present it is within ``timestamp_tolerance`` of the clock in
   either direction (milliseconds, or seconds by magnitude)  -> 401 ``stale_timestamp``. The
   signature is checked first so that ``stale_timestamp`` means "a genuine delivery, replayed or
   delayed", while anything forged counts as ``bad_signature``.
5. the body is a JSON object (an ``account_balance.changed`` one with the fields it must carry)
   -> 400 ``bad_json``
6. in ONE state transaction: remember the delivery and, for a balance, store it unless a newer
   one is held; committed before the 200 (group commit, see :mod:`exporter.webhooks.commit`; a
   failed write answers 503).

**Dedupe key.** ``x-zh-hook-notification-id`` is not covered by any signature, so a replayed body
could come with a fresh id. The receiver therefore remembers the SHA-256 of the signed content
(the raw body, which every signature scheme covers; the timestamp is left out because Zero Hash
may regenerate it on a retry): a redelivery with the same notification id and body, and a replay
under a swapped id, are both duplicates (200, counted, not processed twice).

Other payload types are verified, counted by ``payload_type`` (documented names or ``other``) and
acknowledged with 200.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config.schema import ZerohashWebhookConfig
from exporter.core.metrics import (
    OTHER,
    ZEROHASH_PAYLOAD_TYPES,
    ZEROHASH_REJECT_REASONS,
    ZEROHASH_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS,
    ZEROHASH_WEBHOOKS_DUPLICATE,
    ZEROHASH_WEBHOOKS_RECEIVED,
    ZEROHASH_WEBHOOKS_REJECTED,
    ZEROHASH_WEBHOOKS_VERIFIED,
)
from exporter.core.state import DEFAULT_DELIVERY_TTL, StateError, StateStore
from exporter.webhooks.commit import GroupCommitter, RejectionLog
from exporter.zerohash.balances import (
    BalanceEvent,
    BalancePayloadError,
    ZerohashBalances,
    parse_balance_event,
)
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
    timestamp_to_seconds,
)

log = logging.getLogger(__name__)

PATH = "/webhooks/zerohash"
PROVIDER = "zerohash"
ACCOUNT_BALANCE_CHANGED = "account_balance.changed"
_SIGNATURE_HEADERS = (HEADER_SIGNATURE, HEADER_RSA_SIGNATURE, HEADER_SIGNATURE_LEGACY, HEADER_RSA_SIGNATURE_LEGACY)
_PEM_BLOCK = re.compile(rb"-----BEGIN (RSA PUBLIC KEY|PUBLIC KEY)-----.+?-----END \1-----", re.DOTALL)
PURGE_INTERVAL = 3600.0


def payload_type_label(value: str | None) -> str:
    """The bounded ``payload_type`` label: a documented name, else ``other``."""
    return value if value in ZEROHASH_PAYLOAD_TYPES else OTHER


def load_rsa_public_keys(path: str | Path) -> list[rsa.RSAPublicKey]:
    """Every RSA public key in a PEM file (``BEGIN PUBLIC KEY`` or ``BEGIN RSA PUBLIC KEY`` blocks).

    The config loader has already validated the file; a block that does not load raises ValueError.
    """
    content = Path(path).read_bytes()
    keys: list[rsa.RSAPublicKey] = []
    for match in _PEM_BLOCK.finditer(content):
        try:
            key = serialization.load_pem_public_key(match.group(0))
        except UnsupportedAlgorithm as exc:
            raise ValueError(f"{path}: unsupported key: {exc}") from exc
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError(f"{path}: a PEM block is not an RSA public key")
        keys.append(key)
    return keys


class ZerohashWebhookStats:
    """The receiver's counters; every label value starts at 0."""

    def __init__(self) -> None:
        types = (*ZEROHASH_PAYLOAD_TYPES, OTHER)
        self.received = dict.fromkeys(types, 0)
        self.verified = dict.fromkeys(types, 0)
        self.rejected = dict.fromkeys(ZEROHASH_REJECT_REASONS, 0)
        self.duplicate = 0
        self.last_received: float | None = None


class ZerohashWebhookCollector(Collector):
    """Renders :class:`ZerohashWebhookStats`.

    ::

        zerohash_webhooks_received_total{payload_type="account_balance.changed"} 12.0
        zerohash_webhooks_rejected_total{reason="stale_timestamp"} 1.0
    """

    def __init__(self, stats: ZerohashWebhookStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        received = CounterMetricFamily(
            ZEROHASH_WEBHOOKS_RECEIVED,
            "Zero Hash webhook deliveries that reached the receiver.",
            labels=["payload_type"],
        )
        verified = CounterMetricFamily(
            ZEROHASH_WEBHOOKS_VERIFIED,
            "Zero Hash webhook deliveries whose signature and timestamp checks passed and whose JSON parsed.",
            labels=["payload_type"],
        )
        rejected = CounterMetricFamily(
            ZEROHASH_WEBHOOKS_REJECTED, "Zero Hash webhook deliveries rejected, by reason.", labels=["reason"]
        )
        duplicate = CounterMetricFamily(
            ZEROHASH_WEBHOOKS_DUPLICATE,
            "Zero Hash webhook deliveries whose signed content was seen before (answered 200, not processed).",
        )
        last = GaugeMetricFamily(
            ZEROHASH_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS,
            "When the last verified Zero Hash webhook delivery was received (absent before the first).",
        )
        for payload_type, value in s.received.items():
            received.add_metric([payload_type], value)
        for payload_type, value in s.verified.items():
            verified.add_metric([payload_type], value)
        for reason, value in s.rejected.items():
            rejected.add_metric([reason], value)
        duplicate.add_metric([], s.duplicate)
        yield from (received, verified, rejected, duplicate)
        if s.last_received is not None:
            last.add_metric([], s.last_received)
            yield last


def _reply(status: int, word: str) -> web.Response:
    """A small fixed JSON answer; it never echoes anything the sender sent."""
    return web.Response(status=status, body=_REPLIES[word], headers=_JSON)


_JSON = {"Content-Type": "application/json"}


_REPLIES = {
    word: json.dumps(
        {"status": word} if word in ("ok", "duplicate") else {"status": "rejected", "reason": word}
    ).encode()
    for word in ("ok", "duplicate", *ZEROHASH_REJECT_REASONS)
}
_REPLIES["unavailable"] = b'{"status":"error","reason":"unavailable"}'


class _Rejected(Exception):
    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail


class ZerohashReceiver:
    """Verifies, deduplicates and applies Zero Hash webhook deliveries."""

    path = PATH

    def __init__(
        self,
        config: ZerohashWebhookConfig,
        store: StateStore,
        balances: ZerohashBalances,
        *,
        clock: Callable[[], float] = time.time,
        rsa_public_keys: Sequence[rsa.RSAPublicKey] | None = None,
        delivery_ttl: float = DEFAULT_DELIVERY_TTL,
        committer: GroupCommitter | None = None,
    ) -> None:
        self._committer = committer if committer is not None else GroupCommitter(store)
        self._rejection_log = RejectionLog(log)
        self._secrets = tuple(config.hmac_secrets)
        if rsa_public_keys is None:
            rsa_public_keys = load_rsa_public_keys(config.rsa_public_keys_file) if config.rsa_public_keys_file else []
        self._rsa_keys = tuple(rsa_public_keys)
        self._tolerance = config.timestamp_tolerance
        self._store = store
        self._balances = balances
        self._clock = clock
        self._ttl = delivery_ttl
        self.stats = ZerohashWebhookStats()
        self.collector = ZerohashWebhookCollector(self.stats)
        self._next_purge = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Verify and record one delivery; see the module docstring for the order of checks."""
        payload_type = payload_type_label(request.headers.get(HEADER_PAYLOAD_TYPE))
        self.stats.received[payload_type] += 1
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise _Rejected(413, "body_too_large") from None
            return await self._process(request, payload_type, body)
        except _Rejected as rejected:
            self.stats.rejected[rejected.reason] = self.stats.rejected.get(rejected.reason, 0) + 1

            def describe(rejected: _Rejected = rejected) -> dict[str, Any]:
                fields: dict[str, Any] = {
                    "provider": PROVIDER,
                    "payload_type": payload_type,
                    "reason": rejected.reason,
                    "status": rejected.status,
                    "remote": request.remote,
                }
                if rejected.detail:
                    fields["detail"] = rejected.detail
                return fields

            # Zero Hash has no account: the rate limit is per (provider, reason), as before.
            self._rejection_log.rejected_lazily((PROVIDER, "", rejected.reason), describe)
            return _reply(rejected.status, rejected.reason)

    async def _process(self, request: web.Request, payload_type: str, body: bytes) -> web.StreamResponse:
        headers = request.headers
        notification_id = headers.get(HEADER_NOTIFICATION_ID)
        timestamp = headers.get(HEADER_TIMESTAMP)
        signatures = {name: headers.get(name) for name in _SIGNATURE_HEADERS}
        timestamped = signatures[HEADER_SIGNATURE] or signatures[HEADER_RSA_SIGNATURE]
        legacy = signatures[HEADER_SIGNATURE_LEGACY] or signatures[HEADER_RSA_SIGNATURE_LEGACY]
        if not notification_id or not headers.get(HEADER_PAYLOAD_TYPE) or not (timestamped or legacy):
            raise _Rejected(401, "missing_header")
        if timestamped and not timestamp and not legacy:
            raise _Rejected(401, "missing_header", "timestamped signature without x-zh-hook-timestamp")
        if not self._verify(body, timestamp, signatures):
            raise _Rejected(401, "bad_signature")
        now = self._clock()
        if timestamp is not None and not self._fresh(timestamp, now):
            raise _Rejected(401, "stale_timestamp")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _Rejected(400, "bad_json", "not JSON") from None
        if not isinstance(document, dict):
            raise _Rejected(400, "bad_json", "not a JSON object")
        event: BalanceEvent | None = None
        if payload_type == ACCOUNT_BALANCE_CHANGED:
            try:
                event = parse_balance_event(document)
            except BalancePayloadError as exc:
                raise _Rejected(400, "bad_json", str(exc)) from None
        self.stats.verified[payload_type] += 1
        self._purge_if_due(now)
        digest = hashlib.sha256(body).hexdigest()

        def record() -> tuple[bool, bool]:
            # Runs inside the batch transaction: dedupe and balance commit together.
            fresh = self._store.remember_delivery(PROVIDER, "", digest, ttl=self._ttl)
            applied = fresh and event is not None and self._store.apply_zerohash_balance(event.balance)
            return fresh, applied

        def committed(result: tuple[bool, bool]) -> None:
            fresh, applied = result
            self.stats.last_received = now
            if not fresh:
                self.stats.duplicate += 1
                log.info("duplicate webhook ignored", extra={"provider": PROVIDER, "payload_type": payload_type})
                return
            if event is not None:
                b = event.balance
                self._balances.count_movements(b.account_type, b.asset, event.movement_types)
                if applied:
                    self._balances.apply(b)
                else:
                    log.info("older balance event not applied", extra={"provider": PROVIDER, "asset": b.asset})

        try:
            fresh, _ = await self._committer.run(record, committed)
        except StateError as exc:
            log.error(
                "webhook not recorded; answering 503 so it is retried",
                extra={"provider": PROVIDER, "payload_type": payload_type, "error": str(exc)},
            )
            return _reply(503, "unavailable")
        return _reply(200, "ok" if fresh else "duplicate")

    def _verify(self, body: bytes, timestamp: str | None, signatures: dict[str, str | None]) -> bool:
        sig, rsa_sig = signatures[HEADER_SIGNATURE], signatures[HEADER_RSA_SIGNATURE]
        legacy, rsa_legacy = signatures[HEADER_SIGNATURE_LEGACY], signatures[HEADER_RSA_SIGNATURE_LEGACY]
        if timestamp:
            if sig and self._secrets and hmac_matches(self._secrets, body, timestamp, sig) is not None:
                return True
            if rsa_sig and self._rsa_keys and rsa_matches(self._rsa_keys, body, timestamp, rsa_sig) is not None:
                return True
        if legacy and self._secrets and hmac_matches(self._secrets, body, None, legacy) is not None:
            return True
        return bool(rsa_legacy and self._rsa_keys and rsa_matches(self._rsa_keys, body, None, rsa_legacy) is not None)

    def _fresh(self, timestamp: str, now: float) -> bool:
        try:
            seconds = timestamp_to_seconds(timestamp.strip())
        except (ValueError, OverflowError):
            return False
        return math.isfinite(seconds) and abs(now - seconds) <= self._tolerance

    def _purge_if_due(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL
        try:
            self._store.purge_expired_deliveries()
        except StateError as exc:
            log.warning("purging old webhook state failed", extra={"error": str(exc)})
