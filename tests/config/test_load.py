"""Tests for loading valid configs: the shipped example, ``${ENV}``, ``*_file`` secrets, defaults, parsers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from exporter.config.load import (
    ConfigError,
    ConfigProblem,
    load_config,
    parse_byte_size,
    parse_duration,
    parse_listen_address,
)
from exporter.config.schema import (
    DEFAULT_METRICS_ADDRESS,
    DEFAULT_WEBHOOKS_ADDRESS,
    Config,
    ListenAddress,
    PollConfig,
    PricesConfig,
    RateLimit,
    RestConfig,
    StateConfig,
    WebConfig,
    WebhooksConfig,
    WhitebitAccountConfig,
    WhitebitWebhookConfig,
    ZerohashConfig,
    ZerohashWebhookConfig,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "config.yaml"
EXAMPLE_ENV = {
    "WHITEBIT_API_KEY": "example-api-key-1f9c",
    "WHITEBIT_API_SECRET": "example-api-secret-8d2e",
    "WHITEBIT_WEBHOOK_KEY": "example-webhook-key-5a7b",
    "WHITEBIT_WEBHOOK_SECRET": "example-webhook-secret-3c4d",
    "ZEROHASH_WEBHOOK_SECRET": "example-zerohash-secret-6e0f",
}
ACCOUNT = "whitebit:\n  - name: main\n    api_key: key\n    api_secret: secret\n"


def account_named(config: Config, name: str) -> WhitebitAccountConfig:
    """The account called ``name`` (names are unique; the loader checks)."""
    return next(account for account in config.whitebit if account.name == name)


def write(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, env or {})
    return [str(problem) for problem in caught.value.problems]


def rsa_public_pem(public_format: serialization.PublicFormat) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.public_key().public_bytes(serialization.Encoding.PEM, public_format)


# --- the shipped example ---------------------------------------------------------------------------


def test_example_config_loads_with_its_env_vars_set() -> None:
    config = load_config(EXAMPLE, EXAMPLE_ENV)

    assert config == Config(
        web=WebConfig(listen_address=ListenAddress("127.0.0.1", 9945)),
        webhooks=WebhooksConfig(listen_address=ListenAddress("0.0.0.0", 9946), max_body_bytes=65536),
        state=StateConfig(path="whitebit-exporter.db"),
        whitebit=(
            WhitebitAccountConfig(
                name="main",
                rest_url="https://whitebit.com",
                ws_url="wss://api.whitebit.com/ws",
                api_key="example-api-key-1f9c",
                api_secret="example-api-secret-8d2e",
                markets=("BTC_USDT", "ETH_USDT"),
                poll=PollConfig(main_balance=30.0, collateral=30.0, history=60.0),
                reconcile_grace=900.0,
                webhook=WhitebitWebhookConfig(
                    public_key="example-webhook-key-5a7b",
                    secrets=("example-webhook-secret-3c4d",),
                    nonce_policy="count",
                ),
            ),
        ),
        zerohash=ZerohashConfig(
            webhook=ZerohashWebhookConfig(
                hmac_secrets=("example-zerohash-secret-6e0f",),
                rsa_public_keys_file=None,
                timestamp_tolerance=300.0,
                participants=(),
            )
        ),
    )


def test_example_config_without_env_vars_names_each_missing_variable_where_it_is_used() -> None:
    assert problems(EXAMPLE, {}) == [
        "whitebit[0].api_key: environment variable WHITEBIT_API_KEY is not set",
        "whitebit[0].api_secret: environment variable WHITEBIT_API_SECRET is not set",
        "whitebit[0].webhook.public_key: environment variable WHITEBIT_WEBHOOK_KEY is not set",
        "whitebit[0].webhook.secrets[0]: environment variable WHITEBIT_WEBHOOK_SECRET is not set",
        "zerohash.webhook.hmac_secrets[0]: environment variable ZEROHASH_WEBHOOK_SECRET is not set",
    ]


def test_example_config_defaults_match_the_documented_listen_addresses() -> None:
    assert parse_listen_address(DEFAULT_METRICS_ADDRESS) == ListenAddress("127.0.0.1", 9945)
    assert parse_listen_address(DEFAULT_WEBHOOKS_ADDRESS) == ListenAddress("0.0.0.0", 9946)


def test_repr_of_a_loaded_config_contains_no_secret() -> None:
    config = load_config(EXAMPLE, EXAMPLE_ENV)
    text = repr(config) + str(config)

    for name in ("WHITEBIT_API_KEY", "WHITEBIT_API_SECRET", "WHITEBIT_WEBHOOK_SECRET", "ZEROHASH_WEBHOOK_SECRET"):
        assert EXAMPLE_ENV[name] not in text, name
    # The webhook public key is published on /whiteBIT-verification, so it may show; it proves repr ran.
    assert EXAMPLE_ENV["WHITEBIT_WEBHOOK_KEY"] in text


# --- ${ENV} substitution -----------------------------------------------------------------------------


def test_env_reference_inside_a_longer_string_is_substituted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ACCOUNT + '    rest_url: "http://${SIM_HOST}:${SIM_PORT}/"\n    ws_url: "ws://${SIM_HOST}:${SIM_PORT}/ws"\n',
    )

    account = load_config(path, {"SIM_HOST": "127.0.0.1", "SIM_PORT": "8080"}).whitebit[0]

    assert account.rest_url == "http://127.0.0.1:8080"
    assert account.ws_url == "ws://127.0.0.1:8080/ws"


def test_env_reference_works_in_durations_sizes_lists_and_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "webhooks:\n  max_body_bytes: ${BODY}\n"
        "whitebit:\n  - name: ${NAME}\n    api_key: key\n    api_secret: secret\n"
        "    markets: ['${MARKET}']\n    poll:\n      history: ${HISTORY}\n",
    )

    config = load_config(path, {"BODY": "32KiB", "NAME": "eu", "MARKET": "BTC_EUR", "HISTORY": "2m"})

    assert config.webhooks.max_body_bytes == 32768
    assert config.whitebit[0].name == "eu"
    assert config.whitebit[0].markets == ("BTC_EUR",)
    assert config.whitebit[0].poll.history == 120.0


def test_double_dollar_brace_is_a_literal_and_a_substituted_value_is_not_expanded_again(tmp_path: Path) -> None:
    path = write(tmp_path, "whitebit:\n  - name: main\n    api_key: 'a$${NOT_A_VAR}b'\n    api_secret: '${SECRET}'\n")

    account = load_config(path, {"SECRET": "${OTHER}$"}).whitebit[0]

    assert account.api_key == "a${NOT_A_VAR}b"
    assert account.api_secret == "${OTHER}$"


def test_lone_dollar_signs_are_left_alone(tmp_path: Path) -> None:
    path = write(tmp_path, "whitebit:\n  - name: main\n    api_key: 'pa$$word$'\n    api_secret: '$HOME'\n")

    account = load_config(path, {}).whitebit[0]

    assert (account.api_key, account.api_secret) == ("pa$$word$", "$HOME")


def test_env_defaults_to_the_process_environment(tmp_path: Path) -> None:
    name, value = next((k, v) for k, v in sorted(os.environ.items()) if v and "${" not in v)
    path = write(tmp_path, f"zerohash:\n  webhook:\n    hmac_secrets: [s]\n    participants: ['${{{name}}}']\n")

    assert load_config(path).zerohash == ZerohashConfig(
        webhook=ZerohashWebhookConfig(hmac_secrets=("s",), participants=(value,))
    )


def test_set_but_empty_env_var_counts_as_an_empty_value(tmp_path: Path) -> None:
    path = write(tmp_path, "whitebit:\n  - name: main\n    api_key: '${KEY}'\n    api_secret: secret\n")

    assert problems(path, {"KEY": ""}) == ["whitebit[0].api_key: must not be empty"]


# --- *_file secrets ----------------------------------------------------------------------------------


def test_secret_files_are_read_stripped_and_resolved_against_the_config_directory(tmp_path: Path) -> None:
    config_dir = tmp_path / "etc" / "exporter"
    write(config_dir, "  api-key-from-file \n", "secrets/api_key")
    write(config_dir, "api-secret-from-file\r\n", "secrets/api_secret")
    write(config_dir, "webhook-key-from-file\n", "secrets/webhook_key")
    write(config_dir, "old-webhook-secret\n", "secrets/webhook_old")
    write(config_dir, "new-webhook-secret\n", "secrets/webhook_new")
    absolute = write(tmp_path, "zerohash-secret\n", "elsewhere/zerohash")
    path = write(
        config_dir,
        "whitebit:\n"
        "  - name: main\n"
        "    api_key_file: secrets/api_key\n"
        "    api_secret_file: ./secrets/api_secret\n"
        "    webhook:\n"
        "      public_key_file: secrets/webhook_key\n"
        "      secrets_file: [secrets/webhook_old, secrets/webhook_new]\n"
        "zerohash:\n"
        "  webhook:\n"
        f"    hmac_secrets_file: {absolute}\n",
    )

    config = load_config(path, {})

    account = config.whitebit[0]
    assert account.api_key == "api-key-from-file"
    assert account.api_secret == "api-secret-from-file"
    assert account.webhook == WhitebitWebhookConfig(
        public_key="webhook-key-from-file", secrets=("old-webhook-secret", "new-webhook-secret")
    )
    assert config.zerohash is not None
    assert config.zerohash.webhook.hmac_secrets == ("zerohash-secret",)


def test_secrets_file_may_be_a_single_path_and_its_path_may_come_from_env(tmp_path: Path) -> None:
    write(tmp_path, "the-secret\n", "run/webhook_secret")
    path = write(
        tmp_path,
        "whitebit:\n  - name: main\n    webhook:\n      public_key: pk\n"
        "      secrets_file: ${SECRETS_DIR}/webhook_secret\n",
    )

    account = load_config(path, {"SECRETS_DIR": str(tmp_path / "run")}).whitebit[0]

    assert account.webhook is not None
    assert account.webhook.secrets == ("the-secret",)


def test_rsa_public_keys_file_accepts_both_pem_forms_and_stores_the_resolved_path(tmp_path: Path) -> None:
    pem = rsa_public_pem(serialization.PublicFormat.SubjectPublicKeyInfo) + rsa_public_pem(
        serialization.PublicFormat.PKCS1
    )
    write(tmp_path, pem.decode("ascii"), "keys/zerohash.pem")
    path = write(tmp_path, "zerohash:\n  webhook:\n    rsa_public_keys_file: keys/zerohash.pem\n")

    config = load_config(path, {})

    assert config.zerohash == ZerohashConfig(
        webhook=ZerohashWebhookConfig(rsa_public_keys_file=str(tmp_path / "keys" / "zerohash.pem"))
    )
    assert config.whitebit == ()


# --- defaults and shapes -----------------------------------------------------------------------------


def test_missing_optional_sections_and_keys_get_their_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, ACCOUNT)

    assert load_config(path, {}) == Config(
        web=WebConfig(listen_address=ListenAddress("127.0.0.1", 9945)),
        webhooks=WebhooksConfig(listen_address=ListenAddress("0.0.0.0", 9946), max_body_bytes=65536),
        state=StateConfig(path="whitebit-exporter.db"),
        whitebit=(
            WhitebitAccountConfig(
                name="main",
                rest_url="https://whitebit.com",
                ws_url="wss://api.whitebit.com/ws",
                api_key="key",
                api_secret="secret",
                markets=(),
                poll=PollConfig(main_balance=30.0, collateral=30.0, history=60.0),
                reconcile_grace=900.0,
                webhook=None,
            ),
        ),
        zerohash=None,
    )


def test_null_values_and_empty_sections_mean_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "web:\nwebhooks: {max_body_bytes: null}\nstate: {}\n"
        + ACCOUNT
        + "    markets: null\n    poll: {history: null}\n    webhook: null\n",
    )

    assert load_config(path, {}) == load_config(write(tmp_path, ACCOUNT, "plain.yaml"), {})


def test_an_asset_allow_list_is_read_and_absent_means_every_asset(tmp_path: Path) -> None:
    listed = load_config(write(tmp_path, ACCOUNT + "    assets: [USDT, BTC, USDC.ETH]\n"), {})
    assert account_named(listed, "main").assets == ("USDT", "BTC", "USDC.ETH")
    plain = load_config(write(tmp_path, ACCOUNT, "plain.yaml"), {})
    assert account_named(plain, "main").assets is None


def test_account_run_on_webhooks_alone_has_no_api(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "whitebit:\n  - name: payments\n    webhook:\n      public_key: pk\n      secrets: [s1, s2]\n"
        "      nonce_policy: strict\n",
    )

    account = account_named(load_config(path, {}), "payments")

    assert not account.has_api
    assert (account.api_key, account.api_secret) == (None, None)
    assert account.webhook == WhitebitWebhookConfig(public_key="pk", secrets=("s1", "s2"), nonce_policy="strict")


def test_zerohash_alone_with_an_empty_whitebit_list_is_enough(tmp_path: Path) -> None:
    path = write(tmp_path, "whitebit: []\nzerohash:\n  webhook:\n    hmac_secrets: [s]\n    participants: [P1, P2]\n")

    config = load_config(path, {})

    assert config.whitebit == ()
    assert config.zerohash == ZerohashConfig(
        webhook=ZerohashWebhookConfig(hmac_secrets=("s",), participants=("P1", "P2"))
    )


def test_several_accounts_listen_addresses_sizes_and_durations_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "web: {listen_address: ':0'}\n"
        "webhooks: {listen_address: '[::1]:0', max_body_bytes: 1MiB}\n"
        "state: {path: data/state.db}\n"
        "whitebit:\n"
        "  - name: spot.eu-1_a\n    api_key: k1\n    api_secret: s1\n"
        "    rest_url: 'http://127.0.0.1:8080/'\n    ws_url: 'ws://127.0.0.1:8080/ws'\n"
        "    markets: [BTC_USDT, ETH_BTC, BTC_PERP]\n"
        "    poll: {main_balance: 500ms, collateral: 1.5, history: 1h30m}\n    reconcile_grace: 45\n"
        "  - name: second\n    api_key: k2\n    api_secret: s2\n",
    )

    config = load_config(path, {})

    assert config.web.listen_address == ListenAddress("0.0.0.0", 0)
    assert config.webhooks == WebhooksConfig(listen_address=ListenAddress("::1", 0), max_body_bytes=1048576)
    assert config.state.path == "data/state.db"
    first = account_named(config, "spot.eu-1_a")
    assert first.rest_url == "http://127.0.0.1:8080"
    assert first.markets == ("BTC_USDT", "ETH_BTC", "BTC_PERP")
    assert first.poll == PollConfig(main_balance=0.5, collateral=1.5, history=5400.0)
    assert first.reconcile_grace == 45.0
    assert [account.name for account in config.whitebit] == ["spot.eu-1_a", "second"]


def test_yaml_merge_keys_may_override_merged_values_without_a_duplicate_key_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "whitebit:\n"
        "  - &base\n    name: first\n    api_key: k\n    api_secret: s\n    markets: [BTC_USDT]\n"
        "  - <<: *base\n    name: second\n",
    )

    config = load_config(path, {})

    assert [(a.name, a.markets) for a in config.whitebit] == [
        ("first", ("BTC_USDT",)),
        ("second", ("BTC_USDT",)),
    ]


def test_config_error_lists_every_problem_one_per_line() -> None:
    error = ConfigError([ConfigProblem("web.listen_address", "bad"), ConfigProblem("whitebit[0].name", "missing")])

    assert str(error) == "web.listen_address: bad\nwhitebit[0].name: missing"
    assert str(error.problems[1]) == "whitebit[0].name: missing"


# --- parsers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("2h0m5s", 7205.0),
        ("1m30s250ms", 90.25),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        ("100ms", 0.1),
        ("0s", 0.0),
        (45, 45.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration_accepts(value: str | float, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("5x", 'invalid duration "5x" (use forms like 30s, 10m, 1h)'),
        ("30", 'invalid duration "30" (use forms like 30s, 10m, 1h)'),
        ("", 'invalid duration "" (use forms like 30s, 10m, 1h)'),
        ("30 s", 'invalid duration "30 s" (use forms like 30s, 10m, 1h)'),
        ("1m1h", 'invalid duration "1m1h" (use forms like 30s, 10m, 1h)'),
        ("1s1s", 'invalid duration "1s1s" (use forms like 30s, 10m, 1h)'),
        ("ms", 'invalid duration "ms" (use forms like 30s, 10m, 1h)'),
        ("-", 'invalid duration "-" (use forms like 30s, 10m, 1h)'),
        ("-5s", 'negative duration "-5s"'),
        (-1, "negative duration -1"),
        (-0.5, "negative duration -0.5"),
        (float("inf"), "invalid duration inf (use forms like 30s, 10m, 1h)"),
        (float("nan"), "invalid duration nan (use forms like 30s, 10m, 1h)"),
        (True, "invalid duration True (use forms like 30s, 10m, 1h)"),
    ],
)
def test_parse_duration_rejects(value: str | float, message: str) -> None:
    with pytest.raises(ValueError, match="duration") as caught:
        parse_duration(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9945", ListenAddress("127.0.0.1", 9945)),
        (":9946", ListenAddress("0.0.0.0", 9946)),
        ("[::1]:9945", ListenAddress("::1", 9945)),
        ("[::]:80", ListenAddress("::", 80)),
        ("localhost:0", ListenAddress("localhost", 0)),
        ("exporter.internal:65535", ListenAddress("exporter.internal", 65535)),
    ],
)
def test_parse_listen_address_accepts(text: str, address: ListenAddress) -> None:
    assert parse_listen_address(text) == address
    assert parse_listen_address(str(address)) == address


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("localhost", 'invalid listen address "localhost" (use HOST:PORT, :PORT or [IPV6]:PORT)'),
        ("::1:9945", 'invalid listen address "::1:9945" (use HOST:PORT, :PORT or [IPV6]:PORT)'),
        ("[::1]9945", 'invalid listen address "[::1]9945" (use HOST:PORT, :PORT or [IPV6]:PORT)'),
        ("[::1:9945", 'invalid listen address "[::1:9945" (use HOST:PORT, :PORT or [IPV6]:PORT)'),
        ("[nothost]:80", 'invalid listen address "[nothost]:80" (use HOST:PORT, :PORT or [IPV6]:PORT)'),
        ("ho st:80", 'invalid listen address "ho st:80" (use HOST:PORT, :PORT or [IPV6]:PORT)'),
        ("host:", 'invalid listen address "host:" (use HOST:PORT, :PORT or [IPV6]:PORT)'),
        ("host:-1", 'invalid listen address "host:-1" (use HOST:PORT, :PORT or [IPV6]:PORT)'),
        ("host:80a", 'invalid listen address "host:80a" (use HOST:PORT, :PORT or [IPV6]:PORT)'),
        ("host:65536", 'invalid listen address "host:65536": the port must be 0-65535'),
        (":99999999", 'invalid listen address ":99999999": the port must be 0-65535'),
    ],
)
def test_parse_listen_address_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="invalid listen address") as caught:
        parse_listen_address(text)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("value", "size"), [(65536, 65536), ("65536", 65536), ("100B", 100), ("64KiB", 65536), ("2MiB", 2097152)]
)
def test_parse_byte_size_accepts(value: str | int, size: int) -> None:
    assert parse_byte_size(value) == size


@pytest.mark.parametrize("value", ["64kb", "1.5KiB", "-1", "", "64 KiB", True])
def test_parse_byte_size_rejects(value: str | bool) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_byte_size(value)


# --- the REST client's settings ------------------------------------------------------------------


def test_rest_settings_and_rest_account_keys_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "rest:\n  timeout: 5s\n  max_retries: 0\n  request_duration_buckets: [0.1, 1]\n"
        "  rate_limits:\n    main-account/history: {limit: 100}\n    profile/websocket_token: {window: 2m}\n"
        + ACCOUNT
        + "    nonce_window: false\n    poll: {trade_balance: 10s}\n",
    )

    config = load_config(path, {})

    assert config.rest == RestConfig(
        timeout=5.0,
        max_retries=0,
        request_duration_buckets=(0.1, 1.0),
        rate_limits=(
            ("main-account/history", RateLimit(100, 10.0)),
            ("profile/websocket_token", RateLimit(10, 120.0)),
        ),
    )
    account = account_named(config, "main")
    assert account.nonce_window is False
    assert account.poll == PollConfig(main_balance=30.0, collateral=30.0, history=60.0, trade_balance=10.0)


def test_rest_settings_default_to_the_documented_limits_and_nonce_window_on(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ACCOUNT), {})

    assert config.rest == RestConfig(timeout=10.0, max_retries=5, rate_limits=())
    assert config.rest.request_duration_buckets == (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
    assert account_named(config, "main").nonce_window is True
    assert account_named(config, "main").poll.trade_balance == 30.0
    # The shipped example spells out the same defaults.
    assert load_config(EXAMPLE, EXAMPLE_ENV).rest == config.rest


# --- prices ------------------------------------------------------------------------------------------


def test_prices_are_on_by_default_in_usdt_every_minute_as_the_example_spells_out(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ACCOUNT), {})

    assert config.prices == PricesConfig(enabled=True, quote="USDT", interval=60.0)
    assert load_config(EXAMPLE, EXAMPLE_ENV).prices == config.prices


def test_prices_settings_load_and_a_ticker_rate_limit_may_be_lowered(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        ACCOUNT
        + "prices:\n  quote: ${QUOTE}\n  interval: 1s\n"
        + "rest:\n  rate_limits:\n    public/ticker: {limit: 100}\n",
    )

    config = load_config(path, {"QUOTE": "UAH"})

    assert config.prices == PricesConfig(enabled=True, quote="UAH", interval=1.0)
    assert config.rest.rate_limits == (("public/ticker", RateLimit(100, 10.0)),)


def test_prices_switched_off_keep_the_other_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ACCOUNT + "prices: {enabled: false, quote: null}\n"), {})

    assert config.prices == PricesConfig(enabled=False, quote="USDT", interval=60.0)
