"""``--demo``: exporter and simulator in one process, live metrics at once, clean exit on a signal."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import platform
import re
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from exporter import __version__
from exporter.app import StartupError
from exporter.cli import main
from exporter.config.schema import ListenAddress, WebSecurityConfig
from exporter.demo import DEMO_ACCOUNT, Demo, DemoOptions, options_from_args
from tests.helpers import parse_logfmt, scrape, scrape_text, stop_and_collect, wait_for

STARTUP_TIMEOUT = 30.0  # imports on a loaded 2-core machine can take seconds; not a performance bound
#: A ``key=value`` pair inside a log line's msg, where a field of its own belongs.
KEY_VALUE = re.compile(r"[\w.\-]+=\S")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (.ci/run installs the prometheus package)")
        pytest.skip("promtool is not installed")
    return path


async def start_demo_process(tmp_path: Path) -> tuple[asyncio.subprocess.Process, dict[str, str], list[str]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "--demo",
        "--web.listen-address",
        "127.0.0.1:0",
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT
    while True:
        raw = await asyncio.wait_for(
            proc.stderr.readline(), timeout=max(0.1, deadline - asyncio.get_running_loop().time())
        )
        if not raw:
            raise AssertionError("demo ended before it was running:\n" + "\n".join(lines))
        lines.append(raw.decode().rstrip("\n"))
        fields = parse_logfmt(lines[-1])
        if fields.get("msg", "").startswith("demo running"):
            return proc, fields, lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_demo_serves_clean_metrics_and_exits_0_on_a_signal(tmp_path: Path, sig: signal.Signals) -> None:
    proc, running, lines = await start_demo_process(tmp_path)
    try:
        metrics_url = running["metrics"]
        # The simulator's control API, at the URL the start line gives, lists its endpoints.
        assert running["control"] == running["simulator"] + "/_simulator/"
        async with aiohttp.ClientSession() as http, http.get(running["control"]) as response:
            endpoints = (await response.json())["endpoints"]
        assert ("GET", "/_simulator/backend") in {(e["method"], e["path"]) for e in endpoints}
        async with aiohttp.ClientSession() as http, http.get(running["control"] + "backend") as response:
            assert (await response.json())["url"] == running["backend"]
        result = await scrape(metrics_url)
        build = result.value("whitebit_exporter_build_info", version=__version__, python=platform.python_version())
        assert build == 1
        assert result.value("whitebit_up", account=DEMO_ACCOUNT) is not None
        if sig is signal.SIGTERM:
            text = await scrape_text(metrics_url)
            lint = await asyncio.create_subprocess_exec(
                promtool(),
                "check",
                "metrics",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await lint.communicate(text.encode())
            assert (lint.returncode, out, err) == (0, b"", b"")
        status, log_text = await stop_and_collect(proc, lines, sig)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert status == 0
    assert "Traceback" not in log_text
    # The exporter's and the simulator's lines alike keep their values out of msg, in fields of their own.
    ours = [record for record in map(parse_logfmt, log_text.splitlines()) if record["logger"].startswith("exporter.")]
    assert any(record["logger"].startswith("exporter.simulator.") for record in ours)
    assert not [record["msg"] for record in ours if KEY_VALUE.search(record["msg"])]
    # The demo writes nothing outside its temporary directory.
    assert await asyncio.to_thread(lambda: list(tmp_path.iterdir())) == []


async def test_demo_points_the_simulator_at_the_exporter_and_makes_activity(tmp_path: Path) -> None:
    options = DemoOptions(metrics_address=ListenAddress("127.0.0.1", 0), scenario_rate=50.0, forge_every=None, seed=11)
    demo = Demo(options, tmp_path)
    await demo.start_simulator()
    assert demo.exporter is not None
    await demo.exporter.start()
    try:
        await demo.on_started()
        sender = demo.simulator.webhooks
        assert sender is not None and sender.url == demo.exporter.webhooks_url + "/webhooks/whitebit"
        assert demo.simulator.zerohash is not None
        # The scenario runs and its webhooks reach the exporter's listener (attempts get an HTTP answer).
        await wait_for(lambda: any(h["attempts"] for h in sender.history()), timeout=10)
        await wait_for(lambda: sum(demo.simulator.scenario.counts().values()) > 20, timeout=10)
        result = await scrape(demo.exporter.metrics_url)
        assert result.value("whitebit_up", account=DEMO_ACCOUNT) is not None
    finally:
        await demo.exporter.stop()
        await demo.simulator.stop()
    # Credentials are generated per run and never equal between runs.
    assert Demo(options, tmp_path).credentials != demo.credentials


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """The root logger's handlers and level put back after a test that runs the command line's setup."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_demo_takes_the_web_config_and_refuses_a_bad_one_before_starting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restored_logging: None
) -> None:
    web = tmp_path / "web.yml"
    web.write_text("basic_auth_users:\n  prometheus: plain-text-password\n")
    assert main(["--demo", "--web.config.file", str(web), "--log.format", "json"]) == 1
    err = capsys.readouterr().err
    assert f"{web}: basic_auth_users.prometheus: not a bcrypt hash" in err
    assert "plain-text-password" not in err
    assert "listening" not in err

    security = WebSecurityConfig(headers=(("X-Frame-Options", "deny"),))
    options = options_from_args(argparse.Namespace(web_security=security))
    assert options.web_security == security
    assert options_from_args(argparse.Namespace()).web_security == WebSecurityConfig()


async def test_a_simulator_that_cannot_listen_stops_the_demo_with_a_startup_error(tmp_path: Path) -> None:
    demo = Demo(DemoOptions(metrics_address=ListenAddress("127.0.0.1", 0)), tmp_path)
    # 192.0.2.1 (TEST-NET-1, RFC 5737) is no address of this machine: binding it fails as a taken port would.
    demo.simulator.settings = dataclasses.replace(demo.simulator.settings, host="192.0.2.1")
    with pytest.raises(StartupError, match=r"^the simulator cannot listen on 192\.0\.2\.1: ") as raised:
        await demo.start_simulator()
    assert raised.value.listen_error is None
    assert demo.exporter is None  # nothing was built to watch a simulator that is not there
