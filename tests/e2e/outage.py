"""WhiteBIT taken away and brought back, with every line the exporter logs meanwhile (the scenario of
``tests/e2e/test_outage_logs.py``). Run alone, it prints the counts::

    PYTHONPATH=. python -m tests.e2e.outage

One in-process :class:`~exporter.app.Exporter` watches one account of the simulator, each poll every
second, with ``rest.max_retries`` 2 (a whole call is 3 attempts over about 3 s), logging at ``info``
as the command line does by default. The phases are driven by the failed attempts
the exporter's own metrics count (``whitebit_rest_requests_total{code="error"}``), never by a fixed time:

1. ``away at start``: the exporter starts while the simulator's port is closed, and it stays closed
   until each poll and WhiteBIT's clock have failed a whole call and the WebSocket token an attempt.
   Meanwhile: how long ``/-/ready`` took to name a reason other than ``starting`` for every source.
2. ``up``: the simulator listens on that port, until the exporter is ready and has measured the clock.
3. ``away``: the simulator stops (its sockets close) until each poll has failed a whole call; then
   the exporter's clock jumps :data:`JUMP` seconds ahead (as if minutes of outage had passed), and the
   simulator stays away until each poll and the WebSocket token have failed one more attempt
   (WhiteBIT allows 10 token requests a minute, so the limiter spaces those out).
4. ``back``: the simulator listens again, until the exporter is ready.

Log lines are the exporter's own (every logger but the simulator's), at ``info`` and above, each
parsed with :func:`tests.helpers.parse_logfmt` and kept with the phase it was written in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from exporter.app import Exporter
from exporter.config.schema import (
    Config,
    ListenAddress,
    PollConfig,
    PricesConfig,
    RestConfig,
    StateConfig,
    WebConfig,
    WebhooksConfig,
    WhitebitAccountConfig,
)
from exporter.core.logs import LogfmtFormatter
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from tests.helpers import parse_logfmt, wait_for

ACCOUNT = "acct"
MARKETS = ("BTC_USDT", "ETH_USDT")
#: Retries per REST call: a whole call is RETRIES + 1 attempts.
RETRIES = 2
#: Seconds the exporter's clock jumps ahead in the middle of the outage (over five minutes).
JUMP = 301.0
#: Failed attempts of one whole REST call.
CALL = float(RETRIES + 1)
#: The endpoint each poll calls first (a poll that fails there calls nothing else).
POLLS = {
    "rest:main_balance": "/api/v4/main-account/balance",
    "rest:collateral": "/api/v4/collateral-account/summary",
    "rest:trade_balance": "/api/v4/trade-account/balance",
    "rest:history": "/api/v4/main-account/history",
}
POLLS_BY_ENDPOINT = dict.fromkeys(POLLS.values(), 0.0)
#: The WebSocket's token request: WhiteBIT allows 10 a minute, so the shared limiter spaces its attempts.
WEBSOCKET_TOKEN = "/api/v4/profile/websocket_token"
CLOCK_ENDPOINT = "/api/v4/public/time"
#: What the collateral poll calls second, only while the WebSocket does not keep the collateral wallet.
COLLATERAL_WALLET = "/api/v4/collateral-account/balance-summary"
#: The health entries of the account, as ``/-/ready`` names them.
READINESS_SOURCES = (f"websocket {ACCOUNT}", *(f"{source} {ACCOUNT}" for source in POLLS))
PHASES = ("away at start", "up", "away", "back", "stopping")
#: How long any phase may take before the scenario gives up (it normally takes seconds).
PHASE_TIMEOUT = 120.0


class JumpingClock:
    """The host's clock plus whatever the scenario has jumped it ahead by."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def __call__(self) -> float:
        return time.time() + self.ahead


