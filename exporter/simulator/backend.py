"""A payment backend for the relay to forward to: it checks each delivery's own signature, as a real one does,
and fails or goes away on cue.

It listens on a port of its own, so that going away is what it is for a real backend: the port
refuses connections until it comes back.

``POST /whitebit`` takes a WhiteBIT delivery: ``X-TXC-PAYLOAD`` must be the base64 of the body and
``X-TXC-SIGNATURE`` its HMAC-SHA512 under the secret of the key in ``X-TXC-APIKEY``. ``POST
/zerohash`` takes a Zero Hash delivery: ``x-zh-hook-signature`` must be the HMAC-SHA256 of the body
and ``x-zh-hook-timestamp``. A delivery that does not verify is answered 401. One that verifies is
recorded by its ``X-WhiteBIT-Exporter-Delivery-Id`` (a second copy is counted a duplicate and
answered 200 again, as an idempotent backend does) and answered 200. A WhiteBIT delivery whose
``params.nonce`` (when it has one above 0) is below the highest this backend took for its key is a
nonce regression: counted, and refused 409 when ``strict_nonces`` is on, as a backend that guards
against replays does.

Trouble on cue (:class:`BackendTrouble`, through :meth:`PaymentBackend.set_trouble` or the control
API): 500 to the next N deliveries or to a share at random (nothing recorded: the backend did not
take them), an answer held back for ``hang_seconds`` after the delivery was recorded (the relay's
timeout passes first, so the answer is lost and the delivery comes again), every answer late by
``delay``, and ``down`` (the port closed). Every copy that arrived is kept in :attr:`PaymentBackend.copies`,
with what it was answered and when, so a test can say which duplicates had an answer lost.

The simulator's control API: ``GET /_simulator/backend`` reports the counts and the trouble;
``POST /_simulator/backend`` with a JSON object of :class:`BackendTrouble` fields changes them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hmac
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from exporter.whitebit.signing import HEADER_APIKEY, HEADER_PAYLOAD, HEADER_SIGNATURE, sign_payload
from exporter.zerohash.signing import hmac_signature

DELIVERY_ID_HEADER = "X-WhiteBIT-Exporter-Delivery-Id"
#: Seconds a closing backend gives the answers it holds back before it cuts them.
SHUTDOWN_GRACE = 0.2


@dataclass(frozen=True)
class BackendTrouble:
    """How the backend misbehaves (all off by default)."""

    #: Answer 500 to this many deliveries, then behave.
    fail_next: int = 0
    #: Answer 500 to this share of deliveries, at random.
    fail_rate: float = 0.0
    #: Record this share of deliveries, then hold the answer back ``hang_seconds``.
    hang_rate: float = 0.0
    hang_seconds: float = 30.0
    #: Seconds every answer waits.
    delay: float = 0.0
    #: The port is closed.
    down: bool = False
    #: Refuse (409) a WhiteBIT delivery whose nonce is below the highest taken for its key.
    strict_nonces: bool = False

    def __post_init__(self) -> None:
        rates_ok = 0.0 <= self.fail_rate <= 1.0 and 0.0 <= self.hang_rate <= 1.0
        if not (rates_ok and self.fail_next >= 0 and self.hang_seconds >= 0 and self.delay >= 0):
            raise ValueError("rates are 0 to 1; fail_next, hang_seconds and delay are not negative")


@dataclass
class Copy:
    """One copy of a delivery as it arrived: which, from whom, what it was answered, when (monotonic)."""

    provider: str
    #: The WhiteBIT key it was signed with, or "" (Zero Hash).
    account: str
    delivery_id: str
    arrived: float
    #: taken, duplicate, failed (500), hung (taken, answer held back), rejected (401), nonce_regression (409).
    outcome: str = ""
    answered: float | None = None
    body: bytes = field(default=b"", repr=False)


class PaymentBackend:
    """Verifies and records relayed deliveries, and misbehaves on cue (see the module docstring)."""

    def __init__(
        self,
        whitebit_secrets: Mapping[str, str],
        zerohash_secret: str | None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rng: random.Random | None = None,
    ) -> None:
        self._whitebit_secrets = dict(whitebit_secrets)
        self._zerohash_secret = zerohash_secret
        self._host = host
        self._port = port
        self._rng = rng or random.Random()
        self.trouble = BackendTrouble()
        #: Delivery ids taken, per provider, in the order first taken.
        self.received: dict[str, list[str]] = {"whitebit": [], "zerohash": []}
        self._taken: set[str] = set()
        self.copies: list[Copy] = []
        self.duplicates = 0
        self.rejected = 0
        self.failed = 0
        self.hung = 0
        self.nonce_regressions = 0
        self._highest_nonce: dict[str, int] = {}
        self._runner: web.AppRunner | None = None

    # --- lifecycle ---

    async def start(self) -> None:
        """Listen (on the same port again after :meth:`stop`)."""
        if self._runner is not None:
            return
        app = web.Application()
        app.router.add_post("/whitebit", self._whitebit)
        app.router.add_post("/zerohash", self._zerohash)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port, reuse_address=True)
        await site.start()
        self._port = runner.addresses[0][1]
        self._runner = runner

    async def stop(self) -> None:
        """Close the port and every connection; answers held back are cut."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def url(self) -> str:
        """The base URL: deliveries go to ``{url}/whitebit`` and ``{url}/zerohash``."""
        if self._port == 0:
            raise RuntimeError("the backend has not listened yet")
        return f"http://{self._host}:{self._port}"

    async def set_trouble(self, trouble: BackendTrouble) -> None:
        """Misbehave as ``trouble`` says from now on (closing or opening the port as ``down`` says)."""
        self.trouble = trouble
        if trouble.down:
            await self.stop()
        else:
            await self.start()

    def fail_next(self, count: int) -> None:
        """Answer 500 to ``count`` more deliveries (on top of those already due to fail)."""
        self.trouble = dataclasses.replace(self.trouble, fail_next=self.trouble.fail_next + count)

    # --- deliveries ---

    async def _whitebit(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        key = request.headers.get(HEADER_APIKEY, "")
        secret = self._whitebit_secrets.get(key)
        payload = request.headers.get(HEADER_PAYLOAD, "")
        signature = request.headers.get(HEADER_SIGNATURE, "")
        valid = (
            secret is not None
            and payload == base64.b64encode(body).decode("ascii")
            and hmac.compare_digest(sign_payload(payload, secret), signature.lower())
        )
        return await self._answer(Copy("whitebit", key, self._delivery_id(request), time.monotonic(), body=body), valid)

    async def _zerohash(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        timestamp = request.headers.get("x-zh-hook-timestamp")
        signature = request.headers.get("x-zh-hook-signature", "")
        valid = self._zerohash_secret is not None and hmac.compare_digest(
            hmac_signature(self._zerohash_secret, body, timestamp), signature.lower()
        )
        return await self._answer(Copy("zerohash", "", self._delivery_id(request), time.monotonic(), body=body), valid)

    @staticmethod
    def _delivery_id(request: web.Request) -> str:
        return request.headers.get(DELIVERY_ID_HEADER, "")

    async def _answer(self, copy: Copy, valid: bool) -> web.StreamResponse:
        self.copies.append(copy)
        trouble = self.trouble
        if trouble.delay:
            await asyncio.sleep(trouble.delay)
        status, copy.outcome = self._judge(copy, valid, trouble)
        if copy.outcome == "hung":
            await asyncio.sleep(trouble.hang_seconds)
        copy.answered = time.monotonic()
        return web.json_response({"status": copy.outcome}, status=status)

    def _judge(self, copy: Copy, valid: bool, trouble: BackendTrouble) -> tuple[int, str]:
        if not valid:
            self.rejected += 1
            return 401, "rejected"
        if trouble.fail_next:
            self.trouble = dataclasses.replace(trouble, fail_next=trouble.fail_next - 1)
            self.failed += 1
            return 500, "failed"
        if trouble.fail_rate and self._rng.random() < trouble.fail_rate:
            self.failed += 1
            return 500, "failed"
        if copy.delivery_id in self._taken:
            self.duplicates += 1
            return 200, "duplicate"
        if copy.provider == "whitebit" and self._regresses(copy) and trouble.strict_nonces:
            return 409, "nonce_regression"
        self._taken.add(copy.delivery_id)
        self.received[copy.provider].append(copy.delivery_id)
        if trouble.hang_rate and self._rng.random() < trouble.hang_rate:
            self.hung += 1
            return 200, "hung"
        return 200, "taken"

    def _regresses(self, copy: Copy) -> bool:
        """Whether the copy's nonce is below the highest taken for its key (counted); raises the highest."""
        try:
            params = json.loads(copy.body).get("params")
            nonce = params.get("nonce") if isinstance(params, dict) else None
        except (ValueError, AttributeError):
            return False
        if not isinstance(nonce, int) or isinstance(nonce, bool) or nonce <= 0:
            return False
        highest = self._highest_nonce.get(copy.account, 0)
        if nonce < highest:
            self.nonce_regressions += 1
            return True
        self._highest_nonce[copy.account] = nonce
        return False

    # --- the control API ---

    def register_control(self, app: web.Application) -> None:
        """``GET`` and ``POST /_simulator/backend`` on the simulator's own server."""
        app.router.add_get("/_simulator/backend", self._control_state)
        app.router.add_post("/_simulator/backend", self._control_trouble)

    def state(self) -> dict[str, Any]:
        """The counts, the trouble and where it listens."""
        return {
            "url": self.url,
            "received": {provider: len(ids) for provider, ids in self.received.items()},
            "copies": len(self.copies),
            "duplicates": self.duplicates,
            "rejected": self.rejected,
            "failed": self.failed,
            "hung": self.hung,
            "nonce_regressions": self.nonce_regressions,
            "trouble": dataclasses.asdict(self.trouble),
        }

    async def _control_state(self, request: web.Request) -> web.Response:
        """The payment backend: where it listens, what it took, duplicates, rejections, failures and its trouble."""
        return web.json_response(self.state())

    async def _control_trouble(self, request: web.Request) -> web.Response:
        """Make the payment backend misbehave: a JSON object of ``fail_next``, ``fail_rate``, ``hang_rate``,
        ``hang_seconds``, ``delay``, ``down`` and ``strict_nonces`` (the fields left out stay as they are)."""
        try:
            changes = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="body must be JSON") from None
        names = {f.name for f in dataclasses.fields(BackendTrouble)}
        if not isinstance(changes, dict) or not set(changes) <= names:
            raise web.HTTPBadRequest(text=f"expected a JSON object of {sorted(names)}")
        for name, value in changes.items():
            default = getattr(self.trouble, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if isinstance(default, bool) != isinstance(value, bool) or (not isinstance(default, bool) and not number):
                raise web.HTTPBadRequest(text=f"{name} must be a {type(default).__name__}")
            if isinstance(default, int) and not isinstance(default, bool) and not isinstance(value, int):
                raise web.HTTPBadRequest(text=f"{name} must be an integer")
        try:
            trouble = dataclasses.replace(self.trouble, **changes)
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        await self.set_trouble(trouble)
        return web.json_response(self.state())
