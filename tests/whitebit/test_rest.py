"""The signed REST client against the simulator over real sockets: answers, error mapping, retries, nonces.

Retries are observed through three independent records: the simulator's own per-endpoint REST stats
(what reached the server), the client's ``whitebit_rest_*`` counters, and the backoff delays the
client asked to sleep (an injected sleep that also moves the limiter's clock, so a backoff costs no
wall time).
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.registry import CollectorRegistry

from exporter.core.logs import redact
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from exporter.whitebit.ratelimit import RateLimiter
from exporter.whitebit.rest import (
    COLLATERAL_SUMMARY,
    ENDPOINTS,
    MAIN_BALANCE,
    MAIN_HISTORY,
    TRADE_BALANCE,
    WEBSOCKET_TOKEN,
    AuthError,
    NoAnswerError,
    NonceError,
    PermissionDeniedError,
    RateLimitedError,
    ResponseError,
    RestClient,
    RestError,
    RestMetrics,
    RestTransport,
    UnavailableError,
    ValidationError,
    classify,
)
from exporter.whitebit.signing import HEADER_PAYLOAD, NonceSource, payload_matches_body
from tests.helpers import collected

KEY, SECRET = "client-test-key", "client-test-secret"


class Clock:
    """A monotonic clock for the limiter that an injected sleep moves forward (and records)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorSettings(accounts=(SimulatedAccount("acct", api_key=KEY, api_secret=SECRET),), seed=1))
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def transports() -> AsyncIterator[Callable[..., RestTransport]]:
    made: list[RestTransport] = []

    def make(limiter: RateLimiter | None = None, *, timeout: float = 10.0) -> RestTransport:
        limiter = limiter or RateLimiter()
        transport = RestTransport(limiter, RestMetrics(limiter), timeout=timeout)
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.close()


def make_client(
    transport: RestTransport,
    url: str,
    *,
    secret: str = SECRET,
    clock: Clock | None = None,
    **kwargs: Any,
) -> RestClient:
    extra: dict[str, Any] = {"sleep": clock.sleep} if clock is not None else {}
    return RestClient(
        account="acct",
        base_url=url,
        api_key=KEY,
        api_secret=secret,
        transport=transport,
        **extra,
        **kwargs,
    )


def rest_stats(sim: Simulator, path: str) -> dict[str, int]:
    entry = sim.rest.stats().get(path)
    return {} if entry is None else dict(entry["statuses"])


def sample(transport: RestTransport, name: str, **labels: str) -> float | None:
    return collected(transport.metrics, name, **labels)


# --- answers ---------------------------------------------------------------------------------


async def test_main_balance_is_returned_as_the_simulator_answers_it(simulator, transports) -> None:
    client = make_client(transports(), simulator.url)
    answer = await client.post(MAIN_BALANCE)
    # The answer may list every asset WhiteBIT has at 0, or leave zero balances out: both are documented.
    assert {ticker: entry for ticker, entry in answer.items() if entry != {"main_balance": "0"}} == {
        "BTC": {"main_balance": "1.5"},
        "ETH": {"main_balance": "20"},
        "USDT": {"main_balance": "25000"},
    }


async def test_params_are_sent_in_the_signed_body(simulator, transports) -> None:
    client = make_client(transports(), simulator.url)
    assert await client.post(TRADE_BALANCE, {"ticker": "BTC"}) == {
        "available": "4",
        "freeze": "0",
    }


async def test_websocket_token_is_a_token_the_simulator_issued(simulator, transports) -> None:
    client = make_client(transports(), simulator.url)
    token = await client.websocket_token()
    assert isinstance(token, str) and token
    assert simulator.tokens.redeem(token) == "acct"


