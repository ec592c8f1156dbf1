"""WhiteBIT webhook deliveries: signed POSTs of the exchange's webhook events, with retries and mischief.

The :class:`WebhookSender` listens to an :class:`~exporter.simulator.model.Exchange` and delivers every
``WebhookEvent`` of an account that has a webhook key pair the way WhiteBIT documents it (reference
``whitebit.md`` 5.2 and 5.3): a POST of ``{"method", "params": {..., "nonce"}, "id"}`` serialized once
as compact JSON, with ``X-TXC-APIKEY`` (the webhook key), ``X-TXC-PAYLOAD`` (base64 of the body) and
``X-TXC-SIGNATURE`` (hex HMAC-SHA512 of that payload keyed by the webhook secret). Only HTTP 200 counts
as delivered; anything else, a timeout or a connection error is a failed attempt, retried after each
of ``retry_delays`` and then given up, because WhiteBIT has no replay.

Where WhiteBIT's documentation is silent the sender takes a stated position (reference section 8):

* The nonce is a strictly increasing integer per webhook key, following the clock in milliseconds
  (``1700000000000``-scale, like the documented examples) and bumped by one when two events share a
  millisecond. Whether WhiteBIT's nonce is per key or global, and what it is based on, is unknown.
* A retry resends the identical signed body (same ``id``, same ``nonce``) by default, the conservative
  model: retries then arrive with a nonce below newer events, which a receiver must tolerate. With
  ``retry_keeps_body=False`` a retry keeps the ``id`` but carries a fresh nonce and signature.
* The retry schedule is 5 retries 10 minutes apart, the old docs' and the FAQ's version; the newer
  "about 3 attempts, hourly" variant is one constructor argument away.

Deliveries are independent tasks: a receiver that is slow to answer one delivery does not hold back
the next event. The first attempts for one key still leave in event order, because each waits until
the previous first attempt has been written to its connection (or has failed).

For the demo and the tests the sender can also misbehave on cue: lose deliveries (``drop_next``,
``drop_probability``), forge a signature, tamper with a signed body, and replay a delivered one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any

import aiohttp

from exporter.simulator.delivery import post_once
from exporter.simulator.model import Account, Event, Exchange, WebhookEvent
from exporter.whitebit.signing import compact_json, sign_body

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

# Outcomes of a delivery record.
PENDING = "pending"
DELIVERED = "delivered"
GIVEN_UP = "given_up"
DROPPED = "dropped"
FAILED = "failed"  # a one-shot delivery (forged, tampered, replayed) that did not get a 200
ABANDONED = "abandoned"  # the sender stopped while the delivery was still being retried

# Kinds of delivery record.
KIND_EVENT = "event"
KIND_FORGED = "forged"
KIND_TAMPERED = "tampered"
KIND_REPLAYED = "replayed"

STAT_NAMES = (
    "sent",
    "delivered",
    "failed_attempts",
    "retried",
    "dropped",
    "forged",
    "tampered",
    "replayed",
    "given_up",
)


@dataclass
class DeliveryRecord:
    """What happened to one delivery: its attempts' HTTP statuses (None: no answer) and the outcome."""

    kind: str
    account: str
    method: str
    id: str
    nonce: int | None
    created_at: float
    attempts: list[int | None] = field(default_factory=list)
    outcome: str = PENDING

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Delivery:
    """A signed body on its way: the bytes and headers of the next attempt."""

    record: DeliveryRecord
    key: str
    secret: str
    body: bytes
    headers: dict[str, str]
    params: dict[str, Any]


@dataclass
class _DropRule:
    remaining: int
    method_prefix: str | None

    def matches(self, method: str) -> bool:
        return self.method_prefix is None or method.startswith(self.method_prefix)


