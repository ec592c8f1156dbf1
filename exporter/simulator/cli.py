"""``whitebit-exporter simulate``: run the WhiteBIT simulator alone, for a staging stack or a test."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from exporter.core.logs import setup_logging
from exporter.simulator.server import DEFAULT_MARKETS, SimulatedAccount, Simulator, SimulatorSettings

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="whitebit-exporter simulate",
        description=(
            "Run a WhiteBIT simulator: REST under http://HOST:PORT/api/v4/..., WebSocket at ws://HOST:PORT/ws, "
            "signed webhooks to --webhook-url. It checks signatures, nonces and rate limits as WhiteBIT documents."
        ),
    )
    parser.add_argument(
        "--listen-address", default="127.0.0.1:8099", help="HOST:PORT to serve on (default %(default)s)"
    )
    parser.add_argument("--api-key", required=True, help="the API key the simulator accepts")
    parser.add_argument("--api-secret", required=True, help="the API secret the simulator accepts")
    parser.add_argument("--account-name", default="main", help="name of the simulated account (default %(default)s)")
    parser.add_argument(
        "--markets", default=",".join(DEFAULT_MARKETS), help="comma-separated markets (default %(default)s)"
    )
    parser.add_argument("--webhook-url", help="where to deliver signed WhiteBIT webhooks")
    parser.add_argument("--webhook-key", help="webhook public key (X-TXC-APIKEY of deliveries)")
    parser.add_argument("--webhook-secret", help="webhook secret that signs deliveries")
    parser.add_argument("--zerohash-url", help="where to deliver Zero Hash account_balance.changed webhooks")
    parser.add_argument("--zerohash-secret", help="HMAC secret that signs Zero Hash deliveries")
    parser.add_argument(
        "--scenario-rate",
        type=float,
        default=2.0,
        help="activity in actions per second; 0 for none (default %(default)s)",
    )
    parser.add_argument("--webhook-retry-delay", type=float, default=600.0, help="seconds between webhook retries")
    parser.add_argument("--webhook-drop-probability", type=float, default=0.0, help="share of webhooks never sent")
    parser.add_argument(
        "--clock-offset",
        type=float,
        default=0.0,
        help="seconds the simulated exchange's clock runs ahead of this host's (negative: behind)",
    )
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible scenario")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"])
    return parser


def settings_from_args(args: argparse.Namespace) -> SimulatorSettings:
    """Validate the arguments into settings; raises ValueError with a message for the user."""
    host, sep, port_text = args.listen_address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--listen-address {args.listen_address!r} is not HOST:PORT")
    markets = tuple(m.strip() for m in args.markets.split(",") if m.strip())
    if not markets or any(m.count("_") != 1 for m in markets):
        raise ValueError(f"--markets {args.markets!r} must be a comma-separated list like BTC_USDT,ETH_USDT")
    if args.webhook_url and not (args.webhook_key and args.webhook_secret):
        raise ValueError("--webhook-url needs --webhook-key and --webhook-secret")
    if args.zerohash_url and not args.zerohash_secret:
        raise ValueError("--zerohash-url needs --zerohash-secret")
    if args.scenario_rate < 0 or args.webhook_retry_delay <= 0 or not 0 <= args.webhook_drop_probability <= 1:
        raise ValueError("--scenario-rate must be >= 0, --webhook-retry-delay > 0, --webhook-drop-probability 0..1")
    account = SimulatedAccount(
        name=args.account_name,
        api_key=args.api_key,
        api_secret=args.api_secret,
        webhook_key=args.webhook_key,
        webhook_secret=args.webhook_secret,
    )
    return SimulatorSettings(
        accounts=(account,),
        host=host.strip("[]") or "0.0.0.0",
        port=int(port_text),
        markets=markets,
        webhook_url=args.webhook_url,
        webhook_retry_delays=(args.webhook_retry_delay,) * 5,
        zerohash_url=args.zerohash_url,
        zerohash_secret=args.zerohash_secret,
        scenario_rate=args.scenario_rate,
        webhook_drop_probability=args.webhook_drop_probability,
        clock_offset=args.clock_offset,
        seed=args.seed,
    )


async def serve(settings: SimulatorSettings) -> int:
    """Run until SIGTERM or SIGINT, then stop cleanly; a start that fails (OSError) stops what it started."""
    simulator = Simulator(settings)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await simulator.start()
        await stopping.wait()
    finally:
        await simulator.stop()
    return 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        settings = settings_from_args(args)
    except ValueError as error:
        print(f"whitebit-exporter simulate: {error}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(serve(settings))
    except OSError as error:
        # asyncio's own message repeats the address; the errno text alone reads better.
        reason = os.strerror(error.errno) if error.errno and error.errno > 0 else str(error)
        log.error(
            "exiting: the simulator cannot listen",
            extra={
                "address": args.listen_address,
                "error": reason,
                "flag": "--listen-address",
                "hint": "pass another address with --listen-address",
            },
        )
        return 1
