"""Test helpers shared by every test module.

- ``await wait_for(lambda: cond(), timeout=5)``: poll a condition instead of sleeping.
- ``await scrape(client_or_url)``: fetch ``/metrics`` and parse it into a :class:`Scrape`.
- ``parse_logfmt(line)``: one logfmt line as a dict; ``logfmt_lines(records)``: captured log records as
  the command line writes them, parsed back.
- ``collected(collector, sample_name, **labels)``: what a scrape of one collector shows.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import aiohttp
from aiohttp.test_utils import TestClient
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

from exporter.core.logs import LogfmtFormatter


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    *,
    interval: float = 0.01,
    message: str | None = None,
) -> None:
    """Return as soon as ``predicate()`` is truthy (it may be async); fail after ``timeout`` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s: {predicate}")
        await asyncio.sleep(interval)


class Scrape(dict[str, Metric]):
    """A parsed scrape: family name (counters without ``_total``) -> Metric, plus lookups."""

    def __init__(self, text: str) -> None:
        super().__init__((family.name, family) for family in text_string_to_metric_families(text))
        self.text = text

    def samples(self, sample_name: str) -> list[tuple[dict[str, str], float]]:
        """Every ``(labels, value)`` of the samples called ``sample_name`` (e.g. ``x_total``)."""
        return [
            (dict(sample.labels), sample.value)
            for family in self.values()
            for sample in family.samples
            if sample.name == sample_name
        ]

    def value(self, sample_name: str, labels: Mapping[str, str] | None = None, **kw: str) -> float | None:
        """The value of the sample with exactly these labels, or None when absent."""
        wanted = {**(labels or {}), **kw}
        for sample_labels, value in self.samples(sample_name):
            if sample_labels == wanted:
                return value
        return None

    def sample_names(self) -> set[str]:
        """Every sample name in the scrape."""
        return {sample.name for family in self.values() for sample in family.samples}


async def scrape_text(client_or_url: TestClient | str, path: str = "/metrics") -> str:
    """The raw exposition text from an aiohttp test client or a base (or ``/metrics``) URL."""
    if isinstance(client_or_url, TestClient):
        response = await client_or_url.get(path)
        assert response.status == 200, await response.text()
        return await response.text()
    url = client_or_url if client_or_url.endswith(path) else client_or_url.rstrip("/") + path
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.text()


async def scrape(client_or_url: TestClient | str) -> Scrape:
    """Fetch ``/metrics`` and parse it (``prometheus_client.parser``)."""
    return Scrape(await scrape_text(client_or_url))


def parse_logfmt(line: str) -> dict[str, str]:
    """Parse one logfmt line (``key=value key="quoted \\"value\\""``) into a dict."""
    fields: dict[str, str] = {}
    i, n = 0, len(line)
    escapes = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        if i >= n:
            break
        eq = line.index("=", i)
        key = line[i:eq]
        i = eq + 1
        if i < n and line[i] == '"':
            i += 1
            chars: list[str] = []
            while line[i] != '"':
                if line[i] == "\\":
                    i += 1
                    chars.append(escapes.get(line[i], line[i]))
                else:
                    chars.append(line[i])
                i += 1
            i += 1
            fields[key] = "".join(chars)
        else:
            end = line.find(" ", i)
            end = n if end == -1 else end
            fields[key] = line[i:end]
            i = end
    return fields


def logfmt_lines(records: Iterable[logging.LogRecord]) -> list[dict[str, str]]:
    """Each record formatted as the command line writes it (logfmt), then parsed with :func:`parse_logfmt`."""
    formatter = LogfmtFormatter()
    return [parse_logfmt(formatter.format(record)) for record in records]


def collected(collector: Collector, sample_name: str, **labels: str) -> float | None:
    """The value a scrape of ``collector`` alone would show for this sample, or None when absent."""
    registry = CollectorRegistry()
    registry.register(collector)
    return registry.get_sample_value(sample_name, labels)


async def stop_and_collect(
    proc: asyncio.subprocess.Process, lines: Sequence[str], sig: int = signal.SIGTERM, timeout: float = 5.0
) -> tuple[int, str]:
    """Stop a command line with ``sig``; its exit status and everything it wrote to stderr (``lines``
    already read, then the rest). The caller kills it in a ``finally`` should this time out."""
    proc.send_signal(sig)
    status = await asyncio.wait_for(proc.wait(), timeout=timeout)
    assert proc.stderr is not None
    return status, "\n".join(lines) + (await proc.stderr.read()).decode()
