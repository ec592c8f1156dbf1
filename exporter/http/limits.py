"""Connection limits of the HTTP listeners: request deadline, idle timeout, connection cap, open-file budget.

Both listeners are reachable by clients the exporter does not control (the webhook listener by the
whole internet), and aiohttp on its own times nothing out but an idle keep-alive connection, after an
hour. Each listener therefore serves through a :class:`LimitedRunner`, whose request handlers
(:class:`LimitedHandler`, one per connection) add:

- **a request deadline** (``request_timeout``): from the first byte of a request, its headers and
  body must have arrived within the deadline, or the connection is closed (slowloris: headers or a
  body dribbled a byte at a time), by a sweep that runs :data:`SWEEPS_PER_DEADLINE` times per
  deadline. Once the whole request is in, the application's own time to answer is not counted.
  aiohttp's own idle timer also runs from the connection's start (or its last answer) until a
  request's headers are complete, so a request's headers must in fact arrive within the shorter of
  ``request_timeout`` and ``idle_timeout``;
- **an idle timeout** (``idle_timeout``): aiohttp's ``keepalive_timeout``, which closes a connection
  that sends nothing, whether it is new or between two requests;
- **a connection cap** (``max_connections``): a connection over the cap is accepted and closed at
  once, before any byte is read, so a flood costs a file descriptor only for an instant. Each
  listener has its own cap, so a flood on the webhook port never takes what the metrics listener needs.
  On a TLS listener a connection is admitted when it is accepted, before its handshake
  (:mod:`exporter.http.tls`), and the handshake must be done within ``request_timeout``.

:class:`ListenerConnections` renders, per listener, the open connections
(``whitebit_exporter_listener_connections``), the refused ones and the ones cut off at the deadline
(``..._refused_total``, ``..._timed_out_total``); refusals and cut-offs are logged at most once per
10 s per listener.

**Open-file budget.** Every open connection is a file descriptor, and so is each socket asyncio accepts
before the protocol closes it: it accepts up to ``backlog`` sockets per wake-up of a listening socket
(``asyncio.selector_events.BaseSelectorEventLoop._accept_connection``), so the listeners are started
with a backlog of :data:`ACCEPT_BATCH`. :func:`files_needed` adds those to the caps and
:data:`RESERVED_FILES` for the rest of the process (SQLite, outgoing connections to the exchanges,
stdio); :func:`ensure_open_files` raises the soft ``RLIMIT_NOFILE`` toward the hard limit and refuses
to start (:class:`FileBudgetError`) when the budget still does not fit: a limit the caps cannot keep
is how an attack made both listeners stop answering (``accept()`` failing with EMFILE).

aiohttp builds a request handler per connection inside its ``Server``, which ``AppRunner`` makes;
:class:`LimitedRunner` overrides ``AppRunner._make_server`` (aiohttp 3.14 ``web_runner.py``) and
:class:`LimitedHandler` reads ``RequestHandler._current_request`` (``web_protocol.py``): both
private, both exercised by tests/http/test_listener_limits.py.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse
from aiohttp.web_server import Server

from exporter.config.schema import DEFAULT_IDLE_TIMEOUT, DEFAULT_REQUEST_TIMEOUT
from exporter.core.metrics import (
    LISTENER_CONNECTIONS,
    LISTENER_CONNECTIONS_REFUSED,
    LISTENER_CONNECTIONS_TIMED_OUT,
    SeriesValues,
)
from exporter.webhooks.intake import RejectionLog

log = logging.getLogger(__name__)

#: The listen backlog of each listener, which is also how many sockets asyncio accepts per wake-up.
ACCEPT_BATCH = 64
#: File descriptors kept for everything but the listeners' connections: stdio, the event loop, the
#: SQLite database and its journal, connections to WhiteBIT (REST and WebSocket per account).
RESERVED_FILES = 64
#: Sweeps for overdue requests per ``request_timeout`` (see :class:`LimitedHandler`).
SWEEPS_PER_DEADLINE = 4
#: The ``listener`` label values.
LISTENER_NAMES = ("metrics", "webhooks")


@dataclass(frozen=True)
class ConnectionLimits:
    """One listener's limits (the ``web`` / ``webhooks`` config keys of the same names)."""

    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = 512


class FileBudgetError(Exception):
    """The open-file limit cannot hold what the listeners' caps need; the message says what to change."""


def files_needed(caps: Iterable[int]) -> int:
    """File descriptors the process needs when every listener is at its cap (see the module docstring)."""
    return sum(cap + ACCEPT_BATCH for cap in caps) + RESERVED_FILES


