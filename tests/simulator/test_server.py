"""The simulator's control API index: ``GET /_simulator/`` lists every control endpoint the server answers."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from exporter.simulator.backend import BackendTrouble
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings

README = Path(__file__).resolve().parents[2] / "README.md"

#: The control endpoints as the README documents them (method, path).
DOCUMENTED = {
    ("GET", "/_simulator/"),
    ("GET", "/_simulator/state"),
    ("GET", "/_simulator/stats"),
    ("POST", "/_simulator/ws/drop"),
    ("POST", "/_simulator/webhooks/drop"),
    ("POST", "/_simulator/rest/force-429"),
    ("POST", "/_simulator/scenario/step"),
    ("GET", "/_simulator/backend"),
    ("POST", "/_simulator/backend"),
}


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    account = SimulatedAccount("main", "api-key", "api-secret", webhook_key="hook-key", webhook_secret="hook-secret")
    # Webhooks go to a port nobody listens on: the drop endpoint needs a sender, not a receiver.
    made = Simulator(SimulatorSettings(accounts=(account,), webhook_url="http://127.0.0.1:9/webhooks/whitebit"))
    await made.start()
    yield made
    await made.stop()


async def test_the_index_lists_every_control_endpoint_with_what_it_does(simulator: Simulator) -> None:
    async with aiohttp.ClientSession() as http, http.get(simulator.control_url) as response:
        assert response.status == 200
        assert response.content_type == "application/json"
        index = await response.json()
    assert simulator.control_url == f"{simulator.url}/_simulator/"
    endpoints = index["endpoints"]
    assert {(e["method"], e["path"]) for e in endpoints} == DOCUMENTED
    assert len(endpoints) == len(DOCUMENTED)  # HEAD, which aiohttp adds to each GET, is not listed
    descriptions = [e["description"] for e in endpoints]
    assert all(descriptions) and len(set(descriptions)) == len(descriptions)
    assert all("\n" not in d and "  " not in d and "``" not in d for d in descriptions)
    [trouble] = [e["description"] for e in endpoints if (e["method"], e["path"]) == ("POST", "/_simulator/backend")]
    assert all(f.name in trouble for f in dataclasses.fields(BackendTrouble))


async def test_every_listed_endpoint_is_served(simulator: Simulator) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(simulator.control_url) as response:
            endpoints = (await response.json())["endpoints"]
        for endpoint in endpoints:
            # An empty JSON object: a valid request for most, a 400 naming what is missing for the others.
            body = {"json": {}} if endpoint["method"] == "POST" else {}
            async with http.request(endpoint["method"], simulator.url + endpoint["path"], **body) as response:
                assert response.status in (200, 400), (endpoint, response.status, await response.text())


def test_the_readme_documents_every_control_endpoint() -> None:
    text = README.read_text()
    documented = set(re.findall(r"`(GET|POST) (/_simulator/[\w/-]*)`", text))
    assert documented == DOCUMENTED
