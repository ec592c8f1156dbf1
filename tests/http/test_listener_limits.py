"""Connection limits of both listeners (exporter/http/limits.py) and the rate-limited aiohttp/asyncio logs.

Real listeners on loopback, raw sockets for the clients that misbehave: a slowloris dribbling headers or
a body is cut off at the request deadline, an idle keep-alive connection is closed after the idle
timeout, a connection over the cap is closed at once and counted while the connections already in and
the metrics listener keep answering, and a flood of malformed requests writes a bounded log.
"""

from __future__ import annotations

import asyncio
import io
import logging
import resource
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from exporter.config.schema import WebhooksConfig
from exporter.core.health import HealthRegistry
from exporter.core.logs import RateLimitFilter, setup_logging
from exporter.core.metrics import SeriesValues
from exporter.http.limits import (
    ACCEPT_BATCH,
    RESERVED_FILES,
    ConnectionLimits,
    FileBudgetError,
    ListenerConnections,
    ensure_open_files,
    files_needed,
    planned_soft_limit,
)
from exporter.http.metrics_listener import create_metrics_app
from exporter.http.server import Listener
from exporter.http.webhook_listener import create_webhook_app
from tests.conftest import LOOPBACK_ANY_PORT
from tests.helpers import Scrape, scrape, wait_for


class ReadingReceiver:
    """A receiver that reads the whole body, as the real ones do, then takes ``?seconds=`` to answer."""

    path = "/webhooks/test"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        await asyncio.sleep(float(request.query.get("seconds", "0")))
        return web.Response(text=str(len(body)))


class Listeners:
    """A webhook and a metrics listener sharing one ListenerConnections, rendered on /metrics."""

    def __init__(self, webhooks: Listener, metrics: Listener) -> None:
        self.webhooks = webhooks
        self.metrics = metrics

    async def scrape(self) -> Scrape:
        return await scrape(self.metrics.url)


StartListeners = Callable[..., Awaitable[Listeners]]


