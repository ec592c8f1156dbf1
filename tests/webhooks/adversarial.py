"""Helpers of the adversarial receiver tests (tests/*/test_webhook_adversarial.py).

- ``await raw_post(url, headers, body)``: one POST over a plain socket with header bytes exactly as
  given (aiohttp's client would encode them), answering the status code; ``abandon()`` hangs up
  in the middle of the body.
- :class:`FuzzServer`: one real Exporter on an event loop in a thread, so that a synchronous
  hypothesis test drives the same server through all of its examples.
- ``receiver_lines(caplog, logger)``: the records a receiver's logger wrote, and whether any of
  them (or aiohttp's) carries a traceback.
- :data:`ODD_VALUES`: what a signed delivery may carry in any field: deep, huge, odd numbers, unicode.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from exporter.app import Exporter
from exporter.config.schema import Config

T = TypeVar("T")

#: The hypothesis settings of both receivers' fuzz tests: 200 signed examples, each a real request.
FUZZ_SETTINGS = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)

#: Replaced, quotes included, by a nesting of DEEP_LEVELS arrays in a body (json.dumps cannot write it).
DEEP = "\x00deep\x00"
DEEP_LEVELS = 1200


async def raw_post(url: str, headers: list[tuple[bytes, bytes]], body: bytes) -> int:
    """POST ``body`` to ``url`` with exactly these header bytes; the answer's status code."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = [f"POST {parts.path} HTTP/1.1".encode(), f"Host: {parts.netloc}".encode()]
        head += [name + b": " + value for name, value in headers]
        head += [f"Content-Length: {len(body)}".encode(), b"Connection: close"]
        writer.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        await asyncio.wait_for(reader.read(), 10)
        return int(status_line.split()[1])
    finally:
        writer.close()
        await writer.wait_closed()


async def abandon(url: str, headers: list[tuple[bytes, bytes]], sent: bytes, length: int) -> None:
    """Announce a body of ``length`` bytes, send only ``sent``, and hang up."""
    parts = urlsplit(url)
    _, writer = await asyncio.open_connection(parts.hostname, parts.port)
    head = [f"POST {parts.path} HTTP/1.1".encode(), f"Host: {parts.netloc}".encode()]
    head += [name + b": " + value for name, value in headers]
    head.append(f"Content-Length: {length}".encode())
    writer.write(b"\r\n".join(head) + b"\r\n\r\n" + sent)
    await writer.drain()
    writer.close()
    await writer.wait_closed()


#: Replaced in a body by a lone surrogate (see :func:`lone_surrogate`).
SURROGATE = "@lone-surrogate@"


def lone_surrogate(body: bytes, *, escaped: bool) -> bytes:
    """``body`` with each :data:`SURROGATE` made a lone surrogate: the JSON escape ``\\udcff`` (valid
    JSON text) when ``escaped``, else its bytes as ``surrogatepass`` writes them (not UTF-8). json.loads
    reads both as the string ``"\\udcff"``, which SQLite's driver cannot bind."""
    return body.replace(SURROGATE.encode(), b"\\udcff" if escaped else "\udcff".encode("utf-8", "surrogatepass"))


def deep_body(document: Any) -> bytes:
    """``document`` as JSON, each :data:`DEEP` string in it replaced by arrays nested DEEP_LEVELS deep."""
    nested = b"[" * DEEP_LEVELS + b"]" * DEEP_LEVELS
    # surrogatepass: a lone surrogate in a string becomes bytes that are not UTF-8, one more odd body.
    text = json.dumps(document, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return text.replace(json.dumps(DEEP).encode(), nested)


class LoopThread:
    """An event loop running in a daemon thread; :meth:`run` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class FuzzServer:
    """One started Exporter on a :class:`LoopThread`; :meth:`post` sends a body signed by ``sign``."""

    def __init__(
        self,
        config: Config,
        path: str,
        sign: Callable[[bytes], dict[str, str]],
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.thread = LoopThread()
        self._path = path
        self._sign = sign
        self.exporter, self.session = self.thread.run(self._start(config, clock))

    @staticmethod
    async def _start(config: Config, clock: Callable[[], float] | None) -> tuple[Exporter, aiohttp.ClientSession]:
        exporter = Exporter(config, clock=clock) if clock is not None else Exporter(config)
        await exporter.start()
        return exporter, aiohttp.ClientSession()

    def post(self, body: bytes) -> tuple[int, float]:
        """(status, seconds from sending to the whole answer) of one signed delivery of ``body``."""

        async def go() -> tuple[int, float]:
            started = time.perf_counter()
            url = self.exporter.webhooks_url + self._path
            async with self.session.post(url, data=body, headers=self._sign(body)) as response:
                await response.read()
                return response.status, time.perf_counter() - started

        return self.thread.run(go())

    def close(self) -> None:
        self.thread.run(self.session.close())
        self.thread.run(self.exporter.stop())
        self.thread.close()


def receiver_lines(caplog: pytest.LogCaptureFixture, logger: str) -> tuple[list[logging.LogRecord], bool]:
    """(the WARNING-or-above records of ``logger``, whether any record at all carries a traceback)."""
    lines = [r for r in caplog.records if r.name == logger and r.levelno >= logging.WARNING]
    traceback = any(r.exc_info is not None or r.exc_text for r in caplog.records)
    return lines, traceback


#: Strings and numbers that broke, or could break, a parser: beyond any bound, other scripts' digits.
ATTACKS = st.sampled_from(
    [
        "1e-999999999",
        "1e999999999",
        "1e-99999999",
        "-1E+999999",
        "NaN",
        "sNaN",
        "-Infinity",
        "1_000",
        "\u0661\u0662\u0663",
        "\u00b2",
        " 5 ",
        "-0",
        "0x10",
        "9" * 5000,
        "1" + "0" * 60,
        "0." + "0" * 60 + "1",
        "\udcff",
        "",
        DEEP,
        10**400,
        -(10**400),
        10**4000,
        2**63,
        -(2**63) - 1,
        1e308,
        float("nan"),
        float("inf"),
    ]
)
#: Odd JSON values: every type, unicode, long; the attacks above are drawn most often.
ODD_SCALARS = st.one_of(
    ATTACKS,
    ATTACKS,
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.integers(1, 50_000).map(lambda n: "x" * n),
)
#: Odd JSON values for any field: an attack, an odd scalar, or a structure of them (deep ones via DEEP).
ODD_VALUES = st.one_of(
    ATTACKS,
    ODD_SCALARS,
    st.recursive(
        ODD_SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
        ),
        max_leaves=12,
    ),
)
