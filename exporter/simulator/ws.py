"""The simulator's private WebSocket (``GET /ws``): WhiteBIT's JSON-RPC-style protocol, strictly.

Everything a client can observe follows WhiteBIT's documents (docs/protocol.md#whitebit-websocket): replies are
``{"id", "result", "error"}`` without a ``"jsonrpc"`` field, pushes carry ``"id": null``, invalid
JSON closes the connection, the server closes after ``idle_timeout`` seconds without a message from
the client (its own pushes do not count), private methods need ``authorize`` with a one-use token on
this very connection, subscribing again replaces the previous subscription, and each connection may
send ``request_limit_per_minute`` requests per 60 s. Where WhiteBIT leaves a behaviour open
(undocumented), the choice is written next to the code that makes it.

The hub translates events of the pure :class:`~exporter.simulator.model.Exchange` into pushes.
The exchange calls its listener synchronously, so each connection gets a bounded outbox drained by
its own sender task: a slow client can never block the exchange, and one that falls too far behind
is dropped, as a real server would drop it.

**Two lanes.** Whether WhiteBIT sends one connection's replies and pushes in the order it computed
them is undocumented (docs/protocol.md#open-order-listing); the matching engine its protocol comes
from answers queries and delivers events on separate paths. The outbox therefore has two FIFO
lanes, replies and pushes, and with ``interleave`` > 0 every frame waits a random time of up to
``interleave`` seconds (never overtaking an earlier frame of its own lane) before it is sent. A push
computed after a reply may then arrive before it and a push computed before it after it, while
pushes keep the exchange's order and replies the order of the requests. ``interleave=0`` sends
everything in the order it was computed. ``reply_delay`` adds a fixed delay to every reply (a slow
query path), so a test can make pushes overtake replies on cue.

Test controls (:meth:`WebSocketHub.drop`, :meth:`~WebSocketHub.silence`,
:meth:`~WebSocketHub.send_raw`, :meth:`~WebSocketHub.fail_channel`) model the failures a client must
survive: a dropped TCP connection, a server that stops answering, frames the client does not expect,
and a channel that answers every request with an error (what ``balanceMargin`` does on an account
without collateral trading is undocumented, docs/protocol.md#balance-channels).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import WSCloseCode, WSMsgType, web

from exporter.core.window import SlidingWindow
from exporter.simulator.listing import AssetListing
from exporter.simulator.model import (
    ZERO,
    Event,
    Exchange,
    MarginBalance,
    MarginBalanceEvent,
    OrderEvent,
    SpotBalance,
    SpotBalanceEvent,
    margin_request_wire,
    spot_wire,
)
from exporter.simulator.tokens import TokenIssuer

log = logging.getLogger(__name__)

# WhiteBIT's WebSocket error codes (docs/protocol.md#websocket-limits-and-errors).
ERROR_INVALID_ARGUMENT = 1
ERROR_INTERNAL = 2
ERROR_SERVICE_UNAVAILABLE = 3
ERROR_METHOD_NOT_FOUND = 4
ERROR_SERVICE_TIMEOUT = 5
ERROR_REQUIRE_AUTHENTICATION = 6
ERROR_TOO_MANY_REQUESTS = 7
# The docs only say a market "should exist" and list no code for it. JKorf/WhiteBit.Net maps code 9
# with a message "market ... does not exist" to "unknown symbol", which is the only evidence of what
# the server sends, so the simulator answers an unknown market that way. A client that only knows the
# documented codes 1-7 must still treat it as a failed request.
ERROR_UNKNOWN_MARKET = 9

#: The shape of ``balanceSpot_update`` params: the channel page's array, a guide's object, or either.
SpotUpdateForm = Literal["array", "object", "both"]
#: What ``balanceMargin`` answers an account without collateral trading (the real text is not documented).
NO_COLLATERAL_TRADING = "collateral trading is not enabled for this account"
ERROR_MESSAGES = {
    ERROR_INVALID_ARGUMENT: "invalid argument",
    ERROR_INTERNAL: "internal error",
    ERROR_SERVICE_UNAVAILABLE: "service unavailable",
    ERROR_METHOD_NOT_FOUND: "method not found",
    ERROR_SERVICE_TIMEOUT: "service timeout",
    ERROR_REQUIRE_AUTHENTICATION: "require authentication",
    ERROR_TOO_MANY_REQUESTS: "too many requests",
}

ORDERS_PENDING_MAX_LIMIT = 100
RATE_WINDOW_SECONDS = 60.0
#: Default ``interleave``: up to 5 ms per frame, enough that replies and pushes computed close
#: together often arrive the other way round, without slowing anything down noticeably.
DEFAULT_INTERLEAVE = 0.005

# Private channels and their methods; `_update` is push-only and never accepted from a client.
CHANNEL_BALANCE_SPOT = "balanceSpot"
CHANNEL_BALANCE_MARGIN = "balanceMargin"
CHANNEL_ORDERS_PENDING = "ordersPending"
PRIVATE_CHANNELS = (CHANNEL_BALANCE_SPOT, CHANNEL_BALANCE_MARGIN, CHANNEL_ORDERS_PENDING)
PRIVATE_METHODS = frozenset(f"{c}_{op}" for c in PRIVATE_CHANNELS for op in ("request", "subscribe", "unsubscribe"))
# Methods counted by name in WebSocketHub.requests_served (anything else is "other", so a client cannot grow it).
COUNTED_METHODS = PRIVATE_METHODS | {"ping", "time", "authorize"}

# Close codes. WhiteBIT documents *that* it closes (invalid JSON, inactivity), not how; these are
# the closest standard codes. Inactivity uses 1000 on purpose: `websockets` then ends `async for`
# quietly instead of raising, the path a client most easily forgets to reconnect from.
CLOSE_INVALID_JSON = WSCloseCode.INVALID_TEXT  # 1007
CLOSE_BINARY_FRAME = WSCloseCode.UNSUPPORTED_DATA  # 1003
CLOSE_IDLE = WSCloseCode.OK  # 1000
CLOSE_GOING_AWAY = WSCloseCode.GOING_AWAY  # 1001 (drop(abrupt=False) and shutdown)


class _RequestError(Exception):
    """A request fails with a WhiteBIT error object."""

    def __init__(self, code: int, message: str | None = None) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message or ERROR_MESSAGES.get(code, "error")


# Outgoing frame lanes.
LANE_REPLY = 0
LANE_PUSH = 1

# An outgoing frame: (ready at (loop time), sequence number, kind "text" or "pong", payload).
_Frame = tuple[float, int, str, Any]


@dataclass(eq=False)
class _Connection:
    """One client connection: its authorization, subscriptions, outbox lanes and sender task."""

    ws: web.WebSocketResponse
    request: web.Request
    # Requests served, against WhiteBIT's per-connection limit.
    requests: SlidingWindow
    # One FIFO per lane (LANE_REPLY, LANE_PUSH); the sender sends the frame that is ready first.
    lanes: tuple[collections.deque[_Frame], collections.deque[_Frame]] = field(
        default_factory=lambda: (collections.deque(), collections.deque())
    )
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    account: str | None = None
    # channel -> subscribed names; None means "all" (an empty subscribe list).
    subscriptions: dict[str, frozenset[str] | None] = field(default_factory=dict)
    sender: asyncio.Task[None] | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    peer: str = "?"
    aborted: bool = False

    def abort(self) -> None:
        """Drop the TCP connection without a close frame, like a network failure or a crashed server."""
        self.aborted = True
        transport = self.request.transport
        if transport is not None:
            transport.abort()


def _fields(conn: _Connection, **more: object) -> dict[str, object]:
    """A log line's fields about ``conn`` (its peer and account, "" before it authorized), then ``more``."""
    return {"peer": conn.peer, "account": conn.account or "", **more}


