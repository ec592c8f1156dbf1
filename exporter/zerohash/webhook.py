"""The Zero Hash webhook receiver at ``POST /webhooks/zerohash``.

Order of checks, each rejection counted by reason:

1. read the raw body once, bounded by ``webhooks.max_body_bytes``  -> 413 ``body_too_large``; a
   body that cannot be read (the client went away, a broken ``Content-Encoding``)  -> 400
   ``unreadable_body``
2. ``x-zh-hook-notification-id``, ``x-zh-hook-payload-type`` and at least one signature header;
   a timestamped signature without ``x-zh-hook-timestamp`` counts as missing  -> 401 ``missing_header``
3. a signature verifies, tried in this order with every configured key: ``x-zh-hook-signature``
   (HMAC-SHA256 of body + timestamp), ``x-zh-hook-rsa-signature`` (RSA over body + timestamp, PSS
   or PKCS#1 v1.5), then the legacy ``x-zh-hook-signature-256`` and ``x-zh-hook-rsa-signature-256``
   over the body alone  -> 401 ``bad_signature``; verified only by a legacy one while those are
   refused (see "Downgrades" below)  -> 401 ``legacy_signature_refused``
4. when ``x-zh-hook-timestamp`` is present (milliseconds, or seconds by magnitude) it is at most
   ``timestamp_tolerance`` ahead of the clock and younger than the dedupe retention less the
   tolerance and :data:`LATE_MARGIN` (see "Late retries" below)  -> 401 ``stale_timestamp``. The
   signature is checked first so that ``stale_timestamp`` means "a genuine delivery, replayed or
   delayed", while anything forged counts as ``bad_signature``.
5. the body is a JSON object nested at most 32 deep (an ``account_balance.changed`` one with the
   fields it must carry, within the bounds of :mod:`exporter.webhooks.bounds`)  -> 400 ``bad_json``
6. in ONE state transaction: store the delivery in the inbox as received (which is also its
   dedupe record, see "Dedupe key" below) and the downgrade marker; committed before the 200
   (group commit, see :mod:`exporter.webhooks.commit`; a failed write answers 503).
7. after the answer, :class:`ZerohashDeriver` stores a balance from the inbox row when it
   supersedes the one held (see "Equal timestamps" below; :mod:`exporter.webhooks.inbox`).

**Dedupe key.** ``x-zh-hook-notification-id`` is not covered by any signature, so a replayed body
could come with a fresh id. The receiver therefore remembers the SHA-256 of the signed content
(the raw body, which every signature scheme covers; the timestamp is left out because Zero Hash
may regenerate it on a retry): a redelivery with the same notification id and body, and a replay
under a swapped id, are both duplicates (200, counted, not processed twice).

**Late retries.** Whether a retry gets a fresh ``x-zh-hook-timestamp`` is not documented, and the
queued retries back off exponentially (docs/protocol.md#zero-hash-delivery), so a genuine retry may
arrive long after ``timestamp_tolerance``. Such a delivery is accepted and counted in
``zerohash_webhooks_late_total`` when it is new, because the dedupe makes that as safe as the
tolerance window: every accepted body is remembered for the retention (``delivery_ttl``, 7 days)
from the moment it was accepted, and a timestamp is accepted only while its age is below
``delivery_ttl - timestamp_tolerance - LATE_MARGIN``. A body accepted at the earliest (its
timestamp ``timestamp_tolerance`` in the future) is still remembered when its timestamp becomes too
old, so any genuine body is accepted at most once; its replays are duplicates, and after the
retention they are ``stale_timestamp``. ``LATE_MARGIN`` covers the time between this check and the
commit of the dedupe record, and clock steps. (README.md#zero-hash says the same for operators.)

**Downgrades.** A delivery may carry the timestamped and the legacy signature side by side. Strip
the timestamp and its signature from a captured one and the legacy signature still verifies, with no
timestamp left to be stale. Under ``legacy_signature: auto`` (the default), once a delivery verified
by a timestamped signature has been accepted, remembered in the state file's cursor
(:data:`PROVIDER`, :data:`TIMESTAMPED_SEEN_CURSOR`) across restarts, a delivery verified only by a
legacy signature is refused; ``refuse`` refuses those from the start, ``accept`` never does.

**Equal timestamps.** A balance is applied when it supersedes the held one
(:func:`exporter.zerohash.balances.supersedes`: newer timestamp, then higher ``run_id``, then the
later arrival), decided by the state file's upsert itself
(:meth:`exporter.core.state.StateStore.apply_zerohash_balance`), so that deliveries for one account
in one batch transaction are ordered against each other as well.

Nothing is ever answered 500: an exception none of these steps expected is a bug of ours, answered
503 ``internal_error`` (so Zero Hash retries), counted and logged as one rate-limited line naming
the exception, without a traceback. A non-ASCII ``x-zh-hook-timestamp`` verifies nothing.

Other payload types are verified, counted by ``payload_type`` (documented names or ``other``) and
acknowledged with 200.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from exporter.config.schema import ZerohashWebhookConfig
from exporter.core.errors import exception_text
from exporter.core.metrics import (
    OTHER,
    ZEROHASH_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS,
    ZEROHASH_WEBHOOKS_DUPLICATE,
    ZEROHASH_WEBHOOKS_LATE,
    ZEROHASH_WEBHOOKS_RECEIVED,
    ZEROHASH_WEBHOOKS_REJECTED,
    ZEROHASH_WEBHOOKS_VERIFIED,
    SeriesValues,
)
from exporter.core.state import DEFAULT_DELIVERY_TTL, InboxDelivery, StateError
from exporter.core.storage import BalanceStorage, DeliveryIntake
from exporter.webhooks.bounds import MAX_JSON_DEPTH, json_depth_exceeds
from exporter.webhooks.commit import GroupCommitter
from exporter.webhooks.inbox import Applied, DeriveError
from exporter.webhooks.intake import REJECT_REASONS as SHARED_REJECT_REASONS
from exporter.webhooks.intake import RejectionLog, Replies, rejection_fields
from exporter.zerohash.balances import (
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
#: Why a delivery was rejected: the reasons both receivers share, a timestamp outside the tolerance,
#: and a delivery signed only the legacy way once that is refused (module docstring, "Downgrades").
REJECT_REASONS = (*SHARED_REJECT_REASONS, "stale_timestamp", "legacy_signature_refused")
#: Every documented Zero Hash ``x-zh-hook-payload-type`` (docs/protocol.md#zero-hash-payload-types,
#: both spellings where Zero Hash's pages disagree); anything else is ``other``.
PAYLOAD_TYPES = (
    "account_balance.changed",
    "trade.status_changed",
    "trade_status_changed",
    "deposit.status_changed",
    "participant_status_changed",
    "participant_updated",
    "payment_status_changed",
    "external_account_status_changed",
    "deposit_fund_complete",
    "asset_mover_update",
    "asset_mover_updated",
    "trade_strategy.operation.status_changed",
    "trade_strategy.execution.status_changed",
    "trade_strategy.trader.created",
    "token_signature_request",
    "token_status_update",
    "unspecified",
)
PROVIDER = "zerohash"
#: The state file's name for this feed (when it first watched it).
FEED = "zerohash_webhook"
ACCOUNT_BALANCE_CHANGED = "account_balance.changed"
_SIGNATURE_HEADERS = (HEADER_SIGNATURE, HEADER_RSA_SIGNATURE, HEADER_SIGNATURE_LEGACY, HEADER_RSA_SIGNATURE_LEGACY)
#: The headers an inbox row keeps: what identifies the delivery and every signature (with its timestamp).
_STORED_HEADERS = (HEADER_NOTIFICATION_ID, HEADER_PAYLOAD_TYPE, HEADER_TIMESTAMP, *_SIGNATURE_HEADERS)
#: The state file's cursor (account :data:`PROVIDER`) set when a timestamped signature first verified.
TIMESTAMPED_SEEN_CURSOR = "timestamped_signature_seen"
_TIMESTAMPED, _LEGACY = "timestamped", "legacy"
#: Seconds kept between the oldest accepted timestamp and the end of the dedupe retention (see "Late
#: retries" in the module docstring): room for the commit after the check, and for clock steps.
LATE_MARGIN = 3600.0


def payload_type_label(value: str | None) -> str:
    """The bounded ``payload_type`` label: a documented name, else ``other``."""
    return value if value in PAYLOAD_TYPES else OTHER


class _Rejected(Exception):
    def __init__(self, status: int, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.detail = detail


class ZerohashReceiver:
    """Verifies, deduplicates and applies Zero Hash webhook deliveries.

    ``collector`` renders its counters::

        zerohash_webhooks_received_total{payload_type="account_balance.changed"} 12.0
        zerohash_webhooks_rejected_total{reason="stale_timestamp"} 1.0
    """

    path = PATH

    def __init__(
        self,
        config: ZerohashWebhookConfig,
        store: DeliveryIntake,
        committer: GroupCommitter,
        *,
        on_stored: Callable[[], None],
        clock: Callable[[], float] = time.time,
        delivery_ttl: float = DEFAULT_DELIVERY_TTL,
    ) -> None:
        self._committer = committer
        self._rejection_log = RejectionLog(log)
        self._replies = Replies(REJECT_REASONS)
        self._secrets = config.hmac_secrets
        self._rsa_keys = config.rsa_public_keys
        self._tolerance = config.timestamp_tolerance
        # The oldest timestamp age still accepted: a body accepted up to `tolerance` early is still
        # remembered by the dedupe when its timestamp passes this age (module docstring, "Late retries").
        self._max_age = delivery_ttl - config.timestamp_tolerance - LATE_MARGIN
        if not self._tolerance < self._max_age:
            raise ValueError(
                f"timestamp_tolerance {self._tolerance:.0f} s leaves no room in the {delivery_ttl:.0f} s dedupe"
                f" retention: it must be below {(delivery_ttl - LATE_MARGIN) / 2:.0f} s"
            )
        self._store = store
        self._on_stored = on_stored
        self._clock = clock
        self._ttl = delivery_ttl
        self._legacy_policy = config.legacy_signature
        # Remembered across restarts, so a restart does not reopen the downgrade ("Downgrades").
        self._timestamped_seen = store.get_cursor(PROVIDER, TIMESTAMPED_SEEN_CURSOR) is not None
        types = [(payload_type,) for payload_type in (*PAYLOAD_TYPES, OTHER)]
        self.collector = SeriesValues()
        self._received = self.collector.series(ZEROHASH_WEBHOOKS_RECEIVED, types)
        self._verified = self.collector.series(ZEROHASH_WEBHOOKS_VERIFIED, types)
        self._rejected = self.collector.series(ZEROHASH_WEBHOOKS_REJECTED, ((reason,) for reason in REJECT_REASONS))
        self._duplicate = self.collector.series(ZEROHASH_WEBHOOKS_DUPLICATE, [()])
        self._late = self.collector.series(ZEROHASH_WEBHOOKS_LATE, [()])
        self._last_received = self.collector.series(ZEROHASH_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS)
        # From the start, and across restarts: the newest delivery the state file remembers, else
        # when it first watched the feed, so a feed that never delivers still goes "silent".
        self._last_received[()] = store.last_deliveries(PROVIDER).get("", store.first_watched("", FEED))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Verify and record one delivery; see the module docstring for the order of checks.

        Never a 500: an exception nothing below expected is our bug, not the sender's, so it is
        answered 503 ``internal_error`` (Zero Hash retries), counted, and logged as one
        rate-limited line without a traceback.
        """
        payload_type = payload_type_label(request.headers.get(HEADER_PAYLOAD_TYPE))
        self._received[(payload_type,)] += 1
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                raise _Rejected(413, "body_too_large") from None
            except (web.RequestPayloadError, ConnectionError) as exc:
                # The client went away mid-body, or its Content-Encoding does not decode.
                raise _Rejected(400, "unreadable_body", type(exc).__name__) from None
            return await self._process(request, payload_type, body)
        except _Rejected as rejected:
            return self._reject(request, payload_type, rejected)
        except Exception as exc:
            return self._reject(request, payload_type, _Rejected(503, "internal_error", exception_text(exc)))

    def _reject(self, request: web.Request, payload_type: str, rejected: _Rejected) -> web.Response:
        self._rejected[(rejected.reason,)] += 1

        def describe() -> dict[str, Any]:
            label = ("payload_type", payload_type)
            return rejection_fields(PROVIDER, label, rejected.reason, rejected.status, request.remote, rejected.detail)

        # Zero Hash has no account: one log budget per (provider, reason).
        self._rejection_log.rejected((PROVIDER, "", rejected.reason), describe)
        return self._replies.reply(rejected.status, rejected.reason)

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
        scheme = self._verify(body, timestamp, signatures)
        if scheme is None:
            raise _Rejected(401, "bad_signature")
        if scheme == _LEGACY and self._refuses_legacy():
            raise _Rejected(401, "legacy_signature_refused")
        signed_with_time = scheme == _TIMESTAMPED
        now = self._clock()
        age = self._age(timestamp, now) if timestamp is not None else 0.0
        if not -self._tolerance <= age < self._max_age:  # NaN (an unreadable timestamp) fails too
            raise _Rejected(401, "stale_timestamp")
        late = age > self._tolerance
        if json_depth_exceeds(body):
            # Before json.loads, which would recurse once per level (exporter/webhooks/bounds.py).
            raise _Rejected(400, "bad_json", f"nested deeper than {MAX_JSON_DEPTH}")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise _Rejected(400, "bad_json", "not JSON") from None
        if not isinstance(document, dict):
            raise _Rejected(400, "bad_json", "not a JSON object")
        if payload_type == ACCOUNT_BALANCE_CHANGED:
            # Checked before the 200 so that a balance the deriver could not read is refused (400),
            # not stored; the balance itself is derived from the inbox row afterwards.
            try:
                parse_balance_event(document)
            except BalancePayloadError as exc:
                raise _Rejected(400, "bad_json", str(exc)) from None
        self._verified[(payload_type,)] += 1
        delivery = InboxDelivery(
            PROVIDER,
            "",
            hashlib.sha256(body).hexdigest(),
            payload_type,
            now,
            body,
            {name: value for name in _STORED_HEADERS if (value := headers.get(name)) is not None},
            verdict="late" if late else "ok",
        )

        def record() -> bool:
            # Runs inside the batch transaction: the inbox row (the dedupe record) and the downgrade
            # marker commit together; the balance is derived from the row after the answer.
            fresh = self._store.add_delivery(delivery, ttl=self._ttl) is not None
            if signed_with_time and not self._timestamped_seen:
                self._store.set_cursor(PROVIDER, TIMESTAMPED_SEEN_CURSOR, repr(now))
            return fresh

        def committed(fresh: bool) -> None:
            self._last_received[()] = now
            if signed_with_time:
                self._timestamped_seen = True
            if not fresh:
                self._duplicate[()] += 1
                log.info("duplicate webhook ignored", extra={"provider": PROVIDER, "payload_type": payload_type})
                return
            if late:
                self._late[()] += 1
                log.info(
                    "late webhook accepted (timestamp older than timestamp_tolerance, never seen before)",
                    extra={"provider": PROVIDER, "payload_type": payload_type, "age_seconds": round(age, 3)},
                )
            self._on_stored()

        try:
            fresh = await self._committer.run(record, committed)
        except StateError as exc:
            # Counted as a rejection (state_unavailable), logged at most once per interval: a full
            # disk fails every delivery. 503 so that Zero Hash retries once the state recovers.
            error = str(exc)
            self._rejected[("state_unavailable",)] += 1
            self._rejection_log.rejected(
                (PROVIDER, "", "state_unavailable"),
                lambda: {
                    "provider": PROVIDER,
                    "payload_type": payload_type,
                    "reason": "state_unavailable",
                    "status": 503,
                    "error": error,
                },
            )
            return self._replies.reply(503, "unavailable")
        return self._replies.reply(200, "ok" if fresh else "duplicate")

    def _refuses_legacy(self) -> bool:
        """Whether a delivery verified only by a legacy (body-only) signature is refused now."""
        return self._legacy_policy == "refuse" or (self._legacy_policy == "auto" and self._timestamped_seen)

    def _verify(self, body: bytes, timestamp: str | None, signatures: dict[str, str | None]) -> str | None:
        """Which scheme verified the delivery (``timestamped`` or ``legacy``), None when none did."""
        sig, rsa_sig = signatures[HEADER_SIGNATURE], signatures[HEADER_RSA_SIGNATURE]
        legacy, rsa_legacy = signatures[HEADER_SIGNATURE_LEGACY], signatures[HEADER_RSA_SIGNATURE_LEGACY]
        if timestamp:
            if sig and self._secrets and hmac_matches(self._secrets, body, timestamp, sig) is not None:
                return _TIMESTAMPED
            if rsa_sig and self._rsa_keys and rsa_matches(self._rsa_keys, body, timestamp, rsa_sig) is not None:
                return _TIMESTAMPED
        if legacy and self._secrets and hmac_matches(self._secrets, body, None, legacy) is not None:
            return _LEGACY
        if rsa_legacy and self._rsa_keys and rsa_matches(self._rsa_keys, body, None, rsa_legacy) is not None:
            return _LEGACY
        return None

    @staticmethod
    def _age(timestamp: str, now: float) -> float:
        """Seconds since ``timestamp`` (negative: from the future); NaN when it is not a finite time."""
        try:
            seconds = timestamp_to_seconds(timestamp.strip())
        except (ValueError, OverflowError):
            return math.nan
        return now - seconds if math.isfinite(seconds) else math.nan


