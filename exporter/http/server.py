"""One HTTP listener: an aiohttp application bound to an address, with a bounded stop.

Both the metrics and the webhook listener are a :class:`Listener`; they differ only in their
application, their connection limits (:mod:`exporter.http.limits`), whether they serve HTTPS
(:mod:`exporter.http.tls`) and in how long a stop waits for the requests in flight.
"""

from __future__ import annotations

import asyncio
import logging
import os

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from exporter.config.schema import ListenAddress
from exporter.core.metrics import SeriesValues
from exporter.http.limits import ACCEPT_BATCH, ConnectionLimits, LimitedRunner, ListenerConnections
from exporter.http.tls import ServerTls, TlsSite

log = logging.getLogger(__name__)


class ListenError(Exception):
    """The listener cannot bind its address; the message says which and why.

    ``listener`` is the listener's name (``metrics``, ``webhooks``), ``address`` what it asked for and
    ``reason`` the operating system's (``Address already in use``), so that the command line can name the
    setting to change.
    """

    def __init__(self, listener: str, address: ListenAddress, reason: str) -> None:
        super().__init__(f"cannot listen on {address} for the {listener} listener: {reason}")
        self.listener = listener
        self.address = address
        self.reason = reason


class DebugAccessLogger(AbstractAccessLogger):
    """One structured line per request, at debug level: scrapes every 15 s would drown info."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # request.path carries no query string, so nothing a client sent as a parameter is logged.
        self.logger.debug(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_seconds": round(time, 6),
                "remote": request.remote,
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


class Listener:
    """Serves ``app`` on ``address`` between :meth:`start` and :meth:`stop`.

    ``shutdown_timeout`` bounds how long :meth:`stop` lets requests in flight finish; ``limits`` are
    its connection limits, counted in ``connections`` (a :class:`ListenerConnections` of its own when
    not given, reachable as ``listener.connections``). With ``tls`` it serves HTTPS.
    """

    def __init__(
        self,
        name: str,
        app: web.Application,
        address: ListenAddress,
        *,
        shutdown_timeout: float,
        limits: ConnectionLimits | None = None,
        connections: ListenerConnections | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.name = name
        self.tls = tls
        self._address = address
        self._shutdown_timeout = shutdown_timeout
        self.limits = limits if limits is not None else ConnectionLimits()
        self.connections = connections if connections is not None else ListenerConnections(SeriesValues())
        self.guard = self.connections.guard(name, self.limits.max_connections)
        self._runner = LimitedRunner(
            app,
            limits=self.limits,
            guard=self.guard,
            access_log_class=DebugAccessLogger,
            access_log=logging.getLogger(f"exporter.access.{name}"),
            shutdown_timeout=shutdown_timeout,
        )
        self._url: str | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (``https://`` with TLS) the listener is bound to (the real port when 0 was asked)."""
        if self._url is None:
            raise RuntimeError(f"the {self.name} listener is not started")
        return self._url

    async def start(self) -> None:
        """Bind and serve; raises :class:`ListenError` when the address cannot be bound."""
        await self._runner.setup()
        # An empty host means every interface, as in Prometheus' ":9945".
        host = self._address.host or None
        site: web.BaseSite
        if self.tls is None:
            site = web.TCPSite(self._runner, host, self._address.port, backlog=ACCEPT_BATCH)
        else:
            site = TlsSite(
                self._runner,
                host,
                self._address.port,
                tls=self.tls,
                handshake_timeout=self.limits.request_timeout,
                backlog=ACCEPT_BATCH,
            )
        try:
            await site.start()
        except OSError as exc:
            # asyncio's own strerror repeats the address; the errno text alone reads better.
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
            raise ListenError(self.name, self._address, reason) from exc
        self._url = _url(self._runner.addresses[0], "https" if self.tls is not None else "http")

    async def stop(self) -> None:
        """Stop accepting, let requests in flight finish within the shutdown timeout, close."""
        self._url = None
        try:
            # shutdown_timeout already bounds in-flight requests; this bounds the rest.
            async with asyncio.timeout(self._shutdown_timeout + 0.25):
                await self._runner.cleanup()
        except TimeoutError:
            log.error("listener did not stop in time", extra={"listener": self.name})


def _url(address: tuple[object, ...], scheme: str) -> str:
    host, port = str(address[0]), int(str(address[1]))
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
