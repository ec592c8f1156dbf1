"""The simulator logs as the exporter does: a constant ``msg`` and every value in a field of its own.

``whitebit-exporter simulate`` runs as a real process at debug level; the test makes it log what a user sees
most (its start, WebSocket clients it closes or refuses, webhooks it loses on purpose, retries and gives up),
then parses every line with the logfmt parser. A simulator that cannot listen names the flag to change.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.helpers import parse_logfmt, wait_for

STARTUP_TIMEOUT = 30.0  # a slow shared machine may take seconds to import everything
#: A ``key=value`` pair, as the simulator once wrote inside ``msg``.
KEY_VALUE = re.compile(r"[\w.\-]+=\S")
API_KEY, API_SECRET = "sim-api-key", "sim-api-secret-0123456789"
WEBHOOK_KEY, WEBHOOK_SECRET = "sim-webhook-key", "sim-webhook-secret-0123456789"


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound but never listening: every connection to it is refused at once."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


class Logged:
    """The process's stderr lines, parsed as they come."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def records(self) -> list[dict[str, str]]:
        return [parse_logfmt(line) for line in self.lines]

    def find(self, msg: str, **fields: str) -> dict[str, str] | None:
        """The first record with this msg and these field values, if one was logged."""
        for record in self.records():
            if record.get("msg") == msg and all(record.get(k) == v for k, v in fields.items()):
                return record
        return None

    def has(self, msg: str, **fields: str) -> Callable[[], bool]:
        return lambda: self.find(msg, **fields) is not None


@pytest.fixture
async def simulator(tmp_path: Path, refusing_port: int) -> AsyncIterator[tuple[asyncio.subprocess.Process, Logged]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "exporter",
        "simulate",
        "--listen-address",
        "127.0.0.1:0",
        "--api-key",
        API_KEY,
        "--api-secret",
        API_SECRET,
        "--webhook-url",
        f"http://127.0.0.1:{refusing_port}/webhooks/whitebit",
        "--webhook-key",
        WEBHOOK_KEY,
        "--webhook-secret",
        WEBHOOK_SECRET,
        "--webhook-retry-delay",
        "0.05",
        "--scenario-rate",
        "20",
        "--seed",
        "3",
        "--log.level",
        "debug",
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    logged = Logged()

    async def read() -> None:
        assert proc.stderr is not None
        while raw := await proc.stderr.readline():
            logged.lines.append(raw.decode().rstrip("\n"))

    reader = asyncio.create_task(read())
    try:
        yield proc, logged
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await reader


async def test_simulator_log_lines_keep_every_value_out_of_msg(
    simulator: tuple[asyncio.subprocess.Process, Logged], refusing_port: int
) -> None:
    proc, logged = simulator
    await wait_for(logged.has("simulator listening"), timeout=STARTUP_TIMEOUT, interval=0.05)
    listening = logged.find("simulator listening")
    assert listening is not None
    url = listening["url"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url)
    assert listening["ws"] == url.replace("http://", "ws://") + "/ws"
    assert listening["control"] == url + "/_simulator/"
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", listening["backend"])
    assert listening["markets"] == "BTC_USDT,ETH_USDT"

    # WebSocket clients the simulator closes or refuses.
    async with connect(listening["ws"]) as ws:
        await ws.send("not json")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=10)
    async with connect(listening["ws"]) as ws:
        await ws.send('{"id": 1, "method": "authorize", "params": ["not-a-token", "public"]}')
        await asyncio.wait_for(ws.recv(), timeout=10)
    # A webhook lost on purpose; the others go to a port that refuses them, are retried and given up.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/_simulator/webhooks/drop", json={"count": 1}) as response,
    ):
        assert response.status == 200

    for msg, fields in (
        ("ws closing", {"reason": "invalid_json"}),
        ("ws authorize rejected", {"reason": "bad_token"}),
        ("simulated delivery dropped on purpose", {"sender": "webhook"}),
        ("simulated delivery attempt got no answer", {"sender": "webhook"}),
        ("simulated delivery attempt failed", {"sender": "webhook"}),
        ("simulated delivery given up", {"sender": "webhook"}),
    ):
        await wait_for(logged.has(msg, **fields), timeout=30, interval=0.05, message=f"no {msg!r} line")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), timeout=10) == 0

    # Every line parses; the simulator's own (not asyncio's "Using selector" at debug) have no value in msg.
    ours = 0
    for line, record in zip(logged.lines, logged.records(), strict=True):
        assert list(record)[:4] == ["time", "level", "logger", "msg"], line
        if record["logger"].startswith("exporter."):
            ours += 1
            assert record["logger"].startswith("exporter.simulator."), line
            assert not KEY_VALUE.search(record["msg"]), line
    assert ours >= 7
    closing = logged.find("ws closing", reason="invalid_json")
    assert closing is not None and (closing["peer"], closing["account"]) == ("127.0.0.1", "")
    given_up = logged.find("simulated delivery given up")
    assert given_up is not None
    assert (given_up["kind"], given_up["account"], given_up["attempts"]) == ("event", "main", "6")
    assert re.fullmatch(r"(deposit|withdraw|code|refund)\.\w+", given_up["method"]) and given_up["id"]
    no_answer = logged.find("simulated delivery attempt got no answer")
    assert no_answer is not None
    assert no_answer["url"] == f"http://127.0.0.1:{refusing_port}/webhooks/whitebit" and no_answer["error"]
    dropped = logged.find("simulated delivery dropped on purpose")
    assert dropped is not None and dropped["account"] == "main" and dropped["id"]
    assert WEBHOOK_SECRET not in "\n".join(logged.lines) and API_SECRET not in "\n".join(logged.lines)


async def test_a_simulator_that_cannot_listen_exits_1_naming_its_flag(tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exporter",
            "simulate",
            "--listen-address",
            f"127.0.0.1:{port}",
            "--api-key",
            API_KEY,
            "--api-secret",
            API_SECRET,
            cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=STARTUP_TIMEOUT)
    finally:
        taken.close()
    assert proc.returncode == 1
    assert b"Traceback" not in stderr
    [line] = [r for r in map(parse_logfmt, stderr.decode().splitlines()) if r["level"] == "error"]
    assert line["msg"] == "exiting: the simulator cannot listen"
    assert (line["address"], line["error"], line["flag"]) == (
        f"127.0.0.1:{port}",
        os.strerror(errno.EADDRINUSE),
        "--listen-address",
    )
