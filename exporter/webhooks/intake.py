"""What both webhook receivers share between the request and the state: replies, rejection logs, rejection reasons.

**Replies.** A receiver answers with a small fixed JSON body per outcome (``{"status": "ok"}``,
``{"status": "rejected", "reason": "bad_signature"}``), built once, so nothing a sender sent is ever
echoed back and a flood of forged deliveries costs no serialisation.

**Unexpected exceptions.** A receiver answers an exception it did not expect with 503
``internal_error`` (a bug of ours: the sender retries), counted like a rejection and logged through
the same rate limit, as :func:`exporter.core.errors.exception_text` words it (the class and a bounded
message), never a traceback.

**Rejection logs.** Every rejection is counted, but a flood of forged deliveries must not flood the
log (nor spend the CPU formatting it): per (provider, account, reason) the first rejection is
logged at once and later ones at most once per ``interval`` seconds, with the number suppressed
in between.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

#: Why a delivery was rejected (the ``reason`` label), for both providers; a provider may add its own.
REJECT_REASONS = (
    "missing_header",
    "unknown_key",
    "payload_mismatch",
    "bad_signature",
    "bad_json",
    "body_too_large",
    # The body could not be read: the client went away mid-body, or its encoding was broken (a
    # Content-Encoding that does not decode); 400, if anyone is still there to read it.
    "unreadable_body",
    "nonce_regression",
    # The state file failed the write (full, unwritable, damaged): 503, so the sender retries.
    "state_unavailable",
    # An unexpected exception in the receiver (our bug, not the sender's): 503, so the sender retries.
    "internal_error",
)
#: Seconds between two log lines for the same (provider, account, reason).
REJECTION_LOG_INTERVAL = 10.0

_JSON = {"Content-Type": "application/json"}


class Replies:
    """The fixed answers of one receiver: ``ok``, ``duplicate``, ``unavailable`` and one per rejection reason."""

    def __init__(self, reasons: Iterable[str]) -> None:
        bodies = {word: json.dumps({"status": word}).encode() for word in ("ok", "duplicate")}
        for reason in reasons:
            bodies[reason] = json.dumps({"status": "rejected", "reason": reason}).encode()
        bodies["unavailable"] = b'{"status":"error","reason":"unavailable"}'
        if "internal_error" in bodies:
            bodies["internal_error"] = b'{"status":"error","reason":"internal_error"}'
        self._bodies = bodies

    def reply(self, status: int, word: str) -> web.Response:
        """The answer ``word`` with HTTP ``status``; it never echoes anything the sender sent."""
        return web.Response(status=status, body=self._bodies[word], headers=_JSON)


class RejectionLog:
    """Logs rejections at most once per ``interval`` per (provider, account, reason), counting the rest."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = REJECTION_LOG_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        message: str = "webhook rejected",
    ) -> None:
        self._log = logger
        self._message = message
        self._interval = interval
        self._clock = clock
        self._next: dict[tuple[str, ...], float] = {}
        self._suppressed: dict[tuple[str, ...], int] = {}

    def rejected(self, key: tuple[str, str, str], describe: Callable[[], dict[str, Any]]) -> None:
        """Log (or count as suppressed) one rejection of (provider, account, reason) ``key``.

        ``describe()`` builds the log fields (never a secret) only when the line is written, so a
        suppressed rejection of a flood costs a dict lookup.
        """
        now = self._clock()
        if now < self._next.get(key, float("-inf")):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._next[key] = now + self._interval
        fields = describe()
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            fields = {**fields, "suppressed": suppressed}
        self._log.warning(self._message, extra=fields)


def rejection_fields(
    provider: str, label: tuple[str, str], reason: str, status: int, remote: str | None, detail: str = ""
) -> dict[str, Any]:
    """The log fields of one rejection: provider, the receiver's own label (``("account", name)`` or
    ``("payload_type", type)``), reason, status, the client's address, and ``detail`` when there is one."""
    fields: dict[str, Any] = {
        "provider": provider,
        label[0]: label[1],
        "reason": reason,
        "status": status,
        "remote": remote,
    }
    if detail:
        fields["detail"] = detail
    return fields
