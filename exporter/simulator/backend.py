"""A payment backend for the relay to forward to: it checks each delivery's own signature, as a real one does.

``POST /_backend/whitebit`` takes a WhiteBIT delivery: ``X-TXC-PAYLOAD`` must be the base64 of the
body and ``X-TXC-SIGNATURE`` its HMAC-SHA512 under the secret of the key in ``X-TXC-APIKEY``.
``POST /_backend/zerohash`` takes a Zero Hash delivery: ``x-zh-hook-signature`` must be the
HMAC-SHA256 of the body and ``x-zh-hook-timestamp``. A delivery that verifies is answered 200 and
recorded (its ``X-WhiteBIT-Exporter-Delivery-Id``, once per id; a second copy is counted as a
duplicate); one that does not is answered 401. ``GET /_simulator/backend`` reports the counts. The
demo relays to it, so the relay's series move.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from exporter.whitebit.signing import HEADER_APIKEY, HEADER_PAYLOAD, HEADER_SIGNATURE, sign_payload
from exporter.zerohash.signing import hmac_signature

DELIVERY_ID_HEADER = "X-WhiteBIT-Exporter-Delivery-Id"


class PaymentBackend:
    """Verifies and records relayed deliveries (see the module docstring)."""

    def __init__(self, whitebit_secrets: Mapping[str, str], zerohash_secret: str | None) -> None:
        self._whitebit_secrets = dict(whitebit_secrets)
        self._zerohash_secret = zerohash_secret
        self.received: dict[str, list[str]] = {"whitebit": [], "zerohash": []}
        self.duplicates = 0
        self.rejected = 0

    def register(self, app: web.Application) -> None:
        app.router.add_post("/_backend/whitebit", self._whitebit)
        app.router.add_post("/_backend/zerohash", self._zerohash)
        app.router.add_get("/_simulator/backend", self._state)

    async def _whitebit(self, request: web.Request) -> web.Response:
        body = await request.read()
        secret = self._whitebit_secrets.get(request.headers.get(HEADER_APIKEY, ""))
        payload = request.headers.get(HEADER_PAYLOAD, "")
        signature = request.headers.get(HEADER_SIGNATURE, "")
        valid = (
            secret is not None
            and payload == base64.b64encode(body).decode("ascii")
            and hmac.compare_digest(sign_payload(payload, secret), signature.lower())
        )
        return self._record("whitebit", request, valid)

    async def _zerohash(self, request: web.Request) -> web.Response:
        body = await request.read()
        timestamp = request.headers.get("x-zh-hook-timestamp")
        signature = request.headers.get("x-zh-hook-signature", "")
        valid = self._zerohash_secret is not None and hmac.compare_digest(
            hmac_signature(self._zerohash_secret, body, timestamp), signature.lower()
        )
        return self._record("zerohash", request, valid)

    def _record(self, provider: str, request: web.Request, valid: bool) -> web.Response:
        if not valid:
            self.rejected += 1
            return web.json_response({"status": "rejected"}, status=401)
        delivery_id = request.headers.get(DELIVERY_ID_HEADER, "")
        if delivery_id in self.received[provider]:
            self.duplicates += 1
        else:
            self.received[provider].append(delivery_id)
        return web.json_response({"status": "ok"})

    async def _state(self, request: web.Request) -> web.Response:
        state: dict[str, Any] = {
            "received": {provider: len(ids) for provider, ids in self.received.items()},
            "duplicates": self.duplicates,
            "rejected": self.rejected,
        }
        return web.json_response(state)
