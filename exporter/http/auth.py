"""Who may use the metrics listener: basic auth and client-certificate SANs from ``--web.config.file``.

The rules are the exporter toolkit's (https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md),
with one exception the README documents: ``/-/healthy`` answers without a password, so a liveness probe
(Docker's HEALTHCHECK, a kubelet) needs none; it says only "OK". Everything else (``/metrics``, ``/``,
``/-/ready``, and any other path, which gets its 404 only once authenticated) needs a configured user.

**Basic auth.** A request without an ``Authorization: Basic`` header that decodes to ``user:password``
(``missing_credentials``), or with a user that is not configured or a wrong password
(``wrong_credentials``), is answered 401 with ``WWW-Authenticate: Basic``. Passwords are checked with
``bcrypt.checkpw`` (constant time) in a worker thread, one check at a time as the toolkit does: bcrypt is
slow on purpose (about 0.1 s at cost 10), so a flood of guesses costs at most one core and never stalls
the event loop. A user that is not configured is checked against a configured user's hash all the same
and refused, so the answer takes as long as for a real user and does not tell which users exist. A
password over 72 bytes is refused unchecked: bcrypt reads only the first 72.

**Successful checks are cached**, as the toolkit caches them, so a scrape every few seconds does not pay
for bcrypt each time: for :data:`CACHE_SECONDS`, at most :data:`CACHE_ENTRIES` at once (the oldest go
first). An entry is keyed by HMAC-SHA256 of the user and password under a random key made at start,
never by the password itself, and a failed check is never cached (so a wrong guess is not remembered
either, unlike the toolkit's cache, which keeps every password tried).

**Client-certificate SANs** (``client_allowed_sans``, with ``client_auth_type:
RequireAndVerifyClientCert``): Python's ssl module has no hook in the handshake, so the verified
certificate's subject alternative names (DNS names, e-mail addresses, IP addresses and URIs, as Go
reads them) are compared with the list on each request; a certificate with none of them gets 403
(``client_certificate``). The toolkit ends the handshake instead; either way nothing is served.

Refusals are counted in ``whitebit_exporter_metrics_listener_auth_rejected_total{reason}`` and logged at
most once per 10 s per reason with the client's address, never a user name, password or header.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import bcrypt
from aiohttp import web
from cryptography import x509

from exporter.webhooks.intake import RejectionLog

log = logging.getLogger(__name__)

#: How long a successful password check is remembered.
CACHE_SECONDS = 300.0
#: At most this many remembered checks (the toolkit's cache holds 100 too).
CACHE_ENTRIES = 100
#: bcrypt reads at most this many bytes of a password.
MAX_PASSWORD_BYTES = 72
#: Why a request was refused (the ``reason`` label).
REJECT_REASONS = ("missing_credentials", "wrong_credentials", "client_certificate")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """``(user, password)`` of an ``Authorization: Basic`` header, or None when there is none or it is unreadable."""
    if header is None:
        return None
    scheme, _, encoded = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


class BasicAuth:
    """Checks basic-auth credentials against the configured users' bcrypt hashes (see the module docstring)."""

    def __init__(self, users: Sequence[tuple[str, str]], *, clock: Callable[[], float] = time.monotonic) -> None:
        if not users:
            raise ValueError("basic auth needs at least one user")
        self._users = {user.encode(): hashed.encode() for user, hashed in users}
        # The hash an unknown user's password is checked against, so that refusing it takes as long.
        self._decoy = next(iter(self._users.values()))
        self._key = secrets.token_bytes(32)
        self._remembered: dict[bytes, float] = {}  # digest -> expiry, oldest first
        self._lock = asyncio.Lock()
        self._clock = clock
        self.checks = 0  # bcrypt checks run (the cache's effect is visible in tests)

    def _digest(self, user: bytes, password: bytes) -> bytes:
        message = len(user).to_bytes(4, "big") + user + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def _is_remembered(self, digest: bytes) -> bool:
        expiry = self._remembered.get(digest)
        if expiry is None:
            return False
        if expiry > self._clock():
            return True
        del self._remembered[digest]
        return False

    async def check(self, header: str | None) -> str | None:
        """None when ``header`` names a configured user with the right password; else the refusal's reason."""
        credentials = basic_credentials(header)
        if credentials is None:
            return "missing_credentials"
        user, password = credentials
        if len(password) > MAX_PASSWORD_BYTES:
            return "wrong_credentials"
        digest = self._digest(user, password)
        if self._is_remembered(digest):
            return None
        hashed = self._users.get(user)
        async with self._lock:
            # Another request may have checked the same credentials while this one waited.
            if self._is_remembered(digest):
                return None
            self.checks += 1
            matches = await asyncio.to_thread(bcrypt.checkpw, password, hashed or self._decoy)
        if not matches or hashed is None:
            return "wrong_credentials"
        self._remember(digest)
        return None

    def _remember(self, digest: bytes) -> None:
        remembered = self._remembered
        remembered.pop(digest, None)
        while len(remembered) >= CACHE_ENTRIES:
            del remembered[next(iter(remembered))]
        remembered[digest] = self._clock() + CACHE_SECONDS


def certificate_sans(der: bytes) -> set[str]:
    """The subject alternative names of a DER certificate as Go's crypto/x509 prints them."""
    try:
        extension = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (ValueError, x509.ExtensionNotFound, x509.DuplicateExtension, x509.UnsupportedGeneralNameType):
        # No SAN that could be read is no SAN: the certificate is refused.
        return set()
    names = extension.value
    found: set[str] = set()
    found.update(names.get_values_for_type(x509.DNSName))
    found.update(names.get_values_for_type(x509.RFC822Name))
    found.update(names.get_values_for_type(x509.UniformResourceIdentifier))
    for address in names.get_values_for_type(x509.IPAddress):
        # Go prints an IPv4 address held in IPv6 form as IPv4.
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        found.add(str(mapped or address))
    return found


def peer_certificate(request: web.Request) -> bytes | None:
    """The DER certificate the client presented on this request's connection, if any."""
    transport = request.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    return ssl_object.getpeercert(binary_form=True)


class AccessControl:
    """The metrics listener's basic auth and SAN check as one aiohttp middleware, with its counter."""

    def __init__(
        self,
        users: Sequence[tuple[str, str]],
        allowed_sans: Sequence[str],
        rejected: dict[tuple[str, ...], float],
        *,
        open_handlers: Sequence[Handler] = (),
    ) -> None:
        self.auth = BasicAuth(users) if users else None
        self._sans = frozenset(allowed_sans)
        self._rejected = rejected
        self._open = tuple(open_handlers)
        self._log = RejectionLog(log, message="request refused by the metrics listener")

    def _refuse(self, request: web.Request, reason: str) -> web.Response:
        self._rejected[(reason,)] = self._rejected.get((reason,), 0.0) + 1
        remote = request.remote

        def describe() -> dict[str, Any]:
            return {"listener": "metrics", "reason": reason, "remote": remote}

        self._log.rejected(("listener", "metrics", reason), describe)
        if reason == "client_certificate":
            return web.Response(status=403, text="Forbidden\n")
        return web.Response(status=401, text="Unauthorized\n", headers={"WWW-Authenticate": "Basic"})

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Serve ``request`` only to an allowed client certificate and a configured user."""
        if self._sans:
            der = peer_certificate(request)
            if der is None or self._sans.isdisjoint(certificate_sans(der)):
                return self._refuse(request, "client_certificate")
        if self.auth is not None and request.match_info.handler not in self._open:
            reason = await self.auth.check(request.headers.get("Authorization"))
            if reason is not None:
                return self._refuse(request, reason)
        return await handler(request)
