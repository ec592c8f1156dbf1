"""The webhook listener: domain verification, the receivers' routes, and nothing else on the internet."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from exporter.config.schema import Config, WhitebitAccountConfig, WhitebitWebhookConfig
from exporter.core.health import HealthRegistry
from exporter.core.metrics import SeriesValues
from exporter.http.metrics_listener import create_metrics_app
from exporter.http.server import Listener
from exporter.http.webhook_listener import (
    LISTENER_REFUSALS,
    MAX_HEADERS,
    REFUSAL_REASONS,
    create_webhook_app,
    header_limits,
)
from exporter.whitebit.signing import compact_json, sign_body
from tests.exporters import ACCOUNTS, API_KEY, API_SECRET, CLOSED_PORT_URLS, HOOK_SECRET, StartExporter
from tests.helpers import Scrape, scrape


async def test_verification_lists_every_configured_webhook_public_key(
    start_exporter: StartExporter, http: aiohttp.ClientSession
) -> None:
    exporter = await start_exporter()
    async with http.get(exporter.webhooks_url + "/whiteBIT-verification") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert json.loads(await response.text()) == ["PUBLIC-KEY-MAIN", "PUBLIC-KEY-TRADING", "PUBLIC-KEY-PAYMENTS"]


async def test_verification_answers_head_with_200_and_no_body(
    start_exporter: StartExporter, http: aiohttp.ClientSession
) -> None:
    exporter = await start_exporter()
    async with http.head(exporter.webhooks_url + "/whiteBIT-verification") as response:
        assert response.status == 200
        assert await response.read() == b""


async def test_verification_is_an_empty_array_without_webhook_accounts(
    start_exporter: StartExporter, make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    exporter = await start_exporter(
        make_config([WhitebitAccountConfig(name="solo", api_key=API_KEY, api_secret=API_SECRET, **CLOSED_PORT_URLS)])
    )
    async with http.get(exporter.webhooks_url + "/whiteBIT-verification") as response:
        assert json.loads(await response.text()) == []


async def test_verification_lists_a_shared_public_key_once(
    start_exporter: StartExporter, make_config: Callable[..., Config], http: aiohttp.ClientSession
) -> None:
    hook = WhitebitWebhookConfig(public_key="SHARED", secrets=(HOOK_SECRET,))
    config = make_config([WhitebitAccountConfig(name="a", webhook=hook), WhitebitAccountConfig(name="b", webhook=hook)])
    exporter = await start_exporter(config)
    async with http.get(exporter.webhooks_url + "/whiteBIT-verification") as response:
        assert json.loads(await response.text()) == ["SHARED"]


@pytest.mark.parametrize("path", ["/metrics", "/", "/-/healthy", "/-/ready"])
async def test_webhook_listener_serves_nothing_else(
    start_exporter: StartExporter, http: aiohttp.ClientSession, path: str
) -> None:
    exporter = await start_exporter()
    async with http.get(exporter.webhooks_url + path) as response:
        assert response.status == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/whiteBIT-verification"), ("GET", "/nope"), ("PUT", "/whiteBIT-verification")],
)
async def test_webhook_listener_does_not_reveal_software_versions(
    start_exporter: StartExporter, http: aiohttp.ClientSession, method: str, path: str
) -> None:
    exporter = await start_exporter()
    async with http.request(method, exporter.webhooks_url + path) as response:
        assert response.headers["Server"] == "whitebit-exporter"


async def test_verification_answers_post_too_with_the_same_array(
    start_exporter: StartExporter, http: aiohttp.ClientSession
) -> None:
    # The method WhiteBIT's checker uses is not documented: GET, HEAD and POST all answer.
    exporter = await start_exporter()
    async with http.post(exporter.webhooks_url + "/whiteBIT-verification", data=b"{}") as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        assert json.loads(await response.text()) == ["PUBLIC-KEY-MAIN", "PUBLIC-KEY-TRADING", "PUBLIC-KEY-PAYMENTS"]
    async with http.put(exporter.webhooks_url + "/whiteBIT-verification", data=b"{}") as response:
        assert response.status == 405
        assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD", "POST"}


class EchoReceiver:
    """A receiver used only to test how the listener routes receivers and caps bodies."""

    path = "/webhooks/echo"

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.bodies.append(body)
        return web.Response(text=str(len(body)))


async def test_receivers_get_post_and_a_head_probe_and_bodies_are_capped(
    aiohttp_client: Any, make_config: Callable[..., Config]
) -> None:
    receiver = EchoReceiver()
    config = make_config(ACCOUNTS, max_body_bytes=1024)
    client = await aiohttp_client(create_webhook_app(config.webhooks, config.whitebit, [receiver]))

    response = await client.post(receiver.path, data=b"x" * 1024)
    assert response.status == 200 and await response.text() == "1024"
    response = await client.post(receiver.path, data=b"x" * 1025)
    assert response.status == 413
    assert receiver.bodies == [b"x" * 1024]

    response = await client.head(receiver.path)
    assert response.status == 200
    response = await client.get(receiver.path)
    assert response.status == 405


# -- header limits and refusals before a receiver (raw sockets) ------------------------------------------


async def exchange_raw(url: str, request: bytes, *, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` as-is on a new connection; the answer's status, headers and body."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout)
    try:
        writer.write(request)
        await asyncio.wait_for(writer.drain(), timeout)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.lower(): value for name, _, value in (line.partition(": ") for line in lines if line)}
        body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), timeout)
        return int(status_line.split(" ")[1]), headers, body
    finally:
        writer.close()


def raw_post(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    """A complete HTTP/1.1 POST, byte for byte."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def code_apply_of_size(size: int, delivery_id: str) -> bytes:
    """A ``code.apply`` delivery body of exactly ``size`` bytes."""
    bare = compact_json({"method": "code.apply", "params": {"code": "", "nonce": 0}, "id": delivery_id})
    body = compact_json(
        {"method": "code.apply", "params": {"code": "W" * (size - len(bare)), "nonce": 0}, "id": delivery_id}
    )
    assert len(body) == size
    return body


