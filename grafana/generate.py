#!/usr/bin/env python3
"""Write the bundled Grafana dashboards (grafana/dashboards/*.json) with Grafana's foundation SDK.

The dashboards are built with the builders of ``grafana-foundation-sdk`` (the 11.6 line, pinned in the
test extra) and written as Grafana's classic dashboard JSON. The helpers below give every panel the same
conventions: the ``$datasource`` variable, ``job``/``instance`` (and ``account``) matchers on every
selector, ``$__rate_interval`` in rates, a unit, thresholds and a description that says what a bad value
means and what to do. Every dashboard carries the exporter-restart annotation, the WhiteBIT ones the
WebSocket-reconnect annotation too.

The thresholds a panel draws for an alert (the oldest owed relay delivery, the inbox lag, a wallet's
age …) are read from ``prometheus/config.yaml``, the one place the alerts' thresholds are set, so a
changed threshold moves the line on the dashboard too.

``--check`` exits 1 when the committed JSON differs from a fresh rendering (the test suite runs it).
Usage: ``python grafana/generate.py [--out DIR] [--alerts-config PATH] [--check]``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

HERE = Path(__file__).resolve().parent
ALERTS_CONFIG = HERE.parent / "prometheus" / "config.yaml"
TAGS = ["whitebit-exporter"]
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")

# Matchers every query carries; WhiteBIT account series add the account.
SEL = 'job=~"$job", instance=~"$instance"'
SEL_ACCOUNT = SEL + ', account=~"$account"'
SEL_GROUP = SEL + ', account_group=~"$account_group"'
RATE = "[$__rate_interval]"

#: The state file's volume: below 1 GiB free it is time to act, below 100 MiB writes may fail soon.
VOLUME_LOW_BYTES = 1024**3
VOLUME_CRITICAL_BYTES = 100 * 1024**2
#: Share of the open-file limit in use: the listeners' connections are open files.
OPEN_FILES_HIGH = 0.8
OPEN_FILES_CRITICAL = 0.9

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


# --- the alerts' thresholds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertSettings:
    """The ``alerts`` section of prometheus/config.yaml: what each alert fires at."""

    alerts: Mapping[str, Mapping[str, Any]]
    #: The ``valuation`` section: how old a price the valuation rules still use.
    valuation: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Self:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        return cls(document["alerts"], document.get("valuation") or {})

    def max_price_age(self) -> float:
        """``valuation.max_price_age`` in seconds (10 minutes unless set, as prometheus/generate.py has it)."""
        return self._seconds("valuation.max_price_age", self.valuation.get("max_price_age", "10m"))

    def value(self, alert: str, key: str) -> float:
        """``key`` of ``alert``: a number as it is, a Prometheus duration (``10m``) in seconds."""
        return self._seconds(f"{alert}.{key}", self.alerts[alert][key])

    @staticmethod
    def _seconds(where: str, raw: Any) -> float:
        if isinstance(raw, int | float):
            return float(raw)
        text = str(raw).strip()
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{where}: {text!r} is neither a number nor a duration")
        return float(sum(int(n) * _UNIT_SECONDS[u] for n, u in parts))


# --- panels ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One query of a panel."""

    expr: str
    legend: str


def _query(target: Target, ref_id: str, *, instant: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(target.expr).legend_format(target.legend).ref_id(ref_id).datasource(DATASOURCE)
    return query.instant().format(PromQueryFormat.TABLE) if instant else query.range()


def steps(base: str, *above: tuple[float, str]) -> gd.ThresholdsConfig:
    """Absolute thresholds: ``base`` below the first step, then each ``(value, colour)`` from its value up."""
    return (
        gd.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=None, color=base), *(dm.Threshold(value=v, color=c) for v, c in above)])
    )


#: A panel where no value is bad in itself (a balance, a rate of order events): one colour.
NEUTRAL = steps("green")
#: A count of something that should not happen: red from the first.
ANY_IS_BAD = steps("green", (1, "red"))
#: A count of something that should not last: orange from the first.
ANY_IS_A_WARNING = steps("green", (1, "orange"))
#: A 0/1 health series: red at 0, green at 1.
ZERO_IS_BAD = steps("red", (1, "green"))


def _up_mappings(down: str, up: str) -> list[dm.ValueMapping]:
    return [
        dm.ValueMap(
            options={
                "0": dm.ValueMappingResult(text=down, color="red", index=0),
                "1": dm.ValueMappingResult(text=up, color="green", index=1),
            }
        )
    ]


def graph(
    title: str,
    description: str,
    unit: str,
    targets: Sequence[Target],
    *,
    thresholds: gd.ThresholdsConfig = NEUTRAL,
    draw: common.GraphThresholdsStyleMode = common.GraphThresholdsStyleMode.OFF,
    width: int = 12,
    height: int = 8,
) -> timeseries.Panel:
    """A time series panel; ``draw`` shows the thresholds on the graph (``LINE`` for an alert's threshold)."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .thresholds(thresholds)
        .thresholds_style(common_builders.GraphThresholdsStyleConfig().mode(draw))
        .draw_style(common.GraphDrawStyle.LINE)
        .line_width(1)
        .fill_opacity(10)
        .show_points(common.VisibilityMode.NEVER)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
        .span(width)
        .height(height)
    )
    for index, target in enumerate(targets):
        panel.with_target(_query(target, chr(ord("A") + index)))
    return panel


def single(
    title: str,
    description: str,
    unit: str,
    target: Target,
    *,
    thresholds: gd.ThresholdsConfig,
    mappings: list[dm.ValueMapping] | None = None,
    no_value: str | None = None,
    text_mode: common.BigValueTextMode = common.BigValueTextMode.AUTO,
    width: int = 4,
    height: int = 4,
) -> stat.Panel:
    """A stat panel showing the last value of each series (or its name: ``text_mode``), coloured by ``thresholds``."""
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .unit(unit)
        .thresholds(thresholds)
        .mappings(mappings or [])
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
        .color_mode(common.BigValueColorMode.VALUE)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(text_mode)
        .span(width)
        .height(height)
        .with_target(_query(target, "A"))
    )
    if no_value is not None:
        panel.no_value(no_value)
    return panel


# --- variables and annotations -----------------------------------------------------------------------------


def _label_values(name: str, query: str) -> gd.QueryVariable:
    """A multi-value variable from a Prometheus ``label_values`` query, "All" meaning any value."""
    return (
        gd.QueryVariable(name)
        .label(name)
        .datasource(DATASOURCE)
        .query({"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"})
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .multi(True)
        .include_all(True)
        .all_value(".+")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


JOB = ("job", "label_values(whitebit_exporter_build_info, job)")
INSTANCE = ("instance", 'label_values(whitebit_exporter_build_info{job=~"$job"}, instance)')
ACCOUNT = ("account", 'label_values(whitebit_up{job=~"$job", instance=~"$instance"}, account)')
ACCOUNT_GROUP = ("account_group", 'label_values(zerohash_balance{job=~"$job", instance=~"$instance"}, account_group)')
# The assets of the accounts chosen: each gets its own balance panel (the panel repeats per asset).
ASSET = ("asset", 'label_values(whitebit_balance{job=~"$job", instance=~"$instance", account=~"$account"}, asset)')
# The markets whose open orders the accounts chosen track: each gets its own panel of amounts left.
MARKET = (
    "market",
    'label_values(whitebit_open_orders_left{job=~"$job", instance=~"$instance", account=~"$account"}, market)',
)
ZEROHASH_ASSET = (
    "asset",
    'label_values(zerohash_balance{job=~"$job", instance=~"$instance", account_group=~"$account_group"}, asset)',
)


def _variables(*scope: tuple[str, str]) -> list[cogbuilder.Builder[dm.VariableModel]]:
    """``datasource``, ``job`` and ``instance``, then the dashboard's own ``(name, label_values query)``."""
    datasource = gd.DatasourceVariable("datasource").label("Data Source").type("prometheus")
    return [datasource, *(_label_values(name, query) for name, query in (JOB, INSTANCE, *scope))]