@pytest.fixture
async def make_listeners() -> AsyncIterator[StartListeners]:
    started: list[Listener] = []

    async def start(webhooks: ConnectionLimits, metrics: ConnectionLimits | None = None) -> Listeners:
        registry = CollectorRegistry()
        collector = SeriesValues()
        registry.register(collector)
        connections = ListenerConnections(collector)
        webhook_app = create_webhook_app(WebhooksConfig(LOOPBACK_ANY_PORT), [], [ReadingReceiver()])
        metrics_app = create_metrics_app(registry, HealthRegistry(), "test")
        pair = Listeners(
            Listener(
                "webhooks",
                webhook_app,
                LOOPBACK_ANY_PORT,
                shutdown_timeout=1.0,
                limits=webhooks,
                connections=connections,
            ),
            Listener(
                "metrics",
                metrics_app,
                LOOPBACK_ANY_PORT,
                shutdown_timeout=1.0,
                limits=metrics or ConnectionLimits(max_connections=8),
                connections=connections,
            ),
        )
        for listener in (pair.webhooks, pair.metrics):
            await listener.start()
            started.append(listener)
        return pair

    yield start
    for listener in started:
        await listener.stop()


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*host_port(url))


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``timeout``)."""
    data = b""
    async with asyncio.timeout(timeout):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def dribble(writer: asyncio.StreamWriter, chunk: bytes) -> None:
    """Send ``chunk`` every 50 ms until the server closes the connection."""
    with suppress(ConnectionError):
        while not writer.is_closing():
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.05)


def value(scrape_: Scrape, name: str, listener: str) -> float | None:
    return scrape_.value(name, listener=listener)


async def test_dribbled_headers_are_cut_off_at_the_request_deadline(make_listeners: StartListeners) -> None:
    pair = await make_listeners(ConnectionLimits(request_timeout=0.5, idle_timeout=30.0, max_connections=8))
    loop = asyncio.get_running_loop()
    reader, writer = await connect(pair.webhooks.url)
    writer.write(b"POST /webhooks/test HTTP/1.1\r\nHost: x\r\n")
    started = loop.time()
    sender = asyncio.create_task(dribble(writer, b"X-A: b\r\n"))
    assert await closed_by_server(reader, timeout=5.0) == b""
    elapsed = loop.time() - started
    sender.cancel()
    writer.close()
    assert 0.4 <= elapsed < 3.0
    metrics = await pair.scrape()
    assert value(metrics, "whitebit_exporter_listener_connections_timed_out_total", "webhooks") == 1
    await wait_for(lambda: pair.webhooks.guard.open == 0)


async def test_dribbled_body_is_cut_off_without_a_traceback(
    make_listeners: StartListeners, capture_log: io.StringIO
) -> None:
    pair = await make_listeners(ConnectionLimits(request_timeout=0.5, idle_timeout=30.0, max_connections=8))
    loop = asyncio.get_running_loop()
    reader, writer = await connect(pair.webhooks.url)
    writer.write(b"POST /webhooks/test HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
    started = loop.time()
    sender = asyncio.create_task(dribble(writer, b"a"))
    data = await closed_by_server(reader, timeout=5.0)
    elapsed = loop.time() - started
    sender.cancel()
    writer.close()
    assert not data.startswith(b"HTTP/1.1 200")
    assert 0.4 <= elapsed < 3.0
    metrics = await pair.scrape()
    assert value(metrics, "whitebit_exporter_listener_connections_timed_out_total", "webhooks") == 1
    text = capture_log.getvalue()
    assert "Traceback" not in text
    assert "level=error" not in text


async def test_a_complete_request_answered_slowly_is_not_cut_off(make_listeners: StartListeners) -> None:
    pair = await make_listeners(ConnectionLimits(request_timeout=0.3, idle_timeout=30.0, max_connections=8))
    body = b"x" * 5000
    # The body arrives at once; the receiver then takes twice the deadline to answer, which is not the client's.
    url = pair.webhooks.url + "/webhooks/test?seconds=0.6"
    async with aiohttp.ClientSession() as session, session.post(url, data=body) as response:
        assert response.status == 200
        assert await response.text() == "5000"
    metrics = await pair.scrape()
    assert value(metrics, "whitebit_exporter_listener_connections_timed_out_total", "webhooks") == 0


async def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(make_listeners: StartListeners) -> None:
    pair = await make_listeners(
        ConnectionLimits(max_connections=8), metrics=ConnectionLimits(idle_timeout=0.5, max_connections=8)
    )
    loop = asyncio.get_running_loop()
    reader, writer = await connect(pair.metrics.url)
    writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(5.0):
        head = await reader.readuntil(b"OK\n")
    assert head.startswith(b"HTTP/1.1 200")
    answered = loop.time()
    assert await closed_by_server(reader, timeout=5.0) == b""
    assert 0.4 <= loop.time() - answered < 3.0
    writer.close()
    # Nothing was cut off: closing an idle connection is not a timeout of a request.
    metrics = await pair.scrape()
    assert value(metrics, "whitebit_exporter_listener_connections_timed_out_total", "metrics") == 0


async def test_connections_over_the_cap_are_refused_and_counted(make_listeners: StartListeners) -> None:
    pair = await make_listeners(ConnectionLimits(request_timeout=30.0, idle_timeout=30.0, max_connections=3))
    held = [await connect(pair.webhooks.url) for _ in range(3)]
    await wait_for(lambda: pair.webhooks.guard.open == 3)
    refused = [await connect(pair.webhooks.url) for _ in range(5)]
    for reader, _ in refused:
        assert await closed_by_server(reader, timeout=2.0) == b""
    metrics = await pair.scrape()
    assert value(metrics, "whitebit_exporter_listener_connections_refused_total", "webhooks") == 5
    assert value(metrics, "whitebit_exporter_listener_connections", "webhooks") == 3
    assert value(metrics, "whitebit_exporter_listener_connections_refused_total", "metrics") == 0
    # A connection already in still answers, and keeps answering.
    reader, writer = held[0]
    for _ in range(2):
        writer.write(b"GET /whiteBIT-verification HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        async with asyncio.timeout(5.0):
            head = await reader.readuntil(b"[]")
        assert head.startswith(b"HTTP/1.1 200")
    for _, writer in held + refused:
        writer.close()
    # Once they are gone, new connections are admitted again.
    await wait_for(lambda: pair.webhooks.guard.open == 0)
    async with aiohttp.ClientSession() as session, session.get(pair.webhooks.url + "/whiteBIT-verification") as r:
        assert r.status == 200


@pytest.fixture
def capture_log() -> Iterator[io.StringIO]:
    """The exporter's logging set up (with its rate limit) into a buffer; the root logger restored after."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    setup_logging("info", "logfmt", stream)
    yield stream
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


