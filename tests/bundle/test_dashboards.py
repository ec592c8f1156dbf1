"""The Grafana half of the monitoring bundle: dashboard conventions, coverage and valid PromQL.

Every dashboard has a stable uid, the ``datasource`` variable and the ``job``/``instance``/``account``
variables (Zero Hash: ``account_group``), the exporter-restart annotation (the WhiteBIT ones the
WebSocket-reconnect one too); every data panel a unit, thresholds, a description and ``$datasource``;
every selector job and instance matchers, every rate ``$__rate_interval``; balances get one panel per
asset; a panel that draws an alert's threshold draws the one prometheus/config.yaml sets; every metric
the exporter exports is on a dashboard, and every name a dashboard reads is documented in the README;
every query, its variables substituted, is valid PromQL to promtool (wrapped as recording rules).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from exporter.core.metrics import METRICS
from tests.bundle.harness import (
    ALERTS,
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    alert_rules,
    dashboard_queries,
    dashboards,
    data_panels,
    metric_names,
    prometheus_annotations,
    readme_metric_names,
    recording_rules,
    run_tool,
    selectors,
    substitute_variables,
)

EXPECTED = {
    "whitebit-overview.json": "whitebit-overview",
    "whitebit-webhooks.json": "whitebit-webhooks",
    "whitebit-connectivity.json": "whitebit-connectivity",
    "whitebit-zerohash.json": "whitebit-zerohash",
}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_the_four_dashboards_exist_with_stable_uids_and_classic_json() -> None:
    found = dashboards()
    assert {name: d["uid"] for name, d in found.items()} == EXPECTED
    for name, dashboard in found.items():
        assert 8 <= len(dashboard["uid"]) <= 40, name
        assert dashboard.get("id") is None, name  # no fixed database id: Grafana assigns one
        assert dashboard["title"] and dashboard["tags"], name
        assert isinstance(dashboard["schemaVersion"], int), name
        assert "__inputs" not in dashboard, f"{name}: ${{DS_…}} inputs break file provisioning"


def test_every_dashboard_has_the_datasource_job_instance_and_account_variables() -> None:
    for name, dashboard in dashboards().items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        datasource = [v for v in variables.values() if v["type"] == "datasource"]
        assert len(datasource) == 1 and datasource[0]["name"] == "datasource", name
        assert datasource[0]["label"] == "Data Source" and datasource[0]["query"] == "prometheus", name
        scope = "account_group" if name == "whitebit-zerohash.json" else "account"
        for variable in ("job", "instance", scope):
            v = variables[variable]
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            assert v["datasource"] == DATASOURCE, (name, variable)
            assert query.startswith("label_values("), (name, variable)
            assert v["multi"] and v["includeAll"] and v["allValue"] == ".+", (name, variable)
        assert 'job=~"$job"' in variables["instance"]["query"]["query"], name


def test_every_panel_has_a_unit_a_description_and_the_datasource_variable() -> None:
    for name, dashboard in dashboards().items():
        panels = list(data_panels(dashboard))
        assert panels, name
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        for panel in panels:
            where = f"{name}: {panel['title']}"
            assert panel["description"].strip(), where
            defaults = panel["fieldConfig"]["defaults"]
            assert defaults["unit"], where
            # Thresholds set on purpose (Grafana's own default is green with red from 80, whatever the unit).
            thresholds = defaults["thresholds"]
            assert thresholds["mode"] == "absolute", where
            assert thresholds["steps"][0]["value"] is None, where
            values = [step["value"] for step in thresholds["steps"][1:]]
            assert values == sorted(values), where
            assert panel["datasource"] == DATASOURCE, where
            assert panel["targets"], where
            for target in panel["targets"]:
                assert target.get("datasource", DATASOURCE) == DATASOURCE, where


def test_every_query_selects_on_job_and_instance_and_rates_use_rate_interval() -> None:
    for name, title, expr in dashboard_queries():
        if title.startswith("$"):
            continue  # variable queries narrow by the variables before them
        where = f"{name}: {title}: {expr}"
        found = selectors(expr)
        assert found, where
        for metric, matchers in found:
            assert 'job=~"$job"' in matchers, f"{where}: {metric} lacks the job matcher"
            assert 'instance=~"$instance"' in matchers, f"{where}: {metric} lacks the instance matcher"
            # Prices are the market's, no account's: they carry no account label.
            if metric.startswith("whitebit_") and not metric.startswith(("whitebit_exporter_", "whitebit_price")):
                assert re.search(r'account=~"\$account', matchers), f"{where}: {metric} lacks the account matcher"
        for window in re.findall(r"\(\s*(?:rate|irate|increase|changes|resets)\([^\[]*\[([^\]]+)\]", expr):
            assert window in ("$__rate_interval", "$__range"), f"{where}: window {window}"


def test_the_relay_row_draws_its_alerts_thresholds_on_the_dashboard_they_link_to() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())["alerts"]
    rules = {rule["alert"]: rule for rule in alert_rules()}
    for alert in ("WhitebitExporterRelayBehind", "WhitebitExporterRelayDeadLetters"):
        assert "/d/whitebit-webhooks?" in rules[alert]["annotations"]["dashboard_url"], f"{ALERTS}: {alert}"
    panels = {p["title"]: p for p in data_panels(dashboards()["whitebit-webhooks.json"])}

    def steps(title: str) -> list[tuple[str, float | None]]:
        thresholds = panels[title]["fieldConfig"]["defaults"]["thresholds"]
        return [(step["color"], step["value"]) for step in thresholds["steps"]]

    behind = panels["Oldest owed delivery"]
    assert "whitebit_exporter_relay_oldest_pending_seconds" in behind["targets"][0]["expr"]
    assert behind["fieldConfig"]["defaults"]["unit"] == "s"
    assert behind["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "line"}
    assert steps("Oldest owed delivery") == [
        ("green", None),
        ("red", config["WhitebitExporterRelayBehind"]["threshold"]),
    ]
    dead = panels["Dead letters"]
    assert dead["type"] == "stat" and "whitebit_exporter_relay_dead_letters" in dead["targets"][0]["expr"]
    assert steps("Dead letters") == [("green", None), ("red", 1)]  # a count: red from the first dead letter


def test_every_dashboard_query_is_valid_promql_to_promtool(tmp_path: Path) -> None:
    rules = []
    for index, (_, title, expr) in enumerate(dashboard_queries()):
        query = expr
        if title.startswith("$"):
            # label_values(selector, label) is Grafana's: its selector must still be valid PromQL.
            query = re.fullmatch(r"label_values\((.*),\s*\w+\)", expr).group(1)  # type: ignore[union-attr]
        rules.append({"record": f"dashboard_query_{index}", "expr": substitute_variables(query)})
    assert all("$" not in rule["expr"] for rule in rules), [r for r in rules if "$" in r["expr"]]
    path = tmp_path / "dashboard_queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    code, output = run_tool("promtool", "check", "rules", str(path))
    assert code == 0, output
    assert f"SUCCESS: {len(rules)} rules found" in output


def test_promtool_rejects_a_broken_query_so_the_check_above_can_fail(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    broken = substitute_variables('sum by (account (rate(whitebit_rest_requests_total{job=~"$job"}[$__rate_interval]))')
    path.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x", "expr": broken}]}]}))
    code, _ = run_tool("promtool", "check", "rules", str(path))
    assert code != 0


def test_selector_extraction_finds_names_and_matchers_but_not_functions_or_labels() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, endpoint) (rate(a_bucket{job=~"$job"}[5m]))) '
        "/ on (job) group_left (instance) b > bool 1e3 and time() - c offset 5m"
    )
    assert selectors(expr) == [("a_bucket", 'job=~"$job"'), ("b", ""), ("c", "")]


def test_label_values_queries_read_their_metric_not_their_label() -> None:
    assert metric_names('label_values(whitebit_up{job=~"$job", instance=~"$instance"}, account)') == {"whitebit_up"}


def panels_by_title(file: str) -> dict[str, dict[str, Any]]:
    return {panel["title"]: panel for panel in data_panels(dashboards()[file])}


def red_steps(panel: dict[str, Any]) -> list[float]:
    """The values from which the panel turns red (an alert's threshold is one)."""
    return [s["value"] for s in panel["fieldConfig"]["defaults"]["thresholds"]["steps"] if s["color"] == "red"]


#: Panels that draw an alert's threshold: (dashboard, panel title, alert, key in prometheus/config.yaml).
ALERT_LINES = [
    ("whitebit-overview.json", "Wallet age", "WhitebitBalanceStale", "max_age"),
    ("whitebit-overview.json", "Oldest deposit in flight", "WhitebitTransferStuck", "deposit_max_age"),
    ("whitebit-overview.json", "Oldest withdrawal in flight", "WhitebitTransferStuck", "withdraw_max_age"),
    ("whitebit-webhooks.json", "Inbox lag", "WhitebitExporterInboxBehind", "threshold"),
    ("whitebit-webhooks.json", "Oldest owed delivery", "WhitebitExporterRelayBehind", "threshold"),
    ("whitebit-connectivity.json", "Time since last WebSocket message", "WhitebitWebsocketStale", "max_age"),
    ("whitebit-connectivity.json", "Rate limit usage", "WhitebitRestRateLimitNearlyExhausted", "threshold"),
    ("whitebit-connectivity.json", "WhiteBIT clock offset", "WhitebitClockOffsetLarge", "threshold"),
    ("whitebit-connectivity.json", "Time since WhiteBIT's clock was measured", "WhitebitClockUnmeasured", "max_age"),
    ("whitebit-zerohash.json", "Time since last Zero Hash webhook", "WhitebitZerohashFeedSilent", "max_age"),
]
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def config_value(alert: str, key: str, config: dict[str, Any] | None = None) -> float:
    alerts = (config or yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text()))["alerts"]
    raw = alerts[alert][key]
    if isinstance(raw, str):
        return float(raw[:-1]) * SECONDS[raw[-1]]
    return float(raw)