class WebSocketHub:
    """Serves WhiteBIT's private WebSocket at ``GET /ws`` for every account of ``exchange``.

    ``idle_timeout`` is WhiteBIT's 60 s inactivity limit (client messages only);
    ``request_limit_per_minute`` its 200 requests per 60 s per connection, measured with ``clock``
    (also the source of ``time``); ``queue_size`` bounds the frames waiting for one client;
    ``interleave`` is the longest random delay of an outgoing frame (see the module docstring), drawn
    from ``rng``, and ``reply_delay`` a fixed delay of every reply. All three may be changed on a
    running hub.
    """

    def __init__(
        self,
        exchange: Exchange,
        tokens: TokenIssuer,
        *,
        clock: Callable[[], float] = time.time,
        idle_timeout: float = 60.0,
        request_limit_per_minute: int = 200,
        queue_size: int = 1000,
        interleave: float = DEFAULT_INTERLEAVE,
        reply_delay: float = 0.0,
        rng: random.Random | None = None,
        listing: AssetListing | None = None,
        spot_update_form: SpotUpdateForm = "both",
    ) -> None:
        if interleave < 0 or reply_delay < 0:
            raise ValueError("interleave and reply_delay must not be negative")
        if idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if request_limit_per_minute < 1:
            raise ValueError("request_limit_per_minute must be at least 1")
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self.exchange = exchange
        self.tokens = tokens
        self.idle_timeout = idle_timeout
        self.request_limit_per_minute = request_limit_per_minute
        self.queue_size = queue_size
        self.interleave = interleave
        self.reply_delay = reply_delay
        self.rng = rng if rng is not None else random.Random()
        # Which assets a whole-wallet snapshot lists: every listed one (zeros included) or only the
        # non-zero ones, both documented (shared with the REST API).
        self.listing = listing or AssetListing(exchange)
        # balanceSpot_update params: "array" (the channel page), "object" (a docs guide's example), or
        # "both", each push picking one (docs/protocol.md#balance-channels).
        self.spot_update_form: SpotUpdateForm = spot_update_form
        self._form_rng = random.Random(self.rng.getrandbits(64))
        self._clock = clock
        self._connections: set[_Connection] = set()
        self._silent_all = False
        self._silent_accounts: set[str] = set()
        # (account, channel) -> (code, message) answered to its _subscribe and _request
        self._channel_errors: dict[tuple[str, str], tuple[int, str]] = {}
        #: Requests handled per method (any connection, errors included), for tests and stats.
        self.requests_served: collections.Counter[str] = collections.Counter()
        self._frame_numbers = itertools.count()
        self._unsubscribe_exchange: Callable[[], None] | None = exchange.subscribe(self._on_event)

    # --- wiring ---

    def register(self, app: web.Application) -> None:
        """Add ``GET /ws``, close every socket on shutdown and detach from the exchange on cleanup."""
        app.router.add_get("/ws", self.handle)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.drop(None, abrupt=False)

    async def _on_cleanup(self, app: web.Application) -> None:
        if self._unsubscribe_exchange is not None:
            self._unsubscribe_exchange()
            self._unsubscribe_exchange = None

    # --- test and demo controls ---

    def _matching(self, account: str | None) -> list[_Connection]:
        return [c for c in self._connections if account is None or c.account == account]

    def connections(self, account: str | None = None) -> int:
        """Open connections (all, or those authorized as ``account``)."""
        return len(self._matching(account))

    def subscriptions(self, account: str | None) -> dict[str, list[str] | None]:
        """Active subscriptions of ``account``'s connections: channel -> sorted names, None = all.

        With several connections the names are united (None wins); ``account=None`` looks at every
        connection.
        """
        merged: dict[str, set[str] | None] = {}
        for conn in self._matching(account):
            for channel, names in conn.subscriptions.items():
                if names is None or (channel in merged and merged[channel] is None):
                    merged[channel] = None
                else:
                    previous = merged.get(channel)
                    merged[channel] = set(names) | (previous or set())
        return {channel: None if names is None else sorted(names) for channel, names in sorted(merged.items())}

    async def drop(self, account: str | None = None, *, abrupt: bool = True) -> int:
        """Close connections (all, or ``account``'s); returns how many.

        ``abrupt`` drops the TCP connection without a close frame (the client sees code 1006);
        otherwise the server sends a close frame with 1001 "going away". Returns once the dropped
        connections are gone from :meth:`connections`.
        """
        targets = self._matching(account)
        for conn in targets:
            log.info("ws connection dropped on cue", extra=_fields(conn, abrupt=abrupt))
        if abrupt:
            for conn in targets:
                conn.abort()
        else:
            await asyncio.gather(
                *(conn.ws.close(code=CLOSE_GOING_AWAY, message=b"going away") for conn in targets),
                return_exceptions=True,
            )
        await asyncio.gather(*(conn.finished.wait() for conn in targets))
        return len(targets)

    def silence(self, account: str | None, silent: bool) -> None:
        """Make the server stop (or resume) sending anything: no pong, no reply, no push.

        A silenced connection still reads and processes requests (and still closes when idle or on
        invalid JSON); everything it would have sent is discarded, as from a server whose outgoing
        side hangs. ``account=None`` silences every connection, including ones opened later;
        ``silence(None, False)`` lifts every silence.
        """
        if account is None:
            self._silent_all = silent
            if not silent:
                self._silent_accounts.clear()
        elif silent:
            self._silent_accounts.add(account)
        else:
            self._silent_accounts.discard(account)

    async def send_raw(self, account: str | None, text: str) -> int:
        """Queue an arbitrary text frame to connections (all, or ``account``'s); returns how many.

        Raw frames ignore :meth:`silence`: they are how tests inject garbage, unknown methods or
        wrongly typed pushes.
        """
        targets = self._matching(account)
        for conn in targets:
            self._enqueue(conn, LANE_PUSH, "text", text, raw=True)
        return len(targets)

    def fail_channel(
        self, account: str, channel: str, code: int | None = ERROR_INTERNAL, message: str | None = None
    ) -> None:
        """Make ``channel``'s ``_subscribe`` and ``_request`` answer ``account`` with error ``code``.

        ``code=None`` lifts it. Only requests are refused: a subscription made before stays, as the
        docs say nothing of one ending. WhiteBIT leaves open what ``balanceMargin`` answers on an
        account without collateral trading (docs/protocol.md#balance-channels); this is how tests
        make it an error.
        """
        if channel not in PRIVATE_CHANNELS:
            raise ValueError(f"unknown channel {channel!r}")
        if code is None:
            self._channel_errors.pop((account, channel), None)
        else:
            self._channel_errors[(account, channel)] = (code, message or ERROR_MESSAGES.get(code, "error"))

    def _spot_as_object(self) -> bool:
        if self.spot_update_form == "both":
            return self._form_rng.random() < 0.5
        return self.spot_update_form == "object"

    def _is_silent(self, conn: _Connection) -> bool:
        return self._silent_all or (conn.account is not None and conn.account in self._silent_accounts)

    # --- connection lifecycle ---

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """The ``GET /ws`` handler: one connection from handshake to close."""
        # Protocol pings are answered by hand so that silence() also silences them.
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        conn = _Connection(
            ws=ws,
            request=request,
            peer=str(request.remote),
            requests=SlidingWindow(self.request_limit_per_minute, RATE_WINDOW_SECONDS, clock=self._clock),
        )
        conn.sender = asyncio.create_task(self._send_loop(conn), name=f"sim-ws-sender-{conn.peer}")
        self._connections.add(conn)
        log.debug("ws connection opened", extra=_fields(conn))
        try:
            await self._receive_loop(conn)
        finally:
            self._connections.discard(conn)
            conn.sender.cancel()
            try:
                await asyncio.gather(conn.sender, return_exceptions=True)
                if not ws.closed:
                    await ws.close()
            finally:
                # Set even if this handler is cancelled while cleaning up, so drop() never hangs.
                conn.finished.set()
                log.debug("ws connection closed", extra=_fields(conn, code=ws.close_code))
        return ws

    async def _receive_loop(self, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        ws = conn.ws
        deadline = loop.time() + self.idle_timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                await self._close_idle(conn)
                return
            try:
                msg = await ws.receive(timeout=remaining)
            except TimeoutError:
                await self._close_idle(conn)
                return
            if msg.type is WSMsgType.TEXT:
                # Only messages from the client count as activity; the server's pushes do not.
                deadline = loop.time() + self.idle_timeout
                if not await self._on_text(conn, msg.data):
                    return
            elif msg.type is WSMsgType.BINARY:
                log.info("ws closing", extra=_fields(conn, reason="binary_frame"))
                await ws.close(code=CLOSE_BINARY_FRAME, message=b"binary frames are not supported")
                return
            elif msg.type is WSMsgType.PING:
                # Undocumented: whether protocol pings keep the connection alive; JKorf says
                # the server handles them badly, so they are answered but do not reset the idle
                # timer: only the JSON `ping` is a documented keepalive.
                self._enqueue(conn, LANE_REPLY, "pong", msg.data)
            elif msg.type is WSMsgType.PONG:
                continue
            else:  # CLOSE, CLOSING, CLOSED, ERROR
                return

    async def _close_idle(self, conn: _Connection) -> None:
        log.info("ws closing", extra=_fields(conn, reason="idle", timeout_seconds=self.idle_timeout))
        await conn.ws.close(code=CLOSE_IDLE, message=b"inactivity timeout")

    async def _send_loop(self, conn: _Connection) -> None:
        ws = conn.ws
        loop = asyncio.get_running_loop()
        while True:
            # The frame that is ready first (ties: the one computed first) of the two lanes' heads.
            heads = [lane for lane in conn.lanes if lane]
            if not heads:
                conn.wakeup.clear()
                await conn.wakeup.wait()
                continue
            lane = min(heads, key=lambda queue: queue[0][:2])
            wait = lane[0][0] - loop.time()
            if wait > 0:
                # A frame queued meanwhile in the other lane may be ready sooner: wake for it.
                conn.wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await conn.wakeup.wait()
                continue
            _, _, kind, payload = lane.popleft()
            if ws.closed:
                return
            try:
                if kind == "pong":
                    await ws.pong(payload)
                else:
                    await ws.send_str(payload)
            except ConnectionError as exc:
                log.debug("ws send failed", extra=_fields(conn, error=str(exc)))
                return

    def _enqueue(self, conn: _Connection, lane_index: int, kind: str, payload: Any, *, raw: bool = False) -> None:
        if not raw and self._is_silent(conn):
            return
        if conn.aborted or conn.ws.closed:
            return
        if sum(len(lane) for lane in conn.lanes) >= self.queue_size:
            # A real server would not buffer without bound for a client that does not read.
            log.warning(
                "ws connection dropped", extra=_fields(conn, reason="send_queue_full", queue_size=self.queue_size)
            )
            conn.abort()
            return
        lane = conn.lanes[lane_index]
        ready = asyncio.get_running_loop().time()
        if lane_index == LANE_REPLY:
            ready += self.reply_delay
        if self.interleave > 0:
            ready += self.rng.uniform(0.0, self.interleave)
        if lane and lane[-1][0] > ready:
            ready = lane[-1][0]  # never overtake an earlier frame of the same lane
        lane.append((ready, next(self._frame_numbers), kind, payload))
        conn.wakeup.set()

    def _send(self, conn: _Connection, lane: int, doc: dict[str, Any]) -> None:
        self._enqueue(conn, lane, "text", json.dumps(doc, separators=(",", ":")))

    def _reply(self, conn: _Connection, request_id: Any, result: Any) -> None:
        self._send(conn, LANE_REPLY, {"id": request_id, "result": result, "error": None})

    def _reply_error(self, conn: _Connection, request_id: Any, code: int, message: str) -> None:
        self._send(conn, LANE_REPLY, {"id": request_id, "result": None, "error": {"code": code, "message": message}})

    # --- requests ---

    async def _on_text(self, conn: _Connection, text: str) -> bool:
        """Handle one client frame; False when the connection was closed because of it."""
        try:
            doc = json.loads(text)
        except ValueError:
            # Documented: "The connection will be closed if invalid JSON is sent."
            log.info("ws closing", extra=_fields(conn, reason="invalid_json"))
            await conn.ws.close(code=CLOSE_INVALID_JSON, message=b"invalid json")
            return False
        if not isinstance(doc, dict):
            # Valid JSON that is not a request object has no id to answer to; treated like invalid
            # JSON (undocumented), so a client that sends it notices at once.
            log.info("ws closing", extra=_fields(conn, reason="not_a_request_object"))
            await conn.ws.close(code=CLOSE_INVALID_JSON, message=b"request must be a JSON object")
            return False
        request_id = doc.get("id")
        method = doc.get("method")
        self.requests_served[method if isinstance(method, str) and method in COUNTED_METHODS else "other"] += 1
        if not self._within_rate_limit(conn):
            self._reply_error(conn, request_id, ERROR_TOO_MANY_REQUESTS, ERROR_MESSAGES[ERROR_TOO_MANY_REQUESTS])
            return True
        try:
            result = self._dispatch(conn, doc)
        except _RequestError as exc:
            self._reply_error(conn, request_id, exc.code, exc.message)
        except Exception:
            # A simulator bug must not look like a network failure to the client under test.
            log.exception("ws request failed", extra=_fields(conn, method=str(doc.get("method"))))
            self._reply_error(conn, request_id, ERROR_INTERNAL, ERROR_MESSAGES[ERROR_INTERNAL])
        else:
            self._reply(conn, request_id, result)
        return True

    def _within_rate_limit(self, conn: _Connection) -> bool:
        """200 requests per 60 s per connection; every request counts, pings too
        (docs/protocol.md#websocket-limits-and-errors).

        Only requests that were served occupy the window, so a client that backs off recovers once
        its served requests age out.
        """
        return conn.requests.try_acquire()

    def _dispatch(self, conn: _Connection, doc: dict[str, Any]) -> Any:
        request_id = doc.get("id")
        method = doc.get("method")
        if not isinstance(method, str):
            raise _RequestError(ERROR_METHOD_NOT_FOUND)
        # The docs type `id` as an integer; anything else is refused (but still echoed back).
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise _RequestError(ERROR_INVALID_ARGUMENT)
        # `params` is always an array. The 2023 official Python SDK pings without it, so a missing
        # `params` is read as `[]`; a `params` of another type is refused.
        params = doc.get("params", [])
        if not isinstance(params, list):
            raise _RequestError(ERROR_INVALID_ARGUMENT)

        if method == "ping":
            return "pong"
        if method == "time":
            return int(self._clock())
        if method == "authorize":
            return self._authorize(conn, params)
        if method not in PRIVATE_METHODS:
            # Market streams and the other private channels (ordersExecuted, deals, positions...) are
            # not simulated; the exporter does not use them.
            raise _RequestError(ERROR_METHOD_NOT_FOUND)
        if conn.account is None:
            raise _RequestError(ERROR_REQUIRE_AUTHENTICATION)
        channel, _, operation = method.rpartition("_")
        failure = self._channel_errors.get((conn.account, channel))
        if failure is None and channel == CHANNEL_BALANCE_MARGIN:
            account = self.exchange.accounts.get(conn.account)
            if account is not None and not account.collateral_trading:
                # Undocumented (docs/protocol.md#balance-channels): here, an error like any other refusal.
                failure = (ERROR_INTERNAL, NO_COLLATERAL_TRADING)
        if failure is not None and operation != "unsubscribe":
            raise _RequestError(*failure)
        if operation == "unsubscribe":
            # Documented as `params: []` (schema maxItems 0).
            if params:
                raise _RequestError(ERROR_INVALID_ARGUMENT)
            conn.subscriptions.pop(channel, None)
            return {"status": "success"}
        if channel == CHANNEL_ORDERS_PENDING:
            if operation == "request":
                return self._orders_pending_request(conn.account, params)
            conn.subscriptions[channel] = self._markets(params)
            return {"status": "success"}
        assets = self._assets(params)
        if operation == "request":
            if channel == CHANNEL_BALANCE_SPOT:
                return self._spot_balances(conn.account, assets)
            return self._margin_balances(conn.account, assets)
        # Subscribing again replaces the previous subscription (no merging).
        conn.subscriptions[channel] = assets
        return {"status": "success"}

    def _authorize(self, conn: _Connection, params: list[Any]) -> dict[str, str]:
        # The second param is documented as "public" but SDKs send other strings, so any value
        # is accepted; both must be present, as in every documented and SDK example.
        if len(params) != 2 or not isinstance(params[0], str):
            raise _RequestError(ERROR_INVALID_ARGUMENT)
        account = self.tokens.redeem(params[0])
        if account is None:
            # Unknown, expired or already used: the docs' example error for a bad token. A failed
            # re-authorize leaves an earlier authorization in place.
            log.info("ws authorize rejected", extra=_fields(conn, reason="bad_token"))
            raise _RequestError(ERROR_INVALID_ARGUMENT)
        if conn.account is not None and conn.account != account:
            # Undocumented: re-authorizing as another account. Never let the old account's subscriptions
            # deliver the new account's data under a subscription the client did not make for it.
            conn.subscriptions.clear()
        conn.account = account
        log.info("ws authorized", extra=_fields(conn))
        return {"status": "success"}

    @staticmethod
    def _assets(params: list[Any]) -> frozenset[str] | None:
        """An asset list (empty = all). Unheld or unknown assets are allowed: WhiteBIT's own example
        answers a balance request for assets the account does not hold with zeros."""
        if not all(isinstance(asset, str) and asset for asset in params):
            raise _RequestError(ERROR_INVALID_ARGUMENT)
        return frozenset(params) if params else None

    def _check_market(self, market: Any) -> str:
        if not isinstance(market, str) or not market:
            raise _RequestError(ERROR_INVALID_ARGUMENT)
        if market not in self.exchange.markets:
            raise _RequestError(ERROR_UNKNOWN_MARKET, f"market {market} does not exist")
        return market

    def _markets(self, params: list[Any]) -> frozenset[str] | None:
        """A flat market list for ``ordersPending_subscribe``; every market must exist.

        An empty list is undocumented for this channel (docs/protocol.md#orderspending-channel); it means
        "all markets" here, as
        it does for ``deals`` and the balance channels.
        """
        return frozenset(self._check_market(market) for market in params) if params else None

    def _orders_pending_request(self, account: str, params: list[Any]) -> dict[str, Any]:
        # `[market, offset, limit]`: exactly three items (schema minItems/maxItems 3).
        if len(params) != 3:
            raise _RequestError(ERROR_INVALID_ARGUMENT)
        market, offset, limit = params
        market = self._check_market(market)
        if not _is_int(offset) or offset < 0:
            raise _RequestError(ERROR_INVALID_ARGUMENT)
        if not _is_int(limit) or not 1 <= limit <= ORDERS_PENDING_MAX_LIMIT:
            raise _RequestError(ERROR_INVALID_ARGUMENT)
        orders = self.exchange.open_orders(account, market)
        return {
            "limit": limit,
            "offset": offset,
            "total": len(orders),
            "records": [order.to_ws() for order in orders[offset : offset + limit]],
        }

    def _spot_balances(self, account: str, assets: frozenset[str] | None) -> dict[str, dict[str, str]]:
        wallets = self.exchange.accounts[account].spot
        if assets is not None:
            names: Iterable[str] = sorted(assets)
        elif self.listing.lists_zeros():
            names = self.listing.assets()
        else:
            names = sorted(a for a, b in wallets.items() if b.available != ZERO or b.freeze != ZERO)
        return {asset: spot_wire(wallets.get(asset, SpotBalance())) for asset in names}

    def _margin_balances(self, account: str, assets: frozenset[str] | None) -> dict[str, dict[str, str]]:
        wallets = self.exchange.accounts[account].collateral
        if assets is not None:
            names: Iterable[str] = sorted(assets)
        elif self.listing.lists_zeros():
            names = self.listing.assets()
        else:
            names = sorted(a for a, b in wallets.items() if b.balance != ZERO or b.borrow != ZERO)
        return {asset: margin_request_wire(wallets.get(asset, MarginBalance())) for asset in names}

    # --- pushes ---

    def _on_event(self, event: Event) -> None:
        """Exchange listener (synchronous): queue the push for every subscribed connection."""
        if isinstance(event, OrderEvent):
            channel = CHANNEL_ORDERS_PENDING
        elif isinstance(event, SpotBalanceEvent):
            channel = CHANNEL_BALANCE_SPOT
        elif isinstance(event, MarginBalanceEvent):
            channel = CHANNEL_BALANCE_MARGIN
        else:  # webhooks travel over HTTP, not this socket
            return
        for conn in list(self._connections):
            if conn.account != event.account or channel not in conn.subscriptions:
                continue
            push = _push_for(event, conn.subscriptions[channel], spot_as_object=self._spot_as_object())
            if push is not None:
                self._send(conn, LANE_PUSH, push)


def _push_for(
    event: OrderEvent | SpotBalanceEvent | MarginBalanceEvent,
    names: frozenset[str] | None,
    *,
    spot_as_object: bool = False,
) -> dict[str, Any] | None:
    """The ``*_update`` frame ``event`` becomes for a subscription to ``names`` (None = all), if any.

    ``spot_as_object``: ``balanceSpot_update`` params as one object, as a docs guide's example shows,
    instead of the channel page's array holding it (docs/protocol.md#balance-channels)."""
    if isinstance(event, OrderEvent):
        if names is not None and event.order.get("market") not in names:
            return None
        return {"id": None, "method": "ordersPending_update", "params": [event.event_id, event.order]}
    # Balance updates carry only the changed assets, filtered to the subscription.
    changed = {asset: values for asset, values in event.balances.items() if names is None or asset in names}
    if not changed:
        return None
    if isinstance(event, SpotBalanceEvent):
        return {"id": None, "method": "balanceSpot_update", "params": changed if spot_as_object else [changed]}
    return {
        "id": None,
        "method": "balanceMargin_update",
        "params": [{"a": asset, **values} for asset, values in changed.items()],
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