async def test_body_is_sent_byte_for_byte_as_signed_and_each_retry_has_a_new_larger_nonce(
    transports,
) -> None:
    seen: list[tuple[bytes, str]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((body, request.headers[HEADER_PAYLOAD]))
        if len(seen) < 3:
            return web.json_response({"code": 0, "message": "Too many requests.", "errors": {}}, status=429)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post(MAIN_BALANCE, handler)
    server = await _serve(app)
    try:
        clock = Clock()
        client = make_client(transports(RateLimiter(clock=clock)), server.url, clock=clock)
        assert await client.post(MAIN_BALANCE, {"ticker": "ÜSDT"}) == {"ok": True}
    finally:
        await server.close()
    assert len(seen) == 3
    for body, payload in seen:
        assert payload_matches_body(body, payload)
    documents = [json.loads(body) for body, _ in seen]
    assert all(d["request"] == MAIN_BALANCE and d["nonceWindow"] is True and d["ticker"] == "ÜSDT" for d in documents)
    nonces = [d["nonce"] for d in documents]
    assert nonces == sorted(set(nonces))


# --- error mapping against the simulator's real error bodies ----------------------------------


async def test_wrong_secret_is_an_auth_error_and_is_not_retried(simulator, transports) -> None:
    clock = Clock()
    transport = transports(RateLimiter(clock=clock))
    client = make_client(transport, simulator.url, secret="not-the-secret", clock=clock)
    with pytest.raises(AuthError) as caught:
        await client.post(MAIN_BALANCE)
    assert caught.value.status == 401
    assert "Unauthorized request" in str(caught.value)
    assert "not-the-secret" not in str(caught.value)
    assert rest_stats(simulator, MAIN_BALANCE) == {"401": 1}
    assert clock.sleeps == []
    assert (
        sample(
            transport,
            "whitebit_rest_requests_total",
            account="acct",
            endpoint=MAIN_BALANCE,
            code="401",
        )
        == 1
    )


async def test_unknown_key_is_an_auth_error(simulator, transports) -> None:
    client = RestClient(
        account="acct",
        base_url=simulator.url,
        api_key="no-such-key",
        api_secret=SECRET,
        transport=transports(),
    )
    with pytest.raises(AuthError, match="Enable your key"):
        await client.post(MAIN_BALANCE)
    assert rest_stats(simulator, MAIN_BALANCE) == {"401": 1}


async def test_forced_429s_are_retried_with_growing_backoff_then_succeed(simulator, transports) -> None:
    clock = Clock()
    transport = transports(RateLimiter(clock=clock))
    client = make_client(transport, simulator.url, clock=clock)
    simulator.rest.force_rate_limit(MAIN_BALANCE, 3)

    assert "USDT" in await client.post(MAIN_BALANCE)

    assert rest_stats(simulator, MAIN_BALANCE) == {"200": 1, "429": 3}
    assert len(clock.sleeps) == 3
    for retry, delay in enumerate(clock.sleeps):
        assert 0.8 * 2**retry <= delay <= 2**retry
    labels = {"account": "acct", "endpoint": MAIN_BALANCE}
    assert sample(transport, "whitebit_rest_rate_limited_total", **labels) == 3
    assert sample(transport, "whitebit_rest_requests_total", code="429", **labels) == 3
    assert sample(transport, "whitebit_rest_requests_total", code="200", **labels) == 1


async def test_a_429_pauses_the_whole_family_for_every_account(simulator, transports) -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock)
    transport = transports(limiter)
    client = make_client(transport, simulator.url, clock=clock)
    simulator.rest.force_rate_limit(MAIN_BALANCE, 1)
    await client.post(MAIN_BALANCE)
    [delay] = clock.sleeps
    # The pause was set when the 429 came: it ends one backoff after that, for every caller.
    assert limiter.family(MAIN_BALANCE).paused_until == pytest.approx(1000.0 + delay)
    assert limiter.family(MAIN_HISTORY).paused_until == 0.0


