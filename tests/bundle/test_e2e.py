"""End to end: a real Prometheus scrapes the demo and evaluates the bundled rules.

The demo (simulator + exporter) runs in this event loop on free loopback ports (in the last test with
its metrics listener behind TLS and basic auth, as --web.config.file sets them), with a busy scenario
that forges deliveries often, a short reconcile grace and a short webhook retry delay. Prometheus (the
Debian package's /usr/bin/prometheus) runs as a subprocess on a free port with a temporary storage
directory, 1 s scrape and evaluation intervals, and the bundle's rules generated from
prometheus/config.yaml with every ``for:`` set to 0s, so alerts fire within seconds instead of minutes
(one test also sets margin levels and low-balance thresholds that the demo's numbers trip). Every
dashboard query runs on it too. Nothing here sleeps for a fixed time: every wait polls a condition.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import yaml

from exporter.config.schema import ServerTlsConfig, WebSecurityConfig
from exporter.demo import DEMO_ACCOUNT, DEMO_SPOT_ACCOUNT
from tests.bundle.harness import (
    PROMETHEUS_DIR,
    dashboard_queries,
    load_generator,
    running_demo,
    running_tool,
    substitute_variables,
    tool,
)
from tests.certs import issue_pki
from tests.helpers import wait_for

JOB = "whitebit-exporter"

#: Changes to prometheus/config.yaml before the rules are generated.
ConfigChange = Callable[[dict[str, Any]], None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_rules(directory: Path, change: ConfigChange | None = None) -> list[str]:
    """The bundled rules, from prometheus/config.yaml with every ``for:`` set to 0s, and ``change`` made."""
    generate = load_generator()
    config = generate.load_config(PROMETHEUS_DIR / "config.yaml")
    for settings in config["alerts"].values():
        settings["for"] = "0s"
    if change is not None:
        change(config)
    paths = []
    for name, content in generate.render(config).items():
        path = directory / name
        path.write_text(content)
        paths.append(str(path))
    return paths


class Prometheus:
    """A Prometheus subprocess and a client for its HTTP API."""

    def __init__(self, url: str, session: aiohttp.ClientSession, log: Path) -> None:
        self.url = url
        self.session = session
        self.log = log

    async def api(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as response:
            body = await response.json()
            assert body["status"] == "success", body
            return body["data"]

    async def ready(self) -> bool:
        try:
            async with self.session.get(f"{self.url}/-/ready") as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    async def query(self, expr: str) -> list[dict[str, Any]]:
        return list((await self.api("query", query=expr))["result"])

    async def alerts(self, name: str, state: str = "firing") -> list[dict[str, Any]]:
        alerts = (await self.api("alerts"))["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == name and a["state"] == state]


@contextlib.asynccontextmanager
async def running_prometheus(
    directory: Path,
    target: str,
    *,
    scrape_configs: list[dict[str, Any]] | None = None,
    change: ConfigChange | None = None,
) -> AsyncIterator[Prometheus]:
    """Prometheus scraping ``target`` as job JOB, or with ``scrape_configs`` instead when given, with the
    bundle's rules generated after ``change`` to prometheus/config.yaml."""
    await asyncio.to_thread(directory.mkdir)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": write_rules(directory, change),
        "scrape_configs": scrape_configs or [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = directory / "prometheus.log"
    async with (
        running_tool(
            tool("prometheus"),
            f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            log=log,
        ),
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session,
    ):
        prometheus = Prometheus(f"http://127.0.0.1:{port}", session, log)
        await wait_for(
            prometheus.ready, timeout=60, interval=0.2, message=f"Prometheus did not become ready; log: {log}"
        )
        yield prometheus


def failure_log(prometheus: Prometheus) -> str:
    return prometheus.log.read_text(errors="replace")[-3000:]


def dashboard_expr(title: str, expr: str) -> str:
    """A dashboard query as Prometheus gets it: variables substituted; a variable's selector alone."""
    if title.startswith("$"):
        expr = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr).group(1)  # type: ignore[union-attr]
    return substitute_variables(expr)


