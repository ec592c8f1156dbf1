"""Throwaway TLS material for tests: a CA, server and client certificates, written under a test's tmp_path.

``issue_pki(tmp_path)`` returns a :class:`Pki` with PEM files: ``ca.pem`` (trusted by clients and as the
client CA), ``server.pem``/``server-key.pem`` for 127.0.0.1 and localhost, ``client.pem``/``client-key.pem``
with the DNS SAN ``prometheus.example``, and ``other-ca.pem``, a second CA that signed nothing here.
``reissue_server`` replaces the server certificate (a renewal). Made with the ``cryptography`` package (a
dependency of the exporter), EC P-256 keys, valid for a day.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_SAN = "prometheus.example"


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files :func:`issue_pki` wrote."""

    directory: Path
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_certificate: x509.Certificate

    def client_context(
        self, *, certificate: bool = False, maximum_version: ssl.TLSVersion | None = None
    ) -> ssl.SSLContext:
        """A client context trusting the CA, presenting the client certificate when asked to."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if certificate:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        if maximum_version is not None:
            context.maximum_version = maximum_version
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    common_name: str,
    sans: list[x509.GeneralName],
    *,
    server: bool,
    cert_path: Path,
    key_path: Path,
) -> None:
    """A leaf certificate signed by the CA, written with its key to ``cert_path`` and ``key_path``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    _write_key(key, key_path)


def issue_pki(directory: Path) -> Pki:
    """Write a CA, a server and a client certificate (see the module docstring) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca("whitebit-exporter test CA")
    _, other_cert = _ca("another test CA")
    pki = Pki(
        directory=directory,
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
        ca_key=ca_key,
        ca_certificate=ca_cert,
    )
    pki.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.other_ca.write_bytes(other_cert.public_bytes(serialization.Encoding.PEM))
    server_sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    issue(ca_key, ca_cert, "localhost", server_sans, server=True, cert_path=pki.server_cert, key_path=pki.server_key)
    client_sans: list[x509.GeneralName] = [x509.DNSName(CLIENT_SAN)]
    issue(ca_key, ca_cert, "prometheus", client_sans, server=False, cert_path=pki.client_cert, key_path=pki.client_key)
    return pki


def reissue_server(pki: Pki, common_name: str) -> None:
    """A new server certificate (and key) from the same CA, with ``common_name``, written over the old files."""
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
    issue(
        pki.ca_key,
        pki.ca_certificate,
        common_name,
        sans,
        server=True,
        cert_path=pki.server_cert,
        key_path=pki.server_key,
    )
