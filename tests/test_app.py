"""The Exporter over loopback: what /metrics holds, startup failures, bounded shutdown, signals."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import platform
import shutil
import signal
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from typing import Any

import aiohttp
import pytest

from exporter import __version__
from exporter.app import STOP_TIMEOUT, Exporter, StartupError, run_until_signal
from exporter.config.schema import (
    Config,
    ListenAddress,
    StateConfig,
)
from exporter.core.backoff import Backoff
from exporter.core.logs import LogfmtFormatter
from exporter.core.metrics import EXPORTER_BUILD_INFO, WEBHOOK_LISTENER_REJECTED, WHITEBIT_UP
from exporter.core.state import MIN_DELIVERY_TTL, InboxDelivery, StateStore
from exporter.core.supervisor import Supervisor, TaskStatus
from exporter.http.webhook_listener import REFUSAL_REASONS
from tests.exporters import ACCOUNTS, API_ACCOUNTS, API_KEY, API_SECRET, HOOK_SECRET, ZEROHASH, ZH_SECRET, StartExporter
from tests.helpers import scrape, scrape_text, wait_for


@pytest.fixture
def occupied_port() -> Iterator[int]:
    """A loopback port something else is already listening on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def task_status(exporter: Exporter, name: str) -> TaskStatus:
    """The supervised task called ``name`` (the exporter runs its own tasks too)."""
    return next(task for task in exporter.supervisor.status() if task.name == name)


# -- /metrics -----------------------------------------------------------------------------


async def test_metrics_expose_build_info_with_version_and_python(start_exporter: StartExporter) -> None:
    exporter = await start_exporter()
    result = await scrape(exporter.metrics_url)
    assert result.samples(EXPORTER_BUILD_INFO.name) == [
        ({"version": __version__, "python": platform.python_version()}, 1.0)
    ]


async def test_metrics_have_no_created_series(start_exporter: StartExporter) -> None:
    exporter = await start_exporter()
    result = await scrape(exporter.metrics_url)
    assert result  # the scrape parsed into families
    assert not [name for name in result.sample_names() if name.endswith("_created")]


async def test_metrics_show_up_for_every_configured_account(start_exporter: StartExporter) -> None:
    exporter = await start_exporter()
    exporter.health.register("websocket", "trading").failing("disconnected (refused)")
    result = await scrape(exporter.metrics_url)
    assert result.samples(WHITEBIT_UP.name) == [
        ({"account": "main"}, 1.0),
        ({"account": "trading"}, 0.0),
        ({"account": "payments"}, 1.0),
    ]