def planned_soft_limit(soft: int, hard: int, needed: int) -> int | None:
    """The soft ``RLIMIT_NOFILE`` to set for ``needed`` descriptors, or None to leave ``soft`` as it is.

    A soft limit below ``needed`` is raised to the hard limit (as Go's runtime does), or to ``needed``
    when the hard limit is unlimited (Linux refuses an unlimited soft limit for open files).
    """
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return None
    target = needed if hard == resource.RLIM_INFINITY else hard
    return target if target > soft else None


def ensure_open_files(needed: int) -> int:
    """Raise the soft open-file limit to hold ``needed`` descriptors where allowed; the limit in force.

    Raises :class:`FileBudgetError` when it stays below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = planned_soft_limit(soft, hard, needed)
    if target is not None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit", extra={"soft": soft, "wanted": target, "error": str(exc)})
        else:
            log.info("raised the open-file limit", extra={"from": soft, "to": target})
            soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise FileBudgetError(
            f"the open-file limit is {soft} (hard limit {hard}) but the listeners' max_connections need {needed};"
            " raise it (ulimit -n, LimitNOFILE=) or lower web.max_connections / webhooks.max_connections"
        )
    return soft


class ListenerConnections:
    """The connection counters of every listener, rendered by ``collector`` (one family per metric)."""

    def __init__(self, collector: SeriesValues) -> None:
        self.collector = collector
        known = [(name,) for name in LISTENER_NAMES]
        self.open_series = collector.series(LISTENER_CONNECTIONS, known)
        self.refused_series = collector.series(LISTENER_CONNECTIONS_REFUSED, known)
        self.timed_out_series = collector.series(LISTENER_CONNECTIONS_TIMED_OUT, known)
        self.refusal_log = RejectionLog(log, message="connection refused: the listener has max_connections open")
        self.timeout_log = RejectionLog(log, message="connection cut off: request not received within request_timeout")

    def guard(self, listener: str, max_connections: int) -> ConnectionGuard:
        """The admission counter of one listener."""
        return ConnectionGuard(self, listener, max_connections)


class ConnectionGuard:
    """Admits a listener's connections up to its cap, counts what it refuses or cuts off, and holds
    the listener's deadline sweep (see :class:`LimitedHandler`)."""

    def __init__(self, connections: ListenerConnections, listener: str, max_connections: int) -> None:
        self._connections = connections
        self._key = (listener,)
        self._log_key = ("listener", listener, "")
        self.max_connections = max_connections
        self.open = 0
        self._handlers: set[LimitedHandler] = set()
        self._sweep: asyncio.TimerHandle | None = None

    def admit(self, handler: LimitedHandler) -> bool:
        """Count one new connection in, or refuse it (False) when the listener is at its cap."""
        connections = self._connections
        if self.open >= self.max_connections:
            connections.refused_series[self._key] += 1
            connections.refusal_log.rejected(self._log_key, self._describe)
            return False
        self.open += 1
        connections.open_series[self._key] = self.open
        self._handlers.add(handler)
        if self._sweep is None:
            self._schedule(handler)
        return True

    def release(self, handler: LimitedHandler) -> None:
        """An admitted connection closed."""
        self.open -= 1
        self._connections.open_series[self._key] = self.open
        self._handlers.discard(handler)
        if not self._handlers and self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None

    def timed_out(self) -> None:
        """An admitted connection was cut off at its request deadline."""
        self._connections.timed_out_series[self._key] += 1
        self._connections.timeout_log.rejected(self._log_key, self._describe)

    def _schedule(self, handler: LimitedHandler) -> None:
        self._sweep = handler.event_loop.call_later(
            handler.request_timeout / SWEEPS_PER_DEADLINE, self._run_sweep, handler
        )

    def _run_sweep(self, handler: LimitedHandler) -> None:
        self._sweep = None
        now = handler.event_loop.time()
        for each in list(self._handlers):
            each.check_deadline(now)
        if self._handlers:
            self._schedule(next(iter(self._handlers)))

    def _describe(self) -> dict[str, Any]:
        return {"listener": self._key[0], "max_connections": self.max_connections}


