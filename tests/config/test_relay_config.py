"""``relay.targets``: every field loaded, every mistake refused with its location, no secret in ``repr``."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from exporter.config.load import ConfigError, load_config
from exporter.config.schema import RelayConfig, RelayTargetConfig, RelayTlsConfig

ACCOUNTS = (
    "whitebit:\n"
    "  - name: main\n    webhook: {public_key: pk, secrets: [sk]}\n"
    "  - name: payments\n    webhook: {public_key: pk2, secrets: [sk2]}\n"
)


def load(tmp_path: Path, relay: str, env: dict[str, str] | None = None) -> RelayConfig:
    path = tmp_path / "config.yaml"
    path.write_text(ACCOUNTS + relay)
    return load_config(path, env or {}).relay


def problems(tmp_path: Path, relay: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, relay, env)
    return [str(problem) for problem in caught.value.problems]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A client certificate and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "exporter")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "client.pem", tmp_path / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def test_no_relay_section_means_no_targets(tmp_path: Path) -> None:
    assert load(tmp_path, "") == RelayConfig()
    assert load(tmp_path, "relay: {}\n") == RelayConfig()


def test_a_target_with_only_a_name_and_url_gets_every_default(tmp_path: Path) -> None:
    relay = load(tmp_path, "relay:\n  targets:\n    - {name: backend, url: 'https://pay.example/hooks/whitebit/'}\n")
    assert relay.targets == (RelayTargetConfig(name="backend", url="https://pay.example/hooks/whitebit/"),)
    [target] = relay.targets
    assert (target.providers, target.accounts, target.methods) == (("whitebit", "zerohash"), None, None)
    assert (target.timeout, target.retry_for, target.max_backoff) == (10.0, 7 * 86400.0, 600.0)


def test_every_field_of_a_target_is_loaded(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    (tmp_path / "token").write_text("file-token\n")
    relay = load(
        tmp_path,
        "relay:\n"
        "  targets:\n"
        "    - name: backend\n"
        "      url: https://pay.example:8443/in\n"
        "      providers: [whitebit]\n"
        "      accounts: [payments]\n"
        "      methods: [deposit.processed, withdraw.successful]\n"
        "      timeout: 5s\n"
        "      retry_for: 3d\n"
        "      max_backoff: 20m\n"
        "      headers: {Authorization: 'Bearer ${TOKEN}'}\n"
        "      header_files: {X-Api-Key: token}\n"
        f"      tls: {{ca_file: {cert.name}, cert_file: {cert.name}, key_file: {key.name}}}\n",
        {"TOKEN": "env-token"},
    )
    [target] = relay.targets
    assert target == RelayTargetConfig(
        name="backend",
        url="https://pay.example:8443/in",
        providers=("whitebit",),
        accounts=("payments",),
        methods=("deposit.processed", "withdraw.successful"),
        timeout=5.0,
        retry_for=3 * 86400.0,
        max_backoff=1200.0,
        headers=(("Authorization", "Bearer env-token"), ("X-Api-Key", "file-token")),
        tls=RelayTlsConfig(ca_file=str(cert), cert_file=str(cert), key_file=str(key)),
    )
    assert "env-token" not in repr(target) and "file-token" not in repr(target)


def test_each_mistake_is_refused_where_it_is(tmp_path: Path) -> None:
    found = problems(
        tmp_path,
        "relay:\n"
        "  targets:\n"
        "    - {name: a, url: 'ftp://pay.example/in'}\n"
        "    - {name: b, url: 'https://user:pw@pay.example/in'}\n"
        "    - {name: c, url: 'https://pay.example/in?token=x'}\n"
        "    - {name: d, url: 'https://pay.example/', providers: [whitebit, binance]}\n"
        "    - {name: e, url: 'https://pay.example/', providers: [zerohash], accounts: [main]}\n"
        "    - {name: f, url: 'https://pay.example/', accounts: [nobody]}\n"
        "    - {name: g, url: 'https://pay.example/', timeout: 8d}\n"
        "    - {name: h, url: 'https://pay.example/', headers: {Content-Type: text/plain, X-TXC-SIGNATURE: x,"
        " X-WhiteBIT-Exporter-Delivery-Id: x}}\n"
        "    - {name: i, url: 'https://pay.example/', headers: {'bad name': x, X-Ok: \"a\\nb\"}}\n"
        "    - {name: j, url: 'http://pay.example/', tls: {ca_file: ca.pem}}\n"
        "    - {name: k, url: 'https://pay.example/', tls: {cert_file: c.pem}}\n"
        "    - {name: l, url: 'https://pay.example/', tls: {ca_file: missing.pem}}\n"
        "    - {name: a, url: 'https://pay.example/', bogus: 1}\n",
    )
    assert found == [
        "relay.targets[0].url: invalid URL (want http://HOST/PATH or https://HOST/PATH)",
        "relay.targets[1].url: must not hold credentials (give them as a header, from ${ENV} or header_files)",
        "relay.targets[2].url: must not have a query or fragment (give a token as a header)",
        'relay.targets[3].providers[1]: unknown provider "binance" (whitebit or zerohash)',
        "relay.targets[4].accounts: names WhiteBIT accounts, but whitebit is not a provider",
        'relay.targets[5].accounts[0]: no WhiteBIT account "nobody" is configured',
        "relay.targets[6].timeout: must not exceed retry_for (604800 s), got 691200 s",
        *(
            f"relay.targets[7].headers.{name}: the relay sets this header itself (the body's framing, the delivery"
            " id, or a signature header)"
            for name in ("Content-Type", "X-TXC-SIGNATURE", "X-WhiteBIT-Exporter-Delivery-Id")
        ),
        "relay.targets[8].headers.bad name: invalid header name",
        "relay.targets[8].headers.X-Ok: must be a non-empty header value (printable, one line)",
        "relay.targets[9].tls: TLS options need an https:// URL",
        "relay.targets[10].tls: cert_file and key_file go together (a client certificate and its key)",
        'relay.targets[11].tls.ca_file: cannot load "missing.pem" as CA certificates: No such file or directory',
        "relay.targets[12].bogus: unknown key",
    ]


def test_names_are_unique_and_a_header_is_given_once(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t")
    found = problems(
        tmp_path,
        "relay:\n"
        "  targets:\n"
        "    - {name: a, url: 'https://one.example/'}\n"
        "    - {name: a, url: 'https://two.example/', headers: {Authorization: x},"
        " header_files: {authorization: token}}\n",
    )
    assert found == [
        'relay.targets[1].header_files.authorization: header "authorization" is given twice',
    ]
    found = problems(
        tmp_path,
        "relay:\n  targets:\n    - {name: a, url: 'https://one.example/'}\n    - {name: a, url: 'https://two.example/'}\n",
    )
    assert found == ['relay.targets[1].name: duplicate target name "a" (also relay.targets[0])']
    found = problems(
        tmp_path,
        "relay:\n  targets:\n    - {name: 'a b', url: 'https://one.example/'}\n    - {url: 'https://two.example/'}\n",
    )
    assert found == [
        'relay.targets[0].name: invalid target name "a b" (letters, digits, _ . -)',
        "relay.targets[1].name: missing",
    ]


def test_a_tls_file_that_is_not_pem_stops_the_start(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    cert, key = self_signed(tmp_path)
    (tmp_path / "other.key").write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    found = problems(
        tmp_path,
        "relay:\n"
        "  targets:\n"
        "    - {name: a, url: 'https://one.example/', tls: {ca_file: ca.pem}}\n"
        f"    - {{name: b, url: 'https://two.example/', tls: {{cert_file: {cert.name}, key_file: other.key}}}}\n",
    )
    assert len(found) == 2
    assert found[0].startswith('relay.targets[0].tls.ca_file: cannot load "ca.pem" as CA certificates: ')
    assert found[1].startswith(f'relay.targets[1].tls.cert_file: cannot load "{cert.name}" with "other.key": ')
    assert key.exists()


def test_a_client_key_with_a_passphrase_is_refused_not_prompted_for(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    (tmp_path / "encrypted.key").write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    found = problems(
        tmp_path,
        "relay:\n  targets:\n"
        f"    - {{name: a, url: 'https://one.example/', tls: {{cert_file: {cert.name}, key_file: encrypted.key}}}}\n",
    )
    assert found == [
        'relay.targets[0].tls.key_file: cannot load "encrypted.key": the key is encrypted'
        " (a key with a passphrase is not supported)"
    ]