class PrometheusAnnotationQuery(dm.AnnotationQuery):
    """An annotation query on a Prometheus data source, with the fields the SDK's generic model lacks.

    Grafana makes an event wherever ``expr`` is above 0 (consecutive steps merge into one region), titled
    by ``titleFormat`` and described by ``textFormat`` (both legend formats, ``{{label}}``), tagged with the
    values of ``tagKeys``. With ``useValueForTime`` the value is the event's time in milliseconds.
    """

    def __init__(self, *, title_format: str, text_format: str, tag_keys: str, use_value_for_time: bool) -> None:
        super().__init__()
        self.title_format = title_format
        self.text_format = text_format
        self.tag_keys = tag_keys
        self.step = "60s"
        self.use_value_for_time = use_value_for_time

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(
            titleFormat=self.title_format,
            textFormat=self.text_format,
            tagKeys=self.tag_keys,
            step=self.step,
            useValueForTime=self.use_value_for_time,
        )
        return payload


class PrometheusAnnotation(gd.AnnotationQuery):
    """Builds a :class:`PrometheusAnnotationQuery` on ``$datasource``."""

    def __init__(
        self, name: str, expr: str, *, title: str, text: str, tags: str, color: str, use_value_for_time: bool = False
    ) -> None:
        self._internal = PrometheusAnnotationQuery(
            title_format=title, text_format=text, tag_keys=tags, use_value_for_time=use_value_for_time
        )
        self.name(name).datasource(DATASOURCE).enable(True).hide(False).icon_color(color).expr(expr)


