"""The WhiteBIT webhook receiver at ``POST /webhooks/whitebit``.

Order of checks, each rejection counted by reason (the README's "Webhooks and transfers" lists the
answers; docs/protocol.md#webhook-envelope-and-signature the scheme):

1. read the raw body once, bounded by ``webhooks.max_body_bytes``  -> 413 ``body_too_large``; a
   body that cannot be read (the client went away, a broken ``Content-Encoding``)  -> 400
   ``unreadable_body``
2. ``X-TXC-APIKEY``, ``X-TXC-PAYLOAD`` and ``X-TXC-SIGNATURE`` present  -> 401 ``missing_header``
3. the key names a configured account's webhook key  -> 401 ``unknown_key`` (account ``unknown``)
4. ``X-TXC-PAYLOAD`` is base64 of the body, byte for byte  -> 401 ``payload_mismatch``
5. the HMAC-SHA512 hex of the payload under any configured secret equals the signature, compared
   in constant time against every secret  -> 401 ``bad_signature``
6. only now the JSON, nested at most 32 deep (checked on the bytes first): an object with a string
   ``id``, a string ``method`` and an object ``params`` (and, for a deposit or withdrawal, an amount
   and an asset), every number, time and id within the bounds of :mod:`exporter.webhooks.bounds`
   -> 400 ``bad_json``
7. in ONE state transaction: store the delivery in the inbox as received, which is also the
   dedupe record of its signed ``id`` (seen before -> 200, counted as a duplicate, nothing else
   done), and raise the account's highest nonce (a nonce not above it is a regression: counted,
   accepted and marked on the row under ``count``; 409 ``nonce_regression`` and nothing stored
   under ``strict``). Committed before the 200 (with the deliveries that arrived at the same time,
   see :mod:`exporter.webhooks.commit`), so a delivery answered 200 survives a kill of the
   process; a failed write answers 503 so WhiteBIT retries.
8. after the answer, :class:`WhitebitDeriver` advances the transfer from the inbox row
   (:mod:`exporter.webhooks.inbox`).

Nothing is ever answered 500: an exception none of these steps expected is a bug of ours, answered
503 ``internal_error`` (so WhiteBIT retries), counted and logged as one rate-limited line naming the
exception, without a traceback. Garbage in a header (any bytes, any script) only fails its check.

**Nonces as documented.** WhiteBIT's deposit and withdrawal examples carry no ``nonce``, and its
envelope and refund examples carry ``"nonce": 0`` (docs/protocol.md#webhook-envelope-and-signature).
A delivery without a nonce, with ``0``, or with a value that is not an integer is therefore not
compared under either policy: it is never a regression and never changes the stored highest nonce.

``deposit.update`` (the old spelling) counts as ``deposit.updated``; an undocumented method answers
200 and counts as ``other``. A delivery rejected before its JSON was read counts as method
``other`` in ``whitebit_webhooks_received_total`` (its method cannot be trusted yet). Nothing a
sender sent is echoed back, and logs show at most a 4-character prefix of a key.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from aiohttp import web

from exporter.config.schema import RESERVED_ACCOUNT_NAME, WhitebitAccountConfig
from exporter.core.errors import exception_text
from exporter.core.logs import redact
from exporter.core.metrics import (
    OTHER,
    WHITEBIT_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS,
    WHITEBIT_WEBHOOK_NONCE_REGRESSIONS,
    WHITEBIT_WEBHOOKS_DUPLICATE,
    WHITEBIT_WEBHOOKS_RECEIVED,
    WHITEBIT_WEBHOOKS_REJECTED,
    WHITEBIT_WEBHOOKS_VERIFIED,
    SeriesValues,
)
from exporter.core.state import DEFAULT_DELIVERY_TTL, InboxDelivery, StateError
from exporter.core.storage import DeliveryIntake
from exporter.webhooks.bounds import MAX_ID_LENGTH, MAX_JSON_DEPTH, json_depth_exceeds, storable_text
from exporter.webhooks.commit import GroupCommitter
from exporter.webhooks.inbox import Applied, DeriveError
from exporter.webhooks.intake import REJECT_REASONS, RejectionLog, Replies, rejection_fields
from exporter.whitebit.signing import HEADER_APIKEY, HEADER_PAYLOAD, HEADER_SIGNATURE, Secrets, payload_matches_body
from exporter.whitebit.transfers import (
    WEBHOOK_TRANSFER_EVENTS,
    ObservationError,
    TransferBook,
    TransferObservation,
    int_or_none,
    observation_from_webhook,
)

log = logging.getLogger(__name__)

PATH = "/webhooks/whitebit"
PROVIDER = "whitebit"
#: The state file's name for this feed (when it first watched an account's webhooks).
FEED = "whitebit_webhook"
#: Every documented WhiteBIT webhook method (docs/protocol.md#webhook-methods); ``deposit.update``
#: is counted as ``deposit.updated`` and anything else as ``other``.
METHODS = (
    "deposit.accepted",
    "deposit.updated",
    "deposit.processed",
    "deposit.canceled",
    "withdraw.unconfirmed",
    "withdraw.pending",
    "withdraw.canceled",
    "withdraw.successful",
    "withdraw.partial_successful",
    "code.apply",
    "refund.successful",
    "refund.failed",
)
#: The old spelling WhiteBIT used from March 2022 to December 2024.
METHOD_ALIASES = {"deposit.update": "deposit.updated"}


def method_label(method: Any) -> str:
    """The bounded ``method`` label: a documented method (old spelling mapped), else ``other``."""
    if not isinstance(method, str):
        return OTHER
    method = METHOD_ALIASES.get(method, method)
    return method if method in METHODS else OTHER


def _comparable_nonce(value: Any) -> int | None:
    """The nonce to compare with the highest seen, or None when the delivery's nonce is not compared.

    Missing, ``0`` (the documented envelope and refund examples, docs/protocol.md#webhook-envelope-and-signature)
    or not an integer: not compared, so neither a regression nor a new highest.
    """
    nonce = int_or_none(value)
    return None if nonce == 0 else nonce


class Envelope(NamedTuple):
    """A verified delivery's ``id``, bounded method label and ``params``."""

    delivery_id: str
    method: str
    params: dict[str, Any]


def parse_envelope(body: bytes, account: str) -> Envelope:
    """The envelope of a verified body; raises :class:`RejectedDelivery` (400 ``bad_json``) otherwise."""
    if json_depth_exceeds(body):
        # Before json.loads, which would recurse once per level (exporter/webhooks/bounds.py).
        raise RejectedDelivery(Rejection(400, "bad_json", account, detail=f"nested deeper than {MAX_JSON_DEPTH}"))
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise RejectedDelivery(Rejection(400, "bad_json", account, detail="not JSON")) from None
    if not isinstance(document, dict):
        raise RejectedDelivery(Rejection(400, "bad_json", account, detail="not a JSON object"))
    method = method_label(document.get("method"))
    delivery_id = document.get("id")
    params = document.get("params")
    if not isinstance(document.get("method"), str):
        raise RejectedDelivery(Rejection(400, "bad_json", account, detail="no method"))
    if (
        not isinstance(delivery_id, str)
        or not delivery_id
        or len(delivery_id) > MAX_ID_LENGTH
        or not storable_text(delivery_id)
    ):
        raise RejectedDelivery(Rejection(400, "bad_json", account, method, detail="no usable id"))
    if not isinstance(params, dict):
        raise RejectedDelivery(Rejection(400, "bad_json", account, method, detail="params is not an object"))
    return Envelope(delivery_id, method, params)


class Rejection(NamedTuple):
    """Why a delivery is refused, and how: HTTP status, ``reason`` label, ``account`` label.

    A NamedTuple, not a frozen dataclass: a flood of forged deliveries builds one per request.
    """

    status: int
    reason: str
    account: str
    method: str = OTHER
    detail: str = ""


class RejectedDelivery(Exception):
    """Raised while processing a verified delivery that must still be refused."""

    def __init__(self, rejection: Rejection) -> None:
        super().__init__(rejection.reason)
        self.rejection = rejection


class _NonceRejected(Exception):
    """Raised inside the delivery transaction to roll it back under the strict nonce policy."""


@dataclass(frozen=True)
class AccountWebhook:
    """What the receiver needs of one account: its label, its secrets (prepared) and its nonce policy."""

    account: str
    secrets: Secrets
    strict_nonces: bool

    @classmethod
    def of(cls, account: WhitebitAccountConfig) -> AccountWebhook:
        """The receiver's view of an account that has a ``webhook`` section."""
        if account.webhook is None:
            raise ValueError(f"account {account.name!r} has no webhook section")
        return cls(account.name, Secrets(account.webhook.secrets), account.webhook.nonce_policy == "strict")


class WhitebitReceiver:
    """Verifies, deduplicates and records WhiteBIT webhook deliveries for the accounts with a webhook key.

    ``collector`` renders its counters::

        whitebit_webhooks_received_total{account="main",method="deposit.processed"} 3.0
        whitebit_webhooks_rejected_total{account="unknown",reason="unknown_key"} 1.0
    """

    path = PATH

    def __init__(
        self,
        accounts: Sequence[WhitebitAccountConfig],
        store: DeliveryIntake,
        committer: GroupCommitter,
        *,
        on_stored: Callable[[], None],
        clock: Callable[[], float] = time.time,
        delivery_ttl: float = DEFAULT_DELIVERY_TTL,
    ) -> None:
        self._store = store
        self._committer = committer
        self._on_stored = on_stored
        self._clock = clock
        self._ttl = delivery_ttl
        self._rejection_log = RejectionLog(log)
        self._replies = Replies(REJECT_REASONS)
        # Public keys are unique across accounts (the config loader checks), so a key names one account.
        self._by_key = {
            account.webhook.public_key: AccountWebhook.of(account) for account in accounts if account.webhook
        }
        names = [webhook.account for webhook in self._by_key.values()]
        labelled = [*names, RESERVED_ACCOUNT_NAME]
        methods = (*METHODS, OTHER)
        self.collector = SeriesValues()
        self._received = self.collector.series(WHITEBIT_WEBHOOKS_RECEIVED, ((a, m) for a in labelled for m in methods))
        self._verified = self.collector.series(WHITEBIT_WEBHOOKS_VERIFIED, ((a, m) for a in names for m in methods))
        self._rejected = self.collector.series(
            WHITEBIT_WEBHOOKS_REJECTED, ((a, r) for a in labelled for r in REJECT_REASONS)
        )
        self._duplicate = self.collector.series(WHITEBIT_WEBHOOKS_DUPLICATE, ((a,) for a in names))
        self._nonce_regressions = self.collector.series(WHITEBIT_WEBHOOK_NONCE_REGRESSIONS, ((a,) for a in names))
        self._last_received = self.collector.series(WHITEBIT_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS)
        # From the start, and across restarts: the newest delivery the state file remembers, else
        # when it first watched the account, so a feed that never delivers still goes "silent".
        last = store.last_deliveries(PROVIDER)
        for name in names:
            self._last_received[(name,)] = last.get(name, store.first_watched(name, FEED))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Verify and record one delivery; see the module docstring for the order of checks.

        Never a 500: an exception nothing below expected is our bug, not the sender's, so it is
        answered 503 ``internal_error`` (WhiteBIT retries), counted, and logged as one
        rate-limited line without a traceback. (One coroutine, not a wrapper around another:
        every delivery would pay for the extra frame.)
        """
        key = request.headers.get(HEADER_APIKEY)
        webhook = self._by_key.get(key) if key else None
        label = webhook.account if webhook is not None else RESERVED_ACCOUNT_NAME
        try:
            try:
                body = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return self._reject(Rejection(413, "body_too_large", label), request)
            except (web.RequestPayloadError, ConnectionError) as exc:
                return self._reject(Rejection(400, "unreadable_body", label, detail=type(exc).__name__), request)
            # The checks before the signature's are what a flood of forged deliveries costs: they
            # return their rejection instead of raising it.
            headers = request.headers
            payload = headers.get(HEADER_PAYLOAD)
            signature = headers.get(HEADER_SIGNATURE)
            if not key or not payload or not signature:
                return self._reject(Rejection(401, "missing_header", label), request)
            if webhook is None:
                return self._reject(Rejection(401, "unknown_key", RESERVED_ACCOUNT_NAME, detail=redact(key)), request)
            if not payload_matches_body(body, payload):
                return self._reject(Rejection(401, "payload_mismatch", label), request)
            if webhook.secrets.match(payload, signature) is None:
                return self._reject(Rejection(401, "bad_signature", label), request)
            try:
                return await self._process(webhook, body, key, signature)
            except RejectedDelivery as rejected:
                return self._reject(rejected.rejection, request)
        except Exception as exc:
            return self._reject(Rejection(503, "internal_error", label, detail=exception_text(exc)), request)

    def reply(self, status: int, word: str) -> web.Response:
        """One of the receiver's fixed answers (``ok``, ``duplicate``, ``unavailable`` or a reason)."""
        return self._replies.reply(status, word)

    async def _process(self, webhook: AccountWebhook, body: bytes, key: str, signature: str) -> web.StreamResponse:
        name = webhook.account
        delivery_id, method, params = parse_envelope(body, name)
        now = self._clock()
        # Checked before the 200 so that a transfer delivery the deriver could not read is refused
        # (400), not stored; the transfer itself is derived from the inbox row afterwards.
        self._observation(name, method, params, now)
        nonce = _comparable_nonce(params.get("nonce"))
        self._verified[(name, method)] += 1
        strict = webhook.strict_nonces

        delivery = InboxDelivery(
            PROVIDER,
            name,
            delivery_id,
            method,
            now,
            body,
            {HEADER_APIKEY: key, HEADER_SIGNATURE: signature},
            nonce,
        )

        def record() -> tuple[bool, bool]:
            # Runs inside the batch transaction: the inbox row (the dedupe record) and the nonce
            # commit together; the transfer is derived from the row after the answer.
            store = self._store
            seq = store.add_delivery(delivery, ttl=self._ttl)
            if seq is None:
                return False, False
            regression = False
            if nonce is not None:
                regression = not store.raise_nonce(name, nonce)
                if regression:
                    if strict:
                        raise _NonceRejected
                    store.set_verdict(seq, "nonce_regression")
            return True, regression

        def committed(result: tuple[bool, bool]) -> None:
            fresh, regression = result
            self._received[(name, method)] += 1
            self._last_received[(name,)] = now
            if not fresh:
                self._duplicate[(name,)] += 1
                log.info("duplicate webhook ignored", extra={"provider": PROVIDER, "account": name, "method": method})
                return
            if regression:
                self._nonce_regressions[(name,)] += 1
                log.info(
                    "webhook nonce regression accepted (nonce_policy count)",
                    extra={"provider": PROVIDER, "account": name, "method": method},
                )
            self._on_stored()
            if method == OTHER:
                log.info(
                    "webhook with an undocumented method acknowledged", extra={"provider": PROVIDER, "account": name}
                )

        try:
            fresh, _ = await self._committer.run(record, committed)
        except _NonceRejected:
            self._nonce_regressions[(name,)] += 1
            raise RejectedDelivery(Rejection(409, "nonce_regression", name, method)) from None
        except StateError as exc:
            # Counted as a rejection (state_unavailable), logged at most once per interval: a full
            # disk fails every delivery. 503 so that WhiteBIT retries once the state recovers.
            error = str(exc)
            self._received[(name, method)] += 1
            self._rejected[(name, "state_unavailable")] += 1
            self._rejection_log.rejected(
                (PROVIDER, name, "state_unavailable"),
                lambda: {
                    "provider": PROVIDER,
                    "account": name,
                    "method": method,
                    "reason": "state_unavailable",
                    "status": 503,
                    "error": error,
                },
            )
            return self.reply(503, "unavailable")
        return self.reply(200, "ok" if fresh else "duplicate")

    def _observation(self, account: str, method: str, params: dict[str, Any], now: float) -> TransferObservation | None:
        if method not in WEBHOOK_TRANSFER_EVENTS:
            return None
        try:
            return observation_from_webhook(account, method, params, now)
        except ObservationError as exc:
            raise RejectedDelivery(Rejection(400, "bad_json", account, method, detail=str(exc))) from None

    def _reject(self, rejection: Rejection, request: web.Request) -> web.Response:
        self._received[(rejection.account, rejection.method)] += 1
        self._rejected[(rejection.account, rejection.reason)] += 1

        def describe() -> dict[str, Any]:
            label = ("account", rejection.account)
            return rejection_fields(
                PROVIDER, label, rejection.reason, rejection.status, request.remote, rejection.detail
            )

        self._rejection_log.rejected((PROVIDER, rejection.account, rejection.reason), describe)
        return self.reply(rejection.status, rejection.reason)


def delivery_observation(delivery: InboxDelivery) -> TransferObservation | None:
    """The transfer observation a WhiteBIT inbox row reports (None: no body, or no transfer event).

    Reads nothing but the row: the envelope from its body, the time from when it was received.
    Raises :class:`DeriveError` for a body that cannot be one.
    """
    body = delivery.body
    if body is None:
        return None
    account = delivery.account
    try:
        _, method, params = parse_envelope(body, account)
    except RejectedDelivery as rejected:
        raise DeriveError(f"envelope: {rejected.rejection.detail or rejected.rejection.reason}") from None
    if method not in WEBHOOK_TRANSFER_EVENTS:
        return None
    try:
        return observation_from_webhook(account, method, params, delivery.received_at)
    except ObservationError as exc:
        raise DeriveError(str(exc)) from None


class WhitebitDeriver:
    """Derives the transfers of WhiteBIT inbox rows (see :mod:`exporter.webhooks.inbox`) by
    :func:`delivery_observation`; a method that is no transfer event derives nothing."""

    provider = PROVIDER

    def __init__(self, transfers: TransferBook) -> None:
        self._transfers = transfers

    def stage(self, delivery: InboxDelivery) -> Applied:
        """Stage the transfer the row reports (inside the consumer's transaction); its in-memory update."""
        observation = delivery_observation(delivery)
        if observation is None:
            return None
        transfers = self._transfers
        update = transfers.stage(observation)
        return lambda: transfers.apply(update)
