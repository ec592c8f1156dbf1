"""The ``whitebit-exporter`` command line (also ``python -m exporter``).

``whitebit-exporter [flags]`` runs the exporter until SIGTERM/SIGINT; ``--config.check``
validates the config (and the ``--web.config.file``) without touching the network; ``--demo`` runs
against the built-in simulator on built-in settings (so it refuses ``--config.file`` and ``--config.check``);
``whitebit-exporter simulate …`` runs the simulator alone. Exit status: 0 on a clean stop or a
valid config, 1 on an invalid config or a failed start, 2 on a bad flag.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.config.load import ConfigError, ConfigProblem, load_config, load_web_config, parse_listen_address
from exporter.config.schema import Config, ListenAddress, WebSecurityConfig
from exporter.core.gc_tuning import tune_garbage_collector
from exporter.core.logs import LOG_FORMATS, LOG_LEVELS, setup_logging

if TYPE_CHECKING:
    from exporter.app import StartupError

log = logging.getLogger(__name__)

PROG = "whitebit-exporter"
DEFAULT_CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class ListenerSetting:
    """Where a listener's address comes from: its config key and the flag that overrides it."""

    key: str
    flag: str
    #: The flag's attribute on the parsed arguments.
    dest: str
    #: What the flag's help calls the listener.
    title: str


#: Per listener name (``exporter.app.METRICS_LISTENER``, ``WEBHOOKS_LISTENER``): the setting of its address.
LISTENER_SETTINGS = {
    "metrics": ListenerSetting("web.listen_address", "--web.listen-address", "web_listen_address", "metrics listener"),
    "webhooks": ListenerSetting(
        "webhooks.listen_address", "--webhooks.listen-address", "webhooks_listen_address", "webhook listener"
    ),
}
#: Flags that mean nothing with ``--demo``, which runs on built-in settings (no config file), by attribute.
#: The demo takes the listen addresses and the log flags.
DEMO_REFUSES = {"config_file": "--config.file", "config_check": "--config.check"}


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
    # No default here: whether the flag was given matters (--demo refuses it); DEFAULT_CONFIG_FILE applies after.
    parser.add_argument(
        "--config.file",
        dest="config_file",
        metavar="PATH",
        help=f"YAML config file (default: {DEFAULT_CONFIG_FILE})",
    )
    parser.add_argument(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config, print every problem, exit 0 or 1; no network",
    )
    for setting in LISTENER_SETTINGS.values():
        parser.add_argument(
            setting.flag,
            dest=setting.dest,
            type=_listen_address,
            metavar="HOST:PORT",
            help=f"{setting.title} address; overrides {setting.key}",
        )
    parser.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="TLS, response headers and basic auth of the metrics listener, in the Prometheus exporter "
        "toolkit's web configuration format",
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
        help="run against the built-in WhiteBIT simulator on built-in settings: no credentials, live metrics "
        "within seconds; takes the listen addresses and the log flags, not --config.file or --config.check",
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
    if not config.prices.enabled:
        prices = "off"
    elif not any(account.has_api for account in config.whitebit):
        prices = "off (no account with api_key)"
    else:
        prices = f"in {config.prices.quote} every {config.prices.interval:g}s"
    return (
        f"{accounts}; Zero Hash webhooks {zerohash}; metrics on {config.web.listen_address}{metrics}; "
        f"webhooks on {config.webhooks.listen_address}{webhooks}; state in {config.state.path}; prices {prices}"
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
        log_startup_failure("exiting: cannot start", exc, args, config_file=args.config_file)
        return 1
    except Exception:
        log.exception("exiting: unexpected error")
        return 1


def log_startup_failure(message: str, exc: StartupError, args: argparse.Namespace, *, config_file: str | None) -> None:
    """One error line for a start that failed: ``message``, with why in ``error``.

    When a listener cannot bind, the line also has the ``listener``, the ``address``, the config ``key``
    (not for the demo, which has no config), the ``flag``, and a ``hint`` saying which of the two asked for
    the address and what to do; ``error`` is the cause. ``config_file`` is the config's path, or None for
    the demo.
    """
    listen = exc.listen_error
    if listen is None:
        log.error(message, extra={"error": str(exc)})
        return
    setting = LISTENER_SETTINGS[listen.listener]
    fields: dict[str, object] = {"listener": listen.listener, "address": str(listen.address), "error": listen.reason}
    given = getattr(args, setting.dest, None) is not None
    free_port = "port 0 picks a free one"
    if config_file is None:
        hint = (
            f"{setting.flag} asked for it: pass another address ({free_port})"
            if given
            else f"it is the demo's default: pass another address with {setting.flag} ({free_port})"
        )
    else:
        fields["key"] = setting.key
        hint = (
            f"{setting.flag} asked for it, overriding {setting.key} in {config_file}: pass another address"
            if given
            else f"set {setting.key} in {config_file} to another address, or override it with {setting.flag}"
        )
    fields |= {"flag": setting.flag, "hint": hint}
    log.error(message, extra=fields)


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
        if args.demo and not args.version:
            _refuse_with_demo(parser, args)
    except SystemExit as exc:  # --help (0) or a bad flag (2, message already printed)
        return _exit_status(exc)
    if args.version:
        print(f"{PROG} {__version__}")
        return 0
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
    if args.config_file is None:
        args.config_file = DEFAULT_CONFIG_FILE
    if args.config_check:
        return _check(args)
    return _run(args)


def _refuse_with_demo(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 (argparse's bad-flag status, usage first) when a flag --demo has no use for was given."""
    refused = " and ".join(flag for dest, flag in DEMO_REFUSES.items() if getattr(args, dest) not in (None, False))
    if refused:
        parser.error(
            f"--demo cannot be combined with {refused}: --demo runs on built-in settings; "
            f"drop {refused}, or drop --demo to use the file"
        )