class ZerohashDeriver:
    """Derives the Zero Hash balances of inbox rows (see :mod:`exporter.webhooks.inbox`).

    Reads nothing but the row: an ``account_balance.changed`` body is stored when it supersedes the
    balance held (:meth:`StateStore.apply_zerohash_balance`), and its movements are counted.
    """

    provider = PROVIDER

    def __init__(self, store: BalanceStorage, balances: ZerohashBalances) -> None:
        self._store = store
        self._balances = balances

    def stage(self, delivery: InboxDelivery) -> Applied:
        """Store the balance the row reports, when it is newer (inside the consumer's transaction)."""
        if delivery.method != ACCOUNT_BALANCE_CHANGED or delivery.body is None:
            return None
        body = delivery.body
        if json_depth_exceeds(body):
            raise DeriveError(f"nested deeper than {MAX_JSON_DEPTH}")
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise DeriveError("not JSON") from None
        if not isinstance(document, dict):
            raise DeriveError("not a JSON object")
        try:
            event = parse_balance_event(document)
        except BalancePayloadError as exc:
            raise DeriveError(str(exc)) from None
        applied = self._store.apply_zerohash_balance(event.balance)
        balances = self._balances

        def update() -> None:
            b = event.balance
            balances.count_movements(b.account_type, b.asset, event.movement_types)
            if applied:
                balances.apply(b)
            else:
                log.info("older balance event not applied", extra={"provider": PROVIDER, "asset": b.asset})

        return update
