"""The ``whitebit-exporter`` command line (also ``python -m exporter``).

``whitebit-exporter [flags]`` runs the exporter until SIGTERM/SIGINT; ``--config.check``
validates the config (and the ``--web.config.file``) without touching the network; ``--demo`` runs
against the built-in simulator; ``whitebit-exporter simulate …`` runs the simulator alone. Exit status: 0 on a clean
stop or a valid config, 1 on an invalid config or a failed start, 2 on a bad flag.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence

from exporter import __version__
from exporter.config.load import ConfigError, ConfigProblem, load_config, load_web_config, parse_listen_address
from exporter.config.schema import Config, ListenAddress, WebSecurityConfig
from exporter.core.gc_tuning import tune_garbage_collector
from exporter.core.logs import LOG_FORMATS, LOG_LEVELS, setup_logging

log = logging.getLogger(__name__)

PROG = "whitebit-exporter"


def _listen_address(text: str) -> ListenAddress:
    try:
        return parse_listen_address(text)
    except ValueError as exc:
        # ArgumentTypeError keeps argparse from replacing the reason with a generic message.
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, as the README's "Command line" section lists them."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Prometheus exporter for WhiteBIT accounts and Zero Hash balance webhooks. "
        f"`{PROG} simulate --help` describes the built-in WhiteBIT simulator.",
        allow_abbrev=False,
    )
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default="config.yaml",
        metavar="PATH",
        help="YAML config file (default: %(default)s)",
    )
    parser.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config, print every problem, exit 0 or 1; no network",
    )
    parser.add_argument(
        "--web.listen-address",
        dest="web_listen_address",
        type=_listen_address,
        metavar="HOST:PORT",
        help="metrics listener address; overrides web.listen_address",
    )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="TLS, response headers and basic auth of the metrics listener, in the Prometheus exporter "
        "toolkit's web configuration format",
    )
    parser.add_argument(
        "--webhooks.listen-address",
        dest="webhooks_listen_address",
        type=_listen_address,
        metavar="HOST:PORT",
        help="webhook listener address; overrides webhooks.listen_address",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=LOG_LEVELS,
        default="info",
        help="minimum level logged (default: %(default)s)",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=LOG_FORMATS,
        default="logfmt",
        help="log line format on stderr (default: %(default)s)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="run against the built-in WhiteBIT simulator: no credentials, live metrics within seconds",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    return parser


def apply_overrides(config: Config, args: argparse.Namespace) -> Config:
    """The config with the listen addresses given on the command line, if any."""
    if args.web_listen_address is not None:
        config = dataclasses.replace(
            config, web=dataclasses.replace(config.web, listen_address=args.web_listen_address)
        )
    if args.webhooks_listen_address is not None:
        config = dataclasses.replace(
            config,
            webhooks=dataclasses.replace(config.webhooks, listen_address=args.webhooks_listen_address),
        )
    return config


def with_web_security(config: Config, security: WebSecurityConfig | None) -> Config:
    """The config with the metrics listener's ``--web.config.file`` settings, if any."""
    if security is None:
        return config
    return dataclasses.replace(config, web=dataclasses.replace(config.web, security=security))


def summary(config: Config) -> str:
    """One line describing a valid config, without secrets."""
    names = ", ".join(a.name for a in config.whitebit)
    accounts = f"{len(config.whitebit)} WhiteBIT account{'s' if len(config.whitebit) != 1 else ''}"
    if names:
        accounts += f" ({names})"
    zerohash = "on" if config.zerohash is not None else "off"
    security = config.web.security
    metrics = " (https)" if security.tls is not None else ""
    if security.basic_auth_users:
        count = len(security.basic_auth_users)
        metrics = f"{metrics[:-1]}, " if metrics else " ("
        metrics += f"basic auth: {count} user{'s' if count != 1 else ''})"
    webhooks = " (https)" if config.webhooks.tls is not None else ""
    return (
        f"{accounts}; Zero Hash webhooks {zerohash}; metrics on {config.web.listen_address}{metrics}; "
        f"webhooks on {config.webhooks.listen_address}{webhooks}; state in {config.state.path}"
    )


