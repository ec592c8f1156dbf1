"""The Prometheus half of the monitoring bundle: rules, their unit tests, runbook, example configs.

promtool checks and unit-tests the rules; the generated files must match prometheus/config.yaml; every
alert follows the conventions (shared prefix, severity, summary, description, runbook and dashboard
links that resolve, ``for:``) and has a firing and a non-firing case in the promtool tests; the
runbook has one heading per alert; amtool accepts the Alertmanager example.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.bundle.harness import (
    ALERTS,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    RULE_TESTS,
    RULES,
    RUNBOOK,
    alert_rules,
    configured_records,
    dashboards,
    metric_names,
    recording_rules,
    run_tool,
)

SEVERITIES = {"critical", "warning", "info"}
REQUIRED_ALERTS = {
    "WhitebitWebhookMissed",
    "WhitebitWebhookSignatureFailures",
    "WhitebitWebhookNonceRegressions",
    "WhitebitWebhookReplayBurst",
    "WhitebitWebsocketDown",
    "WhitebitWebsocketStale",
    "WhitebitRestRateLimited",
    "WhitebitRestFailing",
    "WhitebitExporterDown",
    "WhitebitExporterAbsent",
    "WhitebitZerohashFeedSilent",
    "WhitebitTransferStuck",
}


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_promtool_accepts_the_alerting_and_recording_rules() -> None:
    code, output = run_tool("promtool", "check", "rules", str(ALERTS), str(RULES))
    assert code == 0, output
    assert "SUCCESS" in output


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    code, output = run_tool("promtool", "test", "rules", str(RULE_TESTS))
    assert code == 0, output


@pytest.mark.parametrize("script", ["prometheus/generate.py", "grafana/generate.py"])
def test_generated_rules_and_dashboards_are_committed_up_to_date(script: str) -> None:
    root = PROMETHEUS_DIR.parent
    result = subprocess.run(
        [sys.executable, str(root / script), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_generator_rejects_an_unknown_alert_and_a_bad_severity(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())
    for change, expected in (
        (lambda c: c["alerts"].update(WhitebitTypo={"severity": "warning", "for": "5m"}), "WhitebitTypo"),
        (lambda c: c["alerts"]["WhitebitWebhookMissed"].update(severity="page"), "severity"),
        (lambda c: c["alerts"]["WhitebitWebhookMissed"].update(window="soon"), "soon"),
    ):
        broken = yaml.safe_load(yaml.safe_dump(config))
        change(broken)
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(broken))
        result = subprocess.run(
            [sys.executable, str(PROMETHEUS_DIR / "generate.py"), "--config", str(path), "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 1
        assert expected in result.stderr


def test_a_changed_threshold_and_selector_reach_the_generated_rules(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())
    config["selector"] = 'job="payments-exporter"'
    config["alerts"]["WhitebitWebhookReplayBurst"]["threshold"] = 42
    config["alerts"]["WhitebitWebsocketDown"]["enabled"] = False
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(PROMETHEUS_DIR / "generate.py"), "--config", str(path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rules = {
        r["alert"]: r for g in yaml.safe_load((tmp_path / "alerts.yaml").read_text())["groups"] for r in g["rules"]
    }
    assert rules["WhitebitWebhookReplayBurst"]["expr"].endswith("> 42")
    assert "WhitebitWebsocketDown" not in rules
    recorded = [r for g in yaml.safe_load((tmp_path / "rules.yaml").read_text())["groups"] for r in g["rules"]]
    for rule in [*rules.values(), *recorded]:
        assert 'job="payments-exporter"' in rule["expr"] or "account_endpoint:" in rule["expr"], rule
    code, output = run_tool("promtool", "check", "rules", str(tmp_path / "alerts.yaml"))
    assert code == 0, output


def test_every_required_alert_exists_with_the_shared_prefix() -> None:
    names = [rule["alert"] for rule in alert_rules()]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    assert all(re.fullmatch(r"Whitebit[A-Z][A-Za-z]+", name) for name in names), names
    missed = next(rule for rule in alert_rules() if rule["alert"] == "WhitebitWebhookMissed")
    assert missed["labels"]["severity"] == "critical"


def test_every_alert_has_severity_for_and_the_four_annotations() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert "for" in rule, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url", "dashboard_url"}, name
        assert annotations["summary"].endswith("."), name
        assert "{{ $labels." in annotations["description"] or "{{ $value" in annotations["description"], name
        assert 'job="' in rule["expr"] or "account_endpoint:" in rule["expr"], f"{name} has no job selector"


def test_every_runbook_url_points_at_its_own_heading_in_the_runbook() -> None:
    headings = [line[3:].strip() for line in RUNBOOK.read_text().splitlines() if line.startswith("## ")]
    anchors = {github_anchor(heading) for heading in headings}
    alerts = [rule["alert"] for rule in alert_rules()]
    assert sorted(headings) == sorted(alerts), "the runbook needs exactly one '## <alert>' heading per alert"
    for rule in alert_rules():
        url = rule["annotations"]["runbook_url"]
        assert url.split("#")[0].endswith("/prometheus/runbook.md"), url
        fragment = url.split("#", 1)[1]
        assert fragment == github_anchor(rule["alert"]) and fragment in anchors, url


def test_every_dashboard_url_names_a_bundled_dashboard() -> None:
    uids = {dashboard["uid"] for dashboard in dashboards().values()}
    for rule in alert_rules():
        match = re.search(r"/d/([A-Za-z0-9_-]+)\?", rule["annotations"]["dashboard_url"])
        assert match and match.group(1) in uids, rule["annotations"]["dashboard_url"]


def test_every_alert_has_a_firing_and_a_non_firing_unit_test() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text())
    assert {Path(p).name for p in document["rule_files"]} == {ALERTS.name, RULES.name}
    positive: set[str] = set()
    negative: set[str] = set()
    for group in document["tests"]:
        for case in group.get("alert_rule_test", []):
            (positive if case["exp_alerts"] else negative).add(case["alertname"])
            for alert in case["exp_alerts"]:
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url", "dashboard_url"}
    alerts = {rule["alert"] for rule in alert_rules()}
    assert alerts - positive == set(), "alerts without a firing case"
    assert alerts - negative == set(), "alerts without a non-firing case"


def test_recording_rules_follow_level_metric_operation_naming_and_are_used() -> None:
    records = {rule["record"] for rule in recording_rules()} | configured_records()
    for record in records:
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", record), record
    used = set().union(*(metric_names(rule["expr"]) for rule in alert_rules()))
    assert used & records, "no alert uses a recording rule"
    assert {name for name in used if ":" in name} <= records


def run_generator(config: dict[str, object], directory: Path) -> subprocess.CompletedProcess[str]:
    """generate.py on ``config``, writing into ``directory``."""
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, str(PROMETHEUS_DIR / "generate.py"), "--config", str(path), "--out", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_balance_thresholds_become_series_the_low_balance_alert_compares_with(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())
    assert config["balance_thresholds"] == []  # none by default
    config["balance_thresholds"] = [
        {"account": "payouts", "wallet": "main", "asset": "USDT", "below": 5000},
        {"account": "payouts", "wallet": "spot", "asset": "BTC", "below": 0.25},
    ]
    result = run_generator(config, tmp_path)
    assert result.returncode == 0, result.stderr
    groups = yaml.safe_load((tmp_path / "rules.yaml").read_text())["groups"]
    assert [g["name"] for g in groups] == [
        "whitebit-exporter.rules",
        "whitebit-exporter.valuation",
        "whitebit-exporter.balance-thresholds",
    ]
    assert groups[2]["rules"] == [
        {
            "record": "account_wallet_asset:whitebit_balance:low_threshold",
            "expr": "vector(5000)",
            "labels": {"account": "payouts", "wallet": "main", "asset": "USDT", "threshold": "5000"},
        },
        {
            "record": "account_wallet_asset:whitebit_balance:low_threshold",
            "expr": "vector(0.25)",
            "labels": {"account": "payouts", "wallet": "spot", "asset": "BTC", "threshold": "0.25"},
        },
    ]
    # The generated series and the alert rule work together: main USDT is below its threshold, spot BTC is
    # not, and the emptied spot USDT has none.
    account = 'job="whitebit-exporter", instance="exp:9945", account="payouts"'
    balances = {("main", "USDT"): "4000x10", ("spot", "BTC"): "0.3x10", ("spot", "USDT"): "0x10"}
    series = [
        {"series": f'whitebit_balance{{{account}, wallet="{wallet}", asset="{asset}"}}', "values": values}
        for (wallet, asset), values in balances.items()
    ]
    series.append({"series": f"whitebit_up{{{account}}}", "values": "1x10"})
    expected = {
        "exp_labels": {
            "severity": "warning",
            "job": "whitebit-exporter",
            "instance": "exp:9945",
            "account": "payouts",
            "wallet": "main",
            "asset": "USDT",
            "threshold": "5000",
        },
        "exp_annotations": {
            "summary": "A WhiteBIT balance is below its configured threshold.",
            "description": "The main balance of account payouts on exp:9945 is 4000 USDT and has been below its "
            "threshold of 5000 USDT for 5m (balance_thresholds in prometheus/config.yaml).",
            "runbook_url": f"{config['runbook_url']}#whitebitbalancelow",
            "dashboard_url": "http://localhost:3000/d/whitebit-overview?var-job=whitebit-exporter"
            "&var-instance=exp:9945&var-account=payouts",
        },
    }
    unit_test = {
        "interval": "1m",
        "input_series": series,
        "alert_rule_test": [{"eval_time": "6m", "alertname": "WhitebitBalanceLow", "exp_alerts": [expected]}],
    }
    document = {"rule_files": ["alerts.yaml", "rules.yaml"], "evaluation_interval": "1m", "tests": [unit_test]}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(document))
    code, output = run_tool("promtool", "test", "rules", str(tmp_path / "test.yaml"))
    assert code == 0, output


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"account": "main", "wallet": "margin", "asset": "USDT", "below": 1}, "balance_thresholds[0].wallet"),
        ({"account": 'ma"in', "wallet": "main", "asset": "USDT", "below": 1}, "balance_thresholds[0].account"),
        ({"account": "main", "wallet": "main", "asset": "", "below": 1}, "balance_thresholds[0].asset"),
        ({"account": "main", "wallet": "main", "asset": "USDT", "below": 0}, "balance_thresholds[0].below"),
        ({"account": "main", "wallet": "main", "asset": "USDT", "below": "lots"}, "balance_thresholds[0].below"),
        ({"account": "main", "wallet": "main", "asset": "USDT"}, "needs exactly account, wallet, asset and below"),
    ],
)
def test_the_generator_rejects_a_bad_balance_threshold(tmp_path: Path, entry: dict[str, object], expected: str) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())
    config["balance_thresholds"] = [entry]
    result = run_generator(config, tmp_path)
    assert result.returncode == 1
    assert expected in result.stderr


def test_the_generator_rejects_a_balance_threshold_given_twice(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())
    entry = {"account": "main", "wallet": "spot", "asset": "BTC", "below": 1}
    config["balance_thresholds"] = [entry, {**entry, "below": 2}]
    result = run_generator(config, tmp_path)
    assert result.returncode == 1
    assert "balance_thresholds[1]: main/spot/BTC has a threshold already" in result.stderr


def test_the_margin_alerts_follow_the_summary_max_age_and_refuse_levels_in_the_wrong_order(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())
    config["alerts"]["WhitebitCollateralSummaryStale"].update(max_age="10m", enabled=False)
    result = run_generator(config, tmp_path)
    assert result.returncode == 0, result.stderr
    rules = {
        r["alert"]: r for g in yaml.safe_load((tmp_path / "alerts.yaml").read_text())["groups"] for r in g["rules"]
    }
    assert "WhitebitCollateralSummaryStale" not in rules
    for name in ("WhitebitCollateralMarginLow", "WhitebitCollateralNearLiquidation"):
        assert rules[name]["expr"].endswith("<= 600)"), rules[name]["expr"]
    config["alerts"]["WhitebitCollateralNearLiquidation"]["threshold"] = 0.1
    result = run_generator(config, tmp_path)
    assert result.returncode == 1
    assert "WhitebitCollateralNearLiquidation.threshold: 0.1 must be below" in result.stderr


def test_amtool_accepts_the_alertmanager_example_and_it_routes_by_severity() -> None:
    path = PROMETHEUS_DIR / "alertmanager.yml"
    code, output = run_tool("amtool", "check-config", str(path))
    assert code == 0, output
    assert "SUCCESS" in output
    routes = yaml.safe_load(path.read_text())["route"]["routes"]
    assert {m for route in routes for m in route["matchers"]} == {
        'severity="critical"',
        'severity="warning"',
        'severity="info"',
    }
    for severity, receiver in (("critical", "pager"), ("warning", "tickets"), ("info", "blackhole")):
        code, output = run_tool(
            "amtool",
            "config",
            "routes",
            "test",
            "--config.file",
            str(path),
            f"severity={severity}",
            "alertname=WhitebitWebhookMissed",
            "job=whitebit-exporter",
        )
        assert code == 0, output
        assert output.splitlines()[0].strip() == receiver, output


def test_promtool_accepts_the_prometheus_example_with_the_bundled_rules(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    # The example mounts the rules under /etc/prometheus/rules/ (docker-compose.yml); point at the repo's.
    config["rule_files"] = [str(PROMETHEUS_DIR / Path(p).name) for p in config["rule_files"]]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    code, output = run_tool("promtool", "check", "config", str(path))
    assert code == 0, output
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    selector = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())["selector"]
    assert f'job="{jobs[0]}"' in selector


def test_grafana_provisioning_points_at_the_dashboards_mounted_by_compose() -> None:
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "whitebit-exporter.yaml").read_text())
    datasource = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    compose = yaml.safe_load((PROMETHEUS_DIR.parent / "docker-compose.yml").read_text())
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./grafana/dashboards:{provider['providers'][0]['options']['path']}:ro" in mounts
    assert datasource["datasources"][0]["type"] == "prometheus"
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
