"""TLS and basic auth of the listeners over real loopback connections (--web.config.file, webhooks.tls).

Every test makes its own CA, server and client certificates under tmp_path (tests/certs.py) and talks to a
started Exporter with real TLS clients: aiohttp for HTTP, asyncio streams for handshakes alone.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import ssl
from collections.abc import Callable
from pathlib import Path

import aiohttp
import bcrypt
import pytest

from exporter.app import Exporter
from exporter.config.schema import Config, ServerTlsConfig, WebSecurityConfig
from exporter.whitebit.signing import compact_json, sign_body
from tests.certs import CLIENT_SAN, Pki, issue_pki, reissue_server
from tests.exporters import ACCOUNTS, HOOK_SECRET, ZEROHASH, StartExporter
from tests.helpers import Scrape, scrape, wait_for

USER = "prometheus"
PASSWORD = "correct horse battery staple"
# Cost 4, bcrypt's lowest, keeps the tests fast; the checks are the same at any cost.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
REJECTED = "whitebit_exporter_metrics_listener_auth_rejected_total"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return issue_pki(tmp_path / "pki")


def server_tls(pki: Pki, **settings: object) -> ServerTlsConfig:
    return dataclasses.replace(
        ServerTlsConfig(cert_file=str(pki.server_cert), key_file=str(pki.server_key)), **settings
    )


def with_security(config: Config, security: WebSecurityConfig) -> Config:
    return dataclasses.replace(config, web=dataclasses.replace(config.web, security=security))


async def start_secured(
    start_exporter: StartExporter, make_config: Callable[..., Config], security: WebSecurityConfig
) -> Exporter:
    return await start_exporter(with_security(make_config(ACCOUNTS, zerohash=ZEROHASH), security))


def basic(user: str, password: str) -> dict[str, str]:
    """An ``Authorization: Basic`` header."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def get(url: str, context: ssl.SSLContext, auth: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context, headers=auth) as response:
        return response.status, dict(response.headers), await response.text()


async def scrape_secured(exporter: Exporter, context: ssl.SSLContext) -> Scrape:
    status, _, text = await get(exporter.metrics_url + "/metrics", context, basic(USER, PASSWORD))
    assert status == 200, text
    return Scrape(text)


def rejections(result: Scrape) -> dict[str, float]:
    return {labels["reason"]: value for labels, value in result.samples(REJECTED)}


async def test_metrics_over_tls_need_the_right_password_and_refusals_are_counted(
    start_exporter: StartExporter, make_config: Callable[..., Config], pki: Pki
) -> None:
    security = WebSecurityConfig(tls=server_tls(pki), basic_auth_users=((USER, HASH),))
    exporter = await start_secured(start_exporter, make_config, security)
    assert exporter.metrics_url.startswith("https://127.0.0.1:")
    context = pki.client_context()
    url = exporter.metrics_url + "/metrics"

    status, _, text = await get(url, context, basic(USER, PASSWORD))
    assert status == 200
    assert Scrape(text).value("whitebit_up", account="main") == 1.0

    for auth in (basic(USER, "wrong password"), basic("intruder", PASSWORD), None):
        status, headers, text = await get(url, context, auth)
        assert (status, headers.get("WWW-Authenticate"), text) == (401, "Basic", "Unauthorized\n")
        assert "whitebit" not in text

    assert rejections(await scrape_secured(exporter, context)) == {
        "missing_credentials": 1.0,
        "wrong_credentials": 2.0,
    }


async def test_healthy_answers_without_a_password_and_everything_else_needs_one(
    start_exporter: StartExporter, make_config: Callable[..., Config], pki: Pki
) -> None:
    security = WebSecurityConfig(tls=server_tls(pki), basic_auth_users=((USER, HASH),))
    exporter = await start_secured(start_exporter, make_config, security)
    context = pki.client_context()
    status, _, body = await get(exporter.metrics_url + "/-/healthy", context)
    assert (status, body) == (200, "OK\n")
    for path in ("/", "/metrics", "/-/ready", "/no-such-path"):
        status, _, _ = await get(exporter.metrics_url + path, context)
        assert status == 401, path
    # Once authenticated, an unknown path is the router's 404.
    status, _, _ = await get(exporter.metrics_url + "/no-such-path", context, basic(USER, PASSWORD))
    assert status == 404


async def test_configured_headers_are_on_every_answer_even_a_refusal(
    start_exporter: StartExporter, make_config: Callable[..., Config], pki: Pki
) -> None:
    headers = (("X-Frame-Options", "deny"), ("Strict-Transport-Security", "max-age=31536000"))
    security = WebSecurityConfig(tls=server_tls(pki), headers=headers, basic_auth_users=((USER, HASH),))
    exporter = await start_secured(start_exporter, make_config, security)
    context = pki.client_context()
    for auth in (basic(USER, PASSWORD), None):
        _, answer_headers, _ = await get(exporter.metrics_url + "/metrics", context, auth)
        assert {name: answer_headers.get(name) for name, _ in headers} == dict(headers)


async def test_require_and_verify_client_cert_refuses_a_client_without_one(
    start_exporter: StartExporter, make_config: Callable[..., Config], pki: Pki
) -> None:
    tls = server_tls(pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca))
    exporter = await start_secured(start_exporter, make_config, WebSecurityConfig(tls=tls))
    url = exporter.metrics_url + "/metrics"

    status, _, text = await get(url, pki.client_context(certificate=True))
    assert status == 200 and "whitebit_up" in text
    with pytest.raises(aiohttp.ClientError):
        await get(url, pki.client_context(certificate=False))


