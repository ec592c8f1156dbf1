"""Authentication of private REST requests, as strict as WhiteBIT documents it.

A private request is a POST whose JSON body carries ``request`` (the URL path) and ``nonce``
(optionally ``nonceWindow``), with three headers: ``X-TXC-APIKEY``, ``X-TXC-PAYLOAD`` =
base64(body) byte for byte, and ``X-TXC-SIGNATURE`` = hex HMAC-SHA512 of that payload keyed by the
API secret (docs/protocol.md#rest-authentication, #nonces). :class:`RequestAuthenticator` checks them in a
fixed order and returns the account or the first failure, with WhiteBIT's message for it
(docs/protocol.md#rest-errors).

Where a client has recorded WhiteBIT's exact body (ccxt's error table: code 9 "Invalid payload.",
code 10 "Unauthorized request.", code 2 for a key the server will not accept; ccxt PR #25353: the
429 "Too many requests." with ``errors: {}``), that body is sent verbatim, including the missing
``errors`` key of the first three. The other messages come from the docs' list, which gives no
status or code; they use the ``{code: 0, message, errors: {}}`` envelope and HTTP 401, because the
websocket_token OpenAPI documents 401 for a bad key, signature or nonce and JKorf handles "a 401
with code 0" as unauthorized. A nonce that is not above the key's last one is a 429, as ccxt saw.

Nonce state is kept per API key, as WhiteBIT does:

* without ``nonceWindow`` the nonce must be strictly greater than the highest nonce accepted
  for the key so far (any integer; it need not be a timestamp);
* with ``"nonceWindow": true`` it must be a millisecond timestamp within ±5 s of server time and
  not used before by that key. Only nonces inside the window are remembered, so memory stays
  bounded; older ones could not be accepted anyway. A windowed nonce also raises the key's highest
  nonce, so the two modes never accept the same value twice.
"""

from __future__ import annotations

import heapq
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from exporter.simulator.model import Account
from exporter.whitebit.signing import (
    HEADER_APIKEY,
    HEADER_PAYLOAD,
    HEADER_SIGNATURE,
    payload_matches_body,
    signature_matches,
)

WINDOW_MS = 5_000

_NUMERIC = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class AuthFailure:
    """A rejected request: the HTTP status and JSON body to answer with, and a short reason label."""

    status: int
    body: dict[str, Any]
    reason: str


def too_many_requests(reason: str = "rate_limited") -> AuthFailure:
    """WhiteBIT's 429, identical for a rate limit and for a nonce that is not new (docs/protocol.md#nonces)."""
    return AuthFailure(429, {"code": 0, "message": "Too many requests.", "errors": {}}, reason)


def _unauthorized(message: str, reason: str) -> AuthFailure:
    return AuthFailure(401, {"code": 0, "message": message, "errors": {}}, reason)


# Bodies recorded verbatim by ccxt's error table (no `errors` key).
_BAD_SIGNATURE = {"code": 10, "message": "Unauthorized request."}
_INVALID_PAYLOAD = {"code": 9, "message": "Invalid payload."}
_KEY_NOT_ACCEPTED = {"code": 2, "message": "This action is unauthorized. Enable your key in API settings"}

MESSAGE_NONCE_TOO_OLD = "Your nonce is more than 5 seconds lesser than the current nonce"
# Undocumented: a windowed nonce too far ahead (docs/protocol.md#nonces); this mirrors the documented "too old" text.
MESSAGE_NONCE_TOO_NEW = "Your nonce is more than 5 seconds greater than the current nonce"


