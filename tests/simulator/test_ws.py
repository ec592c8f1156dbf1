"""The simulator's private WebSocket speaks WhiteBIT's protocol exactly, over a real socket.

Every test runs a real aiohttp server on a loopback port and talks to it with a real
``websockets`` client. Absence of a frame is never checked by waiting: the test sends a later
request (or causes a later push) and asserts that the *first* frame to arrive is that later one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal as D
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from exporter.simulator.listing import LISTED_ASSETS
from exporter.simulator.model import (
    SIDE_BUY,
    SIDE_SELL,
    TYPE_STOP_LIMIT,
    Exchange,
    MarginBalance,
    OrderEvent,
    SpotBalance,
    margin_request_wire,
    spot_wire,
)
from exporter.simulator.tokens import TokenIssuer
from exporter.simulator.ws import WebSocketHub
from tests.helpers import wait_for

RECV_TIMEOUT = 5.0


class FakeClock:
    """A settable clock shared by the exchange, the token issuer and the hub."""

    def __init__(self, now: float = 1_700_000_000.75) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Sim:
    exchange: Exchange
    tokens: TokenIssuer
    hub: WebSocketHub
    clock: FakeClock
    url: str


class Client:
    """A thin JSON layer over a websockets connection, numbering requests from 1."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._next_id = 1

    async def send(self, method: str, params: Any = None, *, request_id: Any = None) -> Any:
        if request_id is None:
            request_id = self._next_id
            self._next_id += 1
        await self.ws.send(json.dumps({"id": request_id, "method": method, "params": [] if params is None else params}))
        return request_id

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def call(self, method: str, params: Any = None, *, request_id: Any = None) -> dict[str, Any]:
        """Send a request and return the next frame, which must be its reply."""
        sent_id = await self.send(method, params, request_id=request_id)
        reply = await self.recv()
        assert reply.get("id") == sent_id, f"expected the reply to {sent_id}, got {reply}"
        return reply

    async def authorize(self, sim: Sim, account: str) -> None:
        reply = await self.call("authorize", [sim.tokens.issue(account), "public"])
        assert reply == {"id": reply["id"], "result": {"status": "success"}, "error": None}

    async def subscribe(self, channel: str, params: list[Any]) -> None:
        reply = await self.call(f"{channel}_subscribe", params)
        assert reply["error"] is None and reply["result"] == {"status": "success"}, reply

    async def closed(self, timeout: float = RECV_TIMEOUT) -> ConnectionClosed:
        """Read until the server closes the connection; the ConnectionClosed it ends with."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                await asyncio.wait_for(self.ws.recv(), max(deadline - loop.time(), 0.001))
            except ConnectionClosed as exc:
                return exc


def ok(request_id: Any, result: Any) -> dict[str, Any]:
    return {"id": request_id, "result": result, "error": None}


def err(request_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"id": request_id, "result": None, "error": {"code": code, "message": message}}


@pytest.fixture
def start_sim(aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Callable[..., Awaitable[Sim]]:
    async def start(**hub_options: Any) -> Sim:
        clock = FakeClock()
        exchange = Exchange(["BTC_USDT", "ETH_USDT"], clock=clock)
        for name in ("alice", "bob"):
            exchange.add_account(
                name,
                api_key=f"key-{name}",
                api_secret=f"secret-{name}",
                spot={"USDT": "100000", "BTC": "2", "ETH": "5", "TRX": "1000"},
                collateral={"USDT": "500", "BTC": "1"},
            )
        tokens = TokenIssuer(clock=clock)
        hub = WebSocketHub(exchange, tokens, clock=clock, **hub_options)
        app = web.Application()
        hub.register(app)
        server = await aiohttp_server(app)
        return Sim(exchange, tokens, hub, clock, f"ws://127.0.0.1:{server.port}/ws")

    return start


@pytest.fixture
async def sim(start_sim: Callable[..., Awaitable[Sim]]) -> Sim:
    return await start_sim()


@asynccontextmanager
async def client(sim: Sim, account: str | None = None) -> AsyncIterator[Client]:
    async with connect(sim.url, ping_interval=None) as ws:
        c = Client(ws)
        if account is not None:
            await c.authorize(sim, account)
        yield c


# --- service methods --------------------------------------------------------------------------


async def test_ping_answers_pong_with_the_same_id_and_no_jsonrpc_field(sim):
    async with client(sim) as c:
        assert await c.call("ping", request_id=0) == {"id": 0, "result": "pong", "error": None}


async def test_ping_without_params_is_answered(sim):
    # The 2023 official Python SDK sends {"id":0,"method":"ping"} with no params.
    async with client(sim) as c:
        await c.ws.send(json.dumps({"id": 0, "method": "ping"}))
        assert await c.recv() == ok(0, "pong")


async def test_time_is_the_server_clock_in_integer_seconds(sim):
    async with client(sim) as c:
        reply = await c.call("time")
        assert reply == ok(1, 1_700_000_000)
        assert type(reply["result"]) is int


async def test_unknown_method_is_error_4(sim):
    async with client(sim, "alice") as c:
        assert await c.call("lastprice_subscribe", ["BTC_USDT"]) == err(2, 4, "method not found")
        # Pushes are server-to-client only.
        assert await c.call("balanceSpot_update", []) == err(3, 4, "method not found")


async def test_malformed_requests_get_error_1_echoing_the_id(sim):
    async with client(sim) as c:
        assert await c.call("ping", request_id="seven") == err("seven", 1, "invalid argument")
        await c.ws.send(json.dumps({"id": 8, "method": "ping", "params": {"not": "an array"}}))
        assert await c.recv() == err(8, 1, "invalid argument")


# --- authorization ----------------------------------------------------------------------------


async def test_authorize_with_a_fresh_token_succeeds(sim):
    async with client(sim) as c:
        token = sim.tokens.issue("alice")
        assert await c.call("authorize", [token, "public"]) == ok(1, {"status": "success"})
        assert sim.hub.connections("alice") == 1


@pytest.mark.parametrize("source", ["python sdk", "go-sdk", ""])
async def test_authorize_accepts_any_second_param(sim, source):
    async with client(sim) as c:
        assert await c.call("authorize", [sim.tokens.issue("alice"), source]) == ok(1, {"status": "success"})


async def test_authorize_rejects_an_unknown_token(sim):
    async with client(sim) as c:
        assert await c.call("authorize", ["not-a-token", "public"]) == err(1, 1, "invalid argument")
        assert await c.call("balanceSpot_request", []) == err(2, 6, "require authentication")


async def test_authorize_rejects_a_reused_token(sim):
    token = sim.tokens.issue("alice")
    async with client(sim) as first, client(sim) as second:
        assert await first.call("authorize", [token, "public"]) == ok(1, {"status": "success"})
        assert await second.call("authorize", [token, "public"]) == err(1, 1, "invalid argument")
        assert sim.hub.connections("alice") == 1


async def test_authorize_rejects_an_expired_token(sim):
    token = sim.tokens.issue("alice")
    sim.clock.advance(sim.tokens.ttl + 1)
    async with client(sim) as c:
        assert await c.call("authorize", [token, "public"]) == err(1, 1, "invalid argument")


@pytest.mark.parametrize("params", [[], ["token-only"], [42, "public"]])
async def test_authorize_with_malformed_params_is_error_1(sim, params):
    async with client(sim) as c:
        assert await c.call("authorize", params) == err(1, 1, "invalid argument")


PRIVATE_CALLS = [
    ("balanceSpot_request", []),
    ("balanceSpot_subscribe", ["USDT"]),
    ("balanceSpot_unsubscribe", []),
    ("balanceMargin_request", []),
    ("balanceMargin_subscribe", ["USDT"]),
    ("balanceMargin_unsubscribe", []),
    ("ordersPending_request", ["BTC_USDT", 0, 10]),
    ("ordersPending_subscribe", ["BTC_USDT"]),
    ("ordersPending_unsubscribe", []),
]


@pytest.mark.parametrize(("method", "params"), PRIVATE_CALLS)
async def test_private_methods_before_authorize_are_error_6(sim, method, params):
    async with client(sim) as c:
        assert await c.call(method, params) == err(1, 6, "require authentication")


async def test_authorization_and_subscriptions_belong_to_one_connection(sim):
    async with client(sim, "alice") as first:
        await first.subscribe("balanceSpot", [])
        assert sim.hub.subscriptions("alice") == {"balanceSpot": None}
        async with client(sim) as second:
            assert await second.call("balanceSpot_request", []) == err(1, 6, "require authentication")
    await wait_for(lambda: sim.hub.connections() == 0)
    async with client(sim) as again:
        # A new connection starts unauthorized and with no subscriptions.
        assert await again.call("ordersPending_subscribe", ["BTC_USDT"]) == err(1, 6, "require authentication")
        assert sim.hub.subscriptions(None) == {}


# --- balanceSpot ------------------------------------------------------------------------------


async def test_balance_spot_request_returns_every_asset_or_the_requested_ones(sim):
    sim.hub.listing.zero_balances = "omitted"
    sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.5"), price=D("50000"))
    spot = sim.exchange.accounts["alice"].spot
    async with client(sim, "alice") as c:
        everything = await c.call("balanceSpot_request", [])
        assert everything == ok(2, {asset: spot_wire(balance) for asset, balance in spot.items()})
        assert everything["result"]["USDT"] == {"available": "75000", "freeze": "25000"}
        # An asset the account does not hold is answered with zeros, as in WhiteBIT's example.
        some = await c.call("balanceSpot_request", ["USDT", "SOL"])
        assert some == ok(
            3, {"SOL": {"available": "0", "freeze": "0"}, "USDT": {"available": "75000", "freeze": "25000"}}
        )


async def test_balance_spot_update_carries_only_the_changed_asset_with_absolute_values(sim):
    sim.hub.spot_update_form = "array"
    async with client(sim, "alice") as c:
        await c.subscribe("balanceSpot", [])
        sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"))
        push = await c.recv()
        assert push == {
            "id": None,
            "method": "balanceSpot_update",
            "params": [{"USDT": {"available": "95000", "freeze": "5000"}}],
        }


async def test_balance_spot_update_comes_as_an_array_or_as_the_guides_single_object(sim):
    # The channel page shows params as an array of objects; a docs guide's example as one object.
    async with client(sim, "alice") as c:
        await c.subscribe("balanceSpot", [])
        sim.hub.spot_update_form = "object"
        sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"))
        assert (await c.recv())["params"] == {"USDT": {"available": "95000", "freeze": "5000"}}
        sim.hub.spot_update_form = "array"
        sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"))
        assert (await c.recv())["params"] == [{"USDT": {"available": "90000", "freeze": "10000"}}]
        sim.hub.spot_update_form = "both"
        forms = set()
        for _ in range(24):
            sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.001"), price=D("50000"))
            forms.add(type((await c.recv())["params"]).__name__)
        assert forms == {"list", "dict"}


async def test_balance_spot_subscription_filters_assets(sim):
    sim.hub.spot_update_form = "array"
    async with client(sim, "alice") as c:
        await c.subscribe("balanceSpot", ["BTC"])
        sim.exchange.place_order("alice", "ETH_USDT", SIDE_BUY, D("1"), price=D("3000"))  # USDT only
        order = sim.exchange.place_order("alice", "BTC_USDT", SIDE_SELL, D("0.5"), price=D("61000"))  # BTC only
        assert await c.recv() == {
            "id": None,
            "method": "balanceSpot_update",
            "params": [{"BTC": {"available": "1.5", "freeze": "0.5"}}],
        }
        sim.exchange.fill_order("alice", order.id)  # BTC and USDT change; only BTC is subscribed
        assert await c.recv() == {
            "id": None,
            "method": "balanceSpot_update",
            "params": [{"BTC": {"available": "1.5", "freeze": "0"}}],
        }


async def test_subscribing_again_replaces_the_previous_subscription(sim):
    sim.hub.spot_update_form = "array"
    async with client(sim, "alice") as c:
        await c.subscribe("balanceSpot", ["USDT"])
        await c.subscribe("balanceSpot", ["BTC"])
        assert sim.hub.subscriptions("alice") == {"balanceSpot": ["BTC"]}
        sim.exchange.place_order("alice", "ETH_USDT", SIDE_BUY, D("1"), price=D("3000"))  # USDT: no longer subscribed
        sim.exchange.place_order("alice", "BTC_USDT", SIDE_SELL, D("1"), price=D("61000"))  # BTC
        push = await c.recv()
        assert push["params"] == [{"BTC": {"available": "1", "freeze": "1"}}]


async def test_unsubscribe_stops_pushes_and_requires_empty_params(sim):
    async with client(sim, "alice") as c:
        await c.subscribe("balanceSpot", [])
        assert await c.call("balanceSpot_unsubscribe", ["USDT"]) == err(3, 1, "invalid argument")
        assert await c.call("balanceSpot_unsubscribe", []) == ok(4, {"status": "success"})
        assert sim.hub.subscriptions("alice") == {}
        sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"))
        assert await c.call("ping") == ok(5, "pong")


async def test_balance_subscribe_refuses_non_string_assets(sim):
    async with client(sim, "alice") as c:
        assert await c.call("balanceSpot_subscribe", ["USDT", 5]) == err(2, 1, "invalid argument")
        assert await c.call("balanceMargin_request", [None]) == err(3, 1, "invalid argument")


# --- balanceMargin ----------------------------------------------------------------------------


async def test_balance_margin_request_uses_long_keys(sim):
    async with client(sim, "alice") as c:
        reply = await c.call("balanceMargin_request", ["USDT"])
        assert reply == ok(
            2,
            {
                "USDT": {
                    "balance": "500",
                    "borrow": "0",
                    "available_without_borrow": "500",
                    "available_with_borrow": "5000",
                }
            },
        )
        sim.hub.listing.zero_balances = "omitted"
        everything = await c.call("balanceMargin_request", [])
        collateral = sim.exchange.accounts["alice"].collateral
        assert everything["result"] == {asset: margin_request_wire(b) for asset, b in collateral.items()}


@pytest.mark.parametrize("method", ["balanceSpot_request", "balanceMargin_request"])
async def test_a_whole_wallet_snapshot_lists_every_asset_at_zero_or_leaves_zeros_out(sim, method):
    # Both forms are documented (docs/protocol.md#main-balance); by default each snapshot picks one.
    # An asset the account held and now holds none of.
    account = sim.exchange.accounts["alice"]
    if method == "balanceSpot_request":
        emptied, account.spot["TRX"] = "TRX", SpotBalance()
    else:
        emptied, account.collateral["BTC"] = "BTC", MarginBalance()
    async with client(sim, "alice") as c:
        sim.hub.listing.zero_balances = "listed"
        listed = (await c.call(method, []))["result"]
        assert set(listed) == set(sim.hub.listing.assets()) and len(listed) >= LISTED_ASSETS
        assert set(listed["COIN007"].values()) == {"0"}
        sim.hub.listing.zero_balances = "omitted"
        omitted = (await c.call(method, []))["result"]
        assert emptied in listed and emptied not in omitted and "COIN007" not in omitted
        assert "USDT" in omitted
        sim.hub.listing.zero_balances = "both"
        sizes = {len((await c.call(method, []))["result"]) for _ in range(24)}
        assert sizes == {len(omitted), len(listed)}


async def test_balance_margin_update_uses_abbreviated_keys_in_an_array(sim):
    async with client(sim, "alice") as c:
        await c.subscribe("balanceMargin", ["USDT"])
        sim.exchange.borrow("alice", "BTC", D("0.1"))  # not subscribed
        sim.exchange.borrow("alice", "USDT", D("100"))
        assert await c.recv() == {
            "id": None,
            "method": "balanceMargin_update",
            "params": [{"a": "USDT", "B": "500", "b": "100", "av": "400", "ab": "4000"}],
        }


# --- ordersPending ----------------------------------------------------------------------------


@pytest.mark.parametrize("newest_first", [True, False])
async def test_orders_pending_request_pages_in_the_listing_order(sim, newest_first):
    assert sim.exchange.list_newest_first  # newest first unless told otherwise
    sim.exchange.list_newest_first = newest_first
    placed = []
    for i in range(5):
        placed.append(sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.01"), price=D(50000 + i)))
        sim.clock.advance(1)
    sim.exchange.place_order("alice", "ETH_USDT", SIDE_BUY, D("1"), price=D("3000"))
    listed = placed[::-1] if newest_first else placed
    async with client(sim, "alice") as c:
        reply = await c.call("ordersPending_request", ["BTC_USDT", 1, 2])
        assert reply["error"] is None
        assert list(reply["result"]) == ["limit", "offset", "total", "records"]
        assert reply["result"] == {"limit": 2, "offset": 1, "total": 5, "records": [o.to_ws() for o in listed[1:3]]}
        tail = await c.call("ordersPending_request", ["BTC_USDT", 4, 100])
        assert [r["id"] for r in tail["result"]["records"]] == [listed[4].id]
        past_end = await c.call("ordersPending_request", ["BTC_USDT", 10, 10])
        assert past_end["result"] == {"limit": 10, "offset": 10, "total": 5, "records": []}


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ([], {"code": 1, "message": "invalid argument"}),
        (["BTC_USDT"], {"code": 1, "message": "invalid argument"}),
        ([None, 0, 10], {"code": 1, "message": "invalid argument"}),
        (["NOPE_USDT", 0, 10], {"code": 9, "message": "market NOPE_USDT does not exist"}),
        (["BTC_USDT", 0, 101], {"code": 1, "message": "invalid argument"}),
        (["BTC_USDT", 0, 0], {"code": 1, "message": "invalid argument"}),
        (["BTC_USDT", -1, 10], {"code": 1, "message": "invalid argument"}),
        (["BTC_USDT", "0", 10], {"code": 1, "message": "invalid argument"}),
    ],
)
async def test_orders_pending_request_refuses_bad_params(sim, params, error):
    async with client(sim, "alice") as c:
        assert await c.call("ordersPending_request", params) == {"id": 2, "result": None, "error": error}


async def test_orders_pending_request_accepts_the_maximum_limit(sim):
    async with client(sim, "alice") as c:
        assert await c.call("ordersPending_request", ["BTC_USDT", 0, 100]) == ok(
            2, {"limit": 100, "offset": 0, "total": 0, "records": []}
        )


async def test_orders_pending_subscribe_requires_existing_markets(sim):
    async with client(sim, "alice") as c:
        assert await c.call("ordersPending_subscribe", ["BTC_USDT", "NOPE_USDT"]) == err(
            2, 9, "market NOPE_USDT does not exist"
        )
        assert await c.call("ordersPending_subscribe", [["BTC_USDT"]]) == err(3, 1, "invalid argument")
        assert sim.hub.subscriptions("alice") == {}


async def test_orders_pending_updates_follow_the_documented_lifecycle(sim):
    emitted: list[OrderEvent] = []
    sim.exchange.subscribe(lambda e: emitted.append(e) if isinstance(e, OrderEvent) else None)
    x = sim.exchange
    async with client(sim, "alice") as c:
        await c.subscribe("ordersPending", ["BTC_USDT"])

        order = x.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.3"), price=D("50000"))
        x.place_order("alice", "ETH_USDT", SIDE_BUY, D("1"), price=D("3000"))  # other market: not sent
        x.fill_order("alice", order.id, D("0.1"))
        x.fill_order("alice", order.id, D("0.1"))
        x.fill_order("alice", order.id)
        first = [await c.recv() for _ in range(4)]
        assert [(m["params"][0], m["params"][1]["id"], m["params"][1]["status"]) for m in first] == [
            (1, order.id, "OPEN"),
            (2, order.id, "PARTIALLY_FILLED"),
            (2, order.id, "PARTIALLY_FILLED"),
            (3, order.id, "FILLED"),
        ]
        assert first[2]["params"][1]["left"] == "0.1" and first[2]["params"][1]["deal_stock"] == "0.2"

        resting = x.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"), client_order_id="mon-1")
        replacement = x.modify_order("alice", resting.id, price=D("49000"))
        again = x.modify_order("alice", replacement.id, price=D("48000"), new_first=True)
        stop = x.place_order(
            "alice",
            "BTC_USDT",
            SIDE_SELL,
            D("0.2"),
            order_type=TYPE_STOP_LIMIT,
            price=D("55000"),
            activation_price=D("56000"),
        )
        x.activate_stop("alice", stop.id)
        instant = x.place_instant_fill("alice", "BTC_USDT", SIDE_BUY, D("0.01"), D("60000"))
        x.cancel_order("alice", again.id)
        rest = [await c.recv() for _ in range(9)]
        assert [(m["params"][0], m["params"][1]["id"]) for m in rest] == [
            (1, resting.id),
            (3, resting.id),  # modify: finish of the old id...
            (1, replacement.id),  # ...then new with a new id
            (1, again.id),  # new_first: the other way round
            (3, replacement.id),
            (1, stop.id),
            (1, stop.id),  # stop activation: a second "new" with the same id
            (3, instant.id),  # instant fill: a lone finish
            (3, again.id),
        ]
        assert {m["params"][1]["client_order_id"] for m in rest[:5]} == {"mon-1"}
        assert rest[2]["params"][1]["id"] != resting.id
        assert rest[7]["params"][1]["status"] == "FILLED" and rest[8]["params"][1]["status"] == "CANCELED"

    # Exactly what the exchange emitted for the subscribed market, in the same order.
    expected = [[e.event_id, e.order] for e in emitted if e.order["market"] == "BTC_USDT"]
    assert [m["params"] for m in first + rest] == expected
    assert all(m["id"] is None and m["method"] == "ordersPending_update" for m in first + rest)


async def test_orders_pending_subscribe_with_an_empty_list_means_all_markets(sim):
    async with client(sim, "alice") as c:
        await c.subscribe("ordersPending", [])
        order = sim.exchange.place_order("alice", "ETH_USDT", SIDE_BUY, D("1"), price=D("3000"))
        push = await c.recv()
        assert push == {"id": None, "method": "ordersPending_update", "params": [1, order.to_ws()]}


async def test_pushes_keep_the_exchange_order_across_channels(sim):
    async with client(sim, "alice") as c:
        await c.subscribe("ordersPending", ["BTC_USDT"])
        await c.subscribe("balanceSpot", [])
        order = sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"))
        sim.exchange.cancel_order("alice", order.id)
        methods = [(await c.recv())["method"] for _ in range(4)]
        assert methods == ["balanceSpot_update", "ordersPending_update", "balanceSpot_update", "ordersPending_update"]


async def test_pushes_of_another_account_never_leak(sim):
    sim.hub.spot_update_form = "array"
    async with client(sim, "alice") as alice, client(sim, "bob") as bob:
        for c in (alice, bob):
            await c.subscribe("balanceSpot", [])
            await c.subscribe("balanceMargin", [])
            await c.subscribe("ordersPending", [])
        bob_order = sim.exchange.place_order("bob", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"))
        sim.exchange.borrow("bob", "USDT", D("1"))
        alice_order = sim.exchange.place_order("alice", "ETH_USDT", SIDE_SELL, D("1"), price=D("3100"))
        alice_frames = [await alice.recv() for _ in range(2)]
        assert alice_frames[0]["params"] == [{"ETH": {"available": "4", "freeze": "1"}}]
        assert alice_frames[1]["params"] == [1, alice_order.to_ws()]
        bob_frames = [await bob.recv() for _ in range(3)]
        methods = [f["method"] for f in bob_frames]
        assert methods == ["balanceSpot_update", "ordersPending_update", "balanceMargin_update"]
        assert bob_frames[1]["params"][1]["id"] == bob_order.id
        assert await bob.call("ping") == ok(5, "pong")  # nothing else was queued for bob


# --- connection behaviour ---------------------------------------------------------------------


async def test_invalid_json_closes_the_connection(sim):
    async with client(sim, "alice") as c:
        await c.ws.send("{not json")
        closed = await c.closed()
        assert closed.rcvd is not None and closed.rcvd.code == 1007
    await wait_for(lambda: sim.hub.connections() == 0)


async def test_json_that_is_not_a_request_object_closes_the_connection(sim):
    async with client(sim) as c:
        await c.ws.send("[1, 2, 3]")
        await c.closed()


async def test_idle_connection_is_closed_even_while_pushes_flow(start_sim):
    sim = await start_sim(idle_timeout=0.5)
    pushes = 0

    async def keep_pushing() -> None:
        while True:
            order = sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.01"), price=D("50000"))
            sim.exchange.cancel_order("alice", order.id)
            await asyncio.sleep(0.02)

    async with client(sim, "alice") as c:
        await c.subscribe("ordersPending", [])
        pusher = asyncio.create_task(keep_pushing())
        try:
            while True:
                try:
                    frame = await c.recv(timeout=10)
                except ConnectionClosed as exc:
                    closed = exc
                    break
                assert frame["method"] == "ordersPending_update"
                pushes += 1
        finally:
            pusher.cancel()
            await asyncio.gather(pusher, return_exceptions=True)
    assert pushes > 0
    assert closed.rcvd is not None and closed.rcvd.code == 1000
    await wait_for(lambda: sim.hub.connections() == 0)


async def test_client_pings_keep_the_connection_open_past_the_idle_timeout(start_sim):
    sim = await start_sim(idle_timeout=1.0)
    loop = asyncio.get_running_loop()
    async with client(sim) as pinger, client(sim) as quiet:
        started = loop.time()
        closed = asyncio.create_task(quiet.closed(timeout=10))
        # Ping at a tenth of the timeout until the quiet connection was closed and as long again.
        while not closed.done() or loop.time() - started < 2.5:
            assert (await pinger.call("ping"))["result"] == "pong"
            await asyncio.sleep(0.1)
        assert (await closed).rcvd.code == 1000
        assert sim.hub.connections() == 1


async def test_drop_closes_abruptly_without_a_close_frame(sim):
    async with client(sim, "alice") as c:
        assert await sim.hub.drop() == 1
        closed = await c.closed()
        assert closed.rcvd is None
    assert sim.hub.connections() == 0


async def test_drop_gently_sends_going_away(sim):
    async with client(sim, "alice") as c:
        assert await sim.hub.drop(abrupt=False) == 1
        closed = await c.closed()
        assert closed.rcvd is not None and closed.rcvd.code == 1001


async def test_drop_of_one_account_leaves_the_others(sim):
    async with client(sim, "alice") as alice, client(sim, "bob") as bob:
        assert await sim.hub.drop("bob") == 1
        await bob.closed()
        assert await alice.call("ping") == ok(2, "pong")
        assert sim.hub.connections() == 1


async def test_silence_stops_pongs_replies_and_pushes_until_lifted(sim):
    async with client(sim, "alice") as c:
        await c.subscribe("balanceSpot", [])
        await c.subscribe("ordersPending", [])
        sim.hub.silence("alice", True)
        await c.send("ping")  # id 4: never answered
        sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.1"), price=D("50000"))  # never pushed
        # A silent server still reads: once this unsubscribe took effect, the ping was handled too.
        await c.send("ordersPending_unsubscribe")
        await wait_for(lambda: sim.hub.subscriptions("alice") == {"balanceSpot": None})
        sim.hub.silence("alice", False)
        assert await c.call("ping") == ok(6, "pong")


async def test_silence_of_everyone_covers_new_connections(sim):
    sim.hub.silence(None, True)
    async with client(sim) as c:
        await c.send("ping")  # id 1: never answered
        await c.send("authorize", [sim.tokens.issue("alice"), "public"])  # id 2: handled, not answered
        await wait_for(lambda: sim.hub.connections("alice") == 1)
        sim.hub.silence(None, False)
        assert await c.call("ping") == ok(3, "pong")


async def test_send_raw_delivers_frames_verbatim(sim):
    async with client(sim, "alice") as alice, client(sim, "bob") as bob:
        garbage = "\x00not json at all{"
        wrong_type = '{"id":null,"method":"balanceSpot_update","params":{"USDT":5}}'
        assert await sim.hub.send_raw("alice", garbage) == 1
        assert await sim.hub.send_raw("alice", wrong_type) == 1
        assert await asyncio.wait_for(alice.ws.recv(), RECV_TIMEOUT) == garbage
        assert await asyncio.wait_for(alice.ws.recv(), RECV_TIMEOUT) == wrong_type
        assert await alice.call("ping") == ok(2, "pong")
        assert await bob.call("ping") == ok(2, "pong")  # bob got nothing before his pong


async def test_requests_over_the_per_minute_limit_get_error_7(start_sim):
    sim = await start_sim(request_limit_per_minute=5)
    async with client(sim, "alice") as c:  # authorize is request 1
        for request_id in range(2, 6):
            assert await c.call("ping") == ok(request_id, "pong")
        assert await c.call("ping") == err(6, 7, "too many requests")
        assert await c.call("balanceSpot_request", []) == err(7, 7, "too many requests")
        sim.clock.advance(60)
        assert await c.call("ping") == ok(8, "pong")


async def test_the_request_limit_is_per_connection(start_sim):
    sim = await start_sim(request_limit_per_minute=2)
    async with client(sim) as first, client(sim) as second:
        await first.call("ping")
        await first.call("ping")
        assert (await first.call("ping"))["error"]["code"] == 7
        assert await second.call("ping") == ok(1, "pong")


async def test_a_client_that_falls_behind_is_dropped_and_logged(start_sim, caplog):
    sim = await start_sim(queue_size=2)
    caplog.set_level(logging.WARNING, logger="exporter.simulator.ws")
    async with client(sim, "alice") as c:
        await c.subscribe("ordersPending", [])
        # Synchronous exchange calls: the sender cannot run in between, so the queue overflows.
        for _ in range(5):
            order = sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.01"), price=D("50000"))
            sim.exchange.cancel_order("alice", order.id)
        await c.closed()
    await wait_for(lambda: sim.hub.connections() == 0)
    [dropped] = [vars(r) for r in caplog.records if r.getMessage() == "ws connection dropped"]
    assert (dropped["reason"], dropped["account"], dropped["queue_size"]) == ("send_queue_full", "alice", 2)


async def test_shutdown_closes_every_socket():
    exchange = Exchange(["BTC_USDT"])
    exchange.add_account("alice", api_key="k", api_secret="s")
    hub = WebSocketHub(exchange, TokenIssuer())
    app = web.Application()
    hub.register(app)
    server = TestServer(app)
    await server.start_server()
    try:
        async with connect(f"ws://127.0.0.1:{server.port}/ws", ping_interval=None) as ws:
            await ws.send(json.dumps({"id": 1, "method": "ping", "params": []}))
            assert json.loads(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)) == ok(1, "pong")
            await server.close()
            closed = await Client(ws).closed()
            assert closed.rcvd is not None and closed.rcvd.code == 1001
    finally:
        await server.close()
    assert hub.connections() == 0


# --- channel errors and interleaving ---------------------------------------------------------


async def test_a_failing_channel_answers_its_requests_with_the_error_for_that_account_only(sim):
    sim.hub.fail_channel("alice", "balanceMargin", 3)
    async with client(sim, "alice") as alice, client(sim, "bob") as bob:
        assert await alice.call("balanceMargin_subscribe", []) == err(2, 3, "service unavailable")
        assert await alice.call("balanceMargin_request", []) == err(3, 3, "service unavailable")
        assert (await alice.call("balanceSpot_request", []))["error"] is None  # other channels work
        assert (await bob.call("balanceMargin_request", []))["error"] is None  # other accounts too
        assert sim.hub.subscriptions("alice") == {}
        sim.hub.fail_channel("alice", "balanceMargin", None)
        await alice.subscribe("balanceMargin", [])
        assert sim.hub.subscriptions("alice") == {"balanceMargin": None}
        sim.hub.fail_channel("alice", "balanceMargin", 2, "no collateral account")
        assert await alice.call("balanceMargin_request", []) == err(6, 2, "no collateral account")
        # A subscription made before keeps delivering.
        sim.exchange.borrow("alice", "USDT", D(1))
        assert (await alice.recv())["method"] == "balanceMargin_update"
        assert sim.hub.requests_served["balanceMargin_request"] == 3
    with pytest.raises(ValueError, match="unknown channel"):
        sim.hub.fail_channel("alice", "deals")


async def read_round(c: Client, request_id: int) -> tuple[bool, bool]:
    """Read a reply to ``request_id`` and one push, in whatever order; (reply came first, push first)."""
    first = await c.recv()
    second = await c.recv()
    assert {first.get("id"), second.get("id")} == {request_id, None}, (first, second)
    return first.get("id") == request_id, first.get("id") is None


async def test_with_interleave_replies_and_pushes_overtake_each_other_but_each_lane_keeps_its_order(start_sim):
    sim = await start_sim(interleave=0.03)
    sim.hub.rng.seed(7)
    push_overtook_reply = reply_overtook_push = False
    async with client(sim, "alice") as c:
        await c.subscribe("ordersPending", ["BTC_USDT"])
        for _ in range(20):
            # The page is computed before the order is placed: its push may still arrive first.
            served = sim.hub.requests_served["ordersPending_request"]
            request_id = await c.send("ordersPending_request", ["BTC_USDT", 0, 1])
            await wait_for(lambda served=served: sim.hub.requests_served["ordersPending_request"] > served)
            sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.001"), price=D(50000))
            _, push_first = await read_round(c, request_id)
            push_overtook_reply |= push_first
            # The order is placed before the page is computed: the page's reply may arrive first.
            sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.001"), price=D(50000))
            request_id = await c.send("ordersPending_request", ["BTC_USDT", 0, 1])
            reply_first, _ = await read_round(c, request_id)
            reply_overtook_push |= reply_first
        assert push_overtook_reply and reply_overtook_push
        # Within a lane the order holds: many pushes at once arrive as the exchange emitted them.
        placed = [
            sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.001"), price=D(50000)).id for _ in range(30)
        ]
        assert [(await c.recv())["params"][1]["id"] for _ in placed] == placed
        # And replies keep the order of the requests.
        sent = [await c.send("ping") for _ in range(10)]
        assert [(await c.recv())["id"] for _ in sent] == sent


async def test_without_interleave_everything_arrives_in_the_order_it_was_computed(start_sim):
    sim = await start_sim(interleave=0.0)
    async with client(sim, "alice") as c:
        await c.subscribe("ordersPending", ["BTC_USDT"])
        for _ in range(10):
            served = sim.hub.requests_served["ordersPending_request"]
            request_id = await c.send("ordersPending_request", ["BTC_USDT", 0, 1])
            await wait_for(lambda served=served: sim.hub.requests_served["ordersPending_request"] > served)
            sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.001"), price=D(50000))
            assert await read_round(c, request_id) == (True, False)


async def test_a_reply_delay_lets_later_pushes_overtake_every_reply(start_sim):
    sim = await start_sim(interleave=0.0, reply_delay=0.2)
    async with client(sim, "alice") as c:
        await c.subscribe("ordersPending", ["BTC_USDT"])
        request_id = await c.send("ordersPending_request", ["BTC_USDT", 0, 1])
        await wait_for(lambda: sim.hub.requests_served["ordersPending_request"] == 1)
        sim.exchange.place_order("alice", "BTC_USDT", SIDE_BUY, D("0.001"), price=D(50000))
        assert await read_round(c, request_id) == (False, True)


@pytest.mark.parametrize("option", ["interleave", "reply_delay"])
async def test_negative_delays_are_refused(option):
    with pytest.raises(ValueError, match="must not be negative"):
        WebSocketHub(Exchange(["BTC_USDT"]), TokenIssuer(), **{option: -1})
