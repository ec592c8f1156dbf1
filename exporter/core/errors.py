"""Why something failed, in plain words: the one place that turns an exception into the text a log line,
``/-/ready`` or the relay's record shows.

:func:`error_text` names the cause of a failed network operation (aiohttp, asyncio, sockets, TLS)::

    connection refused (127.0.0.1:9)
    timed out after 10s (whitebit.com:443)
    DNS resolution failed (whitebit.invalid: Name or service not known)
    TLS failure: certificate verify failed: self-signed certificate (127.0.0.1:8443)
    closed by peer (127.0.0.1:8080)

and falls back to :func:`exception_text` (``ClassName: message``, bounded) for anything else, so no
caller ever shows an exception as its bare class with an empty message (``TimeoutError: ``).
HTTP answers are not exceptions here: a caller that got one names its status and the peer's message
itself (e.g. :class:`exporter.whitebit.rest.RestError`).
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl

import aiohttp

#: The most characters of an unexpected exception's message that are shown (it may quote content).
EXCEPTION_TEXT_LIMIT = 200

# asyncio's create_connection raises one OSError for every address it tried when they failed differently:
# "Multiple exceptions: [Errno 111] Connect call failed ('::1', 9, 0, 0), [Errno 111] Connect call failed (...)".
_MULTIPLE = re.compile(r"\[Errno (\d+)\]")
#: errno values that mean the other side closed the connection.
_CLOSED = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


def exception_text(exc: BaseException) -> str:
    """``ClassName: message`` of an exception, cut to :data:`EXCEPTION_TEXT_LIMIT` characters; the class alone
    when the message is empty.

    What the webhook receivers log for an unexpected exception instead of a traceback, and what
    :func:`error_text` says of an exception it has no plainer words for.
    """
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not break the answer
        message = "?"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= EXCEPTION_TEXT_LIMIT else text[: EXCEPTION_TEXT_LIMIT - 1] + "…"


def error_text(exc: BaseException, *, timeout: float | None = None, peer: str | None = None) -> str:
    """The cause of a failed network operation in plain words, with the peer when it is known.

    ``timeout`` is the limit the caller set, for a timeout (an asyncio or aiohttp timeout does not
    carry it); ``peer`` (``host:port``) is where the caller was going, for errors that do not name it.
    """
    if isinstance(exc, aiohttp.ClientConnectorError):
        # aiohttp wraps what the connection attempt raised, and knows where it was going.
        where = f"{exc.host}:{exc.port}" if exc.host else peer
        if isinstance(exc, aiohttp.ClientConnectorCertificateError):
            cause = exc.certificate_error
            reason = _tls_reason(cause) if isinstance(cause, ssl.SSLError) else exception_text(cause)
            return _with_peer(f"TLS failure: {reason}", where)
        return _os_error_text(exc.os_error, timeout=timeout, peer=where, host=exc.host or None)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return _with_peer("closed by peer before it answered", peer)
    if isinstance(exc, TimeoutError):
        # asyncio.timeout, and aiohttp's connect, read and total timeouts (all TimeoutErrors).
        return _with_peer(f"timed out{_after(timeout)}", peer)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return _with_peer("the answer was cut short", peer)
    if isinstance(exc, OSError):
        return _os_error_text(exc, timeout=timeout, peer=peer)
    return exception_text(exc)


def _os_error_text(exc: OSError, *, timeout: float | None, peer: str | None, host: str | None = None) -> str:
    if isinstance(exc, socket.gaierror):
        name = host or (peer.rsplit(":", 1)[0] if peer else None)
        detail = exc.strerror or str(exc)
        return f"DNS resolution failed ({name}: {detail})" if name else f"DNS resolution failed ({detail})"
    if isinstance(exc, ssl.SSLError):
        return _with_peer(f"TLS failure: {_tls_reason(exc)}", peer)
    if isinstance(exc, TimeoutError):
        return _with_peer(f"timed out{_after(timeout)}", peer)
    code = exc.errno
    if code is None:
        codes = {int(found) for found in _MULTIPLE.findall(str(exc))}
        code = codes.pop() if len(codes) == 1 else None
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return _with_peer("connection refused", peer)
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)) or code in _CLOSED:
        return _with_peer("closed by peer", peer)
    if code is not None and code > 0:
        return _with_peer(exc.strerror or os.strerror(code), peer)
    return _with_peer(exception_text(exc), peer)


def _tls_reason(exc: ssl.SSLError) -> str:
    """What the TLS layer said, without OpenSSL's source location: ``certificate verify failed: …``."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return exception_text(exc)


def _after(timeout: float | None) -> str:
    return "" if timeout is None else f" after {timeout:g}s"


def _with_peer(text: str, peer: str | None) -> str:
    return f"{text} ({peer})" if peer else text
