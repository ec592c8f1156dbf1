"""Benchmark of the private WebSocket path: ratios measured in one run, never asserted.

Run: ``python -m benchmarks.bench_websocket`` (from the repository root). Prints:

1. ``ordersPending_update`` frames processed per second by the source's frame handler (JSON decode,
   dispatch, validation, order book upsert with incremental aggregates and event counting) against
   ``json.loads`` alone on the same frames. Goal: at least 1/3 of that floor.
2. ``/metrics`` render time (``generate_latest`` over the WebSocket collector) with 100,000 open orders
   over 200 markets, against ``generate_latest`` of the same series held by prometheus_client's own
   Gauge and Counter objects. Goal: within 1.2x. Also 10,000 vs 100,000 orders with the same series:
   the render time follows the series, not the orders.
3. Resident memory per open order (tracemalloc, and the process RSS delta). Goal: under 1 KiB.

Timings are the best of several repetitions (the machine is shared); only ratios are meaningful.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import prometheus_client
from prometheus_client import Counter, Gauge
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from exporter.core.health import HealthRegistry
from exporter.whitebit.balances import AccountBalances
from exporter.whitebit.websocket.collector import WebSocketCollector
from exporter.whitebit.websocket.source import WebSocketSource

MARKETS = tuple(f"C{i:03d}_USDT" for i in range(200))


async def _no_token() -> str:
    raise RuntimeError("the benchmark never connects")


def make_source() -> WebSocketSource:
    return WebSocketSource(
        "bench",
        "ws://127.0.0.1:1/ws",
        MARKETS,
        _no_token,
        AccountBalances("bench"),
        HealthRegistry(),
    )


def order_doc(order_id: int, rng: random.Random, *, left: str | None = None) -> dict[str, Any]:
    amount = f"{rng.randint(1, 10_000) / 1000:.3f}"
    return {
        "id": order_id,
        "market": MARKETS[order_id % len(MARKETS)],
        "type": 1 if order_id % 5 else 3,
        "side": 1 + order_id % 2,
        "post_only": False,
        "ioc": False,
        "ctime": 1700000000.123456,
        "mtime": 1700000005.654321,
        "price": f"{rng.randint(1000, 70000)}.5",
        "amount": amount,
        "left": left if left is not None else amount,
        "deal_stock": "0",
        "deal_money": "0",
        "deal_fee": "0",
        "client_order_id": f"mm-{order_id}" if order_id % 3 == 0 else "",
        "stp": "no",
        "status": "OPEN",
        "position_side": "BOTH",
        "rpi": order_id % 7 == 0,
        "retail": False,
        "reduce_only": False,
    }


def frames(count: int, rng: random.Random) -> list[str]:
    """``count`` new orders, then an update and a finish for each: a realistic mix of events."""
    first_id = 4_200_000_000_001
    out = [
        json.dumps({"id": None, "method": "ordersPending_update", "params": [1, order_doc(first_id + i, rng)]})
        for i in range(count)
    ]
    out.extend(
        json.dumps(
            {"id": None, "method": "ordersPending_update", "params": [2, order_doc(first_id + i, rng, left="0.001")]}
        )
        for i in range(count)
    )
    for i in range(count):
        doc = order_doc(first_id + i, rng, left="0.001") | {"status": "CANCELED"}
        out.append(json.dumps({"id": None, "method": "ordersPending_update", "params": [3, doc]}))
    return out


def best_of(repeat: int, run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_throughput(count: int, repeat: int) -> None:
    messages = frames(count, random.Random(1))
    loads = json.loads

    def decode_only() -> None:
        for message in messages:
            loads(message)

    def process() -> None:
        source = make_source()
        handle = source._on_frame
        for message in messages:
            handle(None, message)  # type: ignore[arg-type]  # pushes never touch the connection
        assert len(source.book) == 0
        assert sum(source.invalid.values()) == 0

    floor = best_of(repeat, decode_only)
    ours = best_of(repeat, process)
    n = len(messages)
    print(f"[1] ordersPending_update frames: {n}")
    print(f"    json.loads alone : {n / floor:12,.0f} msg/s")
    print(f"    source handler   : {n / ours:12,.0f} msg/s")
    print(f"    ratio            : {floor / ours:.2f} of the json.loads floor (goal >= 0.33)")


def filled_source(orders: int) -> WebSocketSource:
    rng = random.Random(2)
    source = make_source()
    for i in range(orders):
        source.book.apply(1, order_doc(i + 1, rng))
    source.connected = True
    source.book.events.flush(float("inf"))
    return source


def baseline_registry(text: str) -> CollectorRegistry:
    """The same series as ``text``, held by prometheus_client's own Gauge and Counter objects."""
    registry = CollectorRegistry()
    for family in text_string_to_metric_families(text):
        if not family.samples:
            continue
        labels = sorted(family.samples[0].labels)
        if family.type == "counter":
            metric: Any = Counter(family.name, family.documentation, labels, registry=registry)
            for sample in family.samples:
                metric.labels(**sample.labels).inc(sample.value)
        else:
            metric = Gauge(family.name, family.documentation, labels, registry=registry)
            for sample in family.samples:
                metric.labels(**sample.labels).set(sample.value)
    return registry


