"""Bounded parsing of what a webhook delivery contains: numbers, times, ids and JSON nesting.

A valid signature proves who sent a delivery, not that its content is sane: a sender's bug or a
leaked secret must not take the exporter down. Parsing a decimal is cheap, but what follows it is
not: ``Decimal("1e-999999999")`` is three bytes of exponent until ``normalize``, ``quantize``,
``format(x, "f")`` or arithmetic spell it out as a billion digits. So every number a delivery
carries is checked against these bounds *before* anything else touches it, and anything outside
is refused by the receiver (400 ``bad_json`` with a detail naming the field).

The bounds, and why they hold every genuine payload with room to spare:

* :data:`MAX_NUMBER_TEXT` characters of a number's text: WhiteBIT sends amounts with 18 decimals
  (``"25.000000000000000000"``, docs/protocol.md#webhook-payload-fields) and Zero Hash decimal
  strings (``"250.5"``, docs/protocol.md#account-balance-events).
* :data:`MAX_DIGITS` significant digits and a decimal exponent within ``±``:data:`MAX_EXPONENT`:
  a balance up to 1e15 with 18 decimals has 34 digits and exponent -18.
* times within [:data:`MIN_TIMESTAMP`, :data:`MAX_TIMESTAMP`) seconds (years 2000 to 2100).
* ids and labels at most :data:`MAX_ID_LENGTH` characters (a UUID is 36), and text that can be
  stored: no lone surrogate (:func:`storable_text`).
* JSON nested at most :data:`MAX_JSON_DEPTH` deep (a genuine payload is 3 deep): checked on the
  raw bytes before ``json.loads``, whose recursion on a body 1,200 deep raises ``RecursionError``,
  and whose result later code (``repr``, ``json.dumps``) would recurse into again.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from itertools import accumulate
from typing import Any

#: The longest text of a number accepted (characters, after stripping blanks).
MAX_NUMBER_TEXT = 64
#: The most significant digits of an accepted decimal.
MAX_DIGITS = 40
#: The largest absolute decimal exponent of an accepted decimal (``1E+40`` .. ``1E-40`` steps).
MAX_EXPONENT = 40
#: 2000-01-01T00:00:00Z and 2100-01-01T00:00:00Z, in unix seconds.
MIN_TIMESTAMP = 946_684_800.0
MAX_TIMESTAMP = 4_102_444_800.0
#: The longest id or label text accepted.
MAX_ID_LENGTH = 256
#: The deepest JSON nesting accepted (objects and arrays).
MAX_JSON_DEPTH = 32

# A JSON string, escapes included (the unrolled form: linear, no backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# Every byte but the four brackets, deleted by bytes.translate.
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# +1 for an opening bracket, -1 for a closing one, indexed by byte value.
_STEP = [0] * 256
for _byte in b"[{":
    _STEP[_byte] = 1
for _byte in b"]}":
    _STEP[_byte] = -1


class OutOfBounds(ValueError):
    """A value of a delivery outside the bounds of this module; the message names what."""


def bounded_decimal(value: Any, name: str) -> Decimal:
    """``value`` (a JSON string or number, not a bool) as a finite Decimal within the bounds.

    Raises :class:`OutOfBounds` (a ValueError) when it is not a number or out of the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise OutOfBounds(f"{name} is missing or not a decimal")
    if isinstance(value, int) and not -(10**MAX_DIGITS) < value < 10**MAX_DIGITS:
        # Checked before str(): a JSON integer may have thousands of digits.
        raise OutOfBounds(f"{name} has more than {MAX_DIGITS} digits")
    text = value.strip() if isinstance(value, str) else str(value)
    if len(text) > MAX_NUMBER_TEXT:
        raise OutOfBounds(f"{name} is longer than {MAX_NUMBER_TEXT} characters")
    try:
        number = Decimal(text)
    except (InvalidOperation, ValueError):
        raise OutOfBounds(f"{name} is not a decimal") from None
    if not number.is_finite():
        raise OutOfBounds(f"{name} is not finite")
    if len(text) <= MAX_DIGITS and "e" not in text and "E" not in text:
        # Plain notation this short holds at most MAX_DIGITS digits and an exponent above -MAX_DIGITS
        # (MAX_EXPONENT): every genuine amount, without building the digit tuple.
        return number
    _, digits, exponent = number.as_tuple()
    if len(digits) > MAX_DIGITS or not isinstance(exponent, int) or abs(exponent) > MAX_EXPONENT:
        raise OutOfBounds(f"{name} is out of range (at most {MAX_DIGITS} digits, exponent within ±{MAX_EXPONENT})")
    return number


def bounded_seconds(value: float, name: str) -> float:
    """``value`` when it is a time in [:data:`MIN_TIMESTAMP`, :data:`MAX_TIMESTAMP`), else :class:`OutOfBounds`."""
    if not MIN_TIMESTAMP <= value < MAX_TIMESTAMP:  # NaN fails too
        raise OutOfBounds(f"{name} is out of range (years 2000 to 2100)")
    return value


def storable_text(value: str) -> bool:
    """True when ``value`` can be written as UTF-8 text (to SQLite, to a log): no lone surrogate.

    ``json.loads`` lets lone surrogates through, from a ``\\udcff`` escape in valid JSON or from
    bytes that are not UTF-8 (it decodes with ``surrogatepass``); SQLite's driver then fails to bind
    the string, on every retry of the delivery.
    """
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def bounded_id(value: str, name: str) -> str:
    """``value`` when it has at most :data:`MAX_ID_LENGTH` characters and is :func:`storable_text`,
    else :class:`OutOfBounds`."""
    if len(value) > MAX_ID_LENGTH:
        raise OutOfBounds(f"{name} is longer than {MAX_ID_LENGTH} characters")
    if not storable_text(value):
        raise OutOfBounds(f"{name} is not valid text (a lone surrogate)")
    return value


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON in ``body`` nests objects and arrays more than ``limit`` deep.

    One pass in C over the bytes: brackets inside strings are ignored. Bodies with at most
    ``limit`` opening brackets (every genuine one) cost two ``bytes.count``. Malformed JSON may be
    misjudged either way; ``json.loads`` refuses it afterwards anyway.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > limit
