"""WhiteBIT request and webhook signatures.

One scheme serves private REST requests and webhook deliveries alike: the JSON body is
base64-encoded into ``X-TXC-PAYLOAD`` and ``X-TXC-SIGNATURE`` is the lowercase hex
HMAC-SHA512 of that base64 text, keyed by the API (or webhook) secret. The exporter's REST
client, its webhook receiver and the simulator all use these functions, so that the two
sides of every test agree on the documented scheme rather than on each other.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

HEADER_APIKEY = "X-TXC-APIKEY"
HEADER_PAYLOAD = "X-TXC-PAYLOAD"
HEADER_SIGNATURE = "X-TXC-SIGNATURE"


def encode_payload(body: bytes) -> str:
    """Return the ``X-TXC-PAYLOAD`` value for a raw body: standard base64 with padding."""
    return base64.b64encode(body).decode("ascii")


def sign_payload(payload: str, secret: str) -> str:
    """Return the lowercase hex HMAC-SHA512 of the base64 payload text keyed by ``secret``."""
    return hmac.new(secret.encode("utf-8"), payload.encode("ascii"), hashlib.sha512).hexdigest()


def payload_matches_body(body: bytes, payload_header: str) -> bool:
    """True when ``payload_header`` is exactly base64(body), byte for byte."""
    return hmac.compare_digest(encode_payload(body).encode("ascii"), payload_header.encode("utf-8", "replace"))


class Secrets:
    """A key's secrets, each prepared once as a keyed HMAC-SHA512 state.

    Verifying a signature copies a prepared state instead of hashing the key again. Every secret is
    compared in constant time and all of them are tried, so the time taken does not reveal which
    slot matched (several secrets are configured while one is being rotated).
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self._macs = tuple(hmac.new(secret.encode("utf-8"), digestmod=hashlib.sha512) for secret in secrets)

    def match(self, payload_header: str, signature_header: str) -> int | None:
        """The index of the first secret whose signature of the payload equals ``signature_header``, else None."""
        presented = signature_header.strip().lower().encode("utf-8", "replace")
        data = payload_header.encode("utf-8", "replace")
        matched: int | None = None
        for index, base in enumerate(self._macs):
            mac = base.copy()
            mac.update(data)
            if hmac.compare_digest(mac.hexdigest().encode("ascii"), presented) and matched is None:
                matched = index
        return matched


def signature_matches(payload_header: str, signature_header: str, secrets: Iterable[str]) -> int | None:
    """The index of the first of ``secrets`` whose signature equals ``signature_header``, else None."""
    return Secrets(secrets).match(payload_header, signature_header)


def compact_json(document: Mapping[str, Any]) -> bytes:
    """Serialize once, compactly, as WhiteBIT's own clients do; the bytes signed are the bytes sent."""
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class SignedRequest:
    """A private REST request ready to send: POST ``body`` with ``headers`` to ``path``."""

    path: str
    body: bytes
    headers: dict[str, str]


def sign_request(
    path: str,
    params: Mapping[str, Any],
    *,
    api_key: str,
    api_secret: str,
    nonce: int,
    nonce_window: bool = True,
) -> SignedRequest:
    """Build the body (params plus ``request``, ``nonce``, ``nonceWindow``) and its three headers."""
    document = dict(params)
    document["request"] = path
    document["nonce"] = nonce
    if nonce_window:
        document["nonceWindow"] = True
    body = compact_json(document)
    payload = encode_payload(body)
    headers = {
        "Content-Type": "application/json",
        HEADER_APIKEY: api_key,
        HEADER_PAYLOAD: payload,
        HEADER_SIGNATURE: sign_payload(payload, api_secret),
    }
    return SignedRequest(path=path, body=body, headers=headers)


def sign_body(body: bytes, *, key: str, secret: str) -> dict[str, str]:
    """Headers for a webhook delivery of ``body`` signed with a webhook key pair."""
    payload = encode_payload(body)
    return {
        "Content-Type": "application/json",
        HEADER_APIKEY: key,
        HEADER_PAYLOAD: payload,
        HEADER_SIGNATURE: sign_payload(payload, secret),
    }


class NonceSource:
    """Millisecond nonces for one API key, following ``clock``, never repeated.

    Without ``nonceWindow`` WhiteBIT wants every nonce above the last one it took for the key, so
    ``window=False`` never goes backwards: a nonce is the clock's millisecond, or one above the last.
    With ``nonceWindow`` (``window=True``) a nonce must be within 5 s of *WhiteBIT's* clock and never
    used before (docs/protocol.md#nonces); then the nonce follows ``clock`` (in the exporter,
    WhiteBIT's clock as measured, see :mod:`exporter.whitebit.clock`) even when a new measurement
    moves it back, and skips the values it handed out in the last :data:`RECENT_NONCES_SECONDS`.
    Thread-safe, because it may be shared by every caller that uses one key.
    """

    def __init__(self, clock: Callable[[], float] = time.time, *, window: bool = True) -> None:
        self._clock = clock
        self._window = window
        self._last = 0
        self._recent: set[int] = set()
        self._recent_order: deque[int] = deque()
        self._lock = threading.Lock()

    def next(self) -> int:
        """The next nonce."""
        with self._lock:
            now = int(self._clock() * 1000)
            if not self._window:
                self._last = max(now, self._last + 1)
                return self._last
            horizon = now - int(RECENT_NONCES_SECONDS * 1000)
            while self._recent_order and self._recent_order[0] < horizon:
                self._recent.discard(self._recent_order.popleft())
            nonce = now
            while nonce in self._recent:
                nonce += 1
            self._recent.add(nonce)
            self._recent_order.append(nonce)
            self._last = nonce
            return nonce


#: How long a ``nonceWindow`` nonce is remembered so it is never handed out twice: longer than the
#: window on either side, and than any step a new clock reading makes.
RECENT_NONCES_SECONDS = 30.0