def format_problem(path: str, problem: ConfigProblem) -> str:
    """``PATH: location: message``; a problem with the whole file is just ``PATH: message``."""
    if problem.location == path:
        return f"{path}: {problem.message}"
    return f"{path}: {problem}"


def _load_web_security(args: argparse.Namespace) -> tuple[WebSecurityConfig | None, list[str]]:
    """The ``--web.config.file`` settings (None without the flag), or every problem with them, formatted."""
    path = args.web_config_file
    if path is None:
        return None, []
    try:
        return load_web_config(path), []
    except ConfigError as exc:
        return None, [format_problem(path, problem) for problem in exc.problems]


def load(args: argparse.Namespace) -> tuple[Config | None, list[str]]:
    """The config with the command line's overrides and web config, or None and every problem of both files."""
    path = args.config_file
    config: Config | None = None
    problems: list[str] = []
    try:
        config = load_config(path)
    except ConfigError as exc:
        problems = [format_problem(path, problem) for problem in exc.problems]
    security, web_problems = _load_web_security(args)
    problems += web_problems
    if config is None or problems:
        return None, problems
    return with_web_security(apply_overrides(config, args), security), []


def _files(args: argparse.Namespace) -> str:
    return ", ".join(path for path in (args.config_file, args.web_config_file) if path is not None)


def _check(args: argparse.Namespace) -> int:
    config, problems = load(args)
    for line in problems:
        print(line, file=sys.stderr)
    if config is None:
        return 1
    print(f"{args.config_file}: OK: {summary(config)}")
    return 0


def _run(args: argparse.Namespace) -> int:
    # Imported here so --version, --config.check and `simulate` need no aiohttp server stack.
    from exporter.app import Exporter, StartupError, run_until_signal

    setup_logging(args.log_level, args.log_format)
    config, problems = load(args)
    if config is None:
        for line in problems:
            log.error("invalid config", extra={"problem": line})
        log.error(
            "exiting: the config is invalid; nothing was started",
            extra={"file": _files(args), "problems": len(problems)},
        )
        return 1
    log.info("config loaded", extra={"file": _files(args)})
    exporter = Exporter(config)
    tune_garbage_collector()
    try:
        return asyncio.run(run_until_signal(exporter))
    except StartupError as exc:
        log.error(f"exiting: cannot start: {exc}")
        return 1
    except Exception:
        log.exception("exiting: unexpected error")
        return 1


def _exit_status(exc: SystemExit) -> int:
    """The status ``sys.exit(code)`` would give: None is 0, a message is 1."""
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "inbox":
        from exporter.inbox_cli import main as inbox_main

        return inbox_main(args_list[1:])
    if args_list and args_list[0] == "relay":
        from exporter.relay_cli import main as relay_main

        return relay_main(args_list[1:])
    if args_list and args_list[0] == "state":
        from exporter.state_cli import main as state_main

        return state_main(args_list[1:])
    if args_list and args_list[0] == "simulate":
        from exporter.simulator.cli import main as simulate_main

        try:
            return simulate_main(args_list[1:])
        except SystemExit as exc:  # its argparse: --help or a bad flag
            return _exit_status(exc)
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except SystemExit as exc:  # --help (0) or a bad flag (2, message already printed)
        return _exit_status(exc)
    if args.version:
        print(f"{PROG} {__version__}")
        return 0
    if args.config_check:
        return _check(args)
    if args.demo:
        from exporter.demo import run_demo

        setup_logging(args.log_level, args.log_format)
        security, problems = _load_web_security(args)
        if problems:
            for line in problems:
                log.error("invalid config", extra={"problem": line})
            log.error("exiting: the web config is invalid; nothing was started", extra={"file": args.web_config_file})
            return 1
        args.web_security = security
        return run_demo(args)
    return _run(args)
