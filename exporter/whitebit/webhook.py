"""The WhiteBIT webhook receiver at ``POST /webhooks/whitebit``.

Order of checks, each rejection counted by reason (spec "Webhook behaviour", conventions W2):

1. read the raw body once, bounded by ``webhooks.max_body_bytes``  -> 413 ``body_too_large``
2. ``X-TXC-APIKEY``, ``X-TXC-PAYLOAD`` and ``X-TXC-SIGNATURE`` present  -> 401 ``missing_header``
3. the key names a configured account's webhook key  -> 401 ``unknown_key`` (account ``unknown``)
4. ``X-TXC-PAYLOAD`` is base64 of the body, byte for byte  -> 401 ``payload_mismatch``
5. the HMAC-SHA512 hex of the payload under any configured secret equals the signature, compared
   in constant time against every secret  -> 401 ``bad_signature``
6. only now the JSON: an object with a string ``id``, a string ``method`` and an object ``params``
   (and, for a deposit or withdrawal, an amount and an asset)  -> 400 ``bad_json``
7. in ONE state transaction: remember the signed ``id`` (seen before -> 200, counted as a duplicate,
   nothing else done), raise the account's highest nonce (a nonce not above it is a regression:
   counted and accepted under ``count``, 409 ``nonce_regression`` and nothing stored under
   ``strict``; a missing nonce is fine), and advance the transfer. Committed before the 200 (with
   the deliveries that arrived at the same time, see :mod:`exporter.webhooks.commit`), so a
   delivery answered 200 survives a kill of the process; a failed write answers 503 so WhiteBIT
   retries.

``deposit.update`` (the old spelling) counts as ``deposit.updated``; an undocumented method answers
200 and counts as ``other``. A delivery rejected before its JSON was read counts as method
``other`` in ``whitebit_webhooks_received_total`` (its method cannot be trusted yet). Nothing a
sender sent is echoed back, and logs show at most a 4-character prefix of a key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from exporter.config.schema import Config, WhitebitAccountConfig
from exporter.core.logs import redact
from exporter.core.metrics import (
    OTHER,
    UNKNOWN_ACCOUNT,
    WHITEBIT_REJECT_REASONS,
    WHITEBIT_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS,
    WHITEBIT_WEBHOOK_METHODS,
    WHITEBIT_WEBHOOK_NONCE_REGRESSIONS,
    WHITEBIT_WEBHOOKS_DUPLICATE,
    WHITEBIT_WEBHOOKS_RECEIVED,
    WHITEBIT_WEBHOOKS_REJECTED,
    WHITEBIT_WEBHOOKS_VERIFIED,
)
from exporter.core.state import DEFAULT_DELIVERY_TTL, StateError, StateStore
from exporter.webhooks.commit import GroupCommitter, RejectionLog
from exporter.whitebit.signing import (
    HEADER_APIKEY,
    HEADER_PAYLOAD,
    HEADER_SIGNATURE,
    payload_matches_body,
)
from exporter.whitebit.transfers import (
    WEBHOOK_TRANSFER_EVENTS,
    ObservationError,
    TransferBook,
    TransferObservation,
    TransferUpdate,
    observation_from_webhook,
)

log = logging.getLogger(__name__)

PATH = "/webhooks/whitebit"
PROVIDER = "whitebit"
#: The old spelling WhiteBIT used from March 2022 to December 2024.
METHOD_ALIASES = {"deposit.update": "deposit.updated"}
#: How often expired delivery ids and old final transfers are purged (from inside a delivery).
PURGE_INTERVAL = 3600.0
#: Final transfers are kept this long so late deliveries and history rows are recognized as known.
FINAL_TRANSFER_RETENTION = 30 * 86400.0


def method_label(method: Any) -> str:
    """The bounded ``method`` label: a documented method (old spelling mapped), else ``other``."""
    if not isinstance(method, str):
        return OTHER
    method = METHOD_ALIASES.get(method, method)
    return method if method in WHITEBIT_WEBHOOK_METHODS else OTHER


class WhitebitWebhookStats:
    """The receiver's counters, per account (``unknown`` for an unconfigured key); all start at 0."""

    def __init__(self, accounts: Sequence[str]) -> None:
        self.accounts = tuple(dict.fromkeys(accounts))
        methods = (*WHITEBIT_WEBHOOK_METHODS, OTHER)
        self.received = {(a, m): 0 for a in (*self.accounts, UNKNOWN_ACCOUNT) for m in methods}
        self.verified = {(a, m): 0 for a in self.accounts for m in methods}
        self.rejected = {(a, r): 0 for a in (*self.accounts, UNKNOWN_ACCOUNT) for r in WHITEBIT_REJECT_REASONS}
        self.duplicate = dict.fromkeys(self.accounts, 0)
        self.nonce_regressions = dict.fromkeys(self.accounts, 0)
        self.last_received: dict[str, float] = {}

    @staticmethod
    def bump(counts: dict[Any, int], key: Any) -> None:
        counts[key] = counts.get(key, 0) + 1