def bench_render(repeat: int) -> None:
    renders = {}
    for orders in (10_000, 100_000):
        source = filled_source(orders)
        registry = CollectorRegistry()
        registry.register(WebSocketCollector([source]))
        text = generate_latest(registry).decode()
        renders[orders] = (
            best_of(repeat, functools.partial(generate_latest, registry)),
            text,
        )
    ours, text = renders[100_000]
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    baseline = baseline_registry(text)
    baseline_text = generate_latest(baseline).decode()
    assert sum(1 for line in baseline_text.splitlines() if line and not line.startswith("#")) == series
    floor = best_of(repeat, lambda: generate_latest(baseline))
    print(f"[2] /metrics render, 100,000 open orders over {len(MARKETS)} markets ({series} series)")
    print(f"    generate_latest, Gauge/Counter objects : {floor * 1000:8.2f} ms")
    print(f"    generate_latest, WebSocketCollector    : {ours * 1000:8.2f} ms")
    print(f"    ratio                                  : {ours / floor:.2f}x (goal <= 1.2x)")
    small = renders[10_000][0]
    print(
        f"    10,000 orders: {small * 1000:.2f} ms; 100,000 orders: {ours * 1000:.2f} ms "
        f"(ratio {ours / small:.2f}: same series, 10x the orders)"
    )


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def bench_memory(orders: int) -> None:
    rng = random.Random(3)
    messages = [
        json.dumps(
            {
                "id": None,
                "method": "ordersPending_update",
                "params": [1, order_doc(4_200_000_000_001 + i, rng)],
            }
        )
        for i in range(orders)
    ]
    source = make_source()
    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for message in messages:
        source._on_frame(None, message)  # type: ignore[arg-type]
    source.book.events.flush(float("inf"))  # the modify window's queue is transient, not per order
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rss_after = rss_bytes()
    assert len(source.book) == orders
    print(f"[3] memory for {orders:,} open orders")
    print(f"    tracemalloc : {(after - before) / orders:7.0f} bytes per open order (goal < 1024)")
    print(
        f"    RSS delta   : {max(rss_after - rss_before, 0) / orders:7.0f} bytes per open order "
        "(includes tracemalloc's own overhead)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--orders",
        type=int,
        default=100_000,
        help="orders for the throughput and memory runs",
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    # The baseline's Counters would add _created series ours does not have; compare like with like.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated in prometheus_client
    bench_throughput(args.orders // 2, args.repeat)
    bench_render(args.repeat)
    bench_memory(args.orders)


if __name__ == "__main__":
    main()
