"""An independent WhiteBIT client signs requests the simulator accepts.

ccxt's ``whitebit`` adapter was written against the real exchange, not against our signing code,
so a ``fetch_balance`` that works here shows the simulator checks the documented scheme rather than
its own implementation of it. ccxt sends the nonce as a string and ``nonceWindow`` false unless its
``nonceWindow`` option is set; both modes are exercised. The negative cases show that WhiteBIT's
answers for a wrong secret, a stale nonce and a mismatched payload reach a client as WhiteBIT's.
"""

from __future__ import annotations

import json
import random
from decimal import Decimal
from typing import Any

import aiohttp
import ccxt.async_support as ccxt
import pytest
from aiohttp import web

from exporter.simulator.model import SIDE_BUY, Exchange
from exporter.simulator.rest import RestApi
from exporter.simulator.tokens import TokenIssuer
from exporter.whitebit.signing import compact_json, encode_payload, sign_payload, sign_request

KEY, SECRET = "ccxt-key", "ccxt-secret"


@pytest.fixture
def exchange() -> Exchange:
    x = Exchange(["BTC_USDT", "ETH_USDT"], rng=random.Random(3))
    x.add_account(
        "main",
        api_key=KEY,
        api_secret=SECRET,
        main={"USDT": "1250.25"},
        spot={"USDT": "10000", "BTC": "0.75", "ETH": "3.5"},
    )
    return x


@pytest.fixture
async def served(aiohttp_server: Any, exchange: Exchange) -> tuple[RestApi, str]:
    api = RestApi(exchange, TokenIssuer())
    app = web.Application()
    api.register(app)
    server = await aiohttp_server(app)
    return api, str(server.make_url("")).rstrip("/")


def whitebit_client(base: str, *, secret: str = SECRET, nonce_window: bool | None = None) -> Any:
    """ccxt's WhiteBIT adapter with every v1/v2/v4 URL pointed at the simulator."""
    client = ccxt.whitebit({"apiKey": KEY, "secret": secret})
    client.urls["api"] = {
        "v1": {"public": f"{base}/api/v1/public", "private": f"{base}/api/v1"},
        "v2": {"public": f"{base}/api/v2/public"},
        "v4": {"public": f"{base}/api/v4/public", "private": f"{base}/api/v4"},
    }
    if nonce_window is not None:
        client.options["nonceWindow"] = nonce_window
    return client


def spot_balances(exchange: Exchange) -> dict[str, dict[str, Decimal]]:
    return {
        asset: {"free": b.available, "used": b.freeze, "total": b.available + b.freeze}
        for asset, b in exchange.accounts["main"].spot.items()
        if b.available or b.freeze
    }


def as_decimals(balance: dict[str, Any], assets: list[str]) -> dict[str, dict[str, Decimal]]:
    return {a: {k: Decimal(str(balance[a][k])) for k in ("free", "used", "total")} for a in assets}


@pytest.mark.parametrize("nonce_window", [None, True], ids=["ccxt-default-no-window", "nonce-window"])
async def test_ccxt_fetch_balance_returns_the_simulators_spot_balances(served, exchange, nonce_window):
    api, base = served
    exchange.place_order("main", "BTC_USDT", SIDE_BUY, Decimal("0.1"), price=Decimal("50000"))
    client = whitebit_client(base, nonce_window=nonce_window)
    try:
        first = await client.fetch_balance()
        second = await client.fetch_balance()  # a second signed call: the nonce rule held twice
    finally:
        await client.close()
    expected = spot_balances(exchange)
    assert as_decimals(first, sorted(expected)) == expected
    assert as_decimals(second, sorted(expected)) == expected
    assert expected["USDT"] == {"free": Decimal("5000"), "used": Decimal("5000"), "total": Decimal("10000")}
    assert api.stats()["/api/v4/trade-account/balance"] == {"requests": 2, "last_status": 200, "statuses": {"200": 2}}
    # ccxt loaded markets and currencies from the simulator's public endpoints first.
    assert api.stats()["/api/v4/public/markets"]["last_status"] == 200
    assert api.stats()["/api/v4/public/assets"]["last_status"] == 200


async def test_ccxt_fetch_main_balance(served):
    _, base = served
    client = whitebit_client(base)
    try:
        balance = await client.fetch_balance({"account": "main"})
    finally:
        await client.close()
    assert Decimal(str(balance["USDT"]["total"])) == Decimal("1250.25")


async def test_ccxt_with_a_wrong_secret_gets_unauthorized_request(served):
    api, base = served
    client = whitebit_client(base, secret="not-the-secret")
    try:
        with pytest.raises(ccxt.AuthenticationError, match=r"Unauthorized request\."):
            await client.fetch_balance()
    finally:
        await client.close()
    assert api.stats()["/api/v4/trade-account/balance"]["last_status"] == 401


async def test_ccxt_sees_a_forced_429_as_ddos_protection(served):
    api, base = served
    api.force_rate_limit("/api/v4/trade-account/balance", 1)
    client = whitebit_client(base)
    try:
        with pytest.raises(ccxt.DDoSProtection, match=r"Too many requests\."):
            await client.fetch_balance()
    finally:
        await client.close()


async def test_a_nonce_not_above_ccxts_last_one_is_429(served):
    api, base = served
    client = whitebit_client(base)
    try:
        await client.fetch_balance()
    finally:
        await client.close()
    used = api.authenticator.highest_nonce(KEY)
    assert used is not None
    signed = sign_request(
        "/api/v4/trade-account/balance", {}, api_key=KEY, api_secret=SECRET, nonce=used, nonce_window=False
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + signed.path, data=signed.body, headers=signed.headers) as response,
    ):
        assert response.status == 429
        assert await response.json() == {"code": 0, "message": "Too many requests.", "errors": {}}


async def test_a_payload_that_is_not_the_body_is_invalid_payload(served):
    api, base = served
    document = {"request": "/api/v4/trade-account/balance", "nonce": "1"}
    signed_body = compact_json(document)
    sent_body = json.dumps(document).encode()  # same data, different bytes
    payload = encode_payload(signed_body)
    headers = {
        "Content-Type": "application/json",
        "X-TXC-APIKEY": KEY,
        "X-TXC-PAYLOAD": payload,
        "X-TXC-SIGNATURE": sign_payload(payload, SECRET),
    }
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + "/api/v4/trade-account/balance", data=sent_body, headers=headers) as response,
    ):
        assert response.status == 400
        assert await response.json() == {"code": 9, "message": "Invalid payload."}
    assert api.authenticator.highest_nonce(KEY) is None  # rejected before the nonce was looked at
