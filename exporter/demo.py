"""``whitebit-exporter --demo``: the exporter and the simulator in one process, on loopback.

Generates throwaway credentials, starts the simulator (REST, WebSocket, webhook senders) on a free
loopback port, points an exporter at it with a config built in code, and only then lets the scenario
make activity, with its webhooks aimed at the exporter's bound webhook port. Nothing touches the
network beyond loopback and nothing is written outside a temporary directory. The webhook retry delay
and the reconciliation grace are shortened so that a dropped webhook shows within minutes.

The simulator runs with every variation WhiteBIT's documents show or allow switched on (both zero-
balance forms, newest-first listings, replies and pushes overtaking each other, a clock that is off),
and the demo watches two accounts: ``demo``, with webhooks and an open collateral position, and
``demo-spot``, an account without collateral trading whose ``balanceMargin`` channel is refused. Prices come
from the simulator's public ticker every few seconds, so they move with its random walk; ``demo-spot`` also
holds UAH, priced through the ticker's ``USDT_UAH``, and OLDCOIN, whose only market is frozen, so it has no price.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from exporter.app import Exporter, StartupError, run_until_signal
from exporter.cli import log_startup_failure
from exporter.config.load import parse_listen_address
from exporter.config.schema import (
    DEFAULT_METRICS_ADDRESS,
    Config,
    ListenAddress,
    PollConfig,
    PricesConfig,
    RelayConfig,
    RelayTargetConfig,
    StateConfig,
    WebConfig,
    WebhooksConfig,
    WebSecurityConfig,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
    ZerohashConfig,
    ZerohashWebhookConfig,
)
from exporter.core.gc_tuning import tune_garbage_collector
from exporter.simulator.server import DEFAULT_MARKETS, SimulatedAccount, Simulator, SimulatorSettings

log = logging.getLogger(__name__)

DEMO_ACCOUNT = "demo"
#: A second account, without collateral trading: its ``balanceMargin`` channel answers an error (as
#: WhiteBIT may, undocumented), so its collateral wallet comes from the REST poll while the account
#: stays up, and ``/-/ready`` lists the channel as degraded.
DEMO_SPOT_ACCOUNT = "demo-spot"
#: Paths of the exporter's receivers (the README's "HTTP endpoints").
WHITEBIT_WEBHOOK_PATH = "/webhooks/whitebit"
ZEROHASH_WEBHOOK_PATH = "/webhooks/zerohash"
#: Zero Hash participants that get their own series in the demo (the simulator uses PART01…PART05).
DEMO_PARTICIPANTS = ("PART01",)
#: demo-spot's main wallet: the simulator's usual assets, UAH (valued through the ticker's USDT_UAH, a
#: market quoted the other way round) and OLDCOIN (its only market is frozen: no price).
DEMO_SPOT_MAIN = {"USDT": "25000", "BTC": "1.5", "ETH": "20", "UAH": "180000", "OLDCOIN": "50000"}
#: How often the demo reads the ticker (a minute by default), so prices move on the dashboard.
DEMO_PRICES_INTERVAL = 5.0


@dataclass(frozen=True)
class DemoCredentials:
    """Random credentials shared by the simulator and the exporter for one demo run."""

    api_key: str
    api_secret: str = field(repr=False)
    webhook_key: str = ""
    webhook_secret: str = field(default="", repr=False)
    zerohash_secret: str = field(default="", repr=False)
    spot_api_key: str = ""
    spot_api_secret: str = field(default="", repr=False)

    @classmethod
    def generate(cls) -> DemoCredentials:
        return cls(
            api_key=f"demo-{secrets.token_hex(12)}",
            api_secret=secrets.token_hex(32),
            spot_api_key=f"demo-spot-{secrets.token_hex(12)}",
            spot_api_secret=secrets.token_hex(32),
            webhook_key=f"demo-webhook-{secrets.token_hex(12)}",
            webhook_secret=secrets.token_hex(32),
            zerohash_secret=secrets.token_hex(32),
        )


#: The demo's relay waits at most this long between two attempts (10 min by default), so the backlog of
#: the payment backend's outages drains on the dashboard within half a minute of its return.
DEMO_RELAY_MAX_BACKOFF = 30.0


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs with; the defaults make a lively but readable dashboard."""

    metrics_address: ListenAddress = field(default_factory=lambda: parse_listen_address(DEFAULT_METRICS_ADDRESS))
    webhooks_address: ListenAddress = field(default_factory=lambda: ListenAddress("127.0.0.1", 0))
    markets: tuple[str, ...] = DEFAULT_MARKETS
    scenario_rate: float = 3.0
    forge_every: int | None = 60
    webhook_retry_delay: float = 20.0
    reconcile_grace: float = 120.0
    # The simulator stops retrying a delivery after five retries 20 s apart: a webhook still missing a
    # minute after that is missed (WhiteBIT's own window is about a day: the default is 1d).
    webhook_retry_window: float = 180.0
    # WhiteBIT's clock is never exactly ours: the simulated one runs beyond the ±5 s nonce window, so
    # the demo only works because the exporter measures the offset and signs on WhiteBIT's clock.
    clock_offset: float = 6.5
    seed: int | None = None
    # --web.config.file: TLS and basic auth of the metrics listener.
    web_security: WebSecurityConfig = field(default_factory=WebSecurityConfig)
    # The demo account's open collateral positions (market, base amount): a long worth about 1.5 times
    # its collateral, so its margin fraction is finite and moves with the price.
    positions: tuple[tuple[str, str], ...] = (("BTC_USDT", "0.5"),)


