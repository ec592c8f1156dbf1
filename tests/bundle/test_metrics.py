"""Every metric the alert rules, recording rules and dashboards read is one the exporter exposes.

The names are collected from the bundle's PromQL (sample names as scraped: ``_total``, ``_bucket``);
the running demo (simulator + exporter, in-process on free loopback ports, its metrics listener with
basic auth so that the listener's refusal counter is exported too) is scraped until each one has
appeared. Recording-rule outputs must be recorded by rules.yaml (or, for the low-balance threshold
series, by the rules config.yaml's entries make), ``up`` is Prometheus' own, and of the standard
``process_*`` families only those the README names may be read.
"""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import bcrypt

from exporter.config.schema import WebSecurityConfig
from exporter.core.metrics import METRICS
from tests.bundle.harness import (
    SYNTHETIC,
    alert_rules,
    configured_records,
    dashboard_queries,
    metric_names,
    readme_metric_names,
    recording_rules,
    running_demo,
)
from tests.helpers import Scrape, wait_for


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
    standard = {name for name in readme_metric_names() if name.startswith(("process_", "python_"))}
    unknown = {name: where for name, where in used.items() if name not in contract | standard | records | SYNTHETIC}
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

    # Basic auth on the metrics listener, as --web.config.file sets it: its refusal counter is exported then.
    password = "demo-password"
    credentials = f"prometheus:{password}".encode()
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    security = WebSecurityConfig(basic_auth_users=(("prometheus", hashed),))
    async with (
        running_demo(tmp_path, scenario_rate=20.0, forge_every=10, web_security=security) as demo,
        aiohttp.ClientSession(headers={"Authorization": "Basic " + base64.b64encode(credentials).decode()}) as session,
    ):
        assert demo.exporter is not None
        url = demo.exporter.metrics_url.rstrip("/") + "/metrics"

        async def everything_seen() -> bool:
            async with session.get(url) as response:
                assert response.status == 200, await response.text()
                seen.update(Scrape(await response.text()).sample_names())
            return wanted <= seen

        try:
            # Some series only exist once the scenario made them (a transfer in flight, a participant's
            # balance), so scrape until each has shown up at least once.
            await wait_for(everything_seen, timeout=90, interval=0.5)
        except AssertionError:
            missing = {name: sorted(used[name]) for name in sorted(wanted - seen)}
            raise AssertionError(f"the demo never exposed: {missing}") from None
