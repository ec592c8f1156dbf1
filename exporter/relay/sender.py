"""One relay target's sender: the deliveries it is owed, POSTed in order per account, retried until delivered.

A look at the target's queues (:meth:`~exporter.core.state.StateStore.relay_heads`: per provider and
account, the oldest delivery owed, when it is due) starts a task for each queue that has a head due,
at most :data:`MAX_IN_FLIGHT` queues at once. Each task sends its queue in order: the next delivery as
soon as the one before it is recorded delivered, so one account's deliveries never overtake each
other and a slow account holds back only itself. A request carries the body byte for byte and the
headers stored with the inbox row (WhiteBIT's ``X-TXC-*``, Zero Hash's ``x-zh-hook-*``), so the
backend verifies the provider's own signature; plus :data:`DELIVERY_ID_HEADER` for its dedupe and
the target's own headers. Redirects are not followed. A 2xx is delivered; anything else, a timeout
or no connection is tried again after the exporter's retry delay (:mod:`exporter.core.backoff`, from
:data:`FIRST_RETRY` doubling to the target's ``max_backoff``), until ``retry_for`` has passed since it
was owed: then it is a dead letter. When the target answers again after every attempt failed, the
queues waiting out their delays are tried at once. A failed attempt is logged at debug; a target
that fails every attempt has an outage log (one line, summaries, one on recovery), and a dead
letter an error line. Each answer is recorded when it came (the answers that came at
the same moment in one commit), so a delivery is sent again only when its answer was lost
(at-least-once).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from exporter.config.schema import RelayTargetConfig
from exporter.config.tls import refuse_passphrase
from exporter.core.backoff import Backoff
from exporter.core.errors import error_text
from exporter.core.metrics import (
    EXPORTER_RELAY_ATTEMPT_DURATION_SECONDS,
    EXPORTER_RELAY_DEAD_LETTERS,
    EXPORTER_RELAY_DELIVERIES,
    EXPORTER_RELAY_OLDEST_PENDING_SECONDS,
    EXPORTER_RELAY_PENDING,
)
from exporter.core.outage import OutageReporter
from exporter.core.state import InboxDelivery, RelayAnswer, RelayItem, StateError
from exporter.core.storage import RelayLog

#: WhiteBIT's base64 copy of the body, which its signature covers (docs/protocol.md).
WHITEBIT_PAYLOAD_HEADER = "X-TXC-PAYLOAD"
#: The header that names the delivery (WhiteBIT's signed ``id``; the SHA-256 of a Zero Hash body).
DELIVERY_ID_HEADER = "X-WhiteBIT-Exporter-Delivery-Id"
#: Seconds before the first retry of a delivery a target did not take.
FIRST_RETRY = 5.0
#: Deliveries (of different accounts) one target is sent at once.
MAX_IN_FLIGHT = 8
#: Failed attempts in a row after which a delivered one means the target is back (see ``_write_answers``):
#: more than one, so that one delivery the target keeps refusing is not retried early at every success.
RECOVERY_FAILURES = 3
#: Deliveries one queue sends in a row before it goes back in line behind the other queues due.
QUEUE_RUN = 64
#: Seconds an answer waits at most for answers of other queues in flight, to share their commit.
ANSWER_WAIT = 0.001
#: Deliveries of a queue read from the state file at once, with their inbox rows, while it is being sent.
PREFETCH = 16
#: Seconds between two looks at the target's queue when nothing said a delivery was owed.
IDLE_POLL = 1.0
#: Bytes of a target's answer read (the rest is discarded: only the status matters).
MAX_ANSWER_BYTES = 64 * 1024
#: Bounds (seconds) of the attempt duration histogram: a backend answers in milliseconds; a timeout is 10 s.
ATTEMPT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OUTCOMES = ("delivered", "retry", "dead")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Attempt:
    """What one POST came to: delivered (2xx), or not, with the status or the error."""

    delivered: bool
    status: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class NextStep:
    """After an attempt: delivered, tried again at ``retry_at``, or (neither) dead."""

    delivered: bool
    retry_at: float | None


def next_step(item: RelayItem, attempt: Attempt, now: float, target: RelayTargetConfig, delay: float) -> NextStep:
    """What becomes of ``item`` after ``attempt`` at ``now`` (``delay``: the retry delay it would wait). Pure.

    A retry never falls after the deadline (``retry_for`` after it was owed): the last try is at it.
    """
    if attempt.delivered:
        return NextStep(True, None)
    deadline = item.enqueued_at + target.retry_for
    if now >= deadline:
        return NextStep(False, None)
    return NextStep(False, min(now + delay, deadline))


def request_headers(delivery: InboxDelivery, target: RelayTargetConfig) -> dict[str, str]:
    """The headers of the POST: the ones stored with the row, the delivery id, the target's own.

    WhiteBIT's ``X-TXC-PAYLOAD`` is not stored with the row: the receiver accepted it only as exactly
    the base64 of the body, so it is that again, byte for byte.
    """
    headers = {"Content-Type": "application/json", **delivery.headers, DELIVERY_ID_HEADER: delivery.delivery_id}
    if delivery.provider == "whitebit" and delivery.body is not None:
        headers.setdefault(WHITEBIT_PAYLOAD_HEADER, base64.b64encode(delivery.body).decode("ascii"))
    headers.update(dict(target.headers))
    return headers


def tls_context(target: RelayTargetConfig) -> ssl.SSLContext | None:
    """The TLS context towards ``target`` (None for an http URL)."""
    if not target.url.startswith("https://"):
        return None
    context = ssl.create_default_context(cafile=target.tls.ca_file)
    if target.tls.cert_file is not None and target.tls.key_file is not None:
        context.load_cert_chain(target.tls.cert_file, target.tls.key_file, password=refuse_passphrase)
    return context


class RelaySender:
    """Sends one target what it is owed (see the module docstring); run as the task ``relay:<target>``."""

    def __init__(
        self,
        target: RelayTargetConfig,
        store: RelayLog,
        *,
        first_retry: float = FIRST_RETRY,
        idle_poll: float = IDLE_POLL,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.target = target
        self.name = f"relay:{target.name}"
        # Where the POSTs go, for the errors that do not name it (a timeout); the URL holds no credentials.
        url = urlsplit(target.url)
        self._peer = f"{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}"
        self._store = store
        self._backoff = Backoff(min(first_retry, target.max_backoff), target.max_backoff)
        self._idle_poll = idle_poll
        self._clock = clock
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        #: The task sending each queue's head, by (provider, account): one at a time per queue.
        self._in_flight: dict[tuple[str, str], asyncio.Task[None]] = {}
        #: After the state file failed it, the sender waits until this (monotonic) before reading it again.
        self._paused_until = 0.0
        #: Answers waiting for their commit (written together at the next turn of the event loop).
        self._answers: list[tuple[RelayItem, Attempt, NextStep, float, asyncio.Future[bool]]] = []
        self._flush: asyncio.Handle | None = None
        #: Attempts that failed since the last one delivered, and whether the target just answered again.
        self._failures_in_a_row = 0
        self._recovered = False
        #: The target's outage log: one line when it goes down, summaries, one when it answers again.
        self._outage = OutageReporter(self.name, clock=clock, logger=log)
        #: Attempts by outcome, and the attempt durations (bucket counts, sum), for the collector.
        self.outcomes: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        self.durations: list[int] = [0] * (len(ATTEMPT_BUCKETS) + 1)
        self.duration_sum = 0.0

    def notify(self) -> None:
        """A delivery was owed to this target: look now."""
        self._wake.set()

    async def run(self) -> None:
        """Send what is due, wait for more, until cancelled (what is in flight then is cancelled with it)."""
        timeout = aiohttp.ClientTimeout(total=self.target.timeout)
        connector = aiohttp.TCPConnector(ssl=tls_context(self.target) or False, limit=MAX_IN_FLIGHT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                while True:
                    self._wake.clear()
                    self.start_due(session)
                    try:
                        async with asyncio.timeout(self._idle_poll):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
            finally:
                for task in self._in_flight.values():
                    task.cancel()
                await asyncio.gather(*self._in_flight.values(), return_exceptions=True)
                # Answers that came before the stop are recorded now, not by a timer after the state closed.
                if self._flush is not None:
                    self._flush.cancel()
                    self._write_answers()

    def start_due(self, session: aiohttp.ClientSession) -> int:
        """Start sending each due head whose queue has nothing in flight, up to :data:`MAX_IN_FLIGHT` at
        once; how many were started. Each is recorded as soon as its own answer comes, so a slow queue
        holds back only itself."""
        free = MAX_IN_FLIGHT - len(self._in_flight)
        if free <= 0 or time.monotonic() < self._paused_until:
            return 0
        now = self._clock()
        if self._recovered:
            # Every retry falls within max_backoff of now: each queue's head is due at this look.
            self._recovered = False
            now += self.target.max_backoff
        try:
            heads = self._store.relay_heads(self.target.name, now, free, skip=self._in_flight.keys())
        except StateError as exc:
            self._pause(exc, "read what it is owed")
            return 0
        for item in heads:
            queue = (item.provider, item.account)
            self._in_flight[queue] = asyncio.create_task(self._deliver(session, item), name=f"{self.name}:{item.seq}")
        return len(heads)

    async def drain(self, session: aiohttp.ClientSession) -> int:
        """Send until nothing is due and nothing is in flight; how many attempts were recorded."""
        before = sum(self.outcomes.values())
        while True:
            self._wake.clear()
            self.start_due(session)
            if not self._in_flight:
                return sum(self.outcomes.values()) - before
            await self._wake.wait()

    async def _deliver(self, session: aiohttp.ClientSession, item: RelayItem) -> None:
        """Send one queue's deliveries in order: each next one as soon as the one before it is recorded
        delivered (or dead), until its queue has nothing due, an attempt failed, or :data:`QUEUE_RUN` were
        sent (then the queue goes back in line, so that more queues than slots all get their turn)."""
        queue: deque[RelayItem] = deque([item])
        try:
            for sent in range(QUEUE_RUN):
                if not queue:
                    queue.extend(
                        self._store.relay_queue_run(
                            self.target.name,
                            item.provider,
                            item.account,
                            self._clock(),
                            min(PREFETCH, QUEUE_RUN - sent),
                        )
                    )
                    if not queue:
                        return
                current = queue.popleft()
                attempt = await self._timed_post(session, current)
                now = self._clock()
                step = next_step(current, attempt, now, self.target, self._backoff.delay(current.attempts, self._rng))
                if not await self._record(current, attempt, step, now):
                    return
                if step.retry_at is not None:
                    return  # not due again yet
        except StateError as exc:
            self._pause(exc, "read what it is owed")
        finally:
            del self._in_flight[(item.provider, item.account)]
            self._wake.set()

    async def _record(self, item: RelayItem, attempt: Attempt, step: NextStep, now: float) -> bool:
        """Record ``attempt``'s outcome with the others answered at the same moment, in one commit; whether
        it was recorded. The queue's next delivery is sent only once it was, so that a restart never
        sends one out of order."""
        loop = asyncio.get_running_loop()
        recorded = loop.create_future()
        self._answers.append((item, attempt, step, now, recorded))
        if len(self._answers) >= max(1, len(self._in_flight) // 2):
            # Half the queues in flight wait for a commit: they share it now. Waiting for all of them
            # would set the queues in lockstep behind the slowest (bench_relay: 0.49-0.52 of the bare
            # client that way, 0.52 this way).
            if self._flush is not None:
                self._flush.cancel()
            self._flush = loop.call_soon(self._write_answers)
        elif self._flush is None:
            self._flush = loop.call_later(ANSWER_WAIT, self._write_answers)
        return bool(await recorded)

    def _write_answers(self) -> None:
        answers, self._answers, self._flush = self._answers, [], None
        try:
            self._store.relay_answers(
                self.target.name,
                [
                    RelayAnswer(item.seq, now, step.delivered, attempt.status, attempt.error, step.retry_at)
                    for item, attempt, step, now, _ in answers
                ],
            )
        except Exception as exc:
            # The answers are lost: their deliveries are still owed, so they are sent again (at-least-once).
            if isinstance(exc, StateError):
                self._pause(exc, "record an answer")
            else:
                log.exception("relay answers not recorded", extra={"target": self.target.name})
            for *_, recorded in answers:
                if not recorded.done():
                    recorded.set_result(False)
            return
        for item, attempt, step, now, recorded in answers:
            outcome = "delivered" if step.delivered else ("retry" if step.retry_at is not None else "dead")
            self.outcomes[outcome] += 1
            if step.delivered:
                if self._failures_in_a_row >= RECOVERY_FAILURES:
                    # The target answers again after failing every attempt: the queues waiting out
                    # their retry delays (up to max_backoff) are tried at the next look.
                    self._recovered = True
                    self._wake.set()
                self._failures_in_a_row = 0
                self._outage.recovered()
            else:
                self._failures_in_a_row += 1
                if self._failures_in_a_row >= RECOVERY_FAILURES:
                    # Every recent attempt failed: the target is down (one line, then a summary at most
                    # every few minutes), not one delivery it refuses among others it takes.
                    self._outage.failed(attempt.error or "not delivered")
            if outcome != "delivered":
                # outcome: "retry" (in retry_in_seconds) or "dead" (a dead letter, tried no more).
                fields: dict[str, object] = {
                    "target": self.target.name,
                    "seq": item.seq,
                    "provider": item.provider,
                    "account": item.account,
                    "attempts": item.attempts + 1,
                    "error": attempt.error,
                    "outcome": outcome,
                }
                if step.retry_at is not None:
                    fields["retry_in_seconds"] = round(step.retry_at - now)
                    log.debug("relay attempt failed", extra=fields)
                else:
                    log.error("relay delivery is a dead letter", extra=fields)
            if not recorded.done():
                recorded.set_result(True)

    def _pause(self, exc: StateError, what: str) -> None:
        self._paused_until = time.monotonic() + self._backoff.initial
        log.error(
            "relay paused: the state file failed; trying again shortly",
            extra={
                "target": self.target.name,
                "step": what,
                "error": str(exc),
                "retry_in_seconds": self._backoff.initial,
            },
        )

    async def _timed_post(self, session: aiohttp.ClientSession, item: RelayItem) -> Attempt:
        started = time.monotonic()
        try:
            return await self._post(session, item)
        finally:
            seconds = time.monotonic() - started
            index = next((i for i, bound in enumerate(ATTEMPT_BUCKETS) if seconds <= bound), len(ATTEMPT_BUCKETS))
            self.durations[index] += 1
            self.duration_sum += seconds

    async def _post(self, session: aiohttp.ClientSession, item: RelayItem) -> Attempt:
        delivery = item.delivery
        if delivery is None or delivery.body is None:
            return Attempt(False, error="the inbox row has no body any more")
        try:
            async with session.post(
                self.target.url,
                data=delivery.body,
                headers=request_headers(delivery, self.target),
                allow_redirects=False,
            ) as answer:
                await answer.content.read(MAX_ANSWER_BYTES)
                if 200 <= answer.status < 300:
                    return Attempt(True, answer.status)
                return Attempt(False, answer.status, f"HTTP {answer.status}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            return Attempt(False, error=error_text(exc, timeout=self.target.timeout, peer=self._peer))


class RelayCollector(Collector):
    """The relay's series, per target: attempts by outcome and their durations (from the senders), what is
    owed, how long the oldest has waited, and the dead letters (from the state file, at scrape time)."""

    def __init__(self, senders: Iterable[RelaySender], store: RelayLog, *, clock: Callable[[], float] = time.time):
        self._senders = tuple(senders)
        self._store = store
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        deliveries: dict[tuple[str, ...], float] = {
            (s.target.name, outcome): float(n) for s in self._senders for outcome, n in s.outcomes.items()
        }
        yield EXPORTER_RELAY_DELIVERIES.render(deliveries)
        pending: dict[tuple[str, ...], float] = {}
        oldest: dict[tuple[str, ...], float] = {}
        dead: dict[tuple[str, ...], float] = {}
        now = self._clock()
        for sender in self._senders:
            name = sender.target.name
            owed, first, letters = self._store.relay_backlog(name)
            pending[(name,)] = float(owed)
            oldest[(name,)] = 0.0 if first is None else max(now - first, 0.0)
            dead[(name,)] = float(letters)
        yield EXPORTER_RELAY_PENDING.render(pending)
        yield EXPORTER_RELAY_OLDEST_PENDING_SECONDS.render(oldest)
        yield EXPORTER_RELAY_DEAD_LETTERS.render(dead)
        durations = EXPORTER_RELAY_ATTEMPT_DURATION_SECONDS.family()
        for sender in self._senders:
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip((*ATTEMPT_BUCKETS, float("inf")), sender.durations, strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), float(cumulative)))
            durations.add_metric([sender.target.name], buckets, sender.duration_sum)
        yield durations
