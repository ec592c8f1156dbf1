"""A small Zero Hash: a balance ledger that emits ``account_balance.changed`` and a webhook sender.

:class:`ZerohashLedger` is pure (clock and randomness injected). It keeps Decimal balances of
accounts identified as Zero Hash identifies them, (participant_code, account_group, account_label,
account_type, asset), and books runs of movements the documented way
(docs/protocol.md#account-balance-events and #movement-and-account-types): a deposit credits
``available``; a withdrawal first moves the amount from ``available`` to ``collateral`` as
``withdrawal_pending`` (both legs share the run and the movement id), and on confirmation releases
the hold (``withdrawal_confirmed``) and debits ``available`` (``withdrawal_confirmed`` +
``withdrawal``, net zero there); transfers move ``available`` between participants; trades settle
with ``final_settlement`` or ``final_settlement_outstanding``. Every run returns one payload per
account it touched, in exactly the webhook's shape, all sharing the run id.

:class:`ZerohashSender` POSTs payloads with Zero Hash's headers (docs/protocol.md#zero-hash-signatures):
a notification id, the payload type, the timestamp in milliseconds, the timestamped HMAC
(``x-zh-hook-signature``, over body + timestamp) and/or the legacy one (``x-zh-hook-signature-256``,
over the body), and the RSA variants when it has a private key. Any 2xx acknowledges. A failed
delivery is retried 4 times 250 ms apart, then 3 more times with exponential backoff, then dropped
(docs/protocol.md#zero-hash-delivery); the backoff intervals are undocumented, so they are
constructor arguments, by default doubling from 2 minutes (2, 4, 8 min): the last two retries then
come more than 5 minutes (Zero Hash's suggested timestamp window) after the first attempt. Whether a
retry keeps its timestamp (and so its signature) is unknown: by default it does, the stricter case
for a receiver, which then sees late retries with their original timestamp. The retrying, recording
and counting is :class:`~exporter.simulator.sender.RetryingSender`'s; this module builds and signs
what it sends.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.core.state import DEFAULT_DELIVERY_TTL
from exporter.simulator.model import fmt
from exporter.simulator.sender import (
    KIND_FORGED,
    KIND_REPLAYED,
    KIND_TAMPERED,
    Delivery,
    ProviderSender,
    Sleep,
)
from exporter.zerohash.signing import (
    HEADER_NOTIFICATION_ID,
    HEADER_PAYLOAD_TYPE,
    HEADER_RSA_SIGNATURE,
    HEADER_RSA_SIGNATURE_LEGACY,
    HEADER_SIGNATURE,
    HEADER_SIGNATURE_LEGACY,
    HEADER_TIMESTAMP,
    hmac_signature,
    rsa_signature,
)

log = logging.getLogger(__name__)

ZERO = Decimal(0)
AVAILABLE = "available"
COLLATERAL = "collateral"
ACCOUNT_BALANCE_CHANGED = "account_balance.changed"
TRADE_STATUS_CHANGED = "trade.status_changed"
PARTICIPANT_STATUS_CHANGED = "participant_status_changed"

Scheme = Literal["timestamped", "legacy", "both"]
TradeSide = Literal["buy", "sell"]


class LedgerError(Exception):
    """A booking the ledger refuses (unknown withdrawal, not enough balance, non-positive amount)."""


@dataclass(frozen=True, order=True)
class AccountKey:
    """How Zero Hash identifies an account in ``account_balance.changed``."""

    participant_code: str
    account_group: str
    account_label: str
    account_type: str
    asset: str


@dataclass(frozen=True)
class _Leg:
    key: AccountKey
    movement_type: str
    change: Decimal
    movement_id: str
    ids: Mapping[str, str]


@dataclass(frozen=True)
class _PendingWithdrawal:
    available: AccountKey
    collateral: AccountKey
    amount: Decimal


@dataclass(frozen=True)
class TradeRecord:
    """A settled trade, enough for a ``trade.status_changed`` payload."""

    trade_id: str
    participant_code: str
    account_group: str
    account_label: str
    side: str
    asset: str
    quantity: Decimal
    quoted_currency: str
    notional: Decimal


class ZerohashLedger:
    """Balances of Zero Hash accounts and the ``account_balance.changed`` payloads their runs produce.

    ``timestamp_in_seconds`` writes the top-level ``timestamp`` in seconds, as one of Zero Hash's own
    examples does (the others use milliseconds); ``movement_timestamp`` is always milliseconds.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        timestamp_in_seconds: bool = False,
        first_run_id: int = 4_150_000,
        first_transfer_request_id: int = 339_900,
        trade_history_limit: int = 1000,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self.timestamp_in_seconds = timestamp_in_seconds
        self.balances: dict[AccountKey, Decimal] = {}
        self._account_ids: dict[AccountKey, str] = {}
        self._next_run_id = first_run_id
        self._next_transfer_request_id = first_transfer_request_id
        self._withdrawals: dict[str, _PendingWithdrawal] = {}
        self.trades: dict[str, TradeRecord] = {}  # the most recent ones, oldest first
        self._trade_history_limit = trade_history_limit

    # --- reading ---

    def balance(self, key: AccountKey) -> Decimal:
        """The account's balance (zero for an account never touched)."""
        return self.balances.get(key, ZERO)

    def pending_withdrawals(self) -> list[str]:
        """Withdrawal request ids waiting for confirmation, oldest first."""
        return list(self._withdrawals)

    def account_id(self, key: AccountKey) -> str:
        """The account's stable UUID (``movements[].account_id``)."""
        account_id = self._account_ids.get(key)
        if account_id is None:
            account_id = self._account_ids[key] = self._uuid()
        return account_id

    # --- runs ---

    def deposit(
        self, participant_code: str, asset: str, amount: Decimal, *, account_group: str, account_label: str = "general"
    ) -> list[dict[str, Any]]:
        """An inbound deposit credited to ``available`` (``deposit`` with ``deposit_reference_id``)."""
        _positive(amount)
        key = AccountKey(participant_code, account_group, account_label, AVAILABLE, asset)
        leg = _Leg(key, "deposit", amount, self._uuid(), {"deposit_reference_id": self._uuid()})
        return self._book("deposit", [leg])

    def withdraw(
        self, participant_code: str, asset: str, amount: Decimal, *, account_group: str, account_label: str = "general"
    ) -> tuple[str, list[dict[str, Any]]]:
        """A withdrawal request: ``available`` −x and ``collateral`` +x as ``withdrawal_pending``.

        Returns the ``withdrawal_request_id`` (for :meth:`confirm_withdrawal`) and the two payloads,
        which share the run id and the movement id as in Zero Hash's worked example.
        """
        _positive(amount)
        available = AccountKey(participant_code, account_group, account_label, AVAILABLE, asset)
        collateral = AccountKey(participant_code, account_group, account_label, COLLATERAL, asset)
        request_id = self._uuid()
        movement_id = self._uuid()
        ids = {"withdrawal_request_id": request_id}
        payloads = self._book(
            "withdrawal",
            [
                _Leg(available, "withdrawal_pending", -amount, movement_id, ids),
                _Leg(collateral, "withdrawal_pending", amount, movement_id, ids),
            ],
        )
        self._withdrawals[request_id] = _PendingWithdrawal(available, collateral, amount)
        return request_id, payloads

    def confirm_withdrawal(self, withdrawal_request_id: str) -> list[dict[str, Any]]:
        """Confirmed on chain: the hold is released (collateral −x) and ``available`` gets
        ``withdrawal_confirmed`` +x and ``withdrawal`` −x in the same run."""
        pending = self._withdrawals.get(withdrawal_request_id)
        if pending is None:
            raise LedgerError(f"no pending withdrawal {withdrawal_request_id}")
        ids = {"withdrawal_request_id": withdrawal_request_id}
        confirmed_id = self._uuid()
        payloads = self._book(
            "withdrawal",
            [
                _Leg(pending.collateral, "withdrawal_confirmed", -pending.amount, confirmed_id, ids),
                _Leg(pending.available, "withdrawal_confirmed", pending.amount, confirmed_id, ids),
                _Leg(pending.available, "withdrawal", -pending.amount, self._uuid(), ids),
            ],
        )
        del self._withdrawals[withdrawal_request_id]
        return payloads

    def transfer(
        self,
        from_participant: str,
        to_participant: str,
        asset: str,
        amount: Decimal,
        *,
        account_group: str,
        to_account_group: str | None = None,
        transfer_type: str = "trade_allocation",
        account_label: str = "general",
    ) -> list[dict[str, Any]]:
        """An internal transfer between two ``available`` accounts (``transfer`` with its request id and type)."""
        _positive(amount)
        source = AccountKey(from_participant, account_group, account_label, AVAILABLE, asset)
        target = AccountKey(to_participant, to_account_group or account_group, account_label, AVAILABLE, asset)
        if source == target:
            raise LedgerError("a transfer needs two different accounts")
        ids = {"transfer_request_id": str(self._next_transfer_request_id), "transfer_type": transfer_type}
        self._next_transfer_request_id += 1
        return self._book(
            "transfer",
            [
                _Leg(source, "transfer", -amount, self._uuid(), ids),
                _Leg(target, "transfer", amount, self._uuid(), ids),
            ],
        )

    def settle_trade(
        self,
        participant_code: str,
        *,
        account_group: str,
        side: TradeSide,
        asset: str,
        quantity: Decimal,
        quoted_currency: str,
        notional: Decimal,
        outstanding: bool = False,
        account_label: str = "general",
    ) -> tuple[str, list[dict[str, Any]]]:
        """A trade settles: the asset and the quoted currency move in opposite directions.

        ``outstanding`` books ``final_settlement_outstanding`` (an obligation still open) instead of
        ``final_settlement``. Returns the trade id and the two payloads.
        """
        _positive(quantity)
        _positive(notional)
        if side not in ("buy", "sell"):
            raise LedgerError(f"side must be buy or sell, not {side!r}")
        asset_key = AccountKey(participant_code, account_group, account_label, AVAILABLE, asset)
        money_key = AccountKey(participant_code, account_group, account_label, AVAILABLE, quoted_currency)
        sign = 1 if side == "buy" else -1
        movement_type = "final_settlement_outstanding" if outstanding else "final_settlement"
        trade_id = self._uuid()
        ids = {"trade_id": trade_id}
        payloads = self._book(
            "settlement",
            [
                _Leg(asset_key, movement_type, sign * quantity, self._uuid(), ids),
                _Leg(money_key, movement_type, -sign * notional, self._uuid(), ids),
            ],
        )
        self.trades[trade_id] = TradeRecord(
            trade_id, participant_code, account_group, account_label, side, asset, quantity, quoted_currency, notional
        )
        while len(self.trades) > self._trade_history_limit:
            del self.trades[next(iter(self.trades))]
        return trade_id, payloads

    # --- other payload types ---

    def trade_status_payload(
        self, trade_id: str, *, trade_state: str = "terminated", settlement_state: str | None = "settled"
    ) -> dict[str, Any]:
        """A ``trade.status_changed`` payload for a settled trade.

        Fields per docs/protocol.md#zero-hash-payload-types.
        """
        trade = self.trades.get(trade_id)
        if trade is None:
            raise LedgerError(f"unknown trade {trade_id}")
        return {
            "trade_id": trade.trade_id,
            "client_trade_id": f"ct-{trade.trade_id[:8]}",
            "symbol": f"{trade.asset}/{trade.quoted_currency}",
            "product_type": "spot",
            "platform_code": trade.account_group,
            "market_identifier_code": "ZHLS",
            "origin": "rest_api",
            "quoted_currency": trade.quoted_currency,
            "total_notional": fmt(trade.notional),
            "contract_size": 1,
            "physical_delivery": True,
            "parties_anonymous": False,
            "trade_state": trade_state,
            "settlement_state": settlement_state,
            "parties": [
                {
                    "participant_code": trade.participant_code,
                    "account_label": trade.account_label,
                    "asset": trade.asset,
                    "amount": fmt(trade.quantity),
                    "side": trade.side,
                    "settling": True,
                },
                {
                    "participant_code": trade.account_group,
                    "account_label": trade.account_label,
                    "asset": trade.quoted_currency,
                    "amount": fmt(trade.notional),
                    "side": "sell" if trade.side == "buy" else "buy",
                    "settling": True,
                },
            ],
            "timestamp": self._now_ms(),
        }

    def participant_status_payload(
        self, participant_code: str, participant_status: str, *, reason_code: str | None = None
    ) -> dict[str, Any]:
        """A ``participant_status_changed`` payload."""
        return {
            "participant_code": participant_code,
            "participant_status": participant_status,
            "reason_code": reason_code,
            "reject_reasons": [],
            "kyc_attempts": 1,
            "timestamp": self._now_ms(),
        }

    # --- booking ---

    def _book(self, run_type: str, legs: Sequence[_Leg]) -> list[dict[str, Any]]:
        """Apply every leg of one run atomically and return one payload per account touched."""
        after: dict[AccountKey, Decimal] = {}
        for leg in legs:
            after[leg.key] = after.get(leg.key, self.balance(leg.key)) + leg.change
        for key, value in after.items():
            if value < 0:
                raise LedgerError(f"not enough {key.asset} in {key.participant_code}/{key.account_type}")
        self.balances.update(after)
        run_id = str(self._next_run_id)
        self._next_run_id += 1
        now_ms = self._now_ms()
        by_account: dict[AccountKey, list[dict[str, Any]]] = {}
        for leg in legs:
            movement: dict[str, Any] = {
                "account_id": self.account_id(leg.key),
                "movement_id": leg.movement_id,
                "movement_type": leg.movement_type,
                "movement_timestamp": now_ms,
                "change": fmt(leg.change),
            }
            movement.update(leg.ids)
            by_account.setdefault(leg.key, []).append(movement)
        timestamp = now_ms // 1000 if self.timestamp_in_seconds else now_ms
        return [
            {
                "participant_code": key.participant_code,
                "account_group": key.account_group,
                "account_label": key.account_label,
                "account_type": key.account_type,
                "asset": key.asset,
                "balance": fmt(self.balances[key]),
                "run_id": run_id,
                "run_type": run_type,
                "timestamp": timestamp,
                "movements": movements,
            }
            for key, movements in by_account.items()
        ]

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


