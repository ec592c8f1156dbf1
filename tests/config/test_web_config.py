"""The web configuration file (--web.config.file) and webhooks.tls: what loads, and every problem with its location."""

from __future__ import annotations

import ssl
from pathlib import Path

import bcrypt
import pytest

from exporter.config.load import ConfigError, load_config, load_web_config
from exporter.config.schema import ServerTlsConfig
from exporter.config.tls import server_context
from tests.certs import Pki, issue_pki

HASH = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return issue_pki(tmp_path)


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_web_config(path)
    return [str(problem) for problem in caught.value.problems]


def write(pki: Pki, text: str) -> Path:
    path = pki.directory / "web-config.yml"
    path.write_text(text)
    return path


TLS = """
tls_server_config:
  cert_file: server.pem
  key_file: server-key.pem
"""


def test_a_full_web_config_loads_with_paths_relative_to_its_file(pki: Pki) -> None:
    path = write(
        pki,
        f"""
tls_server_config:
  cert_file: server.pem
  key_file: server-key.pem
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: ca.pem
  client_allowed_sans: [prometheus.example]
  min_version: TLS13
  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]
  curve_preferences: [CurveP384]
  prefer_server_cipher_suites: true
http_server_config:
  http2: false
  headers:
    X-Frame-Options: deny
    Content-Security-Policy: ""
basic_auth_users:
  prometheus: '{HASH}'
""",
    )
    web = load_web_config(path)
    assert web.tls == ServerTlsConfig(
        cert_file=str(pki.server_cert),
        key_file=str(pki.server_key),
        client_auth_type="RequireAndVerifyClientCert",
        client_ca_file=str(pki.ca),
        client_allowed_sans=("prometheus.example",),
        min_version="TLS13",
        max_version="TLS13",
        cipher_suites=("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
        curve_preferences=("CurveP384",),
    )
    # A blank header is left unset, as the toolkit does.
    assert web.headers == (("X-Frame-Options", "deny"),)
    assert web.basic_auth_users == (("prometheus", HASH),)
    assert HASH not in repr(web)


def test_an_empty_file_means_plain_http_without_auth(pki: Pki) -> None:
    web = load_web_config(write(pki, ""))
    assert (web.tls, web.headers, web.basic_auth_users) == (None, (), ())


def test_cipher_suites_are_go_names_mapped_to_openssl_in_their_order(pki: Pki) -> None:
    tls = ServerTlsConfig(
        cert_file=str(pki.server_cert),
        key_file=str(pki.server_key),
        max_version="TLS12",
        cipher_suites=("TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
    )
    context = server_context(tls)
    tls12 = [cipher["name"] for cipher in context.get_ciphers() if cipher["protocol"] == "TLSv1.2"]
    assert tls12 == ["ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-ECDSA-AES128-GCM-SHA256"]
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2 and context.maximum_version == ssl.TLSVersion.TLSv1_2


def test_bad_yaml_is_reported_with_its_line(pki: Pki) -> None:
    path = write(pki, "tls_server_config:\n  cert_file: [unclosed\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}:3:1: invalid YAML")


def test_every_problem_is_reported_at_once_with_its_location(pki: Pki) -> None:
    path = write(
        pki,
        """
tls_server_config:
  cert_file: missing.pem
  key_file: server-key.pem
  min_version: TLS14
  client_auth_type: RequireAnyClientCert
  cert_fil: typo.pem
http_server_config:
  http2: true
  headers:
    X-Frame-Options: allow
    X-Powered-By: me
basic_auth_users:
  prometheus: not-a-hash
  "a:b": '$2y$10$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG'
  weak: '$2y$03$X0h1gDsPszWURQaxFh.zoubFi6DXncSjhoQNJgRrnGs7EsimhC7zG'
  salty: '$2y$10$X0h1gDsPszWURQaxFh.zovbFi6DXncSjhoQNJgRrnGs7EsimhC7zG'
rate_limit:
  interval: 1s
  burst: 10
tls: {}
""",
    )
    hint = "make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n'"
    assert problems(path) == [
        "tls: unknown key",
        "rate_limit: not supported (the listener's web.max_connections and web.request_timeout bound its clients)",
        'tls_server_config.cert_fil: unknown key (did you mean "cert_file"?)',
        "tls_server_config.client_auth_type: RequireAnyClientCert is not supported: Python's ssl module verifies"
        " every client certificate it asks for (use VerifyClientCertIfGiven or RequireAndVerifyClientCert, with"
        " client_ca_file)",
        'tls_server_config.min_version: unknown TLS version "TLS14" (use TLS10, TLS11, TLS12, TLS13)',
        "http_server_config.http2: HTTP/2 is not supported (the listener serves HTTP/1.1): set it to false",
        'http_server_config.headers.X-Frame-Options: invalid value "allow" (use deny or sameorigin)',
        "http_server_config.headers.X-Powered-By: cannot be configured (use Strict-Transport-Security,"
        " X-Content-Type-Options, X-Frame-Options, X-XSS-Protection, Content-Security-Policy)",
        f"basic_auth_users.prometheus: not a bcrypt hash ({hint})",
        'basic_auth_users.a:b: a user name cannot contain ":" (basic auth splits user and password there)',
        "basic_auth_users.weak: bcrypt cost must be from 04 to 31, got 03",
        f"basic_auth_users.salty: not a valid bcrypt hash: its salt is malformed ({hint})",
    ]


@pytest.mark.parametrize(
    ("tls", "expected"),
    [
        (
            "  cert_file: missing.pem\n  key_file: server-key.pem\n",
            'tls_server_config.cert_file: cannot load "{d}/missing.pem" with "{d}/server-key.pem":'
            " No such file or directory",
        ),
        (
            "  cert_file: server.pem\n  key_file: client-key.pem\n",
            'tls_server_config.cert_file: cannot load "{d}/server.pem" with "{d}/client-key.pem":'
            " the key does not belong to the certificate",
        ),
        (
            "  cert_file: server.pem\n  key_file: server-key.pem\n  client_auth_type: RequireAndVerifyClientCert\n"
            "  client_ca_file: web-config.yml\n",
            'tls_server_config.client_ca_file: cannot load "{d}/web-config.yml" as CA certificates:'
            " no PEM certificate in it",
        ),
        ("  key_file: server-key.pem\n", "tls_server_config.cert_file: missing"),
        (
            "  cert_file: server.pem\n  cert: inline\n",
            "tls_server_config.cert: inline PEM is not supported (give cert_file)",
        ),
        (
            "  cert_file: server.pem\n  key_file: server-key.pem\n  client_auth_type: VerifyClientCertIfGiven\n",
            "tls_server_config.client_auth_type: VerifyClientCertIfGiven needs client_ca_file (the CAs a client"
            " certificate must chain to)",
        ),
        (
            "  cert_file: server.pem\n  key_file: server-key.pem\n  client_ca_file: ca.pem\n",
            "tls_server_config.client_auth_type: client_ca_file is set but client_auth_type asks for no client"
            " certificate",
        ),
        (
            "  cert_file: server.pem\n  key_file: server-key.pem\n  client_auth_type: VerifyClientCertIfGiven\n"
            "  client_ca_file: ca.pem\n  client_allowed_sans: [x]\n",
            "tls_server_config.client_allowed_sans: needs client_auth_type RequireAndVerifyClientCert (a client may"
            " otherwise send no certificate)",
        ),
        (
            "  cert_file: server.pem\n  key_file: server-key.pem\n  min_version: TLS13\n  max_version: TLS12\n",
            "tls_server_config.min_version: TLS13 is above max_version TLS12",
        ),
        (
            "  cert_file: server.pem\n  key_file: server-key.pem\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            'tls_server_config.cipher_suites: "TLS_AES_128_GCM_SHA256" is a TLS 1.3 suite, which cannot be chosen'
            " (list TLS 1.2 suites only)",
        ),
        (
            "  cert_file: server.pem\n  key_file: server-key.pem\n  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n",
            'tls_server_config.cipher_suites: unknown cipher suite "TLS_RSA_WITH_RC4_128_SHA" (use the names of'
            " Go's tls package)",
        ),
        (
            "  cert_file: server.pem\n  key_file: server-key.pem\n  curve_preferences: [X25519, CurveP256]\n",
            "tls_server_config.curve_preferences: Python's ssl module sets one curve, not an order of preference:"
            " list one",
        ),
        (
            "  cert_file: server.pem\n  key_file: server-key.pem\n  curve_preferences: [CurveP224]\n",
            'tls_server_config.curve_preferences[0]: unknown curve "CurveP224" (use CurveP256, CurveP384,'
            " CurveP521, X25519)",
        ),
    ],
    ids=[
        "unreadable-cert",
        "key-mismatch",
        "ca-without-certs",
        "no-cert",
        "inline-pem",
        "verify-without-ca",
        "ca-without-auth",
        "sans-without-required-cert",
        "min-above-max",
        "tls13-suite",
        "insecure-suite",
        "two-curves",
        "unknown-curve",
    ],
)
def test_tls_problems_are_reported_at_their_key(pki: Pki, tls: str, expected: str) -> None:
    path = write(pki, "tls_server_config:\n" + tls)
    assert expected.format(d=pki.directory) in problems(path)


def test_a_key_with_a_passphrase_is_refused_not_prompted_for(pki: Pki) -> None:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server_key.read_bytes(), password=None)
    encrypted = pki.directory / "encrypted-key.pem"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    path = write(pki, "tls_server_config:\n  cert_file: server.pem\n  key_file: encrypted-key.pem\n")
    assert problems(path) == [
        f'tls_server_config.key_file: cannot load "{encrypted}": the key is encrypted (a key with a passphrase is'
        " not supported)"
    ]


def test_a_missing_web_config_file_is_one_problem(tmp_path: Path) -> None:
    [problem] = problems(tmp_path / "nope.yml")
    assert problem == f"{tmp_path / 'nope.yml'}: cannot read the web config file: No such file or directory"


def test_no_env_references_in_the_web_config(pki: Pki) -> None:
    # The toolkit's format has none; a ${…} is taken as written, so the certificate path is simply missing.
    path = write(pki, "tls_server_config:\n  cert_file: ${CERT}\n  key_file: server-key.pem\n")
    [problem] = problems(path)
    assert "${CERT}" in problem and "No such file or directory" in problem


def config_with_webhooks_tls(pki: Pki, tls: str) -> Path:
    path = pki.directory / "config.yaml"
    path.write_text(
        f"""
webhooks:
  tls:
{tls}
zerohash:
  webhook:
    hmac_secrets: [secret]
"""
    )
    return path


def test_webhooks_tls_in_config_yaml_loads(pki: Pki) -> None:
    path = config_with_webhooks_tls(
        pki, "    cert_file: server.pem\n    key_file: server-key.pem\n    min_version: TLS13"
    )
    config = load_config(path)
    assert config.webhooks.tls == ServerTlsConfig(
        cert_file=str(pki.server_cert), key_file=str(pki.server_key), min_version="TLS13"
    )
    assert config.web.security.tls is None


def test_webhooks_tls_refuses_client_certificate_settings(pki: Pki) -> None:
    path = config_with_webhooks_tls(
        pki,
        "    cert_file: server.pem\n    key_file: server-key.pem\n"
        "    client_auth_type: RequireAndVerifyClientCert\n    client_ca_file: ca.pem",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert [str(problem) for problem in caught.value.problems] == [
        f"webhooks.tls.{key}: not for the webhook listener: WhiteBIT and Zero Hash present no client certificate"
        for key in ("client_auth_type", "client_ca_file")
    ]