async def test_429s_beyond_the_retries_raise_rate_limited(simulator, transports) -> None:
    clock = Clock()
    client = make_client(transports(RateLimiter(clock=clock)), simulator.url, clock=clock, max_retries=2)
    simulator.rest.force_rate_limit(MAIN_BALANCE, 10)
    with pytest.raises(RateLimitedError, match="Too many requests"):
        await client.post(MAIN_BALANCE)
    assert rest_stats(simulator, MAIN_BALANCE) == {"429": 3}
    assert len(clock.sleeps) == 2


async def test_maintenance_503_is_retried_then_unavailable_and_recovers(simulator, transports) -> None:
    clock = Clock()
    transport = transports(RateLimiter(clock=clock))
    client = make_client(transport, simulator.url, clock=clock)
    simulator.rest.set_unavailable(True)
    with pytest.raises(UnavailableError) as caught:
        await client.post(MAIN_BALANCE)
    assert caught.value.status == 503
    # The status and WhiteBIT's own message, in the reason /-/ready and the log show.
    assert str(caught.value) == f"{MAIN_BALANCE}: unavailable error (HTTP 503): Service Unavailable"
    assert rest_stats(simulator, MAIN_BALANCE) == {"503": client.max_retries + 1}
    assert len(clock.sleeps) == client.max_retries
    # Nominal 1, 2, 4, 8, 16 s (30 s cap), each shortened by at most 20 % jitter.
    assert all(0.8 * min(30, 2**i) <= d <= min(30, 2**i) for i, d in enumerate(clock.sleeps))

    simulator.rest.set_unavailable(False)
    assert "BTC" in await client.post(MAIN_BALANCE)


async def test_backoff_is_capped_at_30_seconds(transports) -> None:
    client = make_client(transports(), "http://127.0.0.1:1")
    rng = random.Random(7)
    delays = [client.backoff.delay(retry, rng) for retry in range(12)]
    assert all(0.8 * min(30, 2**r) <= d <= min(30, 2**r) for r, d in enumerate(delays))
    assert max(delays) <= 30.0


async def test_validation_error_carries_the_field_errors_and_is_not_retried(simulator, transports) -> None:
    clock = Clock()
    client = make_client(transports(RateLimiter(clock=clock)), simulator.url, clock=clock)
    with pytest.raises(ValidationError) as caught:
        await client.post(MAIN_HISTORY, {"transactionMethod": 1, "limit": 1000, "offset": 0})
    assert caught.value.status == 400
    assert caught.value.errors == {"limit": ["The limit may not be greater than 100."]}
    assert "limit: The limit may not be greater than 100." in str(caught.value)
    assert clock.sleeps == []

    with pytest.raises(ValidationError) as caught:
        await client.post(TRADE_BALANCE, {"ticker": "NOPE"})
    assert (caught.value.status, caught.value.code) == (422, 30)


async def test_a_skewed_clock_is_a_nonce_error_and_is_not_retried(simulator, transports) -> None:
    clock = Clock()
    client = make_client(
        transports(RateLimiter(clock=clock)),
        simulator.url,
        clock=clock,
        nonces=NonceSource(clock=lambda: time.time() - 30),
    )
    with pytest.raises(NonceError, match="more than 5 seconds lesser"):
        await client.post(COLLATERAL_SUMMARY)
    assert rest_stats(simulator, COLLATERAL_SUMMARY) == {"401": 1}
    assert clock.sleeps == []


async def test_no_answer_names_its_cause_after_retries_and_is_counted_as_error(
    transports,
) -> None:
    clock = Clock()
    transport = transports(RateLimiter(clock=clock))
    url = refused_url()
    retried: list[RestError] = []
    client = make_client(transport, url, clock=clock, max_retries=2).observed(retried.append)
    with pytest.raises(NoAnswerError) as caught:
        await client.post(MAIN_BALANCE)
    assert isinstance(caught.value, UnavailableError)
    assert str(caught.value) == f"{MAIN_BALANCE}: connection refused ({url.removeprefix('http://')})"
    assert len(clock.sleeps) == 2
    # The observer hears of each attempt about to be retried; the last failure is raised instead.
    assert [str(error) for error in retried] == [str(caught.value)] * 2
    assert (
        sample(
            transport,
            "whitebit_rest_requests_total",
            account="acct",
            endpoint=MAIN_BALANCE,
            code="error",
        )
        == 3
    )


