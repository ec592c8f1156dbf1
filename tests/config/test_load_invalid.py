"""Every invalid config is refused with the exact, located problems: one fixture file per case.

The fixtures are ``tests/data/config/invalid-<case>.yaml``; the table below pins each one to its full
list of ``location: message`` lines. ``{config}`` stands for the fixture's own path (the location of
problems that concern the whole file). Fixtures are loaded with an empty environment.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.config.load import ConfigError, load_config

DATA = Path(__file__).resolve().parents[1] / "data" / "config"

EXPECTED: dict[str, list[str]] = {
    "unknown-top-level-key": ['webs: unknown key (did you mean "web"?)'],
    "unknown-nested-key": ['whitebit[0].poll.histroy: unknown key (did you mean "history"?)'],
    "unknown-key-without-suggestion": ["whitebit[0].colour: unknown key"],
    "wrong-type": ["whitebit[0].markets: expected a list of strings, got a string"],
    "secret-wrong-type": ["whitebit[0].api_secret: expected a string, got a number"],
    "section-not-a-mapping": ["web: expected a mapping, got a string"],
    "whitebit-not-a-list": ["whitebit: expected a list of accounts, got a mapping"],
    "bad-duration": ['whitebit[0].poll.history: invalid duration "5x" (use forms like 30s, 10m, 1h)'],
    "negative-duration": ['whitebit[0].reconcile_grace: negative duration "-15m"'],
    "zero-duration": ['zerohash.webhook.timestamp_tolerance: must be greater than zero, got "0s"'],
    "retry-window-below-grace": [
        "whitebit[0].webhook_retry_window: must be at least reconcile_grace (7200 s): a webhook is overdue after"
        " the grace and missed after the retry window, got 1800 s"
    ],
    "zerohash-tolerance-too-large": [
        "zerohash.webhook.timestamp_tolerance: must be at most 1d = 86400 s (late retries are accepted past it anyway),"
        " got 172800 s"
    ],
    "boolean-duration": ["whitebit[0].poll.main_balance: expected a duration like 30s, got a boolean"],
    "missing-api-secret": [
        "whitebit[0]: api_key is set without api_secret (set both, or neither for a webhook-only account)"
    ],
    "missing-api-key": [
        "whitebit[0]: api_secret is set without api_key (set both, or neither for a webhook-only account)"
    ],
    "duplicate-account-names": ['whitebit[1].name: duplicate account name "main" (also whitebit[0])'],
    "bad-account-name": [
        'whitebit[0].name: invalid account name "main account" (use letters, digits, "_", "." and "-")'
    ],
    "reserved-account-name": [
        'whitebit[0].name: "unknown" is reserved (it labels deliveries for no configured account)'
    ],
    "missing-account-name": ["whitebit[0].name: missing"],
    "bad-nonce-policy": ['whitebit[0].webhook.nonce_policy: invalid value "lax" (use count or strict)'],
    "bad-listen-address": [
        'web.listen_address: invalid listen address "localhost" (use HOST:PORT, :PORT or [IPV6]:PORT)'
    ],
    "listen-port-out-of-range": ['webhooks.listen_address: invalid listen address ":70000": the port must be 0-65535'],
    "listen-addresses-collide": [
        'webhooks.listen_address: "0.0.0.0:9946" collides with web.listen_address "127.0.0.1:9946"'
        " (the two listeners need different ports)"
    ],
    "bad-max-body-bytes": [
        'webhooks.max_body_bytes: invalid size "64kb" (use a number of bytes or forms like 64KiB, 1MiB)'
    ],
    "bad-rest-url-scheme": [
        'whitebit[0].rest_url: invalid URL "ftp://whitebit.com" (want http://HOST or https://HOST)'
    ],
    "bad-ws-url-scheme": [
        'whitebit[0].ws_url: invalid URL "https://api.whitebit.com/ws" (want ws://HOST or wss://HOST)'
    ],
    "url-with-query": ['whitebit[0].rest_url: URL "https://whitebit.com/?lang=en" must not have a query or fragment'],
    "bad-market": ['whitebit[0].markets[1]: invalid market "btc-usdt" (use the form BTC_USDT)'],
    "bad-assets": [
        'whitebit[0].assets[1]: invalid asset "usdt coin" (use the ticker, e.g. USDT)',
        'whitebit[0].assets[2]: duplicate asset "USDT"',
        "whitebit[0].assets[3]: must not be empty",
        "whitebit[1].assets: must list at least one asset (leave it out to export every asset once it holds something)",
    ],
    "duplicate-market": ['whitebit[0].markets[2]: duplicate market "BTC_USDT"'],
    "key-and-key-file": ["whitebit[0]: api_key and api_key_file are both set (use one)"],
    "missing-secret-file": [
        'whitebit[0].api_secret_file: cannot read "secrets/missing.txt": No such file or directory'
    ],
    "empty-secret-file": ['whitebit[0].api_secret_file: "secrets/empty.txt" is empty'],
    "secret-file-several-lines": [
        'whitebit[0].webhook.secrets_file[1]: "secrets/two-lines.txt" holds more than one line'
        " (put one secret in each file)"
    ],
    "empty-secrets-list": ["whitebit[0].webhook.secrets: must list at least one secret"],
    "missing-webhook-secrets": ["whitebit[0].webhook.secrets: missing (give secrets or secrets_file)"],
    "duplicate-webhook-public-key": [
        "whitebit[1].webhook.public_key: same public key as whitebit[0] (the receiver finds the account by its key)"
    ],
    "yaml": ["{config}:5:1: invalid YAML: found unexpected end of stream (while scanning a quoted scalar at line 3)"],
    "duplicate-yaml-key": ['{config}:5:5: duplicate key "api_key"'],
    "top-level-not-a-mapping": ["{config}: expected a mapping at the top level, got a list"],
    "nothing-to-monitor": ["{config}: nothing to monitor (configure a whitebit account or the zerohash section)"],
    "empty-file": ["{config}: nothing to monitor (configure a whitebit account or the zerohash section)"],
    "account-without-sources": ["whitebit[0]: nothing to monitor (give api_key and api_secret, or webhook, or both)"],
    "zerohash-without-verification": [
        "zerohash.webhook: no way to verify deliveries (give hmac_secrets, hmac_secrets_file or rsa_public_keys_file)"
    ],
    "rsa-key-file-not-rsa": [
        'zerohash.webhook.rsa_public_keys_file: "keys/rsa-and-ec.pem":'
        " PEM block 2 (PUBLIC KEY) is not an RSA public key"
    ],
    "rsa-key-file-without-pem": [
        'zerohash.webhook.rsa_public_keys_file: "keys/not-pem.txt" holds no PEM block'
        " (want BEGIN PUBLIC KEY or BEGIN RSA PUBLIC KEY)"
    ],
    "missing-rsa-key-file": [
        'zerohash.webhook.rsa_public_keys_file: cannot read "keys/missing.pem": No such file or directory'
    ],
    "unset-env-var": [
        "whitebit[0].api_key: environment variable WHITEBIT_TEST_UNSET_KEY is not set",
        "whitebit[0].api_secret: environment variable WHITEBIT_TEST_UNSET_SECRET is not set",
    ],
    "bad-env-reference": [
        'whitebit[0].api_key: unterminated "${" (write "$${" for a literal "${")',
        'whitebit[0].api_secret: invalid environment variable name "1SECRET"',
    ],
    "listener-limits": [
        'webhooks.keepalive_timeout: unknown key (did you mean "idle_timeout"?)',
        'web.request_timeout: must be greater than zero, got "0s"',
        'web.idle_timeout: invalid duration "soon" (use forms like 30s, 10m, 1h)',
        "web.max_connections: must be from 1 to 65536, got 0",
        "webhooks.request_timeout: negative duration -1",
        "webhooks.max_connections: must be from 1 to 65536, got 100000",
    ],
    "rest-settings": [
        'rest.timeout: must be greater than zero, got "0s"',
        "rest.max_retries: must be from 0 to 20, got 50",
        "rest.request_duration_buckets[2]: bucket bounds must increase (0.5 after 1.0)",
        'rest.rate_limits.main-acount: unknown key (did you mean "main-account"?)',
        "rest.rate_limits.main-account/history.limit: must be from 1 to 1000000, got 0",
        "rest.rate_limits.profile/websocket_token.per: unknown key",
        "rest.rate_limits.trade-account: expected a mapping, got a number",
        'whitebit[0].poll.trade_balance: invalid duration "soon" (use forms like 30s, 10m, 1h)',
        "whitebit[0].nonce_window: expected true or false, got a string",
    ],
    "prices": [
        "prices.every: unknown key",
        "prices.enabled: expected true or false, got a string",
        'prices.quote: invalid asset "usdt" (use the ticker as WhiteBIT names it in markets, e.g. USDT)',
        "prices.interval: must be at least 1s (WhiteBIT caches the ticker for a second), got 0.5 s",
    ],
    "prices-not-a-mapping": ["prices: expected a mapping, got a string"],
    # public/ticker is a rate-limit family of its own: only its limit is wrong.
    "prices-empty-quote": [
        "rest.rate_limits.public/ticker.limit: must be from 1 to 1000000, got 3000000",
        "prices.quote: must not be empty",
        'prices.interval: must be greater than zero, got "0s"',
    ],
    "several-problems": [
        'web.listen_address: invalid listen address "127.0.0.1" (use HOST:PORT, :PORT or [IPV6]:PORT)',
        "state.journal: unknown key",
        "state.path: must not be empty",
        'whitebit[0].rest_url: invalid URL "whitebit.com" (want http://HOST or https://HOST)',
        "whitebit[0].api_key: environment variable WHITEBIT_TEST_UNSET_KEY is not set",
        'whitebit[0].markets[1]: invalid market "BTCUSDT" (use the form BTC_USDT)',
        "whitebit[0].poll.main_balance: must be greater than zero, got 0",
        'whitebit[0].poll.collateral: invalid duration "30 seconds" (use forms like 30s, 10m, 1h)',
        "whitebit[1]: api_key is set without api_secret (set both, or neither for a webhook-only account)",
        "whitebit[1].webhook.secrets[0]: must not be empty",
        'whitebit[1].webhook.nonce_policy: invalid value "STRICT" (use count or strict)',
        'whitebit[1].name: duplicate account name "main" (also whitebit[0])',
        "zerohash.webhook.hmac_secrets: expected a list of strings, got a string",
        "zerohash.webhook.timestamp_tolerance: negative duration -5",
    ],
}


def load_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    return [str(problem) for problem in caught.value.problems]


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_invalid_config_is_refused_with_exactly_these_problems(case: str) -> None:
    path = DATA / f"invalid-{case}.yaml"

    assert load_problems(path) == [line.replace("{config}", str(path)) for line in EXPECTED[case]]


def test_every_invalid_fixture_has_an_expectation() -> None:
    fixtures = {path.name.removeprefix("invalid-").removesuffix(".yaml") for path in DATA.glob("invalid-*.yaml")}

    assert fixtures == set(EXPECTED)


def test_config_error_message_holds_one_problem_per_line() -> None:
    path = DATA / "invalid-unset-env-var.yaml"

    with pytest.raises(ConfigError) as caught:
        load_config(path, {})

    assert str(caught.value).splitlines() == EXPECTED["unset-env-var"]


def test_problems_never_echo_a_secret_value(tmp_path: Path) -> None:
    secret = "s3cr3t-value-that-must-not-leak"
    path = tmp_path / "config.yaml"
    path.write_text(
        "whitebit:\n"
        "  - name: main\n"
        f"    api_key: {secret}\n"
        f"    api_key_file: {secret}\n"
        f"    api_secret: [{secret}]\n"
        "    webhook:\n"
        f"      public_key: {{{secret}: 1}}\n"
        f"      secrets: [{secret}, 7]\n"
    )

    lines = load_problems(path)

    assert lines == [
        "whitebit[0]: api_key and api_key_file are both set (use one)",
        "whitebit[0].api_secret: expected a string, got a list",
        "whitebit[0].webhook.public_key: expected a string, got a mapping",
        "whitebit[0].webhook.secrets[1]: expected a string, got a number",
    ]
    assert all(secret not in line for line in lines)


def test_missing_config_file_is_a_problem_located_at_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"

    assert load_problems(path) == [f"{path}: cannot read the config file: No such file or directory"]


def test_config_path_that_is_a_directory_is_a_problem(tmp_path: Path) -> None:
    assert load_problems(tmp_path) == [f"{tmp_path}: cannot read the config file: Is a directory"]


def test_config_file_that_is_not_utf8_is_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"whitebit:\n  - name: caf\xe9\n")

    assert load_problems(path) == [f"{path}: not UTF-8 text (line 2)"]


def test_unknown_yaml_tag_is_invalid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "tagged.yaml"
    path.write_text("whitebit:\n  - name: main\n    api_key: !env WHITEBIT_API_KEY\n")

    assert load_problems(path) == [f"{path}:3:14: invalid YAML: could not determine a constructor for the tag '!env'"]