@pytest.mark.parametrize(
    ("sans", "status"),
    [(("other.example", CLIENT_SAN), 200), (("other.example",), 403)],
    ids=["allowed", "not-allowed"],
)
async def test_a_client_certificate_without_an_allowed_san_gets_403(
    start_exporter: StartExporter, make_config: Callable[..., Config], pki: Pki, sans: tuple[str, ...], status: int
) -> None:
    tls = server_tls(
        pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki.ca), client_allowed_sans=sans
    )
    exporter = await start_secured(start_exporter, make_config, WebSecurityConfig(tls=tls))
    context = pki.client_context(certificate=True)
    for path in ("/metrics", "/-/healthy"):  # a certificate is checked on every path
        answer, _, text = await get(exporter.metrics_url + path, context)
        assert answer == status, path
    if status == 403:
        assert text == "Forbidden\n"
        assert exporter.registry.get_sample_value(REJECTED, {"reason": "client_certificate"}) == 2
    else:
        assert exporter.registry.get_sample_value(REJECTED, {"reason": "client_certificate"}) == 0


async def test_min_version_tls13_refuses_a_tls12_client(
    start_exporter: StartExporter, make_config: Callable[..., Config], pki: Pki
) -> None:
    exporter = await start_secured(
        start_exporter, make_config, WebSecurityConfig(tls=server_tls(pki, min_version="TLS13"))
    )
    url = exporter.metrics_url + "/-/healthy"
    status, _, _ = await get(url, pki.client_context())
    assert status == 200
    with pytest.raises(aiohttp.ClientError):
        await get(url, pki.client_context(maximum_version=ssl.TLSVersion.TLSv1_2))


async def test_the_webhook_listener_serves_a_signed_delivery_over_tls(
    start_exporter: StartExporter, make_config: Callable[..., Config], pki: Pki
) -> None:
    config = make_config(ACCOUNTS, zerohash=ZEROHASH)
    config = dataclasses.replace(config, webhooks=dataclasses.replace(config.webhooks, tls=server_tls(pki)))
    exporter = await start_exporter(config)
    assert exporter.webhooks_url.startswith("https://")
    body = compact_json({"method": "code.apply", "params": {"code": "TLS-1", "nonce": 0}, "id": "tls-delivery-1"})
    headers = {"Content-Type": "application/json", **sign_body(body, key="PUBLIC-KEY-MAIN", secret=HOOK_SECRET)}
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            exporter.webhooks_url + "/webhooks/whitebit", data=body, headers=headers, ssl=pki.client_context()
        ) as response,
    ):
        assert (response.status, json.loads(await response.text())) == (200, {"status": "ok"})
    result = await scrape(exporter.metrics_url)
    assert result.value("whitebit_webhooks_verified_total", account="main", method="code.apply") == 1


async def peer_common_name(url: str, context: ssl.SSLContext) -> str:
    host, port = url.removeprefix("https://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port), ssl=context)
    try:
        certificate = writer.get_extra_info("peercert")
        return str(dict(pair[0] for pair in certificate["subject"])["commonName"])
    finally:
        writer.close()
        await writer.wait_closed()


async def test_a_renewed_certificate_is_served_without_a_restart(
    start_exporter: StartExporter, make_config: Callable[..., Config], pki: Pki
) -> None:
    exporter = await start_secured(start_exporter, make_config, WebSecurityConfig(tls=server_tls(pki)))
    context = pki.client_context()
    assert await peer_common_name(exporter.metrics_url, context) == "localhost"

    reissue_server(pki, "renewed")

    async def renewed() -> bool:
        return await peer_common_name(exporter.metrics_url, context) == "renewed"

    await wait_for(renewed, timeout=10, interval=0.1, message="the renewed certificate was never served")


async def test_tls_handshakes_count_against_the_connection_cap_and_time_out(
    start_exporter: StartExporter, make_config: Callable[..., Config], pki: Pki
) -> None:
    config = make_config(ACCOUNTS, zerohash=ZEROHASH)
    webhooks = dataclasses.replace(config.webhooks, tls=server_tls(pki), max_connections=2, request_timeout=1.0)
    exporter = await start_exporter(dataclasses.replace(config, webhooks=webhooks))
    host, port = exporter.webhooks_url.removeprefix("https://").rsplit(":", 1)

    async def series(name: str) -> float | None:
        return (await scrape(exporter.metrics_url)).value(name, listener="webhooks")

    # Plain TCP connections that never start a handshake: two are held, the third is closed at once.
    silent = [await asyncio.open_connection(host, int(port)) for _ in range(3)]
    async with asyncio.timeout(5):
        assert await silent[2][0].read() == b""
    assert await series("whitebit_exporter_listener_connections") == 2
    assert await series("whitebit_exporter_listener_connections_refused_total") == 1

    # The two held ones are closed when their handshake has not come within request_timeout.
    for reader, _ in silent[:2]:
        async with asyncio.timeout(5):
            assert await reader.read() == b""

    async def released() -> bool:
        return await series("whitebit_exporter_listener_connections") == 0

    await wait_for(released, timeout=5)
    for _, writer in silent:
        writer.close()
    # The places are free again for real clients.
    status, _, body = await get(exporter.webhooks_url + "/whiteBIT-verification", pki.client_context())
    assert status == 200 and json.loads(body)