def simulator_settings(credentials: DemoCredentials, options: DemoOptions) -> SimulatorSettings:
    """The simulator side of the demo; webhooks are connected once the exporter listens."""
    return SimulatorSettings(
        accounts=(
            SimulatedAccount(
                name=DEMO_ACCOUNT,
                api_key=credentials.api_key,
                api_secret=credentials.api_secret,
                webhook_key=credentials.webhook_key,
                webhook_secret=credentials.webhook_secret,
                positions=dict(options.positions),
            ),
            SimulatedAccount(
                name=DEMO_SPOT_ACCOUNT,
                api_key=credentials.spot_api_key,
                api_secret=credentials.spot_api_secret,
                main=DEMO_SPOT_MAIN,
                collateral_trading=False,
            ),
        ),
        host="127.0.0.1",
        port=0,
        markets=options.markets,
        webhook_retry_delays=(options.webhook_retry_delay,) * 5,
        zerohash_secret=credentials.zerohash_secret,
        scenario_rate=options.scenario_rate,
        scenario_autostart=False,
        scenario_forge_every=options.forge_every,
        clock_offset=options.clock_offset,
        seed=options.seed,
    )


def exporter_config(
    credentials: DemoCredentials, options: DemoOptions, simulator: Simulator, state_dir: Path
) -> Config:
    """An exporter config that watches the simulated account, built in code (no YAML, no env vars)."""
    return Config(
        web=WebConfig(listen_address=options.metrics_address, security=options.web_security),
        webhooks=WebhooksConfig(listen_address=options.webhooks_address),
        state=StateConfig(path=str(state_dir / "whitebit-exporter-demo.db")),
        whitebit=(
            _watched(
                DEMO_ACCOUNT,
                credentials.api_key,
                credentials.api_secret,
                options,
                simulator,
                poll=PollConfig(main_balance=5.0, collateral=5.0, history=10.0),
                webhook=WhitebitWebhookConfig(
                    public_key=credentials.webhook_key, secrets=(credentials.webhook_secret,), nonce_policy="count"
                ),
            ),
            # Its collateral wallet comes from the REST poll (balanceMargin is refused): poll it often.
            _watched(
                DEMO_SPOT_ACCOUNT,
                credentials.spot_api_key,
                credentials.spot_api_secret,
                options,
                simulator,
                poll=PollConfig(main_balance=5.0, collateral=5.0, trade_balance=5.0, history=10.0),
            ),
        ),
        zerohash=ZerohashConfig(
            webhook=ZerohashWebhookConfig(hmac_secrets=(credentials.zerohash_secret,), participants=DEMO_PARTICIPANTS)
        ),
        prices=PricesConfig(interval=DEMO_PRICES_INTERVAL),
        # Everything received is forwarded to the simulator's payment backend, which checks the signatures.
        relay=RelayConfig(
            (
                RelayTargetConfig(
                    name="payments",
                    url=f"{simulator.backend.url}/whitebit",
                    providers=("whitebit",),
                    max_backoff=DEMO_RELAY_MAX_BACKOFF,
                ),
                RelayTargetConfig(
                    name="balances",
                    url=f"{simulator.backend.url}/zerohash",
                    providers=("zerohash",),
                    max_backoff=DEMO_RELAY_MAX_BACKOFF,
                ),
            )
        ),
    )


