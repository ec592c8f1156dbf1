"""The private WebSocket of one WhiteBIT account: balances and open orders that stay true.

One :class:`WebSocketSource` per account with API credentials keeps one connection up:

1. **Token.** A fresh token per connection from ``token_provider`` (in the exporter,
   ``RestClient.websocket_token``, i.e. ``/api/v4/profile/websocket_token``, one attempt: the
   reconnect backoff below paces the retries). That endpoint allows 10 requests per 60 s, so the
   source never asks more than :data:`TOKEN_BUDGET` times per 60 s, whatever the reconnect rate: a
   reconnect storm waits instead of exhausting it.
2. **Connect** with protocol-level ping frames off (WhiteBIT answers them unreliably,
   docs/protocol.md#websocket-connection) and **authorize** with ``[token, "public"]``. A failed
   ``authorize`` ends the connection (and is retried through a reconnect).
3. **Channels, each on its own.** ``balanceSpot``, ``balanceMargin`` and, when markets are
   configured, ``ordersPending`` are synced independently on the one connection: each subscribes,
   then reads its snapshot. A channel whose subscription or request answers an error (or an
   unusable result) is *failing*: the error is counted in ``whitebit_websocket_errors_total{method}``
   and logged, the channel is retried on the same connection after a backoff of its own
   (:class:`~exporter.core.backoff.Backoff`, 1 s doubling to 30 s), and the other channels sync and
   serve meanwhile. A request that gets no reply, a missing pong or a closed socket end the
   connection instead.
4. **Keepalive.** A JSON ``ping`` every ``ping_interval`` (25 s; WhiteBIT closes after 60 s of client
   silence) from authorization on, and a reconnect when no ``pong`` comes within ``pong_timeout``
   (10 s). Every request has the same deadline; a connection also paces its requests under
   WhiteBIT's 200 per minute.
5. **Backoff** between connections (1 s doubling to 30 s, each cut by up to 20 % at random); it
   resets only after a connection stayed connected for ``stable_after`` seconds, so a server that
   accepts and drops at once cannot make the source hammer it.

**What the state means.** ``connected`` (``whitebit_websocket_connected``) is 1 once the connection
is authorized and every channel has either synced or failed its first attempt, i.e. every channel
that works is synced; ``channels`` (``whitebit_websocket_channel_synced{channel}``) says which. The
health entry ``websocket <account>`` (``whitebit_up``, ``/-/ready``) is OK while connected with every
channel synced. A failing *balance* channel leaves it OK with a note on ``/-/ready`` (the channel,
the error, the next retry): its wallet is kept current by the account's REST fallback poll meanwhile
(:meth:`WebSocketSource.supplies` turns false for that wallet), whose own health then says whether
the wallet is served; an account whose ``balanceMargin`` is refused for good (no collateral trading,
docs/protocol.md#balance-channels) is therefore not "down". A failing ``ordersPending`` has no
stand-in and makes the entry fail. While disconnected, balances and orders keep their values and
timestamps, every channel reads 0 and the health entry says why.

**Freshness.** Every ``pong`` proves the connection and its subscriptions alive, so it confirms each
synced balance wallet (:meth:`~exporter.whitebit.balances.AccountBalances.confirm`): a wallet that
does not move stays fresh while the channel is live, and goes stale when it is not.

**Replies and pushes may arrive in any order.** WhiteBIT does not document that a connection's
replies and pushes come in the order the server computed them, nor in which order
``ordersPending_request`` lists orders (docs/protocol.md#open-order-listing). So nothing here relies
on either. What is relied on: a subscription works from the moment its reply is computed; pushes
arrive in the order they were computed; a page is a contiguous slice, sorted by order id (oldest or
newest first), of the market's open orders at one moment, with ``total`` their number then; order
ids are never reused; an order's ``mtime`` never goes back and its ``left`` never grows.

- **Balances.** After ``X_subscribe`` succeeded, pushes are kept (the latest values per asset) until
  the ``X_request`` snapshot arrives; the snapshot replaces the wallet with those values laid over
  it, and later pushes apply. A push never reflects less than an earlier one, so once every push
  computed before the snapshot has arrived, each asset holds its latest pushed value or, if it did
  not change since the subscription, the snapshot's: the truth. (Dropping pushes that arrive before
  the reply, as an in-order server would allow, could lose a push computed after the snapshot.)
- **Open orders.** Subscribe first, then page every configured market into a *staging* book, with
  every push applied to it as it arrives; when every market is read the staging book replaces the
  live one in one step. Between them stands a :class:`~exporter.whitebit.websocket.orders.SnapshotMerge`
  (kept for ``resync_grace`` seconds after the swap for pushes still on their way): a record older
  than a push cannot undo it, a finished id never comes back, and each push is counted exactly once,
  a "new" for an order seen in a page counting as ``new``, not as a stop activation, unless the
  order is a stop order whose ``mtime`` is past its ``ctime``.

  *Why the book converges.* Take an order that was open from the first page's moment to the last's.
  Each page relied on covers, at its moment, every open order whose id lies between its first and
  last record (a sorted slice); the first page starts at offset 0 and so covers the head of the
  list, the last is short and so covers its tail, and each page is relied on only if its first id
  is at or before the previous page's last id in the list's order
  (:class:`~exporter.whitebit.websocket.snapshot.MarketPaging`). These ranges leave no gap, so the
  order is in some page, whichever way the list is sorted and however it moved in between (new
  orders at the head when newest first, at the tail when oldest first; finished ones closing up the
  list). Every other order that matters was created or finished after the subscription, so its
  ``new`` or ``finish`` push reaches the merge, which keeps finishes final and states latest. A page
  that does not reach back is not relied on and the offset steps back (doubling); each page's
  ``total`` must agree with it. Re-reads are bounded: a market whose pages still do not add up
  fails the channel, which is retried after its backoff on the same connection.

Frames that cannot be used (bad JSON, unknown method, missing fields, wrong types) are counted in
``whitebit_websocket_messages_invalid_total{reason}`` and skipped; the connection stays up.

**Logs.** The connection and each channel keep an outage log (:mod:`exporter.core.outage`): a line
when the connection (or a channel) starts failing, with the reason in plain words (``token request
failed: /api/v4/profile/websocket_token: connection refused (127.0.0.1:9)``, ``cannot connect: timed
out after 10s (api.whitebit.com:443)``), a summary every 5 minutes at most while it keeps failing,
and a line when it is back (the connection once it is synced). Each attempt and retry is logged at
debug level.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from exporter.core.backoff import DEFAULT_BACKOFF, Backoff
from exporter.core.errors import error_text
from exporter.core.health import HealthRegistry, SourceHealth
from exporter.core.outage import OutageReporter
from exporter.core.window import SlidingWindow
from exporter.whitebit.balances import WALLET_COLLATERAL, WALLET_SPOT, AccountBalances
from exporter.whitebit.rest import RestError
from exporter.whitebit.websocket.orders import MODIFY_WINDOW, OrderBook, OrderEvents, SnapshotMerge
from exporter.whitebit.websocket.parsing import (
    INVALID_BAD_JSON,
    INVALID_BAD_VALUE,
    INVALID_BINARY,
    INVALID_NOT_OBJECT,
    INVALID_REASONS,
    INVALID_UNEXPECTED_REPLY,
    INVALID_UNKNOWN_METHOD,
    INVALID_WRONG_TYPE,
    METHOD_MARGIN,
    METHOD_ORDERS,
    METHOD_SPOT,
    InvalidMessage,
    parse_margin_snapshot,
    parse_margin_update,
    parse_spot_snapshot,
    parse_spot_update,
)
from exporter.whitebit.websocket.snapshot import MarketPaging, PagingFailed

log = logging.getLogger(__name__)

TokenProvider = Callable[[], Awaitable[str]]
Wallet = dict[str, tuple[Decimal, Decimal]]

#: Token requests allowed per :data:`TOKEN_WINDOW` seconds (WhiteBIT allows 10; two are left for
#: anything else that shares the key, e.g. a restart of the process within the minute).
TOKEN_BUDGET = 8
TOKEN_WINDOW = 60.0
#: Requests one connection sends per 60 s at most (WhiteBIT allows 200, pings included).
REQUEST_BUDGET = 180
REQUEST_WINDOW = 60.0
#: ``ordersPending_request`` page size (WhiteBIT's maximum).
PAGE_LIMIT = 100
#: Markets whose snapshots are read at once on one connection.
PAGING_CONCURRENCY = 4
#: Seconds the snapshot merge stays in front of the live book after a swap, for pushes computed
#: before the last page that are still on their way.
RESYNC_GRACE = 30.0
#: The ``authorize`` second parameter as documented.
AUTHORIZE_SOURCE = "public"

#: The private channels, as the ``channel`` label values.
CHANNEL_SPOT = "balanceSpot"
CHANNEL_MARGIN = "balanceMargin"
CHANNEL_ORDERS = "ordersPending"

#: The wallet each balance channel keeps current.
_CHANNEL_WALLETS = {CHANNEL_SPOT: WALLET_SPOT, CHANNEL_MARGIN: WALLET_COLLATERAL}

#: Channel states.
SYNCING = "syncing"  # first attempt on this connection in progress
SYNCED = "synced"
FAILING = "failing"  # an attempt failed; retried after a backoff

# Requests whose failures are counted (``whitebit_websocket_errors_total{method}``); "token" is the
# REST token request.
ERROR_METHODS = (
    "token",
    "authorize",
    "ping",
    "balanceSpot_subscribe",
    "balanceMargin_subscribe",
    "ordersPending_subscribe",
    "balanceSpot_request",
    "balanceMargin_request",
    "ordersPending_request",
)


class Disconnect(Exception):
    """The connection is unusable; the message is the operator-readable reason (no secrets)."""


class RequestFailed(Exception):
    """A request failed on a working connection: an ``error`` reply or an unusable result."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(reason)
        self.method = method


