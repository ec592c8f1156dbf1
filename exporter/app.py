"""The Exporter: owns the registry, state store, health, supervisor and both HTTP listeners.

Lifecycle: ``await exporter.start()`` opens the state file, binds the metrics and webhook
listeners and starts every data source under the supervisor; ``await exporter.stop()`` undoes
all of it within :data:`STOP_TIMEOUT` seconds. :func:`run_until_signal` wraps both around
SIGTERM/SIGINT for the command line and the demo.

What each provider contributes is built by the provider's own package and handed in here:
:func:`exporter.whitebit.sources.build_sources` (WebSocket, pollers, reconciliation) and the two
webhook receivers. What they share is built first, in :meth:`Exporter.start`, and passed to each
explicitly: the state file, the group committer of webhook deliveries and the transfer book.
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

from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.config.schema import Config, ServerTlsConfig, WebConfig, WebhooksConfig
from exporter.config.tls import TlsSetupError
from exporter.core.health import HealthRegistry, UpCollector
from exporter.core.housekeeping import Housekeeping
from exporter.core.logs import redact
from exporter.core.metrics import BuildInfoCollector, SeriesValues
from exporter.core.state import INBOX_PURGE_BATCH, StateError, StateStore
from exporter.core.state_watch import StateWatch
from exporter.core.supervisor import Supervisor, SupervisorCollector
from exporter.http.limits import ConnectionLimits, FileBudgetError, ListenerConnections, ensure_open_files, files_needed
from exporter.http.metrics_listener import create_metrics_app
from exporter.http.server import Listener, ListenError
from exporter.http.tls import ServerTls
from exporter.http.webhook_listener import WebhookReceiver, create_webhook_app
from exporter.rebuild import DERIVATION_RULES, rebuild_if_rules_changed, report_summary, settings_from_config
from exporter.relay.routing import RelayEnqueuer, RelayRouter
from exporter.relay.sender import RelayCollector, RelaySender
from exporter.webhooks.commit import GroupCommitter
from exporter.webhooks.inbox import Deriver, InboxConsumer, TapError
from exporter.whitebit.sources import WhitebitSources, build_sources
from exporter.whitebit.transfers import FINAL_TRANSFER_RETENTION, TransferBook, TransferCollector
from exporter.whitebit.webhook import WhitebitDeriver, WhitebitReceiver
from exporter.zerohash.balances import ZerohashBalanceCollector, ZerohashBalances
from exporter.zerohash.webhook import ZerohashDeriver, ZerohashReceiver

log = logging.getLogger(__name__)

#: ``Exporter.stop()`` finishes within this many seconds, whatever its parts do.
STOP_TIMEOUT = 5.0
# How the stop budget is split: in-flight webhook deliveries, supervised tasks, deriving the inbox, scrapes.
_WEBHOOKS_STOP_TIMEOUT = 1.0
_TASKS_STOP_TIMEOUT = 2.0
_METRICS_STOP_TIMEOUT = 0.5
_INBOX_STOP_BUDGET = 1.0

#: Exit status when a second signal cuts a slow shutdown short.
FORCED_EXIT_STATUS = 1


def _limits(listener: WebConfig | WebhooksConfig) -> ConnectionLimits:
    """A listener's connection limits from its config section."""
    return ConnectionLimits(listener.request_timeout, listener.idle_timeout, listener.max_connections)


def _server_tls(config: ServerTlsConfig | None, listener: str) -> ServerTls | None:
    """A listener's TLS, its files loaded again now (they may have changed since the config was checked)."""
    if config is None:
        return None
    try:
        return ServerTls(config, listener=listener)
    except TlsSetupError as exc:
        raise StartupError(f"cannot set up TLS for the {listener} listener: {exc.message}") from exc


#: The names of the two listeners, as a :class:`~exporter.http.server.ListenError` reports them.
METRICS_LISTENER = "metrics"
WEBHOOKS_LISTENER = "webhooks"


class StartupError(Exception):
    """The exporter cannot start: a listener cannot bind or the state file cannot be opened.

    ``listen_error`` is set when a listener could not bind: it says which listener, which address and why.
    """

    def __init__(self, message: str, *, listen_error: ListenError | None = None) -> None:
        super().__init__(message)
        self.listen_error = listen_error


