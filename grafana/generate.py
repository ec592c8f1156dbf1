#!/usr/bin/env python3
"""Write the bundled Grafana dashboards (grafana/dashboards/*.json) from the definitions below.

Dashboards are built in code so that every panel gets the same conventions: the ``$datasource``
variable, ``job``/``instance`` (and ``account``) matchers on every selector, ``$__rate_interval``
in rates, a unit and a description. ``--check`` exits 1 when the committed JSON differs from a fresh
rendering (the test suite runs it). Usage: ``python grafana/generate.py [--out DIR] [--check]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39  # what Grafana 10.4/11 writes; older than the V2 resource schema
TAGS = ["whitebit-exporter"]

# Matchers every query carries; WhiteBIT account series add the account.
SEL = 'job=~"$job", instance=~"$instance"'
SEL_ACCOUNT = SEL + ', account=~"$account"'
SEL_GROUP = SEL + ', account_group=~"$account_group"'
RATE = "[$__rate_interval]"


@dataclass(frozen=True)
class Target:
    """One query of a panel."""

    expr: str
    legend: str


@dataclass(frozen=True)
class Threshold:
    """A threshold step: from ``value`` up the panel turns ``color`` (below the first: green)."""

    value: float
    color: str = "red"


@dataclass(frozen=True)
class Panel:
    """A panel: a time series by default, or a ``stat``; ``width`` in grid units (24 per row).

    ``thresholds`` colour a stat's value, and draw a line across a time series (an alert's threshold).
    """

    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    kind: str = "timeseries"
    width: int = 12
    height: int = 8
    mappings: tuple[dict[str, Any], ...] = ()
    max: float | None = None
    thresholds: tuple[Threshold, ...] = ()


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    variables: tuple[str, ...] = ("account",)
    links: tuple[str, ...] = field(default=())


UP_MAPPINGS = (
    {
        "type": "value",
        "options": {
            "0": {"text": "down", "color": "red", "index": 0},
            "1": {"text": "up", "color": "green", "index": 1},
        },
    },
)
CONNECTED_MAPPINGS = (
    {
        "type": "value",
        "options": {
            "0": {"text": "disconnected", "color": "red", "index": 0},
            "1": {"text": "connected", "color": "green", "index": 1},
        },
    },
)


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


#: WhitebitExporterRelayBehind's threshold in prometheus/config.yaml (seconds); the oldest owed delivery panel
#: draws it (a test keeps the two equal).
RELAY_BEHIND_SECONDS = 900


OVERVIEW = Dashboard(
    uid="whitebit-overview",
    title="WhiteBIT / Account overview",
    description="Is the exporter up, what every balance is, open orders and transfers in flight.",
    rows=(
        Row(
            "Status",
            (
                Panel(
                    "Exporter scraped",
                    "1 when Prometheus scraped the exporter at the last attempt (the up series).",
                    "none",
                    (Target(f"up{{{SEL}}}", "{{instance}}"),),
                    kind="stat",
                    width=6,
                    mappings=UP_MAPPINGS,
                ),
                Panel(
                    "Account up",
                    "whitebit_up: 1 when all of the account's sources (WebSocket, REST pollers) are "
                    "connected and fresh.",
                    "none",
                    (Target(f"whitebit_up{{{SEL_ACCOUNT}}}", "{{account}}"),),
                    kind="stat",
                    width=6,
                    mappings=UP_MAPPINGS,
                ),
                Panel(
                    "Version",
                    "The exporter's version and Python (whitebit_exporter_build_info).",
                    "none",
                    (Target(f"whitebit_exporter_build_info{{{SEL}}}", "{{version}} (Python {{python}})"),),
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Background task restarts",
                    "Supervised tasks that crashed and were restarted, per interval.",
                    "short",
                    (
                        Target(
                            f"sum by (task) (increase(whitebit_exporter_task_restarts_total{{{SEL}}}{RATE}))",
                            "{{task}}",
                        ),
                    ),
                    width=6,
                ),
            ),
        ),
        Row(
            "Balances",
            (
                Panel(
                    "Balance by wallet and asset",
                    "whitebit_balance in whole asset units: main from REST, spot "
                    "(available + frozen) and collateral from the WebSocket.",
                    "short",
                    (
                        Target(
                            f"sum by (account, wallet, asset) (whitebit_balance{{{SEL_ACCOUNT}}})",
                            "{{account}} {{wallet}} {{asset}}",
                        ),
                    ),
                ),
                Panel(
                    "Frozen on spot",
                    "whitebit_balance_frozen: the part of the spot balance held by open orders.",
                    "short",
                    (Target(f"whitebit_balance_frozen{{{SEL_ACCOUNT}}}", "{{account}} {{asset}}"),),
                ),
                Panel(
                    "Collateral borrowed",
                    "whitebit_collateral_borrowed: borrowed amount per asset on the collateral account.",
                    "short",
                    (Target(f"whitebit_collateral_borrowed{{{SEL_ACCOUNT}}}", "{{account}} {{asset}}"),),
                ),
                Panel(
                    "Balance age",
                    "Seconds since each wallet's balance was last known current: a poll answer, a push or a pong on "
                    "its synced channel (whitebit_balance_last_update_timestamp_seconds). Idle wallets stay near 0; "
                    "WhitebitBalanceStale fires past 10 minutes.",
                    "s",
                    (
                        Target(
                            f"time() - whitebit_balance_last_update_timestamp_seconds{{{SEL_ACCOUNT}}}",
                            "{{account}} {{wallet}}",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Open orders",
            (
                Panel(
                    "Open orders",
                    "whitebit_open_orders by market and side (all order types summed).",
                    "short",
                    (
                        Target(
                            f"sum by (account, market, side) (whitebit_open_orders{{{SEL_ACCOUNT}}})",
                            "{{account}} {{market}} {{side}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Amount left in open orders",
                    "whitebit_open_orders_left: the sum of `left` in base units.",
                    "short",
                    (Target(f"whitebit_open_orders_left{{{SEL_ACCOUNT}}}", "{{account}} {{market}} {{side}}"),),
                    width=8,
                ),
                Panel(
                    "Order events",
                    "whitebit_order_events_total per second by event (new, update, finish, modify, stop_activated).",
                    "ops",
                    (
                        Target(
                            f"sum by (account, event) (rate(whitebit_order_events_total{{{SEL_ACCOUNT}}}{RATE}))",
                            "{{account}} {{event}}",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
        Row(
            "Transfers",
            (
                Panel(
                    "Transfers in flight",
                    "Deposits and withdrawals not yet final, by the meaning of their status "
                    "(whitebit_transfers_in_flight).",
                    "short",
                    (
                        Target(
                            f"sum by (account, kind, status) (whitebit_transfers_in_flight{{{SEL_ACCOUNT}}}) > 0",
                            "{{account}} {{kind}} {{status}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Oldest transfer in flight",
                    "How long the oldest deposit or withdrawal has been waiting for a "
                    "final status (alert: WhitebitTransferStuck).",
                    "s",
                    (
                        Target(
                            f"time() - whitebit_transfers_oldest_in_flight_timestamp_seconds{{{SEL_ACCOUNT}}}",
                            "{{account}} {{kind}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Transfers completed",
                    "Deposits and withdrawals that reached a final outcome, per interval (whitebit_transfers_total).",
                    "short",
                    (
                        Target(
                            f"sum by (account, kind, outcome) (increase(whitebit_transfers_total{{{SEL_ACCOUNT}}}{RATE}))",
                            "{{account}} {{kind}} {{outcome}}",
                        ),
                    ),
                    width=8,
                ),
            ),
        ),
    ),
)

WEBHOOKS = Dashboard(
    uid="whitebit-webhooks",
    title="WhiteBIT / Webhooks",
    description="Signed WhiteBIT webhooks: received, verified, rejected, duplicated, replayed and missed; the inbox, "
    "and the relay of verified deliveries to the payment backends.",
    rows=(
        Row(
            "Missed",
            (
                Panel(
                    "Missed webhooks in the range",
                    "History records whose webhook never came within webhook_retry_window "
                    "(whitebit_webhooks_missed_total; alert: WhitebitWebhookMissed).",
                    "short",
                    (
                        Target(
                            f"sum by (account, kind) (increase(whitebit_webhooks_missed_total{{{SEL_ACCOUNT}}}[$__range]))",
                            "{{account}} {{kind}}",
                        ),
                    ),
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Overdue webhooks",
                    "Transfers in history whose webhook has not come within reconcile_grace and is not yet counted "
                    "missed: WhiteBIT may still retry it (whitebit_webhooks_overdue; alert: WhitebitWebhookOverdue).",
                    "short",
                    (Target(f"whitebit_webhooks_overdue{{{SEL_ACCOUNT}}}", "{{account}} {{kind}}"),),
                    width=6,
                ),
                Panel(
                    "Missed webhooks",
                    "Missed webhooks per interval, by kind.",
                    "short",
                    (
                        Target(
                            f"sum by (account, kind) (increase(whitebit_webhooks_missed_total{{{SEL_ACCOUNT}}}{RATE}))",
                            "{{account}} {{kind}}",
                        ),
                    ),
                    width=6,
                ),
                Panel(
                    "Time since last webhook",
                    "Seconds since the last verified delivery (whitebit_webhook_last_received_timestamp_seconds).",
                    "s",
                    (
                        Target(
                            f"time() - whitebit_webhook_last_received_timestamp_seconds{{{SEL_ACCOUNT}}}", "{{account}}"
                        ),
                    ),
                    width=6,
                ),
            ),
        ),
        Row(
            "Deliveries",
            (
                Panel(
                    "Received by method",
                    "Deliveries that reached the receiver per second (whitebit_webhooks_received_total).",
                    "reqps",
                    (
                        Target(
                            f"sum by (account, method) (rate(whitebit_webhooks_received_total{{{SEL_ACCOUNT}}}{RATE}))",
                            "{{account}} {{method}}",
                        ),
                    ),
                ),
                Panel(
                    "Verified by method",
                    "Deliveries whose signature and payload checks passed, per second "
                    "(whitebit_webhooks_verified_total).",
                    "reqps",
                    (
                        Target(
                            f"sum by (account, method) (rate(whitebit_webhooks_verified_total{{{SEL_ACCOUNT}}}{RATE}))",
                            "{{account}} {{method}}",
                        ),
                    ),
                ),
                Panel(
                    "Rejected by reason",
                    'Rejected deliveries per second by reason; account "unknown" is a delivery '
                    "naming no configured key (whitebit_webhooks_rejected_total).",
                    "reqps",
                    (
                        Target(
                            'sum by (account, reason) (rate(whitebit_webhooks_rejected_total{job=~"$job", '
                            f'instance=~"$instance", account=~"$account|unknown"}}{RATE})) > 0',
                            "{{account}} {{reason}}",
                        ),
                    ),
                ),
                Panel(
                    "Duplicates and nonce regressions",
                    "Deliveries whose id was seen before (answered 200, not "
                    "processed twice) and verified deliveries whose nonce went backwards, per interval.",
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
            ),
        ),
        Row(
            "Inbox",
            (
                Panel(
                    "Inbox lag",
                    "Seconds since the oldest delivery answered 200 but not yet applied to transfers and balances "
                    "was received; 0 when none waits (whitebit_exporter_inbox_lag_seconds; alert: "
                    "WhitebitExporterInboxBehind).",
                    "s",
                    (Target(f"whitebit_exporter_inbox_lag_seconds{{{SEL}}}", "{{instance}}"),),
                    width=6,
                ),
                Panel(
                    "Deliveries waiting",
                    "Deliveries in the inbox whose state is not derived yet "
                    "(whitebit_exporter_inbox_pending_deliveries).",
                    "short",
                    (Target(f"whitebit_exporter_inbox_pending_deliveries{{{SEL}}}", "{{instance}}"),),
                    width=6,
                ),
                Panel(
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
                Panel(
                    "Not derived",
                    "Inbox deliveries whose state could not be derived (kept with the reason; "
                    "whitebit_exporter_inbox_derive_failures_total; alert: WhitebitExporterInboxDeriveFailures).",
                    "short",
                    (
                        Target(
                            f"sum by (provider) (increase(whitebit_exporter_inbox_derive_failures_total{{{SEL}}}{RATE}))",
                            "{{provider}}",
                        ),
                    ),
                    width=6,
                ),
            ),
        ),
        Row(
            "Relay",
            (
                Panel(
                    "Dead letters",
                    "Deliveries the relay tried for the target's whole retry_for (7 days by default) and gave up on "
                    "(whitebit_exporter_relay_dead_letters; alert: WhitebitExporterRelayDeadLetters). Above 0 the "
                    "payment backend never received them; they are kept: `whitebit-exporter relay list --state dead` "
                    "names them, and once the backend takes deliveries again `whitebit-exporter relay retry --target "
                    "NAME` sends them again.",
                    "short",
                    (Target(f"sum by (target) (whitebit_exporter_relay_dead_letters{{{SEL}}})", "{{target}}"),),
                    kind="stat",
                    width=8,
                    thresholds=(Threshold(1),),
                ),
                Panel(
                    "Deliveries owed",
                    "Verified deliveries the relay still owes each target: not yet answered 2xx, not dead "
                    "(whitebit_exporter_relay_pending_deliveries). Near 0 while the backend keeps up. Owed deliveries "
                    "pile up while a target is down or refusing; they are kept for retry_for (7 days by default), "
                    "then become dead letters. `whitebit-exporter relay list --target NAME` shows each one's tries "
                    "and last answer.",
                    "short",
                    (Target(f"sum by (target) (whitebit_exporter_relay_pending_deliveries{{{SEL}}})", "{{target}}"),),
                    width=8,
                ),
                Panel(
                    "Oldest owed delivery",
                    "Seconds since the oldest delivery still owed to the target was owed; 0 when none is "
                    "(whitebit_exporter_relay_oldest_pending_seconds). The line is WhitebitExporterRelayBehind's "
                    "900 s: above it the backend is down, refusing or too slow, and later deliveries of the same "
                    "account wait behind the oldest. Nothing is lost yet: fix the backend (its logs say why it "
                    "refuses) and the backlog goes out by itself, oldest first.",
                    "s",
                    (
                        Target(
                            f"max by (target) (whitebit_exporter_relay_oldest_pending_seconds{{{SEL}}})", "{{target}}"
                        ),
                    ),
                    width=8,
                    thresholds=(Threshold(RELAY_BEHIND_SECONDS),),
                ),
                Panel(
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
                Panel(
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

CONNECTIVITY = Dashboard(
    uid="whitebit-connectivity",
    title="WhiteBIT / WebSocket and REST",
    description="The private WebSocket and the signed REST client: connection, reconnects, rate limits, latency.",
    rows=(
        Row(
            "WebSocket",
            (
                Panel(
                    "WebSocket connected",
                    "1 while the private WebSocket is authorized and subscribed (whitebit_websocket_connected).",
                    "none",
                    (Target(f"whitebit_websocket_connected{{{SEL_ACCOUNT}}}", "{{account}}"),),
                    kind="stat",
                    width=8,
                    mappings=CONNECTED_MAPPINGS,
                ),
                Panel(
                    "WebSocket reconnects",
                    "Reconnects per interval (whitebit_websocket_reconnects_total).",
                    "short",
                    (
                        Target(
                            f"sum by (account) (increase(whitebit_websocket_reconnects_total{{{SEL_ACCOUNT}}}{RATE}))",
                            "{{account}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "Time since last WebSocket message",
                    "Seconds since the last message, pongs included; WhiteBIT closes a socket after 60 s of silence.",
                    "s",
                    (
                        Target(
                            f"time() - whitebit_websocket_last_message_timestamp_seconds{{{SEL_ACCOUNT}}}",
                            "{{account}}",
                        ),
                    ),
                    width=8,
                ),
                Panel(
                    "WebSocket channels synced",
                    "1 while a channel is subscribed and its snapshot read (whitebit_websocket_channel_synced). A "
                    "balance channel at 0 on a connected socket has its wallet polled over REST meanwhile; /-/ready "
                    "says why it fails.",
                    "none",
                    (
                        Target(
                            f"whitebit_websocket_channel_synced{{{SEL_ACCOUNT}}}",
                            "{{account}} {{channel}}",
                        ),
                    ),
                    width=24,
                    max=1.0,
                ),
            ),
        ),
        Row(
            "REST",
            (
                Panel(
                    "REST requests by status",
                    'Private REST attempts per second by HTTP status (code "error": no '
                    "answer), retries included (whitebit_rest_requests_total).",
                    "reqps",
                    (
                        Target(
                            f"sum by (account, endpoint, code) (rate(whitebit_rest_requests_total{{{SEL_ACCOUNT}}}{RATE}))",
                            "{{account}} {{endpoint}} {{code}}",
                        ),
                    ),
                ),
                Panel(
                    "REST 429 answers",
                    "HTTP 429 answers per interval (whitebit_rest_rate_limited_total); WhiteBIT "
                    "also answers 429 for a stale nonce.",
                    "short",
                    (
                        Target(
                            f"sum by (account, endpoint) (increase(whitebit_rest_rate_limited_total{{{SEL_ACCOUNT}}}{RATE}))",
                            "{{account}} {{endpoint}}",
                        ),
                    ),
                ),
                Panel(
                    "Rate limit usage",
                    "Requests in each endpoint's current window over its documented limit "
                    "(whitebit_rest_rate_limit_usage_ratio).",
                    "percentunit",
                    (Target(f"whitebit_rest_rate_limit_usage_ratio{{{SEL_ACCOUNT}}}", "{{account}} {{endpoint}}"),),
                    max=1.0,
                ),
                Panel(
                    "REST latency quantiles",
                    "p50, p90 and p99 of REST request durations per endpoint (whitebit_rest_request_duration_seconds).",
                    "s",
                    (latency("0.5", "p50"), latency("0.9", "p90"), latency("0.99", "p99")),
                ),
                Panel(
                    "WhiteBIT clock offset",
                    "WhiteBIT's clock minus this host's, as last measured (whitebit_clock_offset_seconds); nonces are "
                    "signed on WhiteBIT's clock, so only the host's own timestamps are off by this much.",
                    "s",
                    (Target(f"whitebit_clock_offset_seconds{{{SEL_ACCOUNT}}}", "{{account}}"),),
                ),
            ),
        ),
    ),
)

ZEROHASH = Dashboard(
    uid="whitebit-zerohash",
    title="WhiteBIT / Zero Hash",
    description="Zero Hash account_balance.changed webhooks: balances per asset and account type, deliveries.",
    variables=("account_group",),
    rows=(
        Row(
            "Balances",
            (
                Panel(
                    "Balance by asset and account type",
                    "zerohash_balance summed over participants, per account group and label.",
                    "short",
                    (
                        Target(
                            f"sum by (account_group, account_type, asset) (zerohash_balance{{{SEL_GROUP}}})",
                            "{{account_group}} {{account_type}} {{asset}}",
                        ),
                    ),
                ),
                Panel(
                    "Participant balances",
                    "zerohash_participant_balance for the participants listed in zerohash.webhook.participants.",
                    "short",
                    (
                        Target(
                            f"zerohash_participant_balance{{{SEL_GROUP}}}", "{{participant}} {{account_type}} {{asset}}"
                        ),
                    ),
                ),
                Panel(
                    "Participants holding a balance",
                    "zerohash_accounts: participants with a non-zero balance.",
                    "short",
                    (Target(f"zerohash_accounts{{{SEL_GROUP}}}", "{{account_group}} {{account_type}} {{asset}}"),),
                ),
                Panel(
                    "Balance movements",
                    "Movements per second by type (zerohash_balance_movements_total).",
                    "ops",
                    (
                        Target(
                            f"sum by (movement_type, asset) (rate(zerohash_balance_movements_total{{{SEL}}}{RATE}))",
                            "{{movement_type}} {{asset}}",
                        ),
                    ),
                ),
            ),
        ),
        Row(
            "Deliveries",
            (
                Panel(
                    "Received and verified",
                    "Zero Hash deliveries per second by payload type.",
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
                    width=8,
                ),
                Panel(
                    "Rejected and duplicates",
                    "Rejected deliveries per second by reason, and duplicates (answered 200, not processed twice).",
                    "reqps",
                    (
                        Target(
                            f"sum by (reason) (rate(zerohash_webhooks_rejected_total{{{SEL}}}{RATE})) > 0",
                            "rejected {{reason}}",
                        ),
                        Target(f"sum(rate(zerohash_webhooks_duplicate_total{{{SEL}}}{RATE}))", "duplicates"),
                    ),
                    width=8,
                ),
                Panel(
                    "Time since last Zero Hash webhook",
                    "Seconds since the last verified delivery (alert: WhitebitZerohashFeedSilent).",
                    "s",
                    (Target(f"time() - zerohash_webhook_last_received_timestamp_seconds{{{SEL}}}", "{{instance}}"),),
                    width=8,
                ),
            ),
        ),
    ),
)

DASHBOARDS = (OVERVIEW, WEBHOOKS, CONNECTIVITY, ZEROHASH)


def _query_variable(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": query,
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".+",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
        "regex": "",
        "sort": 1,
        "hide": 0,
    }


def _variables(dashboard: Dashboard) -> list[dict[str, Any]]:
    variables: list[dict[str, Any]] = [
        {
            "name": "datasource",
            "label": "Data Source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "regex": "",
            "refresh": 1,
            "hide": 0,
        },
        _query_variable("job", "label_values(whitebit_exporter_build_info, job)"),
        _query_variable("instance", 'label_values(whitebit_exporter_build_info{job=~"$job"}, instance)'),
    ]
    extra = {
        "account": 'label_values(whitebit_up{job=~"$job", instance=~"$instance"}, account)',
        "account_group": 'label_values(zerohash_balance{job=~"$job", instance=~"$instance"}, account_group)',
    }
    variables += [_query_variable(name, extra[name]) for name in dashboard.variables]
    return variables


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "mappings": list(panel.mappings)}
    if panel.max is not None:
        defaults["max"] = panel.max
        defaults["min"] = 0
    if panel.thresholds:
        steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
        steps += [{"color": t.color, "value": t.value} for t in panel.thresholds]
        defaults["thresholds"] = {"mode": "absolute", "steps": steps}
    if panel.kind == "timeseries":
        defaults["custom"] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
        if panel.thresholds:
            defaults["custom"]["thresholdsStyle"] = {"mode": "line"}
        options: dict[str, Any] = {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    else:
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        }
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": t.expr,
                "legendFormat": t.legend,
                "range": True,
                "instant": False,
            }
            for i, t in enumerate(panel.targets)
        ],
    }


def render_dashboard(dashboard: Dashboard) -> dict[str, Any]:
    """The classic Grafana dashboard JSON model of ``dashboard``."""
    panels: list[dict[str, Any]] = []
    panel_id, y = 1, 0
    for row in dashboard.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row.title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y, x, row_height = panel_id + 1, y + 1, 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel(panel, panel_id, x, y))
            panel_id, x, row_height = panel_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    return {
        "id": None,
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": TAGS,
        "timezone": "",
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-3h", "to": "now"},
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [
            {
                "title": "WhiteBIT dashboards",
                "type": "dashboards",
                "tags": TAGS,
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": _variables(dashboard)},
        "panels": panels,
    }


def render() -> dict[str, str]:
    """File name (under dashboards/) -> JSON text of every dashboard."""
    return {f"{d.uid}.json": json.dumps(render_dashboard(d), indent=2) + "\n" for d in DASHBOARDS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "dashboards", help="output folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files in --out are not up to date")
    args = parser.parse_args(argv)
    files = render()
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
