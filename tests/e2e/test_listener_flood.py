"""A connection flood against the real process under a low open-file limit (exporter/http/limits.py).

The exporter runs in a child process whose ``RLIMIT_NOFILE`` is 256 (soft and hard, so it cannot raise
it). More idle connections than that are opened to the webhook port: the listener admits its cap and
closes the rest at once, so ``accept()`` never fails with EMFILE, ``/metrics`` keeps answering, a genuine
signed delivery gets through once the idle connections time out, and the log stays a few lines long.
With the default caps the same limit is too small, and the exporter refuses to start with one line.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import aiohttp

from exporter.http.limits import files_needed
from exporter.whitebit.signing import compact_json, sign_body
from tests.helpers import parse_logfmt, scrape, wait_for

FILE_LIMIT = 256
STARTUP_TIMEOUT = 30.0
PUBLIC_KEY = "PUBLIC-KEY-FLOOD"
SECRET = "flood-webhook-secret-0123456789"
# Sets the limit in the child, then runs the command line as `python -m exporter` would.
LAUNCHER = (
    "import resource, sys\n"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FILE_LIMIT}, {FILE_LIMIT}))\n"
    "from exporter.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)
WEBHOOK_CAP = 32
IDLE_TIMEOUT = 1.0  # the webhook listener's idle_timeout in write_config
METRICS_CAP = 16


def write_config(tmp_path: Path, *, caps: bool) -> Path:
    """Both listeners on free loopback ports; with ``caps``, caps that fit FILE_LIMIT, else the defaults."""
    web_cap = f", max_connections: {METRICS_CAP}" if caps else ""
    webhooks_cap = f", max_connections: {WEBHOOK_CAP}" if caps else ""
    path = tmp_path / "config.yaml"
    path.write_text(
        f"web: {{listen_address: '127.0.0.1:0'{web_cap}}}\n"
        f"webhooks: {{listen_address: '127.0.0.1:0', idle_timeout: 1s{webhooks_cap}}}\n"
        f"state: {{path: '{tmp_path / 'state.db'}'}}\n"
        "whitebit:\n"
        "  - name: main\n"
        f"    webhook: {{public_key: {PUBLIC_KEY}, secrets: [{SECRET}]}}\n"
    )
    return path


@asynccontextmanager
async def child(config: Path, cwd: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LAUNCHER,
        "--config.file",
        str(config),
        cwd=cwd,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def read_until_listening(proc: asyncio.subprocess.Process) -> tuple[dict[str, str], list[str]]:
    assert proc.stderr is not None
    lines: list[str] = []
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while raw := await proc.stderr.readline():
            lines.append(raw.decode().rstrip("\n"))
            fields = parse_logfmt(lines[-1])
            if fields.get("msg") == "listening":
                return fields, lines
    raise AssertionError("the exporter ended before listening:\n" + "\n".join(lines))


async def open_idle(url: str, count: int) -> list[asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection(host, int(port))
        writers.append(writer)
    return writers


async def deliver(session: aiohttp.ClientSession, url: str) -> int:
    body = compact_json({"method": "code.apply", "params": {"code": "WBX-1", "nonce": 1}, "id": "flood-1"})
    headers = sign_body(body, key=PUBLIC_KEY, secret=SECRET)
    async with session.post(url + "/webhooks/whitebit", data=body, headers=headers) as response:
        return response.status


async def test_idle_connection_flood_under_a_low_file_limit_keeps_both_listeners_answering(tmp_path: Path) -> None:
    # The caps are chosen to fit the limit; the default ones do not (the next test).
    assert files_needed((METRICS_CAP, WEBHOOK_CAP)) <= FILE_LIMIT
    config = write_config(tmp_path, caps=True)
    async with child(config, tmp_path) as proc:
        listening, lines = await read_until_listening(proc)
        metrics_url, webhooks_url = listening["metrics"], listening["webhooks"]

        flood_size = FILE_LIMIT + 100
        started = asyncio.get_running_loop().time()
        flood = await open_idle(webhooks_url, flood_size)
        took = asyncio.get_running_loop().time() - started
        try:
            # Each connection is admitted or refused (refused ones at once, uncounted until the exporter
            # has accepted them, a batch per wake-up). An admitted one that idles out (idle_timeout, 1 s)
            # frees its slot, so a flood whose connects took longer (a stalled accept queue makes the
            # kernel retry them after 1 s and more) gets up to one more cap admitted per second.
            most_admitted = min(flood_size, WEBHOOK_CAP * (1 + math.ceil(took / IDLE_TIMEOUT)))

            async def counted() -> bool:
                metrics = await scrape(metrics_url)
                open_now = metrics.value("whitebit_exporter_listener_connections", listener="webhooks")
                assert open_now is not None and open_now <= WEBHOOK_CAP  # never over the cap
                refused = metrics.value("whitebit_exporter_listener_connections_refused_total", listener="webhooks")
                return refused is not None and refused >= flood_size - most_admitted

            await wait_for(counted, timeout=10.0, interval=0.1, message="the flood's refusals were not all counted")
            metrics = await scrape(metrics_url)
            refused = metrics.value("whitebit_exporter_listener_connections_refused_total", listener="webhooks")
            assert refused is not None and refused <= flood_size - WEBHOOK_CAP  # the cap itself was admitted
            # The flood's admitted connections are closed after idle_timeout (1 s); a sender retrying
            # (as WhiteBIT does) gets its delivery in.
            status = 0
            async with aiohttp.ClientSession() as session, asyncio.timeout(20.0):
                while status != 200:
                    with suppress(aiohttp.ClientError):
                        status = await deliver(session, webhooks_url)
                    if status != 200:
                        await asyncio.sleep(0.2)
            metrics = await scrape(metrics_url)
            assert metrics.value("whitebit_webhooks_received_total", account="main", method="code.apply") == 1
        finally:
            for writer in flood:
                writer.close()
        assert proc.returncode is None
        proc.terminate()
        async with asyncio.timeout(10.0):
            await proc.wait()
            assert proc.stderr is not None
            lines += (await proc.stderr.read()).decode().splitlines()
    assert proc.returncode == 0
    # Start, listening, at most a few rate-limited refusal lines, stop: no line per connection, no EMFILE.
    assert len(lines) <= 25, "\n".join(lines)
    assert not any("out of system resource" in line or "Too many open files" in line for line in lines)


async def test_exporter_refuses_to_start_when_the_file_limit_cannot_hold_the_caps(tmp_path: Path) -> None:
    config = write_config(tmp_path, caps=False)
    async with child(config, tmp_path) as proc:
        assert proc.stderr is not None
        async with asyncio.timeout(STARTUP_TIMEOUT):
            output = (await proc.stderr.read()).decode()
            status = await proc.wait()
    assert status == 1
    errors = [parse_logfmt(line) for line in output.splitlines() if "level=error" in line]
    assert len(errors) == 1, output
    assert errors[0]["msg"] == "exiting: cannot start"
    assert f"the open-file limit is {FILE_LIMIT}" in errors[0]["error"]
    assert "max_connections" in errors[0]["error"]