def test_panels_draw_the_thresholds_of_the_alerts_they_show_as_set_in_the_alerts_config() -> None:
    for file, title, alert, key in ALERT_LINES:
        panel = panels_by_title(file)[title]
        where = f"{file}: {title}"
        assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "line"}, where
        assert config_value(alert, key) in red_steps(panel), where
        assert alert in panel["description"], f"{where}: the description names the alert whose line it draws"
    # The clock offset alert fires on either side of zero: red below -threshold and above +threshold.
    offset = panels_by_title("whitebit-connectivity.json")["WhiteBIT clock offset"]
    limit = config_value("WhitebitClockOffsetLarge", "threshold")
    assert [(s["color"], s["value"]) for s in offset["fieldConfig"]["defaults"]["thresholds"]["steps"]] == [
        ("red", None),
        ("green", -limit),
        ("red", limit),
    ]


def test_a_changed_alert_threshold_moves_the_line_on_the_dashboard(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())
    config["alerts"]["WhitebitExporterRelayBehind"]["threshold"] = 1234
    config["alerts"]["WhitebitBalanceStale"]["max_age"] = "7m"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(GRAFANA_DIR / "generate.py"), "--alerts-config", str(path), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    def panel(file: str, title: str) -> dict[str, Any]:
        found = json.loads((tmp_path / file).read_text())
        return next(p for p in data_panels(found) if p["title"] == title)

    behind = panel("whitebit-webhooks.json", "Oldest owed delivery")
    assert red_steps(behind) == [1234]
    assert "1234 s" in behind["description"]
    assert red_steps(panel("whitebit-overview.json", "Wallet age")) == [420]
    assert "7 minutes" in panel("whitebit-overview.json", "Wallet age")["description"]


