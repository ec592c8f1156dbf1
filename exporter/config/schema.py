"""The configuration as the rest of the exporter sees it: frozen dataclasses and their defaults.

Nothing here reads a file or an environment variable (that is :mod:`exporter.config.load`, which
also reads the secret and key files, so nothing reads them later), and nothing here imports the rest
of the exporter: every other module depends on this one, never the
other way round. Durations are float seconds. Secret fields are excluded from ``repr`` so a config
object can be logged without leaking them. The shipped ``config.yaml`` documents every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

#: Request duration buckets (seconds): WhiteBIT answers in tens to hundreds of milliseconds when
#: healthy; the upper buckets separate a slow exchange from one that times out (default 10 s).
DEFAULT_DURATION_BUCKETS: tuple[float, ...] = (
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 5


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` requests in any ``window`` seconds."""

    limit: int
    window: float


#: WhiteBIT's documented REST limits per IP, by endpoint family (docs/protocol.md#rest-rate-limits).
#: Where the old and new docs disagree the stricter figure is kept: ``orders`` is 12,000 in the new
#: docs but 1,000 in the old ones, and a limiter that is too strict only costs a little waiting.
DOCUMENTED_LIMITS: dict[str, RateLimit] = {
    "default": RateLimit(10_000, 10.0),
    "main-account": RateLimit(1_000, 10.0),
    "main-account/history": RateLimit(200, 10.0),
    "trade-account": RateLimit(12_000, 10.0),
    "collateral-account": RateLimit(12_000, 10.0),
    "orders": RateLimit(1_000, 10.0),
    "profile/websocket_token": RateLimit(10, 60.0),
    "sub-account/balances": RateLimit(1_000, 10.0),
    # The public ticker (docs/protocol.md#public-ticker): 2,000 / 10 s, within the public 20,000.
    "public/ticker": RateLimit(2_000, 10.0),
}

FAMILIES: tuple[str, ...] = tuple(DOCUMENTED_LIMITS)

#: The ``account`` label of a webhook delivery whose key matches no configured account, so no account
#: may be called that.
RESERVED_ACCOUNT_NAME = "unknown"
#: What ``webhook.nonce_policy`` may be.
NONCE_POLICIES = ("count", "strict")

DEFAULT_METRICS_ADDRESS = "127.0.0.1:9945"
DEFAULT_WEBHOOKS_ADDRESS = "0.0.0.0:9946"
#: Seconds a client has to send a whole request (headers and body) on either listener.
DEFAULT_REQUEST_TIMEOUT = 10.0
#: Seconds an idle keep-alive connection stays open (aiohttp's own default is an hour).
DEFAULT_IDLE_TIMEOUT = 5.0
#: The largest ``max_connections`` the loader accepts for a listener.
MAX_LISTENER_CONNECTIONS = 65536


@dataclass(frozen=True)
class ListenAddress:
    """A ``HOST:PORT`` to bind; port 0 asks the OS for a free port (tests, demo)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


#: ``client_auth_type`` values of the exporter toolkit's web configuration that Python's ssl module can
#: honour: no client certificate, a certificate verified if given, a certificate required and verified.
CLIENT_AUTH_TYPES = ("NoClientCert", "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
#: ``min_version`` / ``max_version`` values, oldest first.
TLS_VERSIONS = ("TLS10", "TLS11", "TLS12", "TLS13")


@dataclass(frozen=True)
class ServerTlsConfig:
    """TLS of a listener, in the terms of the exporter toolkit's ``tls_server_config``.

    Paths are resolved; the loader has loaded each once. ``cipher_suites`` are Go's names, in the
    server's order of preference; ``curve_preferences`` holds at most one of Go's curve names.
    """

    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    client_allowed_sans: tuple[str, ...] = ()
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    cipher_suites: tuple[str, ...] = ()
    curve_preferences: tuple[str, ...] = ()
    prefer_server_cipher_suites: bool = True


@dataclass(frozen=True)
class WebSecurityConfig:
    """What ``--web.config.file`` sets for the metrics listener: TLS, response headers, basic auth users.

    ``basic_auth_users`` pairs each user name with its bcrypt hash; hashes never show in ``repr``.
    """

    tls: ServerTlsConfig | None = None
    headers: tuple[tuple[str, str], ...] = ()
    basic_auth_users: tuple[tuple[str, str], ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class WebConfig:
    """The metrics listener: ``/metrics``, ``/``, ``/-/healthy``, ``/-/ready``."""

    listen_address: ListenAddress
    # Connection limits (exporter/http/limits.py): a whole request (headers and body) within
    # request_timeout, an idle keep-alive connection closed after idle_timeout, at most max_connections open.
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = 64
    # From --web.config.file (not config.yaml): TLS, headers and basic auth of this listener.
    security: WebSecurityConfig = WebSecurityConfig()


@dataclass(frozen=True)
class WebhooksConfig:
    """The internet-facing webhook listener."""

    listen_address: ListenAddress
    max_body_bytes: int = 65536
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = 512
    # webhooks.tls: served over HTTPS (no client certificates: the providers present none).
    tls: ServerTlsConfig | None = None


@dataclass(frozen=True)
class StateConfig:
    """Where the durable SQLite state lives, and how long the webhook inbox keeps what was received."""

    path: str = "whitebit-exporter.db"
    # Raw deliveries (bodies and headers) are kept this long; their ids at least the dedupe window too.
    inbox_retention: float = 30 * 86400.0


@dataclass(frozen=True)
class PollConfig:
    """REST polling intervals in seconds."""

    main_balance: float = 30.0
    collateral: float = 30.0
    history: float = 60.0
    # Only polled while the account's WebSocket cannot supply the spot wallet.
    trade_balance: float = 30.0


@dataclass(frozen=True)
class WhitebitWebhookConfig:
    """The webhook key pair of one WhiteBIT account; several secrets allow rotation."""

    public_key: str
    secrets: tuple[str, ...] = field(repr=False)
    nonce_policy: str = "count"  # "count" | "strict"


@dataclass(frozen=True)
class WhitebitAccountConfig:
    """One WhiteBIT account (API key); ``name`` is the ``account`` label value."""

    name: str
    rest_url: str = "https://whitebit.com"
    ws_url: str = "wss://api.whitebit.com/ws"
    api_key: str | None = field(default=None, repr=False)
    api_secret: str | None = field(default=None, repr=False)
    markets: tuple[str, ...] = ()
    # None: export every asset once it held something; else exactly these (WhiteBIT may list hundreds).
    assets: tuple[str, ...] | None = None
    poll: PollConfig = PollConfig()
    # A webhook history shows as due is "overdue" after reconcile_grace, and counted missed only after
    # webhook_retry_window (WhiteBIT may still be retrying until then).
    reconcile_grace: float = 900.0
    webhook_retry_window: float = 86400.0
    webhook: WhitebitWebhookConfig | None = None
    # Sign REST calls with "nonceWindow": true (concurrent calls allowed; needs a clock within 5 s of
    # WhiteBIT's); false: strictly increasing nonces, one call of the key in flight at a time.
    nonce_window: bool = True

    @property
    def has_api(self) -> bool:
        """False for an account run on webhooks alone (no REST, no WebSocket)."""
        return self.api_key is not None


@dataclass(frozen=True)
class RestConfig:
    """The REST client settings shared by every account (rate limits belong to the IP)."""

    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    request_duration_buckets: tuple[float, ...] = DEFAULT_DURATION_BUCKETS
    # Overrides of WhiteBIT's documented limits, by endpoint family (the rest keep theirs).
    rate_limits: tuple[tuple[str, RateLimit], ...] = ()


#: The quote asset prices are exported in when ``prices.quote`` is not set.
DEFAULT_PRICE_QUOTE = "USDT"
#: The shortest ``prices.interval``: WhiteBIT caches the ticker for a second, so a faster poll reads the same data.
MIN_PRICE_INTERVAL = 1.0


@dataclass(frozen=True)
class PricesConfig:
    """Prices of the held assets in one quote asset, from WhiteBIT's public ticker (one request per ``interval``)."""

    enabled: bool = True
    quote: str = DEFAULT_PRICE_QUOTE
    interval: float = 60.0