async def test_an_answer_that_never_comes_is_timed_out_after_the_configured_timeout(transports) -> None:
    served: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(writer)
        await reader.read()  # reads the request, never answers, until the client gives up

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = make_client(transports(timeout=0.2), f"http://127.0.0.1:{port}", max_retries=0)
        with pytest.raises(NoAnswerError) as caught:
            await client.post(MAIN_BALANCE)
    finally:
        server.close()
        # Since Python 3.12 wait_closed() waits for the connections too: end the silent ones first.
        for writer in served:
            writer.transport.abort()
        await server.wait_closed()
    assert str(caught.value) == f"{MAIN_BALANCE}: timed out after 0.2s (127.0.0.1:{port})"


async def test_the_websocket_token_is_asked_once_and_its_failure_raised_at_once(transports) -> None:
    # The WebSocket's reconnect backoff paces token requests; the client does not retry them too.
    clock = Clock()
    transport = transports(RateLimiter(clock=clock))
    client = make_client(transport, refused_url(), clock=clock)
    with pytest.raises(NoAnswerError, match="connection refused"):
        await client.websocket_token()
    assert clock.sleeps == []
    errors = sample(transport, "whitebit_rest_requests_total", account="acct", endpoint=WEBSOCKET_TOKEN, code="error")
    assert errors == 1


async def test_a_success_status_without_json_is_a_response_error(transports) -> None:
    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="<html>maintenance</html>", content_type="text/html")

    app.router.add_post(MAIN_BALANCE, handler)
    server = await _serve(app)
    try:
        client = make_client(transports(), server.url)
        with pytest.raises(ResponseError, match="not JSON"):
            await client.post(MAIN_BALANCE)
    finally:
        await server.close()


@pytest.mark.parametrize(
    ("status", "body", "error"),
    [
        (401, {"code": 10, "message": "Unauthorized request."}, AuthError),
        (400, {"code": 9, "message": "Invalid payload."}, AuthError),
        (
            401,
            {
                "code": 2,
                "message": "This action is unauthorized. Enable your key in API settings",
            },
            AuthError,
        ),
        (401, {"code": 0, "message": "Payload not provided.", "errors": {}}, AuthError),
        (
            403,
            {
                "code": 0,
                "message": "You don't have permission to use this endpoint.",
                "errors": {},
            },
            PermissionDeniedError,
        ),
        (
            401,
            {
                "code": 4,
                "message": "This API Key is not authorized to perform self action.",
            },
            PermissionDeniedError,
        ),
        (
            401,
            {
                "code": 0,
                "message": "Your nonce is more than 5 seconds lesser than the current nonce",
            },
            NonceError,
        ),
        (401, {"code": 0, "message": "Nonce not provided.", "errors": {}}, NonceError),
        (401, {"code": 0, "message": "Invalid nonceWindow.", "errors": {}}, NonceError),
        (
            429,
            {"code": 0, "message": "Too many requests.", "errors": {}},
            RateLimitedError,
        ),
        (
            503,
            {"response": None, "status": 503, "errors": {"message": [""]}},
            UnavailableError,
        ),
        (502, "<html>bad gateway</html>", UnavailableError),
        (
            422,
            {
                "code": 30,
                "message": "Validation failed",
                "errors": {"ticker": ["Currency was not found."]},
            },
            ValidationError,
        ),
        (
            400,
            {
                "code": 0,
                "message": "Validation failed",
                "errors": {"limit": ["too big"]},
            },
            ValidationError,
        ),
        (404, {"code": 0, "message": "Not found.", "errors": {}}, RestError),
    ],
)
def test_whitebit_error_bodies_map_to_clear_error_classes(status: int, body: Any, error: type[RestError]) -> None:
    mapped = classify(MAIN_BALANCE, status, body)
    assert type(mapped) is error
    assert mapped.retryable == (error in (RateLimitedError, UnavailableError))
    assert str(mapped).startswith(f"{MAIN_BALANCE}: {mapped.kind} error (HTTP {status}")