def refusals(result: Scrape) -> dict[str, float]:
    return {
        labels["reason"]: value for labels, value in result.samples("whitebit_exporter_webhook_listener_rejected_total")
    }


NO_REFUSALS = dict.fromkeys(REFUSAL_REASONS, 0.0)


@pytest.mark.parametrize("size", [60 * 1024, 65536], ids=["60KiB", "max_body_bytes"])
async def test_a_genuine_delivery_up_to_the_body_limit_is_accepted_end_to_end(
    start_exporter: StartExporter, size: int
) -> None:
    exporter = await start_exporter()
    body = code_apply_of_size(size, f"big-{size}")
    headers = {"Content-Type": "application/json", **sign_body(body, key="PUBLIC-KEY-MAIN", secret=HOOK_SECRET)}
    assert len(headers["X-TXC-PAYLOAD"]) >= 80 * 1024  # ten times aiohttp's default limit of 8190 bytes

    status, _, reply = await exchange_raw(exporter.webhooks_url, raw_post("/webhooks/whitebit", body, headers))

    assert (status, json.loads(reply)) == (200, {"status": "ok"})
    result = await scrape(exporter.metrics_url)
    assert result.value("whitebit_webhooks_verified_total", account="main", method="code.apply") == 1
    assert result.value("whitebit_webhooks_rejected_total", account="main", reason="body_too_large") == 0
    assert refusals(result) == NO_REFUSALS


def test_header_limits_follow_the_body_limit() -> None:
    assert header_limits(65536) == {"max_line_size": 87384 + 1024, "max_field_size": 87384 + 1024, "max_headers": 128}
    assert header_limits(1024) == {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 128}
    assert header_limits(1024 * 1024)["max_field_size"] == 4 * 349526 + 1024


REFUSED: list[tuple[str, Callable[[int], bytes], int, str]] = [
    (
        "a header value one byte over the limit",
        lambda limit: raw_post("/webhooks/whitebit", b"{}", {"X-Big": "a" * (limit + 1)}),
        400,
        "header_too_large",
    ),
    (
        "a request line over the limit",
        lambda limit: b"GET /" + b"a" * limit + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        400,
        "header_too_large",
    ),
    (
        "more header fields than allowed",
        lambda limit: raw_post("/webhooks/whitebit", b"{}", {f"X-H{i}": "1" for i in range(MAX_HEADERS)}),
        400,
        "header_too_large",
    ),
    (
        "a header line without a colon",
        lambda limit: b"POST /webhooks/whitebit HTTP/1.1\r\nHost: x\r\nX-TXC-PAYLOAD eyJ\r\nContent-Length: 0\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "TLS spoken to the plain-HTTP port",
        lambda limit: bytes.fromhex("160301020001000001fc0303") + b"\x00" * 32,
        400,
        "bad_request",
    ),
    (
        "a malformed chunked body",
        lambda limit: b"POST /webhooks/zerohash HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        400,
        "bad_request",
    ),
    (
        "an unknown path",
        lambda limit: b"GET /wp-login.php HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        404,
        "not_found",
    ),
    (
        "a body over the limit on an unknown path",
        lambda limit: raw_post("/webhooks/other", b"x" * 70_000, {}),
        404,
        "not_found",
    ),
    (
        "a wrong method on a receiver",
        lambda limit: b"PUT /webhooks/whitebit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        405,
        "method_not_allowed",
    ),
    (
        "a wrong method on the verification path",
        lambda limit: b"DELETE /whiteBIT-verification HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        405,
        "method_not_allowed",
    ),
]


