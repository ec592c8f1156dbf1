"""``whitebit-exporter inbox list`` and ``inbox show``: the webhook inbox for the person on call.

Reads the state file only (:meth:`StateStore.open_read_only`), so it runs beside a running exporter
and changes nothing. ``list`` prints deliveries newest first, filtered by time range, provider,
account, method, transaction hash or transfer key, as a table or as JSON lines; ``show`` prints one
delivery whole: every field, the headers, and the body exactly as received (pretty-printed when it
is JSON, with ``--raw`` byte for byte).

Never printed: a key or a signature. ``X-TXC-APIKEY`` shows its first 4 characters, every signature
header its first 8 (enough to tell two apart); the body holds no secret and is printed as received.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from exporter.config.load import ConfigError, load_config, parse_duration
from exporter.core.logs import redact
from exporter.core.state import DeliveryQuery, InboxDelivery, StateError, StateStore
from exporter.core.storage import InboxReader

PROG = "whitebit-exporter inbox"
#: Headers shown in part only: the key that names an account, and every signature.
_KEY_HEADERS = frozenset({"x-txc-apikey"})
_SIGNATURE_PREFIX = 8


def build_parser() -> argparse.ArgumentParser:
    """The ``inbox`` command's flags."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Print the webhook deliveries the exporter stored (read only; runs beside the exporter).",
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,show}")
    listing = commands.add_parser("list", help="deliveries newest first, filtered", allow_abbrev=False)
    showing = commands.add_parser("show", help="one delivery whole, body included", allow_abbrev=False)
    for sub in (listing, showing):
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--config.file", dest="config_file", metavar="PATH", help="the exporter's config")
        where.add_argument("--state.path", dest="state_path", metavar="PATH", help="the state file itself")
        sub.add_argument("--format", choices=("table", "json"), default="table", help="(default: %(default)s)")
    listing.add_argument(
        "--since", metavar="WHEN", help="received at or after: 2026-11-29T03:00:00Z, unix seconds, or 2h (ago)"
    )
    listing.add_argument("--until", metavar="WHEN", help="received before (same forms)")
    listing.add_argument("--provider", choices=("whitebit", "zerohash"))
    listing.add_argument("--account", help="a WhiteBIT account name")
    listing.add_argument("--method", help="a WhiteBIT method or Zero Hash payload type, e.g. deposit.processed")
    listing.add_argument("--transaction-hash", dest="transaction_hash", metavar="HASH", help="in the body")
    listing.add_argument("--transfer-key", dest="transfer_key", metavar="KEY", help="a transfer's key (state file)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    showing.add_argument("delivery", metavar="SEQ|ID", help="the inbox row number (seq) or the delivery id")
    showing.add_argument("--raw", action="store_true", help="the body byte for byte, nothing else")
    return parser


def main(argv: Sequence[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``inbox ...``; the exit status (0 found, 1 nothing found or an error, 2 bad flags)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # --help (0) or a bad flag (2, message already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        path = state_path(args)
        with StateStore.open_read_only(path) as store:
            if args.command == "list":
                return _list(store, args, out)
            return _show(store, args, out)
    except (StateError, ConfigError, ValueError) as exc:
        print(f"{PROG}: {problem_text(exc)}", file=err)
        return 1


def state_path(args: argparse.Namespace) -> str:
    """The state file the flags name: ``--state.path``, or the one of ``--config.file`` (default config.yaml)."""
    if args.state_path:
        return str(args.state_path)
    config = load_config(args.config_file or "config.yaml")
    return config.state.path


def problem_text(exc: Exception) -> str:
    """One line for an error of the inspection commands (a config's problems joined)."""
    if isinstance(exc, ConfigError):
        return "the config is invalid: " + "; ".join(f"{p.location}: {p.message}" for p in exc.problems)
    return str(exc)


def when(text: str, now: float) -> float:
    """Unix seconds from an RFC 3339 time, unix seconds, or a duration ago (``2h``, ``30m``)."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return now - parse_duration(text)
        except ValueError:
            raise ValueError(f"not a time: {text!r} (use 2026-11-29T03:00:00Z, unix seconds, or 2h)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _list(store: InboxReader, args: argparse.Namespace, out: TextIO) -> int:
    if args.limit < 1:
        raise ValueError("--limit must be at least 1")
    now = time.time()
    containing: list[str] = []
    if args.transaction_hash:
        containing.append(args.transaction_hash)
    if args.transfer_key:
        records = store.transfers_with_key(args.transfer_key)
        if not records:
            raise ValueError(f"no transfer has the key {args.transfer_key!r}")
        for record in records:
            for name in ("transaction_hash", "transaction_id", "unique_id"):
                value = record.details.get(name)
                if isinstance(value, str) and value:
                    containing.append(value)
        if not containing:
            raise ValueError(f"transfer {args.transfer_key!r} carries no id a delivery body would hold")
    query = DeliveryQuery(
        since=when(args.since, now) if args.since else None,
        until=when(args.until, now) if args.until else None,
        provider=args.provider,
        account=args.account,
        method=args.method,
        containing=tuple(containing),
        limit=args.limit,
    )
    rows = store.find_deliveries(query)
    cursor = store.inbox_cursor()
    if args.format == "json":
        for row in rows:
            print(json.dumps(as_json(row, cursor), ensure_ascii=False), file=out)
    else:
        _table(rows, cursor, out)
    return 0 if rows else 1


def _show(store: InboxReader, args: argparse.Namespace, out: TextIO) -> int:
    wanted = str(args.delivery)
    rows = [row] if wanted.isdigit() and (row := store.get_delivery(int(wanted))) is not None else []
    if not rows:
        rows = store.deliveries_with_id(wanted)
    if not rows:
        raise ValueError(f"no delivery with seq or id {wanted!r} in the inbox")
    cursor = store.inbox_cursor()
    for row in rows:
        if args.raw:
            out.write((row.body or b"").decode("utf-8", "replace"))
            out.write("\n")
        elif args.format == "json":
            print(json.dumps(as_json(row, cursor), ensure_ascii=False), file=out)
        else:
            _detail(row, cursor, out)
    return 0


def shown_headers(headers: dict[str, str]) -> dict[str, str]:
    """The stored headers as they may be printed: the key's first 4 characters, a signature's first 8."""
    shown = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in _KEY_HEADERS:
            shown[name] = redact(value)
        elif "signature" in lower:
            shown[name] = value[:_SIGNATURE_PREFIX] + "…" if value else "…"
        else:
            shown[name] = value
    return shown


def iso_time(seconds: float | None) -> str | None:
    """Unix seconds as RFC 3339 UTC with milliseconds; None stays None."""
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat(timespec="milliseconds")


def derivation(row: InboxDelivery, cursor: int) -> str:
    """``derived``, ``pending`` (the consumer has not reached it) or ``failed`` (kept with the reason)."""
    if row.derive_error:
        return "failed"
    return "derived" if row.seq <= cursor else "pending"


def as_json(row: InboxDelivery, cursor: int) -> dict[str, Any]:
    """One row as printed by ``--format json``: every field, whether its state is derived (``cursor``:
    the last derived seq), headers shown in part, the body as text (``body_base64`` instead when it is
    not UTF-8; null once the retention removed it)."""
    document: dict[str, Any] = {
        "seq": row.seq,
        "provider": row.provider,
        "account": row.account,
        "delivery_id": row.delivery_id,
        "method": row.method,
        "received_at": iso_time(row.received_at),
        "status": row.status,
        "verdict": row.verdict,
        "nonce": row.nonce,
        "duplicates": row.duplicates,
        "last_duplicate_at": iso_time(row.last_duplicate_at),
        "derivation": derivation(row, cursor),
        "derive_error": row.derive_error,
        "headers": shown_headers(row.headers),
    }
    if row.body is None:
        document["body"] = None
    else:
        try:
            document["body"] = row.body.decode("utf-8")
        except UnicodeDecodeError:
            document["body_base64"] = base64.b64encode(row.body).decode()
    return document


def _table(rows: list[InboxDelivery], cursor: int, out: TextIO) -> None:
    header = ("SEQ", "RECEIVED (UTC)", "PROVIDER", "ACCOUNT", "METHOD", "VERDICT", "DUPS", "STATE", "ID")
    lines = [header]
    lines.extend(
        (
            str(row.seq),
            (iso_time(row.received_at) or "")[:19],
            row.provider,
            row.account or "-",
            row.method,
            row.verdict,
            str(row.duplicates),
            derivation(row, cursor),
            row.delivery_id if len(row.delivery_id) <= 40 else row.delivery_id[:39] + "…",
        )
        for row in rows
    )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip(), file=out)


def _detail(row: InboxDelivery, cursor: int, out: TextIO) -> None:
    document = as_json(row, cursor)
    body = document.pop("body", None)
    body_b64 = document.pop("body_base64", None)
    headers = document.pop("headers")
    for name, value in document.items():
        print(f"{name + ':':19} {'-' if value in (None, '') else value}", file=out)
    print("headers:", file=out)
    for name, value in headers.items():
        print(f"  {name}: {value}", file=out)
    if body is None and body_b64 is None:
        print("body: (removed after the retention)", file=out)
        return
    if body_b64 is not None:
        print(f"body (base64, not UTF-8): {body_b64}", file=out)
        return
    try:
        pretty = json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        pretty = body
    print("body:", file=out)
    print(pretty, file=out)
