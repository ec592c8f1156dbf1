"""Metric family names (the spec's Metrics table, one constant each) and the build_info collector.

Names are defined once here and reused by the collectors, the tests and the docs. Counter
families are named WITHOUT ``_total``: ``CounterMetricFamily`` (and ``Counter``) append the
suffix themselves, so ``WHITEBIT_ORDER_EVENTS`` is exposed as ``whitebit_order_events_total``.
:data:`METRIC_TYPES` maps every family to its type; :func:`exposed_name` gives the sample name
a scrape shows for a counter.
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# --- WhiteBIT accounts -------------------------------------------------------------------
WHITEBIT_UP = "whitebit_up"
WHITEBIT_BALANCE = "whitebit_balance"
WHITEBIT_BALANCE_FROZEN = "whitebit_balance_frozen"
WHITEBIT_COLLATERAL_BORROWED = "whitebit_collateral_borrowed"
WHITEBIT_BALANCE_LAST_UPDATE_TIMESTAMP_SECONDS = "whitebit_balance_last_update_timestamp_seconds"
WHITEBIT_OPEN_ORDERS = "whitebit_open_orders"
WHITEBIT_OPEN_ORDERS_LEFT = "whitebit_open_orders_left"
WHITEBIT_ORDER_EVENTS = "whitebit_order_events"  # counter: exposed as ..._total
WHITEBIT_WEBSOCKET_CONNECTED = "whitebit_websocket_connected"
WHITEBIT_WEBSOCKET_RECONNECTS = "whitebit_websocket_reconnects"  # counter
WHITEBIT_WEBSOCKET_LAST_MESSAGE_TIMESTAMP_SECONDS = "whitebit_websocket_last_message_timestamp_seconds"

# --- WhiteBIT webhooks and history reconciliation -----------------------------------------
WHITEBIT_WEBHOOKS_RECEIVED = "whitebit_webhooks_received"  # counter
WHITEBIT_WEBHOOKS_VERIFIED = "whitebit_webhooks_verified"  # counter
WHITEBIT_WEBHOOKS_REJECTED = "whitebit_webhooks_rejected"  # counter
WHITEBIT_WEBHOOKS_DUPLICATE = "whitebit_webhooks_duplicate"  # counter
WHITEBIT_WEBHOOK_NONCE_REGRESSIONS = "whitebit_webhook_nonce_regressions"  # counter
WHITEBIT_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS = "whitebit_webhook_last_received_timestamp_seconds"
WHITEBIT_WEBHOOKS_MISSED = "whitebit_webhooks_missed"  # counter
WHITEBIT_TRANSFERS_IN_FLIGHT = "whitebit_transfers_in_flight"
WHITEBIT_TRANSFERS = "whitebit_transfers"  # counter

# --- WhiteBIT REST ------------------------------------------------------------------------
WHITEBIT_REST_REQUEST_DURATION_SECONDS = "whitebit_rest_request_duration_seconds"  # histogram
WHITEBIT_REST_REQUESTS = "whitebit_rest_requests"  # counter
WHITEBIT_REST_RATE_LIMITED = "whitebit_rest_rate_limited"  # counter
WHITEBIT_REST_RATE_LIMIT_USAGE_RATIO = "whitebit_rest_rate_limit_usage_ratio"

# --- WhiteBIT collateral account summary (REST /collateral-account/summary; not in the spec table) --
WHITEBIT_COLLATERAL_EQUITY = "whitebit_collateral_equity"
WHITEBIT_COLLATERAL_MARGIN = "whitebit_collateral_margin"
WHITEBIT_COLLATERAL_FREE_MARGIN = "whitebit_collateral_free_margin"
WHITEBIT_COLLATERAL_MARGIN_FRACTION = "whitebit_collateral_margin_fraction"
WHITEBIT_COLLATERAL_ACCOUNT_LAST_UPDATE_TIMESTAMP_SECONDS = "whitebit_collateral_account_last_update_timestamp_seconds"

# --- Zero Hash ----------------------------------------------------------------------------
ZEROHASH_BALANCE = "zerohash_balance"
ZEROHASH_PARTICIPANT_BALANCE = "zerohash_participant_balance"
ZEROHASH_ACCOUNTS = "zerohash_accounts"
ZEROHASH_BALANCE_MOVEMENTS = "zerohash_balance_movements"  # counter
ZEROHASH_WEBHOOKS_RECEIVED = "zerohash_webhooks_received"  # counter
ZEROHASH_WEBHOOKS_VERIFIED = "zerohash_webhooks_verified"  # counter
ZEROHASH_WEBHOOKS_REJECTED = "zerohash_webhooks_rejected"  # counter
ZEROHASH_WEBHOOKS_DUPLICATE = "zerohash_webhooks_duplicate"  # counter
ZEROHASH_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS = "zerohash_webhook_last_received_timestamp_seconds"

# --- The exporter itself ------------------------------------------------------------------
EXPORTER_BUILD_INFO = "whitebit_exporter_build_info"
EXPORTER_TASK_RESTARTS = "whitebit_exporter_task_restarts"  # counter
EXPORTER_TASK_RUNNING = "whitebit_exporter_task_running"

GAUGE = "gauge"
COUNTER = "counter"
HISTOGRAM = "histogram"

METRIC_TYPES: dict[str, str] = {
    WHITEBIT_UP: GAUGE,
    WHITEBIT_BALANCE: GAUGE,
    WHITEBIT_BALANCE_FROZEN: GAUGE,
    WHITEBIT_COLLATERAL_BORROWED: GAUGE,
    WHITEBIT_BALANCE_LAST_UPDATE_TIMESTAMP_SECONDS: GAUGE,
    WHITEBIT_OPEN_ORDERS: GAUGE,
    WHITEBIT_OPEN_ORDERS_LEFT: GAUGE,
    WHITEBIT_ORDER_EVENTS: COUNTER,
    WHITEBIT_WEBSOCKET_CONNECTED: GAUGE,
    WHITEBIT_WEBSOCKET_RECONNECTS: COUNTER,
    WHITEBIT_WEBSOCKET_LAST_MESSAGE_TIMESTAMP_SECONDS: GAUGE,
    WHITEBIT_WEBHOOKS_RECEIVED: COUNTER,
    WHITEBIT_WEBHOOKS_VERIFIED: COUNTER,
    WHITEBIT_WEBHOOKS_REJECTED: COUNTER,
    WHITEBIT_WEBHOOKS_DUPLICATE: COUNTER,
    WHITEBIT_WEBHOOK_NONCE_REGRESSIONS: COUNTER,
    WHITEBIT_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS: GAUGE,
    WHITEBIT_WEBHOOKS_MISSED: COUNTER,
    WHITEBIT_TRANSFERS_IN_FLIGHT: GAUGE,
    WHITEBIT_TRANSFERS: COUNTER,
    WHITEBIT_REST_REQUEST_DURATION_SECONDS: HISTOGRAM,
    WHITEBIT_REST_REQUESTS: COUNTER,
    WHITEBIT_REST_RATE_LIMITED: COUNTER,
    WHITEBIT_REST_RATE_LIMIT_USAGE_RATIO: GAUGE,
    WHITEBIT_COLLATERAL_EQUITY: GAUGE,
    WHITEBIT_COLLATERAL_MARGIN: GAUGE,
    WHITEBIT_COLLATERAL_FREE_MARGIN: GAUGE,
    WHITEBIT_COLLATERAL_MARGIN_FRACTION: GAUGE,
    WHITEBIT_COLLATERAL_ACCOUNT_LAST_UPDATE_TIMESTAMP_SECONDS: GAUGE,
    ZEROHASH_BALANCE: GAUGE,
    ZEROHASH_PARTICIPANT_BALANCE: GAUGE,
    ZEROHASH_ACCOUNTS: GAUGE,
    ZEROHASH_BALANCE_MOVEMENTS: COUNTER,
    ZEROHASH_WEBHOOKS_RECEIVED: COUNTER,
    ZEROHASH_WEBHOOKS_VERIFIED: COUNTER,
    ZEROHASH_WEBHOOKS_REJECTED: COUNTER,
    ZEROHASH_WEBHOOKS_DUPLICATE: COUNTER,
    ZEROHASH_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS: GAUGE,
    EXPORTER_BUILD_INFO: GAUGE,
    EXPORTER_TASK_RESTARTS: COUNTER,
    EXPORTER_TASK_RUNNING: GAUGE,
}

# --- Label values the spec fixes (counters with known label values start at 0) -------------
WALLETS = ("main", "spot", "collateral")
ORDER_SIDES = ("buy", "sell")
ORDER_EVENTS = ("new", "update", "finish", "modify", "stop_activated")
TRANSFER_KINDS = ("deposit", "withdraw")
WHITEBIT_REJECT_REASONS = (
    "missing_header",
    "unknown_key",
    "payload_mismatch",
    "bad_signature",
    "bad_json",
    "body_too_large",
    "nonce_regression",
)
ZEROHASH_REJECT_REASONS = (*WHITEBIT_REJECT_REASONS, "stale_timestamp")
UNKNOWN_ACCOUNT = "unknown"  # the `account` of a delivery that names no configured key
OTHER = "other"  # the `method`/`payload_type` of anything undocumented


def exposed_name(family: str) -> str:
    """The sample name a scrape shows for ``family`` (counters gain ``_total``)."""
    return f"{family}_total" if METRIC_TYPES.get(family) == COUNTER else family


class BuildInfoCollector(Collector):
    """The exporter's version and Python version, value 1.

    ::

        # TYPE whitebit_exporter_build_info gauge
        whitebit_exporter_build_info{python="3.11.9",version="0.1.0"} 1.0
    """

    def __init__(self, version: str, python_version: str | None = None) -> None:
        self._version = version
        self._python = python_version if python_version is not None else platform.python_version()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            EXPORTER_BUILD_INFO,
            "The exporter's version and the Python it runs on; value 1.",
            labels=["version", "python"],
        )
        family.add_metric([self._version, self._python], 1.0)
        yield family


# --- Webhook intake and transfers (issue 4) ---------------------------------------------------
# Families beyond the spec's table, added by the webhook receivers and the transfer lifecycle.
WHITEBIT_TRANSFERS_OLDEST_IN_FLIGHT_TIMESTAMP_SECONDS = "whitebit_transfers_oldest_in_flight_timestamp_seconds"
WHITEBIT_DEPOSITS_AWAITING_CONFIRMATIONS = "whitebit_deposits_awaiting_confirmations"
METRIC_TYPES.update(
    {
        WHITEBIT_TRANSFERS_OLDEST_IN_FLIGHT_TIMESTAMP_SECONDS: GAUGE,
        WHITEBIT_DEPOSITS_AWAITING_CONFIRMATIONS: GAUGE,
    }
)

#: Every documented WhiteBIT webhook method (reference 5.4); ``deposit.update`` is counted as
#: ``deposit.updated`` and anything else as ``other``.
WHITEBIT_WEBHOOK_METHODS = (
    "deposit.accepted",
    "deposit.updated",
    "deposit.processed",
    "deposit.canceled",
    "withdraw.unconfirmed",
    "withdraw.pending",
    "withdraw.canceled",
    "withdraw.successful",
    "withdraw.partial_successful",
    "code.apply",
    "refund.successful",
    "refund.failed",
)
#: Every documented Zero Hash ``x-zh-hook-payload-type`` (reference zerohash.md section 5, both
#: spellings where Zero Hash's pages disagree); anything else is ``other``.
ZEROHASH_PAYLOAD_TYPES = (
    "account_balance.changed",
    "trade.status_changed",
    "trade_status_changed",
    "deposit.status_changed",
    "participant_status_changed",
    "participant_updated",
    "payment_status_changed",
    "external_account_status_changed",
    "deposit_fund_complete",
    "asset_mover_update",
    "asset_mover_updated",
    "trade_strategy.operation.status_changed",
    "trade_strategy.execution.status_changed",
    "trade_strategy.trader.created",
    "token_signature_request",
    "token_status_update",
    "unspecified",
)
#: Zero Hash movement types (reference zerohash.md section 8, the REST enum); anything else is ``other``.
ZEROHASH_MOVEMENT_TYPES = (
    "deposit",
    "withdrawal_pending",
    "withdrawal_confirmed",
    "withdrawal",
    "transfer",
    "final_settlement",
    "final_settlement_outstanding",
    "final_settlement_default",
    "final_settlement_default_fallback",
    "final_settlement_default_partial",
    "otc_final_settlement",
    "execution_fee",
    "network_fee",
    "transaction_fee",
    "bank_fee",
    "commission",
    "initial_margin",
    "variation_margin",
    "variation_margin_call",
    "interest_payment",
    "principal_swap",
    "repayment",
    "collateralize_loan",
    "loan_collateral_return",
)
#: Zero Hash account types (REST); the webhook covers ``available`` and ``collateral``.
ZEROHASH_ACCOUNT_TYPES = ("available", "collateral", "payable", "receivable", "collateral_deficiency", "staked")

# --- WhiteBIT private WebSocket: the exporter's own view of the connection (issue 3) --------
WHITEBIT_WEBSOCKET_MESSAGES_INVALID = "whitebit_websocket_messages_invalid"  # counter {account, reason}
WHITEBIT_WEBSOCKET_ERRORS = "whitebit_websocket_errors"  # counter {account, method}
METRIC_TYPES[WHITEBIT_WEBSOCKET_MESSAGES_INVALID] = COUNTER
METRIC_TYPES[WHITEBIT_WEBSOCKET_ERRORS] = COUNTER
