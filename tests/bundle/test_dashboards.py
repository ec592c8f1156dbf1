"""The Grafana half of the monitoring bundle: dashboard conventions and valid PromQL.

Every dashboard has a stable uid, the ``datasource`` variable and the ``job``/``instance``/``account``
variables (Zero Hash: ``account_group``), every data panel a unit, a description and ``$datasource``,
every selector job and instance matchers, every rate ``$__rate_interval``; every query, its variables
substituted, is valid PromQL to promtool (wrapped as recording rules).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.bundle.harness import (
    ALERTS,
    PROMETHEUS_DIR,
    alert_rules,
    dashboard_queries,
    dashboards,
    data_panels,
    metric_names,
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
        assert dashboard["id"] is None, name
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
            assert panel["fieldConfig"]["defaults"]["unit"], where
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
            if metric.startswith("whitebit_") and not metric.startswith("whitebit_exporter_"):
                assert re.search(r'account=~"\$account', matchers), f"{where}: {metric} lacks the account matcher"
        for window in re.findall(r"\(\s*(?:rate|irate|increase)\([^\[]*\[([^\]]+)\]", expr):
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
