"""The simulator's payment backend: it verifies what the relay forwards, and fails, hangs and goes away on cue."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from exporter.simulator.backend import DELIVERY_ID_HEADER, BackendTrouble, PaymentBackend
from exporter.simulator.server import SimulatedAccount, Simulator, SimulatorSettings
from exporter.whitebit.signing import compact_json, sign_body
from exporter.zerohash.signing import hmac_signature

KEY, SECRET, ZH_SECRET = "backend-key", "backend-webhook-secret-0123", "backend-zh-secret-0123"


@pytest.fixture
async def backend() -> AsyncIterator[PaymentBackend]:
    made = PaymentBackend({KEY: SECRET}, ZH_SECRET)
    await made.start()
    yield made
    await made.stop()


def whitebit(delivery_id: str, nonce: int, *, secret: str = SECRET) -> tuple[bytes, dict[str, str]]:
    body = compact_json({"method": "code.apply", "params": {"code": delivery_id, "nonce": nonce}, "id": delivery_id})
    return body, {**sign_body(body, key=KEY, secret=secret), DELIVERY_ID_HEADER: delivery_id}


async def post(backend: PaymentBackend, delivery: tuple[bytes, dict[str, str]], timeout: float = 5.0) -> int | str:
    body, headers = delivery
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
            http.post(f"{backend.url}/whitebit", data=body, headers=headers) as answer,
        ):
            return answer.status
    except TimeoutError:
        return "timeout"
    except aiohttp.ClientConnectorError:
        return "refused"


async def test_it_takes_what_verifies_once_and_refuses_what_does_not(backend: PaymentBackend) -> None:
    assert await post(backend, whitebit("d1", 1)) == 200
    assert await post(backend, whitebit("d1", 1)) == 200  # a second copy: taken once, counted
    assert await post(backend, whitebit("d2", 2, secret="not-the-secret")) == 401
    timestamp = str(int(time.time()))
    body = b'{"participant_code":"ABC123"}'
    headers = {
        "x-zh-hook-timestamp": timestamp,
        "x-zh-hook-signature": hmac_signature(ZH_SECRET, body, timestamp),
        DELIVERY_ID_HEADER: "z1",
    }
    async with aiohttp.ClientSession() as http, http.post(f"{backend.url}/zerohash", data=body, headers=headers) as r:
        assert r.status == 200
    assert backend.received == {"whitebit": ["d1"], "zerohash": ["z1"]}
    assert (backend.duplicates, backend.rejected) == (1, 1)
    assert [c.outcome for c in backend.copies] == ["taken", "duplicate", "rejected", "taken"]


async def test_it_fails_the_next_deliveries_and_a_share_at_random_without_taking_them(backend: PaymentBackend) -> None:
    await backend.set_trouble(BackendTrouble(fail_next=2))
    assert [await post(backend, whitebit("d1", 1)) for _ in range(3)] == [500, 500, 200]
    await backend.set_trouble(BackendTrouble(fail_rate=0.5))
    answers = [await post(backend, whitebit(f"r{n}", n + 2)) for n in range(60)]
    assert 10 < answers.count(500) < 50 and answers.count(200) == len(backend.received["whitebit"]) - 1
    assert backend.failed == 2 + answers.count(500)


async def test_a_held_answer_is_lost_to_the_timeout_but_the_delivery_was_taken(backend: PaymentBackend) -> None:
    await backend.set_trouble(BackendTrouble(hang_rate=1.0, hang_seconds=5.0))
    assert await post(backend, whitebit("d1", 1), timeout=0.3) == "timeout"
    await backend.set_trouble(BackendTrouble())
    assert await post(backend, whitebit("d1", 1)) == 200
    assert [c.outcome for c in backend.copies] == ["hung", "duplicate"] and backend.received["whitebit"] == ["d1"]


async def test_down_it_refuses_connections_and_comes_back_on_the_same_port(backend: PaymentBackend) -> None:
    url = backend.url
    await backend.set_trouble(BackendTrouble(down=True))
    assert await post(backend, whitebit("d1", 1)) == "refused"
    await backend.set_trouble(BackendTrouble())
    assert backend.url == url and await post(backend, whitebit("d1", 1)) == 200


async def test_a_lower_nonce_is_counted_and_refused_only_when_strict(backend: PaymentBackend) -> None:
    assert await post(backend, whitebit("d5", 5)) == 200
    assert await post(backend, whitebit("d4", 4)) == 200  # counted, taken
    await backend.set_trouble(BackendTrouble(strict_nonces=True))
    assert await post(backend, whitebit("d3", 3)) == 409
    assert await post(backend, whitebit("d6", 6)) == 200
    assert backend.nonce_regressions == 2 and backend.received["whitebit"] == ["d5", "d4", "d6"]


async def test_the_control_api_sets_trouble_and_refuses_what_it_does_not_know() -> None:
    account = SimulatedAccount("main", "api-key", "api-secret", webhook_key=KEY, webhook_secret=SECRET)
    simulator = Simulator(SimulatorSettings(accounts=(account,)))
    await simulator.start()
    try:
        async with aiohttp.ClientSession() as http:
            control = f"{simulator.url}/_simulator/backend"
            async with http.post(control, json={"fail_next": 3, "down": True}) as r:
                state = await r.json()
                assert r.status == 200 and state["trouble"]["fail_next"] == 3 and state["trouble"]["down"]
            assert await post(simulator.backend, whitebit("d1", 1)) == "refused"
            for bad in ({"fail_rate": 2.0}, {"explode": True}, {"down": "yes"}, {"fail_next": 1.5}, [1]):
                async with http.post(control, json=bad) as r:
                    assert r.status == 400, bad
            async with http.post(control, json={"down": False}) as r:
                assert r.status == 200
            assert [await post(simulator.backend, whitebit("d1", 1)) for _ in range(4)] == [500, 500, 500, 200]
            async with http.get(control) as r:
                state = await r.json()
            assert state["failed"] == 3 and state["received"]["whitebit"] == 1
    finally:
        await simulator.stop()