async def dashboards_evaluate_against_live_data(prometheus: Prometheus) -> None:
    """Every dashboard query runs on Prometheus without an error, and the key ones show the demo's state."""
    results: dict[tuple[str, str], list[list[dict[str, Any]]]] = {}
    for file, title, expr in dashboard_queries():
        results.setdefault((file, title), []).append(await prometheus.query(dashboard_expr(title, expr)))

    def values(file: str, title: str, index: int = 0) -> list[float]:
        return [float(sample["value"][1]) for sample in results[(file, title)][index]]

    # One balance panel per asset: each asset's wallets are there (the demo holds USDT and BTC).
    balances = results[("whitebit-overview.json", "Balance: $asset")][0]
    assert {s["metric"]["wallet"] for s in balances} >= {"main", "spot", "collateral"}, balances
    # demo-spot holds no position, so its margin fraction is +Inf and left out, not drawn; demo's position
    # gives it a finite one, drawn.
    [spot] = await prometheus.query(f'whitebit_collateral_margin_fraction{{job="{JOB}"}} == Inf')
    assert spot["metric"]["account"] == DEMO_SPOT_ACCOUNT
    [drawn] = results[("whitebit-overview.json", "Margin fraction")][0]
    assert drawn["metric"]["account"] == DEMO_ACCOUNT and 0 < float(drawn["value"][1]) < math.inf
    assert values("whitebit-overview.json", "Tasks not running") == [0.0]
    assert values("whitebit-overview.json", "State file") == [1.0]
    assert values("whitebit-overview.json", "Collateral summary age")
    assert 0 < max(values("whitebit-connectivity.json", "Open files")) < 1
    assert values("whitebit-connectivity.json", "WebSocket connected")
    # The restart annotation's value is the exporter's start, in milliseconds: this process started it.
    (started,) = values("whitebit-overview.json", "annotation Exporter restarts")
    assert time.time() - 600 < started / 1000 <= time.time()


