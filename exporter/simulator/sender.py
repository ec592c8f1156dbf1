"""The retrying webhook sender that the simulator's WhiteBIT and Zero Hash senders are built on.

A provider sender (:class:`~exporter.simulator.webhooks.WebhookSender`,
:class:`~exporter.simulator.zerohash.ZerohashSender`) builds and signs bodies and headers; a
:class:`RetryingSender` does everything after that, the same way for both: it POSTs a signed body to one
URL, retries it after each delay of a schedule until an answer counts as an acknowledgement (the
provider's rule), optionally lets the provider re-sign the body before a retry, keeps a
:class:`DeliveryRecord` of every delivery in a bounded history, counts what happened, loses deliveries
on purpose when a drop rule or the drop probability says so, sends one-shot deliveries (forged,
tampered, replayed …) and remembers the last acknowledged delivery so that it can be replayed.

Redirects are not followed: a webhook endpoint that answers 3xx has not accepted the delivery.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import aiohttp

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

#: The provider's dataclass that says which delivery a record is about (its fields appear in ``history()``).
IdentityT = TypeVar("IdentityT", bound="DataclassInstance")

# Outcomes of a delivery record.
PENDING = "pending"
DELIVERED = "delivered"
GIVEN_UP = "given_up"
DROPPED = "dropped"
FAILED = "failed"  # a one-shot delivery (forged, tampered, replayed …) that was not acknowledged
ABANDONED = "abandoned"  # the sender stopped while the delivery was still being retried

# Kinds of one-shot delivery both providers send; a provider may add its own (Zero Hash: stale).
KIND_FORGED = "forged"
KIND_TAMPERED = "tampered"
KIND_REPLAYED = "replayed"


@dataclass
class DeliveryRecord(Generic[IdentityT]):
    """What happened to one delivery: each attempt's HTTP status (None: no answer) and the outcome.

    ``identity`` holds the provider's own fields (WhiteBIT: account, method, id, nonce; Zero Hash:
    payload type, notification id, timestamp); a re-sign before a retry may update them.
    """

    kind: str
    identity: IdentityT
    created_at: float
    attempts: list[int | None] = field(default_factory=list)
    outcome: str = PENDING

    def to_dict(self) -> dict[str, Any]:
        """The record as ``history()`` shows it: the kind, the identity's fields, then the delivery's course."""
        return {
            "kind": self.kind,
            **asdict(self.identity),
            "created_at": self.created_at,
            "attempts": list(self.attempts),
            "outcome": self.outcome,
        }


@dataclass
class Delivery(Generic[IdentityT]):
    """A signed body on its way: the bytes and headers of its next attempt, and its record.

    ``resign``, when set, is called before every retry and may replace ``body`` and ``headers`` (and
    update the record's identity), e.g. to carry a fresh nonce or timestamp.
    """

    record: DeliveryRecord[IdentityT]
    body: bytes
    headers: dict[str, str]
    resign: Callable[[Delivery[IdentityT]], None] | None = None


@dataclass
class _DropRule:
    remaining: int
    matches: Callable[[str], bool]


class RetryingSender(Generic[IdentityT]):
    """POSTs signed deliveries to one URL, retries them on a schedule and records what happened.

    ``acknowledges`` decides which answers count as delivered (None stands for no answer);
    ``replay_scope`` names the group within which :meth:`last_acknowledged` remembers the latest
    acknowledged delivery (one for the whole sender unless given). ``stats()`` has ``sent``,
    ``delivered``, ``failed_attempts``, ``retried``, ``dropped``, one counter per kind in
    ``one_shot_kinds`` and ``given_up``. ``rng`` draws the drop probability; a provider shares its
    own stream with it so that draws keep their order.
    """

    def __init__(
        self,
        *,
        url: str,
        log_name: str,
        acknowledges: Callable[[int | None], bool],
        one_shot_kinds: Iterable[str],
        replay_scope: Callable[[IdentityT], str] | None = None,
        retry_delays: Sequence[float],
        timeout: float,
        clock: Callable[[], float] = time.time,
        rng: random.Random,
        sleep: Sleep = asyncio.sleep,
        history_limit: int = 1000,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        if any(delay < 0 for delay in retry_delays):
            raise ValueError("retry delays must not be negative")
        self.url = url
        self.retry_delays = tuple(retry_delays)
        self.timeout = timeout
        self.drop_probability = 0.0
        self._log_name = log_name
        self._acknowledges = acknowledges
        self._replay_scope = replay_scope
        self._clock = clock
        self._rng = rng
        self._sleep = sleep
        self._stats = dict.fromkeys(("sent", "delivered", "failed_attempts", "retried", "dropped"), 0)
        self._stats |= dict.fromkeys(one_shot_kinds, 0)
        self._stats["given_up"] = 0
        self._history: deque[DeliveryRecord[IdentityT]] = deque(maxlen=history_limit)
        self._drop_rules: list[_DropRule] = []
        self._last_acknowledged: dict[str, Delivery[IdentityT]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # --- lifecycle ---

    @property
    def started(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._session is not None

    async def start(self) -> None:
        """Open the HTTP session on the running event loop (idempotent)."""
        if self._session is not None:
            return
        tracing = aiohttp.TraceConfig()
        tracing.on_request_chunk_sent.append(_on_body_written)
        self._session = aiohttp.ClientSession(trace_configs=[tracing])
        self._loop = asyncio.get_running_loop()

    async def stop(self) -> None:
        """Cancel and await every delivery in flight, mark the pending ones abandoned, close the session."""
        await cancel_and_wait(self._tasks)
        self._tasks.clear()
        for record in self._history:
            if record.outcome == PENDING:
                record.outcome = ABANDONED
        if self._session is not None:
            await self._session.close()
            self._session = None

    def call_on_loop(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` on the sender's event loop; False (and nothing run) when not started.

        Called from that loop it runs at once; from another thread (an exchange operation driven
        elsewhere) it is handed to the loop, because deliveries may only be started there.
        """
        if self._session is None or self._loop is None:
            return False
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            callback()
        else:
            self._loop.call_soon_threadsafe(callback)
        return True

    # --- reading ---

    def stats(self) -> dict[str, int]:
        """The delivery counters (see the class docstring)."""
        return dict(self._stats)

    def history(self) -> list[dict[str, Any]]:
        """The most recent delivery records, oldest first."""
        return [record.to_dict() for record in self._history]

    def last_acknowledged(self, scope: str = "") -> Delivery[IdentityT] | None:
        """The latest acknowledged delivery within ``scope`` (see ``replay_scope``), or None."""
        return self._last_acknowledged.get(scope)

    def _fields(self, record: DeliveryRecord[IdentityT], **more: object) -> dict[str, object]:
        """A log line's fields about ``record``: which sender, the kind, the identity's fields, then ``more``."""
        return {"sender": self._log_name, "kind": record.kind, **asdict(record.identity), **more}

    # --- records and drops ---

    def record(self, kind: str, identity: IdentityT) -> DeliveryRecord[IdentityT]:
        """A new pending record, already in the history."""
        record = DeliveryRecord(kind, identity, self._clock())
        self._history.append(record)
        return record

    def drop_next(self, count: int, matches: Callable[[str], bool]) -> None:
        """Lose the next ``count`` deliveries whose topic (method, payload type) ``matches`` accepts."""
        if count < 1:
            raise ValueError("count must be at least 1")
        self._drop_rules.append(_DropRule(count, matches))

    def drop_if_due(self, record: DeliveryRecord[IdentityT], topic: str) -> bool:
        """Mark ``record`` dropped and return True when a drop rule or the drop probability claims it."""
        # Draw only when no rule matched and a probability is set: the stream also makes the provider's
        # ids, so a needless draw would change every id after it in a seeded run.
        dropped = self._use_drop_rule(topic) or (
            self.drop_probability > 0 and self._rng.random() < self.drop_probability
        )
        if not dropped:
            return False
        self.mark_dropped(record)
        log.info("simulated delivery dropped on purpose", extra=self._fields(record))
        return True

    def _use_drop_rule(self, topic: str) -> bool:
        for rule in self._drop_rules:
            if rule.matches(topic):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._drop_rules.remove(rule)
                return True
        return False

    def mark_dropped(self, record: DeliveryRecord[IdentityT]) -> None:
        """Count ``record`` as a delivery that is never sent."""
        record.outcome = DROPPED
        self._stats["dropped"] += 1

    # --- sending ---

    def launch(self, delivery: Delivery[IdentityT], on_wire: asyncio.Event | None = None) -> None:
        """Start delivering, with retries, in a task of its own; call on the sender's loop.

        ``on_wire`` is set once the first attempt's body has been handed to its connection, or the
        attempt is over, whichever comes first: a caller that orders first attempts waits for it.
        """
        if self._session is None or self._loop is None:
            delivery.record.outcome = ABANDONED
            if on_wire is not None:
                on_wire.set()
            return
        task = self._loop.create_task(self._deliver(delivery, on_wire))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if on_wire is not None:
            # Also when the task is cancelled before its first attempt began, so no caller waits forever.
            task.add_done_callback(lambda _task: on_wire.set())

    async def send_once(self, kind: str, identity: IdentityT, body: bytes, headers: dict[str, str]) -> dict[str, Any]:
        """POST ``body`` once, without retries, counted under ``kind``; returns the record's dict."""
        record = self.record(kind, identity)
        self._stats[kind] += 1
        status = await self._attempt(record, body, headers, None)
        record.outcome = DELIVERED if self._acknowledges(status) else FAILED
        return record.to_dict()

    async def replay_last(
        self, scope: str, identity_of: Callable[[Delivery[IdentityT]], IdentityT]
    ) -> dict[str, Any] | None:
        """Resend the last acknowledged delivery of ``scope`` byte for byte with its original headers.

        ``identity_of`` gives the replay's record identity. Returns the new record's dict, or None when
        nothing has been acknowledged in that scope yet.
        """
        last = self._last_acknowledged.get(scope)
        if last is None:
            return None
        return await self.send_once(KIND_REPLAYED, identity_of(last), last.body, dict(last.headers))

    async def _deliver(self, delivery: Delivery[IdentityT], on_wire: asyncio.Event | None) -> None:
        record = delivery.record
        self._stats["sent"] += 1
        status = await self._attempt(record, delivery.body, delivery.headers, on_wire)
        for delay in self.retry_delays:
            if self._acknowledges(status):
                break
            await self._sleep(delay)
            if delivery.resign is not None:
                delivery.resign(delivery)
            self._stats["retried"] += 1
            status = await self._attempt(record, delivery.body, delivery.headers, None)
        if self._acknowledges(status):
            record.outcome = DELIVERED
            self._stats["delivered"] += 1
            scope = self._replay_scope(record.identity) if self._replay_scope is not None else ""
            self._last_acknowledged[scope] = delivery
        else:
            record.outcome = GIVEN_UP
            self._stats["given_up"] += 1
            log.info("simulated delivery given up", extra=self._fields(record, attempts=len(record.attempts)))

    async def _attempt(
        self,
        record: DeliveryRecord[IdentityT],
        body: bytes,
        headers: dict[str, str],
        on_wire: asyncio.Event | None,
    ) -> int | None:
        """One POST, noted on ``record``; the HTTP status, or None when no answer came."""
        try:
            status = await self._post(body, headers, on_wire)
        finally:
            if on_wire is not None:
                on_wire.set()
        record.attempts.append(status)
        if not self._acknowledges(status):
            self._stats["failed_attempts"] += 1
            answer = "none" if status is None else status
            log.debug("simulated delivery attempt failed", extra=self._fields(record, status=answer))
        return status

    async def _post(self, body: bytes, headers: dict[str, str], on_wire: asyncio.Event | None) -> int | None:
        if self._session is None:
            raise RuntimeError(f"{self._log_name} sender is not started")
        try:
            async with self._session.post(
                self.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                allow_redirects=False,
                trace_request_ctx=on_wire,
            ) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            log.debug(
                "simulated delivery attempt got no answer",
                extra={"sender": self._log_name, "url": self.url, "error": type(error).__name__},
            )
            return None


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until each has finished; what they raise is not passed on."""
    pending = list(tasks)  # a snapshot: done callbacks may remove tasks from the caller's collection
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _on_body_written(
    session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestChunkSentParams
) -> None:
    # aiohttp calls this just before the body bytes go to the connection: the moment after which a
    # later delivery can no longer overtake this one on the wire.
    gate = context.trace_request_ctx
    if isinstance(gate, asyncio.Event):
        gate.set()


class ProviderSender(Generic[IdentityT]):
    """A provider's sender: its own :class:`RetryingSender`, and what it shows of it.

    A subclass passes its delivery rules to this constructor and adds what is its provider's own:
    bodies, signatures and the deliveries that only it makes.
    """

    def __init__(
        self,
        *,
        url: str,
        log_name: str,
        acknowledges: Callable[[int | None], bool],
        one_shot_kinds: Iterable[str],
        replay_scope: Callable[[IdentityT], str] | None = None,
        retry_delays: Sequence[float],
        timeout: float,
        clock: Callable[[], float],
        rng: random.Random | None,
        sleep: Sleep,
        history_limit: int,
    ) -> None:
        self._clock = clock
        # A private stream derived from the given one: forged and decoy sends draw from it at moments
        # that depend on I/O timing, which must not disturb a seeded scenario sharing ``rng``.
        self._rng = random.Random(rng.getrandbits(64)) if rng is not None else random.Random()
        self._deliveries: RetryingSender[IdentityT] = RetryingSender(
            url=url,
            log_name=log_name,
            acknowledges=acknowledges,
            one_shot_kinds=one_shot_kinds,
            replay_scope=replay_scope,
            retry_delays=retry_delays,
            timeout=timeout,
            clock=clock,
            rng=self._rng,
            sleep=sleep,
            history_limit=history_limit,
        )

    @property
    def url(self) -> str:
        """Where deliveries go; settable, e.g. for a receiver that restarted on another port."""
        return self._deliveries.url

    @url.setter
    def url(self, url: str) -> None:
        self._deliveries.url = url

    @property
    def drop_probability(self) -> float:
        """The share (0 to 1) of deliveries never sent, decided as each one is made."""
        return self._deliveries.drop_probability

    @drop_probability.setter
    def drop_probability(self, share: float) -> None:
        self._deliveries.drop_probability = share

    def stats(self) -> dict[str, int]:
        """Delivery counts.

        ``sent``: deliveries whose first attempt began; ``delivered``: acknowledged (WhiteBIT: a 200,
        Zero Hash: any 2xx); ``failed_attempts``: attempts of any kind not acknowledged; ``retried``:
        retry attempts; ``dropped``: never sent; ``given_up``: retries exhausted; and one counter per
        one-shot kind (``forged``, ``tampered``, ``replayed``, and Zero Hash's ``stale``).
        """
        return self._deliveries.stats()

    def history(self) -> list[dict[str, Any]]:
        """The most recent delivery records, oldest first."""
        return self._deliveries.history()
