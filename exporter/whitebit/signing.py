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
from collections.abc import Iterable, Mapping
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
    """Millisecond nonces that never repeat or go backwards within one process.

    WhiteBIT tracks the highest nonce per API key; with ``nonceWindow`` a nonce must also be
    within 5 s of server time, so the value follows the wall clock and is bumped by one when two
    calls land in the same millisecond. Thread-safe, because it may be shared by every caller
    that uses one key.
    """

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._last = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = max(int(self._clock() * 1000), self._last + 1)
            return self._last
