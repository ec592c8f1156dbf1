"""The README's path without Docker, followed with the Debian packages: Prometheus and Alertmanager on a host.

The test lays out a host's ``/etc/prometheus`` under a temporary root as the README's steps do: the
bundled ``alerts.yaml`` and ``rules.yaml`` copied as they are, ``prometheus.yml`` made from the bundle's
example (its rule file paths under the root, the exporter and Alertmanager on this machine), and
``alertmanager.yml`` from the bundle's example with its webhook receivers pointed at a recorder here.
``promtool check config`` and ``amtool check-config`` accept both, then the Debian package's
``/usr/bin/prometheus`` and ``/usr/bin/prometheus-alertmanager`` run them against the demo. A nonce
regression sent to the demo's exporter fires WhitebitWebhookNonceRegressions (``for: 0m`` in the
bundle), Prometheus sends it to Alertmanager, and Alertmanager routes it by severity to the
``tickets`` receiver. Only speed differs from a host: 1 s scrape and evaluation intervals and a 1 s
``group_wait`` instead of 30 s.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from exporter.whitebit.signing import compact_json, sign_body
from tests.bundle.harness import ALERTS, PROMETHEUS_DIR, RULES, run_tool, running_demo, running_tool, tool
from tests.bundle.test_e2e import free_port
from tests.helpers import wait_for

ALERT = "WhitebitWebhookNonceRegressions"


def host_prometheus_config(root: Path, exporter: str, alertmanager: str) -> Path:
    """``/etc/prometheus/prometheus.yml`` under ``root``, from the bundle's example, as the README says."""
    example = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    rules = root / "etc/prometheus/rules"
    rules.mkdir(parents=True)
    for bundled in (RULES, ALERTS):
        shutil.copy(bundled, rules / bundled.name)
    # The example names /etc/prometheus/rules/…, where the README copies the files: only the root differs.
    example["rule_files"] = [str(root / path.lstrip("/")) for path in example["rule_files"]]
    example["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
    example["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [alertmanager]
    [job] = example["scrape_configs"]
    job["static_configs"][0]["targets"] = [exporter]
    path = root / "etc/prometheus/prometheus.yml"
    path.write_text(yaml.safe_dump(example))
    return path


def host_alertmanager_config(root: Path, receiver_url: str) -> Path:
    """``/etc/prometheus/alertmanager.yml`` under ``root``: the bundle's example, its receivers pointed here."""
    example = yaml.safe_load((PROMETHEUS_DIR / "alertmanager.yml").read_text())
    for receiver in example["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = f"{receiver_url}/{receiver['name']}"
    example["route"]["group_wait"] = "1s"
    for route in example["route"]["routes"]:
        route.pop("group_wait", None)
    path = root / "etc/prometheus/alertmanager.yml"
    path.write_text(yaml.safe_dump(example))
    return path


@contextlib.asynccontextmanager
async def notification_recorder() -> AsyncIterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
    """A webhook receiver for Alertmanager: (receiver name, notification) for each POST."""
    received: list[tuple[str, dict[str, Any]]] = []

    async def record(request: web.Request) -> web.Response:
        received.append((request.match_info["receiver"], json.loads(await request.read())))
        return web.Response()

    app = web.Application()
    app.router.add_post("/{receiver}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", received
    finally:
        await runner.cleanup()


async def test_the_bundle_on_a_host_prometheus_and_alertmanager_routes_an_alert_to_its_receiver(
    tmp_path: Path,
) -> None:
    root = tmp_path / "host"
    async with running_demo(tmp_path / "demo") as demo, notification_recorder() as (receiver_url, received):
        assert demo.exporter is not None
        alertmanager_port = free_port()
        prometheus_config = host_prometheus_config(
            root, demo.exporter.metrics_url.removeprefix("http://"), f"127.0.0.1:{alertmanager_port}"
        )
        alertmanager_config = host_alertmanager_config(root, receiver_url)
        code, output = run_tool("promtool", "check", "config", str(prometheus_config))
        assert code == 0, output
        code, output = run_tool("amtool", "check-config", str(alertmanager_config))
        assert code == 0, output

        prometheus_port = free_port()
        async with (
            running_tool(
                tool("prometheus-alertmanager"),
                f"--config.file={alertmanager_config}",
                f"--storage.path={tmp_path / 'alertmanager'}",
                f"--web.listen-address=127.0.0.1:{alertmanager_port}",
                "--cluster.listen-address=",
                log=tmp_path / "alertmanager.log",
            ),
            running_tool(
                tool("prometheus"),
                f"--config.file={prometheus_config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                log=tmp_path / "prometheus.log",
            ),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http,
        ):

            async def scraped() -> bool:
                try:
                    async with http.get(
                        f"http://127.0.0.1:{prometheus_port}/api/v1/query", params={"query": "up == 1"}
                    ) as answer:
                        return bool((await answer.json())["data"]["result"])
                except aiohttp.ClientError:
                    return False

            await wait_for(scraped, timeout=60, interval=0.5, message="Prometheus never scraped the exporter")

            # A verified delivery whose nonce is not above the highest seen: counted, and the alert fires.
            credentials = demo.credentials
            for nonce in (2**62, 2**62 - 1):
                body = compact_json(
                    {"method": "code.apply", "params": {"code": f"HOST-{nonce}", "nonce": nonce}, "id": f"host-{nonce}"}
                )
                headers = sign_body(body, key=credentials.webhook_key, secret=credentials.webhook_secret)
                async with http.post(
                    f"{demo.exporter.webhooks_url}/webhooks/whitebit", data=body, headers=headers
                ) as r:
                    assert r.status == 200, await r.text()

            def notified() -> bool:
                return any(
                    alert["labels"]["alertname"] == ALERT
                    for _, notification in received
                    for alert in notification["alerts"]
                )

            await wait_for(
                notified,
                timeout=90,
                interval=0.5,
                message=f"Alertmanager never sent {ALERT}; see {tmp_path / 'alertmanager.log'}",
            )
    [(receiver, notification)] = [
        (name, n) for name, n in received if any(a["labels"]["alertname"] == ALERT for a in n["alerts"])
    ][:1]
    assert receiver == "tickets" and notification["receiver"] == "tickets"  # a warning makes a ticket
    [alert] = [a for a in notification["alerts"] if a["labels"]["alertname"] == ALERT]
    assert alert["labels"]["severity"] == "warning" and alert["status"] == "firing"
    assert alert["annotations"]["runbook_url"].endswith("#whitebitwebhooknonceregressions")
