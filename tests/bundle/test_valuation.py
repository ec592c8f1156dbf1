"""The valuation recording rules: generated from prometheus/config.yaml, unit-tested with promtool, and
evaluated by a real Prometheus against the demo, where they must agree with the exporter's own numbers.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from exporter.demo import DEMO_ACCOUNT, DEMO_SPOT_ACCOUNT
from tests.bundle.harness import PROMETHEUS_DIR, RULES, metric_names, run_tool, running_demo
from tests.bundle.test_e2e import JOB, failure_log, running_prometheus
from tests.helpers import scrape, wait_for

VALUATION_TESTS = PROMETHEUS_DIR / "tests" / "valuation_test.yaml"
GROUP = "whitebit-exporter.valuation"
PER_BALANCE = "account_wallet_asset:whitebit_balance_value:sum"
PER_ACCOUNT = "account:whitebit_balance_value:sum"


def valuation_rules(path: Path = RULES) -> dict[str, str]:
    groups = yaml.safe_load(path.read_text())["groups"]
    return {rule["record"]: rule["expr"] for group in groups if group["name"] == GROUP for rule in group["rules"]}


def test_promtool_unit_tests_of_the_valuation_rules_pass() -> None:
    code, output = run_tool("promtool", "test", "rules", str(VALUATION_TESTS))
    assert code == 0, output


def test_every_valuation_rule_has_a_unit_test_with_output_and_one_without() -> None:
    document = yaml.safe_load(VALUATION_TESTS.read_text())
    assert [Path(p).name for p in document["rule_files"]] == [RULES.name]
    cases = [case for group in document["tests"] for case in group["promql_expr_test"]]
    for record in valuation_rules():
        mine = [case for case in cases if case["expr"].split("{")[0] == record]
        assert any(case["exp_samples"] for case in mine), f"{record}: no case with output"
        assert any(not case["exp_samples"] for case in mine), f"{record}: no case without output"


def test_the_valuation_reads_balances_and_fresh_prices_and_totals_its_own_output() -> None:
    rules = valuation_rules()
    assert list(rules) == [PER_BALANCE, PER_ACCOUNT]
    assert metric_names(rules[PER_BALANCE]) == {
        "whitebit_balance",
        "whitebit_price",
        "whitebit_price_last_update_timestamp_seconds",
    }
    assert metric_names(rules[PER_ACCOUNT]) == {PER_BALANCE}
    assert "<= 600" in rules[PER_BALANCE]  # valuation.max_price_age: 10m


def test_max_price_age_reaches_the_rule_and_bad_settings_are_refused(tmp_path: Path) -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "config.yaml").read_text())

    def generate(valuation: object) -> subprocess.CompletedProcess[str]:
        changed = {**config, "valuation": valuation}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(changed))
        return subprocess.run(
            [sys.executable, str(PROMETHEUS_DIR / "generate.py"), "--config", str(path), "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert generate({"max_price_age": "1h30m"}).returncode == 0
    assert "<= 5400" in valuation_rules(tmp_path / "rules.yaml")[PER_BALANCE]
    code, output = run_tool("promtool", "check", "rules", str(tmp_path / "rules.yaml"))
    assert code == 0, output
    for valuation, message in (
        ({"max_price_age": "soon"}, "valuation.max_price_age: invalid duration 'soon'"),
        ({"max_age": "10m"}, "valuation: unknown key(s) max_age"),
        ("10m", "valuation: must be a mapping"),
    ):
        result = generate(valuation)
        assert result.returncode == 1
        assert message in result.stderr, result.stderr


async def test_prometheus_values_the_demos_balances_at_the_exporters_prices(tmp_path: Path) -> None:
    async with running_demo(tmp_path / "demo", scenario_rate=10.0, forge_every=None) as demo:
        assert demo.exporter is not None
        exporter = demo.exporter
        target = exporter.metrics_url.removeprefix("http://")
        async with running_prometheus(tmp_path / "prometheus", target) as prometheus:

            async def valued() -> bool:
                totals = await prometheus.query(PER_ACCOUNT)
                return {sample["metric"]["account"] for sample in totals} == {DEMO_ACCOUNT, DEMO_SPOT_ACCOUNT}

            await wait_for(valued, timeout=90, interval=0.5, message=f"never valued; {failure_log(prometheus)}")

            # Hold everything still, then compare what Prometheus records with the exporter's own numbers.
            await demo.simulator.stop_scenario()
            problems: list[str] = []

            async def agree() -> bool:
                result = await scrape(exporter.metrics_url)
                prices = {labels["asset"]: value for labels, value in result.samples("whitebit_price")}
                expected = {
                    (labels["account"], labels["wallet"], labels["asset"]): value * prices[labels["asset"]]
                    for labels, value in result.samples("whitebit_balance")
                    if labels["asset"] in prices
                }
                recorded = {
                    (s["metric"]["account"], s["metric"]["wallet"], s["metric"]["asset"]): float(s["value"][1])
                    for s in await prometheus.query(f'{PER_BALANCE}{{job="{JOB}"}}')
                }
                problems[:] = [
                    f"{key}: recorded {recorded.get(key)}, expected {value}"
                    for key, value in expected.items()
                    if key not in recorded or abs(recorded[key] - value) > 1e-9 * max(1.0, abs(value))
                ] + [f"{key}: recorded but not valued by the exporter" for key in recorded.keys() - expected.keys()]
                return not problems

            await wait_for(agree, timeout=60, interval=0.5, message=f"never agreed: {problems}")
            samples = await prometheus.query(f'{PER_BALANCE}{{account="{DEMO_SPOT_ACCOUNT}", wallet="main"}}')
            valued_assets = {sample["metric"]["asset"]: sample["metric"]["quote"] for sample in samples}
            # UAH through USDT_UAH; OLDCOIN (its only market frozen) is not valued.
            assert valued_assets["UAH"] == "USDT"
            assert "OLDCOIN" not in valued_assets
            totals = {
                s["metric"]["account"]: float(s["value"][1]) for s in await prometheus.query(f"{PER_ACCOUNT} > 0")
            }
            by_account = {
                account: sum(
                    float(s["value"][1]) for s in await prometheus.query(f'{PER_BALANCE}{{account="{account}"}}')
                )
                for account in totals
            }
            assert totals.keys() == {DEMO_ACCOUNT, DEMO_SPOT_ACCOUNT}
            assert all(abs(totals[a] - by_account[a]) <= 1e-6 * totals[a] for a in totals), (totals, by_account)
