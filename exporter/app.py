"""The Exporter: owns the registry, state store, health, supervisor and both HTTP listeners.

Lifecycle: ``await exporter.start()`` opens the state file, binds the metrics and webhook
listeners and starts every data source under the supervisor; ``await exporter.stop()`` undoes
all of it within :data:`STOP_TIMEOUT` seconds. :func:`run_until_signal` wraps both around
SIGTERM/SIGINT for the command line and the demo.

Adding a data source or a webhook receiver touches only :meth:`Exporter._build_sources` or
:meth:`Exporter._build_receivers`; the listener and supervision code stays as it is.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.config.schema import Config, ListenAddress
from exporter.core.health import HealthRegistry, UpCollector
from exporter.core.logs import redact
from exporter.core.metrics import BuildInfoCollector
from exporter.core.state import StateError, StateStore
from exporter.core.supervisor import Supervisor, SupervisorCollector
from exporter.http.metrics_listener import create_metrics_app
from exporter.http.webhook_listener import WebhookReceiver, create_webhook_app
from exporter.webhooks.commit import GroupCommitter
from exporter.whitebit.balances import AccountBalances, BalancesCollector
from exporter.whitebit.pollers import CollateralSummaries, build_pollers
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.reconcile import MissedWebhooks, build_history_poller
from exporter.whitebit.rest import RestClient, RestMetrics, RestTransport
from exporter.whitebit.signing import NonceSource
from exporter.whitebit.transfers import TransferBook, TransferCollector
from exporter.whitebit.webhook import WhitebitReceiver
from exporter.whitebit.websocket.source import WebSocketCollector, WebSocketSource
from exporter.zerohash.balances import ZerohashBalanceCollector, ZerohashBalances
from exporter.zerohash.webhook import ZerohashReceiver

log = logging.getLogger(__name__)

#: ``Exporter.stop()`` finishes within this many seconds, whatever its parts do.
STOP_TIMEOUT = 5.0
# How the stop budget is split: in-flight webhook deliveries, supervised tasks, scrapes.
_WEBHOOKS_STOP_TIMEOUT = 1.0
_TASKS_STOP_TIMEOUT = 2.0
_METRICS_STOP_TIMEOUT = 0.5

#: Exit status when a second signal cuts a slow shutdown short.
FORCED_EXIT_STATUS = 1


class StartupError(Exception):
    """The exporter cannot start: a listener cannot bind or the state file cannot be opened."""


class Source(Protocol):
    """A long-lived data source (a WebSocket, a REST poller) run under the supervisor."""

    @property
    def name(self) -> str:
        """The supervisor task name, e.g. ``websocket:main``; unique per exporter."""
        ...

    async def run(self) -> None:
        """Run until cancelled; raising gets the source restarted with backoff."""
        ...


class Companion(Protocol):
    """Something started before the exporter and stopped after it (the demo's simulator)."""

    async def start(self) -> None:
        """Start serving."""
        ...

    async def stop(self) -> None:
        """Stop serving and release everything."""
        ...


class _DebugAccessLogger(AbstractAccessLogger):
    """One structured line per request, at debug level: scrapes every 15 s would drown info."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        # request.path carries no query string, so nothing a client sent as a parameter is logged.
        self.logger.debug(
            "request",
            extra={
                "method": request.method,
                "path": request.path,
                "status": response.status,
                "duration_seconds": round(time, 6),
                "remote": request.remote,
            },
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.DEBUG)


def _url(address: tuple[object, ...]) -> str:
    host, port = str(address[0]), int(str(address[1]))
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Exporter:
    """The whole exporter process minus the command line; build one per config."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        supervisor: Supervisor | None = None,
        version: str = __version__,
    ) -> None:
        self.config = config
        self.clock = clock
        self.version = version
        self.health = HealthRegistry(clock=clock)
        self.supervisor = supervisor if supervisor is not None else Supervisor()
        self.registry = CollectorRegistry()
        self.registry.register(BuildInfoCollector(version))
        self.registry.register(UpCollector(self.health, (a.name for a in config.whitebit)))
        self.registry.register(SupervisorCollector(self.supervisor))
        # The standard process_*/python_* families, registered deliberately on our registry
        # (never the global one) so operators get memory, CPU and fd usage as usual.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._state: StateStore | None = None
        self._runners: dict[str, web.AppRunner] = {}
        self._urls: dict[str, str] = {}
        self._started = False
        self._stopped = False

    # -- extension points -------------------------------------------------------------------

    def _build_sources(self) -> list[Source]:
        """Every data source the config asks for, each registering its health and collector.

        Called once from :meth:`start`, after the state store is open. A source built here
        (a WebSocket or REST poller per account with ``api_key``) registers itself with
        ``self.health`` and its collector on ``self.registry``; the exporter then runs its
        ``run()`` under the supervisor. Accounts run on webhooks alone need no source.
        """
        sources: list[Source] = []
        api_accounts = [a for a in self.config.whitebit if a.api_key is not None and a.api_secret is not None]
        if not api_accounts:
            return sources
        balances = {account.name: AccountBalances(account.name) for account in api_accounts}
        self.registry.register(BalancesCollector(balances.values()))

        # REST: one limiter (WhiteBIT limits per IP), one HTTP session and one metrics collector for
        # every account; the transport runs as a source only to close the session on stop.
        rest_config = self.config.rest
        limiter = RateLimiter(dict(rest_config.rate_limits))
        rest_metrics = RestMetrics(limiter, buckets=rest_config.request_duration_buckets)
        self.registry.register(rest_metrics)
        transport = RestTransport(limiter, rest_metrics, timeout=rest_config.timeout)
        sources.append(transport)
        summaries = CollateralSummaries()
        self.registry.register(summaries)
        # The private WebSocket of every account: one collector renders all of them.
        websocket_collector = WebSocketCollector()
        self.registry.register(websocket_collector)
        # History reconciliation counts missed webhooks only for accounts that have a webhook.
        missed = MissedWebhooks()
        self.registry.register(missed)
        nonces: dict[str, NonceSource] = {}  # WhiteBIT tracks nonces per API key
        for account in api_accounts:
            if account.api_key is None or account.api_secret is None:
                continue  # filtered above; this narrows the types
            client = RestClient(
                account=account.name,
                base_url=account.rest_url,
                api_key=account.api_key,
                api_secret=account.api_secret,
                transport=transport,
                nonce_window=account.nonce_window,
                nonces=nonces.setdefault(account.api_key, NonceSource()),
                max_retries=rest_config.max_retries,
            )
            websocket = WebSocketSource(
                account.name,
                account.ws_url,
                account.markets,
                client.websocket_token,
                balances[account.name],
                self.health,
                clock=self.clock,
            )
            websocket_collector.add(websocket)
            sources.append(websocket)
            sources.extend(
                build_pollers(
                    client,
                    balances[account.name],
                    health=self.health,
                    summaries=summaries,
                    main_balance_interval=account.poll.main_balance,
                    collateral_interval=account.poll.collateral,
                    trade_balance_interval=account.poll.trade_balance,
                )
            )
            sources.append(
                build_history_poller(
                    client,
                    self.transfers,
                    self.state,
                    health=self.health,
                    interval=account.poll.history,
                    grace=account.reconcile_grace,
                    missed=missed if account.webhook is not None else None,
                    clock=self.clock,
                )
            )
        return sources

    def _build_receivers(self) -> list[WebhookReceiver]:
        """Every webhook receiver the config asks for, routed by the webhook listener.

        Called once from :meth:`start`, after the state store is open; each receiver answers
        ``POST`` on its own path (see :mod:`exporter.http.webhook_listener`). Also builds
        ``self.transfers``, the :class:`~exporter.whitebit.transfers.TransferBook` every account's deposits
        and withdrawals go through (webhooks now; history reconciliation feeds it too), before
        :meth:`_build_sources` runs.
        """
        receivers: list[WebhookReceiver] = []
        # One committer for both receivers: deliveries arriving together share one commit.
        committer = GroupCommitter(self.state)
        self.transfers = TransferBook(self.state, (a.name for a in self.config.whitebit), clock=self.clock)
        self.registry.register(TransferCollector(self.transfers))
        if any(account.webhook is not None for account in self.config.whitebit):
            whitebit = WhitebitReceiver(self.config, self.state, self.transfers, clock=self.clock, committer=committer)
            self.registry.register(whitebit.collector)
            receivers.append(whitebit)
        if self.config.zerohash is not None:
            settings = self.config.zerohash.webhook
            balances = ZerohashBalances(settings.participants, self.state.zerohash_balances())
            self.registry.register(ZerohashBalanceCollector(balances))
            zerohash = ZerohashReceiver(settings, self.state, balances, clock=self.clock, committer=committer)
            self.registry.register(zerohash.collector)
            receivers.append(zerohash)
        return receivers

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def state(self) -> StateStore:
        """The open state store (only between ``start()`` and ``stop()``)."""
        if self._state is None:
            raise RuntimeError("the exporter is not started")
        return self._state

    @property
    def metrics_url(self) -> str:
        """``http://host:port`` the metrics listener is bound to (the real port when 0 was asked)."""
        return self._url_of("metrics")

    @property
    def webhooks_url(self) -> str:
        """``http://host:port`` the webhook listener is bound to."""
        return self._url_of("webhooks")

    def _url_of(self, listener: str) -> str:
        try:
            return self._urls[listener]
        except KeyError:
            raise RuntimeError(f"the {listener} listener is not started") from None

    async def start(self) -> None:
        """Open the state file, bind both listeners, start every source.

        Raises :class:`StartupError` with an operator-readable message when a listener cannot
        bind or the state file cannot be opened; whatever had started is stopped again.
        """
        if self._started:
            raise RuntimeError("an Exporter can be started only once")
        self._started = True
        self._log_configuration()
        try:
            try:
                self._state = StateStore.open(self.config.state.path, clock=self.clock)
            except StateError as exc:
                raise StartupError(str(exc)) from exc
            log.info("state opened", extra={"path": str(self.config.state.path)})
            await self._listen(
                "metrics",
                create_metrics_app(self.registry, self.health, self.version),
                self.config.web.listen_address,
            )
            await self._listen(
                "webhooks",
                create_webhook_app(self.config, self._build_receivers()),
                self.config.webhooks.listen_address,
            )
            for source in self._build_sources():
                self.supervisor.start(source.name, source.run)
        except BaseException:
            await self.stop()
            raise
        log.info("listening", extra={"metrics": self.metrics_url, "webhooks": self.webhooks_url})

    async def _listen(self, listener: str, app: web.Application, address: ListenAddress) -> None:
        runner = web.AppRunner(
            app,
            access_log_class=_DebugAccessLogger,
            access_log=logging.getLogger(f"exporter.access.{listener}"),
            # Bounds how long cleanup() waits for in-flight requests.
            shutdown_timeout=_WEBHOOKS_STOP_TIMEOUT if listener == "webhooks" else _METRICS_STOP_TIMEOUT,
        )
        await runner.setup()
        self._runners[listener] = runner
        # An empty host means every interface, as in Prometheus' ":9945".
        site = web.TCPSite(runner, address.host or None, address.port)
        try:
            await site.start()
        except OSError as exc:
            # asyncio's own strerror repeats the address; the errno text alone reads better.
            reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else exc.strerror or str(exc)
            raise StartupError(f"cannot listen on {address} for the {listener} listener: {reason}") from exc
        self._urls[listener] = _url(runner.addresses[0])

    async def stop(self) -> None:
        """Stop accepting webhooks, stop every source, stop serving metrics, close the state.

        Webhooks go first so every delivery answered 200 has been committed before the state
        closes; metrics go last so a scrape during shutdown still gets an answer. Bounded by
        :data:`STOP_TIMEOUT` in total; calling it again does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        log.info("stopping")
        await self._stop_runner("webhooks", _WEBHOOKS_STOP_TIMEOUT)
        await self.supervisor.stop(timeout=_TASKS_STOP_TIMEOUT)
        await self._stop_runner("metrics", _METRICS_STOP_TIMEOUT)
        if self._state is not None:
            self._state.close()
            self._state = None
        log.info("stopped")

    async def _stop_runner(self, listener: str, budget: float) -> None:
        self._urls.pop(listener, None)
        runner = self._runners.pop(listener, None)
        if runner is None:
            return
        try:
            # shutdown_timeout already bounds in-flight requests; this bounds the rest.
            await asyncio.wait_for(runner.cleanup(), timeout=budget + 0.25)
        except TimeoutError:
            log.error("listener did not stop in time", extra={"listener": listener})

    def _log_configuration(self) -> None:
        """One line per account and source of data, never a secret (keys show 4 characters)."""
        log.info(
            "starting whitebit-exporter",
            extra={
                "version": self.version,
                "python": platform.python_version(),
                "accounts": len(self.config.whitebit),
                "zerohash": self.config.zerohash is not None,
            },
        )
        for account in self.config.whitebit:
            if account.has_api:
                mode = "api+webhooks" if account.webhook is not None else "api"
            else:
                mode = "webhooks-only"
            fields: dict[str, object] = {"account": account.name, "mode": mode}
            if account.has_api:
                fields.update(
                    rest_url=account.rest_url,
                    ws_url=account.ws_url,
                    api_key=redact(account.api_key),
                    markets=",".join(account.markets) or "none",
                )
            if account.webhook is not None:
                fields.update(
                    webhook_key=redact(account.webhook.public_key),
                    webhook_secrets=len(account.webhook.secrets),
                    nonce_policy=account.webhook.nonce_policy,
                )
            log.info("whitebit account", extra=fields)
        if self.config.zerohash is not None:
            zh = self.config.zerohash.webhook
            log.info(
                "zerohash webhooks",
                extra={
                    "hmac_secrets": len(zh.hmac_secrets),
                    "rsa_public_keys_file": zh.rsa_public_keys_file or "none",
                    "participants": len(zh.participants),
                },
            )


async def run_until_signal(
    exporter: Exporter,
    *,
    companions: Sequence[Companion] = (),
    on_started: Callable[[], Awaitable[None]] | None = None,
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
    force_exit: Callable[[int], object] = os._exit,
) -> int:
    """Start the companions, then the exporter; on the first signal stop them in reverse; 0.

    ``on_started`` runs once everything listens (the demo uses it to point the simulator's webhooks
    at the exporter's bound port).

    A second signal during shutdown calls ``force_exit`` (``os._exit``) at once: an operator
    pressing Ctrl-C twice means it. A startup failure propagates after stopping what started.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stop_requested.is_set():
            log.info("received signal; shutting down", extra={"signal": sig.name})
            stop_requested.set()
        else:
            log.error("second signal; exiting immediately", extra={"signal": sig.name})
            force_exit(FORCED_EXIT_STATUS)

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    started: list[Companion | Exporter] = []
    try:
        for companion in companions:
            await companion.start()
            started.append(companion)
        started.append(exporter)  # Exporter.start() cleans up after itself on failure
        await exporter.start()
        if on_started is not None:
            await on_started()
        await stop_requested.wait()
    finally:
        for part in reversed(started):
            try:
                await part.stop()
            except Exception:
                log.exception("error while stopping", extra={"component": type(part).__name__})
        for sig in signals:
            loop.remove_signal_handler(sig)
    return 0
