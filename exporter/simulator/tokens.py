"""WebSocket tokens: issued by ``/api/v4/profile/websocket_token``, redeemed by ``authorize``.

WhiteBIT calls its tokens "short-lived" and advises a fresh one for every connection; whether a
token can authorize twice is undocumented. The simulator is strict by default (one use, 60 s), so a
client that reuses tokens fails here rather than in production.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class _Grant:
    account: str
    expires_at: float


class TokenIssuer:
    """Issues opaque tokens bound to an account and redeems them at most once (by default)."""

    def __init__(self, *, ttl: float = 60.0, single_use: bool = True, clock: Callable[[], float] = time.time) -> None:
        self.ttl = ttl
        self.single_use = single_use
        self._clock = clock
        self._grants: dict[str, _Grant] = {}

    def issue(self, account: str) -> str:
        """A new token for ``account``."""
        now = self._clock()
        self._grants = {t: g for t, g in self._grants.items() if g.expires_at > now}
        token = secrets.token_urlsafe(24)
        self._grants[token] = _Grant(account, now + self.ttl)
        return token

    def redeem(self, token: str) -> str | None:
        """The account the token was issued for, or None if it is unknown, expired or already used."""
        grant = self._grants.get(token)
        if grant is None or grant.expires_at <= self._clock():
            return None
        if self.single_use:
            del self._grants[token]
        return grant.account