def _watched(
    name: str,
    api_key: str,
    api_secret: str,
    options: DemoOptions,
    simulator: Simulator,
    *,
    poll: PollConfig,
    webhook: WhitebitWebhookConfig | None = None,
) -> WhitebitAccountConfig:
    """One simulated account as the demo's exporter watches it."""
    return WhitebitAccountConfig(
        name=name,
        rest_url=simulator.url,
        ws_url=simulator.ws_url,
        api_key=api_key,
        api_secret=api_secret,
        markets=options.markets,
        poll=poll,
        reconcile_grace=options.reconcile_grace,
        webhook_retry_window=max(options.reconcile_grace, options.webhook_retry_window),
        webhook=webhook,
    )


class Demo:
    """The simulator and the exporter wired together; ``run()`` lasts until SIGTERM or SIGINT."""

    def __init__(self, options: DemoOptions, state_dir: Path, credentials: DemoCredentials | None = None) -> None:
        self.options = options
        self.credentials = credentials or DemoCredentials.generate()
        self.simulator = Simulator(simulator_settings(self.credentials, options))
        self.state_dir = state_dir
        self.exporter: Exporter | None = None

    async def start_simulator(self) -> None:
        """Start the simulator (on free loopback ports) and build the exporter that watches it."""
        try:
            await self.simulator.start()
        except OSError as exc:
            await self.simulator.stop()
            raise StartupError(f"the simulator cannot listen on {self.simulator.settings.host}: {exc}") from exc
        self.exporter = Exporter(exporter_config(self.credentials, self.options, self.simulator, self.state_dir))

    async def on_started(self) -> None:
        """Aim the simulator's webhooks at the exporter and let the scenario begin."""
        assert self.exporter is not None
        base = self.exporter.webhooks_url
        await self.simulator.connect_webhooks(base + WHITEBIT_WEBHOOK_PATH, base + ZEROHASH_WEBHOOK_PATH)
        self.simulator.start_scenario()
        log.info(
            "demo running: open the metrics URL; stop with Ctrl-C",
            extra={
                "metrics": f"{self.exporter.metrics_url}/metrics",
                "simulator": self.simulator.url,
                "control": self.simulator.control_url,
                "backend": self.simulator.backend.url,
                "webhooks": base,
            },
        )

    async def run(self) -> int:
        await self.start_simulator()
        assert self.exporter is not None
        # The simulator is already listening; as a companion it is stopped after the exporter.
        return await run_until_signal(self.exporter, companions=(_Started(self.simulator),), on_started=self.on_started)


class _Started:
    """A companion that is already started: only its ``stop`` is left to run_until_signal."""

    def __init__(self, simulator: Simulator) -> None:
        self._simulator = simulator

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._simulator.stop()


def options_from_args(args: argparse.Namespace) -> DemoOptions:
    """Demo options with the command line's listen addresses, when given."""
    options = DemoOptions()
    if getattr(args, "web_listen_address", None) is not None:
        options = dataclasses.replace(options, metrics_address=args.web_listen_address)
    if getattr(args, "webhooks_listen_address", None) is not None:
        options = dataclasses.replace(options, webhooks_address=args.webhooks_listen_address)
    if isinstance(getattr(args, "web_security", None), WebSecurityConfig):
        options = dataclasses.replace(options, web_security=args.web_security)
    return options


def run_demo(args: argparse.Namespace) -> int:
    """Entry point for ``--demo`` (logging is already set up); returns the exit status."""
    options = options_from_args(args)
    with tempfile.TemporaryDirectory(prefix="whitebit-exporter-demo-") as state_dir:
        demo = Demo(options, Path(state_dir))
        try:
            tune_garbage_collector()  # the demo owns its process, as the command line does
            return asyncio.run(demo.run())
        except StartupError as exc:
            log_startup_failure("exiting: cannot start the demo", exc, args, config_file=None)
            return 1