BAD_CONTENT_LENGTHS = (b"abc", b"-1", b"1, 2", b"+5", b"99999999999999999999999")


@pytest.mark.parametrize("listener", ["webhooks", "metrics"])
async def test_bad_content_length_flood_writes_a_bounded_log_without_tracebacks(
    make_listeners: StartListeners,
    capture_log: io.StringIO,
    listener: str,
) -> None:
    pair = await make_listeners(ConnectionLimits(max_connections=64), metrics=ConnectionLimits(max_connections=64))
    url = pair.webhooks.url if listener == "webhooks" else pair.metrics.url
    path = b"/webhooks/test" if listener == "webhooks" else b"/metrics"
    statuses = []
    for index in range(200):
        reader, writer = await connect(url)
        bad = BAD_CONTENT_LENGTHS[index % len(BAD_CONTENT_LENGTHS)]
        writer.write(b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: " + bad + b"\r\n\r\n")
        await writer.drain()
        answer = await closed_by_server(reader, timeout=5.0)
        statuses.append(answer.split(b" ", 2)[1] if answer else b"")
        writer.close()
    assert set(statuses) == {b"400"}
    lines = [line for line in capture_log.getvalue().splitlines() if line]
    # One line per kind of refusal (exception class) at most, within the 10 s rate-limit interval.
    assert 1 <= len(lines) <= 2 * len(BAD_CONTENT_LENGTHS), lines
    assert not any("Traceback" in line or "level=error" in line for line in lines), lines


def test_rate_limit_filter_lets_one_record_of_a_kind_through_per_interval() -> None:
    now = [100.0]
    limit = RateLimitFilter(interval=10.0, clock=lambda: now[0])

    def record(name: str, msg: str, exc: BaseException | None = None) -> logging.LogRecord:
        exc_info = (type(exc), exc, None) if exc is not None else None
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, ("1.2.3.4",), exc_info)

    emfile = OSError(24, "Too many open files")
    accept = "socket.accept() out of system resource\nsocket: <socket fd=6>"
    passed = [limit.filter(record("asyncio", accept, emfile)) for _ in range(1000)]
    assert passed.count(True) == 1
    # Another kind, and the exporter's own loggers, are not held back by it.
    assert limit.filter(record("aiohttp.server", "Error handling request from %s", ValueError()))
    assert all(limit.filter(record("exporter.app", "something")) for _ in range(5))
    now[0] += 10.0
    later = record("asyncio", accept, emfile)
    assert limit.filter(later)
    assert later.__dict__["suppressed"] == 999
    assert not limit.filter(record("asyncio", accept, emfile))


def test_planned_soft_limit_raises_toward_the_hard_limit() -> None:
    infinity = resource.RLIM_INFINITY
    assert planned_soft_limit(1024, 4096, 800) is None
    assert planned_soft_limit(256, 4096, 800) == 4096
    assert planned_soft_limit(256, infinity, 800) == 800
    assert planned_soft_limit(256, 256, 800) is None
    assert planned_soft_limit(infinity, infinity, 800) is None


def test_files_needed_covers_the_caps_the_accept_batches_and_the_reserve() -> None:
    assert files_needed((64, 512)) == 64 + 512 + 2 * ACCEPT_BATCH + RESERVED_FILES
    # The defaults fit the common limit of 1024 open files.
    assert files_needed((64, 512)) <= 1024


def test_ensure_open_files_refuses_a_budget_the_hard_limit_cannot_hold() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard open-file limit to exceed")
    with pytest.raises(FileBudgetError, match=r"max_connections need \d+"):
        ensure_open_files(hard + 1)
    assert ensure_open_files(min(soft, 100)) >= min(soft, 100)