BUILT_IN_ANNOTATIONS = (
    gd.AnnotationQuery()
    .name("Annotations & Alerts")
    .datasource(dm.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
    .enable(True)
    .hide(True)
    .icon_color("rgba(0, 211, 255, 1)")
    .type("dashboard")
    .built_in(1)
)
# The start time is the event's time, so a restart is marked where it happened however long the exporter
# was down, and the steps that repeat it merge into one marker.
RESTARTS = PrometheusAnnotation(
    "Exporter restarts",
    f"max by (instance) (process_start_time_seconds{{{SEL}}}) * 1000",
    title="Exporter started",
    text="{{instance}}",
    tags="instance",
    color="purple",
    use_value_for_time=True,
)
RECONNECTS = PrometheusAnnotation(
    "WebSocket reconnects",
    f"sum by (account) (increase(whitebit_websocket_reconnects_total{{{SEL_ACCOUNT}}}{RATE})) > 0",
    title="WebSocket reconnected",
    text="account {{account}}",
    tags="account",
    color="orange",
)


def _dashboard(
    uid: str,
    title: str,
    description: str,
    variables: Sequence[tuple[str, str]],
    annotations: Sequence[gd.AnnotationQuery],
) -> gd.Dashboard:
    return (
        gd.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .editable()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .link(
            gd.DashboardLink("WhiteBIT dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
        .variables(_variables(*variables))
        .annotations([BUILT_IN_ANNOTATIONS, *annotations])
    )


def _rows(dashboard: gd.Dashboard, rows: Sequence[tuple[str, Sequence[cogbuilder.Builder[dm.Panel]]]]) -> gd.Dashboard:
    """Expanded rows, each followed by its panels, laid out left to right by the SDK."""
    for title, panels in rows:
        dashboard.with_row(gd.Row(title))
        for panel in panels:
            dashboard.with_panel(panel)
    return dashboard


# --- the dashboards ----------------------------------------------------------------------------------------


def latency(quantile: str, name: str) -> Target:
    return Target(
        f"histogram_quantile({quantile}, sum by (le, account, endpoint) "
        f"(rate(whitebit_rest_request_duration_seconds_bucket{{{SEL_ACCOUNT}}}{RATE})))",
        name + " {{account}} {{endpoint}}",
    )


def relay_duration(quantile: str, name: str) -> Target:
    return Target(
        f"histogram_quantile({quantile}, sum by (le, target) "
        f"(rate(whitebit_exporter_relay_attempt_duration_seconds_bucket{{{SEL}}}{RATE})))",
        name + " {{target}}",
    )


def _age(seconds: float) -> str:
    """``seconds`` as the description texts say it (600 -> "10 minutes")."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds:g} s"


def overview(alerts: AlertSettings) -> gd.Dashboard:
    stale = alerts.value("WhitebitBalanceStale", "max_age")
    deposit_stuck = alerts.value("WhitebitTransferStuck", "deposit_max_age")
    withdraw_stuck = alerts.value("WhitebitTransferStuck", "withdraw_max_age")
    # The margin alerts' levels: WhiteBIT liquidates at its maintenance margin (3 % in its published rules,
    # docs/protocol.md), so NearLiquidation pages a little above it and MarginLow warns earlier.
    margin_near = alerts.value("WhitebitCollateralNearLiquidation", "threshold")
    margin_low = alerts.value("WhitebitCollateralMarginLow", "threshold")
    margin_steps = steps("red", (margin_near, "orange"), (margin_low, "green"))
    max_price_age = alerts.max_price_age()
    dashboard = _dashboard(
        "whitebit-overview",
        "WhiteBIT / Account overview",
        "Is the exporter up, what every balance is (one panel per asset), the collateral account's margin, "
        "open orders and transfers in flight, and the exporter's own health.",
        (ACCOUNT, ASSET, MARKET),
        (RESTARTS, RECONNECTS),
    )
    return _rows(
        dashboard,
        (
            (
                "Status",
                (
                    single(
                        "Exporter scraped",
                        "1 when Prometheus scraped the exporter at its last attempt (the up series). At 0 nothing else "
                        "on these dashboards is current: the process is down, its metrics listener unreachable, or "
                        "Prometheus' TLS or basic-auth settings do not match --web.config.file. Prometheus' Targets "
                        "page says which; the exporter's log says why (alert: WhitebitExporterDown).",
                        "none",
                        Target(f"up{{{SEL}}}", "{{instance}}"),
                        thresholds=ZERO_IS_BAD,
                        mappings=_up_mappings("down", "up"),
                    ),
                    single(
                        "Account up",
                        "whitebit_up: 1 when every number of the account comes from a connected, fresh source. At 0 "
                        "a source is down or stale: the WebSocket and REST dashboard shows which, and /-/ready says "
                        "why (alert: WhitebitAccountDown).",
                        "none",
                        Target(f"whitebit_up{{{SEL_ACCOUNT}}}", "{{account}}"),
                        thresholds=ZERO_IS_BAD,
                        mappings=_up_mappings("down", "up"),
                    ),
                    single(
                        "Tasks not running",
                        "Supervised background tasks not running right now (whitebit_exporter_task_running at 0). "
                        "A crashed task is restarted within 30 s; one that stays down keeps its source stale. The "
                        "Exporter row below names it; the log says why it ended.",
                        "none",
                        Target(
                            f"sum by (instance) (whitebit_exporter_task_running{{{SEL}}} == bool 0)", "{{instance}}"
                        ),
                        thresholds=ANY_IS_BAD,
                    ),
                    single(
                        "State file",
                        "whitebit_exporter_state_writable: at 0 the state file refuses writes and every webhook "
                        "delivery is answered 503 (the senders retry, so nothing is lost yet). Check the free space "
                        "below, the file's permissions and the state file errors (alert: "
                        "WhitebitExporterStateUnwritable).",
                        "none",
                        Target(f"whitebit_exporter_state_writable{{{SEL}}}", "{{instance}}"),
                        thresholds=ZERO_IS_BAD,
                        mappings=_up_mappings("refusing writes", "writable"),
                    ),
                    single(
                        "State volume free",
                        "Bytes free on the state file's volume (whitebit_exporter_state_volume_free_bytes). When it "
                        "runs out, writes fail and deliveries are answered 503: free space, grow the volume or "
                        "shorten state.inbox_retention. Orange below 1 GiB, red below 100 MiB.",
                        "bytes",
                        Target(f"whitebit_exporter_state_volume_free_bytes{{{SEL}}}", "{{instance}}"),
                        thresholds=steps("red", (VOLUME_CRITICAL_BYTES, "orange"), (VOLUME_LOW_BYTES, "green")),
                    ),
                    single(
                        "Version",
                        "The exporter's version and Python (whitebit_exporter_build_info). Two versions across "
                        "instances mean a rollout stopped halfway.",
                        "none",
                        Target(f"whitebit_exporter_build_info{{{SEL}}}", "{{version}} (Python {{python}})"),
                        thresholds=NEUTRAL,
                        text_mode=common.BigValueTextMode.NAME,
                    ),
                ),
            ),
            (
                "Balances",
                (
                    graph(
                        "Balance: $asset",
                        "One panel per asset (the asset variable), so an asset near 1 and one near 250,000 each get "
                        "a scale of their own. whitebit_balance per wallet (main from REST; spot available + frozen, "
                        "and collateral, from the WebSocket), the part of spot held by open orders "
                        "(whitebit_balance_frozen) and what the collateral account borrowed of it "
                        "(whitebit_collateral_borrowed), in whole units of the asset. A drop nobody expected: look "
                        "for a withdrawal under Transfers and for fills in Order events. A line that stays flat "
                        "while its wallet's age climbs is not current.",
                        "short",
                        (
                            Target(
                                f'sum by (account, wallet) (whitebit_balance{{{SEL_ACCOUNT}, asset=~"$asset"}})',
                                "{{account}} {{wallet}}",
                            ),
                            Target(
                                f'sum by (account) (whitebit_balance_frozen{{{SEL_ACCOUNT}, asset=~"$asset"}})',
                                "{{account}} spot frozen by orders",
                            ),
                            Target(
                                f'sum by (account) (whitebit_collateral_borrowed{{{SEL_ACCOUNT}, asset=~"$asset"}})',
                                "{{account}} collateral borrowed",
                            ),
                        ),
                        width=24,
                    )
                    .repeat("asset")
                    .repeat_direction("h")
                    .max_per_row(3),
                    graph(
                        "Wallet age",
                        "Seconds since each wallet's numbers were last known current: a poll answer, a push or a pong "
                        "on its synced channel (whitebit_balance_last_update_timestamp_seconds). A healthy wallet "
                        f"stays near 0 even when it does not move. Past the line ({_age(stale)}, "
                        "WhitebitBalanceStale) its balances are old: its WebSocket channel and its REST poll both "
                        "fail; the WebSocket and REST dashboard shows which.",
                        "s",
                        (
                            Target(
                                f"time() - whitebit_balance_last_update_timestamp_seconds{{{SEL_ACCOUNT}}}",
                                "{{account}} {{wallet}}",
                            ),
                        ),
                        thresholds=steps("green", (stale, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                        width=24,
                        height=7,
                    ),
                ),
            ),
            (
                "Value",
                (
                    graph(
                        "Account value",
                        "Each account's balances valued in the exporter's quote asset (prices.quote, USDT by default): "
                        "the recording rule account:whitebit_balance_value:sum, every wallet's balance times its "
                        "asset's price from WhiteBIT's public ticker. An asset without a price (no market with the "
                        "quote, a frozen or untraded one) or with a price older than valuation.max_price_age is left "
                        "out, so a drop can also mean prices stopped: check Price age.",
                        "short",
                        (Target(f"account:whitebit_balance_value:sum{{{SEL_ACCOUNT}}}", "{{account}} ({{quote}})"),),
                        width=12,
                    ),
                    graph(
                        "Value by wallet and asset",
                        "account_wallet_asset:whitebit_balance_value:sum: what each wallet's holding of each asset is "
                        "worth in the quote asset, so a hot wallet running dry shows in one currency whatever it holds.",
                        "short",
                        (
                            Target(
                                f"account_wallet_asset:whitebit_balance_value:sum{{{SEL_ACCOUNT}}}",
                                "{{account}} {{wallet}} {{asset}}",
                            ),
                        ),
                        width=12,
                    ),
                    graph(
                        "Price: $asset",
                        "whitebit_price: the last trade price of one unit of the asset in the quote asset, from "
                        "WhiteBIT's public ticker (the ASSET_QUOTE market, or 1 / QUOTE_ASSET's). One panel per asset: "
                        "prices differ by many orders of magnitude. No line: no market prices the asset.",
                        "short",
                        (Target(f'whitebit_price{{{SEL}, asset=~"$asset"}}', "{{asset}} in {{quote}}"),),
                        width=24,
                    )
                    .repeat("asset")
                    .repeat_direction("h")
                    .max_per_row(4),
                    graph(
                        "Price age",
                        "Seconds since the prices were last read from the ticker "
                        "(whitebit_price_last_update_timestamp_seconds). Past the line "
                        f"({_age(max_price_age)}, valuation.max_price_age) the valuation rules leave the prices out: "
                        "check the ticker requests on the WebSocket and REST dashboard.",
                        "s",
                        (Target(f"time() - whitebit_price_last_update_timestamp_seconds{{{SEL}}}", "{{quote}}"),),
                        thresholds=steps("green", (max_price_age, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                        width=24,
                    ),
                ),
            ),
            (
                "Collateral account",
                (
                    graph(
                        "Equity, margin and free margin",
                        "From /collateral-account/summary, in USDT: equity (the collateral's value with the "
                        "positions' profit and loss), margin (what open positions hold) and free margin (what new "
                        "positions and withdrawals can use). Free margin sinking toward 0 while margin grows means "
                        "the positions eat the collateral: add collateral or reduce positions before the margin "
                        "fraction reaches liquidation.",
                        "short",
                        (
                            Target(f"whitebit_collateral_equity{{{SEL_ACCOUNT}}}", "{{account}} equity"),
                            Target(f"whitebit_collateral_margin{{{SEL_ACCOUNT}}}", "{{account}} margin"),
                            Target(f"whitebit_collateral_free_margin{{{SEL_ACCOUNT}}}", "{{account}} free margin"),
                        ),
                        width=10,
                    ),
                    graph(
                        "Margin fraction",
                        "whitebit_collateral_margin_fraction of accounts with open positions (without any it is "
                        "+Inf and not drawn). WhiteBIT liquidates positions when it falls to its maintenance margin "
                        f"(3 % in its published rules). The red line is WhitebitCollateralNearLiquidation's level "
                        f"({margin_near:.0%}, it pages), the orange one WhitebitCollateralMarginLow's ({margin_low:.0%}): "
                        "add collateral or reduce positions.",
                        "percentunit",
                        (Target(f"whitebit_collateral_margin_fraction{{{SEL_ACCOUNT}}} < Inf", "{{account}}"),),
                        thresholds=margin_steps,
                        draw=common.GraphThresholdsStyleMode.LINE,
                        width=10,
                    ).axis_soft_min(0),
                    single(
                        "Margin fraction now",
                        "The latest margin fraction per account with open positions: red below "
                        f"WhitebitCollateralNearLiquidation's level ({margin_near:.0%}), orange below "
                        f"WhitebitCollateralMarginLow's ({margin_low:.0%}). Empty when no account holds a position.",
                        "percentunit",
                        Target(f"whitebit_collateral_margin_fraction{{{SEL_ACCOUNT}}} < Inf", "{{account}}"),
                        thresholds=margin_steps,
                        no_value="no open position",
                        height=8,
                    ),
                    table.Panel()
                    .title("Borrowed now")
                    .description(
                        "What each account owes per asset right now (whitebit_collateral_borrowed above 0), each "
                        "asset in its own units. Borrowing costs a fee while positions use it; a debt nobody "
                        "expected is a position someone opened: check the open orders and the positions on WhiteBIT."
                    )
                    .datasource(DATASOURCE)
                    .unit("short")
                    .thresholds(NEUTRAL)
                    .with_target(
                        _query(Target(f"whitebit_collateral_borrowed{{{SEL_ACCOUNT}}} > 0", ""), "A", instant=True)
                    )
                    .with_transformation(
                        dm.DataTransformerConfig(
                            id_val="organize",
                            options={
                                "excludeByName": {"Time": True, "__name__": True, "job": True, "instance": True},
                                "renameByName": {"Value": "borrowed"},
                            },
                        )
                    )
                    .no_value("nothing borrowed")
                    .span(12)
                    .height(7),
                    graph(
                        "Collateral summary age",
                        "Seconds since the last successful poll of /collateral-account/summary "
                        "(whitebit_collateral_account_last_update_timestamp_seconds; poll.collateral, 30 s by "
                        f"default). Past the line ({_age(stale)}) the equity, margin and margin fraction above are "
                        "that old: the poll fails; REST requests by status on the WebSocket and REST dashboard "
                        "shows its answers.",
                        "s",
                        (
                            Target(
                                f"time() - whitebit_collateral_account_last_update_timestamp_seconds{{{SEL_ACCOUNT}}}",
                                "{{account}}",
                            ),
                        ),
                        thresholds=steps("green", (stale, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                        height=7,
                    ),
                ),
            ),
            (
                "Open orders",
                (
                    graph(
                        "Open orders",
                        "whitebit_open_orders by market and side (all order types summed). A count that drops to 0 "
                        "unexpectedly: orders were cancelled or filled (Order events), or the ordersPending channel "
                        "is not synced (WebSocket and REST dashboard).",
                        "short",
                        (
                            Target(
                                f"sum by (account, market, side) (whitebit_open_orders{{{SEL_ACCOUNT}}})",
                                "{{account}} {{market}} {{side}}",
                            ),
                        ),
                        width=12,
                    ),
                    graph(
                        "Order events",
                        "whitebit_order_events_total per second by event (new, update, finish, modify, "
                        "stop_activated). Events with no trading system running mean someone else trades with "
                        "this account.",
                        "ops",
                        (
                            Target(
                                f"sum by (account, event) (rate(whitebit_order_events_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}} {{event}}",
                            ),
                        ),
                        width=12,
                    ),
                    graph(
                        "Amount left in open orders: $market",
                        "whitebit_open_orders_left: the sum of `left` in the market's base asset, the amount the "
                        "open orders may still buy or sell. One panel per market (the market variable): each base "
                        "asset gets a scale of its own.",
                        "short",
                        (
                            Target(
                                f'whitebit_open_orders_left{{{SEL_ACCOUNT}, market=~"$market"}}',
                                "{{account}} {{side}}",
                            ),
                        ),
                        width=24,
                    )
                    .repeat("market")
                    .repeat_direction("h")
                    .max_per_row(3),
                ),
            ),
            (
                "Transfers",
                (
                    graph(
                        "Transfers in flight",
                        "Deposits and withdrawals not yet final, by the meaning of their status "
                        "(whitebit_transfers_in_flight). frozen, travel_rule_frozen and unconfirmed_by_user wait on "
                        "someone: WhiteBIT's support, a Travel Rule answer, or the account owner's confirmation.",
                        "short",
                        (
                            Target(
                                f"sum by (account, kind, status) (whitebit_transfers_in_flight{{{SEL_ACCOUNT}}}) > 0",
                                "{{account}} {{kind}} {{status}}",
                            ),
                        ),
                        width=8,
                    ),
                    graph(
                        "Deposits awaiting confirmations",
                        "Deposits in flight with fewer network confirmations than WhiteBIT requires "
                        "(whitebit_deposits_awaiting_confirmations). They clear as blocks come; a count that stays "
                        "up for hours means a congested or halted network: check the asset's network status before "
                        "asking WhiteBIT.",
                        "short",
                        (Target(f"whitebit_deposits_awaiting_confirmations{{{SEL_ACCOUNT}}}", "{{account}}"),),
                        width=8,
                    ),
                    graph(
                        "Transfers completed",
                        "Deposits and withdrawals that reached a final outcome, per interval (whitebit_transfers_total)."
                        " canceled or partially_successful ones need a look at the transfer's record on WhiteBIT.",
                        "short",
                        (
                            Target(
                                f"sum by (account, kind, outcome) (increase(whitebit_transfers_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}} {{kind}} {{outcome}}",
                            ),
                        ),
                        width=8,
                    ),
                    graph(
                        "Oldest deposit in flight",
                        "How long the oldest deposit has waited for a final status. Past the line "
                        f"({_age(deposit_stuck)}, WhitebitTransferStuck) it is stuck: Transfers in flight says on "
                        "what (confirmations, a freeze, the Travel Rule); ask WhiteBIT's support about it with its "
                        "transaction hash (`whitebit-exporter inbox list` shows the deliveries that reported it).",
                        "s",
                        (
                            Target(
                                f'time() - whitebit_transfers_oldest_in_flight_timestamp_seconds{{{SEL_ACCOUNT}, kind="deposit"}}',
                                "{{account}}",
                            ),
                        ),
                        thresholds=steps("green", (deposit_stuck, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                    ),
                    graph(
                        "Oldest withdrawal in flight",
                        "How long the oldest withdrawal has waited for a final status. Past the line "
                        f"({_age(withdraw_stuck)}, WhitebitTransferStuck) it is stuck: unconfirmed_by_user waits for "
                        "the account owner's confirmation, frozen and travel_rule_frozen for WhiteBIT's support.",
                        "s",
                        (
                            Target(
                                f'time() - whitebit_transfers_oldest_in_flight_timestamp_seconds{{{SEL_ACCOUNT}, kind="withdraw"}}',
                                "{{account}}",
                            ),
                        ),
                        thresholds=steps("green", (withdraw_stuck, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                    ),
                ),
            ),
            (
                "Exporter",
                (
                    graph(
                        "Stopped background tasks",
                        "Each supervised background task while it is not running (whitebit_exporter_task_running "
                        "at 0): websocket:ACCOUNT, rest:KIND:ACCOUNT, inbox, state:housekeeping. Nothing drawn is "
                        "good. A task that stays here keeps its numbers stale: its log lines (task=…) say why.",
                        "none",
                        (Target(f"whitebit_exporter_task_running{{{SEL}}} == 0", "{{instance}} {{task}}"),),
                        thresholds=ANY_IS_BAD,
                        width=8,
                    ),
                    graph(
                        "Task restarts",
                        "Background tasks that crashed or ended and were restarted, per interval "
                        "(whitebit_exporter_task_restarts_total). One now and then is a passing upstream failure; "
                        "several in a row (WhitebitExporterTaskRestarting) is a bug or a lasting failure: the log "
                        "has the traceback.",
                        "short",
                        (
                            Target(
                                f"sum by (task) (increase(whitebit_exporter_task_restarts_total{{{SEL}}}{RATE}))",
                                "{{task}}",
                            ),
                        ),
                        thresholds=ANY_IS_A_WARNING,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=8,
                    ),
                    graph(
                        "State file errors",
                        "Failed reads and writes of the state file per interval, by SQLite's result "
                        "(whitebit_exporter_state_errors_total). full: the volume is full; readonly: permissions or a "
                        "read-only mount; corrupt: a damaged page, restore the file from a backup or move it away "
                        "and restart (WhitebitExporterStateDamaged); busy: another process holds the file.",
                        "short",
                        (
                            Target(
                                f"sum by (kind) (increase(whitebit_exporter_state_errors_total{{{SEL}}}{RATE}))",
                                "{{kind}}",
                            ),
                        ),
                        thresholds=ANY_IS_BAD,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=8,
                    ),
                ),
            ),
        ),
    )


def webhooks(alerts: AlertSettings) -> gd.Dashboard:
    silent = alerts.value("WhitebitWebhookSilent", "max_age")
    inbox_behind = alerts.value("WhitebitExporterInboxBehind", "threshold")
    relay_behind = alerts.value("WhitebitExporterRelayBehind", "threshold")
    dashboard = _dashboard(
        "whitebit-webhooks",
        "WhiteBIT / Webhooks",
        "Signed WhiteBIT webhooks: received, verified, rejected, duplicated, replayed and missed; the inbox, "
        "and the relay of verified deliveries to the payment backends.",
        (ACCOUNT,),
        (RESTARTS,),
    )
    return _rows(
        dashboard,
        (
            (
                "Missed",
                (
                    single(
                        "Missed webhooks in the range",
                        "History records whose webhook never came within webhook_retry_window "
                        "(whitebit_webhooks_missed_total; alert: WhitebitWebhookMissed). Above 0 a deposit or "
                        "withdrawal happened that the payment backend never heard of: reconcile it by hand from "
                        "WhiteBIT's history, then check the webhook URL, its certificate and the listener "
                        "refusals below.",
                        "short",
                        Target(
                            f"sum by (account, kind) (increase(whitebit_webhooks_missed_total{{{SEL_ACCOUNT}}}[$__range]))",
                            "{{account}} {{kind}}",
                        ),
                        thresholds=ANY_IS_BAD,
                        width=6,
                        height=8,
                    ),
                    graph(
                        "Overdue webhooks",
                        "Transfers in history whose webhook has not come within reconcile_grace and is not yet counted "
                        "missed: WhiteBIT may still retry it (whitebit_webhooks_overdue; alert: "
                        "WhitebitWebhookOverdue). It drops when the webhook arrives; one that stays is missed after "
                        "webhook_retry_window.",
                        "short",
                        (Target(f"whitebit_webhooks_overdue{{{SEL_ACCOUNT}}}", "{{account}} {{kind}}"),),
                        thresholds=ANY_IS_A_WARNING,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=6,
                    ),
                    graph(
                        "Missed webhooks",
                        "Missed webhooks per interval, by kind (whitebit_webhooks_missed_total): when each was "
                        "counted.",
                        "short",
                        (
                            Target(
                                f"sum by (account, kind) (increase(whitebit_webhooks_missed_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}} {{kind}}",
                            ),
                        ),
                        thresholds=ANY_IS_BAD,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=6,
                    ),
                    graph(
                        "Time since last webhook",
                        "Seconds since the last verified delivery (whitebit_webhook_last_received_timestamp_seconds). "
                        f"Deposits are sporadic, so silence alone says little; past the line ({_age(silent)}, "
                        "WhitebitWebhookSilent) check that WhiteBIT still has the webhook URL and reaches it.",
                        "s",
                        (
                            Target(
                                f"time() - whitebit_webhook_last_received_timestamp_seconds{{{SEL_ACCOUNT}}}",
                                "{{account}}",
                            ),
                        ),
                        thresholds=steps("green", (silent, "orange")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                        width=6,
                    ),
                ),
            ),
            (
                "Deliveries",
                (
                    graph(
                        "Received by method",
                        "Deliveries that reached the receiver per second (whitebit_webhooks_received_total).",
                        "reqps",
                        (
                            Target(
                                f"sum by (account, method) (rate(whitebit_webhooks_received_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}} {{method}}",
                            ),
                        ),
                        width=8,
                    ),
                    graph(
                        "Verified by method",
                        "Deliveries whose signature and payload checks passed, per second "
                        "(whitebit_webhooks_verified_total). Received but not verified: see Rejected by reason.",
                        "reqps",
                        (
                            Target(
                                f"sum by (account, method) (rate(whitebit_webhooks_verified_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}} {{method}}",
                            ),
                        ),
                        width=8,
                    ),
                    graph(
                        "Rejected by reason",
                        'Rejected deliveries per second by reason (whitebit_webhooks_rejected_total); account "unknown" '
                        "is a delivery naming no configured key. bad_signature, payload_mismatch or unknown_key: a "
                        "secret rotated on one side only, or someone probing (WhitebitWebhookSignatureFailures); "
                        "state_unavailable: the state file refuses writes; internal_error: a bug of ours, report it.",
                        "reqps",
                        (
                            Target(
                                'sum by (account, reason) (rate(whitebit_webhooks_rejected_total{job=~"$job", '
                                f'instance=~"$instance", account=~"$account|unknown"}}{RATE})) > 0',
                                "{{account}} {{reason}}",
                            ),
                        ),
                        width=8,
                    ),
                    graph(
                        "Duplicates and nonce regressions",
                        "Deliveries whose id was seen before (answered 200, not processed twice) and verified "
                        "deliveries whose nonce went backwards, per interval. Duplicates are WhiteBIT's retries of a "
                        "delivery whose answer it did not get; a burst, or any nonce regression, can be a replay of "
                        "captured deliveries (WhitebitWebhookReplayBurst, WhitebitWebhookNonceRegressions).",
                        "short",
                        (
                            Target(
                                f"sum by (account) (increase(whitebit_webhooks_duplicate_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "duplicates {{account}}",
                            ),
                            Target(
                                f"sum by (account) (increase(whitebit_webhook_nonce_regressions_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "nonce regressions {{account}}",
                            ),
                        ),
                    ),
                    graph(
                        "Refused by the webhook listener",
                        "Requests the webhook listener refused before any receiver saw them, per interval, by reason "
                        "(whitebit_exporter_webhook_listener_rejected_total). header_too_large: a delivery larger "
                        "than webhooks.max_body_bytes allows (its X-TXC-PAYLOAD header repeats the body): raise it, "
                        "and the header limit of a proxy in front; "
                        "bad_request: malformed requests, or TLS sent to a plain-HTTP port; not_found and "
                        "method_not_allowed: a wrong URL configured at WhiteBIT or Zero Hash, or scanners.",
                        "short",
                        (
                            Target(
                                f"sum by (reason) (increase(whitebit_exporter_webhook_listener_rejected_total{{{SEL}}}{RATE}))",
                                "{{reason}}",
                            ),
                        ),
                        thresholds=ANY_IS_A_WARNING,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                    ),
                ),
            ),
            (
                "Inbox",
                (
                    graph(
                        "Inbox lag",
                        "Seconds since the oldest delivery answered 200 but not yet applied to transfers and balances "
                        "was received; 0 when none waits (whitebit_exporter_inbox_lag_seconds). Past the line "
                        f"({_age(inbox_behind)}, WhitebitExporterInboxBehind) transfers and Zero Hash balances lag "
                        "behind what was delivered: the process is overloaded or its derivation stalls (see Not "
                        "derived and the log). Nothing is lost: the deliveries are stored.",
                        "s",
                        (Target(f"whitebit_exporter_inbox_lag_seconds{{{SEL}}}", "{{instance}}"),),
                        thresholds=steps("green", (inbox_behind, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                        width=6,
                    ),
                    graph(
                        "Deliveries waiting",
                        "Deliveries in the inbox whose state is not derived yet "
                        "(whitebit_exporter_inbox_pending_deliveries). Near 0 while the exporter keeps up; a growing "
                        "count goes with a growing lag.",
                        "short",
                        (Target(f"whitebit_exporter_inbox_pending_deliveries{{{SEL}}}", "{{instance}}"),),
                        width=6,
                    ),
                    graph(
                        "Derived per second",
                        "Inbox deliveries whose transfers or balances were derived, per second, by provider "
                        "(whitebit_exporter_inbox_derived_total).",
                        "reqps",
                        (
                            Target(
                                f"sum by (provider) (rate(whitebit_exporter_inbox_derived_total{{{SEL}}}{RATE}))",
                                "{{provider}}",
                            ),
                        ),
                        width=6,
                    ),
                    graph(
                        "Not derived",
                        "Inbox deliveries whose state could not be derived, per interval "
                        "(whitebit_exporter_inbox_derive_failures_total; alert: WhitebitExporterInboxDeriveFailures). "
                        "Each is kept with the reason: `whitebit-exporter inbox list` shows it as failed, with "
                        "derive_error.",
                        "short",
                        (
                            Target(
                                f"sum by (provider) (increase(whitebit_exporter_inbox_derive_failures_total{{{SEL}}}{RATE}))",
                                "{{provider}}",
                            ),
                        ),
                        thresholds=ANY_IS_BAD,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=6,
                    ),
                ),
            ),
            (
                "Relay",
                (
                    single(
                        "Dead letters",
                        "Deliveries the relay tried for the target's whole retry_for (7 days by default) and gave up on "
                        "(whitebit_exporter_relay_dead_letters; alert: WhitebitExporterRelayDeadLetters). Above 0 the "
                        "payment backend never received them; they are kept: `whitebit-exporter relay list --state dead` "
                        "names them, and once the backend takes deliveries again `whitebit-exporter relay retry --target "
                        "NAME` sends them again.",
                        "short",
                        Target(f"sum by (target) (whitebit_exporter_relay_dead_letters{{{SEL}}})", "{{target}}"),
                        thresholds=ANY_IS_BAD,
                        width=8,
                        height=8,
                    ),
                    graph(
                        "Deliveries owed",
                        "Verified deliveries the relay still owes each target: not yet answered 2xx, not dead "
                        "(whitebit_exporter_relay_pending_deliveries). Near 0 while the backend keeps up. Owed deliveries "
                        "pile up while a target is down or refusing; they are kept for retry_for (7 days by default), "
                        "then become dead letters. `whitebit-exporter relay list --target NAME` shows each one's tries "
                        "and last answer.",
                        "short",
                        (
                            Target(
                                f"sum by (target) (whitebit_exporter_relay_pending_deliveries{{{SEL}}})", "{{target}}"
                            ),
                        ),
                        width=8,
                    ),
                    graph(
                        "Oldest owed delivery",
                        "Seconds since the oldest delivery still owed to the target was owed; 0 when none is "
                        "(whitebit_exporter_relay_oldest_pending_seconds). The line is WhitebitExporterRelayBehind's "
                        f"{_age(relay_behind)}: above it the backend is down, refusing or too slow, and later "
                        "deliveries of the same account wait behind the oldest. Nothing is lost yet: fix the backend "
                        "(its logs say why it refuses) and the backlog goes out by itself, oldest first.",
                        "s",
                        (
                            Target(
                                f"max by (target) (whitebit_exporter_relay_oldest_pending_seconds{{{SEL}}})",
                                "{{target}}",
                            ),
                        ),
                        thresholds=steps("green", (relay_behind, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                        width=8,
                    ),
                    graph(
                        "Attempt outcomes",
                        "Relay attempts per second by target and outcome (whitebit_exporter_relay_deliveries_total): "
                        "delivered (2xx), retry (refused, timed out or unreachable; tried again after a pause growing "
                        "to the target's max_backoff), dead (retry_for ran out). Retries with no deliveries mean the "
                        "target is down or refuses everything; any dead is a new dead letter.",
                        "reqps",
                        (
                            Target(
                                f"sum by (target, outcome) (rate(whitebit_exporter_relay_deliveries_total{{{SEL}}}{RATE}))",
                                "{{target}} {{outcome}}",
                            ),
                        ),
                    ),
                    graph(
                        "Attempt duration",
                        "p50 and p99 of each relay attempt by target: the POST and its answer, or the timeout "
                        "(whitebit_exporter_relay_attempt_duration_seconds). A p99 at the target's timeout (10 s by "
                        "default) means attempts time out: the backend is too slow or unreachable, and they come back "
                        "as retries.",
                        "s",
                        (relay_duration("0.5", "p50"), relay_duration("0.99", "p99")),
                    ),
                ),
            ),
        ),
    )


def connectivity(alerts: AlertSettings) -> gd.Dashboard:
    ws_stale = alerts.value("WhitebitWebsocketStale", "max_age")
    usage = alerts.value("WhitebitRestRateLimitNearlyExhausted", "threshold")
    offset = alerts.value("WhitebitClockOffsetLarge", "threshold")
    unmeasured = alerts.value("WhitebitClockUnmeasured", "max_age")
    dashboard = _dashboard(
        "whitebit-connectivity",
        "WhiteBIT / WebSocket and REST",
        "The private WebSocket and the signed REST client: connection, reconnects, messages WhiteBIT sent that "
        "the exporter could not read, rate limits, latency, WhiteBIT's clock; and the exporter's own listeners.",
        (ACCOUNT,),
        (RESTARTS, RECONNECTS),
    )
    return _rows(
        dashboard,
        (
            (
                "WebSocket",
                (
                    single(
                        "WebSocket connected",
                        "1 while the private WebSocket is authorized and every channel that works is subscribed "
                        "(whitebit_websocket_connected). At 0 the exporter reconnects by itself (backoff up to 30 s); "
                        "one that stays down (WhitebitWebsocketDown) fails to get a token or to authorize: see "
                        "WebSocket errors, and check the API key.",
                        "none",
                        Target(f"whitebit_websocket_connected{{{SEL_ACCOUNT}}}", "{{account}}"),
                        thresholds=ZERO_IS_BAD,
                        mappings=_up_mappings("disconnected", "connected"),
                        width=6,
                        height=8,
                    ),
                    graph(
                        "WebSocket reconnects",
                        "Reconnects per interval (whitebit_websocket_reconnects_total; also marked on every graph). "
                        "WhiteBIT replays nothing, so each reconnect resyncs every channel. A few a day are normal; "
                        "a steady rate means an unstable network path or pongs not arriving within 10 s.",
                        "short",
                        (
                            Target(
                                f"sum by (account) (increase(whitebit_websocket_reconnects_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}}",
                            ),
                        ),
                        thresholds=ANY_IS_A_WARNING,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=6,
                    ),
                    graph(
                        "Time since last WebSocket message",
                        "Seconds since the last frame, pongs included (whitebit_websocket_last_message_timestamp_seconds);"
                        " pings every 25 s keep it low. Past the line "
                        f"({_age(ws_stale)}, WhitebitWebsocketStale) the socket is silent though it may look open: "
                        "the exporter reconnects when a pong is 10 s late, so a lasting climb means reconnects fail.",
                        "s",
                        (
                            Target(
                                f"time() - whitebit_websocket_last_message_timestamp_seconds{{{SEL_ACCOUNT}}}",
                                "{{account}}",
                            ),
                        ),
                        thresholds=steps("green", (ws_stale, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                        width=6,
                    ),
                    graph(
                        "WebSocket channels synced",
                        "1 while a channel is subscribed and its snapshot read (whitebit_websocket_channel_synced). A "
                        "balance channel at 0 on a connected socket has its wallet polled over REST meanwhile "
                        "(/-/ready says degraded and why); ordersPending at 0 has no stand-in, so open orders are "
                        "not current.",
                        "none",
                        (
                            Target(
                                f"whitebit_websocket_channel_synced{{{SEL_ACCOUNT}}}",
                                "{{account}} {{channel}}",
                            ),
                        ),
                        thresholds=ZERO_IS_BAD,
                        width=6,
                    )
                    .min(0)
                    .max(1),
                    graph(
                        "Invalid messages",
                        "Messages the exporter skipped because they are not what WhiteBIT documents, per interval, by "
                        "reason (whitebit_websocket_messages_invalid_total). Normally none. A rise after a WhiteBIT "
                        "release (unknown_method, missing_field, wrong_type, bad_value) is the first sign WhiteBIT "
                        "changed a message format: what those messages carried is not applied, so balances and open "
                        "orders can drift. The log's detail names the field; upgrade the exporter, or report it with "
                        "that line.",
                        "short",
                        (
                            Target(
                                f"sum by (account, reason) (increase(whitebit_websocket_messages_invalid_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}} {{reason}}",
                            ),
                        ),
                        thresholds=ANY_IS_BAD,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                    ),
                    graph(
                        "WebSocket errors",
                        "Error replies, unusable results and failed steps per interval, by method "
                        "(whitebit_websocket_errors_total); each is retried. A few around a reconnect are normal. A "
                        "steady count on one channel's subscribe or request means WhiteBIT refuses it (balanceMargin "
                        "on an account without collateral trading: expected, its wallet is polled); token or "
                        "authorize errors mean the API key lost access or was revoked.",
                        "short",
                        (
                            Target(
                                f"sum by (account, method) (increase(whitebit_websocket_errors_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}} {{method}}",
                            ),
                        ),
                        thresholds=ANY_IS_A_WARNING,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                    ),
                ),
            ),
            (
                "REST",
                (
                    graph(
                        "REST requests by status",
                        'Private REST attempts per second by HTTP status (code "error": no answer), retries included '
                        "(whitebit_rest_requests_total). 401 or 403: the API key lost a permission or its IP "
                        "binding; 5xx and error: WhiteBIT or the network (WhitebitRestFailing past half of them).",
                        "reqps",
                        (
                            Target(
                                f"sum by (account, endpoint, code) (rate(whitebit_rest_requests_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}} {{endpoint}} {{code}}",
                            ),
                        ),
                    ),
                    graph(
                        "REST 429 answers",
                        "HTTP 429 answers per interval (whitebit_rest_rate_limited_total). The exporter keeps within "
                        "WhiteBIT's limits itself, so a 429 means another program shares the IP or the key, or a "
                        "stale nonce (WhiteBIT answers both with 429): give the exporter a key of its own.",
                        "short",
                        (
                            Target(
                                f"sum by (account, endpoint) (increase(whitebit_rest_rate_limited_total{{{SEL_ACCOUNT}}}{RATE}))",
                                "{{account}} {{endpoint}}",
                            ),
                        ),
                        thresholds=ANY_IS_A_WARNING,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                    ),
                    graph(
                        "Rate limit usage",
                        "Requests in each endpoint family's current window over its documented limit "
                        "(whitebit_rest_rate_limit_usage_ratio). Past the line "
                        f"({usage:.0%}, WhitebitRestRateLimitNearlyExhausted) polls wait for a slot and numbers "
                        "age: lengthen the poll intervals or watch fewer accounts per IP.",
                        "percentunit",
                        (Target(f"whitebit_rest_rate_limit_usage_ratio{{{SEL_ACCOUNT}}}", "{{account}} {{endpoint}}"),),
                        thresholds=steps("green", (usage, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                    )
                    .min(0)
                    .max(1),
                    graph(
                        "REST latency quantiles",
                        "p50, p90 and p99 of REST request durations per endpoint "
                        "(whitebit_rest_request_duration_seconds). A p99 near the client's timeout means WhiteBIT is "
                        "slow or the path to it is: polls take longer and their numbers age.",
                        "s",
                        (latency("0.5", "p50"), latency("0.9", "p90"), latency("0.99", "p99")),
                    ),
                    graph(
                        "WhiteBIT clock offset",
                        "WhiteBIT's clock minus this host's, as last measured (whitebit_clock_offset_seconds). Nonces "
                        "are signed on WhiteBIT's clock, so requests keep working; outside the lines "
                        f"(±{offset:g} s, WhitebitClockOffsetLarge) the host's own clock drifts and every timestamp "
                        "it writes is off by as much: fix its time synchronisation (NTP).",
                        "s",
                        (Target(f"whitebit_clock_offset_seconds{{{SEL_ACCOUNT}}}", "{{account}}"),),
                        thresholds=steps("red", (-offset, "green"), (offset, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                    ),
                    graph(
                        "Time since WhiteBIT's clock was measured",
                        "Seconds since the last measurement of WhiteBIT's clock (whitebit_clock_sync_timestamp_seconds; "
                        "every 10 minutes). Past the line "
                        f"({_age(unmeasured)}, WhitebitClockUnmeasured) GET /api/v4/public/time fails, and nonces are "
                        "signed on an old offset: check REST requests by status.",
                        "s",
                        (Target(f"time() - whitebit_clock_sync_timestamp_seconds{{{SEL_ACCOUNT}}}", "{{account}}"),),
                        thresholds=steps("green", (unmeasured, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                    ),
                ),
            ),
            (
                "Listeners",
                (
                    graph(
                        "Open connections",
                        "Connections open on each of the exporter's listeners (whitebit_exporter_listener_connections)"
                        ", at most its max_connections (64 for metrics and 512 for webhooks by default). Near the cap, "
                        "new connections are refused: see the panel beside.",
                        "short",
                        (Target(f"whitebit_exporter_listener_connections{{{SEL}}}", "{{listener}}"),),
                        width=6,
                    ),
                    graph(
                        "Connections refused or cut off",
                        "Per interval and listener: connections closed at once because max_connections were open "
                        "(whitebit_exporter_listener_connections_refused_total), and requests cut off for not "
                        "arriving within request_timeout (whitebit_exporter_listener_connections_timed_out_total). "
                        "Refusals on the webhook listener lose deliveries until the sender retries: raise "
                        "webhooks.max_connections, or find the client that holds connections open.",
                        "short",
                        (
                            Target(
                                f"sum by (listener) (increase(whitebit_exporter_listener_connections_refused_total{{{SEL}}}{RATE}))",
                                "refused {{listener}}",
                            ),
                            Target(
                                f"sum by (listener) (increase(whitebit_exporter_listener_connections_timed_out_total{{{SEL}}}{RATE}))",
                                "cut off {{listener}}",
                            ),
                        ),
                        thresholds=ANY_IS_A_WARNING,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=6,
                    ),
                    graph(
                        "Open files",
                        "The process' open files over its limit (process_open_fds / process_max_fds); every "
                        "connection is one. Near the limit, accepting a connection or opening the state file fails: "
                        "raise the limit (systemd's LimitNOFILE=, Docker's --ulimit nofile=) or lower the listeners' "
                        f"max_connections. Orange from {OPEN_FILES_HIGH:.0%}, red from {OPEN_FILES_CRITICAL:.0%}.",
                        "percentunit",
                        (Target(f"process_open_fds{{{SEL}}} / process_max_fds{{{SEL}}}", "{{instance}}"),),
                        thresholds=steps("green", (OPEN_FILES_HIGH, "orange"), (OPEN_FILES_CRITICAL, "red")),
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=6,
                    )
                    .min(0)
                    .max(1),
                    graph(
                        "Metrics listener auth refusals",
                        "Requests the metrics listener refused under --web.config.file, per interval, by reason "
                        "(whitebit_exporter_metrics_listener_auth_rejected_total; exported when basic_auth_users or "
                        "client_allowed_sans is set). The log names each refused client's address: Prometheus' means "
                        "its password does not match the bcrypt hash (its target is down too); any other, someone "
                        "is guessing.",
                        "short",
                        (
                            Target(
                                f"sum by (reason) (increase(whitebit_exporter_metrics_listener_auth_rejected_total{{{SEL}}}{RATE}))",
                                "{{reason}}",
                            ),
                        ),
                        thresholds=ANY_IS_A_WARNING,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=6,
                    ),
                ),
            ),
        ),
    )


def zerohash(alerts: AlertSettings) -> gd.Dashboard:
    silent = alerts.value("WhitebitZerohashFeedSilent", "max_age")
    dashboard = _dashboard(
        "whitebit-zerohash",
        "WhiteBIT / Zero Hash",
        "Zero Hash account_balance.changed webhooks: balances per asset (one panel per asset) and account type, "
        "deliveries.",
        (ACCOUNT_GROUP, ZEROHASH_ASSET),
        (RESTARTS,),
    )
    return _rows(
        dashboard,
        (
            (
                "Balances",
                (
                    graph(
                        "Balance: $asset",
                        "One panel per asset (the asset variable), so assets of different sizes each get a scale of "
                        "their own: zerohash_balance summed over participants, per account group, label and account "
                        "type, in whole units of the asset. A step nobody expected: compare with Balance movements "
                        "and the deliveries received.",
                        "short",
                        (
                            Target(
                                f'sum by (account_group, account_label, account_type) (zerohash_balance{{{SEL_GROUP}, asset=~"$asset"}})',
                                "{{account_group}} {{account_label}} {{account_type}}",
                            ),
                        ),
                        width=24,
                    )
                    .repeat("asset")
                    .repeat_direction("h")
                    .max_per_row(3),
                    graph(
                        "Participant balances: $asset",
                        "zerohash_participant_balance of the participants listed in zerohash.webhook.participants, "
                        "one panel per asset.",
                        "short",
                        (
                            Target(
                                f'zerohash_participant_balance{{{SEL_GROUP}, asset=~"$asset"}}',
                                "{{participant}} {{account_type}}",
                            ),
                        ),
                        width=24,
                    )
                    .repeat("asset")
                    .repeat_direction("h")
                    .max_per_row(3),
                    graph(
                        "Participants holding a balance",
                        "zerohash_accounts: participants with a non-zero balance, per asset and account type.",
                        "short",
                        (
                            Target(
                                f'zerohash_accounts{{{SEL_GROUP}, asset=~"$asset"}}',
                                "{{account_group}} {{account_type}} {{asset}}",
                            ),
                        ),
                    ),
                    graph(
                        "Balance movements",
                        "Movements per second by type (zerohash_balance_movements_total); `other` is a movement type "
                        "Zero Hash does not document: check what it is before trusting the balances it moved.",
                        "ops",
                        (
                            Target(
                                f'sum by (movement_type, asset) (rate(zerohash_balance_movements_total{{{SEL}, asset=~"$asset"}}{RATE}))',
                                "{{movement_type}} {{asset}}",
                            ),
                        ),
                    ),
                ),
            ),
            (
                "Deliveries",
                (
                    graph(
                        "Received and verified",
                        "Zero Hash deliveries per second by payload type. Received but not verified: see Rejected.",
                        "reqps",
                        (
                            Target(
                                f"sum by (payload_type) (rate(zerohash_webhooks_received_total{{{SEL}}}{RATE}))",
                                "received {{payload_type}}",
                            ),
                            Target(
                                f"sum by (payload_type) (rate(zerohash_webhooks_verified_total{{{SEL}}}{RATE}))",
                                "verified {{payload_type}}",
                            ),
                        ),
                        width=6,
                    ),
                    graph(
                        "Rejected and duplicates",
                        "Rejected deliveries per second by reason, and duplicates (answered 200, not processed twice). "
                        "bad_signature or stale_timestamp: a secret or key rotated on one side only, a clock far off, "
                        "or someone replaying deliveries (WhitebitZerohashSignatureFailures); "
                        "legacy_signature_refused: see zerohash.webhook.legacy_signature.",
                        "reqps",
                        (
                            Target(
                                f"sum by (reason) (rate(zerohash_webhooks_rejected_total{{{SEL}}}{RATE})) > 0",
                                "rejected {{reason}}",
                            ),
                            Target(f"sum(rate(zerohash_webhooks_duplicate_total{{{SEL}}}{RATE}))", "duplicates"),
                        ),
                        width=6,
                    ),
                    graph(
                        "Late retries accepted",
                        "New, verified deliveries accepted although their timestamp was older than "
                        "timestamp_tolerance, per interval (zerohash_webhooks_late_total): Zero Hash's retries of "
                        "deliveries that failed earlier. A burst follows a time when the receiver was unreachable or "
                        "answered 503: look for that outage.",
                        "short",
                        (Target(f"sum(increase(zerohash_webhooks_late_total{{{SEL}}}{RATE}))", "late"),),
                        thresholds=ANY_IS_A_WARNING,
                        draw=common.GraphThresholdsStyleMode.DASHED,
                        width=6,
                    ),
                    graph(
                        "Time since last Zero Hash webhook",
                        "Seconds since the last verified delivery (zerohash_webhook_last_received_timestamp_seconds). "
                        f"Past the line ({_age(silent)}, WhitebitZerohashFeedSilent) balances may be stale: check "
                        "that Zero Hash still has the URL and reaches it, and the rejections beside.",
                        "s",
                        (
                            Target(
                                f"time() - zerohash_webhook_last_received_timestamp_seconds{{{SEL}}}", "{{instance}}"
                            ),
                        ),
                        thresholds=steps("green", (silent, "red")),
                        draw=common.GraphThresholdsStyleMode.LINE,
                        width=6,
                    ),
                ),
            ),
        ),
    )


DASHBOARDS = (overview, webhooks, connectivity, zerohash)


def render_dashboard(builder: gd.Dashboard) -> dict[str, Any]:
    """The classic Grafana dashboard JSON model of ``builder``, its panels numbered from 1 in order."""
    model = builder.build()
    for number, panel in enumerate(model.panels or [], start=1):
        panel.id_val = number
    rendered: dict[str, Any] = json.loads(JSONEncoder().encode(model))
    return rendered


def render(alerts: AlertSettings) -> dict[str, str]:
    """File name (under dashboards/) -> JSON text of every dashboard."""
    files = {}
    for build in DASHBOARDS:
        dashboard = render_dashboard(build(alerts))
        files[f"{dashboard['uid']}.json"] = json.dumps(dashboard, indent=2) + "\n"
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "dashboards", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--alerts-config",
        type=Path,
        default=ALERTS_CONFIG,
        help="the alerts' thresholds, drawn on the panels (default: %(default)s)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if the files in --out are not up to date")
    args = parser.parse_args(argv)
    files = render(AlertSettings.load(args.alerts_config))
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = args.out / name
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == content:
            continue
        if args.check:
            stale.append(str(target))
        else:
            target.write_text(content, encoding="utf-8")
            print(f"wrote {target}")
    extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in files)
    if extra:
        print(f"not generated by grafana/generate.py (remove or add them here): {', '.join(extra)}", file=sys.stderr)
        return 1
    if stale:
        print(f"out of date (run python grafana/generate.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