class WebhookSender:
    """Delivers an exchange's webhook events to one URL, signed per account, with WhiteBIT's retries.

    ``start()`` subscribes to the exchange and opens the HTTP session; ``stop()`` unsubscribes, cancels
    every delivery in flight and awaits it. Exchange operations must run on the sender's event loop,
    because the listener queues deliveries there.
    """

    def __init__(
        self,
        exchange: Exchange,
        *,
        url: str,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        retry_delays: Sequence[float] = (600.0,) * 5,
        timeout: float = 10.0,
        retry_keeps_body: bool = True,
        sleep: Sleep = asyncio.sleep,
        history_limit: int = 1000,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if any(delay < 0 for delay in retry_delays):
            raise ValueError("retry delays must not be negative")
        self.exchange = exchange
        self.url = url
        self.retry_delays = tuple(retry_delays)
        self.timeout = timeout
        self.retry_keeps_body = retry_keeps_body
        self.drop_probability = 0.0
        self._clock = clock
        # A private stream derived from the given one: forged sends draw from it at moments that depend
        # on I/O timing, which must not disturb a seeded scenario sharing ``rng``.
        self._rng = random.Random(rng.getrandbits(64)) if rng is not None else random.Random()
        self._sleep = sleep
        self._last_nonce: dict[str, int] = {}  # by webhook key
        self._drop_rules: list[_DropRule] = []
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._history: deque[DeliveryRecord] = deque(maxlen=history_limit)
        self._last_delivered: dict[str, tuple[bytes, dict[str, str], DeliveryRecord]] = {}  # by account
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._queues: dict[str, asyncio.Queue[_Delivery]] = {}
        self._dispatchers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- lifecycle ---

    async def start(self) -> None:
        """Open the HTTP session and start delivering the exchange's webhook events."""
        if self._session is not None:
            return
        tracing = aiohttp.TraceConfig()
        tracing.on_request_chunk_sent.append(self._on_body_written)
        self._session = aiohttp.ClientSession(trace_configs=[tracing])
        self._loop = asyncio.get_running_loop()
        self._unsubscribe = self.exchange.subscribe(self._on_event)

    async def stop(self) -> None:
        """Stop listening, cancel and await every delivery in flight, close the session."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        tasks = [*self._dispatchers.values(), *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dispatchers.clear()
        self._queues.clear()
        self._tasks.clear()
        for record in self._history:
            if record.outcome == PENDING:
                record.outcome = ABANDONED
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- reading ---

    def stats(self) -> dict[str, int]:
        """Delivery counts.

        ``sent``: events whose delivery began; ``delivered``: answered with a 200; ``failed_attempts``:
        attempts of any kind without a 200; ``retried``: retry attempts; ``dropped``: events never sent;
        ``given_up``: retries exhausted; ``forged``, ``tampered`` and ``replayed``: those one-shot sends.
        """
        return dict(self._stats)

    def history(self) -> list[dict[str, Any]]:
        """The most recent delivery records, oldest first."""
        return [record.to_dict() for record in self._history]

    def can_replay(self, account: str) -> bool:
        """True when ``account`` has a delivered webhook that :meth:`replay_last` can resend."""
        return account in self._last_delivered

    def webhook_accounts(self) -> list[str]:
        """Names of the exchange's accounts that have a webhook key pair (the ones that get deliveries)."""
        return [name for name, account in self.exchange.accounts.items() if _has_webhook(account)]

    # --- controls ---

    def drop_next(self, count: int = 1, method_prefix: str | None = None) -> None:
        """Never send the next ``count`` deliveries whose method starts with ``method_prefix`` (any if None)."""
        if count < 1:
            raise ValueError("count must be at least 1")
        self._drop_rules.append(_DropRule(count, method_prefix))

    async def send_forged(self, account: str) -> dict[str, Any]:
        """POST a plausible delivery for ``account`` signed with a secret that is not the account's."""
        target = self._webhook_account(account)
        assert target.webhook_key is not None
        params = self._forged_params()
        body = self._body("deposit.processed", params, self._clock_nonce(), self._new_id())
        headers = sign_body(body, key=target.webhook_key, secret=f"forged-{self._rng.getrandbits(64):016x}")
        return await self._one_shot(KIND_FORGED, account, "deposit.processed", body, headers)

    async def send_tampered(self, account: str) -> dict[str, Any]:
        """POST a correctly signed delivery whose body was changed after signing (the headers are untouched).

        The amount gains a digit, as a man in the middle would like; the receiver must notice that
        ``X-TXC-PAYLOAD`` no longer matches the body.
        """
        target = self._webhook_account(account)
        assert target.webhook_key is not None and target.webhook_secret is not None
        params = self._forged_params()
        nonce, delivery_id = self._clock_nonce(), self._new_id()
        signed = self._body("deposit.processed", params, nonce, delivery_id)
        headers = sign_body(signed, key=target.webhook_key, secret=target.webhook_secret)
        altered = dict(params, amount="1" + params["amount"])
        body = self._body("deposit.processed", altered, nonce, delivery_id)
        return await self._one_shot(KIND_TAMPERED, account, "deposit.processed", body, headers)

    async def replay_last(self, account: str) -> dict[str, Any] | None:
        """Resend the last delivered body of ``account`` byte for byte with its original headers.

        Returns the new record, or None when nothing has been delivered to that account yet.
        """
        last = self._last_delivered.get(account)
        if last is None:
            return None
        body, headers, original = last
        return await self._one_shot(KIND_REPLAYED, account, original.method, body, dict(headers), original.id)

    # --- event intake (runs synchronously inside exchange operations) ---

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, WebhookEvent):
            return
        account = self.exchange.accounts.get(event.account)
        if account is None or not _has_webhook(account):
            return
        assert account.webhook_key is not None and account.webhook_secret is not None
        nonce = self._next_nonce(account.webhook_key)
        record = DeliveryRecord(KIND_EVENT, account.name, event.method, self._new_id(), nonce, self._clock())
        self._history.append(record)
        if self._take_drop(event.method):
            record.outcome = DROPPED
            self._stats["dropped"] += 1
            log.info("webhook dropped on purpose account=%s method=%s id=%s", account.name, event.method, record.id)
            return
        body = self._body(event.method, event.params, nonce, record.id)
        delivery = _Delivery(
            record=record,
            key=account.webhook_key,
            secret=account.webhook_secret,
            body=body,
            headers=sign_body(body, key=account.webhook_key, secret=account.webhook_secret),
            params=event.params,
        )
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._enqueue(delivery)
        elif self._loop is not None:
            # An exchange operation from another thread: hand the delivery to the sender's loop.
            self._loop.call_soon_threadsafe(self._enqueue, delivery)

    def _enqueue(self, delivery: _Delivery) -> None:
        if self._session is None:  # stopped meanwhile
            delivery.record.outcome = ABANDONED
            return
        queue = self._queues.get(delivery.key)
        if queue is None:
            assert self._loop is not None
            queue = self._queues[delivery.key] = asyncio.Queue()
            self._dispatchers[delivery.key] = self._loop.create_task(
                self._dispatch(queue), name=f"webhook-dispatch-{delivery.record.account}"
            )
        queue.put_nowait(delivery)

    def _take_drop(self, method: str) -> bool:
        for rule in self._drop_rules:
            if rule.matches(method):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._drop_rules.remove(rule)
                return True
        return self.drop_probability > 0 and self._rng.random() < self.drop_probability

    # --- delivery ---

    async def _dispatch(self, queue: asyncio.Queue[_Delivery]) -> None:
        # One dispatcher per key: first attempts leave in event order, and each is released as soon as
        # the previous one is on the wire, so a receiver that stalls on one delivery stalls only that one.
        while True:
            delivery = await queue.get()
            on_wire = asyncio.Event()
            task = asyncio.get_running_loop().create_task(self._deliver(delivery, on_wire))
            self._track(task)
            task.add_done_callback(lambda _task, gate=on_wire: gate.set())
            await on_wire.wait()

    async def _deliver(self, delivery: _Delivery, on_wire: asyncio.Event) -> None:
        record = delivery.record
        self._stats["sent"] += 1
        status = await self._attempt(delivery.body, delivery.headers, on_wire)
        self._note_attempt(record, status)
        for delay in self.retry_delays:
            if status == 200:
                break
            await self._sleep(delay)
            if not self.retry_keeps_body:
                self._resign(delivery)
            self._stats["retried"] += 1
            status = await self._attempt(delivery.body, delivery.headers, None)
            self._note_attempt(record, status)
        if status == 200:
            record.outcome = DELIVERED
            self._stats["delivered"] += 1
            self._last_delivered[record.account] = (delivery.body, dict(delivery.headers), record)
        else:
            record.outcome = GIVEN_UP
            self._stats["given_up"] += 1
            log.info(
                "webhook given up account=%s method=%s id=%s attempts=%d",
                record.account,
                record.method,
                record.id,
                len(record.attempts),
            )

    def _resign(self, delivery: _Delivery) -> None:
        nonce = self._next_nonce(delivery.key)
        delivery.record.nonce = nonce
        delivery.body = self._body(delivery.record.method, delivery.params, nonce, delivery.record.id)
        delivery.headers = sign_body(delivery.body, key=delivery.key, secret=delivery.secret)

    def _note_attempt(self, record: DeliveryRecord, status: int | None) -> None:
        record.attempts.append(status)
        if status != 200:
            self._stats["failed_attempts"] += 1
            log.debug("webhook attempt failed id=%s status=%s", record.id, status)

    async def _attempt(self, body: bytes, headers: dict[str, str], on_wire: asyncio.Event | None) -> int | None:
        """One POST; the HTTP status, or None when no answer came (timeout, connection error)."""
        if self._session is None:
            raise RuntimeError("webhook sender is not started")
        try:
            return await post_once(
                self._session, self.url, body, headers, timeout=self.timeout, trace_request_ctx=on_wire
            )
        finally:
            if on_wire is not None:
                on_wire.set()

    async def _one_shot(
        self,
        kind: str,
        account: str,
        method: str,
        body: bytes,
        headers: dict[str, str],
        delivery_id: str | None = None,
    ) -> dict[str, Any]:
        record = DeliveryRecord(kind, account, method, delivery_id or _id_of(body), _nonce_of(body), self._clock())
        self._history.append(record)
        self._stats[kind] += 1
        status = await self._attempt(body, headers, None)
        self._note_attempt(record, status)
        record.outcome = DELIVERED if status == 200 else FAILED
        return record.to_dict()

    @staticmethod
    async def _on_body_written(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        # Called just before the body bytes are handed to the connection; the dispatcher resumes after.
        gate = context.trace_request_ctx
        if isinstance(gate, asyncio.Event):
            gate.set()

    def _track(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- building bodies ---

    def _next_nonce(self, key: str) -> int:
        nonce = max(self._clock_nonce(), self._last_nonce.get(key, 0) + 1)
        self._last_nonce[key] = nonce
        return nonce

    def _clock_nonce(self) -> int:
        return int(self._clock() * 1000)

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    @staticmethod
    def _body(method: str, params: dict[str, Any], nonce: int, delivery_id: str) -> bytes:
        return compact_json({"method": method, "params": {**params, "nonce": nonce}, "id": delivery_id})

    def _forged_params(self) -> dict[str, Any]:
        """Deposit-shaped params no real event produced: what an attacker would like to be credited."""
        amount = self._rng.choice(("1000", "2500", "5000", "12000"))
        return {
            "address": f"sim{self._rng.getrandbits(64):016x}",
            "amount": f"{amount}.000000000000000000",
            "createdAt": int(self._clock()),
            "currency": "Tether US",
            "description": "",
            "fee": "0.000000000000000000",
            "memo": "",
            "method": 1,
            "network": "TRC20",
            "status": 3,
            "ticker": "USDT",
            "transactionHash": f"0x{self._rng.getrandbits(256):064x}",
            "uniqueId": None,
            "confirmations": {"actual": 20, "required": 20},
        }

    def _webhook_account(self, name: str) -> Account:
        account = self.exchange.accounts.get(name)
        if account is None or not _has_webhook(account):
            raise ValueError(f"account {name!r} has no webhook key pair")
        return account


def _has_webhook(account: Account) -> bool:
    return bool(account.webhook_key and account.webhook_secret)


def _id_of(body: bytes) -> str:
    try:
        value = json.loads(body).get("id")
    except (ValueError, AttributeError):
        return ""
    return value if isinstance(value, str) else ""


def _nonce_of(body: bytes) -> int | None:
    try:
        value = json.loads(body)["params"]["nonce"]
    except (ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None
