"""The exporter relays what it receives: a signed WhiteBIT delivery reaches the backend byte for byte,
with the signature headers WhiteBIT sent, and the backend's own check of that signature passes."""

from __future__ import annotations

import base64
import dataclasses
import socket
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiohttp import web

from exporter.app import Exporter
from exporter.config.schema import Config, RelayConfig, RelayTargetConfig, WhitebitAccountConfig, WhitebitWebhookConfig
from exporter.relay.sender import DELIVERY_ID_HEADER
from exporter.whitebit.signing import compact_json, sign_body, sign_payload
from tests.helpers import scrape, wait_for

KEY, SECRET = "whk-relay-PUBLIC", "whsec-relay-0123456789"


@pytest.fixture
async def backend() -> AsyncIterator[tuple[list[tuple[bytes, dict[str, str]]], str]]:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def handle(request: web.Request) -> web.Response:
        received.append((await request.read(), dict(request.headers)))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/whitebit", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield received, f"http://127.0.0.1:{runner.addresses[0][1]}/whitebit"
    await runner.cleanup()


async def test_a_verified_delivery_reaches_the_backend_as_whitebit_sent_it(
    backend: tuple[list[tuple[bytes, dict[str, str]]], str], make_config: Callable[..., Config]
) -> None:
    received, url = backend
    account = WhitebitAccountConfig(name="main", webhook=WhitebitWebhookConfig(public_key=KEY, secrets=(SECRET,)))
    config = make_config([account])
    config = Config(**{**config.__dict__, "relay": RelayConfig((RelayTargetConfig(name="backend", url=url),))})
    exporter = Exporter(config)
    await exporter.start()
    try:
        bodies = [
            compact_json({"method": "code.apply", "params": {"code": f"WBX-{n}", "nonce": n}, "id": f"relay-{n}"})
            for n in range(1, 4)
        ]
        async with aiohttp.ClientSession() as http:
            for body in bodies:
                async with http.post(
                    f"{exporter.webhooks_url}/webhooks/whitebit",
                    data=body,
                    headers=sign_body(body, key=KEY, secret=SECRET),
                ) as answer:
                    assert answer.status == 200
        await wait_for(lambda: len(received) == 3, timeout=10)
        # The delivered outcome is counted right after the answer: wait for it, then read the rest.
        result = await scrape(exporter.metrics_url)

        async def counted() -> bool:
            nonlocal result
            result = await scrape(exporter.metrics_url)
            return result.value("whitebit_exporter_relay_deliveries_total", target="backend", outcome="delivered") == 3

        await wait_for(counted, timeout=10)
        assert result.value("whitebit_exporter_relay_deliveries_total", target="backend", outcome="retry") == 0
        assert result.value("whitebit_exporter_relay_pending_deliveries", target="backend") == 0
        assert result.value("whitebit_exporter_relay_oldest_pending_seconds", target="backend") == 0
        assert result.value("whitebit_exporter_relay_dead_letters", target="backend") == 0
        assert result.value("whitebit_exporter_relay_attempt_duration_seconds_count", target="backend") == 3
        assert result.value("whitebit_exporter_task_running", task="relay:backend") == 1
    finally:
        await exporter.stop()

    assert [body for body, _ in received] == bodies  # byte for byte, in the order received
    for body, headers in received:
        # The backend checks WhiteBIT's signature exactly as it would on a delivery from WhiteBIT.
        assert headers["X-TXC-PAYLOAD"] == base64.b64encode(body).decode()
        assert headers["X-TXC-SIGNATURE"] == sign_payload(headers["X-TXC-PAYLOAD"], SECRET)
        assert headers["X-TXC-APIKEY"] == KEY
    assert [headers[DELIVERY_ID_HEADER] for _, headers in received] == ["relay-1", "relay-2", "relay-3"]


async def test_a_dead_target_holds_back_neither_intake_nor_another_target(
    backend: tuple[list[tuple[bytes, dict[str, str]]], str], make_config: Callable[..., Config]
) -> None:
    received, url = backend
    with socket.socket() as refusing:  # bound, never listening: every connection refused
        refusing.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{refusing.getsockname()[1]}/hooks"
        account = WhitebitAccountConfig(name="main", webhook=WhitebitWebhookConfig(public_key=KEY, secrets=(SECRET,)))
        config = make_config([account])
        targets = (RelayTargetConfig(name="dead", url=dead_url), RelayTargetConfig(name="backend", url=url))
        exporter = Exporter(dataclasses.replace(config, relay=RelayConfig(targets)))
        await exporter.start()
        try:
            async with aiohttp.ClientSession() as http:
                for n in range(1, 21):
                    body = compact_json({"method": "code.apply", "params": {"nonce": n}, "id": f"both-{n}"})
                    async with http.post(
                        f"{exporter.webhooks_url}/webhooks/whitebit",
                        data=body,
                        headers=sign_body(body, key=KEY, secret=SECRET),
                    ) as answer:
                        assert answer.status == 200  # intake answers whatever the targets do
            await wait_for(lambda: len(received) == 20, timeout=10, message="the live target did not get all")

            async def dead_target_owes_all() -> bool:
                result = await scrape(exporter.metrics_url)
                return (
                    result.value("whitebit_exporter_relay_pending_deliveries", target="dead") == 20
                    and (result.value("whitebit_exporter_relay_deliveries_total", target="dead", outcome="retry") or 0)
                    >= 1
                    and result.value("whitebit_exporter_relay_pending_deliveries", target="backend") == 0
                )

            await wait_for(dead_target_owes_all, timeout=10, message="the dead target's backlog does not show")
        finally:
            await exporter.stop()
