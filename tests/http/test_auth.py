"""Basic auth's checks and cache, the Authorization header's reading, and client-certificate SANs."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path

import bcrypt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from exporter.http.auth import CACHE_ENTRIES, CACHE_SECONDS, BasicAuth, basic_credentials, certificate_sans
from tests.certs import CLIENT_SAN, issue, issue_pki

PASSWORD = b"s3cret"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)).decode()


def header(user: bytes, password: bytes) -> str:
    return "Basic " + base64.b64encode(user + b":" + password).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("Bearer abc", None),
        ("Basic", None),
        ("Basic !!!not-base64", None),
        ("Basic " + base64.b64encode(b"no-colon").decode(), None),
        ("basic " + base64.b64encode(b"user:pass:with:colons").decode(), (b"user", b"pass:with:colons")),
        ("Basic " + base64.b64encode(b":").decode(), (b"", b"")),
    ],
)
def test_the_authorization_header_is_read_as_go_reads_it(
    value: str | None, expected: tuple[bytes, bytes] | None
) -> None:
    assert basic_credentials(value) == expected


async def test_a_successful_check_is_remembered_for_a_while_and_a_failed_one_never() -> None:
    clock = Clock()
    auth = BasicAuth((("prometheus", HASH),), clock=clock)
    right = header(b"prometheus", PASSWORD)
    for _ in range(3):
        assert await auth.check(right) is None
    assert auth.checks == 1

    wrong = header(b"prometheus", b"guess")
    for _ in range(3):
        assert await auth.check(wrong) == "wrong_credentials"
    assert auth.checks == 4

    clock.now += CACHE_SECONDS + 1
    assert await auth.check(right) is None
    assert auth.checks == 5


async def test_an_unknown_user_costs_a_check_and_is_refused_even_with_a_configured_password() -> None:
    auth = BasicAuth((("prometheus", HASH),))
    assert await auth.check(header(b"intruder", PASSWORD)) == "wrong_credentials"
    assert await auth.check(header(b"intruder", PASSWORD)) == "wrong_credentials"
    assert auth.checks == 2


async def test_missing_and_overlong_credentials_are_refused_without_a_check() -> None:
    auth = BasicAuth((("prometheus", HASH),))
    assert await auth.check(None) == "missing_credentials"
    assert await auth.check("Basic %%%") == "missing_credentials"
    # bcrypt reads 72 bytes: a longer password is refused as such, not checked by its first 72.
    long_password = b"x" * 73
    long_auth = BasicAuth((("long", bcrypt.hashpw(long_password[:72], bcrypt.gensalt(rounds=4)).decode()),))
    assert await long_auth.check(header(b"long", long_password)) == "wrong_credentials"
    assert await long_auth.check(header(b"long", long_password[:72])) is None
    assert auth.checks == 0 and long_auth.checks == 1


async def test_the_cache_holds_at_most_its_bound_oldest_out_first() -> None:
    users = [
        (f"user{index}", bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()) for index in range(CACHE_ENTRIES + 1)
    ]
    auth = BasicAuth(users)
    for user, _ in users:
        assert await auth.check(header(user.encode(), b"pw")) is None
    assert auth.checks == CACHE_ENTRIES + 1
    # The newest is remembered, the oldest was pushed out.
    assert await auth.check(header(users[-1][0].encode(), b"pw")) is None
    assert auth.checks == CACHE_ENTRIES + 1
    assert await auth.check(header(users[0][0].encode(), b"pw")) is None
    assert auth.checks == CACHE_ENTRIES + 2


async def test_the_cache_keeps_no_password() -> None:
    auth = BasicAuth((("prometheus", HASH),))
    assert await auth.check(header(b"prometheus", PASSWORD)) is None
    remembered = auth._remembered
    assert len(remembered) == 1
    [digest] = remembered
    assert PASSWORD not in digest and len(digest) == 32


def test_certificate_sans_are_read_as_go_prints_them(tmp_path: Path) -> None:
    pki = issue_pki(tmp_path / "pki")
    sans: list[x509.GeneralName] = [
        x509.DNSName("scraper.example"),
        x509.RFC822Name("ops@example.com"),
        x509.UniformResourceIdentifier("spiffe://example/prometheus"),
        x509.IPAddress(ipaddress.IPv6Address("2001:db8::1")),
        # Go prints an IPv4 address held in IPv6 form as IPv4.
        x509.IPAddress(ipaddress.IPv6Address("::ffff:10.0.0.1")),
    ]
    cert_path, key_path = tmp_path / "many.pem", tmp_path / "many-key.pem"
    issue(pki.ca_key, pki.ca_certificate, "many", sans, server=False, cert_path=cert_path, key_path=key_path)
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert certificate_sans(certificate.public_bytes(serialization.Encoding.DER)) == {
        "scraper.example",
        "ops@example.com",
        "spiffe://example/prometheus",
        "2001:db8::1",
        "10.0.0.1",
    }
    client = x509.load_pem_x509_certificate(pki.client_cert.read_bytes())
    assert certificate_sans(client.public_bytes(serialization.Encoding.DER)) == {CLIENT_SAN}
    assert certificate_sans(b"not a certificate") == set()