class _Lines(logging.Handler):
    """Keeps each record of the exporter's loggers as a parsed logfmt line, tagged with the current phase."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(LogfmtFormatter())
        self.phase = PHASES[0]
        self.lines: list[tuple[str, dict[str, str]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "exporter.simulator" or record.name.startswith("exporter.simulator."):
            return
        self.lines.append((self.phase, parse_logfmt(self.format(record))))


@dataclass
class OutageRun:
    """What one run of the scenario saw."""

    port: int
    #: Seconds from the start until ``/-/ready`` named a reason other than ``starting`` for every source.
    seconds_to_first_reason: float
    #: ``/-/ready``'s lines at that moment.
    first_reasons: list[str]
    #: Seconds WhiteBIT was away in phase 3 (from the stop to the restart).
    outage_seconds: float
    #: Failed attempts per endpoint (``whitebit_rest_requests_total{code="error"}``) when ``/-/ready`` first
    #: named every reason, when WhiteBIT went away in phase 3, and once the exporter was ready again.
    errors_at_first_reason: dict[str, float] = field(default_factory=dict)
    errors_when_away: dict[str, float] = field(default_factory=dict)
    errors_when_back: dict[str, float] = field(default_factory=dict)
    lines: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def in_phase(self, *phases: str) -> list[dict[str, str]]:
        """The parsed lines written during any of ``phases``."""
        return [line for phase, line in self.lines if phase in phases]

    def counts(self, *phases: str) -> Counter[tuple[str, str]]:
        """(level, msg) -> lines written during ``phases``."""
        return Counter((line.get("level", ""), line.get("msg", "")) for line in self.in_phase(*phases))


def free_port() -> int:
    """A loopback port nothing listens on right now (the simulator takes it when it starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def exporter_config(state_dir: Path, whitebit: Whitebit) -> Config:
    """One account on the simulator, each poll every second, ``RETRIES`` retries per call, no prices."""
    loopback = ListenAddress("127.0.0.1", 0)
    return Config(
        web=WebConfig(listen_address=loopback),
        webhooks=WebhooksConfig(listen_address=loopback),
        state=StateConfig(path=str(state_dir / "state.db")),
        whitebit=(
            WhitebitAccountConfig(
                name=whitebit.creds.name,
                rest_url=whitebit.url,
                ws_url=whitebit.ws_url,
                api_key=whitebit.creds.api_key,
                api_secret=whitebit.creds.api_secret,
                markets=MARKETS,
                poll=PollConfig(main_balance=1.0, collateral=1.0, history=1.0, trade_balance=1.0),
            ),
        ),
        rest=RestConfig(max_retries=RETRIES),
        # The ticker's first read falls at a random moment of its minute, in or out of the outage; the
        # sources measured here poll every second (the price poll's outage lines are the same kind).
        prices=PricesConfig(enabled=False),
    )


class Whitebit:
    """The simulator on a fixed loopback port, started and stopped at will."""

    def __init__(self, port: int) -> None:
        self.creds = SimulatedAccount(ACCOUNT, api_key="key-acct-0123456789", api_secret="secret-acct-0123456789")
        self.sim = Simulator(SimulatorSettings(accounts=(self.creds,), markets=MARKETS, port=port))
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}/ws"
        self.up = False

    async def start(self) -> None:
        await self.sim.start()
        self.up = True

    async def stop(self) -> None:
        self.up = False
        await self.sim.stop()


def _errors(exporter: Exporter, endpoint: str) -> float:
    value = exporter.registry.get_sample_value(
        "whitebit_rest_requests_total", {"account": ACCOUNT, "endpoint": endpoint, "code": "error"}
    )
    return value or 0.0


async def _failed_attempts(exporter: Exporter, wanted: dict[str, float], what: str) -> None:
    """Wait until each endpoint in ``wanted`` has had at least that many failed attempts."""
    await wait_for(
        lambda: all(_errors(exporter, endpoint) >= count for endpoint, count in wanted.items()),
        timeout=PHASE_TIMEOUT,
        interval=0.05,
        message=f"not every endpoint failed {what}",
    )


def _more(exporter: Exporter, endpoints: dict[str, float], attempts: float) -> dict[str, float]:
    return {endpoint: _errors(exporter, endpoint) + attempts for endpoint in endpoints}


@contextlib.asynccontextmanager
async def _capturing() -> AsyncIterator[_Lines]:
    handler = _Lines()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


