"""Zero Hash webhook signatures.

Zero Hash signs a delivery in one of four ways (docs/protocol.md#zero-hash-signatures):

* ``x-zh-hook-signature``: hex HMAC-SHA256 of ``raw body + x-zh-hook-timestamp`` (no separator);
* ``x-zh-hook-signature-256``: the legacy hex HMAC-SHA256 of the raw body alone;
* ``x-zh-hook-rsa-signature``: hex RSA signature (SHA-256) of ``raw body + timestamp``;
* ``x-zh-hook-rsa-signature-256``: the legacy hex RSA signature of the raw body.

The RSA padding is undocumented, so verification accepts PSS (any salt length) and PKCS#1 v1.5.

A timestamp is digits (docs/protocol.md#zero-hash-signatures): one that is not ASCII was never
signed by Zero Hash, so it verifies nothing (instead of failing to encode), and
:func:`timestamp_to_seconds` refuses it with a ValueError like any other unreadable time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

HEADER_NOTIFICATION_ID = "x-zh-hook-notification-id"
HEADER_PAYLOAD_TYPE = "x-zh-hook-payload-type"
HEADER_TIMESTAMP = "x-zh-hook-timestamp"
HEADER_SIGNATURE = "x-zh-hook-signature"
HEADER_SIGNATURE_LEGACY = "x-zh-hook-signature-256"
HEADER_RSA_SIGNATURE = "x-zh-hook-rsa-signature"
HEADER_RSA_SIGNATURE_LEGACY = "x-zh-hook-rsa-signature-256"
#: The longest timestamp text read (milliseconds are 13 digits; room for a fraction).
MAX_TIMESTAMP_TEXT = 32


def signed_message(body: bytes, timestamp: str | None) -> bytes:
    """The bytes a signature covers: the body, followed by the timestamp text when there is one."""
    return body + timestamp.encode("ascii") if timestamp is not None else body


def hmac_signature(secret: str, body: bytes, timestamp: str | None) -> str:
    """Lowercase hex HMAC-SHA256 over :func:`signed_message`, keyed by the secret's UTF-8 bytes."""
    return hmac.new(secret.encode("utf-8"), signed_message(body, timestamp), hashlib.sha256).hexdigest()


def hmac_matches(secrets: Iterable[str], body: bytes, timestamp: str | None, presented: str) -> int | None:
    """Index of the first secret whose HMAC equals ``presented`` (constant-time, all tried), else None."""
    if timestamp is not None and not timestamp.isascii():
        return None
    wanted = presented.strip().lower().encode("utf-8", "replace")
    matched: int | None = None
    for index, secret in enumerate(secrets):
        if hmac.compare_digest(hmac_signature(secret, body, timestamp).encode("ascii"), wanted) and matched is None:
            matched = index
    return matched


def rsa_signature(private_key: rsa.RSAPrivateKey, body: bytes, timestamp: str | None, *, pss: bool = True) -> str:
    """Hex RSA signature over :func:`signed_message` with SHA-256 (PSS by default, else PKCS#1 v1.5)."""
    pad: Any = (
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        if pss
        else padding.PKCS1v15()
    )
    return private_key.sign(signed_message(body, timestamp), pad, hashes.SHA256()).hex()


def rsa_matches(
    public_keys: Iterable[rsa.RSAPublicKey], body: bytes, timestamp: str | None, presented: str
) -> int | None:
    """Index of the first public key that verifies ``presented`` under PSS or PKCS#1 v1.5, else None."""
    if timestamp is not None and not timestamp.isascii():
        return None
    try:
        signature = bytes.fromhex(presented.strip())
    except ValueError:
        return None
    message = signed_message(body, timestamp)
    paddings = (
        padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO),
        padding.PKCS1v15(),
    )
    for index, key in enumerate(public_keys):
        for pad in paddings:
            try:
                key.verify(signature, message, pad, hashes.SHA256())
            except (InvalidSignature, ValueError):
                continue
            return index
    return None


def timestamp_to_seconds(value: str | int | float) -> float:
    """Unix time in seconds from a Zero Hash timestamp that may be in ms (documented) or seconds.

    Values below 1e11 cannot be milliseconds of any date after 1973, so they are read as seconds.
    Raises ValueError for text that is not ASCII (``float`` would read other scripts' digits) or
    longer than :data:`MAX_TIMESTAMP_TEXT`, OverflowError for an integer beyond any float.
    """
    if isinstance(value, str) and (len(value) > MAX_TIMESTAMP_TEXT or not value.isascii()):
        raise ValueError("not a timestamp")
    number = float(value)
    return number / 1000.0 if number >= 1e11 else number
