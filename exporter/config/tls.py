"""Server TLS in the terms of the exporter toolkit's ``tls_server_config``, built with Python's ssl module.

The config loader builds each listener's :class:`ssl.SSLContext` once with :func:`server_context`, so a
certificate that does not load, a key that does not match it or a client CA file without certificates stops
the start (and ``--config.check``) with its location; the listeners build it again when they start, and
whenever the files change (:mod:`exporter.http.tls`).

The names are Go's, as the toolkit's web configuration uses them
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md):

- ``cipher_suites`` are the names of Go's ``tls.CipherSuites()``: IANA's names of TLS 1.0–1.2 suites. Each is
  mapped to the OpenSSL cipher with the same IANA code point (``SSLContext.get_ciphers()`` gives each cipher's
  code in the low 16 bits of its ``id``), so the mapping is exact, and the list keeps its order: with
  ``prefer_server_cipher_suites`` (the default) the server picks by that order. TLS 1.3 suites cannot be
  chosen, by Go or by Python's ssl, so naming one is refused rather than ignored.
- ``curve_preferences``: Python's ssl sets one group (``SSLContext.set_ecdh_curve``, for TLS 1.2 and 1.3
  alike), so a list of one is honoured exactly and a longer one is refused.
- ``client_auth_type``: Python's ssl verifies every client certificate it asks for, so only the types that
  verify (or ask for nothing) exist: ``NoClientCert``, ``VerifyClientCertIfGiven``,
  ``RequireAndVerifyClientCert`` (:data:`~exporter.config.schema.CLIENT_AUTH_TYPES`).
"""

from __future__ import annotations

import ssl

from exporter.config.schema import ServerTlsConfig

#: Go's names of the TLS 1.0–1.2 suites in ``tls.CipherSuites()`` (some Go versions also list the RSA key
#: exchange ones there), with their IANA code points (Go's crypto/tls constants).
GO_CIPHER_SUITES: dict[str, int] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": 0x002F,
    "TLS_RSA_WITH_AES_256_CBC_SHA": 0x0035,
    "TLS_RSA_WITH_AES_128_GCM_SHA256": 0x009C,
    "TLS_RSA_WITH_AES_256_GCM_SHA384": 0x009D,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": 0xC009,
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": 0xC00A,
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": 0xC013,
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": 0xC014,
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": 0xC02B,
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": 0xC02C,
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": 0xC02F,
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": 0xC030,
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA8,
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": 0xCCA9,
}
#: Go's names of the TLS 1.3 suites, which neither Go nor Python's ssl lets a server choose.
GO_TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")
#: Go's curve names (the toolkit's ``curve_preferences``) and OpenSSL's names of the same groups.
GO_CURVES: dict[str, str] = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}
_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_VERIFY_MODES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
# OpenSSL's reasons for the usual mistakes, in the operator's words.
_REASONS = {
    "KEY_VALUES_MISMATCH": "the key does not belong to the certificate",
    "NO_CERTIFICATE_OR_CRL_FOUND": "no PEM certificate in it",
}


class TlsSetupError(Exception):
    """A TLS setting cannot be honoured; ``key`` names it (``cert_file``, ``cipher_suites`` …)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class EncryptedKeyError(Exception):
    """OpenSSL asked for the passphrase of the key."""


def refuse_passphrase() -> bytes:
    """The password callback of ``load_cert_chain``: without one, OpenSSL would prompt on the terminal for
    the passphrase of an encrypted key, and a service would hang there."""
    raise EncryptedKeyError


def tls_version(name: str) -> ssl.TLSVersion:
    """Python's TLS version of a toolkit name (``TLS12``); KeyError for any other name."""
    return _VERSIONS[name]


def _reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        reason = str(error.reason or error)
        return _REASONS.get(reason, reason)
    return str(error.strerror or error)


def openssl_ciphers(suites: tuple[str, ...]) -> list[str]:
    """OpenSSL's names of Go's ``suites``, in their order; raises :class:`TlsSetupError` for a name it cannot map."""
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Every cipher this OpenSSL has, whatever its default list leaves out.
    scratch.set_ciphers("ALL:@SECLEVEL=0")
    by_code = {cipher["id"] & 0xFFFF: cipher["name"] for cipher in scratch.get_ciphers()}
    names: list[str] = []
    for suite in suites:
        if suite in GO_TLS13_SUITES:
            raise TlsSetupError(
                "cipher_suites", f'"{suite}" is a TLS 1.3 suite, which cannot be chosen (list TLS 1.2 suites only)'
            )
        code = GO_CIPHER_SUITES.get(suite)
        if code is None:
            raise TlsSetupError("cipher_suites", f'unknown cipher suite "{suite}" (use the names of Go\'s tls package)')
        if code not in by_code:
            raise TlsSetupError("cipher_suites", f'"{suite}" is not offered by this OpenSSL ({ssl.OPENSSL_VERSION})')
        names.append(by_code[code])
    return names


def server_context(tls: ServerTlsConfig) -> ssl.SSLContext:
    """The server context ``tls`` describes, its files loaded now; raises :class:`TlsSetupError`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = tls_version(tls.min_version)
    context.maximum_version = tls_version(tls.max_version)
    try:
        # A password callback that refuses: without one, OpenSSL would prompt on the terminal for the
        # passphrase of an encrypted key, and a service would hang there.
        context.load_cert_chain(tls.cert_file, tls.key_file, password=refuse_passphrase)
    except EncryptedKeyError:
        raise TlsSetupError(
            "key_file", f'cannot load "{tls.key_file}": the key is encrypted (a key with a passphrase is not supported)'
        ) from None
    except OSError as error:
        raise TlsSetupError(
            "cert_file", f'cannot load "{tls.cert_file}" with "{tls.key_file}": {_reason(error)}'
        ) from None
    if tls.client_ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except OSError as error:
            raise TlsSetupError(
                "client_ca_file", f'cannot load "{tls.client_ca_file}" as CA certificates: {_reason(error)}'
            ) from None
    context.verify_mode = _VERIFY_MODES[tls.client_auth_type]
    if tls.cipher_suites:
        context.set_ciphers(":".join(openssl_ciphers(tls.cipher_suites)))
    for curve in tls.curve_preferences:
        context.set_ecdh_curve(GO_CURVES[curve])
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # The listeners speak HTTP/1.1 only (aiohttp has no HTTP/2 server).
    context.set_alpn_protocols(["http/1.1"])
    return context


def tls_files(tls: ServerTlsConfig) -> tuple[str, ...]:
    """The files ``tls`` loads: certificate, key and, when given, the client CAs."""
    files = (tls.cert_file, tls.key_file)
    return (*files, tls.client_ca_file) if tls.client_ca_file is not None else files