def _positive(amount: Decimal) -> None:
    if amount <= 0:
        raise LedgerError("amount must be positive")


# --- the sender -----------------------------------------------------------------------------------

# Kinds of record for a notification sent with ``send()`` and for an old-timestamp one-shot.
KIND_NOTIFICATION = "notification"
KIND_STALE = "stale"

#: The queued retries' exponential backoff (undocumented intervals): 2, 4 and 8 minutes.
BACKOFF_DELAYS = (120.0, 240.0, 480.0)
#: How old ``send_stale()``'s timestamp is by default: a day older than the exporter's dedupe retention,
#: beyond which a receiver can no longer tell a replay from a new delivery (README.md#zero-hash).
STALE_AGE = DEFAULT_DELIVERY_TTL + 86400.0


@dataclass
class ZerohashNotificationIdentity:
    """Which Zero Hash notification a record is about: its payload type, notification id and timestamp.

    ``timestamp`` is the ``x-zh-hook-timestamp`` value (milliseconds, as a string); a one-shot sent
    without that header has None.
    """

    payload_type: str
    notification_id: str
    timestamp: str | None


class ZerohashSender(ProviderSender[ZerohashNotificationIdentity]):
    """POSTs Zero Hash notifications to one URL with Zero Hash's headers, retries and mischief on cue.

    ``send()`` is synchronous, so a pure booking can be followed by its delivery without awaiting;
    notifications sent before ``start()`` wait (up to ``max_backlog``) and go out when it runs.
    """

    def __init__(
        self,
        *,
        url: str,
        hmac_secret: str | None = None,
        rsa_private_key: rsa.RSAPrivateKey | None = None,
        scheme: Scheme = "both",
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        fast_retries: int = 4,
        fast_retry_delay: float = 0.25,
        backoff_delays: Sequence[float] = BACKOFF_DELAYS,
        timeout: float = 10.0,
        retry_keeps_timestamp: bool = True,
        sleep: Sleep = asyncio.sleep,
        history_limit: int = 1000,
        max_backlog: int = 10_000,
    ) -> None:
        if hmac_secret is None and rsa_private_key is None:
            raise ValueError("a Zero Hash sender needs an HMAC secret, an RSA private key, or both")
        if scheme not in ("timestamped", "legacy", "both"):
            raise ValueError(f"scheme must be timestamped, legacy or both, not {scheme!r}")
        if timeout <= 0 or fast_retries < 0 or fast_retry_delay < 0 or any(d < 0 for d in backoff_delays):
            raise ValueError("timeout must be positive and retry counts and delays not negative")
        self.scheme: Scheme = scheme
        self.retry_keeps_timestamp = retry_keeps_timestamp
        self._hmac_secret = hmac_secret
        self._rsa_key = rsa_private_key
        super().__init__(
            url=url,
            log_name="zerohash notification",
            acknowledges=_any_2xx,
            one_shot_kinds=(KIND_FORGED, KIND_TAMPERED, KIND_STALE, KIND_REPLAYED),
            retry_delays=(fast_retry_delay,) * fast_retries + tuple(backoff_delays),
            timeout=timeout,
            clock=clock,
            rng=rng,
            sleep=sleep,
            history_limit=history_limit,
        )
        self._backlog: deque[Delivery[ZerohashNotificationIdentity]] = deque()
        self._max_backlog = max_backlog
        self._last_balance_payload: dict[str, Any] | None = None
        self._forger_key: rsa.RSAPrivateKey | None = None

    # --- lifecycle ---

    async def start(self) -> None:
        """Open the HTTP session and send whatever was queued before."""
        if self._deliveries.started:
            return
        await self._deliveries.start()
        while self._backlog:
            self._deliveries.launch(self._backlog.popleft())

    async def stop(self) -> None:
        """Cancel and await every delivery in flight, close the session."""
        await self._deliveries.stop()

    # --- reading ---

    def can_replay(self) -> bool:
        """True when a notification has been acknowledged, so :meth:`replay_last` has something to resend."""
        return self._deliveries.last_acknowledged() is not None

    # --- sending ---

    def send(self, payload_type: str, payload: Mapping[str, Any]) -> str:
        """Queue one notification; returns its ``x-zh-hook-notification-id``."""
        body = _compact(payload)
        timestamp = self._timestamp()
        identity = ZerohashNotificationIdentity(payload_type, self._uuid(), timestamp)
        record = self._deliveries.record(KIND_NOTIFICATION, identity)
        if payload_type == ACCOUNT_BALANCE_CHANGED:
            self._last_balance_payload = copy.deepcopy(dict(payload))
        if self._deliveries.drop_if_due(record, payload_type):
            return identity.notification_id
        headers = self._headers(body, payload_type, identity.notification_id, timestamp)
        delivery = Delivery(record, body, headers, None if self.retry_keeps_timestamp else self._restamp)
        if not self._deliveries.call_on_loop(functools.partial(self._deliveries.launch, delivery)):
            self._hold_until_start(delivery)
        return identity.notification_id

    def drop_next(self, count: int = 1, payload_type: str | None = None) -> None:
        """Never send the next ``count`` notifications of ``payload_type`` (any type if None)."""
        self._deliveries.drop_next(count, lambda topic: payload_type is None or topic == payload_type)

    async def send_forged(self, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST a notification whose signatures come from a wrong secret and a wrong RSA key."""
        body = _compact(payload if payload is not None else self._decoy())
        timestamp = self._timestamp()
        if self._forger_key is None and self._rsa_key is not None:
            self._forger_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        headers = self._headers(
            body,
            ACCOUNT_BALANCE_CHANGED,
            self._uuid(),
            timestamp,
            secret=f"forged-{self._rng.getrandbits(64):016x}" if self._hmac_secret is not None else None,
            rsa_key=self._forger_key,
        )
        return await self._send_once(KIND_FORGED, body, headers)

    async def send_tampered(self, payload: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """POST a correctly signed notification whose body was changed after signing."""
        document = copy.deepcopy(dict(payload if payload is not None else self._decoy()))
        headers = self._headers(_compact(document), ACCOUNT_BALANCE_CHANGED, self._uuid(), self._timestamp())
        document["balance"] = "1" + str(document.get("balance", "0"))
        return await self._send_once(KIND_TAMPERED, _compact(document), headers)

    async def send_stale(self, payload: Mapping[str, Any] | None = None, *, age: float = STALE_AGE) -> dict[str, Any]:
        """POST a correctly signed notification whose ``x-zh-hook-timestamp`` is ``age`` seconds old.

        The timestamped headers are always included, whatever the scheme, so there is a timestamp to
        find stale; the signatures cover that old timestamp. The default age is beyond what a receiver
        may accept as a late retry (:data:`STALE_AGE`); a negative ``age`` dates it in the future.
        """
        body = _compact(payload if payload is not None else self._decoy())
        timestamp = str(int((self._clock() - age) * 1000))
        headers = self._headers(body, ACCOUNT_BALANCE_CHANGED, self._uuid(), timestamp, force_timestamped=True)
        return await self._send_once(KIND_STALE, body, headers)

    async def replay_last(self) -> dict[str, Any] | None:
        """Resend the last acknowledged notification byte for byte with its original headers (None if none)."""
        return await self._deliveries.replay_last(
            "", lambda last: _identity_from_headers(last.record.identity.payload_type, last.headers)
        )

    # --- internals ---

    def _headers(
        self,
        body: bytes,
        payload_type: str,
        notification_id: str,
        timestamp: str,
        *,
        secret: str | Literal[False] | None = False,
        rsa_key: rsa.RSAPrivateKey | Literal[False] | None = False,
        force_timestamped: bool = False,
    ) -> dict[str, str]:
        """Zero Hash's headers for ``body``; ``secret``/``rsa_key`` override the sender's own (forgery)."""
        hmac_secret = self._hmac_secret if secret is False else secret
        private_key = self._rsa_key if rsa_key is False else rsa_key
        headers = {
            "Content-Type": "application/json",
            HEADER_NOTIFICATION_ID: notification_id,
            HEADER_PAYLOAD_TYPE: payload_type,
        }
        if self.scheme in ("timestamped", "both") or force_timestamped:
            headers[HEADER_TIMESTAMP] = timestamp
            if hmac_secret is not None:
                headers[HEADER_SIGNATURE] = hmac_signature(hmac_secret, body, timestamp)
            if private_key is not None:
                headers[HEADER_RSA_SIGNATURE] = rsa_signature(private_key, body, timestamp)
        if self.scheme in ("legacy", "both"):
            if hmac_secret is not None:
                headers[HEADER_SIGNATURE_LEGACY] = hmac_signature(hmac_secret, body, None)
            if private_key is not None:
                headers[HEADER_RSA_SIGNATURE_LEGACY] = rsa_signature(private_key, body, None)
        return headers

    def _hold_until_start(self, delivery: Delivery[ZerohashNotificationIdentity]) -> None:
        if len(self._backlog) < self._max_backlog:
            self._backlog.append(delivery)
        else:
            self._deliveries.mark_dropped(delivery.record)
            log.warning(
                "zerohash sender not started and its backlog is full; notification dropped",
                extra={"max_backlog": self._max_backlog, **asdict(delivery.record.identity)},
            )

    def _restamp(self, delivery: Delivery[ZerohashNotificationIdentity]) -> None:
        identity = delivery.record.identity
        identity.timestamp = self._timestamp()
        delivery.headers = self._headers(
            delivery.body, identity.payload_type, identity.notification_id, identity.timestamp
        )

    async def _send_once(self, kind: str, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        identity = _identity_from_headers(ACCOUNT_BALANCE_CHANGED, headers)
        return await self._deliveries.send_once(kind, identity, body, headers)

    def _decoy(self) -> dict[str, Any]:
        """What a forger would send: a recent real balance payload, inflated, or a made-up one."""
        if self._last_balance_payload is not None:
            document = copy.deepcopy(self._last_balance_payload)
            document["balance"] = fmt(Decimal(str(document.get("balance", "0"))) * 10 + 1000)
            document["timestamp"] = int(self._clock() * 1000)
            return document
        now_ms = int(self._clock() * 1000)
        return {
            "participant_code": "PART01",
            "account_group": "PLAT01",
            "account_label": "general",
            "account_type": AVAILABLE,
            "asset": "USD",
            "balance": "1000000",
            "run_id": str(self._rng.randrange(4_000_000, 5_000_000)),
            "run_type": "deposit",
            "timestamp": now_ms,
            "movements": [
                {
                    "account_id": self._uuid(),
                    "movement_id": self._uuid(),
                    "movement_type": "deposit",
                    "movement_timestamp": now_ms,
                    "change": "1000000",
                    "deposit_reference_id": self._uuid(),
                }
            ],
        }

    def _timestamp(self) -> str:
        """``x-zh-hook-timestamp`` for the current time: Unix milliseconds as a string."""
        return str(int(self._clock() * 1000))

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))


def _identity_from_headers(payload_type: str, headers: Mapping[str, str]) -> ZerohashNotificationIdentity:
    return ZerohashNotificationIdentity(payload_type, headers[HEADER_NOTIFICATION_ID], headers.get(HEADER_TIMESTAMP))


def _any_2xx(status: int | None) -> bool:
    return status is not None and 200 <= status < 300


def _compact(document: Mapping[str, Any]) -> bytes:
    """Compact JSON, as Zero Hash sends it; the bytes signed are the bytes sent."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
