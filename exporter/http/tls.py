"""HTTPS for a listener: its TLS context, renewed certificates, and handshakes held to the connection cap.

**Renewed certificates.** As with the exporter toolkit, which reads its files on every connection, a
certificate renewed on disk (certbot, cert-manager, a Kubernetes secret swapped under its symlink) is
served without a restart: when a connection arrives, and at most once per :data:`RELOAD_CHECK_SECONDS`,
:class:`ServerTls` compares the certificate, key and client CA files' inode, size and modification time
with what it loaded, and builds a new context when one changed. If the new files do not load (a key
written after its certificate, say), it keeps serving the old context, logs a warning (at most once per
10 s) and tries again at the next check. The config itself (versions, suites, users) is read at start
only.

**Handshakes count against the cap.** asyncio's own TLS server gives the application its connection
only once the handshake has completed, so connections still in their handshake would escape the
listener's ``max_connections`` and its open-file budget (exporter/http/limits.py), and a peer that
never sends a ClientHello would hold a file for asyncio's default of 60 s. :class:`TlsSite` therefore
makes each accepted TCP connection a :class:`TlsConnection`: asyncio's ``SSLProtocol`` (the protocol
``loop.create_server(ssl=…)`` itself puts under the application; Python 3.11–3.13
``asyncio/sslproto.py``), which admits the connection against the cap before the handshake starts, gives
the place back when a handshake fails, and allows the handshake ``request_timeout`` (rounded up to whole seconds).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import ssl
import time
from asyncio import sslproto
from collections.abc import Callable
from typing import Any

from aiohttp import web

from exporter.config.schema import ServerTlsConfig
from exporter.config.tls import TlsSetupError, server_context, tls_files
from exporter.http.limits import LimitedHandler
from exporter.webhooks.intake import RejectionLog

log = logging.getLogger(__name__)

#: How often (at most) a listener looks at its certificate files for a renewal.
RELOAD_CHECK_SECONDS = 1.0

FileStamp = tuple[tuple[int, int, int] | None, ...]


def _stamp(paths: tuple[str, ...]) -> FileStamp:
    stamps: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
    return tuple(stamps)


class ServerTls:
    """One listener's TLS context, built from ``config`` and rebuilt when its files change."""

    def __init__(self, config: ServerTlsConfig, *, listener: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.listener = listener
        self._clock = clock
        self._files = tls_files(config)
        self._stamp = _stamp(self._files)
        self._context = server_context(config)
        self._checked = clock()
        self._failures = RejectionLog(log, message="TLS files changed but do not load: serving the previous ones")
        self.reloads = 0
        #: Connections accepted and not yet closed (aborted when the listener stops).
        self.connections: set[TlsConnection] = set()

    def context(self) -> ssl.SSLContext:
        """The context for a new connection, rebuilt first when the files changed."""
        now = self._clock()
        if now - self._checked >= RELOAD_CHECK_SECONDS:
            self._checked = now
            stamp = _stamp(self._files)
            if stamp != self._stamp:
                self._reload(stamp)
        return self._context

    def _reload(self, stamp: FileStamp) -> None:
        try:
            context = server_context(self.config)
        except TlsSetupError as error:
            message = error.message

            def describe() -> dict[str, Any]:
                return {"listener": self.listener, "error": message}

            self._failures.rejected(("tls", self.listener, error.key), describe)
            return
        self._context = context
        self._stamp = stamp
        self.reloads += 1
        log.info("TLS files reloaded", extra={"listener": self.listener, "cert_file": self.config.cert_file})


def _consume(waiter: asyncio.Future[None]) -> None:
    if not waiter.cancelled():
        waiter.exception()


class TlsConnection(sslproto.SSLProtocol):
    """One accepted TCP connection of a TLS listener (see the module docstring)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, handler: LimitedHandler, tls: ServerTls, handshake_timeout: float
    ) -> None:
        # asyncio sets the waiter when the handshake ends; its outcome is consumed here (a failed handshake
        # is the client's affair, and an unretrieved exception would be logged when the future is dropped).
        waiter: asyncio.Future[None] = loop.create_future()
        waiter.add_done_callback(_consume)
        super().__init__(
            loop, handler, tls.context(), waiter, server_side=True, ssl_handshake_timeout=math.ceil(handshake_timeout)
        )
        self._handler = handler
        self._tls = tls
        self._tcp: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._handler.admit():
            transport.close()
            return
        self._tcp = transport
        self._tls.connections.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._tcp = None
        self._tls.connections.discard(self)
        super().connection_lost(exc)
        self._handler.transport_lost()

    def abort_handshake(self) -> None:
        """Close the TCP connection at once if its handshake has not completed (the listener is stopping;
        aiohttp closes the others)."""
        tcp = self._tcp
        if tcp is not None and not self._handler.connected and isinstance(tcp, asyncio.Transport):
            tcp.abort()


class TlsSite(web.BaseSite):
    """``web.TCPSite`` serving HTTPS through :class:`TlsConnection`\\ s."""

    __slots__ = ("_handshake_timeout", "_host", "_port", "_tls")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str | None,
        port: int,
        *,
        tls: ServerTls,
        handshake_timeout: float,
        backlog: int,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host = host
        self._port = port
        self._tls = tls
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        return f"https://{self._host or '0.0.0.0'}:{self._port}"

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        tls, timeout = self._tls, self._handshake_timeout

        def connection() -> TlsConnection:
            handler = server()
            assert isinstance(handler, LimitedHandler)
            return TlsConnection(loop, handler, tls, timeout)

        self._server = await loop.create_server(connection, self._host, self._port, backlog=self._backlog)

    async def stop(self) -> None:
        await super().stop()
        # Connections still in their handshake are not aiohttp's yet, so its shutdown would not close them.
        for connection in list(self._tls.connections):
            connection.abort_handshake()