class WhitebitWebhookCollector(Collector):
    """Renders :class:`WhitebitWebhookStats`.

    ::

        whitebit_webhooks_received_total{account="main",method="deposit.processed"} 3.0
        whitebit_webhooks_rejected_total{account="unknown",reason="unknown_key"} 1.0
    """

    def __init__(self, stats: WhitebitWebhookStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats
        received = CounterMetricFamily(
            WHITEBIT_WEBHOOKS_RECEIVED,
            "WhiteBIT webhook deliveries that reached the receiver (method other until verified).",
            labels=["account", "method"],
        )
        verified = CounterMetricFamily(
            WHITEBIT_WEBHOOKS_VERIFIED,
            "WhiteBIT webhook deliveries whose payload and signature checks passed and whose JSON parsed.",
            labels=["account", "method"],
        )
        rejected = CounterMetricFamily(
            WHITEBIT_WEBHOOKS_REJECTED, "WhiteBIT webhook deliveries rejected, by reason.", labels=["account", "reason"]
        )
        duplicate = CounterMetricFamily(
            WHITEBIT_WEBHOOKS_DUPLICATE,
            "WhiteBIT webhook deliveries whose signed id was seen before (answered 200, not processed).",
            labels=["account"],
        )
        regressions = CounterMetricFamily(
            WHITEBIT_WEBHOOK_NONCE_REGRESSIONS,
            "Verified WhiteBIT deliveries whose nonce was not above the highest seen.",
            labels=["account"],
        )
        last = GaugeMetricFamily(
            WHITEBIT_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS,
            "When the last verified WhiteBIT webhook delivery was received (absent before the first).",
            labels=["account"],
        )
        for (account, method), value in s.received.items():
            received.add_metric([account, method], value)
        for (account, method), value in s.verified.items():
            verified.add_metric([account, method], value)
        for (account, reason), value in s.rejected.items():
            rejected.add_metric([account, reason], value)
        for account, value in s.duplicate.items():
            duplicate.add_metric([account], value)
        for account, value in s.nonce_regressions.items():
            regressions.add_metric([account], value)
        for account, value in s.last_received.items():
            last.add_metric([account], value)
        yield from (received, verified, rejected, duplicate, regressions, last)


class _Rejection(NamedTuple):
    # A NamedTuple, not a frozen dataclass: a flood of forged deliveries builds one per request.
    status: int
    reason: str
    account: str
    method: str = OTHER
    detail: str = ""


class _NonceRejected(Exception):
    """Raised inside the delivery transaction to roll it back under the strict nonce policy."""


class WhitebitReceiver:
    """Verifies, deduplicates and records WhiteBIT webhook deliveries for every configured account."""

    path = PATH

    def __init__(
        self,
        config: Config,
        store: StateStore,
        transfers: TransferBook,
        *,
        clock: Callable[[], float] = time.time,
        delivery_ttl: float = DEFAULT_DELIVERY_TTL,
        committer: GroupCommitter | None = None,
    ) -> None:
        self._store = store
        self._committer = committer if committer is not None else GroupCommitter(store)
        self._rejection_log = RejectionLog(log)
        self._transfers = transfers
        self._clock = clock
        self._ttl = delivery_ttl
        self._by_key: dict[str, list[WhitebitAccountConfig]] = {}
        # Keyed HMAC-SHA512 states, one per secret, prepared once: a delivery copies one instead
        # of hashing the key again (the same digest as signing.sign_payload).
        self._macs: dict[str, tuple[Any, ...]] = {}
        for account in config.whitebit:
            if account.webhook is not None:
                self._by_key.setdefault(account.webhook.public_key, []).append(account)
                self._macs[account.name] = tuple(
                    hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha512) for secret in account.webhook.secrets
                )
        self.stats = WhitebitWebhookStats([a.name for a in config.whitebit if a.webhook is not None])
        self.collector = WhitebitWebhookCollector(self.stats)
        self._next_purge = 0.0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Verify and record one delivery; see the module docstring for the order of checks."""
        key = request.headers.get(HEADER_APIKEY)
        candidates = self._by_key.get(key) if key else None
        label = candidates[0].name if candidates else UNKNOWN_ACCOUNT
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._reject(_Rejection(413, "body_too_large", label), request)
        # The checks before the signature's are what a flood of forged deliveries costs: they
        # return their rejection instead of raising it.
        headers = request.headers
        payload = headers.get(HEADER_PAYLOAD)
        signature = headers.get(HEADER_SIGNATURE)
        if not key or not payload or not signature:
            return self._reject(_Rejection(401, "missing_header", label), request)
        if candidates is None:
            return self._reject(_Rejection(401, "unknown_key", UNKNOWN_ACCOUNT, detail=redact(key)), request)
        if not payload_matches_body(body, payload):
            return self._reject(_Rejection(401, "payload_mismatch", label), request)
        account = self._verify(candidates, payload, signature)
        if account is None:
            return self._reject(_Rejection(401, "bad_signature", label), request)
        try:
            return await self._process(account, body)
        except _RejectedDelivery as rejected:
            return self._reject(rejected.rejection, request)

    async def _process(self, account: WhitebitAccountConfig, body: bytes) -> web.StreamResponse:
        name = account.name
        delivery_id, method, params = _parse(body, name)
        now = self._clock()
        observation = self._observation(name, method, params, now)
        nonce = _nonce(params.get("nonce"))
        self.stats.bump(self.stats.verified, (name, method))
        self._purge_if_due(now)
        assert account.webhook is not None
        strict = account.webhook.nonce_policy == "strict"

        def record() -> tuple[bool, bool, TransferUpdate | None]:
            # Runs inside the batch transaction: dedupe, nonce and transfer commit together.
            fresh = self._store.remember_delivery(PROVIDER, name, delivery_id, ttl=self._ttl)
            if not fresh:
                return False, False, None
            regression = False
            if nonce is not None:
                previous = self._store.raise_nonce(name, nonce)
                regression = previous is not None and nonce <= previous
                if regression and strict:
                    raise _NonceRejected
            update = self._transfers.stage(observation) if observation is not None else None
            return True, regression, update

        def committed(result: tuple[bool, bool, TransferUpdate | None]) -> None:
            fresh, regression, update = result
            self.stats.bump(self.stats.received, (name, method))
            self.stats.last_received[name] = now
            if not fresh:
                self.stats.bump(self.stats.duplicate, name)
                log.info("duplicate webhook ignored", extra={"provider": PROVIDER, "account": name, "method": method})
                return
            if regression:
                self.stats.bump(self.stats.nonce_regressions, name)
                log.info(
                    "webhook nonce regression accepted (nonce_policy count)",
                    extra={"provider": PROVIDER, "account": name, "method": method},
                )
            if update is not None:
                self._transfers.apply(update)
            if method == OTHER:
                log.info(
                    "webhook with an undocumented method acknowledged", extra={"provider": PROVIDER, "account": name}
                )

        try:
            fresh, _, _ = await self._committer.run(record, committed)
        except _NonceRejected:
            self.stats.bump(self.stats.nonce_regressions, name)
            raise _RejectedDelivery(_Rejection(409, "nonce_regression", name, method)) from None
        except StateError as exc:
            self.stats.bump(self.stats.received, (name, method))
            log.error(
                "webhook not recorded; answering 503 so it is retried",
                extra={"provider": PROVIDER, "account": name, "method": method, "error": str(exc)},
            )
            return _reply(503, "unavailable")
        return _reply(200, "ok" if fresh else "duplicate")

    def _verify(
        self, candidates: list[WhitebitAccountConfig], payload: str, signature: str
    ) -> WhitebitAccountConfig | None:
        # Every candidate's every secret is tried and compared in constant time, so timing does
        # not tell which one matched (as signing.signature_matches, with prepared keys).
        presented = signature.strip().lower().encode("utf-8", "replace")
        data = payload.encode("ascii")  # base64 of the body: checked before this
        matched: WhitebitAccountConfig | None = None
        for account in candidates:
            for base in self._macs[account.name]:
                mac = base.copy()
                mac.update(data)
                if hmac.compare_digest(mac.hexdigest().encode("ascii"), presented) and matched is None:
                    matched = account
        return matched

    def _observation(self, account: str, method: str, params: dict[str, Any], now: float) -> TransferObservation | None:
        if method not in WEBHOOK_TRANSFER_EVENTS:
            return None
        try:
            return observation_from_webhook(account, method, params, now)
        except ObservationError as exc:
            raise _RejectedDelivery(_Rejection(400, "bad_json", account, method, detail=str(exc))) from None

    def _purge_if_due(self, now: float) -> None:
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_INTERVAL
        try:
            deliveries = self._store.purge_expired_deliveries()
            transfers = self._transfers.purge_final(now - FINAL_TRANSFER_RETENTION)
        except StateError as exc:
            log.warning("purging old webhook state failed", extra={"error": str(exc)})
            return
        if deliveries or transfers:
            log.info("purged old webhook state", extra={"delivery_ids": deliveries, "final_transfers": transfers})

    def _reject(self, rejection: _Rejection, request: web.Request) -> web.Response:
        self.stats.bump(self.stats.received, (rejection.account, rejection.method))
        self.stats.bump(self.stats.rejected, (rejection.account, rejection.reason))

        def describe() -> dict[str, Any]:
            fields: dict[str, Any] = {
                "provider": PROVIDER,
                "account": rejection.account,
                "reason": rejection.reason,
                "status": rejection.status,
                "remote": request.remote,
            }
            if rejection.detail:
                fields["detail"] = rejection.detail
            return fields

        self._rejection_log.rejected_lazily((PROVIDER, rejection.account, rejection.reason), describe)
        return _reply(rejection.status, rejection.reason)


def _reply(status: int, word: str) -> web.Response:
    """A small fixed JSON answer; it never echoes anything the sender sent."""
    return web.Response(status=status, body=_REPLIES[word], headers=_JSON)


_JSON = {"Content-Type": "application/json"}


_REPLIES = {
    word: json.dumps(
        {"status": word} if word in ("ok", "duplicate") else {"status": "rejected", "reason": word}
    ).encode()
    for word in ("ok", "duplicate", *WHITEBIT_REJECT_REASONS)
}
_REPLIES["unavailable"] = b'{"status":"error","reason":"unavailable"}'


class _RejectedDelivery(Exception):
    def __init__(self, rejection: _Rejection) -> None:
        super().__init__(rejection.reason)
        self.rejection = rejection


def _parse(body: bytes, account: str) -> tuple[str, str, dict[str, Any]]:
    """The envelope's ``id``, bounded method label and ``params``; a 400 ``bad_json`` otherwise."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise _RejectedDelivery(_Rejection(400, "bad_json", account, detail="not JSON")) from None
    if not isinstance(document, dict):
        raise _RejectedDelivery(_Rejection(400, "bad_json", account, detail="not a JSON object"))
    method = method_label(document.get("method"))
    delivery_id = document.get("id")
    params = document.get("params")
    if not isinstance(document.get("method"), str):
        raise _RejectedDelivery(_Rejection(400, "bad_json", account, detail="no method"))
    if not isinstance(delivery_id, str) or not delivery_id or len(delivery_id) > 256:
        raise _RejectedDelivery(_Rejection(400, "bad_json", account, method, detail="no usable id"))
    if not isinstance(params, dict):
        raise _RejectedDelivery(_Rejection(400, "bad_json", account, method, detail="params is not an object"))
    return delivery_id, method, params


def _nonce(value: Any) -> int | None:
    """The nonce as an integer; None when missing, null or not an integer (all accepted)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else None
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, str) and value.isdigit() and len(value) < 19:
        return int(value)
    return None
