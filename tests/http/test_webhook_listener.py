"""The webhook listener: domain verification, the receivers' routes, and nothing else on the internet."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from exporter.config.schema import Config, WhitebitAccountConfig, WhitebitWebhookConfig
from exporter.http.webhook_listener import create_webhook_app
from tests.exporters import ACCOUNTS, API_KEY, API_SECRET, CLOSED_PORT_URLS, HOOK_SECRET, StartExporter


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


async def test_post_to_verification_is_405(start_exporter: StartExporter, http: aiohttp.ClientSession) -> None:
    exporter = await start_exporter()
    async with http.post(exporter.webhooks_url + "/whiteBIT-verification", data=b"{}") as response:
        assert response.status == 405


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
