"""WhiteBIT webhook deliveries: signed POSTs of the exchange's webhook events, with retries and mischief.

The :class:`WebhookSender` listens to an :class:`~exporter.simulator.model.Exchange` and delivers every
``WebhookEvent`` of an account that has a webhook key pair the way WhiteBIT documents it
(docs/protocol.md#webhook-delivery-and-retries and #webhook-envelope-and-signature): a POST of
``{"method", "params": {..., "nonce"}, "id"}`` serialized once as compact JSON, with ``X-TXC-APIKEY``
(the webhook key), ``X-TXC-PAYLOAD`` (base64 of the body) and ``X-TXC-SIGNATURE`` (hex HMAC-SHA512 of
that payload keyed by the webhook secret). Only HTTP 200 counts as delivered; anything else, a timeout
or a connection error is a failed attempt, retried after each of ``retry_delays`` and then given up,
because WhiteBIT has no replay. The retrying, recording and counting is
:class:`~exporter.simulator.sender.RetryingSender`'s; this module builds and signs what it sends.

Where WhiteBIT's documentation is silent the sender takes a stated position
(docs/protocol.md#webhook-delivery-and-retries):

* The nonce is a strictly increasing integer per webhook key, following the clock in milliseconds
  (``1700000000000``-scale, like the documented examples) and bumped by one when two events share a
  millisecond. Whether WhiteBIT's nonce is per key or global, and what it is based on, is unknown.
* ``code.apply`` and refund deliveries carry ``"nonce": 0`` by default, the form of the documented
  envelope and refund examples (``zero_nonce_methods``), and the methods in ``nonceless_methods``
  (none by default) carry no nonce at all, the form of the deposit and withdrawal examples
  (docs/protocol.md#webhook-envelope-and-signature). Neither form takes a number from the rising
  sequence, so a receiver must accept both without treating them as regressions.
* A retry resends the identical signed body (same ``id``, same ``nonce``) by default, the conservative
  model: retries then arrive with a nonce below newer events, which a receiver must tolerate. With
  ``retry_keeps_body=False`` a retry keeps the ``id`` but carries a fresh nonce and signature.
* The retry schedule is 5 retries 10 minutes apart, the previous docs' and the FAQ's version; the
  current webhook page's "about 3 attempts, hourly" variant is one constructor argument away.

Deliveries are independent tasks: a receiver that is slow to answer one delivery does not hold back
the next event. The first attempts for one key still leave in event order, because each waits until
the previous first attempt has been written to its connection (or has failed).

For the demo and the tests the sender can also misbehave on cue: lose deliveries (``drop_next``,
``drop_probability``), forge a signature, tamper with a signed body, and replay a delivered one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import random
import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from exporter.simulator.model import Account, Event, Exchange, WebhookEvent
from exporter.simulator.sender import (
    ABANDONED,
    KIND_FORGED,
    KIND_REPLAYED,
    KIND_TAMPERED,
    Delivery,
    ProviderSender,
    Sleep,
    cancel_and_wait,
)
from exporter.whitebit.signing import compact_json, sign_body

# The kind of record for a delivery of an exchange event (the others are the one-shot kinds).
KIND_EVENT = "event"

#: Methods whose deliveries carry ``"nonce": 0`` by default, as WhiteBIT's envelope and refund
#: examples show (docs/protocol.md#webhook-envelope-and-signature).
ZERO_NONCE_METHODS = ("code.apply", "refund.successful", "refund.failed")


@dataclass
class WhitebitDeliveryIdentity:
    """Which WhiteBIT delivery a record is about: the account, the method, the delivery id and its nonce.

    ``nonce`` is None for a delivery sent without one (see ``nonceless_methods``).
    """

    account: str
    method: str
    id: str
    nonce: int | None


class WebhookSender(ProviderSender[WhitebitDeliveryIdentity]):
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
        zero_nonce_methods: Collection[str] = ZERO_NONCE_METHODS,
        nonceless_methods: Collection[str] = (),
        sleep: Sleep = asyncio.sleep,
        history_limit: int = 1000,
    ) -> None:
        if set(zero_nonce_methods) & set(nonceless_methods):
            raise ValueError("a method cannot be both in zero_nonce_methods and in nonceless_methods")
        super().__init__(
            url=url,
            log_name="webhook",
            acknowledges=_only_200,
            one_shot_kinds=(KIND_FORGED, KIND_TAMPERED, KIND_REPLAYED),
            replay_scope=lambda identity: identity.account,
            retry_delays=retry_delays,
            timeout=timeout,
            clock=clock,
            rng=rng,
            sleep=sleep,
            history_limit=history_limit,
        )
        self.exchange = exchange
        self.retry_keeps_body = retry_keeps_body
        self.zero_nonce_methods = frozenset(zero_nonce_methods)
        self.nonceless_methods = frozenset(nonceless_methods)
        self._last_nonce: dict[str, int] = {}  # by webhook key
        self._unsubscribe: Callable[[], None] | None = None
        self._queues: dict[str, asyncio.Queue[Delivery[WhitebitDeliveryIdentity]]] = {}  # by webhook key
        self._dispatchers: dict[str, asyncio.Task[None]] = {}  # by webhook key

    # --- lifecycle ---

    async def start(self) -> None:
        """Open the HTTP session and start delivering the exchange's webhook events."""
        if self._deliveries.started:
            return
        await self._deliveries.start()
        self._unsubscribe = self.exchange.subscribe(self._on_event)

    async def stop(self) -> None:
        """Stop listening, cancel and await every delivery in flight, close the session."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        await cancel_and_wait(self._dispatchers.values())
        self._dispatchers.clear()
        self._queues.clear()
        await self._deliveries.stop()

    # --- reading ---

    def can_replay(self, account: str) -> bool:
        """True when ``account`` has a delivered webhook that :meth:`replay_last` can resend."""
        return self._deliveries.last_acknowledged(account) is not None

    def webhook_accounts(self) -> list[str]:
        """Names of the exchange's accounts that have a webhook key pair (the ones that get deliveries)."""
        return [name for name, account in self.exchange.accounts.items() if _key_pair(account) is not None]

    # --- controls ---

    def drop_next(self, count: int = 1, method_prefix: str | None = None) -> None:
        """Never send the next ``count`` deliveries whose method starts with ``method_prefix`` (any if None)."""
        self._deliveries.drop_next(count, lambda method: method_prefix is None or method.startswith(method_prefix))

    async def send_forged(self, account: str) -> dict[str, Any]:
        """POST a plausible delivery for ``account`` signed with a secret that is not the account's."""
        key, _ = self._webhook_key_pair(account)
        params = self._forged_params()
        identity = WhitebitDeliveryIdentity(account, "deposit.processed", self._new_id(), self._clock_nonce())
        body = _body(identity, params)
        headers = sign_body(body, key=key, secret=f"forged-{self._rng.getrandbits(64):016x}")
        return await self._deliveries.send_once(KIND_FORGED, identity, body, headers)

    async def send_tampered(self, account: str) -> dict[str, Any]:
        """POST a correctly signed delivery whose body was changed after signing (the headers are untouched).

        The amount gains a digit, as a man in the middle would like; the receiver must notice that
        ``X-TXC-PAYLOAD`` no longer matches the body.
        """
        key, secret = self._webhook_key_pair(account)
        params = self._forged_params()
        identity = WhitebitDeliveryIdentity(account, "deposit.processed", self._new_id(), self._clock_nonce())
        headers = sign_body(_body(identity, params), key=key, secret=secret)
        body = _body(identity, dict(params, amount="1" + params["amount"]))
        return await self._deliveries.send_once(KIND_TAMPERED, identity, body, headers)

    async def replay_last(self, account: str) -> dict[str, Any] | None:
        """Resend the last delivered body of ``account`` byte for byte with its original headers.

        Returns the new record, or None when nothing has been delivered to that account yet.
        """
        return await self._deliveries.replay_last(account, lambda last: dataclasses.replace(last.record.identity))

    # --- event intake (runs synchronously inside exchange operations) ---

    def _on_event(self, event: Event) -> None:
        if not isinstance(event, WebhookEvent):
            return
        account = self.exchange.accounts.get(event.account)
        key_pair = _key_pair(account) if account is not None else None
        if key_pair is None:
            return
        key, secret = key_pair
        identity = WhitebitDeliveryIdentity(
            event.account, event.method, self._new_id(), self._event_nonce(key, event.method)
        )
        record = self._deliveries.record(KIND_EVENT, identity)
        if self._deliveries.drop_if_due(record, event.method):
            return
        body = _body(identity, event.params)
        resign = None if self.retry_keeps_body else functools.partial(self._resign, key, secret, event.params)
        delivery = Delivery(record, body, sign_body(body, key=key, secret=secret), resign)
        if not self._deliveries.call_on_loop(functools.partial(self._enqueue, key, delivery)):
            record.outcome = ABANDONED

    def _enqueue(self, key: str, delivery: Delivery[WhitebitDeliveryIdentity]) -> None:
        if not self._deliveries.started:  # stopped while the delivery was handed over from another thread
            delivery.record.outcome = ABANDONED
            return
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = asyncio.Queue()
            self._dispatchers[key] = asyncio.get_running_loop().create_task(
                self._dispatch(queue), name=f"webhook-dispatch-{delivery.record.identity.account}"
            )
        queue.put_nowait(delivery)

    async def _dispatch(self, queue: asyncio.Queue[Delivery[WhitebitDeliveryIdentity]]) -> None:
        # One dispatcher per key: first attempts leave in event order, and each is released as soon as
        # the previous one is on the wire, so a receiver that stalls on one delivery stalls only that one.
        while True:
            delivery = await queue.get()
            on_wire = asyncio.Event()
            self._deliveries.launch(delivery, on_wire)
            await on_wire.wait()

    def _resign(
        self, key: str, secret: str, params: dict[str, Any], delivery: Delivery[WhitebitDeliveryIdentity]
    ) -> None:
        identity = delivery.record.identity
        identity.nonce = self._event_nonce(key, identity.method)
        delivery.body = _body(identity, params)
        delivery.headers = sign_body(delivery.body, key=key, secret=secret)

    # --- building bodies ---

    def _event_nonce(self, key: str, method: str) -> int | None:
        """The nonce of a new delivery (or retry) of ``method``: 0, none, or the next of the rising sequence."""
        if method in self.zero_nonce_methods:
            return 0
        if method in self.nonceless_methods:
            return None
        return self._next_nonce(key)

    def _next_nonce(self, key: str) -> int:
        nonce = max(self._clock_nonce(), self._last_nonce.get(key, 0) + 1)
        self._last_nonce[key] = nonce
        return nonce

    def _clock_nonce(self) -> int:
        return int(self._clock() * 1000)

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

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

    def _webhook_key_pair(self, name: str) -> tuple[str, str]:
        account = self.exchange.accounts.get(name)
        key_pair = _key_pair(account) if account is not None else None
        if key_pair is None:
            raise ValueError(f"account {name!r} has no webhook key pair")
        return key_pair


def _only_200(status: int | None) -> bool:
    return status == 200


def _key_pair(account: Account) -> tuple[str, str] | None:
    """The account's webhook key and secret, or None when it has no complete pair (no deliveries)."""
    if not account.webhook_key or not account.webhook_secret:
        return None
    return account.webhook_key, account.webhook_secret


def _body(identity: WhitebitDeliveryIdentity, params: dict[str, Any]) -> bytes:
    if identity.nonce is not None:
        params = {**params, "nonce": identity.nonce}
    document = {"method": identity.method, "params": params, "id": identity.id}
    return compact_json(document)
