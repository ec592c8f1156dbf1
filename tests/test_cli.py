"""The command line: --version, --config.check, overrides, and the real process under signals."""

from __future__ import annotations

import argparse
import asyncio
import base64
import errno
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from exporter import __version__
from exporter.app import METRICS_LISTENER, WEBHOOKS_LISTENER, StartupError
from exporter.cli import LISTENER_SETTINGS, apply_overrides, build_parser, log_startup_failure, main
from exporter.config.load import load_config, parse_listen_address
from exporter.config.schema import ListenAddress
from exporter.core.logs import LogfmtFormatter
from exporter.http.server import ListenError
from tests.certs import Pki, issue_pki
from tests.helpers import Scrape, parse_logfmt, scrape, stop_and_collect

HOOK_SECRET = "hook-secret-value-0123456789"
ZH_SECRET = "zh-secret-value-0123456789"
PUBLIC_KEY = "PUBKEY-main-0123456789"

GOOD_CONFIG = f"""
web:
  listen_address: "127.0.0.1:0"
webhooks:
  listen_address: "127.0.0.1:0"
  max_body_bytes: 65536
state:
  path: "{{state}}"
whitebit:
  - name: main
    webhook:
      public_key: "{PUBLIC_KEY}"
      secrets: ["${{TEST_HOOK_SECRET}}"]
zerohash:
  webhook:
    hmac_secrets: ["${{TEST_ZH_SECRET}}"]
"""

SECRET_ENV = {"TEST_HOOK_SECRET": HOOK_SECRET, "TEST_ZH_SECRET": ZH_SECRET}


@pytest.fixture
def secret_env() -> Iterator[None]:
    """The secrets GOOD_CONFIG references, in the environment for in-process loads."""
    saved = {key: os.environ.get(key) for key in SECRET_ENV}
    os.environ.update(SECRET_ENV)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def good_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(GOOD_CONFIG.replace("{state}", str(tmp_path / "state.db")))
    return path


