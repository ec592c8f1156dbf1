"""Every metric the alert rules, recording rules and dashboards read is one the exporter exposes.

The names are collected from the bundle's PromQL (sample names as scraped: ``_total``, ``_bucket``);
the running demo (simulator + exporter, in-process on free loopback ports) is scraped until each one
has appeared. Recording-rule outputs must be recorded by rules.yaml (or, for the low-balance threshold
series, by the rules config.yaml's entries make), and ``up`` is Prometheus' own.
"""

from __future__ import annotations

from pathlib import Path

from exporter.core.metrics import METRICS
from tests.bundle.harness import (
    SYNTHETIC,
    alert_rules,
    configured_records,
    dashboard_queries,
    metric_names,
    recording_rules,
    running_demo,
)
from tests.helpers import scrape, wait_for


def used_metric_names() -> dict[str, set[str]]:
    """Metric name -> where the bundle uses it."""
    used: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"alert {rule['alert']}")
    for rule in recording_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(f"rule {rule['record']}")
    for dashboard, title, expr in dashboard_queries():
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"{dashboard}: {title}")
    return used


def test_the_bundle_reads_only_metrics_of_the_contract() -> None:
    used = used_metric_names()
    records = {rule["record"] for rule in recording_rules()} | configured_records()
    contract = {name for metric in METRICS for name in metric.sample_names}
    unknown = {name: where for name, where in used.items() if name not in contract | records | SYNTHETIC}
    assert unknown == {}
    # The bundle covers every source: WebSocket, webhooks, REST, transfers, Zero Hash, the exporter.
    for needed in (
        "whitebit_websocket_connected",
        "whitebit_webhooks_missed_total",
        "whitebit_rest_rate_limited_total",
        "whitebit_transfers_in_flight",
        "zerohash_balance",
        "whitebit_exporter_build_info",
    ):
        assert needed in used, needed


async def test_the_running_demo_exposes_every_metric_the_bundle_reads(tmp_path: Path) -> None:
    used = used_metric_names()
    records = {rule["record"] for rule in recording_rules()} | configured_records()
    wanted = set(used) - records - SYNTHETIC
    seen: set[str] = set()

    async with running_demo(tmp_path, scenario_rate=20.0, forge_every=10) as demo:
        assert demo.exporter is not None
        url = demo.exporter.metrics_url

        async def everything_seen() -> bool:
            seen.update((await scrape(url)).sample_names())
            return wanted <= seen

        try:
            # Some series only exist once the scenario made them (a transfer in flight, a participant's
            # balance), so scrape until each has shown up at least once.
            await wait_for(everything_seen, timeout=90, interval=0.5)
        except AssertionError:
            missing = {name: sorted(used[name]) for name in sorted(wanted - seen)}
            raise AssertionError(f"the demo never exposed: {missing}") from None