#: The largest ``zerohash.webhook.timestamp_tolerance`` the loader accepts. The tolerance exists for clock
#: error between Zero Hash and us (minutes); late retries are accepted past it anyway (README, "Late
#: retries"), and the replay margin the dedupe retention gives shrinks by twice the tolerance.
MAX_ZEROHASH_TIMESTAMP_TOLERANCE = 86400.0


@dataclass(frozen=True)
class ZerohashWebhookConfig:
    """Zero Hash webhook verification and aggregation settings."""

    hmac_secrets: tuple[str, ...] = field(default=(), repr=False)
    #: Where the RSA public keys came from (for the log); the loader has read them into ``rsa_public_keys``.
    rsa_public_keys_file: str | None = None
    rsa_public_keys: tuple[RSAPublicKey, ...] = field(default=(), repr=False, compare=False)
    timestamp_tolerance: float = 300.0
    participants: tuple[str, ...] = ()
    #: Deliveries signed only the legacy body-only way: ``auto`` refuses them once a timestamped
    #: signature has verified (remembered in the state file), ``refuse`` always, ``accept`` never.
    legacy_signature: str = "auto"


@dataclass(frozen=True)
class ZerohashConfig:
    """The optional Zero Hash section."""

    webhook: ZerohashWebhookConfig


#: Providers whose verified deliveries a relay target may receive.
RELAY_PROVIDERS: tuple[str, ...] = ("whitebit", "zerohash")


@dataclass(frozen=True)
class RelayTlsConfig:
    """TLS towards a relay target: a CA file to verify it by (else the system's), and a client
    certificate and key to present (both or neither). Paths as resolved; each was loaded once."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class RelayTargetConfig:
    """One payment backend the verified deliveries are forwarded to.

    ``providers``, ``accounts`` and ``methods`` choose what goes there (None: every account or
    method); ``timeout`` bounds one attempt, ``retry_for`` how long a delivery is tried before it is
    a dead letter, ``max_backoff`` the longest wait between two attempts. ``headers`` are added to
    every request (their values may be secrets, so they never show in ``repr``).
    """

    name: str
    url: str
    providers: tuple[str, ...] = RELAY_PROVIDERS
    accounts: tuple[str, ...] | None = None
    methods: tuple[str, ...] | None = None
    timeout: float = 10.0
    retry_for: float = 7 * 86400.0
    max_backoff: float = 600.0
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    tls: RelayTlsConfig = RelayTlsConfig()


@dataclass(frozen=True)
class RelayConfig:
    """Where verified deliveries are forwarded (none by default)."""

    targets: tuple[RelayTargetConfig, ...] = ()


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    web: WebConfig
    webhooks: WebhooksConfig
    state: StateConfig
    whitebit: tuple[WhitebitAccountConfig, ...]
    zerohash: ZerohashConfig | None = None
    rest: RestConfig = RestConfig()
    relay: RelayConfig = RelayConfig()
    prices: PricesConfig = PricesConfig()
