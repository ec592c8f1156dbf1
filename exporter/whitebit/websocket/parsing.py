"""Reading the private WebSocket's frames: balance messages, amounts, and why a frame is skipped.

Everything here is pure: a parser returns what a message says or raises :class:`InvalidMessage`
with a bounded ``reason`` (the ``reason`` label of ``whitebit_websocket_messages_invalid_total``),
and the connection skips that frame and keeps going. Message shapes: docs/protocol.md#balance-channels
and docs/protocol.md#orderspending-channel.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

METHOD_ORDERS = "ordersPending_update"
METHOD_SPOT = "balanceSpot_update"
METHOD_MARGIN = "balanceMargin_update"

#: Why a frame or an order object is refused (the ``reason`` label).
INVALID_MISSING_FIELD = "missing_field"
INVALID_WRONG_TYPE = "wrong_type"
INVALID_BAD_VALUE = "bad_value"
INVALID_UNKNOWN_MARKET = "unknown_market"
INVALID_BAD_JSON = "bad_json"
INVALID_BINARY = "binary_frame"
INVALID_NOT_OBJECT = "not_an_object"
INVALID_UNKNOWN_METHOD = "unknown_method"
INVALID_UNEXPECTED_REPLY = "unexpected_reply"
INVALID_REASONS = (
    INVALID_BAD_JSON,
    INVALID_BINARY,
    INVALID_NOT_OBJECT,
    INVALID_UNKNOWN_METHOD,
    INVALID_MISSING_FIELD,
    INVALID_WRONG_TYPE,
    INVALID_BAD_VALUE,
    INVALID_UNKNOWN_MARKET,
    INVALID_UNEXPECTED_REPLY,
)


class InvalidMessage(ValueError):
    """A frame or an order object that cannot be used; ``reason`` is a bounded label value."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def parse_amount(value: Any, field: str) -> Decimal:
    """A decimal string (or, defensively, a JSON number) as an exact Decimal; never NaN or infinite."""
    if isinstance(value, str):
        try:
            amount = Decimal(value)
        except InvalidOperation:
            raise InvalidMessage(INVALID_BAD_VALUE, f"{field} is not a decimal: {value[:32]!r}") from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        amount = Decimal(str(value))
    else:
        raise InvalidMessage(INVALID_WRONG_TYPE, f"{field} has type {type(value).__name__}")
    if not amount.is_finite():
        raise InvalidMessage(INVALID_BAD_VALUE, f"{field} is not finite")
    return amount


def parse_spot_update(params: Any) -> dict[str, tuple[Decimal, Decimal]]:
    """``balanceSpot_update`` params as changes: the channel page's array of ``{asset: {available,
    freeze}}`` objects, or the one such object a docs guide's example shows
    (docs/protocol.md#balance-channels)."""
    if isinstance(params, dict):
        return parse_spot_snapshot(params)
    if not isinstance(params, list):
        raise InvalidMessage(INVALID_WRONG_TYPE, "params is neither an array nor an object")
    changes: dict[str, tuple[Decimal, Decimal]] = {}
    for item in params:
        if not isinstance(item, dict):
            raise InvalidMessage(INVALID_WRONG_TYPE, "balance item is not an object")
        changes.update(parse_spot_snapshot(item))
    return changes


def parse_spot_snapshot(result: Any) -> dict[str, tuple[Decimal, Decimal]]:
    """``{asset: {available, freeze}}`` (``balanceSpot_request`` result) as ``(available, freeze)``."""
    return _pairs_by_asset(result, "balance", "available", "freeze")


def _pairs_by_asset(result: Any, what: str, first: str, second: str) -> dict[str, tuple[Decimal, Decimal]]:
    """``{asset: {first, second, …}}`` as ``{asset: (first, second)}``; ``what`` names it in errors."""
    if not isinstance(result, dict):
        raise InvalidMessage(INVALID_WRONG_TYPE, f"{what} values are not an object")
    out: dict[str, tuple[Decimal, Decimal]] = {}
    for asset, values in result.items():
        if not isinstance(values, dict):
            raise InvalidMessage(INVALID_WRONG_TYPE, f"{what} of {asset[:16]!r} is not an object")
        if first not in values or second not in values:
            raise InvalidMessage(INVALID_MISSING_FIELD, f"{what} of {asset[:16]!r} lacks {first} or {second}")
        out[asset] = (parse_amount(values[first], first), parse_amount(values[second], second))
    return out


def parse_margin_update(params: Any) -> dict[str, tuple[Decimal, Decimal]]:
    """``balanceMargin_update`` params (``[{a, B, b, av, ab}, …]``) as ``(B, b)`` changes."""
    if not isinstance(params, list):
        raise InvalidMessage(INVALID_WRONG_TYPE, "params is not an array")
    changes: dict[str, tuple[Decimal, Decimal]] = {}
    for item in params:
        if not isinstance(item, dict):
            raise InvalidMessage(INVALID_WRONG_TYPE, "collateral item is not an object")
        if "a" not in item or "B" not in item or "b" not in item:
            raise InvalidMessage(INVALID_MISSING_FIELD, "collateral item lacks a, B or b")
        asset = item["a"]
        if not isinstance(asset, str) or not asset:
            raise InvalidMessage(INVALID_WRONG_TYPE, "collateral asset is not a string")
        changes[asset] = (parse_amount(item["B"], "B"), parse_amount(item["b"], "b"))
    return changes


def parse_margin_snapshot(result: Any) -> dict[str, tuple[Decimal, Decimal]]:
    """``balanceMargin_request`` result (``{asset: {balance, borrow, …}}``) as ``(B, b)``."""
    return _pairs_by_asset(result, "collateral", "balance", "borrow")
