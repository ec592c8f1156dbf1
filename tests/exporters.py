"""Exporters on loopback for the tests of the runtime and its listeners (a pytest plugin of tests/conftest.py).

``start_exporter`` starts Exporters on port 0 and stops each after the test; ``http`` is a client
session. The accounts are webhook-only unless a test asks for API accounts, which point at a closed
loopback port so nothing dials WhiteBIT.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from exporter.app import Exporter
from exporter.config.schema import (
    Config,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
    ZerohashConfig,
    ZerohashWebhookConfig,
)

API_KEY = "apikey-0123456789-SECRET-abcdef"
API_SECRET = "apisecret-0123456789-SECRET-abcdef"
HOOK_SECRET = "hooksecret-0123456789-SECRET"
ZH_SECRET = "zerohash-hmac-0123456789-SECRET"

# Webhook-only accounts: these tests are about the runtime's listeners and health plumbing, so nothing may
# dial out (API accounts would connect to WhiteBIT; their sources are tested against the simulator elsewhere).
ACCOUNTS = (
    WhitebitAccountConfig(
        name="main",
        webhook=WhitebitWebhookConfig(public_key="PUBLIC-KEY-MAIN", secrets=(HOOK_SECRET,)),
    ),
    WhitebitAccountConfig(
        name="trading",
        webhook=WhitebitWebhookConfig(public_key="PUBLIC-KEY-TRADING", secrets=(HOOK_SECRET + "1",)),
    ),
    WhitebitAccountConfig(
        name="payments",
        webhook=WhitebitWebhookConfig(public_key="PUBLIC-KEY-PAYMENTS", secrets=(HOOK_SECRET + "2",)),
    ),
)
# API accounts for the few tests that need one: pointed at a closed loopback port, so their sources fail
# fast instead of dialing WhiteBIT.
CLOSED_PORT_URLS = {"rest_url": "http://127.0.0.1:9", "ws_url": "ws://127.0.0.1:9/ws"}
API_ACCOUNTS = (
    WhitebitAccountConfig(
        name="main",
        api_key=API_KEY,
        api_secret=API_SECRET,
        markets=("BTC_USDT",),
        webhook=WhitebitWebhookConfig(public_key="PUBLIC-KEY-MAIN", secrets=(HOOK_SECRET,)),
        **CLOSED_PORT_URLS,
    ),
    WhitebitAccountConfig(name="trading", api_key=API_KEY + "2", api_secret=API_SECRET + "2", **CLOSED_PORT_URLS),
    ACCOUNTS[2],
)
ZEROHASH = ZerohashConfig(ZerohashWebhookConfig(hmac_secrets=(ZH_SECRET,)))

StartExporter = Callable[..., Awaitable[Exporter]]


@pytest.fixture
async def start_exporter(make_config: Callable[..., Config]) -> AsyncIterator[StartExporter]:
    """Start Exporters on loopback port 0; every one is stopped after the test."""
    started: list[Exporter] = []

    async def start(config: Config | None = None, **kwargs: Any) -> Exporter:
        exporter = Exporter(config or make_config(ACCOUNTS, zerohash=ZEROHASH), **kwargs)
        started.append(exporter)
        await exporter.start()
        return exporter

    yield start
    for exporter in started:
        await exporter.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