# --- nonces under concurrency ----------------------------------------------------------------


@pytest.mark.parametrize("nonce_window", [True, False], ids=["nonceWindow", "sequential"])
async def test_many_concurrent_calls_from_one_key_are_all_accepted(simulator, transports, nonce_window: bool) -> None:
    client = make_client(transports(), simulator.url, nonce_window=nonce_window)
    calls = 150
    answers = await asyncio.gather(*(client.post(MAIN_BALANCE) for _ in range(calls)))
    assert all("USDT" in answer for answer in answers)
    assert rest_stats(simulator, MAIN_BALANCE) == {"200": calls}


# --- metrics -----------------------------------------------------------------------------------


async def test_rest_series_start_at_zero_for_every_endpoint(transports) -> None:
    transport = transports()
    make_client(transport, "http://127.0.0.1:1")
    for endpoint in ENDPOINTS:
        labels = {"account": "acct", "endpoint": endpoint}
        assert sample(transport, "whitebit_rest_requests_total", code="200", **labels) == 0
        assert sample(transport, "whitebit_rest_rate_limited_total", **labels) == 0
        assert sample(transport, "whitebit_rest_request_duration_seconds_count", **labels) == 0
        assert sample(transport, "whitebit_rest_rate_limit_usage_ratio", **labels) == 0


async def test_usage_ratio_counts_the_window_against_the_family_limit(simulator, transports) -> None:
    transport = transports()
    client = make_client(transport, simulator.url)
    for _ in range(3):
        await client.websocket_token()
    ratio = sample(
        transport,
        "whitebit_rest_rate_limit_usage_ratio",
        account="acct",
        endpoint=WEBSOCKET_TOKEN,
    )
    assert ratio == pytest.approx(3 / 10)
    count = sample(
        transport,
        "whitebit_rest_request_duration_seconds_count",
        account="acct",
        endpoint=WEBSOCKET_TOKEN,
    )
    assert count == 3


async def test_histogram_buckets_are_configurable(transports) -> None:
    limiter = RateLimiter()
    metrics = RestMetrics(limiter, buckets=(0.5, 0.1), accounts=["acct"])
    metrics.observe("acct", MAIN_BALANCE, "200", 0.2)
    registry = CollectorRegistry()
    registry.register(metrics)
    labels = {"account": "acct", "endpoint": MAIN_BALANCE}
    assert registry.get_sample_value("whitebit_rest_request_duration_seconds_bucket", {**labels, "le": "0.1"}) == 0
    assert registry.get_sample_value("whitebit_rest_request_duration_seconds_bucket", {**labels, "le": "0.5"}) == 1
    assert registry.get_sample_value("whitebit_rest_request_duration_seconds_bucket", {**labels, "le": "+Inf"}) == 1


def test_repr_of_a_client_shows_no_secret_and_only_a_key_prefix(transports) -> None:
    limiter = RateLimiter()
    transport = RestTransport(limiter, RestMetrics(limiter))
    client = make_client(transport, "http://127.0.0.1:1")
    text = repr(client)
    assert SECRET not in text and KEY not in text and redact(KEY) in text


# --- helpers -----------------------------------------------------------------------------------


class _Server:
    def __init__(self, runner: web.AppRunner) -> None:
        self.runner = runner
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def _serve(app: web.Application) -> _Server:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return _Server(runner)


def refused_url() -> str:
    """A loopback URL on a port that was free a moment ago, so connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def test_the_transport_closes_its_session_and_cannot_be_used_after() -> None:
    limiter = RateLimiter()
    transport = RestTransport(limiter, RestMetrics(limiter))
    session = transport.session
    await transport.close()
    assert session.closed
    with pytest.raises(RuntimeError, match="closed"):
        _ = transport.session
