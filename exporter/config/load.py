"""Loading the config: YAML, ``${ENV}`` references and ``*_file`` secrets into :mod:`~exporter.config.schema`.

Nothing reads YAML, environment variables or secret files after :func:`load_config` has returned.
It checks the whole file and raises one :class:`ConfigError` listing every problem with its location
(``whitebit[0].poll.history: invalid duration "5x" ...``), so the exporter never starts
half-configured.

The loader walks the parsed YAML section by section and records every problem it finds, with its
location, instead of stopping at the first: a user fixing a config wants the whole list at once.
A field helper returns ``None`` for an absent key and also for an invalid one (having recorded the
problem), so later cross-checks skip values that are already reported instead of piling on.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import ipaddress
import math
import os
import re
import ssl
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import yaml
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.config.schema import (
    CLIENT_AUTH_TYPES,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_WEBHOOKS_ADDRESS,
    DOCUMENTED_LIMITS,
    FAMILIES,
    MAX_LISTENER_CONNECTIONS,
    MAX_ZEROHASH_TIMESTAMP_TOLERANCE,
    MIN_PRICE_INTERVAL,
    NONCE_POLICIES,
    RELAY_PROVIDERS,
    RESERVED_ACCOUNT_NAME,
    TLS_VERSIONS,
    Config,
    ListenAddress,
    PollConfig,
    PricesConfig,
    RateLimit,
    RelayConfig,
    RelayTargetConfig,
    RelayTlsConfig,
    RestConfig,
    ServerTlsConfig,
    StateConfig,
    WebConfig,
    WebhooksConfig,
    WebSecurityConfig,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
    ZerohashConfig,
    ZerohashWebhookConfig,
)
from exporter.config.tls import (
    GO_CURVES,
    EncryptedKeyError,
    TlsSetupError,
    refuse_passphrase,
    server_context,
    tls_version,
)

_TOP_KEYS = ("web", "webhooks", "state", "rest", "whitebit", "zerohash", "relay", "prices")
_RELAY_KEYS = ("targets",)
_RELAY_TARGET_KEYS = (
    "name",
    "url",
    "providers",
    "accounts",
    "methods",
    "timeout",
    "retry_for",
    "max_backoff",
    "headers",
    "header_files",
    "tls",
)
_RELAY_TLS_KEYS = ("ca_file", "cert_file", "key_file")
#: A header field name (RFC 9110 section 5.1: a token).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
#: Headers the relay writes itself (the body's framing, the delivery id, and each provider's signature
#: headers, forwarded as received): a target's own headers must not replace them.
_RELAY_OWN_HEADERS = (
    "host",
    "content-type",
    "content-length",
    "transfer-encoding",
    "connection",
    "x-whitebit-exporter-delivery-id",
)
_RELAY_OWN_PREFIXES = ("x-txc-", "x-zh-hook-")
_LISTENER_LIMIT_KEYS = ("request_timeout", "idle_timeout", "max_connections")
_WEB_KEYS = ("listen_address", *_LISTENER_LIMIT_KEYS)
_WEBHOOKS_KEYS = ("listen_address", "max_body_bytes", *_LISTENER_LIMIT_KEYS, "tls")
# The exporter toolkit's web configuration file (--web.config.file) and its sections.
_WEB_CONFIG_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "curve_preferences",
    "prefer_server_cipher_suites",
    "cert",
    "key",
    "client_ca",
)
_TLS_CLIENT_KEYS = ("client_auth_type", "client_ca_file", "client_allowed_sans")
_TLS_INLINE_KEYS = {"cert": "cert_file", "key": "key_file", "client_ca": "client_ca_file"}
#: client_auth_type values of the toolkit that Python's ssl module cannot honour: it verifies every
#: client certificate it asks for. (RequireClientCert is the toolkit's old name of RequireAnyClientCert.)
_UNVERIFIED_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")
_HTTP_SERVER_KEYS = ("http2", "headers")
#: The response headers the toolkit lets a web configuration set, with the values it accepts (None: any).
WEB_CONFIG_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}
#: A bcrypt hash: version, cost, 22 characters of salt and 31 of hash in bcrypt's base64 alphabet.
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(\d\d)\$([./A-Za-z0-9]{22})[./A-Za-z0-9]{31}")
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
BCRYPT_HINT = """make one with: htpasswd -nBC 10 "" | tr -d ':\\n'"""
_STATE_KEYS = ("path", "inbox_retention")
_ACCOUNT_KEYS = (
    "name",
    "rest_url",
    "ws_url",
    "api_key",
    "api_key_file",
    "api_secret",
    "api_secret_file",
    "markets",
    "assets",
    "poll",
    "reconcile_grace",
    "webhook_retry_window",
    "webhook",
    "nonce_window",
)
#: A quantity the loader parses: seconds or bytes.
N = TypeVar("N", int, float)

# Every field of PollConfig is a poll interval: a new poll needs no change here.
_POLL_KEYS = tuple(poll.name for poll in dataclasses.fields(PollConfig))
_REST_KEYS = ("timeout", "max_retries", "request_duration_buckets", "rate_limits")
_RATE_LIMIT_KEYS = ("limit", "window")
_PRICES_KEYS = ("enabled", "quote", "interval")
MAX_RETRIES_LIMIT = 20
_WHITEBIT_WEBHOOK_KEYS = ("public_key", "public_key_file", "secrets", "secrets_file", "nonce_policy")
_ZEROHASH_KEYS = ("webhook",)
_ZEROHASH_WEBHOOK_KEYS = (
    "hmac_secrets",
    "hmac_secrets_file",
    "rsa_public_keys_file",
    "timestamp_tolerance",
    "participants",
    "legacy_signature",
)
#: The values of ``zerohash.webhook.legacy_signature``.
LEGACY_SIGNATURE_POLICIES = ("auto", "refuse", "accept")


_ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_ASSET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_MARKET = re.compile(r"[A-Z0-9]+(?:_[A-Z0-9]+)+")
# One side of a market name: the form of a quote asset WhiteBIT's ticker can name.
_QUOTE = re.compile(r"[A-Z0-9]+")
_HOST = re.compile(r"[A-Za-z0-9_.-]+")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# "$${" is an escaped literal "${"; "${NAME}" a reference; "${" without "}" is unterminated.
_ENV_REFERENCE = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
# Largest first: parse_duration requires the units of "1h30m" in this order, each at most once.
_DURATION_UNITS = {
    "d": Decimal(86400),
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_DURATION_ORDER = tuple(_DURATION_UNITS)
_DURATION_HINT = "use forms like 30s, 10m, 1h"
_BYTE_SIZE = re.compile(r"(\d+)(B|KiB|MiB)?")
_BYTE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.*?-----END \1-----", re.DOTALL)
_WILDCARD_HOSTS = ("0.0.0.0", "::")


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config file: where (``whitebit[0].poll.history``) and what."""

    location: str
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class ConfigError(Exception):
    """The config cannot be used; ``problems`` lists everything wrong with it, section by section."""

    def __init__(self, problems: Iterable[ConfigProblem]) -> None:
        self.problems: list[ConfigProblem] = list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


