"""The metric table: one definition per metric, and the README's metric tables agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from exporter.core import metrics
from exporter.core.metrics import METRICS, CounterDef, GaugeDef, HistogramDef, MetricDef, SeriesValues

README = Path(__file__).resolve().parents[2] / "README.md"
# Families the README lists that the exporter takes from prometheus_client rather than defining.
STANDARD_PREFIXES = ("process_", "python_")


def readme_metrics() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every metric row of the README's "Metrics" section: sample name -> (type, label names)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Metrics\n") :]
    section = section[: section.index("\n## ", 1)]
    rows: dict[str, tuple[str, tuple[str, ...]]] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        # Label cells read "account, wallet (`main`, `spot`), asset": the parentheses hold values.
        labels = tuple(label.strip() for label in re.sub(r"\([^)]*\)", "", cells[2]).split(",") if label.strip())
        for name in re.findall(r"`([a-z_:]+)`", cells[0]):
            rows[name] = (cells[1], labels)
    return rows


def test_every_metric_is_in_the_table_once() -> None:
    defined = [value for value in vars(metrics).values() if isinstance(value, MetricDef)]
    assert sorted(m.name for m in defined) == sorted(m.name for m in METRICS)
    assert len({m.name for m in METRICS}) == len(METRICS)


def test_sample_names_follow_the_type() -> None:
    assert metrics.WHITEBIT_ORDER_EVENTS.sample_names == ("whitebit_order_events_total",)
    assert metrics.EXPORTER_TASK_RESTARTS.sample_names == ("whitebit_exporter_task_restarts_total",)
    assert metrics.WHITEBIT_UP.sample_names == ("whitebit_up",)
    assert metrics.WHITEBIT_REST_REQUEST_DURATION_SECONDS.sample_names == (
        "whitebit_rest_request_duration_seconds_bucket",
        "whitebit_rest_request_duration_seconds_sum",
        "whitebit_rest_request_duration_seconds_count",
    )
    # prometheus_client appends _total itself; a name that had it would be exposed as ..._total_total.
    assert all(not m.name.endswith("_total") for m in METRICS)
    assert {type(m) for m in METRICS} == {GaugeDef, CounterDef, HistogramDef}


@pytest.mark.parametrize("metric", METRICS, ids=lambda m: m.name)
def test_each_metric_is_in_the_readme_with_its_type_and_labels(metric: MetricDef) -> None:
    rows = readme_metrics()
    shown = metric.sample_names[0] if metric.type == "counter" else metric.name
    assert shown in rows, f"{shown} is missing from the README's metric tables"
    assert rows[shown] == (metric.type, metric.labels)


def test_the_readme_lists_no_metric_the_exporter_does_not_define() -> None:
    defined = {m.sample_names[0] if m.type == "counter" else m.name for m in METRICS}
    extra = {name for name in readme_metrics() if name not in defined and not name.startswith(STANDARD_PREFIXES)}
    assert extra == set()


def test_series_values_render_every_family_with_its_known_series_at_zero() -> None:
    values = SeriesValues()
    received = values.series(metrics.ZEROHASH_WEBHOOKS_RECEIVED, [("a",), ("b",)])
    last = values.series(metrics.ZEROHASH_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS)
    received[("b",)] += 2
    families = {family.name: family for family in values.collect()}
    assert [(s.name, s.labels, s.value) for s in families["zerohash_webhooks_received"].samples] == [
        ("zerohash_webhooks_received_total", {"payload_type": "a"}, 0.0),
        ("zerohash_webhooks_received_total", {"payload_type": "b"}, 2.0),
    ]
    assert families["zerohash_webhook_last_received_timestamp_seconds"].samples == []
    last[()] = 12.5
    families = {family.name: family for family in values.collect()}
    assert [s.value for s in families["zerohash_webhook_last_received_timestamp_seconds"].samples] == [12.5]
