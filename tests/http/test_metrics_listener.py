"""The metrics listener: landing page, /-/healthy, /-/ready, and nothing but GET on its paths."""

from __future__ import annotations

import aiohttp
import pytest

from exporter import __version__
from tests.exporters import StartExporter


async def test_landing_page_links_to_endpoints_and_shows_version(
    start_exporter: StartExporter, http: aiohttp.ClientSession
) -> None:
    exporter = await start_exporter()
    async with http.get(exporter.metrics_url + "/") as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        body = await response.text()
    for link in ('href="metrics"', 'href="-/healthy"', 'href="-/ready"'):
        assert link in body
    assert __version__ in body
    # The relative links resolve to working endpoints.
    for path in ("/metrics", "/-/healthy", "/-/ready"):
        async with http.get(exporter.metrics_url + path) as response:
            assert response.status == 200, path


async def test_healthy_answers_ok_even_when_not_ready(
    start_exporter: StartExporter, http: aiohttp.ClientSession
) -> None:
    exporter = await start_exporter()
    exporter.health.register("websocket", "main")
    async with http.get(exporter.metrics_url + "/-/healthy") as response:
        assert response.status == 200
        assert (await response.text()).strip() == "OK"


async def test_ready_is_503_with_a_line_per_failing_source_then_200(
    start_exporter: StartExporter, http: aiohttp.ClientSession
) -> None:
    exporter = await start_exporter()
    websocket = exporter.health.register("websocket", "main")
    rest = exporter.health.register("rest", "trading")
    websocket.failing("disconnected (connection refused)")
    async with http.get(exporter.metrics_url + "/-/ready") as response:
        assert response.status == 503
        lines = (await response.text()).splitlines()
    assert lines == ["websocket main: disconnected (connection refused)", "rest trading: starting"]

    websocket.ok()
    rest.ok()
    async with http.get(exporter.metrics_url + "/-/ready") as response:
        assert response.status == 200
        assert (await response.text()).strip() == "ready"

    # A source serving without a part another source covers: ready, with a line saying so.
    websocket.ok(note="channel balanceMargin: error 2; the collateral wallet is polled over REST")
    async with http.get(exporter.metrics_url + "/-/ready") as response:
        assert response.status == 200
        lines = (await response.text()).splitlines()
    assert lines == [
        "ready",
        "degraded: websocket main: channel balanceMargin: error 2; the collateral wallet is polled over REST",
    ]


@pytest.mark.parametrize("path", ["/-/healthy", "/-/ready", "/metrics", "/"])
async def test_other_methods_on_metrics_listener_paths_get_405(
    start_exporter: StartExporter, http: aiohttp.ClientSession, path: str
) -> None:
    exporter = await start_exporter()
    async with http.post(exporter.metrics_url + path) as response:
        assert response.status == 405
    async with http.head(exporter.metrics_url + path) as response:
        assert response.status == 200


async def test_metrics_listener_does_not_serve_webhook_paths(
    start_exporter: StartExporter, http: aiohttp.ClientSession
) -> None:
    exporter = await start_exporter()
    async with http.get(exporter.metrics_url + "/whiteBIT-verification") as response:
        assert response.status == 404