class Companion(Protocol):
    """Something started before the exporter and stopped after it (the demo's simulator)."""

    async def start(self) -> None:
        """Start serving."""
        ...

    async def stop(self) -> None:
        """Stop serving and release everything."""
        ...


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
        self._metrics: Listener | None = None
        self._webhooks: Listener | None = None
        self._whitebit: WhitebitSources | None = None
        self._inbox: InboxConsumer | None = None
        self._started = False
        self._stopped = False

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
        if self._metrics is None:
            raise RuntimeError("the metrics listener is not started")
        return self._metrics.url

    @property
    def webhooks_url(self) -> str:
        """``http://host:port`` the webhook listener is bound to."""
        if self._webhooks is None:
            raise RuntimeError("the webhooks listener is not started")
        return self._webhooks.url

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
            await self._start()
        except StateError as exc:
            # Damage found while loading what the state holds: a one-line reason, not a traceback.
            await self.stop()
            raise StartupError(str(exc)) from exc
        except BaseException:
            await self.stop()
            raise
        log.info("listening", extra={"metrics": self.metrics_url, "webhooks": self.webhooks_url})

    async def _start(self) -> None:
        config = self.config
        try:
            state = self._state = StateStore.open(config.state.path, clock=self.clock, exclusive=True)
        except StateError as exc:
            raise StartupError(str(exc)) from exc
        log.info("state opened", extra={"path": str(config.state.path), "schema_version": state.schema_version})
        rebuilt = rebuild_if_rules_changed(state, settings_from_config(config), clock=self.clock)
        if rebuilt is not None:
            log.warning(
                "state derived again from the deliveries and history kept: this version derives it by newer rules",
                extra={"rules": DERIVATION_RULES, **report_summary(rebuilt)},
            )
        self.registry.register(StateWatch(state, self.health))
        # What the providers share, built before any of them: one committer for both receivers, so
        # deliveries arriving together share one commit, and one book for every account's transfers,
        # fed by the WhiteBIT receiver and by history reconciliation.
        committer = GroupCommitter(state)
        transfers = TransferBook(state, (a.name for a in config.whitebit), clock=self.clock)
        self.registry.register(TransferCollector(transfers))
        derivers: list[Deriver] = [WhitebitDeriver(transfers)]
        receivers = self._receivers(state, committer, derivers)
        # What the receivers stored before a restart and was not derived yet is derived first, so the
        # sources below start from the state every answered delivery implies.
        # Each derived row is owed to its relay targets in the batch that derives it; one sender per target.
        senders = {target.name: RelaySender(target, state, clock=self.clock) for target in config.relay.targets}
        taps = (
            [
                RelayEnqueuer(
                    state,
                    RelayRouter(config.relay.targets),
                    clock=self.clock,
                    on_owed=lambda name: senders[name].notify(),
                )
            ]
            if senders
            else []
        )
        if senders:
            self.registry.register(RelayCollector(senders.values(), state, clock=self.clock))
        inbox = self._inbox = InboxConsumer(state, derivers, clock=self.clock, taps=taps)
        self.registry.register(inbox)
        try:
            caught_up = inbox.drain()
        except TapError as exc:  # the running consumer logs it and tries again; intake must still start
            log.error("inbox not derived at start: the relay could not owe a batch", extra={"error": str(exc)})
            caught_up = 0
        if caught_up:
            log.info("inbox deliveries derived at start", extra={"deliveries": caught_up})
        listener_refusals = SeriesValues()
        self.registry.register(listener_refusals)
        # Each listener has its own cap, so a flood on the webhook port cannot take the descriptors
        # the metrics listener needs; the open-file limit must hold both caps (exporter/http/limits.py).
        try:
            ensure_open_files(files_needed((config.web.max_connections, config.webhooks.max_connections)))
        except FileBudgetError as exc:
            raise StartupError(str(exc)) from exc
        connections = ListenerConnections(listener_refusals)

        self._metrics = Listener(
            METRICS_LISTENER,
            create_metrics_app(
                self.registry, self.health, self.version, security=config.web.security, collector=listener_refusals
            ),
            config.web.listen_address,
            shutdown_timeout=_METRICS_STOP_TIMEOUT,
            limits=_limits(config.web),
            connections=connections,
            tls=_server_tls(config.web.security.tls, "metrics"),
        )
        self._webhooks = Listener(
            WEBHOOKS_LISTENER,
            create_webhook_app(config.webhooks, config.whitebit, receivers, collector=listener_refusals),
            config.webhooks.listen_address,
            shutdown_timeout=_WEBHOOKS_STOP_TIMEOUT,
            limits=_limits(config.webhooks),
            connections=connections,
            tls=_server_tls(config.webhooks.tls, "webhooks"),
        )
        for listener in (self._metrics, self._webhooks):
            try:
                await listener.start()
            except ListenError as exc:
                raise StartupError(str(exc), listen_error=exc) from exc

        self._whitebit = build_sources(
            config.whitebit,
            config.rest,
            prices=config.prices,
            transfers=transfers,
            state=state,
            health=self.health,
            registry=self.registry,
            clock=self.clock,
        )
        retention = config.state.inbox_retention
        housekeeping = Housekeeping(
            {"final_transfers": lambda now: transfers.purge_final(now - FINAL_TRANSFER_RETENTION)},
            clock=self.clock,
            upkeep=state.upkeep,
            # A day of deliveries may be due at once: batch after batch, intake between them.
            # History records are the other half of the evidence a rebuild replays: kept as long.
            batched={
                "inbox": (lambda now: state.purge_inbox(retention), INBOX_PURGE_BATCH),
                "history_records": (lambda now: state.purge_history(retention), INBOX_PURGE_BATCH),
            },
        )
        for source in (inbox, *self._whitebit.sources, housekeeping, *senders.values()):
            self.supervisor.start(source.name, source.run)

    def _receivers(
        self, state: StateStore, committer: GroupCommitter, derivers: list[Deriver]
    ) -> list[WebhookReceiver]:
        """Every webhook receiver the config asks for, each with its collectors registered; the Zero
        Hash deriver is added to ``derivers`` when Zero Hash is configured."""
        receivers: list[WebhookReceiver] = []
        webhook_accounts = [account for account in self.config.whitebit if account.webhook is not None]
        if webhook_accounts:
            whitebit = WhitebitReceiver(
                webhook_accounts, state, committer, on_stored=self._inbox_stored, clock=self.clock
            )
            self.registry.register(whitebit.collector)
            receivers.append(whitebit)
        if self.config.zerohash is not None:
            settings = self.config.zerohash.webhook
            balances = ZerohashBalances(settings.participants, state.zerohash_balances())
            self.registry.register(ZerohashBalanceCollector(balances))
            derivers.append(ZerohashDeriver(state, balances))
            zerohash = ZerohashReceiver(settings, state, committer, on_stored=self._inbox_stored, clock=self.clock)
            self.registry.register(zerohash.collector)
            receivers.append(zerohash)
        return receivers

    def _inbox_stored(self) -> None:
        """A receiver committed a new inbox row."""
        if self._inbox is not None:
            self._inbox.notify()

    @property
    def inbox(self) -> InboxConsumer:
        """The inbox consumer (only between ``start()`` and ``stop()``)."""
        if self._inbox is None:
            raise RuntimeError("the exporter is not started")
        return self._inbox

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
        if self._webhooks is not None:
            await self._webhooks.stop()
        await self.supervisor.stop(timeout=_TASKS_STOP_TIMEOUT)
        if self._whitebit is not None:
            await self._whitebit.close()
        if self._inbox is not None and self._state is not None:
            # What was answered but not derived yet is derived now, within a bounded part of the stop
            # budget; whatever is left is derived at the next start.
            try:
                self._inbox.drain(budget=_INBOX_STOP_BUDGET)
            except StateError as exc:
                log.warning("inbox not derived before stopping", extra={"error": str(exc)})
        if self._metrics is not None:
            await self._metrics.stop()
        if self._state is not None:
            self._state.close()
            self._state = None
        log.info("stopped")

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
            mode = "webhooks-only"
            if account.has_api:
                mode = "api+webhooks" if account.webhook is not None else "api"
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
        security = self.config.web.security
        tls, webhooks_tls = security.tls, self.config.webhooks.tls
        log.info(
            "listeners",
            extra={
                "metrics_tls": "off" if tls is None else f"{tls.min_version}+ client_auth={tls.client_auth_type}",
                "metrics_basic_auth_users": len(security.basic_auth_users),
                "webhooks_tls": "off" if webhooks_tls is None else f"{webhooks_tls.min_version}+",
            },
        )
        if security.basic_auth_users and tls is None:
            log.warning("basic auth without TLS: passwords cross the network readable (add tls_server_config)")
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