class LimitedHandler(RequestHandler):
    """aiohttp's request handler for one connection, with the cap and the request deadline.

    The deadline costs a request two attribute writes: the first byte of a request stamps the
    time, the answer clears it, and one sweep per listener, :data:`SWEEPS_PER_DEADLINE` times per
    ``request_timeout`` while connections are open, cuts off any connection whose stamp is older
    than the deadline (so a cut comes between one and 1.25 deadlines after the first byte). A timer
    per request would cost every delivery a heap push and a cancel.
    """

    # aiohttp's handler has __slots__; without ours every instance would get a __dict__, and every
    # method lookup aiohttp makes on it per request would look there first.
    __slots__ = (
        "_limit_admitted",
        "_limit_connected",
        "_limit_cut_off",
        "_limit_guard",
        "_limit_started",
        "event_loop",
        "request_timeout",
    )

    def __init__(
        self,
        manager: Server,
        *,
        guard: ConnectionGuard,
        request_timeout: float,
        loop: asyncio.AbstractEventLoop,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._limit_guard = guard
        self.request_timeout = request_timeout
        self.event_loop = loop
        self._limit_admitted = False
        self._limit_connected = False
        self._limit_started: float | None = None
        self._limit_cut_off = False

    def admit(self) -> bool:
        """Count this connection against the listener's cap; False (counted as refused) when it is full.

        A plain connection is admitted when it is made; a TLS one when its TCP connection is accepted,
        before the handshake (:class:`exporter.http.tls.TlsConnection`), so handshakes count too.
        """
        if self._limit_guard.admit(self):
            self._limit_admitted = True
            return True
        return False

    @property
    def connected(self) -> bool:
        """True from the application's ``connection_made`` (after a TLS handshake) until ``connection_lost``."""
        return self._limit_connected

    def release(self) -> None:
        """Give this connection's place back (once, however many times it is called)."""
        if self._limit_admitted:
            self._limit_admitted = False
            self._limit_guard.release(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._limit_admitted and not self.admit():
            # Nothing of aiohttp's is set up for a refused connection, so closing it costs nothing more.
            transport.close()
            return
        self._limit_connected = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.release()
        if self._limit_connected:
            self._limit_connected = False
            super().connection_lost(exc)

    def transport_lost(self) -> None:
        """The TCP connection under TLS closed: give the place back unless the handshake completed (then
        :meth:`connection_lost` does, as for a plain connection)."""
        if not self._limit_connected:
            self.release()

    def data_received(self, data: bytes) -> None:
        # The first byte of a request starts its deadline; the answer (finish_response) ends it.
        # aiohttp's method is called directly, not through super(): every chunk of every request
        # passes here.
        if self._limit_started is None:
            self._limit_started = self.event_loop.time()
        _AIOHTTP_DATA_RECEIVED(self, data)

    def finish_response(
        self, request: BaseRequest, resp: StreamResponse, start_time: float | None
    ) -> Coroutine[Any, Any, tuple[StreamResponse, bool]]:
        # Not a coroutine itself: aiohttp's, returned as is, saves every answer a frame.
        self._limit_started = None
        return _AIOHTTP_FINISH_RESPONSE(self, request, resp, start_time)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # Cutting a connection off makes the application's read of the body fail, which aiohttp would
        # log as an error with a traceback; the cut-off was counted and logged already.
        if self._limit_cut_off:
            self.log_debug(*args, **kw)
            return
        super().log_exception(*args, **kw)

    def check_deadline(self, now: float) -> None:
        """Cut the connection off when its request started more than ``request_timeout`` before ``now``
        and is still not all in (the sweep calls this)."""
        started = self._limit_started
        if started is None or now - started < self.request_timeout:
            return
        request = self._current_request
        if request is not None and request.content.is_eof():
            return  # the whole request is in: the application is answering
        self._limit_started = None
        self._limit_cut_off = True
        self._limit_guard.timed_out()
        self.force_close()


_AIOHTTP_DATA_RECEIVED = RequestHandler.data_received
_AIOHTTP_FINISH_RESPONSE = RequestHandler.finish_response


class LimitedServer(Server):
    """aiohttp's ``Server`` (the protocol factory of a listening socket) making :class:`LimitedHandler`\\ s."""

    def __init__(
        self,
        handler: Any,
        *,
        guard: ConnectionGuard,
        request_timeout: float,
        loop: asyncio.AbstractEventLoop,
        request_factory: Any = None,
        handler_cancellation: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            handler,
            request_factory=request_factory,
            handler_cancellation=handler_cancellation,
            loop=loop,
            **kwargs,
        )
        self._limit_guard = guard
        self._limit_timeout = request_timeout
        self._limit_loop = loop
        self._handler_kwargs = kwargs

    def __call__(self) -> RequestHandler:
        return LimitedHandler(
            self,
            guard=self._limit_guard,
            request_timeout=self._limit_timeout,
            loop=self._limit_loop,
            **self._handler_kwargs,
        )


class LimitedRunner(web.AppRunner):
    """``web.AppRunner`` serving through a :class:`LimitedServer` with ``limits`` and ``guard``."""

    def __init__(self, app: web.Application, *, limits: ConnectionLimits, guard: ConnectionGuard, **kwargs: Any):
        super().__init__(app, keepalive_timeout=limits.idle_timeout, **kwargs)
        self._limit_settings = limits
        self._limit_guard = guard

    async def _make_server(self) -> Server:
        # The application's own Server carries its handler, request factory and the handler arguments
        # (the application's handler_args merged with the runner's); the limited one is made of the same.
        server = await super()._make_server()
        return LimitedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            guard=self._limit_guard,
            request_timeout=self._limit_settings.request_timeout,
            loop=asyncio.get_running_loop(),
            **server._kwargs,
        )