async def test_prometheus_scrapes_the_demo_and_the_signature_failure_alert_fires(tmp_path: Path) -> None:
    options = {"scenario_rate": 10.0, "forge_every": 3, "reconcile_grace": 5.0, "webhook_retry_delay": 1.0}
    async with running_demo(tmp_path / "demo", **options) as demo:
        assert demo.exporter is not None
        target = demo.exporter.metrics_url.removeprefix("http://")
        async with running_prometheus(tmp_path / "prometheus", target) as prometheus:
            # The target is scraped and healthy.
            async def target_up() -> bool:
                result = await prometheus.query(f'up{{job="{JOB}"}} == 1')
                return bool(result)

            await wait_for(
                target_up,
                timeout=60,
                interval=0.5,
                message=f"the exporter was never scraped; {failure_log(prometheus)}",
            )
            targets = (await prometheus.api("targets"))["activeTargets"]
            assert [(t["labels"]["job"], t["scrapeUrl"], t["health"]) for t in targets] == [
                (JOB, f"http://{target}/metrics", "up")
            ]

            # The rules loaded without errors.
            groups = (await prometheus.api("rules"))["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            assert rules and all(rule["health"] != "err" for rule in rules), [r for r in rules if r["health"] == "err"]

            # Forged and tampered deliveries from the simulator are rejected by the exporter and the
            # signature-failure alert fires for the demo account in Prometheus' /api/v1/alerts.
            async def signature_alert_firing() -> bool:
                return any(
                    a["labels"].get("account") == DEMO_ACCOUNT
                    for a in await prometheus.alerts("WhitebitWebhookSignatureFailures")
                )

            await wait_for(
                signature_alert_firing,
                timeout=90,
                interval=0.5,
                message=f"WhitebitWebhookSignatureFailures never fired; {failure_log(prometheus)}",
            )
            alert = (await prometheus.alerts("WhitebitWebhookSignatureFailures"))[0]
            assert alert["labels"]["severity"] == "warning"
            assert alert["labels"]["reason"] in {"bad_signature", "payload_mismatch"}
            assert alert["annotations"]["runbook_url"].endswith("#whitebitwebhooksignaturefailures")
            assert f"var-account={DEMO_ACCOUNT}" in alert["annotations"]["dashboard_url"]

            # A healthy exporter raises none of the exporter-level alerts.
            assert await prometheus.alerts("WhitebitExporterDown") == []

            # The recording rules evaluate against live data.
            async def recorded() -> bool:
                return bool(await prometheus.query("account_endpoint:whitebit_rest_requests_failed:ratio_rate5m"))

            await wait_for(recorded, timeout=60, interval=0.5, message="the REST ratio rule never recorded")

            await dashboards_evaluate_against_live_data(prometheus)

            # Drop a webhook in the simulator through its control API: the delivery is never sent.
            async with aiohttp.ClientSession() as session:
                async with session.get(f"{demo.simulator.url}/_simulator/stats") as response:
                    dropped_before = (await response.json())["webhooks"].get("dropped", 0)
                async with session.post(
                    f"{demo.simulator.url}/_simulator/webhooks/drop", json={"count": 1, "method_prefix": "deposit."}
                ) as response:
                    assert response.status == 200, await response.text()

                async def dropped() -> bool:
                    async with session.get(f"{demo.simulator.url}/_simulator/stats") as response:
                        return (await response.json())["webhooks"].get("dropped", 0) > dropped_before

                await wait_for(dropped, timeout=60, interval=0.5, message="the simulator never dropped a webhook")


async def test_a_dropped_deposit_webhook_fires_the_overdue_then_the_missed_webhook_alert(tmp_path: Path) -> None:
    # No mischief of the scenario's own: the one lost webhook is the one dropped below. The drop
    # targets deposit.processed: a lost deposit.updated (one confirmation tick of a deposit whose
    # other webhooks came) is deliberately not a missed webhook, so "deposit." would make this depend
    # on which deposit event happens next. Overdue (a warning) after the grace, missed (the page)
    # after the retry window.
    options = {
        "scenario_rate": 10.0,
        "forge_every": None,
        "reconcile_grace": 5.0,
        "webhook_retry_window": 25.0,
        "webhook_retry_delay": 1.0,
    }
    async with running_demo(tmp_path / "demo", **options) as demo:
        assert demo.exporter is not None
        target = demo.exporter.metrics_url.removeprefix("http://")
        async with running_prometheus(tmp_path / "prometheus", target) as prometheus:
            await wait_for(
                lambda: prometheus.query(f'up{{job="{JOB}"}} == 1'),
                timeout=60,
                interval=0.5,
                message=f"the exporter was never scraped; {failure_log(prometheus)}",
            )
            assert await prometheus.alerts("WhitebitWebhookMissed") == []
            async with (
                aiohttp.ClientSession() as session,
                session.post(
                    f"{demo.simulator.url}/_simulator/webhooks/drop",
                    json={"count": 1, "method_prefix": "deposit.processed"},
                ) as response,
            ):
                assert response.status == 200, await response.text()

            async def firing(alertname: str) -> bool:
                return any(
                    a["labels"].get("account") == DEMO_ACCOUNT and a["labels"].get("kind") == "deposit"
                    for a in await prometheus.alerts(alertname)
                )

            async def overdue_before_missed() -> bool:
                if await firing("WhitebitWebhookMissed"):
                    raise AssertionError("WhitebitWebhookMissed fired before WhitebitWebhookOverdue")
                return await firing("WhitebitWebhookOverdue")

            await wait_for(
                overdue_before_missed,
                timeout=120,
                interval=0.5,
                message=f"WhitebitWebhookOverdue never fired; {failure_log(prometheus)}",
            )
            overdue = [a for a in await prometheus.alerts("WhitebitWebhookOverdue") if a["labels"]["kind"] == "deposit"]
            assert overdue[0]["labels"]["severity"] == "warning"

            async def missed_firing() -> bool:
                return await firing("WhitebitWebhookMissed")

            await wait_for(
                missed_firing,
                timeout=120,
                interval=0.5,
                message=f"WhitebitWebhookMissed never fired; {failure_log(prometheus)}",
            )
            alert = (await prometheus.alerts("WhitebitWebhookMissed"))[0]
            assert alert["labels"]["severity"] == "critical"
            assert alert["labels"]["kind"] == "deposit"
            # Only the dropped webhook was missed: no withdrawal, and the deposit counted once.
            assert not [a for a in await prometheus.alerts("WhitebitWebhookMissed") if a["labels"]["kind"] != "deposit"]
            samples = await prometheus.query(f'whitebit_webhooks_missed_total{{account="{DEMO_ACCOUNT}"}}')
            assert {s["metric"]["kind"]: float(s["value"][1]) for s in samples} == {"deposit": 1.0, "withdraw": 0.0}


def levels_the_demo_trips(config: dict[str, Any]) -> None:
    """Margin levels and low-balance thresholds against the demo's numbers.

    The demo account holds a BTC_USDT long worth about 1.5 times its collateral (a margin fraction near
    0.67), below both levels; demo-spot has no positions (+Inf). Its collateral BTC (0.25, and what
    transfers add) is below 1000; demo-spot, without collateral trading, has no collateral USDT series at
    all, which counts as 0, below 1; its main USDT (25000) never gets below 1.
    """
    config["alerts"]["WhitebitCollateralMarginLow"]["threshold"] = 1000
    config["alerts"]["WhitebitCollateralNearLiquidation"]["threshold"] = 100
    config["balance_thresholds"] = [
        {"account": DEMO_ACCOUNT, "wallet": "collateral", "asset": "BTC", "below": 1000},
        {"account": DEMO_SPOT_ACCOUNT, "wallet": "collateral", "asset": "USDT", "below": 1},
        {"account": DEMO_ACCOUNT, "wallet": "main", "asset": "USDT", "below": 1},
    ]


async def test_the_margin_and_low_balance_alerts_fire_on_the_demo_with_levels_it_trips(tmp_path: Path) -> None:
    async with running_demo(tmp_path / "demo", forge_every=None) as demo:
        assert demo.exporter is not None
        target = demo.exporter.metrics_url.removeprefix("http://")
        async with running_prometheus(tmp_path / "prometheus", target, change=levels_the_demo_trips) as prometheus:

            async def firing_for(alertname: str, *keys: str) -> set[tuple[str, ...]]:
                return {tuple(a["labels"][k] for k in keys) for a in await prometheus.alerts(alertname)}

            async def margin_alerts_firing() -> bool:
                low = await firing_for("WhitebitCollateralMarginLow", "account")
                near = await firing_for("WhitebitCollateralNearLiquidation", "account")
                return (DEMO_ACCOUNT,) in low and (DEMO_ACCOUNT,) in near

            await wait_for(
                margin_alerts_firing,
                timeout=90,
                interval=0.5,
                message=f"the margin alerts never fired for the demo account; {failure_log(prometheus)}",
            )
            samples = await prometheus.query(f'whitebit_collateral_margin_fraction{{job="{JOB}"}}')
            fractions = {s["metric"]["account"]: float(s["value"][1]) for s in samples}
            assert 0 < fractions[DEMO_ACCOUNT] < 100 and fractions[DEMO_SPOT_ACCOUNT] == math.inf, fractions
            # +Inf (no positions) trips neither level: demo-spot is neither firing nor pending.
            for name in ("WhitebitCollateralMarginLow", "WhitebitCollateralNearLiquidation"):
                alerts = (await prometheus.api("alerts"))["alerts"]
                assert {a["labels"]["account"] for a in alerts if a["labels"]["alertname"] == name} == {DEMO_ACCOUNT}
            alert = (await prometheus.alerts("WhitebitCollateralNearLiquidation"))[0]
            assert alert["labels"]["severity"] == "critical"
            assert "has been below 100 for 0s" in alert["annotations"]["description"]

            low = {
                (DEMO_ACCOUNT, "collateral", "BTC", "1000"),
                (DEMO_SPOT_ACCOUNT, "collateral", "USDT", "1"),
            }

            async def balance_alerts_firing() -> bool:
                return await firing_for("WhitebitBalanceLow", "account", "wallet", "asset", "threshold") >= low

            await wait_for(
                balance_alerts_firing,
                timeout=90,
                interval=0.5,
                message=f"WhitebitBalanceLow never fired for both balances; {failure_log(prometheus)}",
            )
            assert await firing_for("WhitebitBalanceLow", "account", "wallet", "asset", "threshold") == low
            emptied = next(
                a for a in await prometheus.alerts("WhitebitBalanceLow") if a["labels"]["account"] == DEMO_SPOT_ACCOUNT
            )
            # No series: counted as 0, and named after the exporter that watches the wallet.
            assert emptied["labels"]["instance"] == target
            assert emptied["annotations"]["description"].startswith(
                f"The collateral balance of account {DEMO_SPOT_ACCOUNT} on {target} is 0 USDT"
            )
            assert not await prometheus.query(
                f'whitebit_balance{{job="{JOB}", account="{DEMO_SPOT_ACCOUNT}", wallet="collateral", asset="USDT"}}'
            )


async def test_prometheus_scrapes_the_exporter_over_tls_with_basic_auth(tmp_path: Path) -> None:
    pki = issue_pki(tmp_path / "pki")
    password = secrets.token_urlsafe(24)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=10)).decode()
    security = WebSecurityConfig(
        tls=ServerTlsConfig(cert_file=str(pki.server_cert), key_file=str(pki.server_key)),
        basic_auth_users=(("prometheus", hashed),),
    )
    async with running_demo(tmp_path / "demo", forge_every=None, web_security=security) as demo:
        assert demo.exporter is not None
        assert demo.exporter.metrics_url.startswith("https://")
        target = demo.exporter.metrics_url.removeprefix("https://")

        def job(name: str, secret: str) -> dict[str, Any]:
            return {
                "job_name": name,
                "scheme": "https",
                "tls_config": {"ca_file": str(pki.ca)},
                "basic_auth": {"username": "prometheus", "password": secret},
                "static_configs": [{"targets": [target]}],
            }

        # The second job has a wrong password: it shows that the first one is up because it authenticated.
        jobs = [job(JOB, password), job("wrong-password", password + "x")]
        async with running_prometheus(tmp_path / "prometheus", target, scrape_configs=jobs) as prometheus:

            async def both_scraped() -> bool:
                targets = (await prometheus.api("targets"))["activeTargets"]
                return {t["labels"]["job"]: t["health"] for t in targets} == {JOB: "up", "wrong-password": "down"}

            await wait_for(
                both_scraped, timeout=60, interval=0.5, message=f"never scraped over TLS; {failure_log(prometheus)}"
            )
            assert await prometheus.query(f'up{{job="{JOB}"}} == 1')
            targets = {t["labels"]["job"]: t for t in (await prometheus.api("targets"))["activeTargets"]}
            assert targets[JOB]["scrapeUrl"] == f"https://{target}/metrics"
            assert "401" in targets["wrong-password"]["lastError"]

            async def refusals_counted() -> bool:
                samples = await prometheus.query(
                    f'whitebit_exporter_metrics_listener_auth_rejected_total{{job="{JOB}",reason="wrong_credentials"}}'
                )
                return bool(samples) and float(samples[0]["value"][1]) >= 1

            await wait_for(refusals_counted, timeout=30, interval=0.5, message="the wrong password was never counted")