@pytest.mark.parametrize(("case", "make", "status", "reason"), REFUSED, ids=[r[0] for r in REFUSED])
async def test_what_the_listener_refuses_before_a_receiver_is_answered_and_counted_by_reason(
    start_exporter: StartExporter, case: str, make: Callable[[int], bytes], status: int, reason: str
) -> None:
    exporter = await start_exporter()
    before = await scrape(exporter.metrics_url)
    limit = header_limits(exporter.config.webhooks.max_body_bytes)["max_field_size"]

    got, headers, _ = await exchange_raw(exporter.webhooks_url, make(limit))

    assert got == status
    after = await scrape(exporter.metrics_url)
    assert refusals(after) == {**NO_REFUSALS, reason: 1.0}
    # No receiver saw it.
    for name in ("whitebit_webhooks_received_total", "zerohash_webhooks_received_total"):
        assert sum(v for _, v in after.samples(name)) == sum(v for _, v in before.samples(name)) == 0
    if status != 400:  # aiohttp's parser answers its 400s itself, with its own headers
        assert headers["server"] == "whitebit-exporter"


async def test_refusals_are_logged_rate_limited_without_the_requests_bytes(
    start_exporter: StartExporter, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = await start_exporter()
    caplog.set_level(logging.DEBUG)
    marker = "hooksecret-MARKER-0123456789"
    for index in range(20):
        request = f"POST /webhooks/whitebit HTTP/1.1\r\nHost: x\r\nX-Stolen {marker}-{index}\r\n\r\n".encode()
        assert (await exchange_raw(exporter.webhooks_url, request))[0] == 400
        too_long = raw_post("/webhooks/whitebit", b"{}", {"X-TXC-SIGNATURE": marker * 4000})
        assert (await exchange_raw(exporter.webhooks_url, too_long))[0] == 400

    assert refusals(await scrape(exporter.metrics_url)) == {**NO_REFUSALS, "bad_request": 20, "header_too_large": 20}
    lines = [r for r in caplog.records if r.getMessage() == "request refused by the webhook listener"]
    assert [(r.levelname, r.__dict__["reason"], r.__dict__["detail"]) for r in lines] == [
        ("WARNING", "bad_request", "BadHttpMessage"),
        ("WARNING", "header_too_large", "LineTooLong"),
    ]
    assert all(r.__dict__["remote"] == "127.0.0.1" and r.__dict__["status"] == 400 for r in lines)
    # aiohttp's own error line (a traceback quoting the request) is not written.
    assert not [r for r in caplog.records if r.name == "aiohttp.server"]
    assert marker not in "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)


async def test_a_listener_counts_into_the_collector_it_is_given(make_config: Callable[..., Config]) -> None:
    # The listener's counter is rendered by the collector its caller gives it (and registers).
    config = make_config(ACCOUNTS)
    collector = SeriesValues()
    registry = CollectorRegistry()
    registry.register(collector)
    app = create_webhook_app(config.webhooks, config.whitebit, [EchoReceiver()], collector=collector)
    assert app[LISTENER_REFUSALS].collector is collector
    listener = Listener("webhooks", app, config.webhooks.listen_address, shutdown_timeout=1.0)
    metrics = Listener(
        "metrics",
        create_metrics_app(registry, HealthRegistry(), "test"),
        config.web.listen_address,
        shutdown_timeout=1.0,
    )
    await listener.start()
    await metrics.start()
    try:
        assert (await exchange_raw(listener.url, b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n"))[0] == 400
        request = b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        assert (await exchange_raw(listener.url, request))[0] == 404
        assert refusals(await scrape(metrics.url)) == {**NO_REFUSALS, "bad_request": 1, "not_found": 1}
    finally:
        await listener.stop()
        await metrics.stop()
