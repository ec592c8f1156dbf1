"""Every metric the exporter exposes, defined once: name, type, help text and label names.

The collectors build their families from these definitions (``WHITEBIT_BALANCE.family()``), the
README's metric tables are checked against :data:`METRICS` by a test, and so is the monitoring
bundle (every name the alert rules and dashboards read must be defined here). Adding a metric means
adding a definition here, rendering it in a collector, and a row in the README.

Counter names are given WITHOUT ``_total``: ``CounterMetricFamily`` appends it, so
``WHITEBIT_ORDER_EVENTS`` is scraped as ``whitebit_order_events_total`` (see
:attr:`MetricDef.sample_names`). Label values that a sender or an exchange could invent are mapped
onto a bounded set by the module that reads them, with :data:`OTHER` for anything undocumented.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, Protocol, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

#: The label value of anything undocumented (a method, a payload type, a status), so a sender
#: cannot mint series.
OTHER = "other"

#: The values of one sample's labels, in the order of :attr:`MetricDef.labels`.
LabelValues = tuple[str, ...]


@dataclass(frozen=True)
class MetricDef:
    """One metric family: what a scrape calls it, what it means and what it is labelled by."""

    type: ClassVar[str]
    name: str
    help: str
    labels: tuple[str, ...] = ()

    @property
    def sample_names(self) -> tuple[str, ...]:
        """The names its samples carry in a scrape (``_total`` for counters, three for a histogram)."""
        return (self.name,)


class _ValueFamily(Protocol):
    """A family whose samples are one value per label set (a gauge or a counter)."""

    def add_metric(self, labels: Sequence[str], value: float) -> None: ...


F = TypeVar("F", bound=_ValueFamily)


@dataclass(frozen=True)
class _ValueDef(MetricDef, Generic[F]):
    """A gauge or a counter: one value per label set, so a dict of values renders it."""

    def family(self) -> F:
        """An empty family of this metric, to be filled by a collector."""
        raise NotImplementedError

    def render(self, values: Mapping[LabelValues, float]) -> F:
        """The family with one sample per ``label values -> value``."""
        family = self.family()
        for labels, value in values.items():
            family.add_metric(labels, value)
        return family


@dataclass(frozen=True)
class GaugeDef(_ValueDef[GaugeMetricFamily]):
    """A gauge."""

    type: ClassVar[str] = "gauge"

    def family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.help, labels=self.labels)


@dataclass(frozen=True)
class CounterDef(_ValueDef[CounterMetricFamily]):
    """A counter (``name`` without ``_total``)."""

    type: ClassVar[str] = "counter"

    @property
    def sample_names(self) -> tuple[str, ...]:
        return (f"{self.name}_total",)

    def family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.help, labels=self.labels)


@dataclass(frozen=True)
class HistogramDef(MetricDef):
    """A histogram; its buckets are chosen where it is observed."""

    type: ClassVar[str] = "histogram"

    @property
    def sample_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}_{suffix}" for suffix in ("bucket", "sum", "count"))

    def family(self) -> HistogramMetricFamily:
        """An empty family of this histogram, to be filled by a collector."""
        return HistogramMetricFamily(self.name, self.help, labels=self.labels)


# --- the exporter itself ----------------------------------------------------------------------------

EXPORTER_BUILD_INFO = GaugeDef(
    "whitebit_exporter_build_info", "The exporter's version and the Python it runs on; value 1.", ("version", "python")
)
WHITEBIT_UP = GaugeDef(
    "whitebit_up", "1 when every data source of the WhiteBIT account is connected and fresh, else 0.", ("account",)
)
EXPORTER_TASK_RUNNING = GaugeDef(
    "whitebit_exporter_task_running",
    "1 while the supervised task runs, 0 while it waits to restart or has ended.",
    ("task",),
)
EXPORTER_TASK_RESTARTS = CounterDef(
    "whitebit_exporter_task_restarts", "Times a supervised task crashed or ended and was restarted.", ("task",)
)
EXPORTER_INBOX_PENDING = GaugeDef(
    "whitebit_exporter_inbox_pending_deliveries",
    "Webhook deliveries in the inbox (answered 200, durable) whose state has not been derived yet.",
)
EXPORTER_INBOX_LAG_SECONDS = GaugeDef(
    "whitebit_exporter_inbox_lag_seconds",
    "Seconds since the oldest inbox delivery whose state has not been derived yet was received; 0 when none waits.",
)
EXPORTER_INBOX_DERIVED = CounterDef(
    "whitebit_exporter_inbox_derived",
    "Inbox deliveries whose state (transfers, Zero Hash balances) has been derived, by provider.",
    ("provider",),
)
EXPORTER_INBOX_DERIVE_FAILURES = CounterDef(
    "whitebit_exporter_inbox_derive_failures",
    "Inbox deliveries whose state could not be derived (kept in the inbox with the reason), by provider.",
    ("provider",),
)
EXPORTER_RELAY_DELIVERIES = CounterDef(
    "whitebit_exporter_relay_deliveries",
    "Relay attempts by target and outcome: delivered (2xx), retry (refused, timed out or unreachable; tried"
    " again), dead (out of time).",
    ("target", "outcome"),
)
EXPORTER_RELAY_PENDING = GaugeDef(
    "whitebit_exporter_relay_pending_deliveries",
    "Deliveries the relay still owes the target (not yet answered 2xx, not dead).",
    ("target",),
)
EXPORTER_RELAY_OLDEST_PENDING_SECONDS = GaugeDef(
    "whitebit_exporter_relay_oldest_pending_seconds",
    "Seconds since the oldest delivery the relay still owes the target was owed; 0 when none is.",
    ("target",),
)
EXPORTER_RELAY_DEAD_LETTERS = GaugeDef(
    "whitebit_exporter_relay_dead_letters",
    "Deliveries the relay gave up on (retry_for passed) and keeps for relay retry, by target.",
    ("target",),
)
EXPORTER_RELAY_ATTEMPT_DURATION_SECONDS = HistogramDef(
    "whitebit_exporter_relay_attempt_duration_seconds",
    "Duration of each relay attempt (the POST and its answer, or the timeout), by target.",
    ("target",),
)
EXPORTER_STATE_WRITABLE = GaugeDef(
    "whitebit_exporter_state_writable",
    "1 while the state file accepts writes, 0 from a failed write until one succeeds.",
)
EXPORTER_STATE_VOLUME_FREE_BYTES = GaugeDef(
    "whitebit_exporter_state_volume_free_bytes", "Bytes still free on the volume of the state file (statvfs)."
)
EXPORTER_STATE_ERRORS = CounterDef(
    "whitebit_exporter_state_errors",
    "Failed reads and writes of the state file, by kind (full, corrupt, io, readonly, busy, other).",
    ("kind",),
)

# --- balances and open orders (private WebSocket and REST) -------------------------------------------

WHITEBIT_BALANCE = GaugeDef(
    "whitebit_balance",
    "Balance per wallet and asset in whole units: main from REST, spot available + freeze, "
    "collateral B from balanceMargin.",
    ("account", "wallet", "asset"),
)
WHITEBIT_BALANCE_FROZEN = GaugeDef(
    "whitebit_balance_frozen", "Spot balance held by open orders (freeze), in whole units.", ("account", "asset")
)
WHITEBIT_COLLATERAL_BORROWED = GaugeDef(
    "whitebit_collateral_borrowed",
    "Borrowed amount of a collateral asset (balanceMargin b), in whole units.",
    ("account", "asset"),
)
WHITEBIT_BALANCE_LAST_UPDATE_TIMESTAMP_SECONDS = GaugeDef(
    "whitebit_balance_last_update_timestamp_seconds",
    "Unix time the wallet's balances were last known current (an answer, a push, or a live subscription's pong); "
    "before the first answer, the time the exporter started watching the wallet.",
    ("account", "wallet"),
)
WHITEBIT_OPEN_ORDERS = GaugeDef(
    "whitebit_open_orders", "Open orders per market, side and type.", ("account", "market", "side", "type")
)
WHITEBIT_OPEN_ORDERS_LEFT = GaugeDef(
    "whitebit_open_orders_left",
    "Sum of the amount still open (left, in base units) of the open orders per market and side.",
    ("account", "market", "side"),
)
WHITEBIT_ORDER_EVENTS = CounterDef(
    "whitebit_order_events",
    "Order events from ordersPending: new, update, finish, modify (finish + new with the same "
    "client_order_id, counted once), stop_activated.",
    ("account", "market", "event"),
)
WHITEBIT_WEBSOCKET_CONNECTED = GaugeDef(
    "whitebit_websocket_connected",
    "1 while the private WebSocket is authorized, subscribed and synced, else 0.",
    ("account",),
)
WHITEBIT_WEBSOCKET_CHANNEL_SYNCED = GaugeDef(
    "whitebit_websocket_channel_synced",
    "1 while the private channel is subscribed and its snapshot read on the current connection; 0 while "
    "it syncs, fails (retried with backoff) or the connection is down.",
    ("account", "channel"),
)
WHITEBIT_WEBSOCKET_RECONNECTS = CounterDef(
    "whitebit_websocket_reconnects", "Connection attempts after the first one.", ("account",)
)
WHITEBIT_WEBSOCKET_LAST_MESSAGE_TIMESTAMP_SECONDS = GaugeDef(
    "whitebit_websocket_last_message_timestamp_seconds",
    "Unix time of the last frame received on the private WebSocket.",
    ("account",),
)
WHITEBIT_WEBSOCKET_MESSAGES_INVALID = CounterDef(
    "whitebit_websocket_messages_invalid",
    "WebSocket frames skipped because they could not be used, by reason.",
    ("account", "reason"),
)
WHITEBIT_WEBSOCKET_ERRORS = CounterDef(
    "whitebit_websocket_errors",
    "WebSocket requests (and token requests) that failed: an error reply or no reply in time.",
    ("account", "method"),
)
_COLLATERAL_CURRENCY = "in the collateral valuation currency (USDT)"
WHITEBIT_COLLATERAL_EQUITY = GaugeDef(
    "whitebit_collateral_equity", f"Collateral account equity {_COLLATERAL_CURRENCY}.", ("account",)
)
WHITEBIT_COLLATERAL_MARGIN = GaugeDef(
    "whitebit_collateral_margin", f"Margin tied up by positions and borrowing {_COLLATERAL_CURRENCY}.", ("account",)
)
WHITEBIT_COLLATERAL_FREE_MARGIN = GaugeDef(
    "whitebit_collateral_free_margin", f"Free margin {_COLLATERAL_CURRENCY}.", ("account",)
)
WHITEBIT_COLLATERAL_MARGIN_FRACTION = GaugeDef(
    "whitebit_collateral_margin_fraction",
    "Margin fraction of the collateral account (ratio); +Inf without open positions.",
    ("account",),
)
WHITEBIT_COLLATERAL_ACCOUNT_LAST_UPDATE_TIMESTAMP_SECONDS = GaugeDef(
    "whitebit_collateral_account_last_update_timestamp_seconds",
    "Unix time the last successful collateral summary poll started.",
    ("account",),
)

# --- WhiteBIT webhooks, transfers and history reconciliation ------------------------------------------

WHITEBIT_WEBHOOKS_RECEIVED = CounterDef(
    "whitebit_webhooks_received",
    "WhiteBIT webhook deliveries that reached the receiver (method other until verified).",
    ("account", "method"),
)
WHITEBIT_WEBHOOKS_VERIFIED = CounterDef(
    "whitebit_webhooks_verified",
    "WhiteBIT webhook deliveries whose payload and signature checks passed and whose JSON parsed.",
    ("account", "method"),
)
WHITEBIT_WEBHOOKS_REJECTED = CounterDef(
    "whitebit_webhooks_rejected", "WhiteBIT webhook deliveries rejected, by reason.", ("account", "reason")
)
WHITEBIT_WEBHOOKS_DUPLICATE = CounterDef(
    "whitebit_webhooks_duplicate",
    "WhiteBIT webhook deliveries whose signed id was seen before (answered 200, not processed).",
    ("account",),
)
WHITEBIT_WEBHOOK_NONCE_REGRESSIONS = CounterDef(
    "whitebit_webhook_nonce_regressions",
    "Verified WhiteBIT deliveries whose nonce was not above the highest seen.",
    ("account",),
)
WHITEBIT_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS = GaugeDef(
    "whitebit_webhook_last_received_timestamp_seconds",
    "When the last verified WhiteBIT webhook delivery was received (kept across restarts by the state file); "
    "before the first, when the state file started watching the account.",
    ("account",),
)
WEBHOOK_LISTENER_REJECTED = CounterDef(
    "whitebit_exporter_webhook_listener_rejected",
    "Requests the webhook listener refused before any receiver saw them (malformed, oversized headers, "
    "unknown path, wrong method), by reason.",
    ("reason",),
)
METRICS_LISTENER_AUTH_REJECTED = CounterDef(
    "whitebit_exporter_metrics_listener_auth_rejected",
    "Requests the metrics listener refused for want of authentication (--web.config.file): no or unreadable "
    "credentials, a wrong user or password (401), or a client certificate without an allowed SAN (403).",
    ("reason",),
)
LISTENER_CONNECTIONS = GaugeDef(
    "whitebit_exporter_listener_connections",
    "Connections open on each HTTP listener (metrics, webhooks); capped by its max_connections.",
    ("listener",),
)
LISTENER_CONNECTIONS_REFUSED = CounterDef(
    "whitebit_exporter_listener_connections_refused",
    "Connections a listener closed at once because it already had max_connections open.",
    ("listener",),
)
LISTENER_CONNECTIONS_TIMED_OUT = CounterDef(
    "whitebit_exporter_listener_connections_timed_out",
    "Connections a listener cut off because a request's headers and body did not arrive within request_timeout.",
    ("listener",),
)
WHITEBIT_WEBHOOKS_MISSED = CounterDef(
    "whitebit_webhooks_missed",
    "Deposits and withdrawals whose webhook did not arrive within webhook_retry_window of history showing them.",
    ("account", "kind"),
)
WHITEBIT_WEBHOOKS_OVERDUE = GaugeDef(
    "whitebit_webhooks_overdue",
    "Deposits and withdrawals history shows whose webhook has not come within reconcile_grace and is not yet "
    "counted missed (WhiteBIT may still be retrying it).",
    ("account", "kind"),
)
WHITEBIT_TRANSFERS_IN_FLIGHT = GaugeDef(
    "whitebit_transfers_in_flight",
    "Deposits and withdrawals not yet final, by the meaning of their status code.",
    ("account", "kind", "status"),
)
WHITEBIT_TRANSFERS = CounterDef(
    "whitebit_transfers",
    "Deposits and withdrawals that reached a final outcome, each counted once.",
    ("account", "kind", "outcome", "asset"),
)
WHITEBIT_TRANSFERS_OLDEST_IN_FLIGHT_TIMESTAMP_SECONDS = GaugeDef(
    "whitebit_transfers_oldest_in_flight_timestamp_seconds",
    "Creation time of the oldest deposit or withdrawal still in flight (absent when none).",
    ("account", "kind"),
)
WHITEBIT_DEPOSITS_AWAITING_CONFIRMATIONS = GaugeDef(
    "whitebit_deposits_awaiting_confirmations",
    "Deposits in flight whose confirmations.actual is below confirmations.required.",
    ("account",),
)

# --- Zero Hash -------------------------------------------------------------------------------------

ZEROHASH_BALANCE = GaugeDef(
    "zerohash_balance",
    "Zero Hash balance summed over participants, in whole asset units.",
    ("account_group", "account_label", "account_type", "asset"),
)
ZEROHASH_PARTICIPANT_BALANCE = GaugeDef(
    "zerohash_participant_balance",
    "Zero Hash balance of an allow-listed participant, in whole asset units.",
    ("participant", "account_group", "account_label", "account_type", "asset"),
)
ZEROHASH_ACCOUNTS = GaugeDef(
    "zerohash_accounts",
    "Zero Hash participants holding a non-zero balance.",
    ("account_group", "account_type", "asset"),
)
ZEROHASH_BALANCE_MOVEMENTS = CounterDef(
    "zerohash_balance_movements",
    "Zero Hash balance movements reported by account_balance.changed, by movement type.",
    ("account_type", "asset", "movement_type"),
)
ZEROHASH_WEBHOOKS_RECEIVED = CounterDef(
    "zerohash_webhooks_received", "Zero Hash webhook deliveries that reached the receiver.", ("payload_type",)
)
ZEROHASH_WEBHOOKS_VERIFIED = CounterDef(
    "zerohash_webhooks_verified",
    "Zero Hash webhook deliveries whose signature and timestamp checks passed and whose JSON parsed.",
    ("payload_type",),
)
ZEROHASH_WEBHOOKS_REJECTED = CounterDef(
    "zerohash_webhooks_rejected", "Zero Hash webhook deliveries rejected, by reason.", ("reason",)
)
ZEROHASH_WEBHOOKS_DUPLICATE = CounterDef(
    "zerohash_webhooks_duplicate",
    "Zero Hash webhook deliveries whose signed content was seen before (answered 200, not processed).",
)
ZEROHASH_WEBHOOKS_LATE = CounterDef(
    "zerohash_webhooks_late",
    "New, verified Zero Hash deliveries accepted although their x-zh-hook-timestamp was older than "
    "timestamp_tolerance (a late retry).",
)
ZEROHASH_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS = GaugeDef(
    "zerohash_webhook_last_received_timestamp_seconds",
    "When the last verified Zero Hash webhook delivery was received (kept across restarts by the state file); "
    "before the first, when the state file started watching the feed.",
)

# --- WhiteBIT REST -----------------------------------------------------------------------------------

WHITEBIT_REST_REQUEST_DURATION_SECONDS = HistogramDef(
    "whitebit_rest_request_duration_seconds",
    "Duration of each REST attempt, private or public (the HTTP exchange, not the wait for a rate-limit slot).",
    ("account", "endpoint"),
)
WHITEBIT_REST_REQUESTS = CounterDef(
    "whitebit_rest_requests",
    'REST attempts, private or public, by HTTP status code (code="error": no answer), retries included.',
    ("account", "endpoint", "code"),
)
WHITEBIT_REST_RATE_LIMITED = CounterDef(
    "whitebit_rest_rate_limited",
    "REST attempts answered 429 Too many requests (a rate limit or a reused nonce).",
    ("account", "endpoint"),
)
WHITEBIT_REST_RATE_LIMIT_USAGE_RATIO = GaugeDef(
    "whitebit_rest_rate_limit_usage_ratio",
    "This account's requests to the endpoint in its rate-limit window divided by the limit of the"
    " endpoint's family; sum over accounts and a family's endpoints for the whole IP's usage.",
    ("account", "endpoint"),
)

WHITEBIT_CLOCK_OFFSET_SECONDS = GaugeDef(
    "whitebit_clock_offset_seconds",
    "WhiteBIT's clock minus ours, as last measured with /api/v4/public/time; nonces are signed on WhiteBIT's clock.",
    ("account",),
)
WHITEBIT_CLOCK_SYNC_TIMESTAMP_SECONDS = GaugeDef(
    "whitebit_clock_sync_timestamp_seconds",
    "Unix time of the last successful measurement of WhiteBIT's clock.",
    ("account",),
)

# --- prices (WhiteBIT's public ticker) ------------------------------------------------------------

WHITEBIT_PRICE = GaugeDef(
    "whitebit_price",
    "Last trade price of a held asset in the quote asset (quote units per unit) from WhiteBIT's public ticker; "
    "1 for the quote asset itself.",
    ("asset", "quote"),
)
WHITEBIT_PRICE_LAST_UPDATE_TIMESTAMP_SECONDS = GaugeDef(
    "whitebit_price_last_update_timestamp_seconds",
    "Unix time the public ticker was last read (the poll's start); before the first answer, the time the exporter "
    "started polling it.",
    ("quote",),
)

#: Every metric the exporter defines, in the order of the README's tables.
METRICS: tuple[MetricDef, ...] = (
    EXPORTER_BUILD_INFO,
    WHITEBIT_UP,
    EXPORTER_TASK_RUNNING,
    EXPORTER_TASK_RESTARTS,
    EXPORTER_STATE_WRITABLE,
    EXPORTER_STATE_VOLUME_FREE_BYTES,
    EXPORTER_STATE_ERRORS,
    EXPORTER_INBOX_PENDING,
    EXPORTER_INBOX_LAG_SECONDS,
    EXPORTER_INBOX_DERIVED,
    EXPORTER_INBOX_DERIVE_FAILURES,
    EXPORTER_RELAY_DELIVERIES,
    EXPORTER_RELAY_PENDING,
    EXPORTER_RELAY_OLDEST_PENDING_SECONDS,
    EXPORTER_RELAY_DEAD_LETTERS,
    EXPORTER_RELAY_ATTEMPT_DURATION_SECONDS,
    WHITEBIT_BALANCE,
    WHITEBIT_BALANCE_FROZEN,
    WHITEBIT_COLLATERAL_BORROWED,
    WHITEBIT_BALANCE_LAST_UPDATE_TIMESTAMP_SECONDS,
    WHITEBIT_OPEN_ORDERS,
    WHITEBIT_OPEN_ORDERS_LEFT,
    WHITEBIT_ORDER_EVENTS,
    WHITEBIT_WEBSOCKET_CONNECTED,
    WHITEBIT_WEBSOCKET_CHANNEL_SYNCED,
    WHITEBIT_WEBSOCKET_RECONNECTS,
    WHITEBIT_WEBSOCKET_LAST_MESSAGE_TIMESTAMP_SECONDS,
    WHITEBIT_WEBSOCKET_MESSAGES_INVALID,
    WHITEBIT_WEBSOCKET_ERRORS,
    WHITEBIT_COLLATERAL_EQUITY,
    WHITEBIT_COLLATERAL_MARGIN,
    WHITEBIT_COLLATERAL_FREE_MARGIN,
    WHITEBIT_COLLATERAL_MARGIN_FRACTION,
    WHITEBIT_COLLATERAL_ACCOUNT_LAST_UPDATE_TIMESTAMP_SECONDS,
    WHITEBIT_WEBHOOKS_RECEIVED,
    WHITEBIT_WEBHOOKS_VERIFIED,
    WHITEBIT_WEBHOOKS_REJECTED,
    WHITEBIT_WEBHOOKS_DUPLICATE,
    WHITEBIT_WEBHOOK_NONCE_REGRESSIONS,
    WHITEBIT_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS,
    WEBHOOK_LISTENER_REJECTED,
    METRICS_LISTENER_AUTH_REJECTED,
    LISTENER_CONNECTIONS,
    LISTENER_CONNECTIONS_REFUSED,
    LISTENER_CONNECTIONS_TIMED_OUT,
    WHITEBIT_WEBHOOKS_MISSED,
    WHITEBIT_WEBHOOKS_OVERDUE,
    WHITEBIT_TRANSFERS_IN_FLIGHT,
    WHITEBIT_TRANSFERS,
    WHITEBIT_TRANSFERS_OLDEST_IN_FLIGHT_TIMESTAMP_SECONDS,
    WHITEBIT_DEPOSITS_AWAITING_CONFIRMATIONS,
    ZEROHASH_BALANCE,
    ZEROHASH_PARTICIPANT_BALANCE,
    ZEROHASH_ACCOUNTS,
    ZEROHASH_BALANCE_MOVEMENTS,
    ZEROHASH_WEBHOOKS_RECEIVED,
    ZEROHASH_WEBHOOKS_VERIFIED,
    ZEROHASH_WEBHOOKS_REJECTED,
    ZEROHASH_WEBHOOKS_DUPLICATE,
    ZEROHASH_WEBHOOKS_LATE,
    ZEROHASH_WEBHOOK_LAST_RECEIVED_TIMESTAMP_SECONDS,
    WHITEBIT_REST_REQUEST_DURATION_SECONDS,
    WHITEBIT_REST_REQUESTS,
    WHITEBIT_REST_RATE_LIMITED,
    WHITEBIT_REST_RATE_LIMIT_USAGE_RATIO,
    WHITEBIT_CLOCK_OFFSET_SECONDS,
    WHITEBIT_CLOCK_SYNC_TIMESTAMP_SECONDS,
    WHITEBIT_PRICE,
    WHITEBIT_PRICE_LAST_UPDATE_TIMESTAMP_SECONDS,
)


class SeriesValues(Collector):
    """Values of some gauge and counter families, kept by their owner as plain dicts and rendered on scrape.

    ``received = values.series(WHITEBIT_WEBHOOKS_RECEIVED, known_label_values)`` hands out the dict of one
    family (every known series at 0, so ``increase()`` sees the first event); the owner updates it in
    place (``received[labels] += 1``), which costs a dict operation on a hot path, and a scrape renders
    every family from its dict.
    """

    def __init__(self) -> None:
        self._families: list[tuple[GaugeDef | CounterDef, dict[LabelValues, float]]] = []

    def series(self, metric: GaugeDef | CounterDef, known: Iterable[LabelValues] = ()) -> dict[LabelValues, float]:
        """The values of ``metric``, starting with every series in ``known`` at 0."""
        values = dict.fromkeys(known, 0.0)
        self._families.append((metric, values))
        return values

    def collect(self) -> Iterator[Metric]:
        for metric, values in self._families:
            yield metric.render(values)


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
        yield EXPORTER_BUILD_INFO.render({(self._version, self._python): 1.0})
