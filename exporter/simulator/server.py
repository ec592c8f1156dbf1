"""The simulator as one server: REST, WebSocket, webhook senders, scenario and a control API.

``Simulator`` assembles the pieces around one :class:`~exporter.simulator.model.Exchange`:
REST under ``/api/v4/…``, the private WebSocket at ``/ws``, WhiteBIT and Zero Hash webhook
senders, and the scenario engine that makes activity. Tests and the demo drive it through its
Python attributes; out-of-process users (``whitebit-exporter simulate``, the end-to-end tests)
use the control API under ``/_simulator/`` to read the exchange's state and to cause trouble on
cue (drop WebSocket connections, drop webhooks, force 429s, make the payment backend fail or go
away: :mod:`exporter.simulator.backend`, which listens on a port of its own). ``GET /_simulator/``
lists the control endpoints from the routes registered, each described by its handler's docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from exporter.simulator.backend import PaymentBackend
from exporter.simulator.listing import LISTED_ASSETS, AssetListing, ZeroBalances
from exporter.simulator.model import Exchange
from exporter.simulator.rest import ListedMarket, RestApi
from exporter.simulator.scenario import ScenarioEngine
from exporter.simulator.tokens import TokenIssuer
from exporter.simulator.webhooks import WebhookSender
from exporter.simulator.ws import DEFAULT_INTERLEAVE, WebSocketHub
from exporter.simulator.zerohash import ZerohashLedger, ZerohashSender

log = logging.getLogger(__name__)

DEFAULT_MARKETS = ("BTC_USDT", "ETH_USDT")
#: Where the control API lives; ``GET`` on it lists every control endpoint.
CONTROL_PREFIX = "/_simulator/"
#: Markets the public ticker lists besides the traded ones, as WhiteBIT's does: a market quoted the other
#: way round (UAH is valued in USDT through it), one listed but never traded and one frozen (trading
#: disabled ahead of a delisting).
DEFAULT_TICKER_MARKETS = (
    ListedMarket("USDT_UAH", "41.52"),
    ListedMarket("NEWCOIN_USDT", "0"),
    ListedMarket("OLDCOIN_USDT", "0.0042", frozen=True),
)


@dataclass(frozen=True)
class SimulatedAccount:
    """Credentials and starting balances of one simulated account."""

    name: str
    api_key: str
    api_secret: str = field(repr=False)
    webhook_key: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    main: Mapping[str, str] = field(default_factory=lambda: {"USDT": "25000", "BTC": "1.5", "ETH": "20"})
    spot: Mapping[str, str] = field(default_factory=lambda: {"USDT": "250000", "BTC": "4", "ETH": "60"})
    collateral: Mapping[str, str] = field(default_factory=lambda: {"USDT": "5000", "BTC": "0.25"})
    #: Open collateral positions (market -> base amount, negative for a short), opened at the start price.
    positions: Mapping[str, str] = field(default_factory=dict)
    #: False: no collateral (margin) trading; the collateral wallet is empty and the WebSocket refuses
    #: ``balanceMargin`` with an error (what WhiteBIT does then is not documented).
    collateral_trading: bool = True


@dataclass(frozen=True)
class SimulatorSettings:
    """How the simulator listens, whom it simulates and how busy it is."""

    accounts: tuple[SimulatedAccount, ...]
    host: str = "127.0.0.1"
    port: int = 0
    markets: tuple[str, ...] = DEFAULT_MARKETS
    webhook_url: str | None = None
    webhook_retry_delays: tuple[float, ...] = (600.0,) * 5
    zerohash_url: str | None = None
    zerohash_secret: str | None = field(default=None, repr=False)
    scenario_rate: float = 0.0  # actions per second; 0 leaves the exchange still
    scenario_autostart: bool = True  # False: the caller starts it with Simulator.start_scenario()
    scenario_forge_every: int | None = None
    webhook_drop_probability: float = 0.0
    ws_idle_timeout: float = 60.0
    history_field_style: str = "camel"
    # Seconds the simulated exchange's clock runs ahead of the host's (negative: behind). A real
    # exchange's clock is never exactly ours, and WhiteBIT checks nonceWindow nonces against its own.
    clock_offset: float = 0.0
    # Balance answers list every listed asset (most at 0) or leave zero balances out: both are
    # documented, so by default each answer picks one ("listed", "omitted" to fix one form).
    zero_balances: ZeroBalances = "both"
    listed_assets: int = LISTED_ASSETS
    # The order open orders are listed in (WebSocket pages and REST) is not documented; the matching
    # engine WhiteBIT's protocol comes from lists newest first (docs/protocol.md#open-order-listing).
    list_newest_first: bool = True
    # Replies and pushes on one WebSocket overtake each other by up to this many seconds: WhiteBIT does
    # not document that they arrive in the order they were computed.
    ws_interleave: float = DEFAULT_INTERLEAVE
    # What the public ticker lists besides the traded markets (docs/protocol.md#public-ticker).
    ticker_markets: tuple[ListedMarket, ...] = DEFAULT_TICKER_MARKETS
    seed: int | None = None


class Simulator:
    """A WhiteBIT simulator on one loopback HTTP port (``start``/``stop``, usable as a demo companion)."""

    def __init__(self, settings: SimulatorSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        if settings.clock_offset:
            clock = _offset_clock(clock, settings.clock_offset)
        self.clock = clock
        self.rng = random.Random(settings.seed)
        self.exchange = Exchange(
            settings.markets, clock=clock, rng=self.rng, history_field_style=settings.history_field_style
        )
        for account in settings.accounts:
            self.exchange.add_account(
                account.name,
                api_key=account.api_key,
                api_secret=account.api_secret,
                webhook_key=account.webhook_key,
                webhook_secret=account.webhook_secret,
                main=account.main,
                spot=account.spot,
                collateral=account.collateral if account.collateral_trading else {},
                positions=account.positions,
                collateral_trading=account.collateral_trading,
            )
        self.tokens = TokenIssuer(clock=clock)
        self.listing = AssetListing(
            self.exchange, listed_assets=settings.listed_assets, zero_balances=settings.zero_balances, rng=self.rng
        )
        self.rest = RestApi(
            self.exchange, self.tokens, clock=clock, listing=self.listing, ticker_markets=settings.ticker_markets
        )
        self.exchange.list_newest_first = settings.list_newest_first
        self.ws = WebSocketHub(
            self.exchange,
            self.tokens,
            clock=clock,
            idle_timeout=settings.ws_idle_timeout,
            interleave=settings.ws_interleave,
            rng=random.Random(self.rng.getrandbits(64)),
            listing=self.listing,
        )
        self.backend = PaymentBackend(
            {a.webhook_key: a.webhook_secret for a in settings.accounts if a.webhook_key and a.webhook_secret},
            settings.zerohash_secret,
            host=settings.host,
            rng=random.Random(self.rng.getrandbits(64)),
        )
        self.webhooks: WebhookSender | None = None
        self.zerohash_ledger: ZerohashLedger | None = None
        self.zerohash: ZerohashSender | None = None
        self._scenario: ScenarioEngine | None = None
        self._build_senders(settings.webhook_url, settings.zerohash_url)
        self._runner: web.AppRunner | None = None
        self._scenario_task: asyncio.Task[None] | None = None
        self._port: int | None = None

    def _build_senders(self, webhook_url: str | None, zerohash_url: str | None) -> None:
        if webhook_url and self.webhooks is None:
            self.webhooks = WebhookSender(
                self.exchange,
                url=webhook_url,
                clock=self.clock,
                rng=self.rng,
                retry_delays=self.settings.webhook_retry_delays,
            )
            self.webhooks.drop_probability = self.settings.webhook_drop_probability
        if zerohash_url and self.zerohash is None:
            self.zerohash_ledger = ZerohashLedger(clock=self.clock, rng=self.rng)
            self.zerohash = ZerohashSender(
                url=zerohash_url, hmac_secret=self.settings.zerohash_secret, clock=self.clock
            )

    async def connect_webhooks(self, webhook_url: str | None, zerohash_url: str | None) -> None:
        """Start delivering webhooks to these URLs (for a receiver that binds after the simulator).

        Must come before the scenario starts, because the scenario decides at its start which kinds of
        activity it can make.
        """
        if self._scenario is not None:
            raise RuntimeError("connect webhooks before the scenario starts")
        self._build_senders(webhook_url, zerohash_url)
        if self._runner is not None:
            for sender in (self.webhooks, self.zerohash):
                if sender is not None:
                    await sender.start()

    @property
    def scenario(self) -> ScenarioEngine:
        """The activity generator, built on first use with whichever senders exist then."""
        if self._scenario is None:
            self._scenario = ScenarioEngine(
                self.exchange,
                accounts=[a.name for a in self.settings.accounts],
                rate=self.settings.scenario_rate or 1.0,
                rng=self.rng,
                zerohash=(self.zerohash_ledger, self.zerohash) if self.zerohash_ledger and self.zerohash else None,
                webhook_sender=self.webhooks,
                forge_every=self.settings.scenario_forge_every,
                rest=self.rest,
                websocket=self.ws,
                backend=self.backend,
                clock=self.clock,
            )
        return self._scenario

    # --- lifecycle ---

    def build_app(self) -> web.Application:
        """The aiohttp application: REST, WebSocket and the control API (the payment backend's too)."""
        app = web.Application()
        self.rest.register(app)
        self.ws.register(app)
        app.add_routes(
            [
                web.get(CONTROL_PREFIX, self._control_index),
                web.get(f"{CONTROL_PREFIX}state", self._control_state),
                web.get(f"{CONTROL_PREFIX}stats", self._control_stats),
                web.post(f"{CONTROL_PREFIX}ws/drop", self._control_ws_drop),
                web.post(f"{CONTROL_PREFIX}webhooks/drop", self._control_webhooks_drop),
                web.post(f"{CONTROL_PREFIX}rest/force-429", self._control_force_429),
                web.post(f"{CONTROL_PREFIX}scenario/step", self._control_scenario_step),
            ]
        )
        self.backend.register_control(app)
        return app

    async def start(self) -> None:
        """Listen, start the webhook senders and, when a rate is set, the scenario."""
        self._runner = web.AppRunner(self.build_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
        await site.start()
        self._port = self._runner.addresses[0][1]
        await self.backend.start()
        for sender in (self.webhooks, self.zerohash):
            if sender is not None:
                await sender.start()
        if self.settings.scenario_rate > 0 and self.settings.scenario_autostart:
            self.start_scenario()
        log.info(
            "simulator listening",
            extra={
                "url": self.url,
                "ws": self.ws_url,
                "control": self.control_url,
                "backend": self.backend.url,
                "markets": ",".join(self.settings.markets),
            },
        )

    def start_scenario(self) -> None:
        """Start making activity (idempotent)."""
        if self._scenario_task is None or self._scenario_task.done():
            self._scenario_task = asyncio.create_task(self._run_scenario(), name="simulator-scenario")

    async def stop_scenario(self) -> None:
        """Stop making activity (deliveries already queued still go out); ``start_scenario`` resumes."""
        if self._scenario_task is not None:
            self._scenario_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scenario_task
            self._scenario_task = None

    async def _run_scenario(self) -> None:
        # The scenario is the demo's heartbeat: a crash is logged and the engine restarted, never left dead.
        while True:
            try:
                await self.scenario.run()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("simulator scenario crashed; restarting in 1 s")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Stop the scenario and senders and close every connection."""
        await self.stop_scenario()
        if self._scenario is not None:
            await self._scenario.aclose()
        for sender in (self.webhooks, self.zerohash):
            if sender is not None:
                await sender.stop()
        await self.backend.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """REST base, e.g. ``http://127.0.0.1:40123`` (endpoints under ``/api/v4/…``)."""
        return f"http://{self.settings.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.settings.host}:{self.port}/ws"

    @property
    def control_url(self) -> str:
        """The control API's index, e.g. ``http://127.0.0.1:40123/_simulator/`` (``GET`` lists the endpoints)."""
        return f"{self.url}{CONTROL_PREFIX}"

    # --- control API ---

    async def _json(self, request: web.Request) -> dict[str, Any]:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except ValueError:
            raise web.HTTPBadRequest(text="body must be JSON") from None
        if not isinstance(body, dict):
            raise web.HTTPBadRequest(text="body must be a JSON object")
        return body

    async def _control_index(self, request: web.Request) -> web.Response:
        """This list: every control endpoint with its method, path and what it does."""
        return web.json_response({"endpoints": control_endpoints(request.app)})

    async def _control_state(self, request: web.Request) -> web.Response:
        """Balances, open orders and history of every account, or of one with ``?account=NAME``."""
        name = request.query.get("account")
        if name is None:
            return web.json_response({n: self.exchange.snapshot(n) for n in self.exchange.accounts})
        if name not in self.exchange.accounts:
            raise web.HTTPNotFound(text=f"unknown account {name}")
        return web.json_response(self.exchange.snapshot(name))

    async def _control_stats(self, request: web.Request) -> web.Response:
        """Counters of the REST API, the WebSocket connections and both webhook senders."""
        return web.json_response(
            {
                "rest": self.rest.stats(),
                "websocket": {"connections": self.ws.connections()},
                "webhooks": self.webhooks.stats() if self.webhooks else None,
                "zerohash": self.zerohash.stats() if self.zerohash else None,
            }
        )

    async def _control_ws_drop(self, request: web.Request) -> web.Response:
        """Drop the WebSocket connections of ``{"account": NAME}``, or every one without a body."""
        body = await self._json(request)
        dropped = await self.ws.drop(body.get("account"))
        return web.json_response({"dropped": dropped})

    async def _control_webhooks_drop(self, request: web.Request) -> web.Response:
        """Lose the next WhiteBIT webhooks: ``{"count": N, "method_prefix": "deposit."}`` (both optional;
        409 without a webhook URL)."""
        body = await self._json(request)
        if self.webhooks is None:
            raise web.HTTPConflict(text="no webhook URL configured")
        count = body.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise web.HTTPBadRequest(text="count must be a positive integer")
        self.webhooks.drop_next(count, method_prefix=body.get("method_prefix"))
        return web.json_response({"dropping": count})

    async def _control_force_429(self, request: web.Request) -> web.Response:
        """Answer 429 to the next requests of an endpoint's family: ``{"endpoint": "/api/v4/…", "count": N}``."""
        body = await self._json(request)
        endpoint, count = body.get("endpoint"), body.get("count", 1)
        if not isinstance(endpoint, str) or not isinstance(count, int) or count < 1:
            raise web.HTTPBadRequest(text='expected {"endpoint": "/api/v4/…", "count": N}')
        try:
            self.rest.force_rate_limit(endpoint, count)
        except ValueError as error:
            raise web.HTTPBadRequest(text=str(error)) from None
        return web.json_response({"forced": count})

    async def _control_scenario_step(self, request: web.Request) -> web.Response:
        """Perform scenario actions now: ``{"steps": N}`` (1 to 10000, default 1); answers their names."""
        body = await self._json(request)
        steps = body.get("steps", 1)
        if not isinstance(steps, int) or not 1 <= steps <= 10_000:
            raise web.HTTPBadRequest(text="steps must be an integer from 1 to 10000")
        actions = [self.scenario.step() for _ in range(steps)]
        return web.json_response({"actions": actions})


def control_endpoints(app: web.Application) -> list[dict[str, str]]:
    """Every control route registered on ``app``: method, path and its handler's docstring, by path.

    Read from the router, so the list is what the simulator serves; aiohttp's automatic ``HEAD`` for
    each ``GET`` is left out. A docstring's literal markup (double backquotes) is dropped, its lines joined.
    """
    endpoints = []
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith(CONTROL_PREFIX) and route.method != "HEAD":
            description = " ".join((inspect.getdoc(route.handler) or "").replace("``", "").split())
            endpoints.append({"method": route.method, "path": path, "description": description})
    return sorted(endpoints, key=lambda endpoint: (endpoint["path"], endpoint["method"]))


def _offset_clock(clock: Callable[[], float], offset: float) -> Callable[[], float]:
    """``clock`` running ``offset`` seconds ahead: the exchange's own time."""

    def now() -> float:
        return clock() + offset

    return now