def parse_listen_address(text: str) -> ListenAddress:
    """Parse ``HOST:PORT``, ``:PORT`` (all IPv4 interfaces) or ``[IPV6]:PORT``; ValueError if invalid."""
    usage = f'invalid listen address "{text}" (use HOST:PORT, :PORT or [IPV6]:PORT)'
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(usage)
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(usage) from None
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(usage)
        host = host or "0.0.0.0"
        if not _HOST.fullmatch(host):
            # Also catches an IPv6 address without brackets: its colons make the port ambiguous.
            raise ValueError(usage)
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(usage)
    port = int(port_text)
    if port > 65535:
        raise ValueError(f'invalid listen address "{text}": the port must be 0-65535')
    return ListenAddress(host=host, port=port)


def parse_duration(value: str | float) -> float:
    """Seconds from ``500ms``, ``30s``, ``10m``, ``1h``, ``1h30m``, ``2d`` or a bare number of seconds.

    Units go from largest to smallest, each at most once. Raises ValueError for anything else,
    including negative durations and booleans (YAML's ``yes`` is not a duration).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} ({_DURATION_HINT})")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"invalid duration {value} ({_DURATION_HINT})")
        if value < 0:
            raise ValueError(f"negative duration {value}")
        return float(value)
    text = value.removeprefix("-")
    total = Decimal(0)
    position = 0
    previous = -1
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        rank = _DURATION_ORDER.index(match.group(2)) if match else -1
        if match is None or rank <= previous:
            raise ValueError(f'invalid duration "{value}" ({_DURATION_HINT})')
        total += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        previous = rank
        position = match.end()
    if not text:
        raise ValueError(f'invalid duration "{value}" ({_DURATION_HINT})')
    if value.startswith("-"):
        raise ValueError(f'negative duration "{value}"')
    return float(total)


def parse_byte_size(value: str | int) -> int:
    """Bytes from an integer or a string like ``65536``, ``64KiB``, ``1MiB``; raise ValueError if invalid."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r} (use a number of bytes or forms like 64KiB, 1MiB)")
    if isinstance(value, int):
        return value
    match = _BYTE_SIZE.fullmatch(value)
    if match is None:
        raise ValueError(f'invalid size "{value}" (use a number of bytes or forms like 64KiB, 1MiB)')
    return int(match.group(1)) * _BYTE_UNITS[match.group(2)]


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and return the config at ``path``, or raise :class:`ConfigError` listing every problem.

    ``${NAME}`` in any string value is replaced from ``env`` (default ``os.environ``); ``$${`` is a
    literal ``${``. Relative ``*_file`` paths resolve against the config file's directory; a relative
    ``state.path`` resolves against the current directory when the state store opens it.
    """
    source = os.fspath(path)
    document = _read_document(source, "config file")
    loader = _Loader(source, os.path.dirname(os.path.abspath(source)), os.environ if env is None else env)
    config = loader.config(document)
    if loader.problems:
        raise ConfigError(loader.problems)
    return config


def load_web_config(path: str | os.PathLike[str]) -> WebSecurityConfig:
    """Read and validate the exporter toolkit's web configuration file at ``path`` (``--web.config.file``).

    Raises :class:`ConfigError` listing every problem. Relative paths resolve against the file's directory,
    as the toolkit does; unlike ``config.yaml`` the file takes no ``${ENV}`` references (the toolkit's
    format has none, and a bcrypt hash is full of ``$``). The certificate, key and client CA files are
    loaded once here, so a file that does not load is reported before anything starts.
    """
    source = os.fspath(path)
    document = _read_document(source, "web config file")
    loader = _Loader(source, os.path.dirname(os.path.abspath(source)), {}, expand_env=False)
    web = loader.web_security(document)
    if loader.problems:
        raise ConfigError(loader.problems)
    return web


def _read_document(source: str, what: str) -> dict[Any, Any]:
    """The YAML mapping in the file at ``source`` (empty for an empty file); raises ConfigError."""
    try:
        with open(source, "rb") as handle:
            raw = handle.read()
    except OSError as error:
        raise ConfigError([ConfigProblem(source, f"cannot read the {what}: {error.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError([ConfigProblem(source, f"not UTF-8 text (line {line})")]) from None
    document = _parse_yaml(text, source)
    if document is None:
        document = {}
    if not isinstance(document, dict):
        problem = ConfigProblem(source, f"expected a mapping at the top level, got {_kind(document)}")
        raise ConfigError([problem])
    return document


class _YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that notes duplicate mapping keys (plain PyYAML keeps the last one silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[yaml.Mark, Any]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            # A "<<" merge may be overridden by an explicit key; only compare plain scalar keys.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                self.duplicates.append((key_node.start_mark, key))
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep=deep)
        return mapping


def _parse_yaml(text: str, source: str) -> Any:
    """The single YAML document in ``text``; raises ConfigError for bad YAML or duplicate keys."""
    loader = _YamlLoader(text)
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        raise ConfigError([_yaml_problem(source, error)]) from None
    except yaml.YAMLError as error:
        raise ConfigError([ConfigProblem(source, f"invalid YAML: {error}")]) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(
            ConfigProblem(f"{source}:{mark.line + 1}:{mark.column + 1}", f'duplicate key "{key}"')
            for mark, key in loader.duplicates
        )
    return document


def _yaml_problem(source: str, error: yaml.MarkedYAMLError) -> ConfigProblem:
    mark = error.problem_mark or error.context_mark
    location = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
    message = f"invalid YAML: {error.problem or error.context}"
    if error.problem and error.context and error.context_mark is not None:
        message += f" ({error.context} at line {error.context_mark.line + 1})"
    return ConfigProblem(location, message)


def bcrypt_hash_problem(hashed: str) -> str | None:
    """What is wrong with ``hashed`` as a bcrypt hash the ``bcrypt`` package can check, or None."""
    match = _BCRYPT_HASH.fullmatch(hashed)
    if match is None:
        if hashed.startswith(("$2x$", "$2$")):
            return f"this bcrypt variant is not supported (make the hash again; {BCRYPT_HINT})"
        return f"not a bcrypt hash ({BCRYPT_HINT})"
    cost = int(match.group(1))
    if not 4 <= cost <= 31:
        return f"bcrypt cost must be from 04 to 31, got {match.group(1)}"
    # 22 characters of bcrypt's base64 carry the 128-bit salt; the last one's low 4 bits must be 0.
    if _BCRYPT_ALPHABET.index(match.group(2)[-1]) % 16:
        return f"not a valid bcrypt hash: its salt is malformed ({BCRYPT_HINT})"
    return None


def _kind(value: object) -> str:
    """How a YAML value reads to a user: "a string", "a list", …"""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return "a date"
    return f"a {type(value).__name__}"


def _at(location: str, key: str | int) -> str:
    return f"{location}[{key}]" if isinstance(key, int) else f"{location}.{key}" if location else key


def _reason(error: OSError | ssl.SSLError) -> str:
    """What went wrong loading a TLS file, in a few words."""
    if isinstance(error, ssl.SSLError):
        return str(error.reason or error)
    return str(error.strerror or error)


def _present(mapping: Mapping[str, Any], key: str) -> bool:
    """A key counts as given when it is there and not null (``null`` means "use the default")."""
    return mapping.get(key) is not None


class _Loader:
    """Turns the parsed YAML into :class:`Config`, collecting problems in ``problems``."""

    def __init__(self, source: str, base_dir: str, env: Mapping[str, str], *, expand_env: bool = True) -> None:
        self.source = source
        self.base_dir = base_dir
        self.env = env
        self.expand_env = expand_env
        self.problems: list[ConfigProblem] = []

    def problem(self, location: str, message: str) -> None:
        self.problems.append(ConfigProblem(location, message))

    # --- sections --------------------------------------------------------------------------------

    def config(self, document: dict[Any, Any]) -> Config:
        top = self.mapping(document, "", _TOP_KEYS) or {}
        web = self.mapping(top.get("web"), "web", _WEB_KEYS) or {}
        web_address = self.listen_address(web, "web", DEFAULT_METRICS_ADDRESS)
        webhooks = self.mapping(top.get("webhooks"), "webhooks", _WEBHOOKS_KEYS) or {}
        webhooks_address = self.listen_address(webhooks, "webhooks", DEFAULT_WEBHOOKS_ADDRESS)
        if web_address is not None and webhooks_address is not None:
            self.check_listeners_apart(web_address, webhooks_address)
        max_body = self.byte_size(webhooks, "max_body_bytes", "webhooks")
        webhooks_tls = self.server_tls(webhooks.get("tls"), "webhooks.tls", client_certificates=False)
        web_limits = self.listener_limits(web, "web", WebConfig.max_connections)
        webhooks_limits = self.listener_limits(webhooks, "webhooks", WebhooksConfig.max_connections)
        state = self.mapping(top.get("state"), "state", _STATE_KEYS) or {}
        state_path = self.string_field(state, "path", "state")
        inbox_retention = self.duration(state, "inbox_retention", "state")
        rest = self.rest(top.get("rest"))
        accounts = self.accounts(top.get("whitebit"))
        zerohash = self.zerohash(top["zerohash"]) if _present(top, "zerohash") else None
        relay = self.relay(top.get("relay"), accounts)
        prices = self.prices(top.get("prices"))
        if not _present(top, "zerohash") and top.get("whitebit") in (None, []):
            self.problem(self.source, "nothing to monitor (configure a whitebit account or the zerohash section)")
        return Config(
            web=WebConfig(listen_address=web_address or parse_listen_address(DEFAULT_METRICS_ADDRESS), **web_limits),
            webhooks=WebhooksConfig(
                listen_address=webhooks_address or parse_listen_address(DEFAULT_WEBHOOKS_ADDRESS),
                max_body_bytes=max_body or WebhooksConfig.max_body_bytes,
                **webhooks_limits,
                tls=webhooks_tls,
            ),
            state=StateConfig(
                path=state_path or StateConfig.path,
                inbox_retention=StateConfig.inbox_retention if inbox_retention is None else inbox_retention,
            ),
            whitebit=accounts,
            zerohash=zerohash,
            rest=rest,
            relay=relay,
            prices=prices,
        )

    def web_security(self, document: dict[Any, Any]) -> WebSecurityConfig:
        """The web configuration file: ``tls_server_config``, ``http_server_config``, ``basic_auth_users``."""
        top = self.mapping(document, "", _WEB_CONFIG_KEYS) or {}
        if "rate_limit" in top:
            self.problem(
                "rate_limit",
                "not supported (the listener's web.max_connections and web.request_timeout bound its clients)",
            )
        tls = self.server_tls(top.get("tls_server_config"), "tls_server_config", client_certificates=True)
        headers = self.http_server(top.get("http_server_config"))
        users = self.basic_auth_users(top.get("basic_auth_users"))
        return WebSecurityConfig(tls=tls, headers=headers, basic_auth_users=users)

    def server_tls(self, node: Any, location: str, *, client_certificates: bool) -> ServerTlsConfig | None:
        """A ``tls_server_config`` section (or ``webhooks.tls``); None when absent or invalid (reported).

        Every setting is either honoured or refused with its reason, never ignored (exporter/config/tls.py).
        """
        fields = self.mapping(node, location, _TLS_KEYS)
        if not fields:
            return None
        before = len(self.problems)
        for key, file_key in _TLS_INLINE_KEYS.items():
            if key in fields:
                self.problem(_at(location, key), f"inline PEM is not supported (give {file_key})")
        if not client_certificates:
            for key in _TLS_CLIENT_KEYS:
                if key in fields:
                    self.problem(
                        _at(location, key),
                        "not for the webhook listener: WhiteBIT and Zero Hash present no client certificate",
                    )
            fields = {key: value for key, value in fields.items() if key not in _TLS_CLIENT_KEYS}
        cert_file = self.string_field(fields, "cert_file", location, required=True)
        key_file = self.string_field(fields, "key_file", location, required=True)
        client_ca_file = self.string_field(fields, "client_ca_file", location)
        client_auth = self.client_auth_type(fields, location, client_ca_file is not None)
        sans = self.string_list(fields, "client_allowed_sans", location)
        if sans is not None and client_auth != "RequireAndVerifyClientCert":
            self.problem(
                _at(location, "client_allowed_sans"),
                "needs client_auth_type RequireAndVerifyClientCert (a client may otherwise send no certificate)",
            )
        if sans == ():
            self.problem(_at(location, "client_allowed_sans"), "must list at least one SAN (leave it out for any)")
        versions = [self.tls_version_field(fields, key, location) for key in ("min_version", "max_version")]
        low = versions[0] or ServerTlsConfig.min_version
        high = versions[1] or ServerTlsConfig.max_version
        if tls_version(low) > tls_version(high):
            self.problem(_at(location, "min_version"), f"{low} is above max_version {high}")
        suites = self.string_list(fields, "cipher_suites", location) or ()
        curves = self.string_list(fields, "curve_preferences", location) or ()
        for index, curve in enumerate(curves):
            if curve not in GO_CURVES:
                self.problem(
                    f"{location}.curve_preferences[{index}]",
                    f'unknown curve "{curve}" (use {", ".join(GO_CURVES)})',
                )
        if len(curves) > 1:
            self.problem(
                _at(location, "curve_preferences"),
                "Python's ssl module sets one curve, not an order of preference: list one",
            )
        prefer = self.boolean(fields, "prefer_server_cipher_suites", location)
        if len(self.problems) > before or cert_file is None or key_file is None or client_auth is None:
            return None
        tls = ServerTlsConfig(
            cert_file=self.resolve(cert_file),
            key_file=self.resolve(key_file),
            client_auth_type=client_auth,
            client_ca_file=None if client_ca_file is None else self.resolve(client_ca_file),
            client_allowed_sans=sans or (),
            min_version=low,
            max_version=high,
            cipher_suites=suites,
            curve_preferences=curves,
            prefer_server_cipher_suites=ServerTlsConfig.prefer_server_cipher_suites if prefer is None else prefer,
        )
        try:
            server_context(tls)
        except TlsSetupError as error:
            self.problem(_at(location, error.key), error.message)
            return None
        return tls

    def client_auth_type(self, fields: Mapping[str, Any], location: str, has_ca: bool) -> str | None:
        """``client_auth_type`` (default NoClientCert), checked against ``client_ca_file``; None if invalid."""
        where = _at(location, "client_auth_type")
        given = self.string(fields["client_auth_type"], where) if _present(fields, "client_auth_type") else ""
        if given is None:
            return None
        value = given or "NoClientCert"
        if value in _UNVERIFIED_CLIENT_AUTH:
            self.problem(
                where,
                f"{value} is not supported: Python's ssl module verifies every client certificate it asks for"
                " (use VerifyClientCertIfGiven or RequireAndVerifyClientCert, with client_ca_file)",
            )
            return None
        if value not in CLIENT_AUTH_TYPES:
            self.problem(where, f'invalid value "{value}" (use {", ".join(CLIENT_AUTH_TYPES)})')
            return None
        if value == "NoClientCert" and has_ca:
            self.problem(where, "client_ca_file is set but client_auth_type asks for no client certificate")
            return None
        if value != "NoClientCert" and not has_ca:
            self.problem(where, f"{value} needs client_ca_file (the CAs a client certificate must chain to)")
            return None
        return value

    def tls_version_field(self, fields: Mapping[str, Any], key: str, location: str) -> str | None:
        value = self.string_field(fields, key, location)
        if value is not None and value not in TLS_VERSIONS:
            self.problem(_at(location, key), f'unknown TLS version "{value}" (use {", ".join(TLS_VERSIONS)})')
            return None
        return value

    def http_server(self, node: Any) -> tuple[tuple[str, str], ...]:
        """``http_server_config``: ``http2`` (only false: the listener serves HTTP/1.1) and ``headers``."""
        location = "http_server_config"
        fields = self.mapping(node, location, _HTTP_SERVER_KEYS) or {}
        if self.boolean(fields, "http2", location):
            self.problem(
                _at(location, "http2"), "HTTP/2 is not supported (the listener serves HTTP/1.1): set it to false"
            )
        if not _present(fields, "headers"):
            return ()
        where = _at(location, "headers")
        node_headers = fields["headers"]
        if not isinstance(node_headers, dict):
            self.problem(where, f"expected a mapping of header names to values, got {_kind(node_headers)}")
            return ()
        headers: list[tuple[str, str]] = []
        for name, raw in node_headers.items():
            spot = _at(where, str(name))
            if name not in WEB_CONFIG_HEADERS:
                self.problem(spot, f"cannot be configured (use {', '.join(WEB_CONFIG_HEADERS)})")
                continue
            value = self.string(raw, spot) if raw is not None else ""
            if value is None or value == "":
                continue  # the toolkit leaves a blank header unset
            allowed = WEB_CONFIG_HEADERS[name]
            if allowed is not None and value not in allowed:
                self.problem(spot, f'invalid value "{value}" (use {" or ".join(allowed)})')
            elif any(ch in value for ch in "\r\n\x00") or not value.isprintable():
                self.problem(spot, "must be a header value (printable, one line)")
            else:
                headers.append((name, value))
        return tuple(headers)

    def basic_auth_users(self, node: Any) -> tuple[tuple[str, str], ...]:
        """``basic_auth_users``: user name -> bcrypt hash. A hash is never repeated in a message."""
        location = "basic_auth_users"
        if node is None:
            return ()
        if not isinstance(node, dict):
            self.problem(location, f"expected a mapping of user names to bcrypt hashes, got {_kind(node)}")
            return ()
        users: list[tuple[str, str]] = []
        for user, hashed in node.items():
            where = _at(location, str(user))
            if not isinstance(user, str) or user == "":
                self.problem(where, "a user name must be a non-empty string")
                continue
            if ":" in user:
                self.problem(where, 'a user name cannot contain ":" (basic auth splits user and password there)')
                continue
            if not isinstance(hashed, str):
                self.problem(where, f"expected a bcrypt hash, got {_kind(hashed)}")
                continue
            problem = bcrypt_hash_problem(hashed)
            if problem is not None:
                self.problem(where, problem)
                continue
            users.append((user, hashed))
        return tuple(users)

    def rest(self, node: Any) -> RestConfig:
        fields = self.mapping(node, "rest", _REST_KEYS) or {}
        timeout = self.duration(fields, "timeout", "rest")
        retries = self.integer(fields, "max_retries", "rest", minimum=0, maximum=MAX_RETRIES_LIMIT)
        buckets = self.buckets(fields, "request_duration_buckets", "rest")
        limits = self.rate_limits(fields.get("rate_limits"), "rest.rate_limits")
        return RestConfig(
            timeout=RestConfig.timeout if timeout is None else timeout,
            max_retries=RestConfig.max_retries if retries is None else retries,
            request_duration_buckets=RestConfig.request_duration_buckets if buckets is None else buckets,
            rate_limits=limits,
        )

    def prices(self, node: Any) -> PricesConfig:
        fields = self.mapping(node, "prices", _PRICES_KEYS) or {}
        enabled = self.boolean(fields, "enabled", "prices")
        quote = self.string_field(fields, "quote", "prices")
        if quote is not None and not _QUOTE.fullmatch(quote):
            self.problem(
                "prices.quote",
                f'invalid asset "{quote}" (use the ticker as WhiteBIT names it in markets, e.g. USDT)',
            )
            quote = None
        interval = self.duration(fields, "interval", "prices")
        if interval is not None and interval < MIN_PRICE_INTERVAL:
            self.problem(
                "prices.interval",
                f"must be at least {MIN_PRICE_INTERVAL:g}s (WhiteBIT caches the ticker for a second),"
                f" got {interval:g} s",
            )
            interval = None
        return PricesConfig(
            enabled=PricesConfig.enabled if enabled is None else enabled,
            quote=quote or PricesConfig.quote,
            interval=PricesConfig.interval if interval is None else interval,
        )

    def rate_limits(self, node: Any, location: str) -> tuple[tuple[str, RateLimit], ...]:
        families = self.mapping(node, location, FAMILIES) or {}
        overrides: list[tuple[str, RateLimit]] = []
        for family, node_of_family in families.items():
            where = _at(location, family)
            entry = self.mapping(node_of_family, where, _RATE_LIMIT_KEYS)
            if entry is None:
                continue
            documented = DOCUMENTED_LIMITS[family]
            limit = self.integer(entry, "limit", where, minimum=1, maximum=1_000_000)
            window = self.duration(entry, "window", where)
            if (limit is None and _present(entry, "limit")) or (window is None and _present(entry, "window")):
                continue
            overrides.append(
                (
                    family,
                    RateLimit(
                        documented.limit if limit is None else limit,
                        documented.window if window is None else window,
                    ),
                )
            )
        return tuple(overrides)

    def listener_limits(self, fields: Mapping[str, Any], location: str, default_cap: int) -> dict[str, Any]:
        """A listener's connection limits (the keys of ``_LISTENER_LIMIT_KEYS``), defaults for the absent ones."""
        request_timeout = self.duration(fields, "request_timeout", location)
        idle_timeout = self.duration(fields, "idle_timeout", location)
        cap = self.integer(fields, "max_connections", location, minimum=1, maximum=MAX_LISTENER_CONNECTIONS)
        return {
            "request_timeout": DEFAULT_REQUEST_TIMEOUT if request_timeout is None else request_timeout,
            "idle_timeout": DEFAULT_IDLE_TIMEOUT if idle_timeout is None else idle_timeout,
            "max_connections": default_cap if cap is None else cap,
        }

    def check_listeners_apart(self, web: ListenAddress, webhooks: ListenAddress) -> None:
        overlap = web.host == webhooks.host or web.host in _WILDCARD_HOSTS or webhooks.host in _WILDCARD_HOSTS
        if web.port != 0 and web.port == webhooks.port and overlap:
            self.problem(
                "webhooks.listen_address",
                f'"{webhooks}" collides with web.listen_address "{web}" (the two listeners need different ports)',
            )

    def accounts(self, node: Any) -> tuple[WhitebitAccountConfig, ...]:
        if node is None:
            return ()
        if not isinstance(node, list):
            self.problem("whitebit", f"expected a list of accounts, got {_kind(node)}")
            return ()
        accounts = tuple(self.account(item, _at("whitebit", index)) for index, item in enumerate(node))
        first_by_name: dict[str, int] = {}
        first_by_key: dict[str, int] = {}
        for index, account in enumerate(accounts):
            # Fields that failed validation came back empty and were reported already: skip them.
            if account.name in first_by_name:
                self.problem(
                    f"whitebit[{index}].name",
                    f'duplicate account name "{account.name}" (also whitebit[{first_by_name[account.name]}])',
                )
            elif account.name:
                first_by_name[account.name] = index
            key = account.webhook.public_key if account.webhook is not None else ""
            if key in first_by_key:
                self.problem(
                    f"whitebit[{index}].webhook.public_key",
                    f"same public key as whitebit[{first_by_key[key]}] (the receiver finds the account by its key)",
                )
            elif key:
                first_by_key[key] = index
        return accounts

    def account(self, node: Any, location: str) -> WhitebitAccountConfig:
        """One account; fields that fail validation come back empty (their problem is recorded)."""
        if not isinstance(node, dict):
            self.problem(location, f"expected a mapping, got {_kind(node)}")
            return WhitebitAccountConfig(name="")
        fields = self.mapping(node, location, _ACCOUNT_KEYS) or {}
        name = self.account_name(fields, location)
        rest_url = self.url(fields, "rest_url", location, ("http", "https"))
        ws_url = self.url(fields, "ws_url", location, ("ws", "wss"))
        api_key = self.secret(fields, "api_key", location)
        api_secret = self.secret(fields, "api_secret", location)
        has_key = _present(fields, "api_key") or _present(fields, "api_key_file")
        has_secret = _present(fields, "api_secret") or _present(fields, "api_secret_file")
        if has_key != has_secret:
            given, missing = ("api_key", "api_secret") if has_key else ("api_secret", "api_key")
            self.problem(
                location, f"{given} is set without {missing} (set both, or neither for a webhook-only account)"
            )
        markets = self.markets(fields, location)
        assets = self.assets(fields, location)
        poll_location = _at(location, "poll")
        poll_fields = self.mapping(fields.get("poll"), poll_location, _POLL_KEYS) or {}
        intervals = {key: self.duration(poll_fields, key, poll_location) for key in _POLL_KEYS}
        grace = self.duration(fields, "reconcile_grace", location)
        retry_window = self.duration(fields, "webhook_retry_window", location)
        effective_grace = WhitebitAccountConfig.reconcile_grace if grace is None else grace
        effective_window = WhitebitAccountConfig.webhook_retry_window if retry_window is None else retry_window
        if (grace is not None or retry_window is not None) and effective_window < effective_grace:
            self.problem(
                _at(location, "webhook_retry_window"),
                f"must be at least reconcile_grace ({effective_grace:g} s): a webhook is overdue after the"
                f" grace and missed after the retry window, got {effective_window:g} s",
            )
        nonce_window = self.boolean(fields, "nonce_window", location)
        webhook = None
        if _present(fields, "webhook"):
            webhook = self.whitebit_webhook(fields["webhook"], _at(location, "webhook"))
        elif not has_key and not has_secret:
            self.problem(location, "nothing to monitor (give api_key and api_secret, or webhook, or both)")
        return WhitebitAccountConfig(
            name=name or "",
            rest_url=rest_url or WhitebitAccountConfig.rest_url,
            ws_url=ws_url or WhitebitAccountConfig.ws_url,
            api_key=api_key,
            api_secret=api_secret,
            markets=markets,
            assets=assets,
            poll=PollConfig(**{key: value for key, value in intervals.items() if value is not None}),
            reconcile_grace=effective_grace,
            webhook_retry_window=effective_window,
            webhook=webhook,
            nonce_window=WhitebitAccountConfig.nonce_window if nonce_window is None else nonce_window,
        )

    def account_name(self, fields: Mapping[str, Any], location: str) -> str | None:
        name = self.string_field(fields, "name", location, required=True)
        where = _at(location, "name")
        if name is None:
            return None
        if not _ACCOUNT_NAME.fullmatch(name):
            self.problem(where, f'invalid account name "{name}" (use letters, digits, "_", "." and "-")')
            return None
        if name == RESERVED_ACCOUNT_NAME:
            self.problem(where, f'"{name}" is reserved (it labels deliveries for no configured account)')
            return None
        return name

    def markets(self, fields: Mapping[str, Any], location: str) -> tuple[str, ...]:
        markets = self.string_list(fields, "markets", location) or ()
        self.unique_names(markets, f"{location}.markets", "market", _MARKET, "use the form BTC_USDT")
        return markets

    def assets(self, fields: Mapping[str, Any], location: str) -> tuple[str, ...] | None:
        """The account's asset allow-list, or None (export every asset once it held something)."""
        if not _present(fields, "assets"):
            return None
        assets = self.string_list(fields, "assets", location)
        if assets is None:
            return None
        if not assets:
            self.problem(
                _at(location, "assets"),
                "must list at least one asset (leave it out to export every asset once it holds something)",
            )
            return None
        self.unique_names(assets, f"{location}.assets", "asset", _ASSET, "use the ticker, e.g. USDT")
        return assets

    def unique_names(self, names: Iterable[str], location: str, what: str, form: re.Pattern[str], hint: str) -> None:
        """Report each of ``names`` (at ``location[index]``) that is empty, not of ``form``, or a repeat."""
        seen: set[str] = set()
        for index, name in enumerate(names):
            where = f"{location}[{index}]"
            if name == "":
                self.problem(where, "must not be empty")
            elif not form.fullmatch(name):
                self.problem(where, f'invalid {what} "{name}" ({hint})')
            elif name in seen:
                self.problem(where, f'duplicate {what} "{name}"')
            seen.add(name)

    def whitebit_webhook(self, node: Any, location: str) -> WhitebitWebhookConfig | None:
        fields = self.mapping(node, location, _WHITEBIT_WEBHOOK_KEYS)
        if fields is None:
            return None
        public_key = self.secret(fields, "public_key", location, required=True)
        secrets = self.secret_list(fields, "secrets", location, required=True)
        if secrets == ():
            self.problem(_at(location, "secrets"), "must list at least one secret")
        policy = self.string_field(fields, "nonce_policy", location)
        if policy is not None and policy not in NONCE_POLICIES:
            self.problem(_at(location, "nonce_policy"), f'invalid value "{policy}" (use count or strict)')
            policy = None
        return WhitebitWebhookConfig(
            public_key=public_key or "",
            secrets=secrets or (),
            nonce_policy=policy or WhitebitWebhookConfig.nonce_policy,
        )

    def zerohash(self, node: Any) -> ZerohashConfig | None:
        location = "zerohash.webhook"
        fields = self.mapping(node, "zerohash", _ZEROHASH_KEYS)
        if fields is None:
            return None
        webhook = self.mapping(fields.get("webhook"), location, _ZEROHASH_WEBHOOK_KEYS)
        if webhook is None:
            return None
        hmac_secrets = self.secret_list(webhook, "hmac_secrets", location)
        rsa_keys = self.rsa_public_keys(webhook, location)
        tolerance = self.duration(webhook, "timestamp_tolerance", location)
        if tolerance is not None and tolerance > MAX_ZEROHASH_TIMESTAMP_TOLERANCE:
            self.problem(
                _at(location, "timestamp_tolerance"),
                f"must be at most 1d = 86400 s (late retries are accepted past it anyway), got {tolerance:g} s",
            )
        participants = self.string_list(webhook, "participants", location) or ()
        legacy_signature = self.string_field(webhook, "legacy_signature", location)
        if legacy_signature is not None and legacy_signature not in LEGACY_SIGNATURE_POLICIES:
            self.problem(
                _at(location, "legacy_signature"), f'invalid value "{legacy_signature}" (use auto, refuse or accept)'
            )
        seen: set[str] = set()
        for index, participant in enumerate(participants):
            where = f"{location}.participants[{index}]"
            if participant == "":
                self.problem(where, "must not be empty")
            elif participant in seen:
                self.problem(where, f'duplicate participant "{participant}"')
            seen.add(participant)
        # A given but invalid source was reported already; don't also call it missing.
        hmac_named = _present(webhook, "hmac_secrets") or _present(webhook, "hmac_secrets_file")
        hmac_given = bool(hmac_secrets) or (hmac_secrets is None and hmac_named)
        if not hmac_given and not _present(webhook, "rsa_public_keys_file"):
            self.problem(
                location,
                "no way to verify deliveries (give hmac_secrets, hmac_secrets_file or rsa_public_keys_file)",
            )
        return ZerohashConfig(
            webhook=ZerohashWebhookConfig(
                hmac_secrets=hmac_secrets or (),
                rsa_public_keys_file=None if rsa_keys is None else rsa_keys[0],
                rsa_public_keys=() if rsa_keys is None else rsa_keys[1],
                timestamp_tolerance=(ZerohashWebhookConfig.timestamp_tolerance if tolerance is None else tolerance),
                participants=participants,
                legacy_signature=legacy_signature or ZerohashWebhookConfig.legacy_signature,
            )
        )

    def relay(self, node: Any, accounts: tuple[WhitebitAccountConfig, ...]) -> RelayConfig:
        fields = self.mapping(node, "relay", _RELAY_KEYS) or {}
        if not _present(fields, "targets"):
            return RelayConfig()
        targets_node = fields["targets"]
        if not isinstance(targets_node, list):
            self.problem("relay.targets", f"expected a list of targets, got {_kind(targets_node)}")
            return RelayConfig()
        known = {account.name for account in accounts}
        targets: list[RelayTargetConfig] = []
        names: dict[str, int] = {}
        for index, item in enumerate(targets_node):
            target = self.relay_target(item, f"relay.targets[{index}]", known)
            if target is None:
                continue
            if not _ACCOUNT_NAME.fullmatch(target.name):
                self.problem(
                    f"relay.targets[{index}].name", f'invalid target name "{target.name}" (letters, digits, _ . -)'
                )
            elif target.name in names:
                self.problem(
                    f"relay.targets[{index}].name",
                    f'duplicate target name "{target.name}" (also relay.targets[{names[target.name]}])',
                )
            names.setdefault(target.name, index)
            targets.append(target)
        return RelayConfig(targets=tuple(targets))

    def relay_target(self, node: Any, location: str, accounts: set[str]) -> RelayTargetConfig | None:
        fields = self.mapping(node, location, _RELAY_TARGET_KEYS)
        if fields is None:
            return None
        before = len(self.problems)
        name = self.string_field(fields, "name", location, required=True)
        url = self.relay_url(fields, location)
        providers = self.string_list(fields, "providers", location)
        for index, provider in enumerate(providers or ()):
            if provider not in RELAY_PROVIDERS:
                self.problem(f"{location}.providers[{index}]", f'unknown provider "{provider}" (whitebit or zerohash)')
        if providers is not None and not providers:
            self.problem(_at(location, "providers"), "must list at least one provider (leave it out for both)")
        chosen = providers or RELAY_PROVIDERS
        target_accounts = self.string_list(fields, "accounts", location)
        if target_accounts is not None:
            if "whitebit" not in chosen:
                self.problem(_at(location, "accounts"), "names WhiteBIT accounts, but whitebit is not a provider")
            for index, account in enumerate(target_accounts):
                if account not in accounts:
                    self.problem(f"{location}.accounts[{index}]", f'no WhiteBIT account "{account}" is configured')
            if not target_accounts:
                self.problem(_at(location, "accounts"), "must list at least one account (leave it out for all)")
        methods = self.string_list(fields, "methods", location)
        if methods is not None and not methods:
            self.problem(_at(location, "methods"), "must list at least one method (leave it out for all)")
        for index, method in enumerate(methods or ()):
            if method == "":
                self.problem(f"{location}.methods[{index}]", "must not be empty")
        timeout = self.duration(fields, "timeout", location)
        retry_for = self.duration(fields, "retry_for", location)
        max_backoff = self.duration(fields, "max_backoff", location)
        defaults = RelayTargetConfig(name="", url="")
        retry_for = defaults.retry_for if retry_for is None else retry_for
        for key, value in (("timeout", timeout), ("max_backoff", max_backoff)):
            if value is not None and value > retry_for:
                self.problem(_at(location, key), f"must not exceed retry_for ({retry_for:g} s), got {value:g} s")
        headers = self.relay_headers(fields, location)
        tls = self.relay_tls(fields, location, url)
        if len(self.problems) > before or name is None or url is None:
            return None
        return RelayTargetConfig(
            name=name,
            url=url,
            providers=tuple(dict.fromkeys(chosen)),
            accounts=target_accounts,
            methods=methods,
            timeout=defaults.timeout if timeout is None else timeout,
            retry_for=retry_for,
            max_backoff=defaults.max_backoff if max_backoff is None else max_backoff,
            headers=headers,
            tls=tls,
        )

    def relay_url(self, fields: Mapping[str, Any], location: str) -> str | None:
        """The target's URL as given (its path kept exactly): http or https, a host, no credentials,
        no query or fragment (a token there would be logged; give it as a header)."""
        text = self.string_field(fields, "url", location, required=True)
        if text is None:
            return None
        where = _at(location, "url")
        try:
            parts = urllib.parse.urlsplit(text)
            valid = parts.scheme in ("http", "https") and bool(parts.hostname)
            _ = parts.port  # an invalid port raises here
        except ValueError:
            valid = False
        if not valid:
            self.problem(where, "invalid URL (want http://HOST/PATH or https://HOST/PATH)")
            return None
        if parts.username is not None or parts.password is not None:
            self.problem(where, "must not hold credentials (give them as a header, from ${ENV} or header_files)")
            return None
        if parts.query or parts.fragment:
            self.problem(where, "must not have a query or fragment (give a token as a header)")
            return None
        return text

    def relay_headers(self, fields: Mapping[str, Any], location: str) -> tuple[tuple[str, str], ...]:
        """``headers`` (name: value, ``${ENV}`` allowed) and ``header_files`` (name: a file holding the value)."""
        found: dict[str, tuple[str, str]] = {}
        for key in ("headers", "header_files"):
            if not _present(fields, key):
                continue
            where = _at(location, key)
            node = fields[key]
            if not isinstance(node, dict):
                self.problem(where, f"expected a mapping of header names to values, got {_kind(node)}")
                continue
            for header, raw in node.items():
                spot = _at(where, str(header))
                if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
                    self.problem(spot, "invalid header name")
                    continue
                lowered = header.lower()
                if lowered in _RELAY_OWN_HEADERS or lowered.startswith(_RELAY_OWN_PREFIXES):
                    self.problem(
                        spot,
                        "the relay sets this header itself"
                        " (the body's framing, the delivery id, or a signature header)",
                    )
                    continue
                if lowered in found:
                    self.problem(spot, f'header "{header}" is given twice')
                    continue
                value = self.string(raw, spot) if key == "headers" else self.header_file(raw, spot)
                if value is None:
                    continue
                if value == "" or any(ch in value for ch in "\r\n\x00") or not value.isprintable():
                    self.problem(spot, "must be a non-empty header value (printable, one line)")
                    continue
                found[lowered] = (header, value)
        return tuple(found.values())

    def header_file(self, raw: Any, location: str) -> str | None:
        path = self.string(raw, location)
        return None if path is None else self.read_secret_file(path, location)

    def relay_tls(self, fields: Mapping[str, Any], location: str, url: str | None) -> RelayTlsConfig:
        """The TLS files of a target, each loaded once here so that a bad one stops the start, not a delivery."""
        where = _at(location, "tls")
        tls = self.mapping(fields.get("tls"), where, _RELAY_TLS_KEYS)
        if not tls:
            return RelayTlsConfig()
        if url is not None and not url.startswith("https://"):
            self.problem(where, "TLS options need an https:// URL")
            return RelayTlsConfig()
        paths = {key: self.string_field(tls, key, where) for key in _RELAY_TLS_KEYS}
        resolved = {key: None if path is None else self.resolve(path) for key, path in paths.items()}
        if _present(tls, "cert_file") != _present(tls, "key_file"):
            self.problem(where, "cert_file and key_file go together (a client certificate and its key)")
            return RelayTlsConfig()
        try:
            context = ssl.create_default_context(cafile=resolved["ca_file"])
        except (OSError, ssl.SSLError) as error:
            shown = paths["ca_file"]
            self.problem(_at(where, "ca_file"), f'cannot load "{shown}" as CA certificates: {_reason(error)}')
            return RelayTlsConfig()
        if resolved["cert_file"] is not None and resolved["key_file"] is not None:
            try:
                context.load_cert_chain(resolved["cert_file"], resolved["key_file"], password=refuse_passphrase)
            except EncryptedKeyError:
                self.problem(
                    _at(where, "key_file"),
                    f'cannot load "{paths["key_file"]}": the key is encrypted'
                    " (a key with a passphrase is not supported)",
                )
                return RelayTlsConfig()
            except (OSError, ssl.SSLError) as error:
                self.problem(
                    _at(where, "cert_file"),
                    f'cannot load "{paths["cert_file"]}" with "{paths["key_file"]}": {_reason(error)}',
                )
                return RelayTlsConfig()
        return RelayTlsConfig(**resolved)

    # --- field helpers ---------------------------------------------------------------------------

    def mapping(self, node: Any, location: str, allowed: tuple[str, ...]) -> dict[str, Any] | None:
        """The section's known keys, unknown ones reported: {} when absent (all defaults), None if invalid."""
        if node is None:
            return {}
        if not isinstance(node, dict):
            self.problem(location, f"expected a mapping, got {_kind(node)}")
            return None
        for key in node:
            if key not in allowed:
                close = difflib.get_close_matches(str(key), allowed, n=1)
                hint = f' (did you mean "{close[0]}"?)' if close else ""
                self.problem(_at(location, str(key)), f"unknown key{hint}")
        return {key: value for key, value in node.items() if key in allowed}

    def string(self, value: Any, location: str) -> str | None:
        """A string value with ``${NAME}`` references replaced, or None (problem recorded)."""
        if not isinstance(value, str):
            self.problem(location, f"expected a string, got {_kind(value)}")
            return None
        if not self.expand_env:
            return value
        failed = False

        def replace(match: re.Match[str]) -> str:
            nonlocal failed
            if match.group(0) == "$${":
                return "${"
            name = match.group(1)
            if not match.group(2):
                self.problem(location, 'unterminated "${" (write "$${" for a literal "${")')
            elif not _ENV_NAME.fullmatch(name):
                self.problem(location, f'invalid environment variable name "{name}"')
            elif name not in self.env:
                self.problem(location, f"environment variable {name} is not set")
            else:
                return self.env[name]
            failed = True
            return ""

        result = _ENV_REFERENCE.sub(replace, value)
        return None if failed else result

    def string_field(self, fields: Mapping[str, Any], key: str, location: str, *, required: bool = False) -> str | None:
        where = _at(location, key)
        if not _present(fields, key):
            if required:
                self.problem(where, "missing")
            return None
        value = self.string(fields[key], where)
        if value == "":
            self.problem(where, "must not be empty")
            return None
        return value

    def string_list(self, fields: Mapping[str, Any], key: str, location: str) -> tuple[str, ...] | None:
        """A list of strings; None if absent or if anything in it is invalid."""
        if not _present(fields, key):
            return None
        where = _at(location, key)
        node = fields[key]
        if not isinstance(node, list):
            self.problem(where, f"expected a list of strings, got {_kind(node)}")
            return None
        items = [self.string(item, _at(where, index)) for index, item in enumerate(node)]
        strings = [item for item in items if item is not None]
        return tuple(strings) if len(strings) == len(items) else None

    def url(self, fields: Mapping[str, Any], key: str, location: str, schemes: tuple[str, ...]) -> str | None:
        text = self.string_field(fields, key, location)
        if text is None:
            return None
        try:
            parts = urllib.parse.urlsplit(text)
            valid = parts.scheme in schemes and bool(parts.hostname)
        except ValueError:
            valid = False
        if not valid:
            wanted = " or ".join(f"{scheme}://HOST" for scheme in schemes)
            self.problem(_at(location, key), f'invalid URL "{text}" (want {wanted})')
            return None
        if parts.query or parts.fragment:
            self.problem(_at(location, key), f'URL "{text}" must not have a query or fragment')
            return None
        # Callers append API paths, so a trailing slash would double up.
        return text.rstrip("/")

    def listen_address(self, fields: Mapping[str, Any], location: str, default: str) -> ListenAddress | None:
        text = self.string_field(fields, "listen_address", location)
        if text is None:
            return None if _present(fields, "listen_address") else parse_listen_address(default)
        try:
            return parse_listen_address(text)
        except ValueError as error:
            self.problem(_at(location, "listen_address"), str(error))
            return None

    def duration(self, fields: Mapping[str, Any], key: str, location: str) -> float | None:
        """A duration that must be above zero (every duration in the config is an interval or a window)."""
        return self.positive(fields, key, location, parse_duration, (int, float), "a duration like 30s")

    def positive(
        self,
        fields: Mapping[str, Any],
        key: str,
        location: str,
        parse: Callable[[Any], N],
        numbers: tuple[type, ...],
        expected: str,
    ) -> N | None:
        """A quantity above zero given as a number or as text (``${ENV}`` allowed) that ``parse`` reads."""
        if not _present(fields, key):
            return None
        where = _at(location, key)
        value = fields[key]
        if isinstance(value, str):
            value = self.string(value, where)
            if value is None:
                return None
        elif isinstance(value, bool) or not isinstance(value, numbers):
            self.problem(where, f"expected {expected}, got {_kind(value)}")
            return None
        try:
            quantity = parse(value)
        except ValueError as error:
            self.problem(where, str(error))
            return None
        if quantity <= 0:
            shown = f'"{value}"' if isinstance(value, str) else str(value)
            self.problem(where, f"must be greater than zero, got {shown}")
            return None
        return quantity

    def boolean(self, fields: Mapping[str, Any], key: str, location: str) -> bool | None:
        if not _present(fields, key):
            return None
        value = fields[key]
        if not isinstance(value, bool):
            self.problem(_at(location, key), f"expected true or false, got {_kind(value)}")
            return None
        return value

    def integer(self, fields: Mapping[str, Any], key: str, location: str, *, minimum: int, maximum: int) -> int | None:
        if not _present(fields, key):
            return None
        where = _at(location, key)
        value = fields[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(where, f"expected a whole number, got {_kind(value)}")
            return None
        if not minimum <= value <= maximum:
            self.problem(where, f"must be from {minimum} to {maximum}, got {value}")
            return None
        return value

    def buckets(self, fields: Mapping[str, Any], key: str, location: str) -> tuple[float, ...] | None:
        """Histogram bucket bounds in seconds: a non-empty list of increasing positive numbers."""
        if not _present(fields, key):
            return None
        where = _at(location, key)
        node = fields[key]
        if not isinstance(node, list) or not node:
            self.problem(where, f"expected a non-empty list of seconds, got {_kind(node)}")
            return None
        bounds: list[float] = []
        for index, item in enumerate(node):
            if isinstance(item, bool) or not isinstance(item, (int, float)) or not math.isfinite(item) or item <= 0:
                self.problem(_at(where, index), f"expected a number of seconds above zero, got {item!r}")
                return None
            if bounds and item <= bounds[-1]:
                self.problem(_at(where, index), f"bucket bounds must increase ({item} after {bounds[-1]})")
                return None
            bounds.append(float(item))
        return tuple(bounds)

    def byte_size(self, fields: Mapping[str, Any], key: str, location: str) -> int | None:
        return self.positive(fields, key, location, parse_byte_size, (int,), "a number of bytes")

    # --- secrets and files -----------------------------------------------------------------------

    def secret(self, fields: Mapping[str, Any], key: str, location: str, *, required: bool = False) -> str | None:
        """``key`` given inline or as ``key_file``; never both."""
        file_key = f"{key}_file"
        if _present(fields, key) and _present(fields, file_key):
            self.problem(location, f"{key} and {file_key} are both set (use one)")
            return None
        if _present(fields, file_key):
            where = _at(location, file_key)
            path = self.string_field(fields, file_key, location)
            return None if path is None else self.read_secret_file(path, where)
        if required and not _present(fields, key):
            self.problem(_at(location, key), f"missing (give {key} or {file_key})")
            return None
        return self.string_field(fields, key, location)

    def secret_list(
        self, fields: Mapping[str, Any], key: str, location: str, *, required: bool = False
    ) -> tuple[str, ...] | None:
        """A list of secrets inline, or ``key_file``: one path or a list of paths, one secret per file."""
        file_key = f"{key}_file"
        if _present(fields, key) and _present(fields, file_key):
            self.problem(location, f"{key} and {file_key} are both set (use one)")
            return None
        if _present(fields, file_key):
            return self.secret_files(fields[file_key], _at(location, file_key))
        if not _present(fields, key):
            if required:
                self.problem(_at(location, key), f"missing (give {key} or {file_key})")
            return None
        secrets = self.string_list(fields, key, location)
        if secrets is None:
            return None
        empty = [index for index, secret in enumerate(secrets) if secret == ""]
        for index in empty:
            self.problem(f"{location}.{key}[{index}]", "must not be empty")
        return None if empty else secrets

    def secret_files(self, node: Any, location: str) -> tuple[str, ...] | None:
        """The secrets in the file ``node`` names, or in each file of the list ``node``."""
        if isinstance(node, list):
            if not node:
                self.problem(location, "must list at least one file")
                return None
            spots = [(item, f"{location}[{index}]") for index, item in enumerate(node)]
        elif isinstance(node, str):
            spots = [(node, location)]
        else:
            self.problem(location, f"expected a file path or a list of them, got {_kind(node)}")
            return None
        secrets = []
        for item, where in spots:
            path = self.string(item, where)
            secrets.append(None if path is None else self.read_secret_file(path, where))
        return tuple(secret for secret in secrets if secret is not None) if None not in secrets else None

    def resolve(self, path: str) -> str:
        return os.path.join(self.base_dir, os.path.expanduser(path))

    def read_secret_file(self, path: str, location: str) -> str | None:
        """The one secret in the file at ``path``, surrounding whitespace removed."""
        if path == "":
            self.problem(location, "must not be empty")
            return None
        try:
            with open(self.resolve(path), "rb") as handle:
                content = handle.read()
        except OSError as error:
            self.problem(location, f'cannot read "{path}": {error.strerror}')
            return None
        try:
            secret = content.decode("utf-8").strip()
        except UnicodeDecodeError:
            self.problem(location, f'"{path}" is not UTF-8 text')
            return None
        if not secret:
            self.problem(location, f'"{path}" is empty')
            return None
        if "\n" in secret or "\r" in secret:
            self.problem(location, f'"{path}" holds more than one line (put one secret in each file)')
            return None
        return secret

    def rsa_public_keys(
        self, fields: Mapping[str, Any], location: str
    ) -> tuple[str, tuple[rsa.RSAPublicKey, ...]] | None:
        """The resolved path of ``rsa_public_keys_file`` and every RSA public key in it (each PEM block must be one)."""
        path = self.string_field(fields, "rsa_public_keys_file", location)
        if path is None:
            return None
        where = _at(location, "rsa_public_keys_file")
        resolved = self.resolve(path)
        try:
            with open(resolved, "rb") as handle:
                content = handle.read()
        except OSError as error:
            self.problem(where, f'cannot read "{path}": {error.strerror}')
            return None
        blocks = list(_PEM_BLOCK.finditer(content))
        if not blocks:
            wanted = "want BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY"
            self.problem(where, f'"{path}" holds no PEM block ({wanted})')
            return None
        keys: list[rsa.RSAPublicKey] = []
        for number, block in enumerate(blocks, start=1):
            try:
                key = serialization.load_pem_public_key(block.group(0))
            except (ValueError, UnsupportedAlgorithm):
                key = None
            if isinstance(key, rsa.RSAPublicKey):
                keys.append(key)
            else:
                label = block.group(1).decode("ascii")
                self.problem(where, f'"{path}": PEM block {number} ({label}) is not an RSA public key')
        return (resolved, tuple(keys)) if len(keys) == len(blocks) else None