@dataclass
class _NonceState:
    highest: int | None = None
    recent: set[int] = field(default_factory=set)
    heap: list[int] = field(default_factory=list)

    def forget_before(self, horizon: int) -> None:
        while self.heap and self.heap[0] < horizon:
            self.recent.discard(heapq.heappop(self.heap))

    def remember(self, nonce: int) -> None:
        if nonce not in self.recent:
            self.recent.add(nonce)
            heapq.heappush(self.heap, nonce)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """A header value, matched case-insensitively whatever mapping type is given."""
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_body(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (NaN and Infinity are not JSON)."""
    try:
        document = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def parse_nonce(value: Any) -> int | None:
    """A nonce as an integer: a JSON integer or a string of digits (JKorf sends a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and _NUMERIC.fullmatch(value):
        return int(value)
    return None


class RequestAuthenticator:
    """Checks a private request's key, payload, signature, ``request`` and nonce, in that order."""

    def __init__(
        self,
        lookup: Callable[[str], Account | None],
        *,
        clock: Callable[[], float] = time.time,
        window_ms: int = WINDOW_MS,
    ) -> None:
        self._lookup = lookup
        self._clock = clock
        self.window_ms = window_ms
        self._nonces: dict[str, _NonceState] = {}

    def authenticate(self, path: str, headers: Mapping[str, str], body: bytes) -> Account | AuthFailure:
        """The account the request is signed for, or the first rule it breaks."""
        api_key = _header(headers, HEADER_APIKEY)
        if not api_key:
            return AuthFailure(401, dict(_BAD_SIGNATURE), "missing_key")
        account = self._lookup(api_key)
        if account is None:
            # WhiteBIT cannot tell an unknown key from a disabled or deleted one; its documented
            # answer for a key it will not accept is this one (ccxt recorded code 2).
            return AuthFailure(401, dict(_KEY_NOT_ACCEPTED), "unknown_key")
        payload = _header(headers, HEADER_PAYLOAD)
        if not payload:
            return _unauthorized("Payload not provided.", "missing_payload")
        if not payload_matches_body(body, payload):
            # Status undocumented; 400 because the request is malformed rather than unsigned, which
            # is also how ccxt classifies it (BadRequest).
            return AuthFailure(400, dict(_INVALID_PAYLOAD), "invalid_payload")
        signature = _header(headers, HEADER_SIGNATURE) or ""
        # WhiteBIT's clients send lowercase hex; the comparison ignores case (signature_matches).
        if not signature or signature_matches(payload, signature, [account.api_secret]) is None:
            return AuthFailure(401, dict(_BAD_SIGNATURE), "bad_signature")
        document = parse_body(body)
        if document is None:
            return AuthFailure(
                400,
                {"code": 0, "message": "Validation failed", "errors": {"body": ["The body must be a JSON object."]}},
                "body_not_object",
            )
        request_path = document.get("request")
        if request_path is None or request_path == "":
            return _unauthorized("Request not provided.", "missing_request")
        if request_path != path:
            # Undocumented wording, patterned on "Invalid payload." / "Invalid nonceWindow.". A body
            # signed for another endpoint must not be replayable here, so it is an auth failure (401).
            return _unauthorized("Invalid request.", "request_mismatch")
        raw_nonce = document.get("nonce")
        if raw_nonce is None or raw_nonce == "":
            return _unauthorized("Nonce not provided.", "missing_nonce")
        nonce = parse_nonce(raw_nonce)
        if nonce is None:
            return _unauthorized("Invalid nonce.", "invalid_nonce")
        window = document.get("nonceWindow", False)
        if not isinstance(window, bool):
            return _unauthorized("Invalid nonceWindow.", "invalid_nonce_window")
        failure = self._check_nonce(account.api_key, nonce, window)
        return failure if failure is not None else account

    def _check_nonce(self, api_key: str, nonce: int, window: bool) -> AuthFailure | None:
        now_ms = int(self._clock() * 1000)
        state = self._nonces.setdefault(api_key, _NonceState())
        state.forget_before(now_ms - self.window_ms)
        if window:
            if now_ms - nonce > self.window_ms:
                return _unauthorized(MESSAGE_NONCE_TOO_OLD, "nonce_too_old")
            if nonce - now_ms > self.window_ms:
                return _unauthorized(MESSAGE_NONCE_TOO_NEW, "nonce_too_new")
            if nonce in state.recent:
                return too_many_requests("nonce_reused")
        elif state.highest is not None and nonce <= state.highest:
            return too_many_requests("nonce_not_increasing")
        if abs(nonce - now_ms) <= self.window_ms:
            state.remember(nonce)
        state.highest = nonce if state.highest is None else max(state.highest, nonce)
        return None

    def highest_nonce(self, api_key: str) -> int | None:
        """The highest nonce accepted for ``api_key`` (None before its first request)."""
        state = self._nonces.get(api_key)
        return None if state is None else state.highest

    def remembered_nonces(self, api_key: str) -> int:
        """How many windowed nonces are remembered for ``api_key``; bounded by the window."""
        state = self._nonces.get(api_key)
        if state is None:
            return 0
        state.forget_before(int(self._clock() * 1000) - self.window_ms)
        return len(state.recent)

    def reset_key(self, api_key: str) -> None:
        """Forget the key's nonce state, as recreating the key does on WhiteBIT (docs/protocol.md#nonces)."""
        self._nonces.pop(api_key, None)