async def run_outage(state_dir: Path) -> OutageRun:
    """Run the four phases once (see the module docstring)."""
    port = free_port()
    whitebit = Whitebit(port)
    clock = JumpingClock()
    async with _capturing() as captured:
        exporter = Exporter(exporter_config(state_dir, whitebit), clock=clock)
        started = time.monotonic()
        await exporter.start()
        try:
            # 1. Away at start.
            await wait_for(
                lambda: _named_every_reason(exporter),
                timeout=PHASE_TIMEOUT,
                interval=0.02,
                message="/-/ready never named a reason for every source",
            )
            run = OutageRun(port, time.monotonic() - started, exporter.health.readiness()[1], 0.0)
            run.errors_at_first_reason = _every_error(exporter)
            await _failed_attempts(
                exporter,
                {**dict.fromkeys(POLLS.values(), CALL), WEBSOCKET_TOKEN: 1.0, CLOCK_ENDPOINT: CALL},
                "at start",
            )
            # 2. Up.
            captured.phase = "up"
            await whitebit.start()
            await wait_for(
                lambda: exporter.health.readiness()[0] and _clock_measured(exporter),
                timeout=PHASE_TIMEOUT,
                interval=0.05,
                message="the exporter never became ready",
            )
            # 3. Away.
            captured.phase = "away"
            away_at = time.monotonic()
            run.errors_when_away = _every_error(exporter)
            await whitebit.stop()
            await _failed_attempts(exporter, _more(exporter, POLLS_BY_ENDPOINT, CALL), "a whole call")
            clock.ahead += JUMP
            await _failed_attempts(
                exporter, _more(exporter, {**POLLS_BY_ENDPOINT, WEBSOCKET_TOKEN: 0.0}, 1.0), "after the jump"
            )
            # 4. Back.
            captured.phase = "back"
            await whitebit.start()
            run.outage_seconds = time.monotonic() - away_at
            await wait_for(
                lambda: exporter.health.readiness()[0],
                timeout=PHASE_TIMEOUT,
                interval=0.05,
                message="the exporter never became ready again",
            )
            run.errors_when_back = _every_error(exporter)
        finally:
            captured.phase = "stopping"
            await exporter.stop()
            if whitebit.up:
                await whitebit.stop()
        run.lines = list(captured.lines)
        return run


def _every_error(exporter: Exporter) -> dict[str, float]:
    endpoints = (*POLLS.values(), COLLATERAL_WALLET, WEBSOCKET_TOKEN, CLOCK_ENDPOINT)
    return {endpoint: _errors(exporter, endpoint) for endpoint in endpoints}


def _named_every_reason(exporter: Exporter) -> bool:
    lines = exporter.health.readiness()[1]
    named = {line.split(": ", 1)[0]: line.split(": ", 1)[1] for line in lines if ": " in line}
    return all(source in named and named[source] != "starting" for source in READINESS_SOURCES)


def _clock_measured(exporter: Exporter) -> bool:
    return exporter.registry.get_sample_value("whitebit_clock_offset_seconds", {"account": ACCOUNT}) is not None


def report(run: OutageRun) -> str:
    """The counts, as printed by ``python -m tests.e2e.outage``."""
    attempts = ", ".join(f"{endpoint} {run.errors_at_first_reason[endpoint]:g}" for endpoint in POLLS.values())
    out = [
        f"/-/ready named a reason for every source after {run.seconds_to_first_reason:.1f} s"
        f" (failed attempts by then: {attempts}):",
        *(f"    {line}" for line in run.first_reasons),
    ]
    for phases, title in (
        (("away at start", "up"), "WhiteBIT away at start, then up"),
        (("away", "back"), f"WhiteBIT away for {run.outage_seconds:.1f} s (clock jumped {JUMP:g} s), then back"),
    ):
        counts = run.counts(*phases)
        warnings = sum(n for (level, _), n in counts.items() if level in ("warning", "error"))
        out.append(f"{title}: {sum(counts.values())} lines at info and above, {warnings} at warning and above")
        out.extend(f"    {n:4d}  {level:<7} {msg}" for (level, msg), n in sorted(counts.items()))
    return "\n".join(out)


def main() -> None:
    with tempfile.TemporaryDirectory() as state_dir:
        run = asyncio.run(run_outage(Path(state_dir)))
    sys.stdout.write(report(run) + "\n")


if __name__ == "__main__":
    main()