@pytest.fixture
def bad_config(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(
        """
web:
  listen_address: "not-an-address"
bogus_section: 1
whitebit:
  - name: main
"""
    )
    return path


# -- in-process --------------------------------------------------------------------------------


def test_version_prints_program_name_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"whitebit-exporter {__version__}\n"


def test_help_lists_the_spec_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in (
        "--config.file",
        "--config.check",
        "--web.listen-address",
        "--web.config.file",
        "--webhooks.listen-address",
        "--log.level",
        "--log.format",
        "--demo",
        "--version",
    ):
        assert flag in out


def test_config_check_on_a_good_file_prints_a_summary_and_exits_0(
    good_config: Path, secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config.file", str(good_config), "--config.check"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    [line] = captured.out.splitlines()
    assert line.startswith(f"{good_config}: OK: ")
    assert "1 WhiteBIT account (main)" in line
    assert "Zero Hash webhooks on" in line
    assert HOOK_SECRET not in line and ZH_SECRET not in line


def test_config_check_on_a_bad_file_prints_every_problem_and_exits_1(
    bad_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config.file", str(bad_config), "--config.check"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) >= 2
    assert all(line.startswith(f"{bad_config}: ") for line in lines)
    assert any("listen_address" in line for line in lines)
    assert any("bogus_section" in line for line in lines)


def test_config_check_reports_bad_price_settings_with_their_locations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(
        "whitebit:\n  - {name: main, api_key: key, api_secret: secret}\n"
        "prices:\n  quote: usdt\n  interval: 0.2\n  enabled: 1\n"
    )
    assert main(["--config.file", str(path), "--config.check"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{path}: prices.enabled: expected true or false, got a number",
        f'{path}: prices.quote: invalid asset "usdt" (use the ticker as WhiteBIT names it in markets, e.g. USDT)',
        f"{path}: prices.interval: must be at least 1s (WhiteBIT caches the ticker for a second), got 0.2 s",
    ]


def test_config_check_says_whether_and_how_prices_are_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    account = "whitebit:\n  - {name: main, api_key: key, api_secret: secret}\n"
    cases = {
        account: "prices in USDT every 60s",
        account + "prices: {quote: UAH, interval: 5s}\n": "prices in UAH every 5s",
        account + "prices: {enabled: false}\n": "prices off",
        # Prices value what accounts hold, which only accounts with an API key report.
        "whitebit:\n  - {name: hooks, webhook: {public_key: k, secrets: [s]}}\n": (
            "prices off (no account with api_key)"
        ),
    }
    for index, (text, expected) in enumerate(cases.items()):
        path = tmp_path / f"config-{index}.yaml"
        path.write_text(text)
        assert main(["--config.file", str(path), "--config.check"]) == 0
        assert capsys.readouterr().out.rstrip("\n").endswith(f"; {expected}"), expected


def test_config_check_on_a_missing_file_exits_1_naming_it_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["--config.file", str(missing), "--config.check"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"{missing}: ")
    assert line.count(str(missing)) == 1


def test_config_check_shows_listen_address_overrides(
    good_config: Path, secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--config.file",
        str(good_config),
        "--config.check",
        "--web.listen-address",
        "127.0.0.1:19945",
        "--webhooks.listen-address",
        "[::1]:19946",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "metrics on 127.0.0.1:19945" in out
    assert "webhooks on [::1]:19946" in out


WEB_PASSWORD = "scrape-password-0123456789"
WEB_HASH = bcrypt.hashpw(WEB_PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture
def web_config(tmp_path: Path) -> tuple[Path, Pki]:
    """A web config with TLS (certificates under tmp_path/pki) and one basic auth user."""
    pki = issue_pki(tmp_path / "pki")
    path = pki.directory / "web-config.yml"
    path.write_text(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
        f"basic_auth_users:\n  prometheus: '{WEB_HASH}'\n"
    )
    return path, pki


def test_config_check_validates_the_web_config_too(
    good_config: Path, secret_env: None, web_config: tuple[Path, Pki], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = web_config
    assert main(["--config.file", str(good_config), "--web.config.file", str(path), "--config.check"]) == 0
    out = capsys.readouterr().out
    assert "metrics on 127.0.0.1:0 (https, basic auth: 1 user);" in out
    assert WEB_HASH not in out


def test_config_check_lists_the_problems_of_both_files_each_under_its_path(
    bad_config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: '$2y$10$tooshort'\nbogus: 1\n")
    assert main(["--config.file", str(bad_config), "--web.config.file", str(web), "--config.check"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert any(line.startswith(f"{bad_config}: ") and "bogus_section" in line for line in lines)
    assert f"{web}: bogus: unknown key" in lines
    assert any(line.startswith(f"{web}: basic_auth_users.prometheus: not a bcrypt hash") for line in lines)
    # The hash is never repeated back.
    assert "tooshort" not in captured.err


def test_apply_overrides_replaces_only_the_given_addresses(good_config: Path, secret_env: None) -> None:
    config = load_config(good_config)
    both = argparse.Namespace(
        web_listen_address=ListenAddress("0.0.0.0", 1), webhooks_listen_address=ListenAddress("::1", 2)
    )
    overridden = apply_overrides(config, both)
    assert overridden.web.listen_address == ListenAddress("0.0.0.0", 1)
    assert overridden.webhooks.listen_address == ListenAddress("::1", 2)
    assert overridden.webhooks.max_body_bytes == config.webhooks.max_body_bytes
    neither = argparse.Namespace(web_listen_address=None, webhooks_listen_address=None)
    assert apply_overrides(config, neither) == config


def test_a_bad_listen_address_flag_exits_2_with_the_reason(
    good_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--config.file", str(good_config), "--web.listen-address", "localhost"]) == 2
    err = capsys.readouterr().err
    assert "--web.listen-address" in err
    assert "localhost" in err


def test_simulate_subcommand_hands_the_rest_to_the_simulator(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: whitebit-exporter simulate")
    assert "--listen-address" in out


def test_simulate_subcommand_bad_flags_return_a_status_instead_of_raising(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["simulate", "--no-such-flag"]) == 2
    assert "whitebit-exporter simulate" in capsys.readouterr().err


@pytest.mark.parametrize("flag", [["--log.level", "verbose"], ["--log.format", "xml"], ["--no-such-flag"]])
def test_bad_flags_exit_2(flag: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(flag) == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--config.file", "x.yaml"], "--config.file"),
        (["--config.check"], "--config.check"),
        (["--config.file", "x.yaml", "--config.check"], "--config.file and --config.check"),
    ],
)
def test_demo_refuses_the_config_flags_with_exit_2_saying_what_to_do(
    flags: list[str], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--demo", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    *usage, error = captured.err.splitlines()
    assert usage[0].startswith("usage: whitebit-exporter")
    assert error == (
        f"whitebit-exporter: error: --demo cannot be combined with {named}: --demo runs on built-in settings; "
        f"drop {named}, or drop --demo to use the file"
    )
    assert list(tmp_path.iterdir()) == []  # nothing was started, nothing written


def test_without_config_file_the_default_config_yaml_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--config.check"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("config.yaml: ")
    (tmp_path / "config.yaml").write_text(GOOD_CONFIG.replace("{state}", str(tmp_path / "state.db")))
    with monkeypatch.context() as env:
        for key, value in SECRET_ENV.items():
            env.setenv(key, value)
        assert main(["--config.check"]) == 0
    assert capsys.readouterr().out.startswith("config.yaml: OK: ")


def test_every_listener_has_its_setting_and_the_help_names_its_flag_and_key() -> None:
    assert set(LISTENER_SETTINGS) == {METRICS_LISTENER, WEBHOOKS_LISTENER}
    parser = build_parser()
    defaults, help_text = parser.parse_args([]), " ".join(parser.format_help().split())
    for setting in LISTENER_SETTINGS.values():
        assert getattr(defaults, setting.dest) is None  # None: not given, the config (or the demo) decides
        assert f"{setting.flag} HOST:PORT {setting.title} address; overrides {setting.key}" in help_text


@pytest.mark.parametrize(
    ("given", "hint"),
    [
        (None, "it is the demo's default: pass another address with --web.listen-address (port 0 picks a free one)"),
        ("127.0.0.1:9945", "--web.listen-address asked for it: pass another address (port 0 picks a free one)"),
    ],
)
def test_a_demo_listener_that_cannot_bind_names_the_demos_flag(
    given: str | None, hint: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The demo's metrics port by default is 9945, which a test cannot occupy reliably on a shared machine; the
    # real bind failure through the command line is test_the_demo_exits_1_naming_the_flag_when_its_port_is_taken.
    address = ListenAddress("127.0.0.1", 9945)
    error = StartupError("bind failed", listen_error=ListenError("metrics", address, "Address already in use"))
    args = argparse.Namespace(web_listen_address=given and parse_listen_address(given), webhooks_listen_address=None)
    with caplog.at_level(logging.ERROR, logger="exporter.cli"):
        log_startup_failure("exiting: cannot start the demo", error, args, config_file=None)
    [record] = caplog.records
    fields = parse_logfmt(LogfmtFormatter().format(record))
    assert fields["msg"] == "exiting: cannot start the demo"
    assert {k: fields[k] for k in ("listener", "address", "error", "flag", "hint")} == {
        "listener": "metrics",
        "address": "127.0.0.1:9945",
        "error": "Address already in use",
        "flag": "--web.listen-address",
        "hint": hint,
    }
    assert "key" not in fields  # the demo has no config


# -- the real process -------------------------------------------------------------------------

STARTUP_TIMEOUT = 30.0  # a slow shared machine may take seconds to import everything


async def spawn(*args: str, cwd: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, **SECRET_ENV, "PYTHONUNBUFFERED": "1"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def read_until(
    proc: asyncio.subprocess.Process, msg: str, *, json_lines: bool = False
) -> tuple[dict[str, str], list[str]]:
    """Read stderr lines until one whose msg is ``msg``; return its fields and all lines so far."""
    assert proc.stderr is not None
    lines: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_TIMEOUT
    while True:
        raw = await asyncio.wait_for(proc.stderr.readline(), timeout=max(0.1, deadline - loop.time()))
        if not raw:
            raise AssertionError("process ended before logging " + msg + ":\n" + "\n".join(lines))
        line = raw.decode().rstrip("\n")
        lines.append(line)
        fields = json.loads(line) if json_lines else parse_logfmt(line)
        if fields.get("msg") == msg:
            return fields, lines


@pytest.mark.parametrize(("sig", "log_format"), [(signal.SIGTERM, "logfmt"), (signal.SIGINT, "json")])
async def test_process_serves_then_exits_0_on_signal(
    good_config: Path, tmp_path: Path, sig: signal.Signals, log_format: str
) -> None:
    proc = await spawn("--config.file", str(good_config), "--log.format", log_format, cwd=tmp_path)
    try:
        listening, lines = await read_until(proc, "listening", json_lines=log_format == "json")
        metrics_url, webhooks_url = listening["metrics"], listening["webhooks"]
        result = await scrape(metrics_url)
        assert result.value("whitebit_up", account="main") == 1.0
        async with aiohttp.ClientSession() as session:
            async with session.get(webhooks_url + "/whiteBIT-verification") as response:
                assert json.loads(await response.text()) == [PUBLIC_KEY]
            async with session.get(metrics_url + "/-/ready") as response:
                assert response.status == 200
        status, everything = await stop_and_collect(proc, lines, sig)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert status == 0
    assert HOOK_SECRET not in everything and ZH_SECRET not in everything
    assert "received signal" in everything
    assert sig.name in everything
    assert (tmp_path / "state.db").exists()


async def test_process_with_a_bad_config_exits_1_listing_problems_and_starts_nothing(
    bad_config: Path, tmp_path: Path
) -> None:
    proc = await spawn("--config.file", str(bad_config), cwd=tmp_path)
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=STARTUP_TIMEOUT)
    assert proc.returncode == 1
    records = [parse_logfmt(line) for line in stderr.decode().splitlines()]
    problems = [r["problem"] for r in records if r.get("msg") == "invalid config"]
    assert len(problems) >= 2
    assert all(p.startswith(f"{bad_config}: ") for p in problems)
    assert any("bogus_section" in p for p in problems)
    assert not any(r.get("msg") == "listening" for r in records)
    assert "nothing was started" in records[-1]["msg"]
    assert await asyncio.to_thread(lambda: list(tmp_path.glob("*.db"))) == []


@pytest.fixture
def occupied_port() -> Iterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


async def refused_to_start(*args: str, cwd: Path) -> tuple[int, dict[str, str]]:
    """Run the command line expecting it to exit: its status and the fields of its one error line (the last)."""
    proc = await spawn(*args, cwd=cwd)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=STARTUP_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    lines = stderr.decode().splitlines()
    assert "Traceback" not in stderr.decode(), "\n".join(lines)
    records = [parse_logfmt(line) for line in lines]
    errors = [record for record in records if record["level"] == "error"]
    assert len(errors) == 1 and errors[0] is records[-1], "\n".join(lines)
    assert proc.returncode is not None
    return proc.returncode, errors[0]


ADDRESS_IN_USE = os.strerror(errno.EADDRINUSE)


async def test_process_exits_1_naming_the_flag_when_the_flags_address_cannot_bind(
    good_config: Path, tmp_path: Path, occupied_port: int
) -> None:
    status, line = await refused_to_start(
        "--config.file", str(good_config), "--webhooks.listen-address", f"127.0.0.1:{occupied_port}", cwd=tmp_path
    )
    assert status == 1
    assert line["msg"] == "exiting: cannot start"
    assert {k: line[k] for k in ("listener", "address", "error", "key", "flag", "hint")} == {
        "listener": "webhooks",
        "address": f"127.0.0.1:{occupied_port}",
        "error": ADDRESS_IN_USE,
        "key": "webhooks.listen_address",
        "flag": "--webhooks.listen-address",
        "hint": "--webhooks.listen-address asked for it, overriding webhooks.listen_address in "
        f"{good_config}: pass another address",
    }


async def test_process_exits_1_naming_the_config_key_when_the_files_address_cannot_bind(
    tmp_path: Path, occupied_port: int
) -> None:
    config = tmp_path / "config.yaml"
    text = GOOD_CONFIG.replace("{state}", str(tmp_path / "state.db"))
    config.write_text(text.replace('listen_address: "127.0.0.1:0"', f'listen_address: "127.0.0.1:{occupied_port}"', 1))
    status, line = await refused_to_start("--config.file", str(config), cwd=tmp_path)
    assert status == 1
    assert line["msg"] == "exiting: cannot start"
    assert {k: line[k] for k in ("listener", "address", "error", "key", "flag", "hint")} == {
        "listener": "metrics",
        "address": f"127.0.0.1:{occupied_port}",
        "error": ADDRESS_IN_USE,
        "key": "web.listen_address",
        "flag": "--web.listen-address",
        "hint": f"set web.listen_address in {config} to another address, or override it with --web.listen-address",
    }


async def test_the_demo_exits_1_naming_the_flag_when_its_port_is_taken(tmp_path: Path, occupied_port: int) -> None:
    status, line = await refused_to_start("--demo", "--web.listen-address", f"127.0.0.1:{occupied_port}", cwd=tmp_path)
    assert status == 1
    assert line["msg"] == "exiting: cannot start the demo"
    assert {k: line[k] for k in ("listener", "address", "error", "flag", "hint")} == {
        "listener": "metrics",
        "address": f"127.0.0.1:{occupied_port}",
        "error": ADDRESS_IN_USE,
        "flag": "--web.listen-address",
        "hint": "--web.listen-address asked for it: pass another address (port 0 picks a free one)",
    }
    assert "key" not in line
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_the_demo_refuses_a_config_file_on_the_command_line_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "x.yaml"
    config.write_text("{}")
    proc = await spawn("--demo", "--config.file", str(config), cwd=tmp_path)
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=STARTUP_TIMEOUT)
    assert proc.returncode == 2
    last = stderr.decode().splitlines()[-1]
    assert last == (
        "whitebit-exporter: error: --demo cannot be combined with --config.file: --demo runs on built-in settings; "
        "drop --config.file, or drop --demo to use the file"
    )


async def test_process_serves_metrics_over_tls_with_basic_auth(
    good_config: Path, tmp_path: Path, web_config: tuple[Path, Pki]
) -> None:
    path, pki = web_config
    proc = await spawn("--config.file", str(good_config), "--web.config.file", str(path), cwd=tmp_path)
    try:
        listening, lines = await read_until(proc, "listening")
        metrics_url = listening["metrics"]
        assert metrics_url.startswith("https://127.0.0.1:")
        context = pki.client_context()
        async with aiohttp.ClientSession() as session:
            auth = "Basic " + base64.b64encode(f"prometheus:{WEB_PASSWORD}".encode()).decode()
            async with session.get(metrics_url + "/metrics", ssl=context, headers={"Authorization": auth}) as response:
                assert response.status == 200
                result = Scrape(await response.text())
            async with session.get(metrics_url + "/metrics", ssl=context) as response:
                assert (response.status, response.headers["WWW-Authenticate"]) == (401, "Basic")
        assert result.value("whitebit_up", account="main") == 1.0
        status, everything = await stop_and_collect(proc, lines, signal.SIGTERM)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert status == 0
    assert WEB_HASH not in everything and WEB_PASSWORD not in everything


async def test_process_with_a_bad_web_config_exits_1_and_starts_nothing(good_config: Path, tmp_path: Path) -> None:
    web = tmp_path / "web.yml"
    web.write_text("tls_server_config:\n  cert_file: missing.pem\n  key_file: missing-key.pem\n")
    proc = await spawn("--config.file", str(good_config), "--web.config.file", str(web), cwd=tmp_path)
    _, stderr = await asyncio.wait_for(proc.communicate(), timeout=STARTUP_TIMEOUT)
    assert proc.returncode == 1
    records = [parse_logfmt(line) for line in stderr.decode().splitlines()]
    [problem] = [r["problem"] for r in records if r.get("msg") == "invalid config"]
    assert problem.startswith(f"{web}: tls_server_config.cert_file: cannot load ")
    assert not any(r.get("msg") == "listening" for r in records)
    assert await asyncio.to_thread(lambda: list(tmp_path.glob("*.db"))) == []
