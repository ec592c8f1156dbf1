"""``--demo``: exporter and simulator in one process, live metrics at once, clean exit on a signal."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter import __version__
from exporter.cli import main
from exporter.config.schema import ListenAddress, WebSecurityConfig
from exporter.demo import DEMO_ACCOUNT, Demo, DemoOptions, options_from_args
from tests.helpers import parse_logfmt, scrape, scrape_text, stop_and_collect, wait_for

STARTUP_TIMEOUT = 30.0  # imports on a loaded 2-core machine can take seconds; not a performance bound


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