def test_the_collateral_margin_fraction_is_drawn_against_liquidation() -> None:
    panels = panels_by_title("whitebit-overview.json")
    for title in ("Margin fraction", "Margin fraction now"):
        panel = panels[title]
        defaults = panel["fieldConfig"]["defaults"]
        assert defaults["unit"] == "percentunit", title
        # Red below the level that pages (near liquidation), orange below the one that warns, green above:
        # the margin alerts' own levels, so the panel and the alerts agree.
        steps = defaults["thresholds"]["steps"]
        assert [s["color"] for s in steps] == ["red", "orange", "green"], title
        assert [s["value"] for s in steps[1:]] == [
            config_value("WhitebitCollateralNearLiquidation", "threshold"),
            config_value("WhitebitCollateralMarginLow", "threshold"),
        ], title
        # Without open positions the fraction is +Inf: left out rather than drawn off the scale.
        assert panel["targets"][0]["expr"].endswith("< Inf"), title
    assert panels["Margin fraction now"]["fieldConfig"]["defaults"]["noValue"] == "no open position"


def test_balances_get_one_panel_per_asset_from_a_multi_value_asset_variable() -> None:
    for file, metric in (
        ("whitebit-overview.json", "whitebit_balance"),
        ("whitebit-zerohash.json", "zerohash_balance"),
    ):
        dashboard = dashboards()[file]
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        asset = variables["asset"]
        assert asset["type"] == "query" and asset["multi"] and asset["includeAll"], file
        assert asset["query"]["query"].startswith(f"label_values({metric}{{") and asset["query"]["query"].endswith(
            ", asset)"
        ), file
        # Variables refer only to variables defined before them.
        names = list(variables)
        assert names.index("asset") > names.index("instance"), file
        repeated = [p for p in data_panels(dashboard) if p.get("repeat") == "asset"]
        assert repeated, file
        for panel in repeated:
            assert "$asset" in panel["title"], panel["title"]
            assert panel["gridPos"]["w"] == 24 and panel["maxPerRow"] >= 2, panel["title"]
            assert all('asset=~"$asset"' in t["expr"] for t in panel["targets"]), panel["title"]
        # No panel puts several assets' balances on one axis.
        for panel in data_panels(dashboard):
            for target in panel["targets"]:
                if metric in metric_names(target["expr"]):
                    assert 'asset=~"$asset"' in target["expr"], f"{file}: {panel['title']}"
    # The per-asset panel of the overview shows what the asset's balance is made of, on its own scale.
    overview = next(p for p in data_panels(dashboards()["whitebit-overview.json"]) if p.get("repeat") == "asset")
    read = set().union(*(metric_names(t["expr"]) for t in overview["targets"]))
    assert read == {"whitebit_balance", "whitebit_balance_frozen", "whitebit_collateral_borrowed"}