class ReplyError(RequestFailed):
    """A reply carried an ``error`` object."""

    def __init__(self, method: str, code: Any, message: Any) -> None:
        super().__init__(method, f"{method} failed: error {str(code)[:16]} {str(message)[:120]}")
        self.code = code


@dataclass
class Channel:
    """One private channel's state on the current connection."""

    name: str
    state: str = SYNCING
    #: Why it is failing (empty otherwise): the error and when it is retried.
    reason: str = ""

    @property
    def synced(self) -> bool:
        return self.state == SYNCED


class _Connection:
    """One open socket: request ids, the replies awaited, and the request pace."""

    def __init__(self, ws: ClientConnection, pace: SlidingWindow) -> None:
        self.ws = ws
        self.pace = pace
        self.next_id = 1
        # id -> (method, future, on_reply run by the reader in stream order)
        self.pending: dict[int, tuple[str, asyncio.Future[Any], Callable[[Any], Any] | None]] = {}
        self.closed_reason: str | None = None

    def fail_all(self, reason: str) -> None:
        for _, future, _ in self.pending.values():
            if not future.done():
                future.set_exception(Disconnect(reason))
        self.pending.clear()


class WebSocketSource:
    """Keeps the private WebSocket of ``account`` connected and its balances and orders true.

    ``run()`` runs until cancelled (the exporter's supervisor owns it). State for the collector:
    :attr:`book` (open orders and event counters), :attr:`connected`, :attr:`channels`,
    :attr:`reconnects`, :attr:`last_message_at`, :attr:`invalid` and :attr:`errors`; balances go to
    ``balances``.
    """

    def __init__(
        self,
        account: str,
        url: str,
        markets: Sequence[str],
        token_provider: TokenProvider,
        balances: AccountBalances,
        health: HealthRegistry,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        ping_interval: float = 25.0,
        pong_timeout: float = 10.0,
        backoff: Backoff = DEFAULT_BACKOFF,
        stable_after: float = 60.0,
        token_budget: int = TOKEN_BUDGET,
        token_window: float = TOKEN_WINDOW,
        request_budget: int = REQUEST_BUDGET,
        page_limit: int = PAGE_LIMIT,
        modify_window: float = MODIFY_WINDOW,
        resync_grace: float = RESYNC_GRACE,
        rng: random.Random | None = None,
    ) -> None:
        if not 2 <= page_limit <= PAGE_LIMIT:
            raise ValueError(f"page_limit must be 2..{PAGE_LIMIT}")
        self.account = account
        self.url = url
        self.markets = tuple(dict.fromkeys(markets))
        self._token_provider = token_provider
        self.balances = balances
        self.health: SourceHealth = health.register("websocket", account, max_age=ping_interval + pong_timeout + 5.0)
        #: The connection's outage log (each channel has its own, ``channel_outages``).
        self.outage = OutageReporter("websocket", account, clock=clock, logger=log)
        parts = urlsplit(url)
        self._peer = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'wss' else 80)}"
        self._clock = clock
        self._monotonic = monotonic
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.backoff = backoff
        self.stable_after = stable_after
        self._tokens = SlidingWindow(token_budget, token_window, clock=monotonic)
        self._request_budget = request_budget
        self.page_limit = page_limit
        self.resync_grace = resync_grace
        self._rng = rng if rng is not None else random.Random()
        self.book = OrderBook(
            self.markets,
            OrderEvents(self.markets, window=modify_window, clock=monotonic),
            restrict=True,
        )
        names = (CHANNEL_SPOT, CHANNEL_MARGIN, CHANNEL_ORDERS) if self.markets else (CHANNEL_SPOT, CHANNEL_MARGIN)
        # An empty market list is undocumented for ordersPending (docs/protocol.md#orderspending-channel),
        # so without markets the channel is not used at all.
        self.channels: tuple[Channel, ...] = tuple(Channel(name) for name in names)
        self.channel_outages = {
            name: OutageReporter("websocket", account, clock=clock, logger=log, fields={"channel": name})
            for name in names
        }
        self.connected = False
        self.reconnects = 0
        self.last_message_at: float | None = None
        self.invalid: dict[str, int] = dict.fromkeys(INVALID_REASONS, 0)
        self.errors: dict[str, int] = dict.fromkeys(ERROR_METHODS, 0)
        # Per connection. Open orders: where pushes go while a snapshot is read and shortly after.
        self._merge: SnapshotMerge | None = None
        # Balances: pushes kept until the snapshot (a dict), or applied (live), or dropped (neither).
        self._spot_pending: Wallet | None = None
        self._margin_pending: Wallet | None = None
        self._spot_live = False
        self._margin_live = False
        self._synced_at: float | None = None

    @property
    def name(self) -> str:
        """The supervisor task name."""
        return f"websocket:{self.account}"

    def supplies(self, wallet: str) -> bool:
        """True while this connection keeps ``wallet`` (``spot`` or ``collateral``) current, so its
        REST fallback poll need not."""
        if wallet == WALLET_SPOT:
            return self._spot_live
        if wallet == WALLET_COLLATERAL:
            return self._margin_live
        return False

    # --- supervision ------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, sync and follow; reconnect with backoff on any failure; until cancelled."""
        attempt = 0
        first = True
        try:
            while True:
                if not first:
                    self.reconnects += 1
                first = False
                self._synced_at = None
                try:
                    await self._session()
                    reason = "connection closed by the server"
                except Disconnect as exc:
                    reason = str(exc)
                except (InvalidHandshake, InvalidURI) as exc:
                    # websockets words these plainly: "server rejected WebSocket connection: HTTP 503".
                    reason = f"cannot connect: {str(exc)[:160]}"
                except (OSError, TimeoutError) as exc:
                    reason = f"cannot connect: {error_text(exc, timeout=self.pong_timeout, peer=self._peer)}"
                finally:
                    self._disconnected()
                if self._was_stable():
                    attempt = 0
                delay = self.backoff.delay(attempt, self._rng)
                attempt += 1
                self.health.failing(f"disconnected: {reason}; reconnecting in {delay:.1f}s")
                self.outage.failed(reason)
                log.debug(
                    "websocket disconnected",
                    extra={
                        "account": self.account,
                        "reason": reason,
                        "retry_in_seconds": round(delay, 2),
                    },
                )
                await asyncio.sleep(delay)
        finally:
            self._disconnected()
            self.health.failing("stopped")

    def _was_stable(self) -> bool:
        """True when the connection that just ended stayed connected for ``stable_after`` seconds."""
        return self._synced_at is not None and self._monotonic() - self._synced_at >= self.stable_after

    def _disconnected(self) -> None:
        self.connected = False
        self._merge = None
        # Nothing from before the drop can pair with anything after it (the gap is never replayed):
        # a finish or new still waiting for its modify partner counts under its own name now.
        self.book.events.flush(float("inf"))
        self._spot_pending = self._margin_pending = None
        self._spot_live = self._margin_live = False
        for channel in self.channels:
            channel.state = SYNCING
            channel.reason = ""

    # --- one connection ---------------------------------------------------------------------

    async def _session(self) -> None:
        wait = self._tokens.delay()
        if wait > 0:
            self.health.failing(f"waiting {wait:.0f}s for the websocket token budget")
            log.debug(
                "websocket token budget exhausted",
                extra={"account": self.account, "wait_seconds": round(wait)},
            )
        await self._tokens.acquire()
        # Room for the REST client's wait for a slot of the token family and its own timeout.
        deadline = asyncio.timeout(self.pong_timeout + 20.0)
        try:
            async with deadline:
                token = await self._token_provider()
        except asyncio.CancelledError:
            raise
        # Whatever the injected provider raises (a RestError, a network error) is a failed token
        # request to retry after backoff, never the end of the source.
        except RestError as exc:
            self.errors["token"] += 1
            raise Disconnect(f"token request failed: {str(exc)[:200]}") from None
        except Exception as exc:
            self.errors["token"] += 1
            # Our own deadline's TimeoutError says nothing of its limit; the provider's may be its own.
            limit = self.pong_timeout + 20.0 if deadline.expired() else None
            raise Disconnect(f"token request failed: {error_text(exc, timeout=limit)[:200]}") from None
        if not isinstance(token, str) or not token:
            self.errors["token"] += 1
            raise Disconnect("token request returned no token")
        async with connect(
            self.url,
            ping_interval=None,  # WhiteBIT handles protocol pings badly; the JSON ping keeps us alive
            open_timeout=self.pong_timeout,
            close_timeout=1.0,
            max_size=16 * 2**20,
            max_queue=None,
        ) as ws:
            conn = _Connection(ws, SlidingWindow(self._request_budget, REQUEST_WINDOW, clock=self._monotonic))
            reader = asyncio.create_task(self._read(conn), name=f"{self.name}:reader")
            driver = asyncio.create_task(self._drive(conn, token), name=f"{self.name}:driver")
            try:
                done, _ = await asyncio.wait({reader, driver}, return_when=asyncio.FIRST_COMPLETED)
                if driver in done:
                    driver.result()  # raises the reason
                # The reader ended: the socket is closed.
                raise Disconnect(conn.closed_reason or "connection closed")
            finally:
                for task in (reader, driver):
                    task.cancel()
                await asyncio.gather(reader, driver, return_exceptions=True)

    async def _drive(self, conn: _Connection, token: str) -> None:
        try:
            await self._call(conn, "authorize", [token, AUTHORIZE_SOURCE])
        except RequestFailed as exc:
            raise Disconnect(str(exc)) from None
        log.debug("websocket authorized", extra={"account": self.account})
        tasks = {
            asyncio.create_task(self._follow(conn, channel), name=f"{self.name}:{channel.name}")
            for channel in self.channels
        }
        tasks.add(asyncio.create_task(self._keepalive(conn), name=f"{self.name}:keepalive"))
        try:
            while tasks:
                done, tasks = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # a Disconnect ends the connection; a synced channel just ends
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _keepalive(self, conn: _Connection) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self._call(conn, "ping", [])
            except RequestFailed as exc:
                raise Disconnect(str(exc)) from None
            merge = self._merge
            if merge is not None and merge.expires_at is not None and self._monotonic() >= merge.expires_at:
                self._merge = None
            # The pong proves every live subscription current up to now (see "Freshness").
            now = self._clock()
            if self._spot_live:
                self.balances.confirm(WALLET_SPOT, now)
            if self._margin_live:
                self.balances.confirm(WALLET_COLLATERAL, now)
            self._report_health()

    async def _follow(self, conn: _Connection, channel: Channel) -> None:
        """Sync ``channel``; after a failure retry it (backoff) until it syncs, on this connection."""
        sync = {
            CHANNEL_SPOT: self._sync_spot,
            CHANNEL_MARGIN: self._sync_margin,
            CHANNEL_ORDERS: self._sync_orders,
        }[channel.name]
        attempt = 0
        while True:
            try:
                await sync(conn)
            except RequestFailed as exc:
                self._abandon(channel.name)
                delay = self.backoff.delay(attempt, self._rng)
                attempt += 1
                channel.state = FAILING
                channel.reason = f"{exc}; retrying in {delay:.1f}s"
                self.channel_outages[channel.name].failed(str(exc))
                log.debug(
                    "websocket channel failing",
                    extra={
                        "account": self.account,
                        "channel": channel.name,
                        "reason": str(exc),
                        "retry_in_seconds": round(delay, 2),
                    },
                )
                self._channels_changed()
                await asyncio.sleep(delay)
                continue
            channel.state = SYNCED
            channel.reason = ""
            self.channel_outages[channel.name].recovered()
            self._channels_changed()
            return

    def _abandon(self, channel: str) -> None:
        """Stop keeping a failed balance channel's pushes (the retry starts over)."""
        if channel == CHANNEL_SPOT:
            self._spot_pending = None
            self._spot_live = False
        elif channel == CHANNEL_MARGIN:
            self._margin_pending = None
            self._margin_live = False
        # ordersPending: its pushes keep going to the failed attempt's staging book (still counted
        # as events) until the retry starts a new one; the live book is left alone.

    def _channels_changed(self) -> None:
        if not self.connected and all(channel.state != SYNCING for channel in self.channels):
            self.connected = True
            self._synced_at = self._monotonic()
            log.info(
                "websocket synced",
                extra={
                    "account": self.account,
                    "open_orders": len(self.book),
                    "markets": len(self.markets),
                    "failing_channels": ",".join(c.name for c in self.channels if not c.synced),
                },
            )
        self._report_health()

    def _report_health(self) -> None:
        """OK while connected with every channel synced; a failing balance channel is a note (its
        wallet is polled meanwhile), a failing ``ordersPending`` a failure (see "What the state means")."""
        if not self.connected:
            return  # still syncing: the reason of the last disconnect stands
        # The connection works; a failing channel is its own outage (channel_outages).
        self.outage.recovered()
        failing = [channel for channel in self.channels if not channel.synced]
        lines = [f"channel {c.name}: {c.reason}" for c in failing]
        if any(channel.name == CHANNEL_ORDERS for channel in failing):
            self.health.failing("; ".join(lines))
        elif failing:
            wallets = " and ".join(_CHANNEL_WALLETS[c.name] for c in failing)
            noun = "wallets are" if len(failing) > 1 else "wallet is"
            self.health.ok(note="; ".join(lines) + f"; the {wallets} {noun} polled over REST meanwhile")
        else:
            self.health.ok()

    async def _call(
        self,
        conn: _Connection,
        method: str,
        params: list[Any],
        on_reply: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Send a request; the reader runs ``on_reply(result)`` in stream order; returns its value.

        No reply within ``pong_timeout`` ends the connection (:class:`Disconnect`); an ``error`` in
        the reply, or ``on_reply`` refusing the result, raises :class:`RequestFailed`, counted.
        """
        await conn.pace.acquire()
        request_id = conn.next_id
        conn.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.pending[request_id] = (method, future, on_reply)
        try:
            await conn.ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
            async with asyncio.timeout(self.pong_timeout):
                return await future
        except TimeoutError:
            self.errors[method] += 1
            what = "no pong" if method == "ping" else f"no reply to {method}"
            raise Disconnect(f"{what} within {self.pong_timeout:g}s") from None
        except ConnectionClosed:
            raise Disconnect(conn.closed_reason or "connection closed") from None
        except RequestFailed as exc:
            self.errors[method] += 1
            # Detail: the channel's outage log (or the disconnect it causes) says what an operator needs.
            log.debug(
                "websocket request failed",
                extra={
                    "account": self.account,
                    "method": method,
                    "code": getattr(exc, "code", None),
                    "reason": str(exc),
                },
            )
            raise
        finally:
            conn.pending.pop(request_id, None)

    # --- balances -----------------------------------------------------------------------------

    async def _sync_spot(self, conn: _Connection) -> None:
        self._spot_live = False
        self._spot_pending = {}
        await self._call(conn, "balanceSpot_subscribe", [])
        await self._call(conn, "balanceSpot_request", [], self._on_spot_snapshot)

    async def _sync_margin(self, conn: _Connection) -> None:
        self._margin_live = False
        self._margin_pending = {}
        await self._call(conn, "balanceMargin_subscribe", [])
        await self._call(conn, "balanceMargin_request", [], self._on_margin_snapshot)

    def _on_spot_snapshot(self, result: Any) -> None:
        try:
            snapshot = parse_spot_snapshot(result)
        except InvalidMessage as exc:
            self.invalid[exc.reason] += 1
            raise RequestFailed("balanceSpot_request", f"unusable balanceSpot_request result: {exc}") from None
        snapshot.update(self._spot_pending or {})
        self.balances.replace_spot(snapshot, self._clock())
        self._spot_pending = None
        self._spot_live = True

    def _on_margin_snapshot(self, result: Any) -> None:
        try:
            snapshot = parse_margin_snapshot(result)
        except InvalidMessage as exc:
            self.invalid[exc.reason] += 1
            raise RequestFailed("balanceMargin_request", f"unusable balanceMargin_request result: {exc}") from None
        snapshot.update(self._margin_pending or {})
        self.balances.replace_collateral(snapshot, self._clock())
        self._margin_pending = None
        self._margin_live = True

    # --- open orders --------------------------------------------------------------------------

    async def _sync_orders(self, conn: _Connection) -> None:
        staging = self.book.staging()
        merge = self._merge = SnapshotMerge(staging)
        await self._call(conn, "ordersPending_subscribe", list(self.markets))
        semaphore = asyncio.Semaphore(PAGING_CONCURRENCY)
        failures: list[BaseException] = []

        async def read_market(market: str) -> None:
            async with semaphore:
                if failures:
                    return
                try:
                    await self._read_market(conn, merge, market, failures)
                except (RequestFailed, Disconnect) as exc:
                    failures.append(exc)

        # Markets still reading when one fails finish their request in flight (so its reply is
        # not mistaken for an unexpected one) and then stop.
        await asyncio.gather(*(read_market(market) for market in self.markets))
        if failures:
            disconnects = [exc for exc in failures if isinstance(exc, Disconnect)]
            raise (disconnects or failures)[0]
        # No await between here and the end: the reader cannot slip a push in between.
        self.book.replace_with(staging)
        merge.book = self.book
        merge.expires_at = self._monotonic() + self.resync_grace

    async def _read_market(
        self, conn: _Connection, merge: SnapshotMerge, market: str, failures: list[BaseException]
    ) -> None:
        paging = MarketPaging(market, self.page_limit)
        while not paging.done:
            if failures:
                return
            offset = paging.offset
            await self._call(
                conn,
                "ordersPending_request",
                [market, offset, self.page_limit],
                functools.partial(self._on_page, merge, paging, offset, merge.finishes.get(market, 0)),
            )
        if paging.gaps:
            log.info(
                "websocket snapshot pages moved while being read; read again where needed",
                extra={
                    "account": self.account,
                    "market": market,
                    "pages": paging.requests,
                    "pages_read_again": paging.gaps,
                },
            )

    def _on_page(self, merge: SnapshotMerge, paging: MarketPaging, offset: int, finishes: int, result: Any) -> None:
        """A page of ``paging.market`` at ``offset``, whenever it arrives: merge its records, move on."""
        if not isinstance(result, dict) or not isinstance(result.get("records"), list):
            self.invalid[INVALID_WRONG_TYPE] += 1
            raise RequestFailed("ordersPending_request", "unusable ordersPending_request result")
        ids: list[int] = []
        for record in result["records"]:
            try:
                if record.__class__ is not dict or record.get("market") != paging.market:
                    raise InvalidMessage(INVALID_BAD_VALUE, f"a record that is not an order of {paging.market}")
                ids.append(merge.record(record))
            except InvalidMessage as exc:
                self.invalid[exc.reason] += 1
                raise RequestFailed(
                    "ordersPending_request", f"unusable order in ordersPending_request: {exc}"
                ) from None
        total = result.get("total")
        try:
            paging.on_page(
                offset,
                ids,
                total if total.__class__ is int else None,
                merge.finishes.get(paging.market, 0) - finishes,
            )
        except PagingFailed as exc:
            raise RequestFailed("ordersPending_request", str(exc)) from None

    # --- reading ----------------------------------------------------------------------------

    async def _read(self, conn: _Connection) -> None:
        try:
            async for message in conn.ws:
                self._on_frame(conn, message)
            conn.closed_reason = self._close_reason(conn.ws, "closed by the server")
        except ConnectionClosed:
            conn.closed_reason = self._close_reason(conn.ws, "connection lost")
        finally:
            conn.fail_all(conn.closed_reason or "connection closed")

    @staticmethod
    def _close_reason(ws: ClientConnection, default: str) -> str:
        code = ws.close_code
        if code is None:
            return default
        text = (ws.close_reason or "").strip()[:80]
        return f"{default} (code {code}{': ' + text if text else ''})"

    def _on_frame(self, conn: _Connection, message: str | bytes) -> None:
        """One frame, synchronously, in the order the socket delivers frames."""
        self.last_message_at = self._clock()
        if message.__class__ is not str:
            self._skip(INVALID_BINARY, "binary frame")
            return
        try:
            doc = json.loads(message)
        except ValueError:
            self._skip(INVALID_BAD_JSON, "frame is not JSON")
            return
        if doc.__class__ is not dict:
            self._skip(INVALID_NOT_OBJECT, "frame is not a JSON object")
            return
        method = doc.get("method")
        try:
            if method == METHOD_ORDERS:
                self._on_order_update(doc.get("params"))
            elif method is None:
                self._on_reply(conn, doc)
            elif method == METHOD_SPOT:
                changes = parse_spot_update(doc.get("params"))
                if self._spot_live:
                    self.balances.update_spot(changes, self._clock())
                elif self._spot_pending is not None:
                    self._spot_pending.update(changes)
            elif method == METHOD_MARGIN:
                changes = parse_margin_update(doc.get("params"))
                if self._margin_live:
                    self.balances.update_collateral(changes, self._clock())
                elif self._margin_pending is not None:
                    self._margin_pending.update(changes)
            else:
                self._skip(INVALID_UNKNOWN_METHOD, f"unknown method {str(method)[:40]!r}")
        except InvalidMessage as exc:
            self._skip(exc.reason, str(exc))

    def _skip(self, reason: str, detail: str) -> None:
        self.invalid[reason] += 1
        log.warning(
            "websocket message skipped",
            extra={"account": self.account, "reason": reason, "detail": detail},
        )

    def _on_order_update(self, params: Any) -> None:
        if params.__class__ is not list or len(params) < 2:
            raise InvalidMessage(INVALID_WRONG_TYPE, "ordersPending_update params is not [event, order]")
        merge = self._merge
        if merge is None:
            self.book.apply(params[0], params[1])
            return
        if merge.expires_at is not None and self._monotonic() >= merge.expires_at:
            self._merge = None
            self.book.apply(params[0], params[1])
            return
        merge.push(params[0], params[1])

    def _on_reply(self, conn: _Connection, doc: dict[str, Any]) -> None:
        request_id = doc.get("id")
        entry = conn.pending.get(request_id) if request_id.__class__ is int else None
        if entry is None or entry[1].done():
            raise InvalidMessage(
                INVALID_UNEXPECTED_REPLY,
                f"reply to unknown request id {str(request_id)[:20]}",
            )
        method, future, on_reply = entry
        error = doc.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            message = error.get("message") if isinstance(error, dict) else error
            future.set_exception(ReplyError(method, code, message))
            return
        result = doc.get("result")
        try:
            value = on_reply(result) if on_reply is not None else result
        except RequestFailed as exc:
            future.set_exception(exc)
            return
        future.set_result(value)
