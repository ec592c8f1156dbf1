"""``whitebit-exporter relay list`` and ``relay retry``: what the relay owes its targets, and dead letters again.

``list`` reads the state file only (beside a running exporter too) and prints the deliveries owed
(``pending``, the default), given up on (``dead``) or ``delivered``, oldest first, with where each
stands (attempts, next try, last answer), as a table or JSON lines. ``retry`` owes dead letters again
(of one target, or one by its inbox ``seq``), due at once: it writes only the relay's rows, so it runs
beside the exporter, whose sender picks them up at its next look. No body, header or secret is printed.

Exit status: 0 done (``list``: something listed), 1 nothing found or an error, 2 bad flags.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from exporter.config.load import ConfigError
from exporter.core.state import RelayItem, StateError, StateStore
from exporter.inbox_cli import iso_time, problem_text, state_path

PROG = "whitebit-exporter relay"
STATES = ("pending", "dead", "delivered")


def build_parser() -> argparse.ArgumentParser:
    """The ``relay`` command's flags."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="What the relay owes its targets; dead letters sent again.", allow_abbrev=False
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{list,retry}")
    listing = commands.add_parser("list", help="deliveries owed, dead or delivered, oldest first", allow_abbrev=False)
    retrying = commands.add_parser("retry", help="owe dead letters again, due now", allow_abbrev=False)
    for sub in (listing, retrying):
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--config.file", dest="config_file", metavar="PATH", help="the exporter's config")
        where.add_argument("--state.path", dest="state_path", metavar="PATH", help="the state file itself")
        sub.add_argument("--target", help="one target's (its name in relay.targets)")
    listing.add_argument("--state", choices=STATES, default="pending", help="(default: %(default)s)")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default: %(default)s)")
    listing.add_argument("--format", choices=("table", "json"), default="table", help="(default: %(default)s)")
    retrying.add_argument("seq", nargs="?", type=int, help="one dead letter, by its inbox row number")
    return parser


def main(argv: Sequence[str], *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``relay ...``; the exit status."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        args = build_parser().parse_args(list(argv))
    except SystemExit as exc:  # --help (0) or a bad flag (2, message already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        path = state_path(args)
        if args.command == "list":
            with StateStore.open_read_only(path) as store:
                return _list(store.relay_items(args.state, args.target, limit=args.limit), args.format, out)
        if args.target is None and args.seq is None:
            print(
                f"{PROG}: name a --target or a seq (retrying every target's dead letters at once is refused)", file=err
            )
            return 2
        with StateStore.open(path) as store:
            count = store.retry_dead(target=args.target, seq=args.seq, at=time.time())
    except (StateError, ConfigError, ValueError) as exc:
        print(f"{PROG}: {problem_text(exc)}", file=err)
        return 1
    print(f"{count} dead letter{'s' if count != 1 else ''} owed again", file=out)
    return 0 if count else 1


def as_json(item: RelayItem) -> dict[str, Any]:
    """One delivery as ``--format json`` prints it (no body, no header)."""
    return {
        "seq": item.seq,
        "target": item.target,
        "provider": item.provider,
        "account": item.account,
        "state": item.state,
        "attempts": item.attempts,
        "enqueued_at": iso_time(item.enqueued_at),
        "next_attempt_at": iso_time(item.next_attempt_at) if item.state == "pending" else None,
        "last_attempt_at": iso_time(item.last_attempt_at),
        "last_status": item.last_status,
        "last_error": item.last_error,
        "finished_at": iso_time(item.finished_at),
    }


def _list(items: list[RelayItem], fmt: str, out: TextIO) -> int:
    if fmt == "json":
        for item in items:
            print(json.dumps(as_json(item), sort_keys=True), file=out)
        return 0 if items else 1
    header = ("SEQ", "TARGET", "ACCOUNT", "STATE", "TRIES", "OWED SINCE", "NEXT TRY", "LAST ANSWER")
    rows = [
        (
            str(item.seq),
            item.target,
            f"{item.provider}:{item.account}" if item.account else item.provider,
            item.state,
            str(item.attempts),
            iso_time(item.enqueued_at) or "",
            (iso_time(item.next_attempt_at) or "") if item.state == "pending" else "",
            item.last_error or ("" if item.last_status is None else str(item.last_status)),
        )
        for item in items
    ]
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip(), file=out)
    return 0 if items else 1
