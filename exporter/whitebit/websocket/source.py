"""The private WebSocket of one WhiteBIT account: balances and open orders that stay true.

One :class:`WebSocketSource` per account with API credentials keeps one connection up:

1. **Token.** A fresh token per connection from ``token_provider`` (in the exporter,
   ``RestClient.websocket_token``, i.e. ``/api/v4/profile/websocket_token``). That endpoint allows
   10 requests per 60 s, so the source never asks more than :data:`TOKEN_BUDGET` times per 60 s,
   whatever the reconnect rate: a reconnect storm waits instead of exhausting it.
2. **Connect** with protocol-level ping frames off (WhiteBIT answers them unreliably,
   docs/protocol.md#websocket-connection) and **authorize** with ``[token, "public"]``.
3. **Subscribe first, then read the state**, and apply everything in the order the socket delivers
   it. WhiteBIT's server handles one connection's requests and pushes in one sequence, so a reply
   (a snapshot page, a balance snapshot) sits in the stream exactly where the server computed it:
   pushes before it are already part of it, pushes after it are not. Hence:

   - ``balanceSpot_subscribe``/``balanceMargin_subscribe`` (all assets), ``ordersPending_subscribe``
     (the configured markets), each reply's ``error`` checked;
   - ``balanceSpot_request``/``balanceMargin_request``: the reply *replaces* the wallet; balance
     pushes before it are dropped (the snapshot is newer), pushes after it are applied;
   - ``ordersPending_request`` paged to the end for every configured market into a *staging* book,
     while every ``ordersPending_update`` is applied to that staging book in arrival order; once all
     markets are read the staging book replaces the live one in one step. Orders that finished while
     disconnected are simply not in it.

   Paging a changing list can skip an order: if an order on an earlier page finishes, the later
   ones move up. The next offset is therefore the number of orders read so far that are still open
   (orders are listed oldest first and new ones are appended), and a page whose offset turns out to
   be past that number when its reply arrives is read again. The last page's ``total`` is checked
   against what was read; a mismatch reads the market again. Nothing is lost between snapshot and
   subscription, and nothing seen finished comes back.
4. **Keepalive.** A JSON ``ping`` every ``ping_interval`` (25 s; WhiteBIT closes after 60 s of client
   silence) and a reconnect when no ``pong`` comes within ``pong_timeout`` (10 s). Every request has
   the same deadline; a connection also paces its requests under WhiteBIT's 200 per minute.
5. **Backoff** between attempts (:class:`~exporter.core.backoff.Backoff`: 1 s doubling to 30 s, each
   cut by up to 20 % at random); it resets only after a connection stayed synced for
   ``stable_after`` seconds, so a server that accepts and drops at once cannot make the source
   hammer it.

Every reply's ``error`` is checked: a failed ``authorize`` or subscription is logged, counted in
``whitebit_websocket_errors_total{method}`` and retried through a reconnect, never ignored. Frames
that cannot be used (bad JSON, unknown method, missing fields, wrong types) are counted in
``whitebit_websocket_messages_invalid_total{reason}`` and skipped; the connection stays up.

While disconnected, balances and orders keep their values and timestamps,
``whitebit_websocket_connected`` is 0, the health entry ``websocket <account>`` fails (so
``whitebit_up`` is 0 and ``/-/ready`` shows why) and the source reconnects.
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
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from exporter.core.backoff import DEFAULT_BACKOFF, Backoff
from exporter.core.health import HealthRegistry, SourceHealth
from exporter.core.window import SlidingWindow
from exporter.whitebit.balances import AccountBalances
from exporter.whitebit.websocket.orders import EVENT_FINISH, MODIFY_WINDOW, OrderBook, OrderEvents
from exporter.whitebit.websocket.parsing import (
    INVALID_BAD_JSON,
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

log = logging.getLogger(__name__)

TokenProvider = Callable[[], Awaitable[str]]

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
#: Times a market is read again when its pages do not add up before the source gives up on the
#: connection (and reconnects).
PAGING_ATTEMPTS = 3
#: The ``authorize`` second parameter as documented.
AUTHORIZE_SOURCE = "public"


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


class ReplyError(Disconnect):
    """A reply carried an ``error`` object."""

    def __init__(self, method: str, code: Any, message: Any) -> None:
        super().__init__(f"{method} failed: error {str(code)[:16]} {str(message)[:120]}")
        self.method = method
        self.code = code


@dataclass
class _Paging:
    """One market's snapshot read in progress: ids read from pages and those finished since."""

    market: str
    read: set[int]
    finished: set[int]

    @property
    def cursor(self) -> int:
        # Orders are listed oldest first and new ones are appended, so the orders read that are
        # still open are exactly the head of the list: the next page starts after them.
        return len(self.read) - len(self.finished)


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
    :attr:`book` (open orders and event counters), :attr:`connected`, :attr:`reconnects`,
    :attr:`last_message_at`, :attr:`invalid` and :attr:`errors`; balances go to ``balances``.
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
        rng: random.Random | None = None,
    ) -> None:
        if not 1 <= page_limit <= PAGE_LIMIT:
            raise ValueError(f"page_limit must be 1..{PAGE_LIMIT}")
        self.account = account
        self.url = url
        self.markets = tuple(dict.fromkeys(markets))
        self._token_provider = token_provider
        self.balances = balances
        self.health: SourceHealth = health.register("websocket", account, max_age=ping_interval + pong_timeout + 5.0)
        self._clock = clock
        self._monotonic = monotonic
        self.ping_interval = ping_interval
        self.pong_timeout = pong_timeout
        self.backoff = backoff
        self.stable_after = stable_after
        self._tokens = SlidingWindow(token_budget, token_window, clock=monotonic)
        self._request_budget = request_budget
        self.page_limit = page_limit
        self._rng = rng if rng is not None else random.Random()
        self.book = OrderBook(
            self.markets,
            OrderEvents(self.markets, window=modify_window, clock=monotonic),
            restrict=True,
        )
        self.connected = False
        self.reconnects = 0
        self.last_message_at: float | None = None
        self.invalid: dict[str, int] = dict.fromkeys(INVALID_REASONS, 0)
        self.errors: dict[str, int] = dict.fromkeys(ERROR_METHODS, 0)
        # Per connection: where pushes go until the snapshot is in.
        self._staging: OrderBook | None = None
        self._paging: dict[str, _Paging] = {}
        self._spot_synced = False
        self._margin_synced = False
        self._synced_at: float | None = None

    @property
    def name(self) -> str:
        """The supervisor task name."""
        return f"websocket:{self.account}"

    def supplies_wallets(self) -> bool:
        """True while this connection keeps the spot and collateral wallets current (REST need not)."""
        return self.health.is_ok

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
                except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
                    reason = f"cannot connect: {type(exc).__name__}: {str(exc)[:160]}"
                finally:
                    self._disconnected()
                if self._was_stable():
                    attempt = 0
                delay = self.backoff.delay(attempt, self._rng)
                attempt += 1
                self.health.failing(f"disconnected: {reason}; reconnecting in {delay:.1f}s")
                log.warning(
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
        """True when the connection that just ended stayed synced for ``stable_after`` seconds."""
        return self._synced_at is not None and self._monotonic() - self._synced_at >= self.stable_after

    def _disconnected(self) -> None:
        self.connected = False
        self._staging = None
        self._paging = {}
        self._spot_synced = False
        self._margin_synced = False

    # --- one connection ---------------------------------------------------------------------

    async def _session(self) -> None:
        wait = self._tokens.delay()
        if wait > 0:
            self.health.failing(f"waiting {wait:.0f}s for the websocket token budget")
            log.warning(
                "websocket token budget exhausted",
                extra={"account": self.account, "wait_seconds": round(wait)},
            )
        await self._tokens.acquire()
        try:
            token = await asyncio.wait_for(self._token_provider(), timeout=self.pong_timeout + 20.0)
        except asyncio.CancelledError:
            raise
        # Whatever the injected provider raises (a RestError, a network error) is a failed token
        # request to retry after backoff, never the end of the source.
        except Exception as exc:
            self.errors["token"] += 1
            raise Disconnect(f"token request failed: {type(exc).__name__}: {str(exc)[:160]}") from None
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
        await self._call(conn, "authorize", [token, AUTHORIZE_SOURCE])
        log.info("websocket authorized", extra={"account": self.account})
        await self._sync(conn)
        self.connected = True
        self._synced_at = self._monotonic()
        self.health.ok()
        log.info(
            "websocket synced",
            extra={
                "account": self.account,
                "open_orders": len(self.book),
                "markets": len(self.markets),
            },
        )
        while True:
            await asyncio.sleep(self.ping_interval)
            await self._call(conn, "ping", [])
            self.health.ok()

    async def _call(
        self,
        conn: _Connection,
        method: str,
        params: list[Any],
        on_reply: Callable[[Any], Any] | None = None,
    ) -> Any:
        """Send a request; the reader runs ``on_reply(result)`` in stream order; returns its value.

        A missing reply within ``pong_timeout`` or an ``error`` in it ends the connection.
        """
        await conn.pace.acquire()
        request_id = conn.next_id
        conn.next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.pending[request_id] = (method, future, on_reply)
        try:
            await conn.ws.send(json.dumps({"id": request_id, "method": method, "params": params}))
            return await asyncio.wait_for(future, timeout=self.pong_timeout)
        except TimeoutError:
            self.errors[method] += 1
            what = "no pong" if method == "ping" else f"no reply to {method}"
            raise Disconnect(f"{what} within {self.pong_timeout:g}s") from None
        except ConnectionClosed:
            raise Disconnect(conn.closed_reason or "connection closed") from None
        except ReplyError as exc:
            self.errors[method] += 1
            log.error(
                "websocket request failed",
                extra={
                    "account": self.account,
                    "method": method,
                    "code": exc.code,
                    "reason": str(exc),
                },
            )
            raise
        finally:
            conn.pending.pop(request_id, None)

    async def _sync(self, conn: _Connection) -> None:
        self._staging = self.book.staging()
        self._paging = {}
        self._spot_synced = False
        self._margin_synced = False
        await self._call(conn, "balanceSpot_subscribe", [])
        await self._call(conn, "balanceMargin_subscribe", [])
        if self.markets:
            # An empty market list is undocumented for this channel (docs/protocol.md#orderspending-channel),
            # so it is never sent.
            await self._call(conn, "ordersPending_subscribe", list(self.markets))
        await self._call(conn, "balanceSpot_request", [], self._on_spot_snapshot)
        await self._call(conn, "balanceMargin_request", [], self._on_margin_snapshot)
        semaphore = asyncio.Semaphore(PAGING_CONCURRENCY)

        async def read_market(market: str) -> None:
            async with semaphore:
                await self._read_market(conn, market)

        await asyncio.gather(*(read_market(market) for market in self.markets))
        # No await between here and the end: the reader cannot slip a push in between.
        staging, self._staging, self._paging = self._staging, None, {}
        self.book.replace_with(staging)

    def _on_spot_snapshot(self, result: Any) -> None:
        try:
            snapshot = parse_spot_snapshot(result)
        except InvalidMessage as exc:
            self.invalid[exc.reason] += 1
            raise Disconnect(f"unusable balanceSpot_request result: {exc}") from None
        self.balances.replace_spot(snapshot, self._clock())
        self._spot_synced = True

    def _on_margin_snapshot(self, result: Any) -> None:
        try:
            snapshot = parse_margin_snapshot(result)
        except InvalidMessage as exc:
            self.invalid[exc.reason] += 1
            raise Disconnect(f"unusable balanceMargin_request result: {exc}") from None
        self.balances.replace_collateral(snapshot, self._clock())
        self._margin_synced = True

    async def _read_market(self, conn: _Connection, market: str) -> None:
        for _ in range(PAGING_ATTEMPTS):
            paging = self._paging[market] = _Paging(market, set(), set())
            while True:
                offset = paging.cursor
                page = await self._call(
                    conn,
                    "ordersPending_request",
                    [market, offset, self.page_limit],
                    functools.partial(self._on_page, paging, offset),
                )
                if page is None:  # skipped orders: read from the corrected cursor
                    continue
                records, total = page
                if records < self.page_limit:
                    break
            # ``total`` is the open orders when the last page was computed, i.e. the head read so far.
            if total is None or total == paging.cursor:
                break
            log.warning(
                "websocket snapshot pages did not add up; reading the market again",
                extra={
                    "account": self.account,
                    "market": market,
                    "total": total,
                    "read": paging.cursor,
                },
            )
        else:
            self.errors["ordersPending_request"] += 1
            raise Disconnect(f"open orders of {market} kept changing while being read")
        del self._paging[market]

    def _on_page(self, paging: _Paging, offset: int, result: Any) -> tuple[int, int | None] | None:
        """A page, in stream order: None when orders were skipped, else (records, total)."""
        if not isinstance(result, dict) or not isinstance(result.get("records"), list):
            self.invalid[INVALID_WRONG_TYPE] += 1
            raise Disconnect("unusable ordersPending_request result")
        if offset > paging.cursor:
            # Orders of earlier pages finished in the meantime and this page starts too late.
            return None
        staging = self._staging
        assert staging is not None
        records = result["records"]
        for record in records:
            try:
                order_id = staging.upsert(record)
            except InvalidMessage as exc:
                self.invalid[exc.reason] += 1
                raise Disconnect(f"unusable order in ordersPending_request: {exc}") from None
            paging.read.add(order_id)
        total = result.get("total")
        return len(records), total if isinstance(total, int) and not isinstance(total, bool) else None

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
        """One frame, synchronously: the order of frames is the order of the server's state."""
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
                if self._spot_synced:
                    self.balances.update_spot(changes, self._clock())
            elif method == METHOD_MARGIN:
                changes = parse_margin_update(doc.get("params"))
                if self._margin_synced:
                    self.balances.update_collateral(changes, self._clock())
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
        event_id, order = params[0], params[1]
        staging = self._staging
        if staging is None:
            self.book.apply(event_id, order)
            return
        staging.apply(event_id, order)
        if event_id == EVENT_FINISH:
            paging = self._paging.get(order.get("market"))
            order_id = order.get("id")
            if paging is not None and order_id in paging.read:
                paging.finished.add(order_id)

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
        except Disconnect as exc:
            future.set_exception(exc)
            return
        future.set_result(value)