def test_amounts_left_in_open_orders_get_one_panel_per_market() -> None:
    dashboard = dashboards()["whitebit-overview.json"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    market = variables["market"]
    assert market["multi"] and market["includeAll"]
    assert market["query"]["query"].startswith("label_values(whitebit_open_orders_left{")
    # Each market's base asset on a scale of its own: no panel draws two markets' amounts together.
    readers = [p for p in data_panels(dashboard) if any("whitebit_open_orders_left" in t["expr"] for t in p["targets"])]
    assert readers and all(p.get("repeat") == "market" and "$market" in p["title"] for p in readers)
    assert all('market=~"$market"' in t["expr"] for p in readers for t in p["targets"])


def test_every_dashboard_marks_exporter_restarts_and_the_whitebit_ones_websocket_reconnects() -> None:
    for file, dashboard in dashboards().items():
        annotations = {a["name"]: a for a in prometheus_annotations(dashboard)}
        restarts = annotations["Exporter restarts"]
        assert restarts["datasource"] == DATASOURCE and restarts["enable"], file
        assert metric_names(restarts["expr"]) == {"process_start_time_seconds"}, file
        # The start time, in milliseconds, is the event's time: marked where it happened however long it was down.
        assert restarts["useValueForTime"] and restarts["expr"].endswith("* 1000"), file
        if file in ("whitebit-overview.json", "whitebit-connectivity.json"):
            reconnects = annotations["WebSocket reconnects"]
            assert reconnects["datasource"] == DATASOURCE and reconnects["enable"], file
            assert metric_names(reconnects["expr"]) == {"whitebit_websocket_reconnects_total"}, file
            assert reconnects["expr"].endswith("> 0") and not reconnects["useValueForTime"], file
            assert reconnects["tagKeys"] == "account", file
        for annotation in annotations.values():
            assert annotation["titleFormat"] and annotation["step"], (file, annotation["name"])
        built_in = [a for a in dashboard["annotations"]["list"] if a.get("builtIn") == 1]
        assert len(built_in) == 1, file


def test_every_metric_the_exporter_exports_is_on_a_dashboard() -> None:
    read = set().union(*(metric_names(expr) for _, _, expr in dashboard_queries()))
    missing = sorted(metric.name for metric in METRICS if not set(metric.sample_names) & read)
    assert missing == []


def test_dashboards_read_only_metrics_the_readme_documents() -> None:
    documented = readme_metric_names()
    recorded = {rule["record"] for rule in recording_rules()}  # the README documents these under the rules
    for file, title, expr in dashboard_queries():
        for name in metric_names(expr) - {"up"} - recorded:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in documented or base in documented, f"{file}: {title}: {name} is not in the README"


def test_panels_fit_the_grid_without_overlapping() -> None:
    for file, dashboard in dashboards().items():
        cells: dict[tuple[int, int], str] = {}
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, f"{file}: {panel['title']}"
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{file}: {panel['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = panel["title"]
