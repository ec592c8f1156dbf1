"""The WhiteBIT receiver under attack, on a real Exporter over loopback: never a 500, never a traceback.

Garbage in any header is a counted 401; odd content under a valid signature (numbers beyond any
bound, JSON nested 1,200 deep, ids of megabytes) is a counted 400 ``bad_json`` within milliseconds;
an exception nothing expected is a counted 503 ``internal_error`` logged as one line. Status codes
and counter deltas come from parsed scrapes, log lines from caplog.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.config.schema import Config, WebhooksConfig
from exporter.whitebit import webhook as whitebit_webhook
from exporter.whitebit.signing import sign_body
from tests.helpers import scrape, wait_for
from tests.webhooks.adversarial import (
    DEEP,
    FUZZ_SETTINGS,
    ODD_VALUES,
    SURROGATE,
    FuzzServer,
    abandon,
    deep_body,
    lone_surrogate,
    raw_post,
    receiver_lines,
)
from tests.whitebit.test_webhook import (
    ACCOUNTS,
    DEPOSIT,
    KEY,
    NEW_SECRET,
    Harness,
    accepted,
    deltas,
    envelope,
    exporters_started,
    k,
    rejected,
    webhook_counters,
)

LOGGER = "exporter.whitebit.webhook"
StartHarness = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start(make_config: Callable[..., Config]) -> AsyncIterator[StartHarness]:
    async with exporters_started(lambda: make_config(ACCOUNTS, max_body_bytes=65536)) as go:
        yield go


def deposit(delivery_id: str, **fields: Any) -> bytes:
    return envelope("deposit.processed", {**DEPOSIT, **fields}, delivery_id)


async def timed_measure(h: Harness, body: bytes, headers: dict[str, str]) -> tuple[int, dict[Any, float], float]:
    before = await h.counters()
    started = time.perf_counter()
    status, _ = await h.post(body, headers)
    elapsed = time.perf_counter() - started
    after = await h.counters()
    return (
        status,
        {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)},
        elapsed,
    )


# -- garbage in headers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "header", "value", "account", "reason"),
    [
        ("key not UTF-8", b"X-TXC-APIKEY", b"\xff\xfe" + KEY.encode(), "unknown", "unknown_key"),
        ("key in another script", b"X-TXC-APIKEY", "\u0661\u0662".encode(), "unknown", "unknown_key"),
        ("payload not UTF-8", b"X-TXC-PAYLOAD", b"\xff" * 40, "main", "payload_mismatch"),
        ("payload in another script", b"X-TXC-PAYLOAD", "\u00e9\u4e2d".encode(), "main", "payload_mismatch"),
        ("signature not UTF-8", b"X-TXC-SIGNATURE", b"\xff\xfe" * 64, "main", "bad_signature"),
        ("signature in another script", b"X-TXC-SIGNATURE", "\u0661".encode() * 128, "main", "bad_signature"),
    ],
)
async def test_garbage_in_a_header_is_a_counted_401(
    start: StartHarness,
    caplog: pytest.LogCaptureFixture,
    case: str,
    header: bytes,
    value: bytes,
    account: str,
    reason: str,
) -> None:
    h = await start()
    body = deposit("garbage-1")
    signed = {name.encode(): text.encode() for name, text in sign_body(body, key=KEY, secret=NEW_SECRET).items()}
    signed[header] = value
    before = await h.counters()
    assert await raw_post(h.url, list(signed.items()), body) == 401
    after = await h.counters()
    assert (
        after[k("whitebit_webhooks_rejected_total", account=account, reason=reason)]
        - before.get(k("whitebit_webhooks_rejected_total", account=account, reason=reason), 0.0)
        == 1
    )
    lines, traceback = receiver_lines(caplog, LOGGER)
    assert len(lines) == 1 and not traceback


async def test_a_flood_of_garbage_keys_is_counted_and_logged_once(
    start: StartHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start()
    caplog.set_level(logging.INFO)
    body = deposit("flood-1")
    signed = [(name.encode(), text.encode()) for name, text in sign_body(body, key=KEY, secret=NEW_SECRET).items()]
    garbage = [[*signed[:1], (b"X-TXC-APIKEY", b"\xd9\xa1\xff" + str(i).encode()), *signed[2:]] for i in range(200)]
    assert signed[1][0] == b"X-TXC-APIKEY"
    statuses = await asyncio.gather(*(raw_post(h.url, headers, body) for headers in garbage))
    assert statuses == [401] * 200
    counters = await h.counters()
    assert counters[k("whitebit_webhooks_rejected_total", account="unknown", reason="unknown_key")] == 200
    lines, traceback = receiver_lines(caplog, LOGGER)
    assert len(lines) <= 2 and not traceback


# -- odd content under a valid signature -------------------------------------------------------------

ODD_CONTENT = [
    ("amount 1e-999999999", deposit("odd-1", amount="1e-999999999"), 400),
    ("amount 1e-99999999", deposit("odd-2", amount="1e-99999999"), 400),
    ("amount 1e999999999", deposit("odd-3", amount="1e999999999"), 400),
    ("amount with 70 digits", deposit("odd-4", amount="1" * 70), 400),
    ("amount as an integer of 400 digits", deposit("odd-5", amount=10**400), 400),
    ("amount NaN", deposit("odd-6", amount="NaN"), 400),
    ("ticker of 10 KB", deposit("odd-7", ticker="U" * 10_000), 400),
    ("transaction hash of 10 KB", deposit("odd-8", transactionHash="f" * 10_000), 400),
    ("unique id as an integer of 400 digits", deposit("odd-9", uniqueId=10**400), 400),
    ("id of 10 KB", envelope("code.apply", {"code": "x"}, "i" * 10_000), 400),
    (
        "JSON nested 1,200 deep in params",
        deep_body({"method": "code.apply", "params": {"x": DEEP}, "id": "deep-1"}),
        400,
    ),
    ("JSON nested 1,200 deep at the top", deep_body(DEEP), 400),
    # Not refused: a createdAt that is no time is no createdAt (created_at_of), as "soon" always was.
    ("createdAt 10**400", deposit("odd-10", createdAt=10**400), 200),
    ("createdAt 1e999 as text", deposit("odd-11", createdAt="1e999"), 200),
    # A nonce that is no 64-bit integer is not compared (module docstring of exporter/whitebit/webhook.py).
    ("nonce of 5,000 digits", envelope("code.apply", {"code": "x", "nonce": "9" * 5000}, "odd-12"), 200),
    ("nonce of superscript digits", envelope("code.apply", {"code": "x", "nonce": "\u00b2"}, "odd-13"), 200),
    ("confirmations of 400 digits", deposit("odd-14", confirmations={"actual": 10**400, "required": "9" * 999}), 200),
    # A lone surrogate reaches a string through json.loads; stored, it would fail every retry as a 503.
    *(
        (f"{what} with a lone surrogate{form}", lone_surrogate(body, escaped=escaped), 400)
        for escaped, form in ((True, " escape"), (False, " in bytes"))
        for what, body in (
            ("ticker", deposit("odd-15", ticker=f"USDT{SURROGATE}")),
            ("unique id", deposit("odd-16", uniqueId=SURROGATE)),
            ("id", envelope("code.apply", {"code": "x"}, f"odd-17{SURROGATE}")),
        )
    ),
]


@pytest.mark.parametrize(("case", "body", "status"), ODD_CONTENT, ids=[case[0] for case in ODD_CONTENT])
async def test_odd_content_under_a_valid_signature_is_contained(
    start: StartHarness, caplog: pytest.LogCaptureFixture, case: str, body: bytes, status: int
) -> None:
    h = await start()
    got, delta, elapsed = await timed_measure(h, body, sign_body(body, key=KEY, secret=NEW_SECRET))
    assert got == status
    method = "code.apply" if b'"code.apply"' in body else "deposit.processed"
    lines, traceback = receiver_lines(caplog, LOGGER)
    if status == 400:
        # Nested too deep is refused before the JSON is read, so its method is not known.
        assert delta == rejected("main", "bad_json", "other" if "nested" in case else method)
        assert len(lines) == 1 and "detail" in lines[0].__dict__
        if "nested" in case:  # refused by the scan of the bytes, before json.loads could recurse
            assert lines[0].__dict__["detail"] == "nested deeper than 32"
    else:
        assert delta == accepted("main", method)
        assert lines == []
    assert not traceback
    assert elapsed < 1.0


# -- our own bugs ------------------------------------------------------------------------------------


async def test_an_unexpected_exception_is_a_counted_503_logged_once_without_traceback(
    start: StartHarness, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug of ours " + "x" * 1000)

    monkeypatch.setattr(whitebit_webhook, "observation_from_webhook", broken)
    h = await start()
    for i in range(50):
        body = deposit(f"bug-{i}")
        status, _ = await h.post(body, sign_body(body, key=KEY, secret=NEW_SECRET))
        assert status == 503
    counters = await h.counters()
    assert counters[k("whitebit_webhooks_rejected_total", account="main", reason="internal_error")] == 50
    lines, traceback = receiver_lines(caplog, LOGGER)
    assert len(lines) == 1 and not traceback
    detail = lines[0].__dict__["detail"]
    assert detail.startswith("RuntimeError: a bug of ours") and len(detail) <= 200


async def test_internal_error_series_exist_from_the_start(start: StartHarness) -> None:
    h = await start()
    counters = webhook_counters(await scrape(h.exporter.metrics_url))
    for account in ("main", "strict", "unknown"):
        assert counters[k("whitebit_webhooks_rejected_total", account=account, reason="internal_error")] == 0


# -- fuzz: validly signed random content -------------------------------------------------------------


@pytest.fixture
def fuzz_server(make_config: Callable[..., Config]) -> Iterator[FuzzServer]:
    config = make_config(ACCOUNTS, max_body_bytes=WebhooksConfig.max_body_bytes)
    server = FuzzServer(config, "/webhooks/whitebit", lambda body: sign_body(body, key=KEY, secret=NEW_SECRET))
    yield server
    server.close()


@st.composite
def signed_documents(draw: st.DrawFn) -> Any:
    """A genuine deposit or withdrawal envelope with any of its fields (or itself) replaced by odd values."""
    method = draw(st.sampled_from(["deposit.processed", "deposit.updated", "withdraw.successful", "code.apply"]))
    params: dict[str, Any] = dict(DEPOSIT)
    # One field surely odd, the others seldom, so that most examples get past the first check.
    fields = [*DEPOSIT, "nonce", "transactionId", "uniqueId"]
    target = draw(st.sampled_from(fields))
    for name in fields:
        if name == target or draw(st.integers(0, 7)) == 0:
            params[name] = draw(ODD_VALUES)
    document: Any = {"method": method, "params": params, "id": f"fuzz-{draw(st.uuids())}"}
    for name in ("method", "params", "id"):
        if draw(st.integers(0, 9)) == 0:
            document[name] = draw(ODD_VALUES)
    if draw(st.integers(0, 19)) == 0:
        document = draw(ODD_VALUES)
    return document


@FUZZ_SETTINGS
@given(document=signed_documents())
def test_fuzz_signed_random_content_never_500_never_blocks(fuzz_server: FuzzServer, document: Any) -> None:
    status, elapsed = fuzz_server.post(deep_body(document))
    # 503 would be internal_error: a bug of ours the fuzz found, so it fails too.
    assert status in (200, 400, 409, 413)
    assert elapsed < 1.0  # containment, not speed: one delivery never holds the loop for long


# -- bodies that cannot be read ----------------------------------------------------------------------


async def test_a_body_whose_encoding_does_not_decode_is_a_counted_400(
    start: StartHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start()
    body = deposit("gzip-1")
    signed = [(name.encode(), text.encode()) for name, text in sign_body(body, key=KEY, secret=NEW_SECRET).items()]
    before = await h.counters()
    assert await raw_post(h.url, [*signed, (b"Content-Encoding", b"gzip")], b"not gzip at all") == 400
    assert deltas(before, await h.counters()) == rejected("main", "unreadable_body")
    lines, _ = receiver_lines(caplog, LOGGER)
    assert len(lines) == 1
    # No traceback anywhere: aiohttp meets the broken body again when it drains it after the answer
    # (the server has closed the connection by the time raw_post returns), and the listener's
    # ProtocolLog turns that into a debug line (exporter/http/webhook_listener.py).
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_client_hanging_up_mid_body_is_counted_without_a_traceback(
    start: StartHarness, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start()
    body = deposit("gone-1")
    signed = [(name.encode(), text.encode()) for name, text in sign_body(body, key=KEY, secret=NEW_SECRET).items()]
    await abandon(h.url, signed, body[:10], len(body))
    key = k("whitebit_webhooks_rejected_total", account="main", reason="unreadable_body")

    async def counted() -> bool:
        return (await h.counters())[key] == 1

    await wait_for(counted, timeout=5)
    _, traceback = receiver_lines(caplog, LOGGER)
    assert not traceback
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