async def test_the_webhook_listener_refusals_are_on_metrics_from_start(
    start_exporter: StartExporter, http: aiohttp.ClientSession
) -> None:
    # The exporter registers the listener's own collector: every reason from the first scrape, and a
    # request for an unknown path counted as not_found.
    exporter = await start_exporter()
    before = await scrape(exporter.metrics_url)
    assert {
        labels["reason"]: value for labels, value in before.samples(WEBHOOK_LISTENER_REJECTED.name + "_total")
    } == dict.fromkeys(REFUSAL_REASONS, 0.0)
    async with http.post(exporter.webhooks_url + "/no-such-receiver", data=b"{}") as response:
        assert response.status == 404
    after = await scrape(exporter.metrics_url)
    assert ({"reason": "not_found"}, 1.0) in after.samples(WEBHOOK_LISTENER_REJECTED.name + "_total")


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process metrics need /proc")
async def test_metrics_include_standard_process_metrics(start_exporter: StartExporter) -> None:
    exporter = await start_exporter()
    result = await scrape(exporter.metrics_url)
    assert result.value("process_start_time_seconds") is not None
    [(labels, value)] = result.samples("python_info")
    assert labels["version"] == platform.python_version()
    assert value == 1.0


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (CI installs it)")
async def test_metrics_pass_promtool_check_metrics(start_exporter: StartExporter) -> None:
    exporter = await start_exporter()
    exporter.supervisor.start("idle", asyncio.Event().wait)
    text = await scrape_text(exporter.metrics_url)
    promtool = shutil.which("promtool")
    assert promtool is not None
    check = await asyncio.create_subprocess_exec(
        promtool,
        "check",
        "metrics",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(check.communicate(text.encode()), timeout=30)
    assert (check.returncode, out, err) == (0, b"", b"")


async def test_metrics_show_supervised_tasks(start_exporter: StartExporter) -> None:
    exporter = await start_exporter()
    exporter.supervisor.start("idle", asyncio.Event().wait)
    await wait_for(lambda: task_status(exporter, "idle").running)
    result = await scrape(exporter.metrics_url)
    assert result.value("whitebit_exporter_task_restarts_total", task="idle") == 0.0
    assert result.value("whitebit_exporter_task_running", task="idle") == 1.0


# -- startup, shutdown ----------------------------------------------------------------------------


async def test_listen_addresses_come_from_config_and_bound_urls_are_reported(
    start_exporter: StartExporter, make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    exporter = await start_exporter()
    assert exporter.metrics_url.startswith("http://127.0.0.1:")
    assert exporter.webhooks_url.startswith("http://127.0.0.1:")
    assert not exporter.metrics_url.endswith(":0")
    assert exporter.metrics_url != exporter.webhooks_url


async def test_urls_before_start_raise(make_config: Callable[..., Config]) -> None:
    exporter = Exporter(make_config(ACCOUNTS))
    with pytest.raises(RuntimeError, match="not started"):
        _ = exporter.metrics_url
    with pytest.raises(RuntimeError, match="not started"):
        _ = exporter.state


async def test_a_port_in_use_fails_start_with_a_clear_message_and_releases_everything(
    make_config: Callable[..., Config], occupied_port: int, http: aiohttp.ClientSession
) -> None:
    config = make_config(ACCOUNTS, webhooks=ListenAddress("127.0.0.1", occupied_port))
    exporter = Exporter(config)
    message = rf"cannot listen on 127\.0\.0\.1:{occupied_port} for the webhooks listener: Address already in use"
    with pytest.raises(StartupError, match=message) as raised:
        await exporter.start()
    # What the command line needs to name the setting to change (exporter/cli.py log_startup_failure).
    listen = raised.value.listen_error
    assert listen is not None
    assert (listen.listener, listen.address, listen.reason) == (
        "webhooks",
        ListenAddress("127.0.0.1", occupied_port),
        os.strerror(errno.EADDRINUSE),
    )
    with pytest.raises(RuntimeError):
        _ = exporter.state  # closed again
    with pytest.raises(RuntimeError):
        _ = exporter.metrics_url  # the metrics listener that had bound was stopped
    await exporter.stop()  # harmless after a failed start


async def test_an_unusable_state_path_fails_start_before_binding(
    make_config: Callable[..., Config], tmp_path: Any
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    config = dataclasses.replace(make_config(ACCOUNTS), state=StateConfig(path=str(blocker / "state.db")))
    exporter = Exporter(config)
    with pytest.raises(StartupError, match="state"):
        await exporter.start()
    with pytest.raises(RuntimeError):
        _ = exporter.metrics_url


async def test_start_opens_the_state_file_and_stop_closes_it(make_config: Callable[..., Config], tmp_path: Any) -> None:
    exporter = Exporter(make_config(ACCOUNTS))
    await exporter.start()
    assert (tmp_path / "state.db").exists()
    assert exporter.state.path == tmp_path / "state.db"
    await exporter.stop()
    with pytest.raises(RuntimeError):
        _ = exporter.state


async def test_old_inbox_rows_are_purged_by_the_housekeeping_task_at_start(make_config: Callable[..., Config]) -> None:
    config = make_config(ACCOUNTS)
    retention = config.state.inbox_retention
    with StateStore.open(config.state.path) as store:
        for delivery_id, ttl in (("old-id", MIN_DELIVERY_TTL), ("long-id", retention * 2)):
            body = f'{{"method":"code.apply","params":{{"code":"C"}},"id":"{delivery_id}"}}'.encode()
            delivery = InboxDelivery("whitebit", "main", delivery_id, "code.apply", 1_000.0, body, {})
            store.add_delivery(delivery, ttl=ttl)
    exporter = Exporter(config, clock=lambda: 1_000.0 + retention + 1)
    await exporter.start()

    def stored() -> dict[str, bytes | None]:
        with closing(sqlite3.connect(config.state.path)) as reader:
            return dict(reader.execute("SELECT delivery_id, body FROM inbox").fetchall())

    try:
        # Past the retention: a row past its dedupe window too is deleted; one still inside it keeps
        # its id (a redelivery stays a duplicate) and loses its body.
        await wait_for(lambda: stored() == {"long-id": None})
        assert task_status(exporter, "state:housekeeping").running
    finally:
        await exporter.stop()


async def test_stop_closes_both_listeners(start_exporter: StartExporter, http: aiohttp.ClientSession) -> None:
    exporter = await start_exporter()
    urls = [exporter.metrics_url + "/-/healthy", exporter.webhooks_url + "/whiteBIT-verification"]
    await exporter.stop()
    for url in urls:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(url):
                pass


async def test_stop_is_bounded_even_with_a_task_ignoring_cancellation(
    make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    exporter = Exporter(make_config(ACCOUNTS), supervisor=Supervisor(backoff=Backoff(0.001, 0.001)))
    await exporter.start()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    exporter.supervisor.start("stubborn", stubborn)
    await wait_for(lambda: task_status(exporter, "stubborn").running)
    await asyncio.wait_for(exporter.stop(), timeout=STOP_TIMEOUT)
    assert any("ignored cancellation" in r.getMessage() for r in caplog.records)
    release.set()
    await wait_for(lambda: task_status(exporter, "stubborn").finished)


async def test_startup_log_lists_accounts_and_listeners_without_secrets(
    start_exporter: StartExporter, make_config: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    exporter = await start_exporter(make_config(API_ACCOUNTS, zerohash=ZEROHASH))
    formatter = LogfmtFormatter()
    lines = [formatter.format(r) for r in caplog.records]
    text = "\n".join(lines)
    for secret in (API_KEY, API_SECRET, HOOK_SECRET, ZH_SECRET, API_SECRET[:8], HOOK_SECRET[:8]):
        assert secret not in text
    accounts = {r.account: r for r in caplog.records if r.getMessage() == "whitebit account"}  # type: ignore[attr-defined]
    assert set(accounts) == {"main", "trading", "payments"}
    assert accounts["main"].mode == "api+webhooks"  # type: ignore[attr-defined]
    assert accounts["main"].api_key == API_KEY[:4] + "…"  # type: ignore[attr-defined]
    assert accounts["trading"].mode == "api"  # type: ignore[attr-defined]
    assert accounts["payments"].mode == "webhooks-only"  # type: ignore[attr-defined]
    [listening] = [r for r in caplog.records if r.getMessage() == "listening"]
    assert listening.metrics == exporter.metrics_url  # type: ignore[attr-defined]
    assert listening.webhooks == exporter.webhooks_url  # type: ignore[attr-defined]


# -- run_until_signal -------------------------------------------------------------------------


class RecordingCompanion:
    """A companion that records the order of lifecycle events into a shared list."""

    def __init__(self, name: str, events: list[str], exporter: Exporter | None = None) -> None:
        self.name = name
        self.events = events
        self.exporter = exporter
        self.stop_entered = asyncio.Event()
        self.release_stop: asyncio.Event | None = None

    async def start(self) -> None:
        self.events.append(f"start {self.name}")

    async def stop(self) -> None:
        self.stop_entered.set()
        if self.release_stop is not None:
            await self.release_stop.wait()
        self.events.append(f"stop {self.name}")


class RecordingExporter(Exporter):
    """An Exporter that also records start/stop into the shared event list."""

    def __init__(self, config: Config, events: list[str]) -> None:
        super().__init__(config)
        self.events = events
        self.running = asyncio.Event()

    async def start(self) -> None:
        await super().start()
        self.events.append("start exporter")
        self.running.set()

    async def stop(self) -> None:
        await super().stop()
        self.events.append("stop exporter")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_run_until_signal_starts_companions_first_and_stops_them_last(
    make_config: Callable[..., Config], sig: signal.Signals
) -> None:
    events: list[str] = []
    exporter = RecordingExporter(make_config(ACCOUNTS), events)
    companions = [RecordingCompanion("simulator", events), RecordingCompanion("other", events)]
    run = asyncio.create_task(run_until_signal(exporter, companions=companions))
    await wait_for(exporter.running.is_set)
    os.kill(os.getpid(), sig)
    assert await asyncio.wait_for(run, timeout=10) == 0
    assert events == [
        "start simulator",
        "start other",
        "start exporter",
        "stop exporter",
        "stop other",
        "stop simulator",
    ]
    # The handlers were removed again: nothing is left installed for these signals.
    assert not asyncio.get_running_loop().remove_signal_handler(sig)


async def test_second_signal_during_shutdown_forces_exit(make_config: Callable[..., Config]) -> None:
    events: list[str] = []
    exporter = RecordingExporter(make_config(ACCOUNTS), events)
    slow = RecordingCompanion("simulator", events)
    slow.release_stop = asyncio.Event()
    forced: list[int] = []

    def force_exit(status: int) -> None:
        forced.append(status)
        assert slow.release_stop is not None
        slow.release_stop.set()  # in production os._exit never returns

    run = asyncio.create_task(run_until_signal(exporter, companions=[slow], force_exit=force_exit))
    await wait_for(exporter.running.is_set)
    os.kill(os.getpid(), signal.SIGTERM)
    await wait_for(slow.stop_entered.is_set)
    assert forced == []
    os.kill(os.getpid(), signal.SIGINT)
    await wait_for(lambda: forced == [1])
    assert await asyncio.wait_for(run, timeout=10) == 0


async def test_run_until_signal_propagates_a_failed_start_after_stopping_companions(
    make_config: Callable[..., Config], occupied_port: int
) -> None:
    events: list[str] = []
    config = make_config(ACCOUNTS, web=ListenAddress("127.0.0.1", occupied_port))
    exporter = RecordingExporter(config, events)
    companion = RecordingCompanion("simulator", events)
    with pytest.raises(StartupError, match="metrics listener"):
        await run_until_signal(exporter, companions=[companion])
    # Exporter.stop() ran (it is idempotent; both the failed start and the runner call it)
    # before the companion was stopped.
    assert events[0] == "start simulator"
    assert "start exporter" not in events
    assert events[-2:] == ["stop exporter", "stop simulator"]
    assert not asyncio.get_running_loop().remove_signal_handler(signal.SIGTERM)
